"""Read-only, short-lived DuckDB connections and a result cache that outlives a writer's lock.

A scoring run takes DuckDB's exclusive file lock while it writes a batch, and DuckDB then rejects
every other process, read-only ones included. In turn, a reader's open connection makes the writer
wait. The dashboard therefore opens a connection per query and closes it at once. When a writer keeps
the lock for longer than LOCK_WAIT_S, the dashboard serves the last result it loaded for the same
query, marked as stale, or raises DatabaseBusyError for the page to show a note.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import duckdb

from drf_batch.storage import DatabaseBusyError, open_reader

logger = logging.getLogger(__name__)

T = TypeVar("T")

CACHE_MAX_ENTRIES = 512


# How long a query waits for a scoring run to finish writing its current batch before the
# dashboard falls back to cached results. After one query gave up, the queries of the next
# BUSY_MEMORY_S seconds wait only SHORT_LOCK_WAIT_S, so a page with many queries stays quick.
LOCK_WAIT_S = 3.0
SHORT_LOCK_WAIT_S = 0.2
BUSY_MEMORY_S = 10.0


@contextmanager
def connect(path: Path, *, lock_wait_s: float = LOCK_WAIT_S) -> Iterator[duckdb.DuckDBPyConnection]:
    """Open `path` read-only for one query and close it afterwards.

    Waits up to `lock_wait_s` seconds while a writer holds the file lock. Raises FileNotFoundError
    when the file is absent and DatabaseBusyError when the lock stays taken.
    """
    with open_reader(path, timeout_s=lock_wait_s) as connection:
        yield connection


def fingerprint(path: Path) -> tuple[int, int, int, int]:
    """Return (mtime_ns, size) of the database file and of its write-ahead log.

    Any committed write changes one of them, so cached results keyed by this tuple stay valid
    exactly as long as the file is unchanged.
    """
    values: list[int] = []
    for candidate in (path, path.with_name(path.name + ".wal")):
        try:
            stat = candidate.stat()
        except FileNotFoundError:
            values.extend((0, 0))
        else:
            values.extend((stat.st_mtime_ns, stat.st_size))
    return (values[0], values[1], values[2], values[3])


@dataclass(frozen=True)
class CachedResult:
    fingerprint: tuple[int, int, int, int]
    value: Any
    loaded_at: float


@dataclass(frozen=True)
class QueryResult:
    """A query's value, and whether it is an older result served while the database was locked."""

    value: Any
    stale: bool
    loaded_at: float


class QueryCache:
    """An in-process LRU cache of query results keyed by query name, arguments and file fingerprint.

    Values stay in memory as Python objects; nothing is serialised.
    """

    def __init__(self, *, max_entries: int = CACHE_MAX_ENTRIES) -> None:
        self._entries: OrderedDict[tuple[Any, ...], CachedResult] = OrderedDict()
        self._lock = threading.Lock()
        self._max_entries = max_entries
        self._busy_at: float | None = None

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def run(
        self,
        path: Path,
        query: Callable[..., T],
        *args: Any,
    ) -> QueryResult:
        """Run `query(connection, *args)` against `path`, or return its cached result.

        When the database is locked by a writer, return the last result for the same query and
        arguments with `stale=True`; without one, DatabaseBusyError propagates.
        """
        key = (str(path), query.__module__, query.__qualname__, args)
        current = fingerprint(path)
        with self._lock:
            cached = self._entries.get(key)
            if cached is not None:
                self._entries.move_to_end(key)
        if cached is not None and cached.fingerprint == current:
            return QueryResult(cached.value, stale=False, loaded_at=cached.loaded_at)

        recently_busy = self._busy_at is not None and time.monotonic() - self._busy_at < BUSY_MEMORY_S
        lock_wait_s = SHORT_LOCK_WAIT_S if recently_busy else LOCK_WAIT_S
        try:
            with connect(path, lock_wait_s=lock_wait_s) as connection:
                value = query(connection, *args)
        except DatabaseBusyError:
            self._busy_at = time.monotonic()
            if cached is None:
                raise
            logger.info("database %s is locked by a writer; serving %s from the cache", path, query.__name__)
            return QueryResult(cached.value, stale=True, loaded_at=cached.loaded_at)

        self._busy_at = None
        loaded_at = time.time()
        with self._lock:
            self._entries[key] = CachedResult(current, value, loaded_at)
            self._entries.move_to_end(key)
            while len(self._entries) > self._max_entries:
                self._entries.popitem(last=False)
        return QueryResult(value, stale=False, loaded_at=loaded_at)

"""Catalogue of unusable or unusual Parquet inputs, and a bundle whose labels differ from the database.

A whole-file problem must raise a clear error before any row is scored or the database is created;
a per-row problem must end as a reject with its reason.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

import catalogue_cases as cases
from drf_batch.cli import app
from drf_batch.scoring.inputs import InputFileError
from drf_batch.scoring.runner import RunOptions, score_file
from drf_batch.storage import LabelMismatchError, ScoreStore, open_reader
from scoring_fakes import FakeBundle


def _score_file(tmp_path: Path, posts: Path, bundle: FakeBundle | None = None) -> ScoreStore:
    store = ScoreStore(tmp_path / "scores.duckdb")
    score_file(posts, bundle or FakeBundle(), store, options=RunOptions(batch_size=4))
    return store


def _raises_before_work(tmp_path: Path, posts: Path, match: str) -> None:
    with pytest.raises(InputFileError, match=match):
        _score_file(tmp_path, posts)
    assert not (tmp_path / "scores.duckdb").exists()


def test_parquet_missing_post_id_column(tmp_path: Path) -> None:
    posts = cases.write_posts(tmp_path / "posts.parquet", pa.table({"id": ["a"], "text": ["hello"]}))
    _raises_before_work(tmp_path, posts, "required column 'post_id' is missing")


def test_parquet_duplicate_post_ids(tmp_path: Path) -> None:
    post_ids = ["a", "b", "a", "c", "d", "b", "a"]
    table = pa.table({"post_id": post_ids, "text": [f"text number {index}" for index in range(len(post_ids))]})
    # Batches of four put some duplicates in the same batch as their first row and some in later batches.
    stored = _collect(tmp_path, table)
    assert sorted(row["post_id"] for row in stored["scores"]) == ["a", "b", "c", "d"]
    assert {row["post_id"]: row["row_number"] for row in stored["scores"]}["a"] == 0
    duplicate_rows = sorted(row["row_number"] for row in stored["rejects"])
    assert duplicate_rows == [2, 5, 6]
    assert {row["reason_code"] for row in stored["rejects"]} == {"duplicate_post_id"}


def _collect(tmp_path: Path, table: pa.Table) -> dict[str, list[dict]]:
    posts = cases.write_posts(tmp_path / "posts.parquet", table)
    store = _score_file(tmp_path, posts)
    with open_reader(store.db_path) as connection:
        return {
            "scores": cases.fetch_dicts(connection, "SELECT * FROM scores ORDER BY row_number"),
            "rejects": cases.fetch_dicts(connection, "SELECT * FROM rejects ORDER BY row_number"),
        }


@pytest.mark.parametrize(
    ("column", "values", "found", "expected"),
    [
        ("text", pa.array([1, 2], pa.int64()), "int64", "string or binary"),
        ("post_id", pa.array([1.5, 2.5], pa.float64()), "double", "string or integer"),
        ("image_bytes", pa.array(["a", "b"], pa.string()), "string", "binary or large_binary"),
        ("image_path", pa.array([[1], [2]], pa.list_(pa.int64())), "list<element: int64>", "string"),
        ("created_at", pa.array([1.0, 2.0], pa.float64()), "double", "timestamp"),
    ],
)
def test_parquet_wrong_column_types(tmp_path: Path, column: str, values: pa.Array, found: str, expected: str) -> None:
    columns = {"post_id": ["a", "b"], "text": ["x", "y"]}
    columns[column] = values
    posts = cases.write_posts(tmp_path / "posts.parquet", pa.table(columns))
    with pytest.raises(InputFileError) as error:
        _score_file(tmp_path, posts)
    message = str(error.value)
    assert f"column '{column}'" in message
    assert f"type {found}" in message
    assert expected in message
    assert not (tmp_path / "scores.duckdb").exists()


def test_parquet_no_modality_column(tmp_path: Path) -> None:
    posts = cases.write_posts(tmp_path / "posts.parquet", pa.table({"post_id": ["a"], "lang": ["en"]}))
    _raises_before_work(tmp_path, posts, "no modality column")


def test_parquet_image_bytes_large_binary(tmp_path: Path) -> None:
    payload = cases.png_bytes(cases.photo())
    table = pa.table(
        {
            "post_id": ["a", "b"],
            "text": ["a sunny day", None],
            "image_bytes": pa.array([payload, payload], pa.large_binary()),
        }
    )
    stored = _collect(tmp_path, table)
    assert [row["graph"] for row in stored["scores"]] == ["paired", "image_only"]
    assert all(row["image_state"] == "ok" for row in stored["scores"])


def test_parquet_zero_byte_file(tmp_path: Path) -> None:
    posts = tmp_path / "posts.parquet"
    posts.write_bytes(b"")
    _raises_before_work(tmp_path, posts, r"is empty \(0 bytes\)")


def test_parquet_zero_rows(tmp_path: Path) -> None:
    table = pa.table({"post_id": pa.array([], pa.string()), "text": pa.array([], pa.string())})
    posts = cases.write_posts(tmp_path / "posts.parquet", table)
    store = ScoreStore(tmp_path / "scores.duckdb")
    summary = score_file(posts, FakeBundle(), store)
    assert summary.status == "finished"
    assert summary.rows_in == 0


def test_parquet_corrupt_file(tmp_path: Path) -> None:
    posts = tmp_path / "posts.parquet"
    posts.write_bytes(b"PAR1" + b"\x13\x37" * 500 + b"garbage")
    _raises_before_work(tmp_path, posts, "not a readable Parquet file")


def test_parquet_truncated_file(tmp_path: Path) -> None:
    good = cases.write_posts(tmp_path / "good.parquet", pa.table({"post_id": ["a"] * 50, "text": ["t"] * 50}))
    posts = tmp_path / "posts.parquet"
    posts.write_bytes(good.read_bytes()[:-30])
    _raises_before_work(tmp_path, posts, "not a readable Parquet file")


def test_parquet_not_found(tmp_path: Path) -> None:
    _raises_before_work(tmp_path, tmp_path / "absent.parquet", "input file not found")


def test_parquet_extra_columns_passed_through(tmp_path: Path) -> None:
    table = pa.table(
        {
            "post_id": ["a", "b"],
            "text": ["nice", None],
            "author_id": ["u1", "u2"],
            "lang": ["en", "de"],
            "likes": pa.array([3, None], pa.int64()),
            "created_at": pa.array([datetime(2026, 2, 3, 4, 5), None], pa.timestamp("s")),
        }
    )
    stored = _collect(tmp_path, table)
    score = stored["scores"][0]
    assert json.loads(score["extra"]) == {"author_id": "u1", "lang": "en", "likes": 3}
    assert score["created_at"] == datetime(2026, 2, 3, 4, 5)
    reject = stored["rejects"][0]
    assert json.loads(reject["extra"]) == {"author_id": "u2", "lang": "de", "likes": None}


def test_parquet_null_post_id_rejected(tmp_path: Path) -> None:
    stored = _collect(tmp_path, pa.table({"post_id": ["a", None], "text": ["one", "two"]}))
    assert [row["reason_code"] for row in stored["rejects"]] == ["missing_post_id"]
    assert stored["rejects"][0]["post_id"] is None


def test_parquet_many_row_groups(tmp_path: Path) -> None:
    table = pa.table({"post_id": [f"p{index}" for index in range(23)], "text": ["some words"] * 23})
    posts = tmp_path / "posts.parquet"
    pq.write_table(table, posts, row_group_size=5)
    store = _score_file(tmp_path, posts)
    with open_reader(store.db_path) as connection:
        rows = connection.execute("SELECT count(*), count(DISTINCT row_number), max(row_number) FROM scores").fetchone()
    assert rows == (23, 23, 22)


def test_bundle_label_mismatch_rejected(tmp_path: Path) -> None:
    posts = cases.write_posts(tmp_path / "posts.parquet", pa.table({"post_id": ["a"], "text": ["nice"]}))
    _score_file(tmp_path, posts)
    other = FakeBundle(bundle_id="otherbundle00002", labels=("positive", "negative"))
    other.manifest["labels"] = ["positive", "negative"]
    with pytest.raises(LabelMismatchError, match=r"labels \['negative', 'neutral', 'positive'\]"):
        _score_file(tmp_path, posts, other)
    with open_reader(tmp_path / "scores.duckdb") as connection:
        assert connection.execute("SELECT count(*) FROM runs").fetchone()[0] == 1
        assert connection.execute("SELECT count(*) FROM bundles").fetchone()[0] == 1


def test_bundle_same_labels_other_bundle_accepted(tmp_path: Path) -> None:
    posts = cases.write_posts(tmp_path / "posts.parquet", pa.table({"post_id": ["a"], "text": ["nice"]}))
    _score_file(tmp_path, posts)
    _score_file(tmp_path, posts, FakeBundle(bundle_id="samelabels000003"))
    with open_reader(tmp_path / "scores.duckdb") as connection:
        assert connection.execute("SELECT count(DISTINCT bundle_id) FROM scores").fetchone()[0] == 2


def test_cli_reports_input_error(tmp_path: Path) -> None:
    posts = cases.write_posts(tmp_path / "posts.parquet", pa.table({"post_id": ["a"], "text": pa.array([1], pa.int64())}))
    result = CliRunner().invoke(app, ["score", str(posts), "--db", str(tmp_path / "s.duckdb"), "--bundle", str(tmp_path)])
    assert result.exit_code == 2
    assert "column 'text' has type int64" in result.output
    assert not (tmp_path / "s.duckdb").exists()


def test_parquet_corrupt_row_group_rejected(tmp_path: Path) -> None:
    table = pa.table({"post_id": [f"p{index}" for index in range(300)], "text": [f"text {index} " * 20 for index in range(300)]})
    good = tmp_path / "good.parquet"
    pq.write_table(table, good, row_group_size=100, compression="snappy")
    column = pq.read_metadata(good).row_group(1).column(1)
    damaged = bytearray(good.read_bytes())
    start = column.data_page_offset + 40
    damaged[start : start + 200] = b"\xff" * 200
    posts = tmp_path / "posts.parquet"
    posts.write_bytes(bytes(damaged))

    store = _score_file(tmp_path, posts)
    with open_reader(store.db_path) as connection:
        scored = connection.execute("SELECT min(row_number), max(row_number), count(*) FROM scores").fetchone()
        rejected = connection.execute(
            "SELECT min(row_number), max(row_number), count(*), any_value(reason_code) FROM rejects"
        ).fetchone()
    # Rows of the first and last row group are scored; the unreadable middle one is rejected whole.
    assert scored[2] == 200
    assert rejected == (100, 199, 100, "corrupt_row_group")

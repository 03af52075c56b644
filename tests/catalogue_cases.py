"""Bad-input files for the scoring catalogue tests, and a helper that scores a table into DuckDB.

Every image here is drawn by the test itself. `score_rows` runs the real local runner
(`score_file`) into a real DuckDB file and returns the stored scores and rejects by post_id.
"""

from __future__ import annotations

import io
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from drf_batch.images import ImageLimits
from drf_batch.scoring.runner import RunOptions, RunSummary, score_file
from drf_batch.storage import ScoreStore, open_reader

RED = (220, 30, 30)
BLUE = (30, 30, 220)


def jpeg_bytes(image: Image.Image, **save_options: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90, **save_options)
    return buffer.getvalue()


def png_bytes(image: Image.Image, **save_options: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", **save_options)
    return buffer.getvalue()


def photo(size: tuple[int, int] = (64, 48)) -> Image.Image:
    """A smooth colour gradient, so JPEG and resizing have real content to work on."""
    width, height = size
    x = np.linspace(0, 255, width)[None, :]
    y = np.linspace(0, 255, height)[:, None]
    pixels = np.stack([np.broadcast_to(x, (height, width)), np.broadcast_to(y, (height, width)), np.full((height, width), 128.0)], axis=2)
    return Image.fromarray(pixels.astype(np.uint8))


def truncated_jpeg() -> bytes:
    full = jpeg_bytes(photo((200, 150)))
    return full[: len(full) // 2]


def cmyk_jpeg() -> bytes:
    return jpeg_bytes(photo().convert("CMYK"))


def png_16_bit() -> bytes:
    values = (np.linspace(0, 65535, 48 * 64).reshape(48, 64)).astype(np.uint16)
    image = Image.fromarray(values)
    assert image.mode == "I;16", image.mode
    return png_bytes(image)


def grayscale_png() -> bytes:
    return png_bytes(photo().convert("L"))


def transparent_rgba_png() -> bytes:
    return png_bytes(Image.new("RGBA", (40, 40), (255, 0, 0, 0)))


def transparent_palette_png() -> bytes:
    image = Image.new("P", (40, 40), 0)
    image.putpalette([0, 0, 0] + [255, 0, 0] * 255)
    return png_bytes(image, transparency=0)


def animated_gif() -> bytes:
    """Two frames: red first, blue second; scoring must see the red one."""
    frames = [Image.new("RGB", (40, 40), RED), Image.new("RGB", (40, 40), BLUE)]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return buffer.getvalue()


def webp_bytes() -> bytes:
    buffer = io.BytesIO()
    photo().save(buffer, format="WEBP", quality=80)
    return buffer.getvalue()


def exif_rotated_jpeg() -> bytes:
    """Stored 90x30 with red above blue, tagged orientation 6 (display rotated 90 degrees clockwise).

    Upright, the image is 30x90 with blue on the left and red on the right.
    """
    stored = Image.new("RGB", (90, 30), BLUE)
    stored.paste(Image.new("RGB", (90, 15), RED), (0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6
    return jpeg_bytes(stored, exif=exif.tobytes())


def one_pixel_png() -> bytes:
    return png_bytes(Image.new("RGB", (1, 1), (10, 200, 30)))


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF)


def decompression_bomb_png(side: int = 60_000) -> bytes:
    """A valid PNG header that declares side x side pixels, with almost no data behind it."""
    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    data = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", data) + _png_chunk(b"IEND", b"")


@dataclass
class StoredRows:
    """What a scoring run left in DuckDB, keyed by post_id (rejects without post_id by row number)."""

    summary: RunSummary
    scores: dict[str, dict[str, Any]]
    rejects: dict[str, dict[str, Any]]


def fetch_dicts(connection: Any, query: str, parameters: list[Any] | None = None) -> list[dict[str, Any]]:
    cursor = connection.execute(query, parameters or [])
    names = [column[0] for column in cursor.description]
    return [dict(zip(names, row)) for row in cursor.fetchall()]


def write_posts(path: Path, table: pa.Table, *, row_group_size: int | None = None) -> Path:
    pq.write_table(table, path, row_group_size=row_group_size)
    return path


def score_rows(
    tmp_path: Path,
    table: pa.Table,
    bundle: Any,
    *,
    image_root: Path | None = None,
    batch_size: int = 64,
    allow_urls: bool = False,
    db_name: str = "scores.duckdb",
) -> StoredRows:
    """Write `table` as Parquet, score it with the local runner and read back both tables."""
    posts = write_posts(tmp_path / "posts.parquet", table)
    store = ScoreStore(tmp_path / db_name)
    options = RunOptions(
        batch_size=batch_size,
        image_root=image_root,
        image_limits=ImageLimits(allow_urls=allow_urls, url_timeout_s=5.0),
        inference_batch_size=8,
    )
    summary = score_file(posts, bundle, store, options=options)
    with open_reader(store.db_path) as connection:
        scores = fetch_dicts(connection, "SELECT * FROM scores")
        rejects = fetch_dicts(connection, "SELECT * FROM rejects")
    return StoredRows(
        summary=summary,
        scores={row["post_id"]: row for row in scores},
        rejects={row["post_id"] if row["post_id"] is not None else f"row{row['row_number']}": row for row in rejects},
    )

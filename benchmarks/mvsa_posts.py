"""Build posts Parquet files from an MVSA-style folder, for benchmarks and for scoring real dumps.

The folder contains images/<id>.jpg, texts/<id>.txt, labels.csv (id,label,split) and unlabelled.csv
(id). Texts are decoded with `drf_batch.texts.decode_text_bytes` (the folder mixes UTF-8 and GBK).
`image_path` is the file name, relative to the folder's images/ directory, which is the
`--image-root` to score with. Outputs go under the cache directory, never into the repository:

    python benchmarks/mvsa_posts.py /path/to/mvsa-single --ids unlabelled --out posts.parquet
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from drf_batch.paths import cache_dir
from drf_batch.texts import decode_text_bytes

POSTS_SCHEMA = pa.schema([("post_id", pa.string()), ("text", pa.string()), ("image_path", pa.string())])


def read_ids(folder: Path, which: str) -> list[str]:
    """Return post ids from labels.csv ('labelled', or one split: 'train', 'val', 'test') or unlabelled.csv."""
    if which == "unlabelled":
        with (folder / "unlabelled.csv").open(newline="") as handle:
            return [row["id"] for row in csv.DictReader(handle)]
    with (folder / "labels.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    if which == "labelled":
        return [row["id"] for row in rows]
    return [row["id"] for row in rows if row["split"] == which]


def posts_table(folder: Path, ids: list[str]) -> pa.Table:
    """Return a posts table for `ids`; a missing text or image file becomes null."""
    texts: list[str | None] = []
    images: list[str | None] = []
    for post_id in ids:
        text_file = folder / "texts" / f"{post_id}.txt"
        texts.append(decode_text_bytes(text_file.read_bytes()) if text_file.is_file() else None)
        image_name = f"{post_id}.jpg"
        images.append(image_name if (folder / "images" / image_name).is_file() else None)
    return pa.table({"post_id": ids, "text": texts, "image_path": images}, schema=POSTS_SCHEMA)


def write_repeated(table: pa.Table, path: Path, *, rows: int, row_group_size: int = 10_000) -> Path:
    """Write `rows` rows that cycle through `table`, each copy under new post ids ('<id>-r<copy>').

    Row groups are written one at a time, so building a large dump does not hold it in memory.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    source_ids = table.column("post_id").to_pylist()
    with pq.ParquetWriter(path, table.schema) as writer:
        for start in range(0, rows, row_group_size):
            count = min(row_group_size, rows - start)
            positions = [(start + offset) % table.num_rows for offset in range(count)]
            chunk = table.take(pa.array(positions))
            new_ids = [
                f"{source_ids[position]}-r{(start + offset) // table.num_rows}"
                for offset, position in enumerate(positions)
            ]
            writer.write_table(chunk.set_column(0, "post_id", pa.array(new_ids, pa.string())))
    return path


def default_output(name: str) -> Path:
    return cache_dir() / "benchmarks" / name


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path, help="MVSA-style folder with images/, texts/ and labels.csv")
    parser.add_argument("--ids", default="unlabelled", help="unlabelled, labelled, train, val or test")
    parser.add_argument("--limit", type=int, default=None, help="keep only the first N ids")
    parser.add_argument("--out", type=Path, default=None, help="output Parquet path (default: under the cache dir)")
    arguments = parser.parse_args()

    ids = read_ids(arguments.folder, arguments.ids)[: arguments.limit]
    out = arguments.out or default_output(f"mvsa-{arguments.ids}-{len(ids)}.parquet")
    out.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(posts_table(arguments.folder, ids), out)
    print(f"wrote {len(ids)} posts to {out}; score with --image-root {arguments.folder / 'images'}")


if __name__ == "__main__":
    main()

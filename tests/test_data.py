"""Labelled posts from an MVSA-style folder and from a labelled Parquet."""

from __future__ import annotations

import logging
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from drf_batch.data import (
    LABELLED_POST_SCHEMA,
    LABELS,
    LabelledDataError,
    default_image_root,
    hash_split,
    load_labelled_posts,
)


def _folder(tmp_path: Path, labels_csv: str, texts: dict[str, bytes], images: tuple[str, ...]) -> Path:
    folder = tmp_path / "set"
    (folder / "images").mkdir(parents=True)
    (folder / "texts").mkdir()
    (folder / "labels.csv").write_text(labels_csv)
    for post_id, raw in texts.items():
        (folder / "texts" / f"{post_id}.txt").write_bytes(raw)
    for post_id in images:
        (folder / "images" / f"{post_id}.jpg").write_bytes(b"\xff\xd8 not decoded here")
    return folder


def test_folder_columns_and_types(tmp_path):
    folder = _folder(
        tmp_path,
        "id,label,split\n1,positive,train\n2,Negative,val\n3,neutral,test\n",
        {"1": b"hello  world\n", "2": "你好".encode("gbk"), "3": b"ok"},
        ("1", "2", "3"),
    )
    posts = load_labelled_posts(folder)
    assert posts.schema == pl.Schema(LABELLED_POST_SCHEMA)
    assert posts["post_id"].to_list() == ["1", "2", "3"]
    assert posts["text"].to_list() == ["hello world", "你好", "ok"]
    assert posts["label"].to_list() == ["positive", "negative", "neutral"]
    assert posts["image_path"].to_list() == ["1.jpg", "2.jpg", "3.jpg"]
    assert posts["image_bytes"].null_count() == 3


def test_folder_missing_files_become_null(tmp_path, caplog):
    folder = _folder(tmp_path, "id,label,split\n1,positive,train\n2,negative,train\n", {"1": b"text"}, ("2",))
    with caplog.at_level(logging.WARNING, logger="drf_batch.data"):
        posts = load_labelled_posts(folder)
    assert posts["image_path"].to_list() == [None, "2.jpg"]
    assert posts["text"].to_list() == ["text", None]
    assert "1 of 2 posts have no image file and 1 no text file" in caplog.text


def test_folder_empty_text_is_null(tmp_path):
    folder = _folder(tmp_path, "id,label,split\n1,positive,train\n", {"1": b" \x00\n "}, ("1",))
    assert load_labelled_posts(folder)["text"].to_list() == [None]


def test_folder_unknown_label(tmp_path):
    folder = _folder(tmp_path, "id,label,split\n1,happy,train\n", {"1": b"x"}, ())
    with pytest.raises(LabelledDataError, match="happy"):
        load_labelled_posts(folder)


def test_folder_unknown_split(tmp_path):
    folder = _folder(tmp_path, "id,label,split\n1,positive,validation\n", {"1": b"x"}, ())
    with pytest.raises(LabelledDataError, match="validation"):
        load_labelled_posts(folder)


def test_folder_duplicate_ids(tmp_path):
    folder = _folder(tmp_path, "id,label,split\n1,positive,train\n1,negative,val\n", {"1": b"x"}, ())
    with pytest.raises(LabelledDataError, match="more than once"):
        load_labelled_posts(folder)


def test_folder_unsafe_id(tmp_path):
    folder = _folder(tmp_path, "id,label,split\n../../etc/passwd,positive,train\n", {}, ())
    with pytest.raises(LabelledDataError, match="plain file names"):
        load_labelled_posts(folder)


def test_folder_without_labels_csv(tmp_path):
    with pytest.raises(LabelledDataError, match="labels.csv"):
        load_labelled_posts(tmp_path)


def test_folder_labels_csv_missing_column(tmp_path):
    folder = _folder(tmp_path, "id,sentiment\n1,positive\n", {"1": b"x"}, ())
    with pytest.raises(LabelledDataError, match="label"):
        load_labelled_posts(folder)


def test_folder_without_split_uses_hash(tmp_path):
    folder = _folder(tmp_path, "id,label\n1,positive\n2,negative\n", {"1": b"a", "2": b"b"}, ())
    posts = load_labelled_posts(folder)
    assert posts["split"].to_list() == [hash_split("1"), hash_split("2")]


def test_missing_source(tmp_path):
    with pytest.raises(LabelledDataError, match="not found"):
        load_labelled_posts(tmp_path / "absent.parquet")


def test_default_image_root(tmp_path):
    folder = _folder(tmp_path, "id,label,split\n1,positive,train\n", {"1": b"x"}, ())
    assert default_image_root(folder) == (folder / "images").resolve()
    parquet = tmp_path / "posts.parquet"
    assert default_image_root(parquet) == tmp_path.resolve()


def test_hash_split_deterministic_and_balanced():
    splits = [hash_split(str(i)) for i in range(5000)]
    assert splits == [hash_split(str(i)) for i in range(5000)]
    assert 0.77 < splits.count("train") / 5000 < 0.83
    assert 0.08 < splits.count("val") / 5000 < 0.12
    assert 0.08 < splits.count("test") / 5000 < 0.12


def _write_parquet(path: Path, table: pa.Table) -> Path:
    pq.write_table(table, path)
    return path


def test_parquet_with_split(tmp_path):
    path = _write_parquet(
        tmp_path / "p.parquet",
        pa.table(
            {
                "post_id": ["a", "b"],
                "text": ["hi  there", None],
                "image_path": [None, "img/b.png"],
                "label": ["positive", "neutral"],
                "split": ["train", "test"],
                "author": ["x", "y"],
            }
        ),
    )
    posts = load_labelled_posts(path)
    assert posts.columns == list(LABELLED_POST_SCHEMA)
    assert posts["text"].to_list() == ["hi there", None]
    assert posts["image_path"].to_list() == [None, "img/b.png"]
    assert posts["split"].to_list() == ["train", "test"]


def test_parquet_without_split_hashes(tmp_path):
    ids = [f"post-{i}" for i in range(50)]
    path = _write_parquet(
        tmp_path / "p.parquet",
        pa.table({"post_id": ids, "text": ["t"] * 50, "label": ["negative"] * 50}),
    )
    posts = load_labelled_posts(path)
    assert posts["split"].to_list() == [hash_split(post_id) for post_id in ids]
    assert posts["image_path"].null_count() == 50


def test_parquet_integer_ids_and_large_binary(tmp_path):
    schema = pa.schema([("post_id", pa.int64()), ("image_bytes", pa.large_binary()), ("label", pa.string())])
    path = _write_parquet(
        tmp_path / "p.parquet",
        pa.table({"post_id": [7, 8], "image_bytes": [b"\x89PNG", b"GIF8"], "label": ["positive", "negative"]}, schema=schema),
    )
    posts = load_labelled_posts(path)
    assert posts["post_id"].to_list() == ["7", "8"]
    assert posts["image_bytes"].to_list() == [b"\x89PNG", b"GIF8"]


def test_parquet_missing_post_id(tmp_path):
    path = _write_parquet(tmp_path / "p.parquet", pa.table({"text": ["t"], "label": ["positive"]}))
    with pytest.raises(LabelledDataError, match="post_id"):
        load_labelled_posts(path)


def test_parquet_without_modalities(tmp_path):
    path = _write_parquet(tmp_path / "p.parquet", pa.table({"post_id": ["a"], "label": ["positive"]}))
    with pytest.raises(LabelledDataError, match="modality"):
        load_labelled_posts(path)


def test_parquet_wrong_column_type(tmp_path):
    path = _write_parquet(tmp_path / "p.parquet", pa.table({"post_id": ["a"], "text": [3], "label": ["positive"]}))
    with pytest.raises(LabelledDataError, match="'text'"):
        load_labelled_posts(path)


def test_parquet_duplicate_and_null_ids(tmp_path):
    duplicated = _write_parquet(
        tmp_path / "d.parquet", pa.table({"post_id": ["a", "a"], "text": ["x", "y"], "label": ["positive"] * 2})
    )
    with pytest.raises(LabelledDataError, match="more than once"):
        load_labelled_posts(duplicated)
    null_id = _write_parquet(
        tmp_path / "n.parquet", pa.table({"post_id": ["a", None], "text": ["x", "y"], "label": ["positive"] * 2})
    )
    with pytest.raises(LabelledDataError, match="no post_id"):
        load_labelled_posts(null_id)


def test_parquet_null_label(tmp_path):
    path = _write_parquet(tmp_path / "p.parquet", pa.table({"post_id": ["a"], "text": ["x"], "label": [None]}))
    with pytest.raises(LabelledDataError, match="label outside"):
        load_labelled_posts(path)


def test_parquet_corrupt_and_empty(tmp_path):
    corrupt = tmp_path / "corrupt.parquet"
    corrupt.write_bytes(b"PAR1 definitely not parquet")
    with pytest.raises(LabelledDataError, match="not a readable Parquet"):
        load_labelled_posts(corrupt)
    schema = pa.schema([("post_id", pa.string()), ("text", pa.string()), ("label", pa.string())])
    empty = _write_parquet(tmp_path / "empty.parquet", schema.empty_table())
    with pytest.raises(LabelledDataError, match="no labelled posts"):
        load_labelled_posts(empty)


def test_parquet_post_without_modality_dropped(tmp_path, caplog):
    path = _write_parquet(
        tmp_path / "p.parquet",
        pa.table({"post_id": ["a", "b"], "text": ["x", "   "], "label": ["positive", "negative"]}),
    )
    with caplog.at_level(logging.WARNING, logger="drf_batch.data"):
        posts = load_labelled_posts(path)
    assert posts["post_id"].to_list() == ["a"]
    assert "neither a text nor an image" in caplog.text


def test_custom_label_set(tmp_path):
    path = _write_parquet(tmp_path / "p.parquet", pa.table({"post_id": ["a"], "text": ["x"], "label": ["spam"]}))
    assert load_labelled_posts(path, labels=("ham", "spam"))["label"].to_list() == ["spam"]


def test_mvsa_folder(mvsa_dir):
    posts = load_labelled_posts(mvsa_dir)
    assert posts.height == 3501
    counts = dict(posts.group_by("split").len().iter_rows())
    assert counts == {"train": 2801, "val": 350, "test": 350}
    assert set(posts["label"].unique()) == set(LABELS)
    assert posts["image_path"].null_count() == 0
    root = default_image_root(mvsa_dir)
    assert all((root / name).is_file() for name in posts["image_path"].head(20))
    # About 1,000 texts are GBK-encoded; they must decode to CJK text, not replacement characters.
    assert posts.filter(pl.col("text").str.contains("[\u4e00-\u9fff]")).height > 0
    assert posts.filter(pl.col("text").str.contains("\ufffd")).height == 0


def test_unlabelled_folder_posts(tmp_path):
    from drf_batch.data import load_unlabelled_posts

    folder = _folder(tmp_path, "id,label,split\n1,positive,train\n", {"5": b"five", "6": b""}, ("5",))
    (folder / "unlabelled.csv").write_text("id\n5\n6\n")
    posts = load_unlabelled_posts(folder)
    assert posts.columns == ["post_id", "text", "image_path", "image_bytes"]
    assert posts["post_id"].to_list() == ["5", "6"]
    assert posts["text"].to_list() == ["five", None]
    assert posts["image_path"].to_list() == ["5.jpg", None]


def test_mvsa_unlabelled_posts(mvsa_dir):
    from drf_batch.data import load_unlabelled_posts

    posts = load_unlabelled_posts(mvsa_dir)
    assert posts.height == 860
    assert posts["image_path"].null_count() == 0

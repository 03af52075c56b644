"""Labelled posts for training and evaluation, from an MVSA-style folder or a labelled Parquet.

Both sources become one polars DataFrame with the columns of `LABELLED_POST_SCHEMA`:
post_id, text, image_path (relative to `default_image_root(source)` unless absolute),
image_bytes, label and split.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Sequence
from pathlib import Path

import polars as pl

from drf_batch.texts import decode_text_bytes, normalize_text

logger = logging.getLogger(__name__)

LABELS: tuple[str, ...] = ("negative", "neutral", "positive")
SPLITS: tuple[str, ...] = ("train", "val", "test")

# Fractions of the deterministic split used when a labelled Parquet has no split column.
HASH_SPLIT_FRACTIONS: tuple[float, float, float] = (0.8, 0.1, 0.1)

LABELLED_POST_SCHEMA: dict[str, pl.DataType] = {
    "post_id": pl.String(),
    "text": pl.String(),
    "image_path": pl.String(),
    "image_bytes": pl.Binary(),
    "label": pl.String(),
    "split": pl.String(),
}

POST_COLUMNS: tuple[str, ...] = ("post_id", "text", "image_path", "image_bytes")

# Ids of an MVSA-style folder name files (images/<id>.jpg, texts/<id>.txt), so they must be plain names.
_FOLDER_ID_PATTERN = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]*$")


class LabelledDataError(ValueError):
    """Labelled posts that cannot be used for training, with the reason and the fix."""


def load_labelled_posts(source: Path, *, labels: Sequence[str] = LABELS) -> pl.DataFrame:
    """Load labelled posts from an MVSA-style folder or a labelled Parquet file.

    A folder contains `labels.csv` (id,label[,split]), `images/<id>.jpg` and `texts/<id>.txt`.
    A Parquet file contains post_id, label, optional split, text, and image_path or image_bytes.
    Without a split, posts are split 80/10/10 by a hash of post_id. Labels must be in `labels`.
    """
    source = Path(source)
    if source.is_dir():
        posts = _load_folder(source)
    elif source.is_file() and source.suffix.lower() in (".parquet", ".pq"):
        posts = _load_parquet(source)
    elif source.exists():
        raise LabelledDataError(
            f"labelled data {source} is neither a folder with labels.csv nor a .parquet file"
        )
    else:
        raise LabelledDataError(f"labelled data not found: {source}")

    posts = _validate_labels_and_splits(posts, labels, source)
    return posts.select([pl.col(name).cast(dtype) for name, dtype in LABELLED_POST_SCHEMA.items()])


def default_image_root(source: Path) -> Path:
    """Return the folder that relative image paths of `source` are resolved against.

    For an MVSA-style folder that is its `images/` folder, for a Parquet file the file's folder.
    """
    source = Path(source)
    if source.is_dir():
        return (source / "images").resolve()
    return source.resolve().parent


def hash_split(post_id: str, fractions: tuple[float, float, float] = HASH_SPLIT_FRACTIONS) -> str:
    """Assign a post to train/val/test by the sha256 of its id, stable across runs and machines."""
    position = int.from_bytes(hashlib.sha256(post_id.encode("utf-8")).digest()[:8], "big") / 2**64
    if position < fractions[0]:
        return "train"
    if position < fractions[0] + fractions[1]:
        return "val"
    return "test"


def _read_labels_csv(path: Path) -> pl.DataFrame:
    try:
        table = pl.read_csv(path, infer_schema=False)
    except (pl.exceptions.ComputeError, pl.exceptions.NoDataError) as error:
        raise LabelledDataError(f"{path} is not a readable CSV file: {error}") from None
    missing = {"id", "label"} - set(table.columns)
    if missing:
        raise LabelledDataError(
            f"{path} has columns {table.columns}; expected id,label and optionally split "
            f"(missing: {sorted(missing)})"
        )
    return table


def _load_folder(folder: Path) -> pl.DataFrame:
    labels_path = folder / "labels.csv"
    if not labels_path.is_file():
        raise LabelledDataError(
            f"folder {folder} has no labels.csv; expected labels.csv (id,label[,split]), "
            "images/<id>.jpg and texts/<id>.txt"
        )
    table = _read_labels_csv(labels_path)
    ids = _checked_folder_ids(table, labels_path)

    columns = _read_folder_posts(folder, ids)
    columns["label"] = table["label"].to_list()
    if "split" in table.columns:
        columns["split"] = table["split"].to_list()
    return pl.DataFrame(columns, schema_overrides={"image_bytes": pl.Binary()}, strict=False)


def load_unlabelled_posts(folder: Path, *, ids_file: str = "unlabelled.csv") -> pl.DataFrame:
    """Load the unlabelled posts of an MVSA-style folder, listed by id in `ids_file`.

    Returns post_id, text, image_path (relative to `default_image_root(folder)`) and image_bytes.
    """
    folder = Path(folder)
    ids_path = folder / ids_file
    if not ids_path.is_file():
        raise LabelledDataError(f"{ids_path} not found; expected a CSV with an id column")
    table = pl.read_csv(ids_path, infer_schema=False)
    if "id" not in table.columns:
        raise LabelledDataError(f"{ids_path} has columns {table.columns}; expected an id column")
    ids = _checked_folder_ids(table, ids_path)
    if len(set(ids)) != len(ids):
        raise LabelledDataError(f"{ids_path} lists some ids more than once; ids must be unique")
    posts = pl.DataFrame(_read_folder_posts(folder, ids), schema_overrides={"image_bytes": pl.Binary()}, strict=False)
    return posts.select([pl.col(name).cast(LABELLED_POST_SCHEMA[name]) for name in POST_COLUMNS])


def _checked_folder_ids(table: pl.DataFrame, path: Path) -> list[str]:
    ids = [str(value).strip() if value is not None else "" for value in table["id"].to_list()]
    invalid = [value for value in ids if not _FOLDER_ID_PATTERN.match(value)]
    if invalid:
        raise LabelledDataError(
            f"{path}: {len(invalid)} ids are not plain file names (e.g. {invalid[:3]}); "
            "ids must use letters, digits, '_', '-' and '.' only, because they name the image and text files"
        )
    return ids


def _read_folder_posts(folder: Path, ids: list[str]) -> dict[str, list]:
    """Read texts and find images of an MVSA-style folder; a missing file is a missing modality."""
    image_dir = folder / "images"
    text_dir = folder / "texts"
    image_paths: list[str | None] = []
    texts: list[str | None] = []
    missing_images = 0
    missing_texts = 0
    for post_id in ids:
        image_name = f"{post_id}.jpg"
        if (image_dir / image_name).is_file():
            image_paths.append(image_name)
        else:
            image_paths.append(None)
            missing_images += 1
        text_path = text_dir / f"{post_id}.txt"
        if text_path.is_file():
            texts.append(normalize_text(decode_text_bytes(text_path.read_bytes())))
        else:
            texts.append(None)
            missing_texts += 1
    if missing_images or missing_texts:
        logger.warning(
            "%s: %d of %d posts have no image file and %d no text file; those modalities are missing",
            folder,
            missing_images,
            len(ids),
            missing_texts,
        )

    return {
        "post_id": ids,
        "text": texts,
        "image_path": image_paths,
        "image_bytes": [None] * len(ids),
    }


def _load_parquet(path: Path) -> pl.DataFrame:
    try:
        table = pl.read_parquet(path)
    except Exception as error:  # polars raises several error types for corrupt files
        raise LabelledDataError(f"{path} is not a readable Parquet file: {error}") from None

    missing = {"post_id", "label"} - set(table.columns)
    if missing:
        raise LabelledDataError(
            f"{path} has columns {table.columns}; a labelled Parquet needs post_id and label "
            f"(missing: {sorted(missing)}), plus text and/or image_path or image_bytes"
        )
    if not {"text", "image_path", "image_bytes"} & set(table.columns):
        raise LabelledDataError(
            f"{path} has neither a text, an image_path nor an image_bytes column; posts need at least one modality"
        )

    expected_types = {
        "post_id": (pl.String, pl.Int8, pl.Int16, pl.Int32, pl.Int64, pl.UInt8, pl.UInt16, pl.UInt32, pl.UInt64),
        "text": (pl.String, pl.Null),
        "image_path": (pl.String, pl.Null),
        "image_bytes": (pl.Binary, pl.Null),
        "label": (pl.String, pl.Categorical, pl.Enum, pl.Null),
        "split": (pl.String, pl.Categorical, pl.Enum, pl.Null),
    }
    for column, allowed in expected_types.items():
        if column in table.columns and not isinstance(table.schema[column], allowed):
            raise LabelledDataError(
                f"{path}: column {column!r} has type {table.schema[column]}; expected one of "
                f"{[kind.__name__ for kind in allowed]}"
            )

    for column in ("text", "image_path", "image_bytes"):
        if column not in table.columns:
            table = table.with_columns(pl.lit(None, dtype=LABELLED_POST_SCHEMA[column]).alias(column))
    table = table.with_columns(
        pl.col("post_id").cast(pl.String),
        pl.col("label").cast(pl.String),
        pl.col("text").cast(pl.String).map_elements(normalize_text, return_dtype=pl.String),
        # An empty path is no image, the same as null.
        pl.when(pl.col("image_path").str.strip_chars() == "").then(None).otherwise(pl.col("image_path")).alias(
            "image_path"
        ),
    )
    if "split" in table.columns:
        table = table.with_columns(pl.col("split").cast(pl.String))
    return table


def _validate_labels_and_splits(posts: pl.DataFrame, labels: Sequence[str], source: Path) -> pl.DataFrame:
    if posts.height == 0:
        raise LabelledDataError(f"{source} contains no labelled posts; expected at least one row")

    null_ids = posts["post_id"].null_count()
    if null_ids:
        raise LabelledDataError(f"{source}: {null_ids} posts have no post_id; every post needs a unique id")
    duplicated = posts.filter(pl.col("post_id").is_duplicated())["post_id"].unique().sort().to_list()
    if duplicated:
        raise LabelledDataError(
            f"{source}: {len(duplicated)} post ids occur more than once (e.g. {duplicated[:5]}); ids must be unique"
        )

    posts = posts.with_columns(pl.col("label").str.strip_chars().str.to_lowercase())
    unknown_labels = posts.filter(~pl.col("label").is_in(list(labels)) | pl.col("label").is_null())
    if unknown_labels.height:
        examples = unknown_labels.select("post_id", "label").head(3).rows()
        raise LabelledDataError(
            f"{source}: {unknown_labels.height} posts have a label outside {list(labels)} "
            f"(post_id, label: {examples}); fix the labels or pass the label set"
        )

    if "split" not in posts.columns:
        logger.info("%s has no split column; splitting 80/10/10 by a hash of post_id", source)
        posts = posts.with_columns(
            pl.col("post_id").map_elements(hash_split, return_dtype=pl.String).alias("split")
        )
    posts = posts.with_columns(pl.col("split").str.strip_chars().str.to_lowercase())
    unknown_splits = posts.filter(~pl.col("split").is_in(list(SPLITS)) | pl.col("split").is_null())
    if unknown_splits.height:
        examples = unknown_splits.select("post_id", "split").head(3).rows()
        raise LabelledDataError(
            f"{source}: {unknown_splits.height} posts have a split outside {list(SPLITS)} "
            f"(post_id, split: {examples}); use train, val or test, or drop the split column"
        )

    no_modality = posts.filter(
        pl.col("text").is_null() & pl.col("image_path").is_null() & pl.col("image_bytes").is_null()
    )
    if no_modality.height:
        logger.warning(
            "%s: %d posts have neither a text nor an image (e.g. %s); they are dropped",
            source,
            no_modality.height,
            no_modality["post_id"].head(3).to_list(),
        )
        posts = posts.filter(
            pl.col("text").is_not_null() | pl.col("image_path").is_not_null() | pl.col("image_bytes").is_not_null()
        )
    return posts

"""Frozen-encoder features for training and evaluation, with an on-disk cache.

`encode_posts` turns a DataFrame of posts into image and text feature matrices plus presence
masks (λ_v, λ_t), and encodes each item once. The cache key combines three parts: the encoder
(name, weights fingerprint, preprocessing or tokenizer spec), the item content (sha256 of the raw
image bytes or of the normalised text) and an optional variant key. A disruption can therefore
cache corrupted inputs under its own key. Vectors are stored as one float32 .npy file each, read with
`allow_pickle=False`.

An image that cannot be read or decoded makes the image modality of that post absent (λ_v = 0)
instead of failing the run, and one warning at the end counts the failures by reason.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch
from PIL import Image
from tqdm.auto import tqdm

from drf_batch.encoders.base import ImageEncoder, TextEncoder
from drf_batch.images import (
    DEFAULT_IMAGE_LIMITS,
    ImageLimits,
    ImageLoadError,
    load_image,
    preprocess_image,
    read_image_bytes,
    to_rgb,
)
from drf_batch.paths import feature_cache_dir
from drf_batch.texts import normalize_text, tokenize_texts

logger = logging.getLogger(__name__)

CACHE_FORMAT_VERSION = 1

# Posts whose raw bytes are read and hashed together; bounds the memory held for pending images.
_IMAGE_CHUNK = 256


@dataclass(frozen=True)
class ImageVariant:
    """A change applied to each decoded image before preprocessing, cached under `key`.

    `apply(image, seed)` returns the changed RGB image, or None to make the image absent. The seed
    comes from `item_seed(post_id, key)`, so the same post always gets the same change.
    """

    key: str
    apply: Callable[[Image.Image, int], Image.Image | None]


@dataclass(frozen=True)
class TextVariant:
    """A change applied to each normalised text before tokenisation, cached under `key`.

    `apply(text, seed)` returns the changed text, or None to make the text absent.
    """

    key: str
    apply: Callable[[str, int], str | None]


@dataclass
class Features:
    """Encoded posts, row-aligned with `post_ids`.

    Absent modalities have all-zero feature rows and False in the presence mask. `image_errors`
    maps the post ids whose image could not be loaded to an `ImageLoadError` code.
    """

    post_ids: list[str]
    image: np.ndarray  # [N, Dv] float32
    text: np.ndarray  # [N, Dt] float32
    image_present: np.ndarray  # [N] bool
    text_present: np.ndarray  # [N] bool
    image_errors: dict[str, str] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.post_ids)

    def select(self, indices: Sequence[int] | np.ndarray) -> Features:
        """Return the rows at `indices` (integer positions or a boolean mask) as new Features."""
        index = np.asarray(indices)
        if index.dtype == bool:
            index = np.flatnonzero(index)
        post_ids = [self.post_ids[int(i)] for i in index]
        kept = set(post_ids)
        return Features(
            post_ids=post_ids,
            image=self.image[index],
            text=self.text[index],
            image_present=self.image_present[index],
            text_present=self.text_present[index],
            image_errors={k: v for k, v in self.image_errors.items() if k in kept},
        )


def item_seed(post_id: str, variant_key: str) -> int:
    """Derive a 63-bit seed from a post id and a variant key, the same on every run and machine."""
    digest = hashlib.sha256(f"{variant_key}\x00{post_id}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def _slug(text: str, length: int = 48) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_.")[:length] or "x"


def _sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class FeatureCache:
    """Feature vectors on disk, one .npy file per (encoder, variant, item).

    Layout: `<directory>/<encoder namespace>/<variant>/<2 hex>/<item key>.npy`, where the encoder
    namespace holds a `spec.json` describing the encoder. Writes are atomic (temporary file and
    rename), so concurrent runs can share one cache. The default directory is
    `drf_batch.paths.feature_cache_dir()`.
    """

    def __init__(self, directory: Path | None = None) -> None:
        self.directory = Path(directory) if directory is not None else feature_cache_dir()

    def namespace(self, encoder_spec: dict[str, Any], variant_key: str | None = None) -> Path:
        """Return (and create) the folder for one encoder spec and one variant ("clean" for none)."""
        spec = {"format_version": CACHE_FORMAT_VERSION, **encoder_spec}
        spec_json = json.dumps(spec, sort_keys=True)
        encoder_dir = self.directory / f"{spec['kind']}-{_slug(str(spec['name']))}-{_sha256_text(spec_json)[:16]}"
        encoder_dir.mkdir(parents=True, exist_ok=True)
        spec_file = encoder_dir / "spec.json"
        if not spec_file.exists():
            self._write_atomic(spec_file, (json.dumps(spec, indent=2, sort_keys=True) + "\n").encode())

        if variant_key is None:
            variant_dir = encoder_dir / "clean"
        else:
            variant_dir = encoder_dir / f"variant-{_slug(variant_key)}-{_sha256_text(variant_key)[:12]}"
        variant_dir.mkdir(exist_ok=True)
        if variant_key is not None and not (variant_dir / "variant.txt").exists():
            self._write_atomic(variant_dir / "variant.txt", (variant_key + "\n").encode())
        return variant_dir

    @staticmethod
    def _item_path(namespace: Path, item_key: str) -> Path:
        return namespace / item_key[:2] / f"{item_key}.npy"

    def get(self, namespace: Path, item_key: str) -> np.ndarray | None:
        """Return the cached vector, or None when absent or unreadable."""
        path = self._item_path(namespace, item_key)
        try:
            vector = np.load(path, allow_pickle=False)
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as error:
            # A damaged entry is recomputed and overwritten.
            logger.debug("ignoring unreadable cache entry %s: %s", path, error)
            return None
        return vector

    def put(self, namespace: Path, item_key: str, vector: np.ndarray) -> None:
        """Store one float32 vector."""
        path = self._item_path(namespace, item_key)
        path.parent.mkdir(exist_ok=True)
        buffer = _npy_bytes(np.ascontiguousarray(vector, dtype=np.float32))
        self._write_atomic(path, buffer)

    @staticmethod
    def _write_atomic(path: Path, data: bytes) -> None:
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=path.suffix)
        try:
            with os.fdopen(handle, "wb") as output:
                output.write(data)
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise


def _npy_bytes(array: np.ndarray) -> bytes:
    import io

    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def _cache_namespace(
    cache: FeatureCache | None,
    encoder: ImageEncoder | TextEncoder,
    variant: ImageVariant | TextVariant | None,
) -> Path | None:
    if cache is None:
        return None
    variant_key = variant.key if variant is not None else None
    return cache.namespace(encoder.cache_spec(), variant_key)


@dataclass
class _PendingImage:
    row: int
    post_id: str
    item_key: str
    raw: bytes


def encode_posts(
    posts: pl.DataFrame,
    image_encoder: ImageEncoder | None,
    text_encoder: TextEncoder | None,
    *,
    image_root: Path | None,
    cache: FeatureCache | None,
    batch_size: int = 32,
    image_variant: ImageVariant | None = None,
    text_variant: TextVariant | None = None,
    image_limits: ImageLimits = DEFAULT_IMAGE_LIMITS,
    decode_workers: int | None = None,
    progress: bool = True,
) -> Features:
    """Encode the images and texts of `posts` with frozen encoders, using `cache` when given.

    `posts` needs post_id and any of text, image_path (resolved under `image_root`) and
    image_bytes (used when both are set). An encoder given as None leaves that modality absent
    with zero-width features. Images are decoded in `decode_workers` threads (default: up to 4),
    and the encoders run under `torch.inference_mode` with the current `torch.get_num_threads()`.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size}; expected a positive number of items per batch")
    if "post_id" not in posts.columns:
        raise ValueError(f"posts have columns {posts.columns}; expected a post_id column")

    post_ids = [str(value) for value in posts["post_id"].to_list()]
    count = len(post_ids)

    if image_encoder is not None:
        image, image_present, image_errors = _encode_images(
            posts,
            post_ids,
            image_encoder,
            image_root=image_root,
            cache=cache,
            batch_size=batch_size,
            variant=image_variant,
            limits=image_limits,
            workers=decode_workers if decode_workers is not None else min(4, os.cpu_count() or 1),
            progress=progress,
        )
    else:
        image = np.zeros((count, 0), dtype=np.float32)
        image_present = np.zeros(count, dtype=bool)
        image_errors = {}

    if text_encoder is not None:
        text, text_present = _encode_texts(
            posts,
            post_ids,
            text_encoder,
            cache=cache,
            batch_size=batch_size,
            variant=text_variant,
            progress=progress,
        )
    else:
        text = np.zeros((count, 0), dtype=np.float32)
        text_present = np.zeros(count, dtype=bool)

    return Features(
        post_ids=post_ids,
        image=image,
        text=text,
        image_present=image_present,
        text_present=text_present,
        image_errors=image_errors,
    )


def _column(posts: pl.DataFrame, name: str) -> list[Any]:
    if name in posts.columns:
        return posts[name].to_list()
    return [None] * posts.height


def _device_of(module: torch.nn.Module) -> torch.device:
    parameter = next(module.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


class _EvalMode:
    """Put a module in eval mode for a block and restore its previous mode afterwards."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.module = module
        self.was_training = module.training

    def __enter__(self) -> None:
        if self.was_training:
            self.module.eval()

    def __exit__(self, *exc_info: object) -> None:
        if self.was_training:
            self.module.train()


def _read_and_key(
    row: int,
    post_id: str,
    image_bytes: bytes | None,
    image_path: str | None,
    image_root: Path | None,
    limits: ImageLimits,
    variant: ImageVariant | None,
) -> _PendingImage:
    if image_bytes is not None:
        raw = bytes(image_bytes)
        if len(raw) == 0:
            raise ImageLoadError("empty_file", f"post {post_id}: image_bytes is empty (0 bytes)")
        if len(raw) > limits.max_bytes:
            raise ImageLoadError(
                "too_large", f"post {post_id}: image_bytes has {len(raw)} bytes, over the limit of {limits.max_bytes}"
            )
    else:
        assert image_path is not None
        if image_root is None:
            raise ImageLoadError(
                "no_image_root", f"post {post_id}: image_path {image_path!r} needs an image root; pass image_root"
            )
        raw = read_image_bytes(image_path, root=image_root, limits=limits)

    item_key = hashlib.sha256(raw).hexdigest()
    if variant is not None:
        item_key = _sha256_text(f"{item_key}\x00{item_seed(post_id, variant.key)}")
    return _PendingImage(row=row, post_id=post_id, item_key=item_key, raw=raw)


def _decode_and_preprocess(
    pending: _PendingImage,
    encoder: ImageEncoder,
    limits: ImageLimits,
    variant: ImageVariant | None,
) -> np.ndarray | None:
    image = load_image(pending.raw, limits=limits)
    if variant is not None:
        changed = variant.apply(image, item_seed(pending.post_id, variant.key))
        if changed is None:
            return None
        image = to_rgb(changed)
    return preprocess_image(image, encoder.preprocessing)


def _encode_images(
    posts: pl.DataFrame,
    post_ids: list[str],
    encoder: ImageEncoder,
    *,
    image_root: Path | None,
    cache: FeatureCache | None,
    batch_size: int,
    variant: ImageVariant | None,
    limits: ImageLimits,
    workers: int,
    progress: bool,
) -> tuple[np.ndarray, np.ndarray, dict[str, str]]:
    count = len(post_ids)
    features = np.zeros((count, encoder.dim), dtype=np.float32)
    present = np.zeros(count, dtype=bool)
    errors: dict[str, str] = {}
    error_examples: dict[str, str] = {}
    discarded = 0

    paths = _column(posts, "image_path")
    blobs = _column(posts, "image_bytes")
    rows = [i for i in range(count) if blobs[i] is not None or (paths[i] is not None and str(paths[i]).strip())]
    namespace = _cache_namespace(cache, encoder, variant)
    device = _device_of(encoder)

    def record_error(row: int, error: ImageLoadError) -> None:
        errors[post_ids[row]] = error.code
        error_examples.setdefault(error.code, f"post {post_ids[row]}: {error}")

    bar = tqdm(total=len(rows), desc=f"images ({encoder.name})", unit="img", disable=not progress)
    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="drf-image") as pool, _EvalMode(encoder):
        for start in range(0, len(rows), _IMAGE_CHUNK):
            chunk = rows[start:start + _IMAGE_CHUNK]
            read_jobs = [
                (row, pool.submit(_read_and_key, row, post_ids[row], blobs[row], paths[row], image_root, limits, variant))
                for row in chunk
            ]
            misses: list[_PendingImage] = []
            for row, job in read_jobs:
                try:
                    pending = job.result()
                except ImageLoadError as error:
                    record_error(row, error)
                    bar.update(1)
                    continue
                cached = cache.get(namespace, pending.item_key) if cache and namespace else None
                if cached is not None and cached.shape == (encoder.dim,):
                    features[row] = cached
                    present[row] = True
                    bar.update(1)
                else:
                    misses.append(pending)

            decode_jobs = [(item, pool.submit(_decode_and_preprocess, item, encoder, limits, variant)) for item in misses]
            for batch in _batches(decode_jobs, batch_size):
                arrays: list[np.ndarray] = []
                batch_items: list[_PendingImage] = []
                for item, job in batch:
                    try:
                        pixels = job.result()
                    except ImageLoadError as error:
                        record_error(item.row, error)
                        continue
                    if pixels is None:
                        discarded += 1
                        continue
                    arrays.append(pixels)
                    batch_items.append(item)
                if arrays:
                    with torch.inference_mode():
                        output = encoder(torch.from_numpy(np.stack(arrays)).to(device))
                    vectors = output.float().cpu().numpy()
                    for item, vector in zip(batch_items, vectors):
                        features[item.row] = vector
                        present[item.row] = True
                        if cache and namespace:
                            cache.put(namespace, item.item_key, vector)
                bar.update(len(batch))
    bar.close()

    if errors:
        counts = Counter(errors.values())
        summary = ", ".join(f"{code}: {number}" for code, number in counts.most_common())
        examples = "; ".join(error_examples[code] for code, _ in counts.most_common(3))
        logger.warning(
            "%d of %d images could not be loaded and are treated as missing (%s). Examples: %s",
            len(errors),
            len(rows),
            summary,
            examples,
        )
    if discarded:
        logger.info("image variant %r made %d images absent", variant.key if variant else None, discarded)
    return features, present, errors


def _batches(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _encode_texts(
    posts: pl.DataFrame,
    post_ids: list[str],
    encoder: TextEncoder,
    *,
    cache: FeatureCache | None,
    batch_size: int,
    variant: TextVariant | None,
    progress: bool,
) -> tuple[np.ndarray, np.ndarray]:
    count = len(post_ids)
    features = np.zeros((count, encoder.dim), dtype=np.float32)
    present = np.zeros(count, dtype=bool)
    namespace = _cache_namespace(cache, encoder, variant)
    device = _device_of(encoder)

    misses: list[tuple[int, str, str]] = []  # (row, item key, text to encode)
    discarded = 0
    for row, raw_text in enumerate(_column(posts, "text")):
        text = normalize_text(raw_text)
        if text is None:
            continue
        item_key = _sha256_text(text)
        if variant is not None:
            item_key = _sha256_text(f"{item_key}\x00{item_seed(post_ids[row], variant.key)}")
        cached = cache.get(namespace, item_key) if cache and namespace else None
        if cached is not None and cached.shape == (encoder.dim,):
            features[row] = cached
            present[row] = True
            continue
        if variant is not None:
            text = normalize_text(variant.apply(text, item_seed(post_ids[row], variant.key)))
            if text is None:
                discarded += 1
                continue
        misses.append((row, item_key, text))

    # Sorting by length keeps the padding within each batch small.
    misses.sort(key=lambda item: len(item[2]))
    bar = tqdm(total=len(misses), desc=f"texts ({encoder.name})", unit="text", disable=not progress)
    with _EvalMode(encoder):
        for batch in _batches(misses, batch_size):
            input_ids, attention_mask = tokenize_texts(
                encoder.tokenizer, [text for _, _, text in batch], max_length=encoder.max_length
            )
            with torch.inference_mode():
                output = encoder(torch.from_numpy(input_ids).to(device), torch.from_numpy(attention_mask).to(device))
            vectors = output.float().cpu().numpy()
            for (row, item_key, _), vector in zip(batch, vectors):
                features[row] = vector
                present[row] = True
                if cache and namespace:
                    cache.put(namespace, item_key, vector)
            bar.update(len(batch))
    bar.close()

    if discarded:
        logger.info("text variant %r made %d texts absent", variant.key if variant else None, discarded)
    return features, present

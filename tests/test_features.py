"""Feature cache and encode_posts: caching, keys, variants, failed images and real MVSA posts."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from PIL import Image

from drf_batch.encoders import ImageEncoder, ImagePreprocessing, TextEncoder
from drf_batch.encoders.hf_text import mean_pool
from drf_batch.features import (
    FeatureCache,
    Features,
    ImageVariant,
    TextVariant,
    encode_posts,
    item_seed,
)
from drf_batch.images import load_image, preprocess_image
from drf_batch.paths import CACHE_ENV_VAR, cache_dir, feature_cache_dir
from drf_batch.texts import tokenize_texts

TINY_SPEC = ImagePreprocessing(size=8, resize=8, interpolation="bilinear", mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))


class CountingImageEncoder(ImageEncoder):
    """Mean colour of the image times a learnable scale; counts the images it encodes."""

    def __init__(self) -> None:
        super().__init__(name="counting-image", dim=3, preprocessing=TINY_SPEC)
        self.scale = torch.nn.Parameter(torch.ones(1))
        self.encoded = 0

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        self.encoded += pixel_values.shape[0]
        return pixel_values.mean(dim=(2, 3)) * self.scale


class CountingTextEncoder(TextEncoder):
    """Mean-pooled random token embeddings; counts the texts it encodes."""

    def __init__(self, tokenizer) -> None:
        super().__init__(name="counting-text", dim=4, max_length=32, tokenizer=tokenizer)
        torch.manual_seed(0)
        self.embedding = torch.nn.Embedding(tokenizer.vocab_size, 4)
        self.encoded = 0

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        self.encoded += input_ids.shape[0]
        return mean_pool(self.embedding(input_ids), attention_mask)


def _png(color: tuple[int, int, int], size=(16, 12)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def image_root(tmp_path) -> Path:
    root = tmp_path / "images"
    root.mkdir()
    (root / "red.png").write_bytes(_png((255, 0, 0)))
    (root / "green.png").write_bytes(_png((0, 255, 0)))
    (root / "broken.jpg").write_bytes(b"not an image at all")
    (root / "empty.jpg").write_bytes(b"")
    return root


@pytest.fixture
def posts() -> pl.DataFrame:
    return pl.DataFrame(
        {
            "post_id": ["p1", "p2", "p3", "p4", "p5", "p6"],
            "text": ["a happy day", None, "   ", "sad news today", "ok", "a happy day"],
            "image_path": ["red.png", "green.png", None, "broken.jpg", "empty.jpg", None],
            "image_bytes": [None, None, None, None, None, _png((0, 0, 255))],
        },
        schema_overrides={"image_bytes": pl.Binary()},
    )


@pytest.fixture
def encoders(text_encoder) -> tuple[CountingImageEncoder, CountingTextEncoder]:
    return CountingImageEncoder().eval(), CountingTextEncoder(text_encoder.tokenizer).eval()


def _encode(posts, encoders, image_root, cache, **options) -> Features:
    image_encoder, text_encoder = encoders
    return encode_posts(posts, image_encoder, text_encoder, image_root=image_root, cache=cache, progress=False, **options)


def test_cache_dir_from_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(CACHE_ENV_VAR, str(tmp_path / "custom"))
    assert cache_dir() == tmp_path / "custom"
    assert feature_cache_dir() == tmp_path / "custom" / "features"
    monkeypatch.delenv(CACHE_ENV_VAR)
    assert cache_dir() == Path.home() / ".cache" / "drf-batch"


def test_default_cache_location(monkeypatch, tmp_path):
    monkeypatch.setenv(CACHE_ENV_VAR, str(tmp_path))
    assert FeatureCache().directory == tmp_path / "features"


def test_encode_shapes_and_presence(posts, encoders, image_root):
    features = _encode(posts, encoders, image_root, None)
    assert features.post_ids == ["p1", "p2", "p3", "p4", "p5", "p6"]
    assert features.image.shape == (6, 3)
    assert features.text.shape == (6, 4)
    assert features.image.dtype == np.float32
    assert features.image_present.tolist() == [True, True, False, False, False, True]
    assert features.text_present.tolist() == [True, False, False, True, True, True]
    np.testing.assert_allclose(features.image[0], [1.0, 0.0, 0.0], atol=1e-6)
    np.testing.assert_allclose(features.image[5], [0.0, 0.0, 1.0], atol=1e-6)
    assert not features.image[2:5].any()
    assert not features.text[[1, 2]].any()
    np.testing.assert_array_equal(features.text[0], features.text[5])


def test_encode_failed_images_warn_once(posts, encoders, image_root, caplog):
    with caplog.at_level(logging.WARNING, logger="drf_batch.features"):
        features = _encode(posts, encoders, image_root, None)
    assert features.image_errors == {"p4": "not_an_image", "p5": "empty_file"}
    warnings = [record for record in caplog.records if record.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "2 of 5 images could not be loaded" in warnings[0].getMessage()
    assert "not_an_image: 1" in warnings[0].getMessage()


def test_encode_uses_cache(posts, encoders, image_root, tmp_path):
    cache = FeatureCache(tmp_path / "cache")
    first = _encode(posts, encoders, image_root, cache)
    image_encoder, text_encoder = encoders
    encoded_images, encoded_texts = image_encoder.encoded, text_encoder.encoded
    assert encoded_images == 3
    assert encoded_texts == 4

    second = _encode(posts, encoders, image_root, cache)
    assert image_encoder.encoded == encoded_images
    assert text_encoder.encoded == encoded_texts
    np.testing.assert_array_equal(first.image, second.image)
    np.testing.assert_array_equal(first.text, second.text)
    np.testing.assert_array_equal(first.image_present, second.image_present)


def test_cache_files_load_without_pickle(posts, encoders, image_root, tmp_path):
    cache = FeatureCache(tmp_path / "cache")
    _encode(posts, encoders, image_root, cache)
    files = list((tmp_path / "cache").rglob("*.npy"))
    assert len(files) == 3 + 3  # three images; four texts of which two are identical
    for path in files:
        vector = np.load(path, allow_pickle=False)
        assert vector.dtype == np.float32
        assert vector.ndim == 1


def test_cache_key_changes_with_weights(posts, encoders, image_root, tmp_path):
    cache = FeatureCache(tmp_path / "cache")
    _encode(posts, encoders, image_root, cache)
    image_encoder, _ = encoders
    with torch.no_grad():
        image_encoder.scale.fill_(2.0)
    image_encoder.train().eval()  # a mode change drops the cached fingerprint
    before = image_encoder.encoded
    features = _encode(posts, encoders, image_root, cache)
    assert image_encoder.encoded == before + 3
    np.testing.assert_allclose(features.image[0], [2.0, 0.0, 0.0], atol=1e-6)


def test_cache_key_changes_with_preprocessing(encoders):
    image_encoder, _ = encoders
    spec_before = image_encoder.cache_spec()
    image_encoder.preprocessing = ImagePreprocessing(
        size=8, resize=10, interpolation="bilinear", mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0)
    )
    assert image_encoder.cache_spec() != spec_before


def test_text_cache_spec_stable_after_tokenising(encoders):
    _, text_encoder = encoders
    before = text_encoder.cache_spec()
    tokenize_texts(text_encoder.tokenizer, ["some text"], max_length=8)
    assert text_encoder.cache_spec() == before


def test_corrupt_cache_entry_recomputed(posts, encoders, image_root, tmp_path):
    cache = FeatureCache(tmp_path / "cache")
    first = _encode(posts, encoders, image_root, cache)
    for path in (tmp_path / "cache").rglob("*.npy"):
        path.write_bytes(b"garbage")
    second = _encode(posts, encoders, image_root, cache)
    np.testing.assert_array_equal(first.image, second.image)
    np.testing.assert_array_equal(first.text, second.text)


def test_image_variant_seeded_and_cached(posts, encoders, image_root, tmp_path):
    cache = FeatureCache(tmp_path / "cache")
    calls: list[int] = []

    def darken(image: Image.Image, seed: int) -> Image.Image:
        calls.append(seed)
        return Image.eval(image, lambda value: value // 2)

    variant = ImageVariant(key="darken:seed=1", apply=darken)
    clean = _encode(posts, encoders, image_root, cache)
    changed = _encode(posts, encoders, image_root, cache, image_variant=variant)
    assert sorted(calls) == sorted(item_seed(post_id, variant.key) for post_id in ("p1", "p2", "p6"))
    np.testing.assert_allclose(changed.image[0], [127 / 255, 0.0, 0.0], atol=1e-6)
    np.testing.assert_array_equal(changed.text, clean.text)

    calls.clear()
    again = _encode(posts, encoders, image_root, cache, image_variant=variant)
    assert calls == []
    np.testing.assert_array_equal(again.image, changed.image)
    assert _encode(posts, encoders, image_root, cache).image.tolist() == clean.image.tolist()


def test_image_variant_seed_differs_per_post(encoders, image_root):
    seen: dict[int, int] = {}

    def record(image: Image.Image, seed: int) -> Image.Image:
        seen[seed] = seen.get(seed, 0) + 1
        return image

    same_image = pl.DataFrame({"post_id": ["a", "b"], "image_path": ["red.png", "red.png"]})
    image_encoder, _ = encoders
    encode_posts(
        same_image,
        image_encoder,
        None,
        image_root=image_root,
        cache=None,
        image_variant=ImageVariant(key="record", apply=record),
        progress=False,
    )
    assert len(seen) == 2


def test_image_variant_none_makes_absent(posts, encoders, image_root):
    variant = ImageVariant(key="discard", apply=lambda image, seed: None)
    features = _encode(posts, encoders, image_root, None, image_variant=variant)
    assert not features.image_present.any()
    assert features.image_errors == {"p4": "not_an_image", "p5": "empty_file"}


def test_text_variant_seeded_and_cached(posts, encoders, image_root, tmp_path):
    cache = FeatureCache(tmp_path / "cache")
    seeds: list[tuple[str, int]] = []

    def mask_all(text: str, seed: int) -> str | None:
        seeds.append((text, seed))
        return " ".join("[MASK]" for _ in text.split()) if text != "ok" else None

    variant = TextVariant(key="mask-all", apply=mask_all)
    changed = _encode(posts, encoders, image_root, cache, text_variant=variant)
    assert ("a happy day", item_seed("p1", variant.key)) in seeds
    assert ("a happy day", item_seed("p6", variant.key)) in seeds
    assert changed.text_present.tolist() == [True, False, False, True, False, True]
    # Both "a happy day" posts become "[MASK] [MASK] [MASK]".
    np.testing.assert_array_equal(changed.text[0], changed.text[5])

    seeds.clear()
    _encode(posts, encoders, image_root, cache, text_variant=variant)
    # Cached variants are not recomputed; only the discarded text ("ok") is asked again.
    assert seeds == [("ok", item_seed("p5", variant.key))]


def test_item_seed_deterministic():
    assert item_seed("post-1", "k") == item_seed("post-1", "k")
    assert item_seed("post-1", "k") != item_seed("post-2", "k")
    assert item_seed("post-1", "k") != item_seed("post-1", "k2")
    assert 0 <= item_seed("x", "y") < 2**63


def test_image_path_without_root(posts, encoders):
    features = _encode(posts, encoders, None, None)
    assert features.image_errors["p1"] == "no_image_root"
    assert features.image_present.tolist() == [False, False, False, False, False, True]


def test_missing_columns_are_absent(encoders):
    image_encoder, text_encoder = encoders
    features = encode_posts(
        pl.DataFrame({"post_id": ["a"], "text": ["only text"]}),
        image_encoder,
        text_encoder,
        image_root=None,
        cache=None,
        progress=False,
    )
    assert features.image_present.tolist() == [False]
    assert features.text_present.tolist() == [True]


def test_encoder_none_leaves_modality_absent(posts, encoders, image_root):
    image_encoder, _ = encoders
    features = encode_posts(posts, image_encoder, None, image_root=image_root, cache=None, progress=False)
    assert features.text.shape == (6, 0)
    assert not features.text_present.any()


def test_training_mode_restored(posts, encoders, image_root):
    image_encoder, text_encoder = encoders
    image_encoder.train()
    threads = torch.get_num_threads()
    _encode(posts, encoders, image_root, None)
    assert image_encoder.training is True
    assert text_encoder.training is False
    assert torch.get_num_threads() == threads


def test_batch_size_validated(posts, encoders, image_root):
    with pytest.raises(ValueError, match="batch_size"):
        _encode(posts, encoders, image_root, None, batch_size=0)


def test_features_select(posts, encoders, image_root):
    features = _encode(posts, encoders, image_root, None)
    subset = features.select(np.array([False, False, False, True, True, True]))
    assert subset.post_ids == ["p4", "p5", "p6"]
    assert subset.image.shape == (3, 3)
    assert subset.image_errors == {"p4": "not_an_image", "p5": "empty_file"}
    assert len(features.select([0, 1])) == 2


def test_real_encoders_on_mvsa(mvsa_dir, image_encoder, text_encoder, tmp_path):
    from drf_batch.data import default_image_root, load_labelled_posts

    posts = load_labelled_posts(mvsa_dir).head(6)
    root = default_image_root(mvsa_dir)
    cache = FeatureCache(tmp_path / "cache")
    features = encode_posts(
        posts, image_encoder, text_encoder, image_root=root, cache=cache, batch_size=4, progress=False
    )
    assert features.image.shape == (6, 1280)
    assert features.text.shape == (6, 384)
    assert features.image_present.all()
    assert features.text_present.all()
    assert np.isfinite(features.image).all()

    # The batched, cached path equals encoding one post directly.
    pixels = preprocess_image(load_image(root / posts["image_path"][0]), image_encoder.preprocessing)
    input_ids, attention_mask = tokenize_texts(text_encoder.tokenizer, [posts["text"][0]], max_length=text_encoder.max_length)
    with torch.inference_mode():
        direct_image = image_encoder(torch.from_numpy(pixels[None])).numpy()[0]
        direct_text = text_encoder(torch.from_numpy(input_ids), torch.from_numpy(attention_mask)).numpy()[0]
    np.testing.assert_allclose(features.image[0], direct_image, atol=1e-4)
    np.testing.assert_allclose(features.text[0], direct_text, atol=1e-4)

    cached = encode_posts(posts, image_encoder, text_encoder, image_root=root, cache=cache, progress=False)
    np.testing.assert_array_equal(cached.image, features.image)
    np.testing.assert_array_equal(cached.text, features.text)

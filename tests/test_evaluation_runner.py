"""Tests of the feature bank and the grid runner on synthetic features (no encoders)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from drf_batch.disruption import plan_disruptions
from drf_batch.evaluation.bank import FeatureBank
from drf_batch.evaluation.baselines import BlankFeatures
from drf_batch.evaluation.grid import GridSpec
from drf_batch.evaluation.runner import GridTraining, build_model, run_grid
from drf_batch.model import DRFHead

IMAGE_DIM, TEXT_DIM = 6, 4


def _bank(n: int, offset: int, seed: int) -> FeatureBank:
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 3
    clean_image = rng.normal(size=(n, IMAGE_DIM)).astype(np.float32)
    clean_image[np.arange(n), labels] += 3.0
    clean_text = rng.normal(size=(n, TEXT_DIM)).astype(np.float32)
    clean_text[np.arange(n), labels] += 3.0
    return FeatureBank(
        post_ids=tuple(f"p{offset + i}" for i in range(n)),
        labels=labels,
        clean_image=clean_image,
        clean_text=clean_text,
        corrupted_image=np.full((n, IMAGE_DIM), 7.0, np.float32),
        corrupted_text=np.full((n, TEXT_DIM), -7.0, np.float32),
        image_present=np.ones(n, bool),
        text_present=np.ones(n, bool),
    )


def test_assemble_clean_keeps_features() -> None:
    bank = _bank(10, 0, 0)

    arrays = bank.assemble(None)

    assert np.array_equal(arrays.feat_v, bank.clean_image)
    assert arrays.lam_v.tolist() == [1.0] * 10
    assert arrays.lam_t.tolist() == [1.0] * 10


def test_assemble_fixed_discard_zeroes_modality() -> None:
    bank = _bank(10, 0, 0)
    plan = plan_disruptions(bank.post_ids, setting="D", mode="fixed", modality="text", dr=1.0, seed=0)

    arrays = bank.assemble(plan)

    assert arrays.lam_t.sum() == 0
    assert arrays.lam_v.sum() == 10
    assert not arrays.feat_t.any()


def test_assemble_fixed_corrupt_swaps_features() -> None:
    bank = _bank(10, 0, 0)
    plan = plan_disruptions(bank.post_ids, setting="C", mode="fixed", modality="image", dr=1.0, seed=0)

    arrays = bank.assemble(plan)

    assert np.all(arrays.feat_v == 7.0)
    assert np.array_equal(arrays.feat_t, bank.clean_text)
    assert arrays.lam_v.sum() == 10


def test_assemble_random_disrupts_one_modality_per_post() -> None:
    bank = _bank(40, 0, 0)
    plan = plan_disruptions(bank.post_ids, setting="C+D", mode="random", dr=0.5, seed=3)

    arrays = bank.assemble(plan)

    discarded = (arrays.lam_v == 0) | (arrays.lam_t == 0)
    corrupted = np.all(arrays.feat_v == 7.0, axis=1) | np.all(arrays.feat_t == -7.0, axis=1)
    assert discarded.sum() == 10
    assert corrupted.sum() == 10
    assert not (discarded & corrupted).any()
    assert np.all(arrays.lam_v + arrays.lam_t >= 1)


def test_assemble_never_discards_only_modality() -> None:
    bank = _bank(6, 0, 0)
    bank = FeatureBank(**{**bank.__dict__, "image_present": np.zeros(6, bool)})
    plan = plan_disruptions(bank.post_ids, setting="D", mode="fixed", modality="text", dr=1.0, seed=0)

    arrays = bank.assemble(plan)

    assert arrays.lam_t.sum() == 6
    assert arrays.lam_v.sum() == 0


def test_bank_rejects_misaligned_rows() -> None:
    bank = _bank(6, 0, 0)

    with pytest.raises(ValueError, match="clean_text has 5 rows, expected 6"):
        FeatureBank(**{**bank.__dict__, "clean_text": bank.clean_text[:5]})


def test_build_model_names() -> None:
    blanks = BlankFeatures(np.zeros(IMAGE_DIM, np.float32), np.zeros(TEXT_DIM, np.float32))
    training = GridTraining(d=8, hidden=8)

    ablated = build_model("drf-no-expansion", image_dim=IMAGE_DIM, text_dim=TEXT_DIM, num_classes=3,
                          blanks=blanks, training=training)
    unnormalized = build_model("drf-no-normalize_weights", image_dim=IMAGE_DIM, text_dim=TEXT_DIM, num_classes=3,
                               blanks=blanks, training=training)
    base = build_model("drf", image_dim=IMAGE_DIM, text_dim=TEXT_DIM, num_classes=3, blanks=blanks,
                       training=training)

    assert isinstance(ablated, DRFHead)
    assert ablated.config.expansion is False
    assert ablated.config.quality_weights is True
    assert unnormalized.config.normalize_weights is False
    assert base.config.normalize_weights is True
    assert base.config.recovery_feature_gradient is False
    with pytest.raises(ValueError, match="unknown DRF ablation 'dropout'"):
        build_model("drf-no-dropout", image_dim=IMAGE_DIM, text_dim=TEXT_DIM, num_classes=3, blanks=blanks,
                    training=training)


def _train_briefly(head, train, val, *, seed, training):  # noqa: ANN001, ANN202
    optimizer = torch.optim.AdamW(head.parameters(), lr=1e-2)
    head.train()
    for _ in range(training.epochs):
        output = head(*(torch.from_numpy(a) for a in (train.feat_v, train.feat_t, train.lam_v, train.lam_t)))
        loss = torch.nn.functional.cross_entropy(output.logits, torch.from_numpy(train.labels))
        loss = loss + sum(output.losses.values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    if isinstance(head, DRFHead):
        head.freeze_statistics()
    return {"best_epoch": training.epochs}


def test_run_grid_rows_cover_models_settings_seeds() -> None:
    banks = {"train": _bank(60, 0, 0), "val": _bank(30, 100, 1), "test": _bank(30, 200, 2)}
    blanks = BlankFeatures(np.zeros(IMAGE_DIM, np.float32), np.zeros(TEXT_DIM, np.float32))
    spec = GridSpec(models=("drf", "concat"), ablations=("expansion",), seeds=(0, 1), rates=(0.4,))

    results = run_grid(spec, banks, blanks=blanks, num_classes=3, training=GridTraining(epochs=5, d=8, hidden=8),
                       train_function=_train_briefly, progress=False)

    settings = {setting.name for setting in spec.settings()}
    assert {row["setting"] for row in results.rows} == settings
    assert len(results.rows) == len(settings) * 3 * 2
    assert set(results.confusions) == {"drf", "concat", "drf-no-expansion"}
    assert results.confusions["drf"].sum() == 2 * 30
    assert {(flag["modality"], flag["seed"]) for flag in results.flags} == {
        ("image", 0), ("text", 0), ("image", 1), ("text", 1)
    }
    clean_drf = [row for row in results.rows if row["model"] == "drf" and row["setting"] == "clean"]
    assert all(row["accuracy"] > 0.5 for row in clean_drf)


def test_saved_banks_round_trip(tmp_path) -> None:  # noqa: ANN001
    from drf_batch.evaluation.parallel import load_banks, save_banks

    banks = {"train": _bank(9, 0, 0), "val": _bank(6, 100, 1), "test": _bank(6, 200, 2)}
    blanks = BlankFeatures(np.ones(IMAGE_DIM, np.float32), np.zeros(TEXT_DIM, np.float32))

    save_banks(tmp_path, banks, blanks)
    loaded, loaded_blanks = load_banks(tmp_path)

    assert loaded["val"].post_ids == banks["val"].post_ids
    assert np.array_equal(loaded["train"].corrupted_image, banks["train"].corrupted_image)
    assert np.array_equal(loaded["test"].image_present, banks["test"].image_present)
    assert np.array_equal(loaded_blanks.image, blanks.image)


def test_run_grid_in_processes_matches_sequential() -> None:
    banks = {"train": _bank(60, 0, 0), "val": _bank(30, 100, 1), "test": _bank(30, 200, 2)}
    blanks = BlankFeatures(np.zeros(IMAGE_DIM, np.float32), np.zeros(TEXT_DIM, np.float32))
    spec = GridSpec(models=("drf", "concat"), ablations=(), seeds=(0,), kinds=("D",), rates=(0.4,))
    training = GridTraining(epochs=3, d=8, hidden=8)

    sequential = run_grid(spec, banks, blanks=blanks, num_classes=3, training=training,
                          train_function=_train_briefly, progress=False)
    parallel = run_grid(spec, banks, blanks=blanks, num_classes=3, training=training,
                        train_function=_train_briefly, progress=False, workers=2)

    assert [row["setting"] for row in parallel.rows] == [row["setting"] for row in sequential.rows]
    for ours, theirs in zip(parallel.rows, sequential.rows):
        assert ours["accuracy"] == pytest.approx(theirs["accuracy"], abs=0.05)
    assert parallel.confusions.keys() == sequential.confusions.keys()

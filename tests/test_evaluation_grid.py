"""Tests of the robustness grid definition and its CLI option parsing."""

from __future__ import annotations

import pytest

from drf_batch.evaluation.grid import (
    ABLATIONS,
    GridSpec,
    Setting,
    ablation_model_name,
    parse_csv_option,
    parse_seeds,
)


def test_settings_cover_paper_grid() -> None:
    names = [setting.name for setting in GridSpec().settings()]

    assert names[0] == "clean"
    assert "fixed/image/C" in names
    assert "fixed/text/C+D" in names
    assert "random/D/dr=0.2" in names
    assert "random/C+D/dr=1" in names
    assert len(names) == 1 + 2 * 3 + 3 * 5


def test_fixed_settings_reuse_clean_training() -> None:
    spec = GridSpec()

    trainings = spec.training_settings()

    assert trainings[0] == Setting("clean")
    assert len(trainings) == 1 + 3 * 5
    clean_tests = [setting.name for setting in spec.tests_for(Setting("clean"))]
    assert clean_tests == ["clean", *(f"fixed/{m}/{k}" for m in ("image", "text") for k in ("C", "D", "C+D"))]


def test_random_setting_trains_under_itself() -> None:
    setting = Setting("random", kind="C", dr=0.4)

    assert setting.training == setting
    assert GridSpec().tests_for(setting) == [setting]


def test_jobs_count_models_ablations_seeds() -> None:
    spec = GridSpec(models=("drf", "concat"), ablations=("expansion",), seeds=(0, 1), rates=(0.2,))

    jobs = list(spec.jobs())

    # clean + three random settings (one rate), two seeds, three models each.
    assert len(jobs) == 4 * 2 * 3
    assert spec.count_jobs() == len(jobs)
    assert {model for _, model, _ in jobs} == {"drf", "concat", "drf-no-expansion"}


def test_ablations_limited_to_strategies() -> None:
    spec = GridSpec(models=("drf",), ablations=("expansion",), seeds=(0,), ablation_strategies=("clean", "fixed"))

    assert spec.models_for(Setting("clean")) == ("drf", "drf-no-expansion")
    assert spec.models_for(Setting("random", kind="D", dr=0.2)) == ("drf",)


def test_ablation_names() -> None:
    assert ablation_model_name("sample_recovery") == "drf-no-sample_recovery"
    assert ablation_model_name("normalize_weights") == "drf-no-normalize_weights"
    with pytest.raises(ValueError, match="unknown ablation"):
        ablation_model_name("dropout")


def test_setting_rejects_invalid_values() -> None:
    with pytest.raises(ValueError, match="strategy"):
        Setting("sometimes")
    with pytest.raises(ValueError, match="kind"):
        Setting("fixed", kind="X", modality="image")
    with pytest.raises(ValueError, match="modality"):
        Setting("fixed", kind="C", modality="audio")
    with pytest.raises(ValueError, match="disruption rate"):
        Setting("random", kind="C", dr=0.0)


def test_grid_spec_rejects_unknown_model() -> None:
    with pytest.raises(ValueError, match="unknown model 'bert'"):
        GridSpec(models=("bert",))


def test_parse_csv_option_all_none_and_unknown() -> None:
    assert parse_csv_option(None, allowed=ABLATIONS, option="--ablations") == ABLATIONS
    assert parse_csv_option("all", allowed=ABLATIONS, option="--ablations") == ABLATIONS
    assert parse_csv_option("none", allowed=ABLATIONS, option="--ablations") == ()
    assert parse_csv_option("expansion, quality_weights", allowed=ABLATIONS, option="--ablations") == (
        "expansion",
        "quality_weights",
    )
    with pytest.raises(ValueError, match="invalid --ablations colour"):
        parse_csv_option("colour", allowed=ABLATIONS, option="--ablations")


def test_parse_seeds() -> None:
    assert parse_seeds("0,1,2") == (0, 1, 2)
    with pytest.raises(ValueError, match="comma-separated integers"):
        parse_seeds("a,b")
    with pytest.raises(ValueError, match="non-negative"):
        parse_seeds("-1")

"""Run the robustness grid: train every model under every training setting and seed, test it.

Models are built by name: ``drf`` is the DRF head, an ablation is the DRF head with one switch of
``DRFConfig`` flipped, and the rest are the baselines. All of them are trained by the same loop
on the same frozen features, with the same hyperparameters and seeds.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from drf_batch.disruption import DisruptionPlan, plan_disruptions
from drf_batch.evaluation.bank import FeatureBank, SplitArrays
from drf_batch.evaluation.baselines import BaselineConfig, BlankFeatures, build_baseline
from drf_batch.evaluation.grid import ABLATIONS, DRF_BASE_SWITCHES, GridSpec, Setting
from drf_batch.evaluation.quality import FlagQuality, measure_flag
from drf_batch.metrics import classification_metrics
from drf_batch.model import DRFConfig, DRFHead

logger = logging.getLogger(__name__)

PREDICT_BATCH = 1024


@dataclass(frozen=True)
class GridTraining:
    """Hyperparameters of every head the grid trains.

    NOTE: these depart from the published batch 16 and 30 epochs so that a grid of hundreds of
    heads fits a CPU budget. On clean MVSA-Single the best val epoch of DRF and concat was 3-4 of
    10 at batch 128, so 5 epochs lose little. At batch 128 DRF rarely predicts the minority
    neutral class, which the default model trained at batch 16 does (docs/robustness.md).
    """

    epochs: int = 5
    batch_size: int = 128
    learning_rate: float = 5e-4
    weight_decay: float = 0.01
    d: int = 256
    hidden: int = 256


@dataclass
class GridResults:
    """Result rows, confusion matrices and quality-flag measurements of a grid run."""

    rows: list[dict[str, object]] = field(default_factory=list)
    # Confusion matrices on clean test data, summed over seeds, per model.
    confusions: dict[str, np.ndarray] = field(default_factory=dict)
    # Quality-flag measurements of the clean-trained DRF head, one per seed and modality.
    flags: list[dict[str, object]] = field(default_factory=list)
    seconds: float = 0.0


def build_model(name: str, *, image_dim: int, text_dim: int, num_classes: int, blanks: BlankFeatures,
                training: GridTraining) -> nn.Module:
    """Build the head named ``name``: ``drf``, a DRF ablation such as ``drf-no-expansion``, or a baseline."""
    if name == "drf" or name.startswith("drf-"):
        switches: dict[str, bool] = dict(DRF_BASE_SWITCHES)
        if name.startswith("drf-no-"):
            switch = name.removeprefix("drf-no-")
            if switch not in ABLATIONS:
                raise ValueError(f"unknown DRF ablation {switch!r} in model name {name!r}")
            switches[switch] = False
        elif name != "drf":
            raise ValueError(f"unknown DRF variant {name!r}; expected drf or drf-no-<ablation>")
        config = DRFConfig(image_dim=image_dim, text_dim=text_dim, d=training.d, hidden=training.hidden,
                           num_classes=num_classes, **switches)
        return DRFHead(config)
    config = BaselineConfig(kind=name, image_dim=image_dim, text_dim=text_dim, d=training.d,
                            hidden=training.hidden, num_classes=num_classes)
    return build_baseline(config, blanks)


def plan_for(setting: Setting, post_ids: tuple[str, ...], seed: int) -> DisruptionPlan | None:
    """Return the disruption plan of ``setting`` over ``post_ids`` (None when clean)."""
    if setting.strategy == "clean":
        return None
    if setting.strategy == "fixed":
        return plan_disruptions(post_ids, setting=setting.kind, mode="fixed", modality=setting.modality,
                                dr=1.0, seed=seed)
    return plan_disruptions(post_ids, setting=setting.kind, mode="random", dr=setting.dr, seed=seed)


@torch.inference_mode()
def predict(head: nn.Module, arrays: SplitArrays) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Return predicted class indices and the log densities (NaN for baselines) of a split."""
    head.eval()
    predictions, log_p_v, log_p_t = [], [], []
    for start in range(0, len(arrays), PREDICT_BATCH):
        stop = start + PREDICT_BATCH
        output = head(
            torch.from_numpy(arrays.feat_v[start:stop]),
            torch.from_numpy(arrays.feat_t[start:stop]),
            torch.from_numpy(arrays.lam_v[start:stop]),
            torch.from_numpy(arrays.lam_t[start:stop]),
        )
        predictions.append(output.logits.argmax(dim=-1).numpy())
        log_p_v.append(output.log_p_v.numpy())
        log_p_t.append(output.log_p_t.numpy())
    return np.concatenate(predictions), {"image": np.concatenate(log_p_v), "text": np.concatenate(log_p_t)}


TrainFunction = Callable[..., dict[str, object]]


@dataclass
class JobResult:
    """Result rows, clean-test confusion matrix and quality flags of one trained head."""

    rows: list[dict[str, object]]
    confusion: list[list[int]] | None
    flags: list[dict[str, object]]


def run_job(
    training_setting: Setting,
    model_name: str,
    seed: int,
    *,
    spec: GridSpec,
    banks: dict[str, FeatureBank],
    blanks: BlankFeatures,
    num_classes: int,
    training: GridTraining,
    train_function: TrainFunction,
) -> JobResult:
    """Train one head under ``training_setting`` with ``seed`` and test it on every test setting that uses it."""
    tests = spec.tests_for(training_setting)
    train_arrays = banks["train"].assemble(plan_for(training_setting, banks["train"].post_ids, seed))
    val_arrays = banks["val"].assemble(plan_for(training_setting, banks["val"].post_ids, seed))
    image_dim = banks["train"].clean_image.shape[1]
    text_dim = banks["train"].clean_text.shape[1]

    torch.manual_seed(seed)
    np.random.seed(seed)
    head = build_model(model_name, image_dim=image_dim, text_dim=text_dim, num_classes=num_classes,
                       blanks=blanks, training=training)
    started = time.perf_counter()
    cpu_started = time.process_time()
    record = train_function(head, train_arrays, val_arrays, seed=seed, training=training)
    train_seconds = time.perf_counter() - started
    # CPU time of the whole process. In a one-thread worker that is the job's own CPU time, so
    # it approximates the job's time on an idle core.
    train_cpu_seconds = time.process_time() - cpu_started

    result = JobResult(rows=[], confusion=None, flags=[])
    for test in tests:
        arrays = banks["test"].assemble(plan_for(test, banks["test"].post_ids, seed))
        predictions, _ = predict(head, arrays)
        metrics = classification_metrics(arrays.labels, predictions, num_classes=num_classes)
        result.rows.append({
            "model": model_name,
            "setting": test.name,
            "strategy": test.strategy,
            "kind": test.kind,
            "modality": test.modality,
            "dr": test.dr,
            "seed": seed,
            "accuracy": metrics.accuracy,
            "weighted_f1": metrics.weighted_f1,
            "macro_f1": metrics.macro_f1,
            "n_test": len(arrays),
            "best_epoch": record.get("best_epoch"),
            "train_seconds": train_seconds,
            "train_cpu_seconds": train_cpu_seconds,
        })
        if test.strategy == "clean":
            result.confusion = metrics.confusion

    if model_name == "drf" and training_setting.strategy == "clean":
        result.flags.extend(dict(flag.to_dict(), seed=seed) for flag in measure_quality_flags(head, banks, seed=seed))
    return result


def _collect(results: GridResults, model_name: str, job: JobResult) -> None:
    results.rows.extend(job.rows)
    results.flags.extend(job.flags)
    if job.confusion is not None:
        matrix = np.asarray(job.confusion, dtype=np.int64)
        results.confusions[model_name] = results.confusions.get(model_name, 0) + matrix


def run_grid(
    spec: GridSpec,
    banks: dict[str, FeatureBank],
    *,
    blanks: BlankFeatures,
    num_classes: int,
    training: GridTraining,
    train_function: TrainFunction,
    progress: bool = True,
    workers: int = 1,
) -> GridResults:
    """Train and test every (training setting, model, seed) job of ``spec``.

    ``banks`` contains the ``train``, ``val`` and ``test`` splits. ``train_function(head, train, val,
    seed=..., training=...)`` trains a head in place and returns a record with at least
    ``best_epoch``. Test plans use the grid seed too, over the test post ids. With ``workers`` > 1
    the jobs run in that many processes, each with one torch thread (see ``parallel``).
    """
    started = time.perf_counter()
    results = GridResults()
    jobs = list(spec.jobs())
    bar = tqdm(total=len(jobs), desc="evaluate", unit="model", disable=not progress)
    if workers > 1:
        from drf_batch.evaluation.parallel import run_jobs_in_processes

        for (training_setting, model_name, seed), job in run_jobs_in_processes(
            jobs, spec=spec, banks=banks, blanks=blanks, num_classes=num_classes, training=training,
            train_function=train_function, workers=workers,
        ):
            _collect(results, model_name, job)
            bar.set_postfix_str(f"{training_setting.name} {model_name} seed={seed}")
            bar.update(1)
    else:
        for training_setting, model_name, seed in jobs:
            bar.set_postfix_str(f"{training_setting.name} {model_name} seed={seed}")
            job = run_job(training_setting, model_name, seed, spec=spec, banks=banks, blanks=blanks,
                          num_classes=num_classes, training=training, train_function=train_function)
            _collect(results, model_name, job)
            bar.update(1)
    bar.close()
    results.rows.sort(key=lambda row: (spec.model_names.index(str(row["model"])), _setting_order(spec, row), row["seed"]))
    results.flags.sort(key=lambda flag: (flag["seed"], flag["modality"]))
    results.seconds = time.perf_counter() - started
    return results


def _setting_order(spec: GridSpec, row: dict[str, object]) -> int:
    names = [setting.name for setting in spec.settings()]
    return names.index(str(row["setting"]))


def measure_quality_flags(head: nn.Module, banks: dict[str, FeatureBank], *, seed: int,
                          max_false_positive_rate: float = 1.0) -> list[FlagQuality]:
    """Measure how well log p_v and log p_t separate clean from corrupted val and test posts.

    Every post of a split appears twice: clean, and with that modality corrupted (the other one
    intact). The threshold is calibrated on val and applied to test.
    """
    flags = []
    for modality in ("image", "text"):
        values: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for split in ("val", "test"):
            bank = banks[split]
            _, clean = predict(head, bank.assemble(None))
            corrupt_setting = Setting("fixed", kind="C", modality=modality)
            _, corrupted = predict(head, bank.assemble(plan_for(corrupt_setting, bank.post_ids, seed)))
            present = bank.image_present if modality == "image" else bank.text_present
            values[split] = (clean[modality][present], corrupted[modality][present])
        flags.append(measure_flag(
            modality,
            val_clean=values["val"][0],
            val_corrupted=values["val"][1],
            test_clean=values["test"][0],
            test_corrupted=values["test"][1],
            max_false_positive_rate=max_false_positive_rate,
        ))
    return flags


def training_record(training: GridTraining) -> dict[str, object]:
    """Return the grid hyperparameters as a JSON-serialisable mapping."""
    return dataclasses.asdict(training)

"""Run grid jobs in worker processes.

Small heads barely use a second thread, so on a shared CPU several one-thread processes finish
a grid sooner than one process with several threads. The feature banks are written once as .npy
files (read back with ``allow_pickle=False``) and every worker loads them at start. Jobs and
their results travel between the processes as plain values through ``concurrent.futures``.
"""

from __future__ import annotations

import dataclasses
import importlib
import multiprocessing
import tempfile
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path

import numpy as np

from drf_batch.evaluation.bank import FeatureBank
from drf_batch.evaluation.baselines import BlankFeatures
from drf_batch.evaluation.grid import GridSpec, Setting

_BANK_FIELDS = ("post_ids", "labels", "clean_image", "clean_text", "corrupted_image", "corrupted_text",
                "image_present", "text_present")

# State of a worker process, set once by _initialise_worker.
_WORKER: dict[str, object] = {}


def save_banks(directory: Path, banks: dict[str, FeatureBank], blanks: BlankFeatures) -> None:
    """Write the banks and blank features as .npy files into ``directory``."""
    for split, bank in banks.items():
        for name in _BANK_FIELDS:
            values = getattr(bank, name)
            array = np.array(values, dtype=str) if name == "post_ids" else np.asarray(values)
            np.save(directory / f"{split}.{name}.npy", array, allow_pickle=False)
    np.save(directory / "blank.image.npy", blanks.image, allow_pickle=False)
    np.save(directory / "blank.text.npy", blanks.text, allow_pickle=False)


def load_banks(directory: Path, splits: tuple[str, ...] = ("train", "val", "test")) -> tuple[dict[str, FeatureBank], BlankFeatures]:
    """Read banks and blank features written by ``save_banks``."""
    banks = {}
    for split in splits:
        values = {name: np.load(directory / f"{split}.{name}.npy", allow_pickle=False) for name in _BANK_FIELDS}
        values["post_ids"] = tuple(str(post_id) for post_id in values["post_ids"])
        banks[split] = FeatureBank(**values)
    blanks = BlankFeatures(
        image=np.load(directory / "blank.image.npy", allow_pickle=False),
        text=np.load(directory / "blank.text.npy", allow_pickle=False),
    )
    return banks, blanks


def _initialise_worker(directory: str, train_function: str, spec: dict, training: dict, num_classes: int) -> None:
    import torch

    from drf_batch.evaluation.runner import GridTraining

    torch.set_num_threads(1)
    banks, blanks = load_banks(Path(directory))
    module_name, _, function_name = train_function.partition(":")
    _WORKER.update(
        banks=banks,
        blanks=blanks,
        train_function=getattr(importlib.import_module(module_name), function_name),
        spec=GridSpec(**spec),
        training=GridTraining(**training),
        num_classes=num_classes,
    )


def _run_in_worker(setting: dict, model_name: str, seed: int):  # noqa: ANN202
    import logging

    from drf_batch.evaluation.runner import run_job

    logging.getLogger("drf_batch.train").setLevel(logging.WARNING)
    return run_job(
        Setting(**setting), model_name, seed,
        spec=_WORKER["spec"], banks=_WORKER["banks"], blanks=_WORKER["blanks"],
        num_classes=_WORKER["num_classes"], training=_WORKER["training"],
        train_function=_WORKER["train_function"],
    )  # fmt: skip


def run_jobs_in_processes(
    jobs: list[tuple[Setting, str, int]],
    *,
    spec: GridSpec,
    banks: dict[str, FeatureBank],
    blanks: BlankFeatures,
    num_classes: int,
    training: object,
    train_function: object,
    workers: int,
) -> Iterator[tuple[tuple[Setting, str, int], object]]:
    """Yield ((training setting, model, seed), JobResult) as jobs finish in ``workers`` processes.

    ``train_function`` must be a module-level function, because workers import it by name.
    """
    function_path = f"{train_function.__module__}:{train_function.__qualname__}"
    if "<" in function_path:
        raise ValueError(f"train function {function_path} is not importable; pass a module-level function")
    with tempfile.TemporaryDirectory(prefix="drf-batch-banks-") as directory:
        save_banks(Path(directory), banks, blanks)
        context = multiprocessing.get_context("spawn")
        initargs = (directory, function_path, dataclasses.asdict(spec), dataclasses.asdict(training), num_classes)
        with ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_initialise_worker,
                                 initargs=initargs) as pool:
            pending = {
                pool.submit(_run_in_worker, dataclasses.asdict(setting), model_name, seed): (setting, model_name, seed)
                for setting, model_name, seed in jobs
            }
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    job = pending.pop(future)
                    yield job, future.result()

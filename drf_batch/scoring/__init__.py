"""Batch scoring: the record-batch scoring core, input validation and the local runner.

`score_record_batch` and `ScoringContext` are imported on first use, so that importing the result
schemas or the input checks does not load the image and text stacks.
"""

from __future__ import annotations

from typing import Any

_LAZY = {
    "ROW_NUMBER_COLUMN": "drf_batch.scoring.core",
    "ScoringContext": "drf_batch.scoring.core",
    "score_record_batch": "drf_batch.scoring.core",
    "InputFileError": "drf_batch.scoring.inputs",
    "InputSchema": "drf_batch.scoring.inputs",
    "open_posts_file": "drf_batch.scoring.inputs",
    "validate_schema": "drf_batch.scoring.inputs",
    "REJECTS_SCHEMA": "drf_batch.scoring.results",
    "SCORES_SCHEMA": "drf_batch.scoring.results",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    module_name = _LAZY.get(name)
    if module_name is None:
        raise AttributeError(f"module 'drf_batch.scoring' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module_name), name)

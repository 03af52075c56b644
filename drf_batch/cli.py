"""The `drf-batch` command line. Each command lives in `drf_batch.commands` and imports its heavy
dependencies (torch, onnxruntime) only when it runs, so `drf-batch --help` stays fast."""

from __future__ import annotations

import logging

import typer

from drf_batch.commands import dashboard, evaluate, export, score, train

app = typer.Typer(
    name="drf-batch",
    help="Train, export and batch-score DRF multimodal (image + text) sentiment models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # Plain help text, so that option help such as "pip install 'drf-batch[ray]'" keeps its brackets.
    rich_markup_mode=None,
)


@app.callback()
def main(verbose: bool = typer.Option(False, "--verbose", "-v", help="Log debug messages.")) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )


app.command("train")(train.train)
app.command("export-onnx")(export.export_onnx)
app.command("score")(score.score)
app.command("evaluate")(evaluate.evaluate)
app.command("dashboard")(dashboard.dashboard)

"""Placeholder: replaced by the real command."""

import typer


def export_onnx() -> None:
    raise typer.Exit(1)

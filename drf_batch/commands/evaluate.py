"""Placeholder: replaced by the real command."""

import typer


def evaluate() -> None:
    raise typer.Exit(1)

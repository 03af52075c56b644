"""Placeholder: replaced by the real command."""

import typer


def score() -> None:
    raise typer.Exit(1)

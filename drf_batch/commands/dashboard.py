"""Placeholder: replaced by the real command."""

import typer


def dashboard() -> None:
    raise typer.Exit(1)

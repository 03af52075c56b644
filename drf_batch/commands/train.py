"""Placeholder: replaced by the real command."""

import typer


def train() -> None:
    raise typer.Exit(1)

"""CLI commands of the ``likelihood``  job."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add the ``likelihood`` commands to the top-level app."""
    sub = typer.Typer(help="likelihood (commands being built)", no_args_is_help=True)
    app.add_typer(sub, name="likelihood")

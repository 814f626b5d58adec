"""CLI commands of the ``match2d``  job."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add the ``match2d`` commands to the top-level app."""
    sub = typer.Typer(help="match2d (commands being built)", no_args_is_help=True)
    app.add_typer(sub, name="match2d")

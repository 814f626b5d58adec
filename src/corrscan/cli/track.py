"""CLI commands of the ``track``  job."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add the ``track`` commands to the top-level app."""
    sub = typer.Typer(help="track (commands being built)", no_args_is_help=True)
    app.add_typer(sub, name="track")

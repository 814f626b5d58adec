"""CLI commands of the ``contrast``  job."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add the ``contrast`` commands to the top-level app."""
    sub = typer.Typer(help="contrast (commands being built)", no_args_is_help=True)
    app.add_typer(sub, name="contrast")

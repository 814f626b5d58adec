"""``corrscan`` command: one sub-command (group) per job, registered by ``cli/<job>.py``.

Each job module exposes ``register(app: typer.Typer) -> None`` and adds its commands there.
"""

from __future__ import annotations

import importlib

import typer

from corrscan import __version__

app = typer.Typer(
    name="corrscan",
    help="Find, pose and track particles in microscopy images by correlation (CPU or CUDA GPU).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)

# Order is the order of `corrscan --help`.
_COMMAND_MODULES = ("demo", "match2d", "match3d", "likelihood", "contrast", "track")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"corrscan {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """corrscan: 2D/3D template matching, likelihoods, contrast limits and bead tracking."""


for _name in _COMMAND_MODULES:
    importlib.import_module(f"corrscan.cli.{_name}").register(app)


def main() -> None:  # pragma: no cover - console entry point
    app()

"""``corrscan demo``: run the main job on built-in example data."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add ``corrscan demo``."""

    @app.command()
    def demo(
        out: str = typer.Option("corrscan-demo", help="Folder for the demo outputs."),
        seed: int = typer.Option(0, help="Random seed of the simulated data."),
    ) -> None:
        """Simulate the built-in example micrograph and run a 2D template search on it."""
        from corrscan.cli._demo_impl import run_demo

        run_demo(out=out, seed=seed)

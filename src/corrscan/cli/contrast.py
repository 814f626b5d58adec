"""CLI commands of the ``contrast`` job: ``corrscan contrast TOMO`` and ``corrscan view TOMO``."""

from __future__ import annotations

import json
import time
from pathlib import Path

import typer

_METHODS = ("gmm", "cdf", "percentile")


def _parse_z_radius(text: str) -> int | str | None:
    t = text.strip().lower()
    if t in ("auto", "computed"):
        return t
    if t in ("none", "all"):
        return None
    try:
        return int(t)
    except ValueError:
        raise typer.BadParameter(
            f"{text!r}: use 'auto', 'computed', 'all' or an integer radius", param_hint="--z-radius"
        ) from None


def _parse_limits(text: str | None) -> tuple[float, float] | None:
    if text is None:
        return None
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise typer.BadParameter(f"{text!r}: give LOW,HIGH", param_hint="--limits") from None
    return lo, hi


def _check_method(method: str) -> str:
    if method.lower() not in _METHODS:
        raise typer.BadParameter(
            f"{method!r}: use one of {', '.join(_METHODS)}", param_hint="--method"
        )
    return method.lower()


def register(app: typer.Typer) -> None:
    """Add ``corrscan contrast`` and ``corrscan view`` to the top-level app."""

    @app.command("contrast")
    def contrast(
        tomogram: Path = typer.Argument(
            ..., help="Tomogram: MRC file or OME-Zarr folder (or .npy)."
        ),
        method: str = typer.Option("gmm", "--method", "-m", help="gmm | cdf | percentile."),
        z_radius: str = typer.Option(
            "auto",
            "--z-radius",
            help="Slab radius around the central slice: auto, computed, all, or N.",
        ),
        downsampling_ratio: float = typer.Option(
            0.3, "--downsampling-ratio", help="Fraction of the slab's voxels sampled (0 < r <= 1)."
        ),
        all_voxels: bool = typer.Option(False, "--all-voxels", help="Use every voxel of the slab."),
        max_samples: int = typer.Option(
            1_000_000, "--max-samples", help="Cap on the sampled voxels."
        ),
        seed: int = typer.Option(42, "--seed", help="Sampling seed."),
        central_z: float | None = typer.Option(
            None, "--central-z", help="Slab centre slice (default: middle)."
        ),
        level: int = typer.Option(0, "--level", help="OME-Zarr pyramid level."),
        plot: Path | None = typer.Option(
            None, "--plot", help="Write a histogram PNG with the limits marked."
        ),
        as_json: bool = typer.Option(False, "--json", help="Print the full report as JSON."),
    ) -> None:
        """Compute contrast limits of a tomogram (GMM/BIC, CDF gradient or percentiles)."""
        from corrscan.contrast.limits import contrast_report
        from corrscan.errors import CorrscanError

        m = _check_method(method)
        try:
            report = contrast_report(
                tomogram,
                m,  # type: ignore[arg-type]
                _parse_z_radius(z_radius),  # type: ignore[arg-type]
                None if all_voxels else downsampling_ratio,
                seed,
                central_z_slice=central_z,
                max_samples=max_samples,
                level=level,
                keep_sample=plot is not None,
            )
        except CorrscanError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None
        if plot is not None:
            from corrscan.contrast.plot import plot_contrast_histogram

            plot_contrast_histogram(report, plot, title=f"{tomogram.name}: {m} limits")
        if as_json:
            typer.echo(json.dumps(report.to_dict(), indent=2))
            return
        lo, hi = report.limits
        z0, z1 = report.z_range
        typer.echo(f"{tomogram.name}: {m} contrast limits  low={lo:.6g}  high={hi:.6g}")
        typer.echo(
            f"  slices {z0}..{z1 - 1} of {report.shape[0]}, {report.n_samples} voxels sampled"
            + (f", {report.n_nonfinite} NaN/Inf ignored" if report.n_nonfinite else "")
        )
        d = report.details
        if m == "gmm":
            j = d["chosen_component"]
            typer.echo(
                f"  {d['n_components']} component(s) by BIC; chosen mean={d['means'][j]:.6g} "
                f"std={d['stds'][j]:.6g}; "
                f"multipliers {d['multipliers'][0]:g}, {d['multipliers'][1]:g}"
            )
        if plot is not None:
            typer.echo(f"  histogram: {plot}")

    @app.command("view")
    def view(
        tomogram: Path = typer.Argument(
            ..., help="Tomogram: MRC file or OME-Zarr folder (or .npy)."
        ),
        picks: Path | None = typer.Option(
            None, "--picks", help="Particle picks (STAR or CSV, RELION columns)."
        ),
        mask: Path | None = typer.Option(
            None, "--mask", help="Integer label volume (MRC/OME-Zarr) shown as segmentation."
        ),
        method: str = typer.Option(
            "gmm", "--method", "-m", help="Contrast-limit method: gmm | cdf | percentile."
        ),
        limits: str | None = typer.Option(
            None, "--limits", help="Explicit limits LOW,HIGH (skips the method)."
        ),
        voxel_size: float | None = typer.Option(
            None, "--voxel-size", help="Å per voxel (default: from the file)."
        ),
        volume_rendering: bool = typer.Option(
            False, "--volume-rendering", help="Start with volume rendering on."
        ),
        layout: str = typer.Option(
            "4panel", "--layout", help="Neuroglancer layout (4panel, xy, 3d, xy-3d, ...)."
        ),
        level: int = typer.Option(0, "--level", help="OME-Zarr pyramid level."),
        bind: str = typer.Option("127.0.0.1", "--bind", help="Loopback address to serve on."),
        port: int = typer.Option(0, "--port", help="Port (0: any free port)."),
        screenshot: Path | None = typer.Option(
            None, "--screenshot", help="Render once in headless Chromium, save this PNG and exit."
        ),
        timeout: float | None = typer.Option(
            None, "--timeout", help="Stop serving after this many seconds (default: until Ctrl-C)."
        ),
    ) -> None:
        """Serve a local Neuroglancer viewer (bundled client, loopback only) with the limits."""
        from corrscan.contrast.viewer import chromium_screenshot, serve_viewer
        from corrscan.errors import CorrscanError

        lim = _parse_limits(limits)
        m = _check_method(method)
        try:
            viewer = serve_viewer(
                tomogram,
                limits=lim if lim is not None else m,
                voxel_size=voxel_size,
                picks=picks,
                segmentation=mask,
                volume_rendering=volume_rendering,
                bind_address=bind,
                port=port,
                layout=layout,
                level=level,
            )
        except CorrscanError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None
        lo, hi = viewer.limits
        typer.echo(f"contrast limits: low={lo:.6g} high={hi:.6g}")
        typer.echo(f"viewer: {viewer.url}")
        try:
            if screenshot is not None:
                from PIL import Image

                try:
                    image = chromium_screenshot(viewer)
                except (CorrscanError, TimeoutError) as exc:
                    typer.echo(f"error: {exc}", err=True)
                    raise typer.Exit(2) from None
                Image.fromarray(image).save(screenshot)
                typer.echo(f"screenshot: {screenshot}")
                return
            typer.echo("serving; press Ctrl-C to stop")
            t_end = None if timeout is None else time.monotonic() + timeout
            while t_end is None or time.monotonic() < t_end:
                time.sleep(0.1 if t_end is not None else 1.0)
        except KeyboardInterrupt:
            pass
        finally:
            viewer.stop()

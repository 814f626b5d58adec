"""CLI commands of the ``track`` job: ``corrscan track`` and ``corrscan track-zlut``."""

from __future__ import annotations

import os
from pathlib import Path

import typer


def _atomic_csv(df, path: Path) -> None:
    tmp = path.with_name(f"{path.name}.partial-{os.getpid()}")
    df.to_csv(tmp, index=False, float_format="%.6g")
    os.replace(tmp, path)


def plot_traces(df, path: Path, *, units: str = "nm") -> Path:
    """Traces of every bead against frame number, written as an image (PNG/PDF/SVG): x and y
    as displacements from the bead's median position (px), z as measured."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, 1, figsize=(9, 7), sharex=True)
    for bead, g in df.groupby("bead", sort=False):
        for ax, col in zip(axes, ("x", "y", "z"), strict=True):
            v = g[col] - g[col].median() if col != "z" else g[col]
            ax.plot(g["frame"], v, lw=0.8, label=str(bead))
    axes[0].set_ylabel("x - median (px)")
    axes[1].set_ylabel("y - median (px)")
    axes[2].set_ylabel(f"z ({units})")
    axes[2].set_xlabel("frame")
    if df["bead"].nunique() <= 12:
        axes[0].legend(title="bead", fontsize="small", ncols=min(6, df["bead"].nunique()))
    fig.tight_layout()
    tmp = path.with_name(f"{path.stem}.partial-{os.getpid()}{path.suffix}")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def register(app: typer.Typer) -> None:
    """Add ``corrscan track`` and ``corrscan track-zlut`` to the top-level app."""

    @app.command("track")
    def track(
        movie: Path = typer.Argument(..., help="TIFF movie (n_frames, H, W), camera frames."),
        rois: Path = typer.Option(
            ..., "--rois", help="CSV of ROIs: top,bottom,left,right or x,y (+ --roi-size)."
        ),
        zlut: Path | None = typer.Option(
            None, "--zlut", help="Z-LUT (.npz from track-zlut, or MagTrack .npy/.txt array)."
        ),
        out: Path | None = typer.Option(
            None, "--out", "-o", help="Output CSV (default MOVIE stem + '_tracks.csv')."
        ),
        plot: Path | None = typer.Option(
            None, help="Trace plot (default next to the CSV, '.png'); 'none' to skip."
        ),
        roi_size: int | None = typer.Option(
            None, help="ROI width for x,y ROI tables (default: the Z-LUT's ROI size)."
        ),
        chunk: int = typer.Option(256, min=1, help="Frames per vectorised batch."),
        threads: int | None = typer.Option(
            None,
            min=1,
            help="torch CPU threads while tracking (default: the config's cpu_threads, 1; "
            "tracking is many small operations, fastest on one thread).",
        ),
        nm_per_px: float | None = typer.Option(None, help="Pixel size: adds x_nm, y_nm columns."),
        config: Path | None = typer.Option(None, help="TrackConfig YAML."),
        overwrite: bool = typer.Option(False, help="Replace an existing output CSV."),
    ) -> None:
        """Track beads through a TIFF movie: CSV (frame, bead, x, y, z, flags, r) + trace plot.

        x, y are frame pixels (column, row); z is in the Z-LUT's units; flags are TrackFlag
        bits (0 = clean; NaN x, y, z come with a flag).
        """
        from corrscan.errors import ResultExistsError
        from corrscan.track import ZLUT, TrackConfig
        from corrscan.track.movie import read_rois, track_movie

        cfg = TrackConfig.from_yaml(config) if config else TrackConfig()
        if threads:
            cfg.cpu_threads = threads
        table = ZLUT.load(zlut) if zlut else None
        size = roi_size
        if size is None and table is not None:
            size = (table.metadata.get("roi_size") or [None])[0]
        roi_rows, beads = read_rois(rois, roi_size=size)
        out_path = out or movie.with_name(f"{movie.stem}_tracks.csv")
        if out_path.exists() and not overwrite:
            raise ResultExistsError(f"{out_path} exists: pass --overwrite or choose --out")
        df = track_movie(movie, roi_rows, table, beads=beads, config=cfg, chunk=chunk)
        if nm_per_px:
            df["x_nm"] = df["x"] * nm_per_px
            df["y_nm"] = df["y"] * nm_per_px
        _atomic_csv(df, out_path)
        n_bad = int((df["flags"] != 0).sum())
        typer.echo(
            f"tracked {df['frame'].nunique()} frames x {len(beads)} beads -> {out_path} "
            f"({n_bad} flagged measurements)"
        )
        if plot is None or str(plot).lower() != "none":
            plot_path = plot or out_path.with_suffix(".png")
            plot_traces(df, plot_path, units=table.units if table else "nm")
            typer.echo(f"plot -> {plot_path}")

    @app.command("track-zlut")
    def track_zlut(
        sweep: Path = typer.Argument(..., help="TIFF focus sweep (n_frames, H, W)."),
        rois: Path = typer.Option(..., "--rois", help="CSV of ROIs (as for `corrscan track`)."),
        out: Path = typer.Option(..., "--out", "-o", help="Z-LUT file to write (.npz)."),
        z: Path | None = typer.Option(
            None, "--z", help="Text/CSV file with the stage z of every frame (one per line)."
        ),
        z_start: float | None = typer.Option(None, help="Stage z of the first plane."),
        z_step: float | None = typer.Option(None, help="Stage step between planes."),
        frames_per_plane: int = typer.Option(1, min=1, help="Frames recorded per plane."),
        roi_size: int | None = typer.Option(None, help="ROI width for x,y ROI tables."),
        shared: bool = typer.Option(
            False, help="One table averaged over all beads (default: one per bead)."
        ),
        units: str = typer.Option("nm", help="Unit of z."),
        config: Path | None = typer.Option(None, help="TrackConfig YAML (profile geometry)."),
    ) -> None:
        """Build a Z look-up table from a focus sweep (profiles at tracked centres, averaged
        per stage position)."""
        import numpy as np

        from corrscan.core.io.tiff import tiff_shape
        from corrscan.errors import InputError
        from corrscan.track import TrackConfig
        from corrscan.track.movie import read_rois, zlut_from_sweep

        cfg = TrackConfig.from_yaml(config) if config else TrackConfig()
        roi_rows, _ = read_rois(rois, roi_size=roi_size)
        shape = tiff_shape(sweep)
        n_frames = 1 if len(shape) == 2 else int(np.prod(shape[:-2]))
        if z is not None:
            import pandas as pd

            zz = pd.read_csv(z, header=None, comment="#").iloc[:, -1]
            zs = pd.to_numeric(zz, errors="coerce").dropna().to_numpy(dtype=np.float64)
        elif z_start is not None and z_step is not None:
            zs = z_start + z_step * (np.arange(n_frames) // frames_per_plane)
        else:
            raise InputError("give the stage positions: --z FILE, or --z-start and --z-step")
        if zs.shape[0] != n_frames:
            raise InputError(f"{zs.shape[0]} z values for {n_frames} frames in {sweep}")
        lut = zlut_from_sweep(sweep, roi_rows, zs, per_bead=not shared, config=cfg, units=units)
        path = lut.save(out)
        typer.echo(
            f"Z-LUT: {lut.n_ref} planes x {lut.n_bins} bins, {lut.n_tables} table(s), "
            f"z {lut.z[0]:g} .. {lut.z[-1]:g} {units} -> {path}"
        )

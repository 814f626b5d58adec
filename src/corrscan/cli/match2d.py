"""CLI commands of the ``match2d`` job: ``search`` (in-process or ``--workers N`` /
``--scheduler ADDRESS`` with ``--resume/--no-resume``), ``batch``, ``peaks``, ``refine``,
``plot``, ``example-config``."""

from __future__ import annotations

import time
from pathlib import Path

import typer


def _fail(exc: Exception) -> None:
    typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=1)


def _print_summary(summary) -> None:
    """The batch summary as an aligned table (input, status, seconds, particles, best z)."""
    cols = [c for c in ("input", "status", "seconds", "n_particles", "max_zscore") if c in summary]
    if not cols or summary.empty:
        return
    rows = [[_cell(v) for v in r] for r in summary[cols].itertuples(index=False)]
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(cols)]
    typer.echo("  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True)))
    for r in rows:
        typer.echo("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)))


def _cell(v) -> str:
    if isinstance(v, float):
        return "" if v != v else f"{v:.2f}"  # NaN (skipped/failed rows) -> blank
    return str(v)


def register(app: typer.Typer) -> None:
    """Add the ``match2d`` commands to the top-level app."""
    sub = typer.Typer(
        help="2D template matching of micrographs (Leopard-EM replacement).",
        no_args_is_help=True,
    )

    @sub.command("search")
    def search(
        config: Path = typer.Argument(..., help="YAML MatchTemplateConfig."),
        out: str = typer.Option(None, help="Bundle folder (default: output.bundle_path)."),
        device: str = typer.Option(None, help="Override computational_config.device."),
        overwrite: bool = typer.Option(None, "--overwrite/--no-overwrite"),
        progress: bool = typer.Option(True, "--progress/--quiet", help="Progress bar."),
        workers: int | None = typer.Option(
            None, min=1, help="Run orientation chunks on a local Dask cluster of N processes."
        ),
        scheduler: str | None = typer.Option(
            None, help="Run the chunks on an existing Dask scheduler (tcp://host:port)."
        ),
        resume: bool = typer.Option(
            True,
            "--resume/--no-resume",
            help="With --workers/--scheduler: continue from <bundle>.checkpoint.pt (or delete "
            "it and start again).",
        ),
    ) -> None:
        """Search every orientation x defocus, pick particles, write the result bundle.

        Without --workers/--scheduler the search runs in this process (worker threads). With
        them it is cut into orientation chunks run as Dask tasks, checkpointed next to the
        bundle so that the same command resumes an interrupted run; the result equals the
        in-process one with the same orientation_batch_size.
        """
        from corrscan.errors import CorrscanError
        from corrscan.match2d.config import MatchTemplateConfig
        from corrscan.match2d.pipeline import run_search

        try:
            cfg = MatchTemplateConfig.from_yaml(config)
            if device:
                cfg.computational_config.device = device
            t0 = time.perf_counter()
            if workers is not None or scheduler:
                from corrscan.distributed.search2d import run_search2d

                res, parts, path = run_search2d(
                    cfg, out=out, overwrite=overwrite, workers=workers, scheduler=scheduler,
                    resume=resume, progress=progress,
                )  # fmt: skip
            else:
                res, parts, path = run_search(cfg, out=out, overwrite=overwrite, progress=progress)
            elapsed = time.perf_counter() - t0
        except CorrscanError as exc:
            _fail(exc)
            return
        t = res.metadata.get("timings") or {"search_s": elapsed}
        rate = res.total_correlations / max(t["search_s"], 1e-9)
        where = ""
        dist = res.metadata.get("distributed")
        if dist:
            on = f"{workers} workers" if workers else f"scheduler {scheduler}"
            where = f" on {on}, {dist['n_chunks']} chunks" + (
                " (resumed)" if dist.get("resumed") else ""
            )
        typer.echo(
            f"searched {res.metadata['total_orientations']:,} orientations x "
            f"{res.metadata['total_defocus']} defocus = {res.total_correlations:,} CCGs in "
            f"{t['search_s']:.1f} s ({rate:,.0f} CCG/s){where}; "
            f"{len(parts)} particles above z = {res.metadata['zscore_cutoff']:.2f}"
        )
        typer.echo(f"wrote {path}")

    @sub.command("batch")
    def batch(
        inputs: str = typer.Argument(..., help="Micrographs: a glob, a CSV or a STAR list."),
        config: Path = typer.Option(
            ..., "--config", "-c", help="YAML MatchTemplateConfig (its micrograph is replaced)."
        ),
        out: Path = typer.Option(..., "--out", "-o", help="Folder of the per-micrograph bundles."),
        device: str = typer.Option(None, help="Override computational_config.device."),
        skip_done: bool = typer.Option(True, "--skip-done/--redo", help="Skip finished ones."),
        stop_on_error: bool = typer.Option(
            False, "--stop-on-error/--keep-going", help="Stop at the first failing input."
        ),
        workers: int | None = typer.Option(
            None, min=1, help="One local Dask cluster of N processes for the whole batch."
        ),
        scheduler: str | None = typer.Option(None, help="Existing Dask scheduler address."),
        resume: bool = typer.Option(
            True, "--resume/--no-resume", help="Resume interrupted inputs from checkpoints."
        ),
        progress: bool = typer.Option(False, "--progress/--quiet", help="Progress bars."),
    ) -> None:
        """Search many micrographs with one configuration; skip finished ones; summary table.

        Each input gets OUT/<stem>/ (a result bundle); OUT/summary.csv has one row per input
        (status done/skipped/failed, error, seconds, particles, best z-score).
        """
        from corrscan.distributed.search2d import batch_search2d
        from corrscan.errors import CorrscanError
        from corrscan.match2d.config import MatchTemplateConfig

        try:
            cfg = MatchTemplateConfig.from_yaml(config)
            if device:
                cfg.computational_config.device = device
            summary = batch_search2d(
                cfg, inputs, out, skip_done=skip_done, stop_on_error=stop_on_error,
                workers=workers, scheduler=scheduler, resume=resume, progress=progress,
            )  # fmt: skip
        except (CorrscanError, ValueError) as exc:
            _fail(exc)
            return
        _print_summary(summary)
        counts = summary["status"].value_counts().to_dict()
        typer.echo(
            f"{len(summary)} micrograph(s): "
            + ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
            + f"; summary: {out / 'summary.csv'}"
        )
        if counts.get("failed"):
            for _, row in summary[summary["status"] == "failed"].iterrows():
                typer.echo(f"  failed {row['input']}: {row['error']}", err=True)
            raise typer.Exit(1)

    @sub.command("peaks")
    def peaks(
        bundle: Path = typer.Argument(..., help="Result bundle of `match2d search`."),
        method: str = typer.Option("zscore", help="zscore | pvalue | gev"),
        false_positives: float = typer.Option(1.0, help="Allowed false positives."),
        z_score_cutoff: float = typer.Option(None, help="Fixed z cut-off (zscore method)."),
        mask_radius: float = typer.Option(5.0, help="Minimum distance between picks (px)."),
        pvalue_cutoff: float = typer.Option(8.0, help="-ln p cut-off (pvalue method)."),
        csv: Path = typer.Option(None, help="Write the particle table here (CSV)."),
        star: Path = typer.Option(None, help="Write the particle table here (RELION STAR)."),
    ) -> None:
        """Pick particles from a result bundle with a statistical cut-off."""
        from corrscan.errors import CorrscanError
        from corrscan.match2d.config import PeakConfig
        from corrscan.match2d.peaks import write_star
        from corrscan.match2d.pipeline import find_particles
        from corrscan.match2d.result import MatchTemplateResult

        try:
            res = MatchTemplateResult.load(bundle)
            pc = PeakConfig(
                method=method,
                false_positives=false_positives,
                z_score_cutoff=z_score_cutoff,
                mask_radius=mask_radius,
                pvalue_cutoff=pvalue_cutoff,
            )
            parts = find_particles(
                res,
                pc,
                micrograph_path=res.metadata.get("micrograph_path", ""),
                template_path=res.metadata.get("template_path", ""),
            )
        except (CorrscanError, ValueError) as exc:
            _fail(exc)
            return
        out_csv = csv or (bundle / f"particles_{method}.csv")
        parts.to_csv(out_csv, index=False)
        if star:
            write_star(parts, star)
        typer.echo(f"{len(parts)} particles -> {out_csv}")

    @sub.command("refine")
    def refine(
        config: Path = typer.Argument(..., help="The search's YAML MatchTemplateConfig."),
        bundle: Path = typer.Argument(..., help="Result bundle of `match2d search`."),
        refine_config: Path = typer.Option(None, help="YAML RefineConfig (default values)."),
        particles: Path = typer.Option(None, help="Particle CSV (default: the bundle's)."),
        out: Path = typer.Option(None, help="Refined CSV (default: <bundle>/refined.csv)."),
        star: Path = typer.Option(None, help="Also write RELION STAR here."),
    ) -> None:
        """Refine angles, defocus (and pixel size) of each particle locally."""
        import pandas as pd

        from corrscan.errors import CorrscanError
        from corrscan.match2d.config import MatchTemplateConfig, RefineConfig
        from corrscan.match2d.peaks import write_star
        from corrscan.match2d.pipeline import run_refine

        try:
            cfg = MatchTemplateConfig.from_yaml(config)
            rc = RefineConfig.from_yaml(refine_config) if refine_config else RefineConfig()
            parts = pd.read_csv(particles) if particles else None
            df = run_refine(cfg, bundle, rc, particles=parts)
        except CorrscanError as exc:
            _fail(exc)
            return
        dest = out or (bundle / "refined.csv")
        df.to_csv(dest, index=False)
        if star:
            write_star(df, star)
        if len(df):
            gain = (df["refined_scaled_mip"] - df["scaled_mip"]).mean()
            typer.echo(f"refined {len(df)} particles (mean z gain {gain:+.2f}) -> {dest}")
        else:
            typer.echo(f"no particles to refine -> {dest}")

    @sub.command("plot")
    def plot(
        bundle: Path = typer.Argument(..., help="Result bundle of `match2d search`."),
        out: Path = typer.Option(None, help="Folder for the PNGs (default: the bundle)."),
    ) -> None:
        """MIP and z-score images with picks; z-score survival vs the Gaussian expectation."""
        from corrscan.errors import CorrscanError
        from corrscan.match2d.plot import plot_result
        from corrscan.match2d.result import MatchTemplateResult

        try:
            res = MatchTemplateResult.load(bundle)
        except CorrscanError as exc:
            _fail(exc)
            return
        files = plot_result(
            res,
            out or bundle,
            particles=res.tables.get("particles"),
            cutoff=res.metadata.get("zscore_cutoff"),
        )
        for f in files:
            typer.echo(f"wrote {f}")

    @sub.command("example-config")
    def example_config(
        dest: Path = typer.Argument(Path("match2d.yaml"), help="Where to write the YAML."),
        micrograph: str = typer.Option("micrograph.mrc", help="Micrograph path in the YAML."),
        template: str = typer.Option("template.mrc", help="Template path in the YAML."),
    ) -> None:
        """Write a commented starting configuration."""
        dest.write_text(EXAMPLE_YAML.format(micrograph=micrograph, template=template))
        typer.echo(f"wrote {dest}")

    app.add_typer(sub, name="match2d")


EXAMPLE_YAML = """\
# corrscan match2d search configuration (Leopard-EM field names; Å, degrees, kV, mm)
micrograph_path: {micrograph}
template_volume_path: {template}
optics_group:
  label: micrograph_1
  pixel_size: 1.06          # Å/pixel (the template must have the same voxel size)
  voltage: 300.0
  spherical_aberration: 2.7
  amplitude_contrast_ratio: 0.07
  phase_shift: 0.0
  defocus_u: 5200.0         # Å, positive = underfocus
  defocus_v: 4950.0
  astigmatism_angle: 25.0
  ctf_B_factor: 0.0
defocus_search_config:
  enabled: true
  defocus_min: -1200.0      # offsets relative to (U + V) / 2; 0 is always included
  defocus_max: 1200.0
  defocus_step: 200.0
orientation_search_config:
  psi_step: 1.5
  theta_step: 2.5
  base_grid_method: uniform
  symmetry: C1
preprocessing_filters:
  whitening_filter: {{enabled: true}}
  bandpass_filter: {{enabled: false}}
computational_config:
  device: auto              # auto | cpu | cuda:0 | [cuda:0, cuda:1]
  orientation_batch_size: null   # planned from free memory
  ctf_placement: micrograph # or template_box (Leopard-EM's exact order)
output:
  bundle_path: match2d_result
  overwrite: false
  valid_crop: true
peaks:
  method: zscore
  false_positives: 1.0
  mask_radius: 5.0
"""

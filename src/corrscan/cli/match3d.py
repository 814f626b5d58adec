"""CLI commands of the ``match3d`` job: ``template``, ``search``, ``peaks`` and ``batch``.

Example::

    corrscan match3d template model.cif template.mrc --pixel-size 6.8 --lowpass 20
    corrscan match3d search tomo.mrc template.mrc -o result/ --score FLCSphericalMask \\
        --angular-step 15 --tilt-file TS_01.mdoc --lowpass 20
    corrscan match3d peaks result/ -o particles.star --format relion5 --n-false-positives 1
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from corrscan.errors import CorrscanError


def _fail(exc: Exception) -> None:
    typer.echo(f"error: {exc}", err=True)
    raise typer.Exit(code=2)


def _floats(text: str | None, name: str) -> list[float] | None:
    if text is None:
        return None
    p = Path(text)
    raw = p.read_text() if p.is_file() else text
    try:
        return [float(v) for v in raw.replace(",", " ").split()]
    except ValueError:
        raise CorrscanError(f"{name}: expected numbers separated by commas, got {text!r}") from None


def _read(path: Path, name: str) -> tuple[Any, float | None]:
    from corrscan.core.io import read_image

    if not path.exists():
        raise CorrscanError(f"{name} not found: {path}")
    return read_image(path)


def register(app: typer.Typer) -> None:
    """Add the ``match3d`` commands to the top-level app."""
    sub = typer.Typer(
        help="3D template matching in tomograms: search, then call peaks (pyTME's job).",
        no_args_is_help=True,
    )

    @sub.command("search")
    def search(
        tomogram: Path = typer.Argument(..., help="Tomogram (.mrc/.rec/.npy, z y x)."),
        template: Path = typer.Argument(..., help="Template map, same voxel size."),
        output: Path = typer.Option(..., "--output", "-o", help="Result bundle folder."),
        template_mask: Path | None = typer.Option(None, help="Template mask (default sphere)."),
        target_mask: Path | None = typer.Option(None, help="Tomogram mask (MCC's t)."),
        score: str = typer.Option("FLCSphericalMask", help="CC|LCC|NCC|FLCSphericalMask|FLC|MCC."),
        angular_step: float | None = typer.Option(None, help="Covering radius, degrees."),
        n_rotations: int | None = typer.Option(None, help="Or the size of the C1 set."),
        symmetry: str = typer.Option("C1", help="Template symmetry C1|Cn|Dn."),
        cone_angle: float | None = typer.Option(None, help="Restrict template z to a cone."),
        cone_axis: str = typer.Option("0,0,1", help="Cone axis x,y,z."),
        interpolation_order: int = typer.Option(3, help="1 (trilinear) or 3 (cubic)."),
        pixel_size: float | None = typer.Option(None, help="Å/voxel (default: from the MRC)."),
        lowpass: float | None = typer.Option(None, help="Low-pass cut-off, Å."),
        highpass: float | None = typer.Option(None, help="High-pass cut-off, Å."),
        wedge: str | None = typer.Option(None, help="Continuous wedge 'min,max' degrees."),
        tilt_angles: str | None = typer.Option(None, help="Tilt angles 'a,b,...' or a file."),
        tilt_file: Path | None = typer.Option(
            None, help="Tilt metadata: .tlt/.rawtlt, .mdoc, Warp .xml, .tomostar, CTFFIND4."
        ),
        tilt_axis: str = typer.Option("y", help="Tilt axis y|x."),
        tilt_weighting: str | None = typer.Option(None, help="angle|relion|grigorieff."),
        dose_per_tilt: float | None = typer.Option(None, help="e/Å² per tilt."),
        defocus: str | None = typer.Option(None, help="Defocus Å (one, or one per tilt)."),
        ctf_mode: str = typer.Option("3d", help="3d|per-tilt."),
        ctf_correction: str = typer.Option("phase-flip", help="phase-flip|raw|wiener."),
        voltage: float | None = typer.Option(None, help="kV (default 300 or the tilt file's)."),
        spherical_aberration: float | None = typer.Option(
            None, help="mm (default 2.7 or the tilt file's)."
        ),
        amplitude_contrast: float | None = typer.Option(
            None, help="Fraction (default 0.07 or the tilt file's)."
        ),
        whiten: bool = typer.Option(False, help="Whiten with the tomogram's spectrum."),
        no_filter_target: bool = typer.Option(False, help="Do not band-pass/whiten the target."),
        invert_contrast: bool = typer.Option(False, help="Multiply the tomogram by -1."),
        background_correction: str | None = typer.Option(
            None, help="'phase-scrambling': subtract a phase-scrambled template's search."
        ),
        splits: int = typer.Option(1, help="Pieces per axis of the tomogram."),
        pad_edges: bool | None = typer.Option(None, help="Pad boxes (default: when split)."),
        batch_size: int | None = typer.Option(None, help="Rotations per FFT call."),
        threads: int | None = typer.Option(None, help="CPU cores (rotation-parallel workers)."),
        device: str = typer.Option("cpu", help="cpu | cuda:N | auto."),
        overwrite: bool = typer.Option(False, help="Replace an existing result."),
        workers: int | None = typer.Option(
            None, help="Run rotation-chunk tasks on a local Dask cluster of N processes."
        ),
        scheduler: str | None = typer.Option(
            None, help="Run the tasks on an existing Dask scheduler (tcp://host:port)."
        ),
        resume: bool = typer.Option(
            True, "--resume/--no-resume", help="With --workers/--scheduler: resume a checkpoint."
        ),
    ) -> None:
        """Search the tomogram for rotated copies of the template; write a result bundle."""
        import numpy as np

        from corrscan.match3d import FilterConfig, match_template

        try:
            tomo, vs = _read(tomogram, "tomogram")
            tmpl, _ = _read(template, "template")
            tm = None if template_mask is None else _read(template_mask, "template mask")[0]
            gm = None if target_mask is None else _read(target_mask, "target mask")[0]
            ps = pixel_size if pixel_size is not None else (vs or 1.0)
            w = _floats(wedge, "--wedge")
            if w is not None and len(w) != 2:
                raise CorrscanError("--wedge takes two angles 'min,max'")
            df = _floats(defocus, "--defocus")
            given = dict(
                lowpass_angstrom=lowpass, highpass_angstrom=highpass,
                wedge=None if w is None else (w[0], w[1]),
                tilt_angles=_floats(tilt_angles, "--tilt-angles"), tilt_axis=tilt_axis,
                tilt_weighting=tilt_weighting, dose_per_tilt=dose_per_tilt,
                defocus=None if df is None else (df[0] if len(df) == 1 else df),
                ctf_mode=ctf_mode, ctf_correction=ctf_correction, voltage=voltage,
                spherical_aberration=spherical_aberration,
                amplitude_contrast=amplitude_contrast, whiten=whiten,
                filter_target=not no_filter_target,
                tilt_file=None if tilt_file is None else str(tilt_file),
            )  # fmt: skip
            # options left unset take the config defaults, or the tilt file's values
            cfg = FilterConfig(**{k: v for k, v in given.items() if v is not None})
            tomo = np.asarray(tomo, dtype=np.float32)
            if invert_contrast:
                tomo = -tomo
            if output.exists() and not overwrite:
                raise CorrscanError(f"{output} exists: pass --overwrite or choose another path")
            axis = _floats(cone_axis, "--cone-axis")
            search_kwargs = dict(
                template_mask=tm, target_mask=gm,
                score=score, angular_step=angular_step, n_rotations=n_rotations,
                symmetry=symmetry, cone_axis=tuple(axis) if cone_angle is not None else None,
                cone_angle=cone_angle, interpolation_order=interpolation_order, filters=cfg,
                pixel_size=ps, target_splits=splits if splits > 1 else None,
                pad_edges=pad_edges, batch_size=batch_size, device=device,
            )  # fmt: skip
            tmpl = np.asarray(tmpl, dtype=np.float32)
            if workers is not None or scheduler is not None:
                from corrscan.distributed.search3d import run_search3d

                if background_correction is not None:
                    raise CorrscanError(
                        "--background-correction runs in one process: drop --workers/"
                        "--scheduler, or run the scrambled search separately"
                    )

                res = run_search3d(
                    tomo, tmpl, output, overwrite=overwrite, resume=resume,
                    workers=workers, scheduler=scheduler, **search_kwargs,
                )  # fmt: skip
            else:
                res = match_template(
                    tomo, tmpl, workers=threads if device == "cpu" else None,
                    background_correction=background_correction, **search_kwargs,
                )  # fmt: skip
                res.write(output, overwrite=overwrite)
        except (CorrscanError, ValueError) as exc:
            _fail(exc)
        m = res.metadata
        typer.echo(
            f"{output}: {m['n_rotations']} rotations, {m['seconds']:.1f} s, "
            f"score mean {res.score_mean:.4g} std {res.score_std:.4g}"
        )

    @sub.command("peaks")
    def peaks(
        result: Path = typer.Argument(..., help="Result bundle from 'match3d search'."),
        output: Path = typer.Option(..., "--output", "-o", help="Table (.csv, .star or .tbl)."),
        fmt: str = typer.Option("csv", "--format", help="csv | relion4 | relion5 | dynamo."),
        method: str = typer.Option(
            "maximum_filter", help="sort|maximum_filter|fast|recursive|local_max|clustering."
        ),
        num_peaks: int = typer.Option(1000, help="Maximum number of peaks."),
        min_distance: int = typer.Option(5, help="Voxels between peaks."),
        min_boundary_distance: int = typer.Option(0, help="Voxels from the faces."),
        min_score: float | None = typer.Option(None, help="Lowest score kept."),
        max_score: float | None = typer.Option(None, help="Highest score kept."),
        n_false_positives: float | None = typer.Option(
            None, help="Raise min-score to the Gaussian cut-off for this many false positives."
        ),
        subvoxel: bool = typer.Option(False, help="Add parabolic sub-voxel positions."),
        tomo_name: str = typer.Option("tomogram", help="rlnTomoName in STAR files."),
        tomo_number: int = typer.Option(1, help="Dynamo 'tomo' column (.tbl)."),
    ) -> None:
        """Call peaks on a search result and write the orientations table."""
        from corrscan.match3d import MatchResult, write_table

        try:
            res = MatchResult.read(result)
            df = res.peaks(
                method=method, num_peaks=num_peaks, min_distance=min_distance,
                min_boundary_distance=min_boundary_distance, min_score=min_score,
                max_score=max_score, n_false_positives=n_false_positives, subvoxel=subvoxel,
            )  # fmt: skip
            write_table(
                df,
                output,
                fmt=fmt,
                tomo_name=tomo_name,
                pixel_size=res.pixel_size,
                shape=res.scores.shape,
                tomo_number=tomo_number,
            )
        except (CorrscanError, ValueError) as exc:
            _fail(exc)
        typer.echo(f"{output}: {len(df)} peaks")

    @sub.command("batch")
    def batch(
        inputs: str = typer.Argument(..., help="Tomograms: a glob, a CSV or a STAR list."),
        template: Path = typer.Argument(..., help="Template map, same voxel size."),
        out: Path = typer.Option(..., "--out", "-o", help="Folder of the per-tomogram bundles."),
        score: str = typer.Option("FLCSphericalMask", help="CC|LCC|NCC|FLCSphericalMask|FLC|MCC."),
        angular_step: float = typer.Option(30.0, help="Covering radius, degrees."),
        symmetry: str = typer.Option("C1", help="Template symmetry C1|Cn|Dn."),
        interpolation_order: int = typer.Option(3, help="1 (trilinear) or 3 (cubic)."),
        lowpass: float | None = typer.Option(None, help="Low-pass cut-off, Å."),
        highpass: float | None = typer.Option(None, help="High-pass cut-off, Å."),
        wedge: str | None = typer.Option(None, help="Continuous wedge 'min,max' degrees."),
        skip_done: bool = typer.Option(True, "--skip-done/--redo", help="Skip finished ones."),
        workers: int | None = typer.Option(None, help="Local Dask cluster of N processes."),
        scheduler: str | None = typer.Option(None, help="Existing Dask scheduler address."),
        resume: bool = typer.Option(True, "--resume/--no-resume", help="Resume checkpoints."),
    ) -> None:
        """Search many tomograms for one template; skip finished ones; write summary.csv."""
        from corrscan.distributed.search3d import batch_search3d
        from corrscan.match3d import FilterConfig

        try:
            w = _floats(wedge, "--wedge")
            if w is not None and len(w) != 2:
                raise CorrscanError("--wedge takes two angles 'min,max'")
            cfg = FilterConfig(
                lowpass_angstrom=lowpass, highpass_angstrom=highpass,
                wedge=None if w is None else (w[0], w[1]),
            )  # fmt: skip
            summary = batch_search3d(
                inputs, template, out, skip_done=skip_done, workers=workers,
                scheduler=scheduler, resume=resume, score=score, angular_step=angular_step,
                symmetry=symmetry, interpolation_order=interpolation_order, filters=cfg,
            )  # fmt: skip
        except (CorrscanError, ValueError) as exc:
            _fail(exc)
        counts = summary["status"].value_counts().to_dict()
        typer.echo(
            f"{len(summary)} tomogram(s): "
            + ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
            + f"; summary: {out / 'summary.csv'}"
        )
        if counts.get("failed"):
            for _, row in summary[summary["status"] == "failed"].iterrows():
                typer.echo(f"  failed {row['input']}: {row['error']}", err=True)
            raise typer.Exit(1)

    @sub.command("template")
    def template(
        model: Path = typer.Argument(..., help="Atomic model (.pdb/.ent/.cif/.mmcif/.gro)."),
        out: Path = typer.Argument(..., help="Output template map (.mrc)."),
        pixel_size: float = typer.Option(..., help="Å/voxel (use the tomogram's)."),
        box: int | None = typer.Option(None, help="Cubic box edge (default 2x the extent)."),
        lowpass: float | None = typer.Option(None, help="Gaussian low-pass cut-off, Å."),
        invert: bool = typer.Option(False, help="Invert the contrast (dark protein)."),
        scramble_phases: bool = typer.Option(False, help="Phase-scrambled (noise) template."),
        seed: int = typer.Option(42, help="Seed of the phase scrambling."),
        selection: str = typer.Option("all", help="all|heavy|CA|backbone."),
        b_factor: float = typer.Option(20.0, help="Atom B-factor, Å² (Gaussian width)."),
        mask: Path | None = typer.Option(None, help="Also write the spherical mask here."),
        overwrite: bool = typer.Option(False, help="Replace existing output files."),
    ) -> None:
        """Build a template map (and mask) from an atomic model; write MRC with the voxel size."""
        from corrscan.core.io.mrc import write_mrc
        from corrscan.match3d.template import build_template

        try:
            for p in (out, mask):
                if p is not None and p.exists() and not overwrite:
                    raise CorrscanError(f"{p} exists: pass --overwrite or choose another path")
            if not model.exists():
                raise CorrscanError(f"atomic model not found: {model}")
            vol, msk = build_template(
                model, pixel_size, box=box, lowpass_angstrom=lowpass, invert_contrast=invert,
                scramble_phases=scramble_phases, seed=seed, selection=selection,
                b_factor=b_factor,
            )  # fmt: skip
            write_mrc(out, vol, pixel_size)
            if mask is not None:
                write_mrc(mask, msk, pixel_size)
        except (CorrscanError, ValueError) as exc:
            _fail(exc)
        typer.echo(f"{out}: template {'x'.join(map(str, vol.shape))} at {pixel_size:g} Å/voxel")

    app.add_typer(sub, name="match3d")

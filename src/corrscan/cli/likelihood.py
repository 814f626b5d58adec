"""CLI commands of the ``likelihood`` job: ``templates``, ``images``, ``run``.

Example::

    corrscan likelihood templates model.pdb map.mrc --n-pixels 64 --pixel-size 2 \\
        --viewing fibonacci --n-viewing 300 --output templates/
    corrscan likelihood images --params templates/parameters.yaml --star particles.star \\
        --output particles/
    corrscan likelihood run --templates templates/ --particles particles/ --output out/ \\
        --max-displacement-pixels 1 --n-displacements-x 3 --n-displacements-y 3
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from corrscan.errors import CorrscanError


def _fail(exc: Exception) -> None:
    typer.echo(f"error: {exc}", err=True)
    raise typer.Exit(code=2)


def register(app: typer.Typer) -> None:
    """Add the ``likelihood`` commands to the top-level app."""
    sub = typer.Typer(
        help="Image-to-structure likelihood: templates, particle stacks, optimal pose and "
        "integrated log-likelihood (CryoLike's job).",
        no_args_is_help=True,
    )

    @sub.command("templates")
    def templates(
        inputs: list[Path] = typer.Argument(..., help="PDB/mmCIF models and/or MRC maps."),
        output: Path = typer.Option(..., "--output", "-o", help="Template folder to write."),
        params: Path | None = typer.Option(None, help="ImageParameters YAML (else the flags)."),
        n_pixels: int | None = typer.Option(None, help="Image side, pixels."),
        pixel_size: float | None = typer.Option(None, help="Å/pixel."),
        resolution_factor: float = typer.Option(1.0, help="Outer shell / Nyquist."),
        n_inplanes: int | None = typer.Option(None, help="Angles per shell (default 2 N)."),
        viewing: str = typer.Option("gauss-legendre", help="gauss-legendre | fibonacci."),
        viewing_distance: float = typer.Option(0.0795774715, help="CryoLike units (1/4π)."),
        n_viewing: int = typer.Option(300, help="Directions of the fibonacci grid."),
        atom_selection: str = typer.Option("all", help="all | heavy | CA | backbone."),
        atom_sigma: float = typer.Option(1.5, help="Gaussian atom std, Å."),
        precision: str = typer.Option("single", help="single | double."),
        device: str = typer.Option("cpu", help="cpu | cuda:N | auto."),
    ) -> None:
        """Build polar templates of every input structure (writes parameters.yaml too)."""
        from corrscan.likelihood.workflow import ImageParameters, make_templates_from_inputs

        try:
            if params is not None:
                p = ImageParameters.from_yaml(params)
            else:
                if n_pixels is None or pixel_size is None:
                    raise CorrscanError("give --params FILE or both --n-pixels and --pixel-size")
                p = ImageParameters(
                    n_pixels=n_pixels,
                    pixel_size=pixel_size,
                    resolution_factor=resolution_factor,
                    n_inplanes=n_inplanes,
                    viewing=viewing,
                    viewing_distance=viewing_distance,
                    n_viewing=n_viewing,
                    atom_selection=atom_selection,
                    atom_sigma=atom_sigma,
                    precision=precision,
                )
            paths = make_templates_from_inputs(list(inputs), p, output, device=device)
        except (CorrscanError, ValueError) as exc:
            _fail(exc)
        for path in paths:
            typer.echo(str(path))

    @sub.command("images")
    def images(
        params: Path = typer.Option(..., help="ImageParameters YAML (templates/parameters.yaml)."),
        output: Path = typer.Option(..., "--output", "-o", help="Particle folder to write."),
        star: list[Path] = typer.Option([], help="STAR file(s); with --mrc: paired, else indexed."),
        mrc: list[Path] = typer.Option([], help="MRC stacks paired with --star (same order)."),
        cs: Path | None = typer.Option(None, help="cryoSPARC .cs particle file."),
        cryosparc_dir: Path | None = typer.Option(None, help="cryoSPARC project folder."),
        batch_size: int = typer.Option(1024, help="Images per output stack."),
        pixel_size: float | None = typer.Option(None, help="Override the file's pixel size."),
        no_origin_shifts: bool = typer.Option(False, help="Ignore prior origin shifts."),
    ) -> None:
        """Convert particle stacks (STAR+MRC, indexed STAR, cryoSPARC .cs) to the polar grid."""
        from corrscan.likelihood import workflow as wf

        shifts = not no_origin_shifts
        try:
            if cs is not None:
                paths = wf.convert_particle_stacks_from_indexed_cryosparc_file(
                    params, cs, output, folder_cryosparc=cryosparc_dir, batch_size=batch_size,
                    apply_origin_shifts=shifts,
                )  # fmt: skip
            elif star and mrc:
                paths = wf.convert_particle_stacks_from_paired_star_and_mrc_files(
                    params, list(mrc), list(star), output, batch_size=batch_size,
                    pixel_size=pixel_size, apply_origin_shifts=shifts,
                )  # fmt: skip
            elif len(star) == 1:
                paths = wf.convert_particle_stacks_from_indexed_star_file(
                    params, star[0], output, batch_size=batch_size, pixel_size=pixel_size,
                    apply_origin_shifts=shifts,
                )  # fmt: skip
            else:
                raise CorrscanError("give --cs FILE, --star FILE (indexed), or --star/--mrc pairs")
        except (CorrscanError, ValueError) as exc:
            _fail(exc)
        for path in paths:
            typer.echo(str(path))

    @sub.command("run")
    def run(
        templates: Path = typer.Option(..., help="Template folder."),
        particles: Path = typer.Option(..., help="Particle folder."),
        output: Path = typer.Option(..., "--output", "-o", help="Output folder."),
        i_template: int = typer.Option(0, help="Structure index in template_file_list.npy."),
        n_stacks: int | None = typer.Option(None, help="Only the first n particle stacks."),
        max_displacement_pixels: float = typer.Option(8.0, help="Half-width of the shift grid."),
        n_displacements_x: int = typer.Option(1, help="Shift grid points along x."),
        n_displacements_y: int = typer.Option(1, help="Shift grid points along y."),
        full: bool = typer.Option(False, help="Write the full CC tensor instead of poses."),
        no_likelihood: bool = typer.Option(False, help="Skip the integrated likelihood."),
        skip_exist: bool = typer.Option(False, help="Skip stacks whose outputs exist."),
        n_images_per_batch: int | None = typer.Option(None, help="Default: from free memory."),
        n_templates_per_batch: int | None = typer.Option(None, help="Default: from free memory."),
        device: str = typer.Option("auto", help="cpu | cuda:N | auto."),
        workers: int | None = typer.Option(
            None, help="Run template-batch tasks on a local Dask cluster of N processes."
        ),
        scheduler: str | None = typer.Option(
            None, help="Run the tasks on an existing Dask scheduler (tcp://host:port)."
        ),
        resume: bool = typer.Option(
            True, "--resume/--no-resume", help="With --workers/--scheduler: resume checkpoints."
        ),
    ) -> None:
        """Optimal pose and log-likelihoods (or the full CC tensor) of every image."""
        from corrscan.likelihood import workflow as wf

        runner: Any = wf
        if workers is not None or scheduler is not None:
            from corrscan.distributed import likelihood as runner  # same API, Dask tasks

            extra = {"workers": workers, "scheduler": scheduler, "resume": resume}
            batches = {
                "n_images_per_batch": n_images_per_batch or 32,
                "n_templates_per_batch": n_templates_per_batch or 64,
            }
            device = "cpu" if device == "auto" else device
        else:
            extra = {}
            batches = {
                "n_images_per_batch": n_images_per_batch,
                "n_templates_per_batch": n_templates_per_batch,
            }

        try:
            files = wf.configure_likelihood_files(
                templates, particles, output, n_stacks=n_stacks, i_template=i_template
            )
            disp = wf.configure_displacement(
                max_displacement_pixels, n_displacements_x, n_displacements_y
            )
            if full:
                out = runner.run_likelihood_full_cross_correlation(
                    files, disp, skip_exist=skip_exist, device=device, **batches, **extra
                )
            else:
                out = runner.run_likelihood_optimal_pose(
                    files, disp, skip_exist=skip_exist, device=device, **batches, **extra,
                    return_likelihood_optimal_pose_fourier=not no_likelihood,
                    return_likelihood_integrated_pose_fourier=not no_likelihood,
                )  # fmt: skip
        except (CorrscanError, ValueError) as exc:
            _fail(exc)
        typer.echo(f"{len(out)} stack(s) written under {output}")

    app.add_typer(sub, name="likelihood")

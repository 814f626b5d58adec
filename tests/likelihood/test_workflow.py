"""End-to-end file workflow: parameters -> templates (PDB, mmCIF, MRC) -> STAR/MRC particles
-> run_likelihood_optimal_pose / run_likelihood_full_cross_correlation, every output checked."""

from __future__ import annotations

import mrcfile
import numpy as np
import pandas as pd
import pytest
import starfile
import torch

from corrscan.errors import FileFormatError, InputError
from corrscan.likelihood.grid import displacement_grid
from corrscan.likelihood.kernel import search
from corrscan.likelihood.stacks import PolarImages, PolarTemplates
from corrscan.likelihood.templates import read_atoms
from corrscan.likelihood.workflow import (
    ImageParameters,
    configure_displacement,
    configure_likelihood_files,
    convert_particle_stacks_from_paired_star_and_mrc_files,
    make_templates_from_inputs,
    run_likelihood_full_cross_correlation,
    run_likelihood_optimal_pose,
)
from corrscan.synthetic.particles import random_chain, simulate_particles

N, PS, SIGMA, M = 24, 3.0, 2.5, 20


def write_pdb(path, xyz):
    lines = [
        f"ATOM  {i + 1:5d}  CA  ALA A{i + 1:4d}    {x:8.3f}{y:8.3f}{z:8.3f}  1.00  0.00           C"
        for i, (x, y, z) in enumerate(xyz)
    ]
    path.write_text("\n".join([*lines, "END"]) + "\n")


def write_cif(path, xyz):
    head = [
        "data_test", "#", "loop_", "_atom_site.group_PDB", "_atom_site.id",
        "_atom_site.type_symbol", "_atom_site.label_atom_id", "_atom_site.label_comp_id",
        "_atom_site.label_asym_id", "_atom_site.Cartn_x", "_atom_site.Cartn_y",
        "_atom_site.Cartn_z", "_atom_site.pdbx_PDB_model_num",
    ]  # fmt: skip
    rows = [f"ATOM {i + 1} C CA ALA A {x:.3f} {y:.3f} {z:.3f} 1" for i, (x, y, z) in enumerate(xyz)]
    path.write_text("\n".join([*head, *rows, "#"]) + "\n")


def make_project(tmp_path, *, shifts_px=None, seed=0):
    """Structures, parameters, a STAR + MRC particle stack with CTFs and prior origins."""
    true = random_chain(120, radius=20, seed=seed + 1)
    decoy = random_chain(120, radius=20, seed=seed + 2)
    write_pdb(tmp_path / "true.pdb", true)
    write_cif(tmp_path / "decoy.cif", decoy)
    params = ImageParameters(
        n_pixels=N, pixel_size=PS, viewing="fibonacci", n_viewing=30, atom_sigma=SIGMA
    )
    params.to_yaml(tmp_path / "params.yaml")
    rng = np.random.default_rng(seed)
    sh = rng.uniform(-2, 2, (M, 2)) if shifts_px is None else shifts_px
    imgs, truth = simulate_particles(
        true - true.mean(0), n_images=M, n_pixels=N, pixel_size=PS, sigma=SIGMA, shifts=sh,
        snr=1.0, seed=seed + 3,
    )  # fmt: skip
    with mrcfile.new(tmp_path / "particles.mrcs", overwrite=True) as f:
        f.set_data(imgs)
        f.voxel_size = PS
    parts = pd.DataFrame(
        {
            "rlnDefocusU": truth["defocus_u"],
            "rlnDefocusV": truth["defocus_v"],
            "rlnDefocusAngle": truth["astigmatism_angle"],
            # RELION: the particle centre is at centre - origin
            "rlnOriginXAngst": -truth["shift_x_angst"],
            "rlnOriginYAngst": -truth["shift_y_angst"],
            "rlnOpticsGroup": 1,
        }
    )
    optics = pd.DataFrame(
        {
            "rlnOpticsGroup": [1],
            "rlnVoltage": [300.0],
            "rlnSphericalAberration": [2.7],
            "rlnAmplitudeContrast": [0.1],
            "rlnImagePixelSize": [PS],
        }
    )
    starfile.write({"optics": optics, "particles": parts}, tmp_path / "particles.star")
    return truth


def test_atom_readers_agree(tmp_path):
    xyz = random_chain(10, seed=3)
    write_pdb(tmp_path / "a.pdb", xyz)
    write_cif(tmp_path / "a.cif", xyz)
    a, b = read_atoms(tmp_path / "a.pdb"), read_atoms(tmp_path / "a.cif", selection="CA")
    np.testing.assert_allclose(a[["x", "y", "z"]], xyz, atol=1e-3)
    np.testing.assert_allclose(b[["x", "y", "z"]], xyz, atol=1e-3)
    with pytest.raises(FileFormatError):
        read_atoms(tmp_path / "missing.pdb")


def test_end_to_end_optimal_pose_and_full_cross_correlation(tmp_path):
    make_project(tmp_path)
    tdir, pdir, out = tmp_path / "templates", tmp_path / "particles", tmp_path / "out"
    paths = make_templates_from_inputs(
        [tmp_path / "true.pdb", tmp_path / "decoy.cif"], tmp_path / "params.yaml", tdir
    )
    assert [p.name for p in paths] == ["templates_fourier_true.pt", "templates_fourier_decoy.pt"]
    stacks = convert_particle_stacks_from_paired_star_and_mrc_files(
        tmp_path / "params.yaml", [tmp_path / "particles.mrcs"], [tmp_path / "particles.star"],
        pdir, batch_size=8,
    )  # fmt: skip
    assert [p.name for p in stacks] == [f"particles_fourier_stack_{i:06d}.pt" for i in range(3)]
    disp_cfg = configure_displacement(1.0, 3, 3)
    ill = {}
    for i_template in (0, 1):
        files = configure_likelihood_files(tdir, pdir, out, i_template=i_template)
        run_likelihood_optimal_pose(files, disp_cfg, device="cpu")
        root = out / f"template{i_template}"
        ill[i_template] = torch.cat(
            [
                torch.load(
                    root / "log_likelihood" / f"log_likelihood_integrated_fourier_stack_{k:06d}.pt"
                )
                for k in range(3)
            ]
        )
    # every documented file, and the same numbers as a direct search
    root = out / "template0"
    disp = torch.load(out / "displacements_set.pt")
    np.testing.assert_allclose(disp.numpy(), displacement_grid(1.0, 3, 3, pixel_size=PS))
    imgs = PolarImages.concat([PolarImages.load(p) for p in stacks])
    tpl = PolarTemplates.load(paths[0])
    ref = search(
        imgs,
        tpl,
        disp.numpy(),
        level="pose",
        likelihood=True,
        optimal_likelihood=True,
        device="cpu",
    )
    pose = ref.optimal_pose()
    names = {
        "optimal_pose/cross_correlation": ref.cross_correlation,
        "cross_correlation/cross_correlation": ref.cross_correlation,
        "optimal_pose/optimal_template": ref.template,
        "optimal_pose/optimal_displacement_x": ref.displacement_x,
        "optimal_pose/optimal_displacement_y": ref.displacement_y,
        "optimal_pose/optimal_inplane_rotation": ref.inplane_rotation,
        "optimal_pose/optimal_displacement_template_x": pose.optimal_displacement_template_x_M,
        "log_likelihood/log_likelihood_integrated_fourier": ref.integrated_log_likelihood,
        "log_likelihood/log_likelihood_optimal_fourier": ref.log_likelihood_optimal,
        "log_likelihood/log_likelihood_ms": ref.log_likelihood_ms,
    }
    for name, want in names.items():
        got = torch.cat(
            [torch.load(root / f"{name}_stack_{k:06d}.pt", weights_only=True) for k in range(3)]
        )
        torch.testing.assert_close(got.to(want.dtype), want, atol=1e-4, rtol=1e-6, msg=name)
    table = pd.concat(
        [pd.read_csv(root / "optimal_pose" / f"optimal_pose_stack_{k:06d}.csv") for k in range(3)]
    )
    np.testing.assert_array_equal(table["template"], ref.template.numpy())
    # prior origins were applied: the particles are centred, so the best shift is ~0
    assert (
        np.hypot(ref.displacement_x.numpy(), ref.displacement_y.numpy()) <= PS + 1e-6
    ).mean() >= 0.9
    # integrated log-likelihood: data dependent (not CryoLike's constant) and prefers the truth
    assert ill[0].std() > 1.0
    assert (ill[0] > ill[1]).double().mean() >= 0.9
    # skip_exist leaves finished stacks alone
    target = root / "optimal_pose" / "optimal_template_stack_000000.pt"
    before = target.stat().st_mtime_ns
    files = configure_likelihood_files(tdir, pdir, out, i_template=0, n_stacks=1)
    assert len(run_likelihood_optimal_pose(files, disp_cfg, skip_exist=True, device="cpu")) == 0
    assert target.stat().st_mtime_ns == before
    # full cross-correlation of the first stack, manual batch sizes
    run_likelihood_full_cross_correlation(
        files, disp_cfg, estimate_batch_size=False, n_images_per_batch=3, n_templates_per_batch=7,
        device="cpu",
    )  # fmt: skip
    full = torch.load(
        root / "cross_correlation" / "cross_correlation_pose_msdw_stack_000000.pt",
        weights_only=True,
    )
    cc = full["cross_correlation"]
    assert cc.shape == (8, 30, 9, 2 * N)
    torch.testing.assert_close(
        cc.reshape(8, -1).amax(1), ref.cross_correlation[:8], atol=1e-5, rtol=0
    )


def test_configuration_errors_name_the_fix(tmp_path):
    (tmp_path / "t").mkdir()
    with pytest.raises(FileFormatError, match="make_templates_from_inputs"):
        configure_likelihood_files(tmp_path / "t", tmp_path / "p", tmp_path / "o")
    make_project(tmp_path)
    make_templates_from_inputs([tmp_path / "true.pdb"], tmp_path / "params.yaml", tmp_path / "t")
    with pytest.raises(FileFormatError, match="convert the particles"):
        configure_likelihood_files(tmp_path / "t", tmp_path / "p", tmp_path / "o")
    convert_particle_stacks_from_paired_star_and_mrc_files(
        tmp_path / "params.yaml",
        [tmp_path / "particles.mrcs"],
        [tmp_path / "particles.star"],
        tmp_path / "p",
    )
    with pytest.raises(InputError, match="i_template"):
        configure_likelihood_files(tmp_path / "t", tmp_path / "p", tmp_path / "o", i_template=3)
    bad = ImageParameters(n_pixels=32, pixel_size=PS)
    with pytest.raises(InputError, match="grid is 32 px"):
        convert_particle_stacks_from_paired_star_and_mrc_files(
            bad, [tmp_path / "particles.mrcs"], [tmp_path / "particles.star"], tmp_path / "q"
        )


def test_map_file_templates_match_the_atom_model(tmp_path):
    xyz = random_chain(40, radius=8, seed=5)
    xyz -= xyz.mean(0)
    write_pdb(tmp_path / "m.pdb", xyz)
    n, sigma = 24, 4.5  # 1.5 px: the sampled map is not aliased
    ax = (np.arange(n) - n // 2) * PS
    z, y, x = np.meshgrid(ax, ax, ax, indexing="ij")
    vol = sum(
        np.exp(-((x - a[0]) ** 2 + (y - a[1]) ** 2 + (z - a[2]) ** 2) / (2 * sigma**2)) for a in xyz
    )
    with mrcfile.new(tmp_path / "m.mrc", overwrite=True) as f:
        f.set_data(vol.astype(np.float32))
        f.voxel_size = PS
    params = ImageParameters(
        n_pixels=n, pixel_size=PS, viewing="fibonacci", n_viewing=8, atom_sigma=sigma
    )
    paths = make_templates_from_inputs(
        [tmp_path / "m.pdb", tmp_path / "m.mrc"], params, tmp_path / "t"
    )
    assert [p.name for p in paths] == ["templates_fourier_m.pt", "templates_fourier_m_1.pt"]
    a, b = PolarTemplates.load(paths[0]), PolarTemplates.load(paths[1])
    assert (a.data - b.data).abs().max() < 1e-3
    bad = ImageParameters(n_pixels=n, pixel_size=2.0, viewing="fibonacci", n_viewing=8)
    with pytest.raises(InputError, match="voxel size"):
        make_templates_from_inputs([tmp_path / "m.mrc"], bad, tmp_path / "t2")


def polar_project(tmp_path, m=6, s=5, n=16, seed=0):
    """Polar templates and two particle stacks (4 + 2 images) written in the workflow layout."""
    from corrscan.likelihood.ctf import CtfParams
    from corrscan.likelihood.grid import PolarGrid
    from corrscan.likelihood.stacks import images_from_real_space

    gen = torch.Generator().manual_seed(seed)
    g = PolarGrid.create(n, 2.0, n_shells=10, n_inplanes=16)
    ctf = CtfParams(np.linspace(8000, 12000, m), np.linspace(7000, 12500, m))
    ims = images_from_real_space(torch.randn(m, n, n, generator=gen), g, ctf)
    tp = images_from_real_space(torch.randn(s, n, n, generator=gen), g)
    euler = np.stack([np.linspace(0, 90, s), np.linspace(10, 50, s), np.zeros(s)], axis=1)
    (tmp_path / "tpl").mkdir()
    (tmp_path / "parts" / "fft").mkdir(parents=True)
    PolarTemplates(tp.data, g, euler, np.ones(s)).save(tmp_path / "tpl" / "templates_fourier_x.pt")
    for k, sl in enumerate((slice(0, 4), slice(4, m))):
        ims.subset(sl).save(tmp_path / "parts" / "fft" / f"particles_fourier_stack_{k:06d}.pt")


def test_file_workflow_runs_any_stack_search(tmp_path):
    """The stack loop, names, skip_exist and writes are shared: a recording ``StackSearch``
    gives the same files as the in-process runner and sees one job per stack, in order."""
    from corrscan.likelihood.workflow import full_cross_correlation_files, optimal_pose_files

    polar_project(tmp_path)
    batches = {"n_images_per_batch": 2, "n_templates_per_batch": 3}
    jobs, done = [], []

    def recording(job):
        jobs.append(job)
        return search(
            job.images, job.templates, job.displacements, level=job.level,
            likelihood=job.likelihood, optimal_likelihood=job.optimal_likelihood,
            device="cpu", precision=job.precision, **batches,
        )  # fmt: skip

    def written(job):  # called once the stack's files are all there
        root = tmp_path / "b" / "template0"
        assert (
            root / "cross_correlation" / f"cross_correlation_stack_{job.stack:06d}.pt"
        ).is_file()
        done.append(job.stack)

    disp = configure_displacement(1.0, 2, 2)
    files_a = configure_likelihood_files(tmp_path / "tpl", tmp_path / "parts", tmp_path / "a")
    run_likelihood_optimal_pose(files_a, disp, estimate_batch_size=False, device="cpu", **batches)
    run_likelihood_full_cross_correlation(
        files_a, disp, estimate_batch_size=False, device="cpu", **batches
    )
    files_b = configure_likelihood_files(tmp_path / "tpl", tmp_path / "parts", tmp_path / "b")
    out = optimal_pose_files(files_b, disp, recording, on_stack_written=written)
    assert out == [tmp_path / "b" / "template0"] * 2
    assert [(j.stack, j.level, j.likelihood, j.optimal_likelihood) for j in jobs] == [
        (0, "pose", True, True),
        (1, "pose", True, True),
    ]
    assert [len(j.images) for j in jobs] == [4, 2] and done == [0, 1]
    assert all(j.precision == "single" for j in jobs)  # from the complex64 images
    full = full_cross_correlation_files(files_b, disp, recording, precision="double")
    assert [p.name for p in full] == [
        "cross_correlation_pose_msdw_stack_000000.pt",
        "cross_correlation_pose_msdw_stack_000001.pt",
    ]
    assert [(j.level, j.precision, j.likelihood) for j in jobs[2:]] == [
        ("full", "double", False)
    ] * 2
    rel = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.*"))
    assert rel == sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*.*"))
    assert len(rel) == 2 * 13 + 1  # per stack: 7 + csv + 1 + 3 log-likelihoods + 1 full
    for r in rel:
        a, b = tmp_path / "a" / r, tmp_path / "b" / r
        if r.suffix == ".csv":
            assert a.read_bytes() == b.read_bytes(), r
        elif "msdw" not in r.name:
            assert torch.equal(
                torch.load(a, weights_only=True), torch.load(b, weights_only=True)
            ), r
    # the full files hold the double-precision search: same values to single precision
    fa = torch.load(tmp_path / "a" / full[0].relative_to(tmp_path / "b"), weights_only=True)
    fb = torch.load(full[0], weights_only=True)
    assert fb["cross_correlation"].dtype == torch.float64
    scale = float(fb["cross_correlation"].abs().max())
    torch.testing.assert_close(
        fa["cross_correlation"].double(), fb["cross_correlation"], rtol=1e-4, atol=1e-5 * scale
    )
    # skip_exist: every stack is complete, the search is not called again
    n = len(jobs)
    assert optimal_pose_files(files_b, disp, recording, skip_exist=True) == []
    assert full_cross_correlation_files(files_b, disp, recording, skip_exist=True) == []
    assert len(jobs) == n

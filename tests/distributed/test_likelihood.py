"""Likelihood search as (image range x template range) tasks equals the one-shot search."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from corrscan.distributed.likelihood import likelihood_search, likelihood_tasks
from corrscan.errors import InputError
from corrscan.likelihood.ctf import CtfParams
from corrscan.likelihood.grid import PolarGrid, displacement_grid
from corrscan.likelihood.kernel import search
from corrscan.likelihood.stacks import PolarTemplates, images_from_real_space

BATCHES = {"n_images_per_batch": 2, "n_templates_per_batch": 3}


def problem(m=5, s=8, n=16, seed=0):
    gen = torch.Generator().manual_seed(seed)
    g = PolarGrid.create(n, 2.0, n_shells=10, n_inplanes=16)
    ctf = CtfParams(
        np.linspace(8000, 12000, m), np.linspace(7000, 12500, m),
        astigmatism_angle=np.linspace(10, 100, m), amplitude_contrast=0.1,
    )  # fmt: skip
    ims = images_from_real_space(torch.randn(m, n, n, generator=gen), g, ctf)
    tp = images_from_real_space(torch.randn(s, n, n, generator=gen), g)
    data = tp.data.clone()
    data[5] = data[1]  # a duplicate template: exact ties, the smaller index must win
    tpl = PolarTemplates(data, g, np.zeros((s, 3)), np.arange(1, s + 1.0))
    return ims, tpl, displacement_grid(1.5, 2, 2, pixel_size=2.0)


def assert_same(a, b):
    for name in (
        "cross_correlation", "template", "displacement_x", "displacement_y", "inplane_rotation",
        "log_likelihood_ms", "integrated_log_likelihood", "log_likelihood_full",
        "log_likelihood_optimal",
    ):  # fmt: skip
        va, vb = getattr(a, name), getattr(b, name)
        assert (va is None) == (vb is None), name
        if va is not None:
            assert torch.equal(va, vb), name


@pytest.mark.parametrize(
    "level,extra",
    [
        ("pose", {"likelihood": True, "optimal_likelihood": True}),
        ("full", {"likelihood": True}),
        ("displacement_rotation", {}),
        ("rotation", {}),
    ],
)
def test_tasks_equal_one_shot(level, extra):
    ims, tpl, disp = problem()
    ref = search(ims, tpl, disp, level=level, device="cpu", **BATCHES, **extra)
    res = likelihood_search(
        ims, tpl, disp, level=level, image_chunk=3, template_chunk=2, **BATCHES, **extra
    )
    assert_same(res, ref)


def test_tasks_are_aligned_to_batches():
    tasks = likelihood_tasks(5, 8, 2, 3, image_chunk=3, template_chunk=2)
    assert {(a, b) for a, b, _, _ in tasks} == {(0, 4), (4, 5)}
    assert {(a, b) for _, _, a, b in tasks} == {(0, 3), (3, 6), (6, 8)}
    with pytest.raises(InputError, match="empty search space"):
        likelihood_tasks(0, 8, 2, 3)


class _Killed(Exception):
    pass


def test_interrupted_and_resumed_equals_uninterrupted(tmp_path):
    ims, tpl, disp = problem()
    kw = dict(level="pose", likelihood=True, optimal_likelihood=True, **BATCHES)
    ref = search(ims, tpl, disp, device="cpu", **kw)
    ck = tmp_path / "ll.checkpoint.pt"
    stop_at = int(np.random.default_rng().integers(1, 6))

    def kill(task, n_done):
        if n_done == stop_at:
            raise _Killed

    with pytest.raises(_Killed):
        likelihood_search(ims, tpl, disp, image_chunk=2, template_chunk=3, checkpoint=ck,
                          checkpoint_interval_s=0, on_chunk=kill, **kw)  # fmt: skip
    seen: list[int] = []
    res = likelihood_search(ims, tpl, disp, checkpoint=ck, on_chunk=lambda t, n: seen.append(n),
                            **kw)  # fmt: skip
    assert seen[0] == stop_at + 1
    assert_same(res, ref)


def test_bad_inputs():
    ims, tpl, disp = problem()
    bad = PolarTemplates(tpl.data.clone(), tpl.grid, tpl.euler, tpl.weights)
    bad.data[2, 3, 4] = float("nan")
    with pytest.raises(InputError, match="templates contain NaN"):
        likelihood_search(ims, bad, disp)
    other = PolarGrid.create(16, 2.5, n_shells=10, n_inplanes=16)
    with pytest.raises(InputError, match="different polar grids"):
        likelihood_search(ims, PolarTemplates(tpl.data, other, tpl.euler, tpl.weights), disp)


def test_file_workflow_equals_one_shot_workflow(tmp_path):
    from corrscan.distributed.likelihood import run_likelihood_full_cross_correlation as full_dist
    from corrscan.distributed.likelihood import run_likelihood_optimal_pose as run_dist
    from corrscan.likelihood.workflow import (
        configure_likelihood_files,
        run_likelihood_full_cross_correlation,
        run_likelihood_optimal_pose,
    )

    ims, tpl, _ = problem(m=6)
    (tmp_path / "tpl").mkdir()
    (tmp_path / "parts" / "fft").mkdir(parents=True)
    tpl.save(tmp_path / "tpl" / "templates_fourier_x.pt")
    for k, sl in enumerate((slice(0, 4), slice(4, 6))):
        ims.subset(sl).save(tmp_path / "parts" / "fft" / f"particles_fourier_stack_{k:06d}.pt")
    kw = {"n_images_per_batch": 2, "n_templates_per_batch": 3, "device": "cpu"}
    files_a = configure_likelihood_files(tmp_path / "tpl", tmp_path / "parts", tmp_path / "a")
    run_likelihood_optimal_pose(files_a, estimate_batch_size=False, **kw)
    run_likelihood_full_cross_correlation(files_a, estimate_batch_size=False, **kw)
    files_b = configure_likelihood_files(tmp_path / "tpl", tmp_path / "parts", tmp_path / "b")
    written = run_dist(files_b, template_chunk=3, **kw)
    assert len(written) == 2
    assert len(full_dist(files_b, template_chunk=3, **kw)) == 2
    a_files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.pt"))
    b_files = sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*.pt"))
    assert a_files == b_files and len(a_files) > 10
    for rel in a_files:
        ta = torch.load(tmp_path / "a" / rel, weights_only=True)
        tb = torch.load(tmp_path / "b" / rel, weights_only=True)
        if isinstance(ta, dict):  # the full (M, S, D, W) tensor file
            assert ta.keys() == tb.keys()
            assert all(torch.equal(ta[k], tb[k]) for k in ta), rel
        else:
            assert torch.equal(ta, tb), rel
    assert not list((tmp_path / "b").rglob("*checkpoint*"))
    # a rerun with skip_exist does nothing
    assert run_dist(files_b, skip_exist=True, **kw) == []

"""The cross-correlation / likelihood kernel against closed forms and brute force."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.special import j1

from corrscan.errors import InputError
from corrscan.likelihood.ctf import CtfParams
from corrscan.likelihood.grid import PolarGrid, displacement_grid
from corrscan.likelihood.kernel import (
    log_likelihood_from_inner_products,
    pose_inner_products,
    search,
)
from corrscan.likelihood.stacks import PolarImages, PolarTemplates, images_from_real_space
from corrscan.likelihood.transform import box_mask_polar
from tests.conftest import requires_cuda


def _disc_integral(v: np.ndarray, r_max: float) -> np.ndarray:
    """∫_{|k|<R} exp(2πi k·v) d²k = R J1(2πR|v|)/|v| (πR² at v = 0)."""
    rho = np.linalg.norm(v, axis=-1)
    safe = np.where(rho > 0, rho, 1.0)
    return np.where(rho > 0, r_max * j1(2 * np.pi * r_max * safe) / safe, np.pi * r_max**2)


def _rz(deg: np.ndarray) -> np.ndarray:
    a = np.deg2rad(deg)
    return np.stack(
        [np.stack([np.cos(a), -np.sin(a)], -1), np.stack([np.sin(a), np.cos(a)], -1)], -2
    )


@pytest.mark.parametrize("precision", ["double", "single"])
def test_plane_wave_templates_with_planar_ctfs_match_bessel_closed_form(precision):
    """Point-source images and templates (plane waves in Fourier space), CTF = cos(2π k·c):
    every CC entry is a sum of disc integrals of plane waves (Bessel J1)."""
    g = PolarGrid.create(32, 1.0)
    kx, ky = g.points()
    k = np.stack([kx, ky], -1)  # (N, W, 2)
    rng = np.random.default_rng(5)
    u = rng.uniform(-3, 3, (2, 2, 2))  # 2 images x 2 point sources (pixels)
    v = rng.uniform(-3, 3, (3, 1, 2))  # 3 templates x 1 point source
    c = rng.uniform(-2, 2, (2, 2))  # planar CTF vector per image
    img = np.exp(-2j * np.pi * np.einsum("nwj,maj->manw", k, u)).sum(1)
    tpl = np.exp(-2j * np.pi * np.einsum("nwj,saj->sanw", k, v)).sum(1)
    ctf = np.cos(2 * np.pi * np.einsum("nwj,mj->mnw", k, c))
    cdt = torch.complex128 if precision == "double" else torch.complex64
    ims = PolarImages(torch.from_numpy(img).to(cdt), g, torch.from_numpy(ctf), torch.ones(2))
    tps = PolarTemplates(torch.from_numpy(tpl).to(cdt), g, np.zeros((3, 3)), np.ones(3))
    disp = displacement_grid(2.0, 3, 3)  # pixel_size 1
    res = search(ims, tps, disp, level="full", device="cpu", precision=precision)
    r_max = g.radius_max
    psi = np.rad2deg(g.angles)  # (W,)
    rot_v = np.einsum("wij,sj->swi", _rz(-psi), v[:, 0])  # Rz(-ψ) v, (S, W, 2)
    # X = Σ_{a,±} ½ F(u_a ± c - d - Rz(-ψ) v)
    vec = (
        u[:, None, None, None, :, None, :]
        + np.array([1.0, -1.0])[None, None, None, None, None, :, None]
        * c[:, None, None, None, None, None, :]
        - disp[None, None, :, None, None, None, :]
        - rot_v[None, :, None, :, None, None, :]
    )  # (M, S, D, W, A, 2, 2)
    x = 0.5 * _disc_integral(vec, r_max).sum(axis=(-1, -2))
    ixx = 0.5 * (np.pi * r_max**2 + _disc_integral(2 * c, r_max))  # |T|^2 = 1 (single source)
    du = u[:, :, None, :] - u[:, None, :, :]
    iyy = _disc_integral(du, r_max).sum(axis=(1, 2))
    cc = x / np.sqrt(ixx * iyy)[:, None, None, None]
    tol = 1e-9 if precision == "double" else 2e-5
    np.testing.assert_allclose(res.cross_correlation.numpy(), cc, atol=tol, rtol=0)


def _random_problem(m=3, s=4, n=16, precision="double", seed=0):
    gen = torch.Generator().manual_seed(seed)
    dt = torch.float64 if precision == "double" else torch.float32
    g = PolarGrid.create(n, 2.0, n_shells=12, n_inplanes=16)
    ctf = CtfParams(
        np.linspace(8000, 12000, m), np.linspace(7000, 12500, m),
        astigmatism_angle=np.linspace(10, 100, m), amplitude_contrast=0.1,
    )  # fmt: skip
    ims = images_from_real_space(
        torch.randn(m, n, n, generator=gen, dtype=dt), g, ctf, precision=precision
    )
    tp = images_from_real_space(
        torch.randn(s, n, n, generator=gen, dtype=dt), g, precision=precision
    )
    return ims, PolarTemplates(tp.data, g, np.zeros((s, 3)), np.arange(1, s + 1.0))


def _brute_force(ims, tpl, disp):
    m, s, d, w = len(ims), len(tpl), len(disp), ims.grid.n_inplanes
    mm, ss, dd, ww = (
        a.ravel() for a in np.meshgrid(*(np.arange(x) for x in (m, s, d, w)), indexing="ij")
    )
    big = ims.subset(mm)
    ip = pose_inner_products(big, tpl, torch.from_numpy(ss), disp[dd], torch.from_numpy(ww))
    cc = (ip["ixy"] / torch.sqrt(ip["ixx"] * ip["iyy"])).reshape(m, s, d, w)
    n_real = ims.grid.n_pixels**2
    ll = log_likelihood_from_inner_products(
        ip["ixy"], ip["ixx"], ip["isx"], ip["iyy"], ip["isy"], ip["iss"], n_real
    ).reshape(m, s, d, w)
    ll = ll - (n_real - 4) * torch.log(ims.norms.to(torch.float64))[:, None, None, None]
    return cc, ll


def test_every_aggregation_level_matches_brute_force():
    ims, tpl = _random_problem()
    disp = displacement_grid(1.5, 2, 3, pixel_size=2.0)
    cc, ll = _brute_force(ims, tpl, disp)
    m, s, d, w = cc.shape
    full = search(ims, tpl, disp, level="full", likelihood=True, device="cpu", precision="double")
    torch.testing.assert_close(full.cross_correlation, cc, atol=1e-12, rtol=0)
    torch.testing.assert_close(full.log_likelihood_full, ll, atol=1e-9, rtol=1e-12)
    llms = torch.logsumexp(ll.reshape(m, s, -1), -1) - math.log(d * w)
    logw = torch.log(torch.arange(1, s + 1.0, dtype=torch.float64) / (s * (s + 1) / 2))
    ill = torch.logsumexp(llms + logw, -1)
    kw = {
        "likelihood": True,
        "device": "cpu",
        "precision": "double",
        "n_images_per_batch": 2,
        "n_templates_per_batch": 3,
    }
    r = search(ims, tpl, disp, level="displacement", **kw)
    v, i = cc.max(dim=2)
    torch.testing.assert_close(r.cross_correlation, v, atol=1e-12, rtol=0)
    torch.testing.assert_close(r.displacement_x, torch.from_numpy(disp[i.numpy(), 0]))
    r = search(ims, tpl, disp, level="rotation", **kw)
    v, i = cc.max(dim=3)
    torch.testing.assert_close(r.cross_correlation, v, atol=1e-12, rtol=0)
    torch.testing.assert_close(r.inplane_rotation, torch.from_numpy(np.rad2deg(ims.grid.angles))[i])
    r = search(ims, tpl, disp, level="displacement_rotation", **kw)
    v, i = cc.reshape(m, s, -1).max(dim=2)
    torch.testing.assert_close(r.cross_correlation, v, atol=1e-12, rtol=0)
    torch.testing.assert_close(r.displacement_y, torch.from_numpy(disp[(i // w).numpy(), 1]))
    r = search(ims, tpl, disp, level="pose", optimal_likelihood=True, **kw)
    v, i = cc.reshape(m, -1).max(dim=1)
    torch.testing.assert_close(r.cross_correlation, v, atol=1e-12, rtol=0)
    assert torch.equal(r.template, i // (d * w))
    torch.testing.assert_close(r.log_likelihood_ms, llms, atol=1e-9, rtol=1e-12)
    torch.testing.assert_close(r.integrated_log_likelihood, ill, atol=1e-9, rtol=1e-12)
    torch.testing.assert_close(
        r.log_likelihood_optimal, ll.reshape(m, -1)[torch.arange(m), i], atol=1e-9, rtol=1e-12
    )
    pose = r.optimal_pose()
    assert pose.optimal_template_M is r.template


def test_single_precision_and_batching_agree_with_double():
    ims, tpl = _random_problem(m=5, s=7)
    disp = displacement_grid(1.0, 3, 1, pixel_size=2.0)
    ref = search(
        ims,
        tpl,
        disp,
        level="displacement_rotation",
        likelihood=True,
        device="cpu",
        precision="double",
    )
    ims32 = PolarImages(ims.data.to(torch.complex64), ims.grid, ims.ctf, ims.norms)
    tpl32 = PolarTemplates(tpl.data.to(torch.complex64), tpl.grid, tpl.euler, tpl.weights)
    for bi, bt in [(1, 1), (2, 5), (None, None)]:
        r = search(ims32, tpl32, disp, level="displacement_rotation", likelihood=True, device="cpu",
                   n_images_per_batch=bi, n_templates_per_batch=bt)  # fmt: skip
        torch.testing.assert_close(
            r.cross_correlation.double(), ref.cross_correlation, atol=2e-6, rtol=0
        )
        torch.testing.assert_close(r.log_likelihood_ms, ref.log_likelihood_ms, atol=5e-3, rtol=1e-6)


def test_likelihood_formula_equals_least_squares_marginal():
    """log L = -p ln(min_{α,β} ||y - αx - βs||² / 2) - ½ ln det G + ln Γ(p) + (1 - N/2) ln 2π."""
    ims, tpl = _random_problem(m=2, s=2)
    g = ims.grid
    ip = pose_inner_products(
        ims, tpl, torch.tensor([0, 1]), np.array([[2.0, -1.0], [0.0, 0.0]]), torch.tensor([3, 0])
    )
    s = box_mask_polar(g, dtype=torch.complex128)
    # rebuild x explicitly and solve the 2x2 normal equations in the quadrature inner product
    n_real = g.n_pixels**2
    p = n_real / 2 - 2
    for m in range(2):
        gmat = np.array([[ip["ixx"][m], ip["isx"][m]], [ip["isx"][m], ip["iss"]]])
        rhs = np.array([ip["ixy"][m], ip["isy"][m]])
        coef = np.linalg.solve(gmat, rhs)
        qmin = float(ip["iyy"][m]) - rhs @ coef
        want = (
            -p * math.log(qmin / 2)
            - 0.5 * math.log(np.linalg.det(gmat))
            + math.lgamma(p)
            + (1 - n_real / 2) * math.log(2 * math.pi)
        )
        got = log_likelihood_from_inner_products(
            *(ip[k][m] for k in ("ixy", "ixx", "isx", "iyy", "isy")), ip["iss"], n_real
        )
        assert float(got) == pytest.approx(want, abs=1e-8)
    assert s.shape == (g.n_shells, g.n_inplanes)


def test_bad_inputs_are_reported():
    ims, tpl = _random_problem()
    with pytest.raises(InputError, match="level"):
        search(ims, tpl, level="everything", device="cpu")
    other = PolarTemplates(
        tpl.data, PolarGrid.create(16, 1.0, n_shells=12, n_inplanes=16), tpl.euler, tpl.weights
    )
    with pytest.raises(InputError, match="different polar grids"):
        search(ims, other, device="cpu")
    with pytest.raises(InputError, match="displacements"):
        search(ims, tpl, np.zeros((3,)), device="cpu")


@requires_cuda
def test_gpu_matches_cpu():
    ims, tpl = _random_problem(m=6, s=5, precision="single")
    disp = displacement_grid(1.0, 3, 3, pixel_size=2.0)
    a = search(ims, tpl, disp, level="pose", likelihood=True, optimal_likelihood=True, device="cpu")
    b = search(
        ims, tpl, disp, level="pose", likelihood=True, optimal_likelihood=True, device="cuda"
    )
    torch.testing.assert_close(a.cross_correlation, b.cross_correlation, atol=1e-5, rtol=0)
    torch.testing.assert_close(
        a.integrated_log_likelihood, b.integrated_log_likelihood, atol=1e-2, rtol=1e-6
    )

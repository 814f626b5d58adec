"""Tests for corrscan.core.rotations: conventions vs scipy, groups, grids, coverage."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from corrscan.core import rotations as rot
from corrscan.errors import InputError


def _random_angles(rng: np.random.Generator, n: int) -> np.ndarray:
    return np.c_[
        rng.uniform(-180, 180, n),
        np.degrees(np.arccos(rng.uniform(-1, 1, n))),
        rng.uniform(-180, 180, n),
    ]


def _nearest_distance(samples: torch.Tensor, grid: torch.Tensor, sym: torch.Tensor | None = None):
    """Brute-force distance (deg) of each sample to the nearest grid rotation (mod symmetry)."""
    qg = rot.matrix_to_quaternion(grid.to(torch.float64))
    if sym is not None:  # expand the grid by its symmetry images S @ G
        qg = rot.matrix_to_quaternion(
            (sym[:, None] @ grid[None].to(torch.float64)).reshape(-1, 3, 3)
        )
    qs = rot.matrix_to_quaternion(samples.to(torch.float64))
    best = torch.cat([(c @ qg.T).abs().amax(1) for c in qs.split(2048)])
    return 2.0 * torch.rad2deg(torch.acos(best.clamp(max=1.0)))


# ---------------------------------------------------------------- Euler <-> matrix


def test_euler_to_matrix_is_scipy_intrinsic_zyz(rng):
    ang = _random_angles(rng, 50)
    ours = rot.euler_to_matrix(ang)
    ref = Rotation.from_euler("ZYZ", ang, degrees=True).as_matrix()
    np.testing.assert_allclose(ours, ref, atol=1e-12)
    # ... and explicitly Rz(phi) @ Ry(theta) @ Rz(psi) of active rotations
    phi, theta, psi = np.radians(ang[7])

    def rz(a):
        return np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])

    def ry(a):
        return np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])

    np.testing.assert_allclose(ours[7], rz(phi) @ ry(theta) @ rz(psi), atol=1e-12)
    # it is the transpose of RELION's Euler_angles2matrix (src/euler.cpp), written out here
    a, b, g = np.radians(ang.T)
    ca, sa, cb, sb, cg, sg = np.cos(a), np.sin(a), np.cos(b), np.sin(b), np.cos(g), np.sin(g)
    cc, cs, sc, ss = cb * ca, cb * sa, sb * ca, sb * sa
    relion_a = np.stack(
        [
            np.stack([cg * cc - sg * sa, cg * cs + sg * ca, -cg * sb], -1),
            np.stack([-sg * cc - cg * sa, -sg * cs + cg * ca, sg * sb], -1),
            np.stack([sc, ss, cb], -1),
        ],
        -2,
    )
    np.testing.assert_allclose(np.swapaxes(ours, -1, -2), relion_a, atol=1e-12)


def test_euler_projection_direction():
    # R @ e_z is the projection direction (sin t cos p, sin t sin p, cos t)
    p, t = 30.0, 50.0
    r = rot.euler_to_matrix(np.array([p, t, 77.0]))
    pr, tr = np.radians(p), np.radians(t)
    np.testing.assert_allclose(
        r @ [0, 0, 1], [np.sin(tr) * np.cos(pr), np.sin(tr) * np.sin(pr), np.cos(tr)], atol=1e-12
    )


def test_kinds_and_dtypes(rng):
    ang = _random_angles(rng, 3)
    t32 = rot.euler_to_matrix(torch.tensor(ang, dtype=torch.float32))
    assert isinstance(t32, torch.Tensor) and t32.dtype == torch.float32 and t32.shape == (3, 3, 3)
    n64 = rot.euler_to_matrix(ang)
    assert isinstance(n64, np.ndarray) and n64.dtype == np.float64
    with pytest.raises(InputError):
        rot.euler_to_matrix(np.zeros((4, 2)))
    with pytest.raises(InputError):
        rot.matrix_to_euler(np.zeros((4, 3)))


def test_matrix_to_euler_round_trip_and_ranges(rng):
    ang = _random_angles(rng, 200)
    r = rot.euler_to_matrix(ang)
    back = rot.matrix_to_euler(r)
    assert np.all(back[:, 1] >= 0) and np.all(back[:, 1] <= 180)
    assert np.all(back[:, [0, 2]] > -180) and np.all(back[:, [0, 2]] <= 180)
    np.testing.assert_allclose(back, ang, atol=1e-9)  # generic angles are unique
    np.testing.assert_allclose(rot.euler_to_matrix(back), r, atol=1e-12)
    # against scipy's inverse
    ref = Rotation.from_matrix(r).as_euler("ZYZ", degrees=True)
    np.testing.assert_allclose(back, ref, atol=1e-9)


@pytest.mark.parametrize("theta", [0.0, 180.0, 1e-9, 180.0 - 1e-9])
def test_gimbal_lock(theta):
    ang = np.array([[40.0, theta, 25.0], [-170.0, theta, 100.0], [180.0, theta, -180.0]])
    r = rot.euler_to_matrix(ang)
    back = rot.matrix_to_euler(r)
    np.testing.assert_allclose(rot.euler_to_matrix(back), r, atol=1e-9)
    np.testing.assert_allclose(back[:, 2], 0.0, atol=1e-9)  # psi = 0 convention
    np.testing.assert_allclose(back[:, 1], round(theta), atol=1e-6)
    # float32 near the lock
    r32 = torch.tensor(r, dtype=torch.float32)
    b32 = rot.matrix_to_euler(r32)
    assert torch.allclose(rot.euler_to_matrix(b32), r32, atol=1e-5)


def test_angle_wrapping_minus_180():
    back = rot.matrix_to_euler(rot.euler_to_matrix(np.array([-180.0, 90.0, -180.0])))
    np.testing.assert_allclose(back, [180.0, 90.0, 180.0], atol=1e-9)


def test_quaternion_round_trip(rng):
    r = torch.as_tensor(Rotation.random(100, random_state=3).as_matrix())
    q = rot.matrix_to_quaternion(r)
    ref = Rotation.from_matrix(r.numpy()).as_quat()  # (x, y, z, w)
    ref = np.c_[ref[:, 3], ref[:, :3]]
    ref *= np.sign(ref[:, :1])
    np.testing.assert_allclose(q.numpy(), ref, atol=1e-12)
    torch.testing.assert_close(rot.quaternion_to_matrix(q), r, atol=1e-12, rtol=0)


def test_axis_angle(rng):
    v = rng.normal(size=(20, 3))
    ours = rot.axis_angle_to_matrix(torch.as_tensor(v))
    np.testing.assert_allclose(ours.numpy(), Rotation.from_rotvec(v).as_matrix(), atol=1e-12)


# ---------------------------------------------------------------- distances


def test_angular_distance(rng):
    r1 = Rotation.random(30, random_state=1)
    r2 = Rotation.random(30, random_state=2)
    ref = np.degrees((r1.inv() * r2).magnitude())
    d = rot.angular_distance(r1.as_matrix(), r2.as_matrix())
    np.testing.assert_allclose(d, ref, atol=1e-9)
    # exactly 180 and 0
    z180 = rot.euler_to_matrix(np.array([180.0, 0.0, 0.0]))
    assert abs(float(rot.angular_distance(np.eye(3), z180)) - 180.0) < 1e-9
    assert float(rot.angular_distance(z180, z180)) < 1e-6


def test_angular_distance_sym():
    # a Cn symmetry rotation is at distance 0 modulo Cn, nonzero without symmetry
    s = rot.euler_to_matrix(np.array([90.0, 0.0, 0.0]))
    r = rot.euler_to_matrix(np.array([10.0, 40.0, 70.0]))
    assert float(rot.angular_distance(r, s @ r)) > 80
    assert float(rot.angular_distance_sym(r, s @ r, "C4")) < 1e-6
    assert float(rot.angular_distance_sym(r, s @ r, "C3")) > 1.0


# ---------------------------------------------------------------- symmetry groups


@pytest.mark.parametrize(
    ("sym", "order"),
    [
        ("C1", 1),
        ("C2", 2),
        ("C7", 7),
        ("D1", 2),
        ("D2", 4),
        ("D6", 12),
        ("T", 12),
        ("O", 24),
        ("I", 60),
    ],
)
def test_symmetry_groups_order_and_closure(sym, order):
    g = rot.symmetry_matrices(sym, dtype=torch.float64)
    assert g.shape == (order, 3, 3) == (rot.symmetry_order(sym), 3, 3)
    torch.testing.assert_close(g[0], torch.eye(3, dtype=torch.float64))
    # orthonormal, det +1
    eye = torch.eye(3, dtype=torch.float64).expand(order, 3, 3)
    torch.testing.assert_close(g @ g.transpose(-1, -2), eye, atol=1e-12, rtol=0)
    torch.testing.assert_close(torch.linalg.det(g), torch.ones(order, dtype=torch.float64))
    # closure: every product is an element, elements distinct
    prod = (g[:, None] @ g[None]).reshape(-1, 1, 9)
    dist = (prod - g.reshape(1, -1, 9)).abs().amax(-1)
    assert bool((dist.amin(-1) < 1e-9).all())
    pair = (g.reshape(-1, 1, 9) - g.reshape(1, -1, 9)).abs().amax(-1) + 10 * torch.eye(order)
    assert float(pair.min()) > 1e-3


def test_symmetry_axes_settings():
    ez = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
    ex = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
    # Cn fixes z; Dn contains the 2-fold about x
    c5 = rot.symmetry_matrices("C5", dtype=torch.float64)
    torch.testing.assert_close(c5 @ ez, ez.expand(5, 3))
    d3 = rot.symmetry_matrices("D3", dtype=torch.float64)
    rx180 = torch.diag(torch.tensor([1.0, -1.0, -1.0], dtype=torch.float64))
    assert float((d3 - rx180).abs().amax((-1, -2)).min()) < 1e-12
    # I (Crowther I2): 5-fold about (0, 1, golden), 2-folds along x, y, z
    ico = rot.symmetry_matrices("I", dtype=torch.float64)
    golden = (1 + 5**0.5) / 2
    v = torch.tensor([0.0, 1.0, golden], dtype=torch.float64)
    fixed = ((ico @ v) - v).norm(dim=-1) < 1e-9
    assert int(fixed.sum()) == 5
    assert int(((ico @ ex) - ex).norm(dim=-1).lt(1e-9).sum()) == 2


def test_bad_symmetry():
    for bad in ["X3", "C0", "Dx", "", "I5"]:
        with pytest.raises(InputError):
            rot.symmetry_matrices(bad)


# ---------------------------------------------------------------- Euler grids (Leopard-EM)


def test_so3_grid_matches_torch_so3_and_leopard_count():
    import torch_so3

    g = rot.so3_grid(psi_step=10.0, theta_step=10.0)
    ref = torch_so3.get_uniform_euler_angles(psi_step=10.0, theta_step=10.0)
    torch.testing.assert_close(g, ref)
    # Leopard-EM's documented default search size
    full = rot.so3_grid(psi_step=1.5, theta_step=2.5)
    assert full.shape == (1_584_480, 3)


def test_so3_grid_symmetry_and_ranges():
    c1 = rot.so3_grid(psi_step=10, theta_step=10)
    c4 = rot.so3_grid(psi_step=10, theta_step=10, symmetry="C4")
    assert c4[:, 0].max() < 90.0 and c4.shape[0] < c1.shape[0] / 3
    d2 = rot.so3_grid(psi_step=10, theta_step=10, symmetry="D2")
    assert d2[:, 1].max() <= 90.0 + 1e-9
    sub = rot.so3_grid(psi_step=5, theta_step=5, theta_range=(20, 40), psi_range=(0, 30))
    assert sub[:, 1].min() >= 20 and sub[:, 1].max() <= 40 + 1e-9
    assert sub[:, 2].max() < 30
    assert torch.unique(sub[:, 2]).numel() == 6
    with pytest.raises(InputError):
        rot.so3_grid(psi_step=0, theta_step=1)


# ---------------------------------------------------------------- near-uniform grids


def test_healpix_directions_match_healpy():
    hp = pytest.importorskip("healpy")
    for nside in (1, 2, 3, 5, 8):
        th, ph = rot.healpix_directions(nside)
        t2, p2 = hp.pix2ang(nside, np.arange(12 * nside * nside))
        np.testing.assert_allclose(th, t2, atol=1e-12)
        np.testing.assert_allclose(ph, p2, atol=1e-12)


@pytest.mark.parametrize("step", [45.0, 25.0, 15.0])
def test_rotation_grid_count_and_coverage_c1(step):
    g = rot.rotation_grid(step, dtype=torch.float64)
    info = rot.rotation_grid_info(step)
    assert g.shape == (info["n_directions"] * info["n_inplane"], 3, 3)
    assert info["n_directions"] == 12 * info["nside"] ** 2
    assert rot.n_rotations_for_step(step) == g.shape[0] == info["n_rotations"]
    torch.testing.assert_close(
        g @ g.transpose(-1, -2), torch.eye(3, dtype=torch.float64).expand_as(g), atol=1e-12, rtol=0
    )
    samples = torch.as_tensor(Rotation.random(6000, random_state=5).as_matrix())
    d = _nearest_distance(samples, g)
    assert float(d.max()) <= info["covering_deg"] <= step
    # and not wastefully dense: the grid's covering radius is more than 3/4 of the bound
    assert float(d.max()) > 0.75 * info["covering_deg"]


def test_rotation_grid_counts_shrink_with_step():
    counts = [rot.n_rotations_for_step(s) for s in (40, 30, 20, 10)]
    assert counts == sorted(counts) and counts[-1] > 10 * counts[0]


@pytest.mark.parametrize("sym", ["C4", "D2", "D5", "T", "O", "I"])
def test_rotation_grid_symmetry_coverage(sym):
    step = 25.0
    full = rot.n_rotations_for_step(step)
    g = rot.rotation_grid(step, symmetry=sym, dtype=torch.float64)
    k = rot.symmetry_order(sym)
    # about 1/k of the C1 grid (exact for Cn, a widened asymmetric unit otherwise)
    if sym.startswith("C"):  # exact: 1/n of the in-plane circle, rounded up
        info = rot.rotation_grid_info(step, symmetry=sym)
        assert g.shape[0] == info["n_directions"] * info["n_inplane"]
        assert g.shape[0] <= math.ceil(full / k / info["n_directions"]) * info["n_directions"]
    else:
        assert full / k * 0.99 <= g.shape[0] <= full / k * 3.0
    sym_m = rot.symmetry_matrices(sym, dtype=torch.float64)
    samples = torch.as_tensor(Rotation.random(4000, random_state=6).as_matrix())
    d = _nearest_distance(samples, g, sym_m)
    assert float(d.max()) <= step


def test_rotation_grid_info_and_errors():
    info = rot.rotation_grid_info(30.0, symmetry="C2")
    assert info["n_rotations"] == rot.n_rotations_for_step(30.0, "C2")
    assert info["covering_deg"] <= 30.0
    with pytest.raises(InputError):
        rot.rotation_grid(0.0)


# ---------------------------------------------------------------- super-Fibonacci covering sets


def _spiral_quaternions_float64(n: int) -> np.ndarray:
    """Alexa 2022 super-Fibonacci quaternions ``(w, x, y, z)``, straight from the paper."""
    psi = 1.533751168755204288118041  # real root of psi^4 = psi + 4
    assert abs(psi**4 - psi - 4) < 1e-12
    s = np.arange(n) + 0.5
    r, rr = np.sqrt(s / n), np.sqrt(1 - s / n)
    a, b = 2 * np.pi * s / np.sqrt(2), 2 * np.pi * s / psi
    return np.stack([r * np.sin(a), r * np.cos(a), rr * np.sin(b), rr * np.cos(b)], -1)


def test_super_fibonacci_rotations_are_the_inverse_spiral():
    g = rot.super_fibonacci_rotations(97)
    assert g.shape == (97, 3, 3) and g.dtype == torch.float64
    q = _spiral_quaternions_float64(97)
    spiral = Rotation.from_quat(q[:, [1, 2, 3, 0]]).as_matrix()  # scipy: (x, y, z, w)
    np.testing.assert_allclose(g.numpy(), np.swapaxes(spiral, 1, 2), atol=1e-14)
    torch.testing.assert_close(
        g @ g.transpose(-1, -2), torch.eye(3, dtype=torch.float64).expand_as(g), atol=1e-12, rtol=0
    )
    assert rot.super_fibonacci_rotations(5, dtype=torch.float32).dtype == torch.float32
    with pytest.raises(InputError, match="number of rotations"):
        rot.super_fibonacci_rotations(0)


@pytest.mark.parametrize("step", [60.0, 30.0])
def test_covering_rotations_cover_about_the_step(step):
    n = rot.n_covering_rotations(step)
    assert rot.n_covering_rotations(30.0) == 360  # pyTME's count for 30 degrees
    g = rot.rotation_grid(step, method="fibonacci", dtype=torch.float64)
    assert g.shape[0] == n == rot.n_rotations_for_step(step, method="fibonacci")
    torch.testing.assert_close(g, rot.covering_rotations(angular_step=step, dtype=torch.float64))
    torch.testing.assert_close(g, rot.covering_rotations(n_rotations=n, dtype=torch.float64))
    samples = torch.as_tensor(Rotation.random(4000, random_state=8).as_matrix())
    d = _nearest_distance(samples, g)
    assert 0.75 * step <= float(d.max()) <= 1.15 * step  # calibrated, not over-sampled
    # more rotations for a finer step, roughly as step^-3
    assert rot.n_covering_rotations(15.0) == pytest.approx(8 * 360, rel=0.01)


@pytest.mark.parametrize("sym", ["C2", "C4", "D2", "D3"])
def test_covering_rotations_symmetry_window(sym):
    full = rot.covering_rotations(n_rotations=600, dtype=torch.float64)
    red = rot.covering_rotations(n_rotations=600, symmetry=sym, dtype=torch.float64)
    k = rot.symmetry_order(sym)
    assert abs(red.shape[0] - 600 / k) <= 0.15 * 600 / k
    mask = rot.euler_window_mask(full, sym)
    torch.testing.assert_close(red, full[mask], rtol=0, atol=0)
    assert isinstance(rot.euler_window_mask(full.numpy(), sym), np.ndarray)  # same kind out
    # the window is an asymmetric unit: of the |G| images S @ R of any R, exactly one is in
    # it (away from the window's edges, where rounding decides)
    sym_m = rot.symmetry_matrices(sym, dtype=torch.float64)
    probe = torch.as_tensor(Rotation.random(300, random_state=9).as_matrix())
    images = (sym_m[:, None] @ probe[None]).reshape(-1, 3, 3)
    inside = rot.euler_window_mask(images, sym).reshape(k, -1)
    assert (inside.sum(0) == 1).float().mean() > 0.97
    # coverage modulo symmetry: the window edge costs a little (no margin)
    d_red = _nearest_distance(probe, red, sym_m)
    d_full = _nearest_distance(probe, full)
    assert float(d_red.max()) <= 1.3 * float(d_full.max())


def test_covering_rotations_errors():
    with pytest.raises(InputError, match="exactly one"):
        rot.covering_rotations(angular_step=30.0, n_rotations=10)
    with pytest.raises(InputError, match="Cn and Dn"):
        rot.covering_rotations(n_rotations=100, symmetry="T")
    with pytest.raises(InputError, match="method"):
        rot.rotation_grid(30.0, method="karney")
    with pytest.raises(InputError, match="angular_step"):
        rot.n_covering_rotations(0.0)


# ---------------------------------------------------------------- local and cone grids


def test_local_grid_ball(rng):
    center = np.array([30.0, 60.0, -45.0])
    loc = rot.local_grid(center, half_range_deg=3.0, step_deg=1.0)
    np.testing.assert_allclose(loc[0], center, atol=1e-9)
    d = rot.angular_distance(rot.euler_to_matrix(center), rot.euler_to_matrix(loc))
    assert d.max() <= 3.0 + 1e-9
    # lattice of radius 3 steps: 123 points in the ball
    assert loc.shape == (123, 3)
    # batched centres
    c2 = rot.local_grid(np.stack([center, center + 5]), half_range_deg=2.0, step_deg=1.0)
    assert c2.shape[:2] == (2, 33)


def test_local_grid_at_pole_is_uniform():
    # near theta = 0 Euler offsets are degenerate; the ball grid is not
    loc = rot.local_grid(np.zeros(3), half_range_deg=2.0, step_deg=1.0)
    d = rot.angular_distance(np.eye(3), rot.euler_to_matrix(loc))
    assert np.sum(d < 1e-6) == 1  # the centre only once


def test_local_grid_euler_mode():
    loc = rot.local_grid(
        np.array([10.0, 50.0, 20.0]),
        half_range_deg=2.0,
        step_deg=1.0,
        mode="euler",
        psi_half_range_deg=1.0,
        psi_step_deg=0.5,
    )
    assert loc.shape == (5 * 5 * 5, 3)
    np.testing.assert_allclose(loc[0], [10, 50, 20])


def test_cone_grid():
    axis = np.array([1.0, 1.0, 0.0])
    ang = rot.cone_grid(axis, cone_angle=15.0, angular_step=3.0, inplane_step=30.0)
    assert ang.shape[0] % 12 == 0
    r = rot.euler_to_matrix(ang)
    d = r @ torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
    cosang = d @ torch.as_tensor(axis / np.linalg.norm(axis))
    assert float(torch.rad2deg(torch.acos(cosang.clamp(max=1.0))).max()) <= 15.0 + 1e-6
    torch.testing.assert_close(d[0], torch.as_tensor(axis / np.linalg.norm(axis)))
    # directions cover the cap: random directions in the cap lie within ~step of one
    rng = np.random.default_rng(0)
    v = rng.normal(size=(3000, 3))
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    a = axis / np.linalg.norm(axis)
    v = v[np.degrees(np.arccos(np.clip(v @ a, -1, 1))) < 15.0]
    dirs = d[::12].numpy()
    nearest = np.degrees(np.arccos(np.clip(v @ dirs.T, -1, 1))).min(1)
    assert nearest.max() < 3.0


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: rot.local_grid(np.zeros(2), half_range_deg=1, step_deg=1), "center"),
        (lambda: rot.local_grid(np.zeros(3), half_range_deg=1, step_deg=0), "step_deg"),
        (lambda: rot.local_grid(np.zeros(3), half_range_deg=1, step_deg=1, mode="x"), "mode"),
        (lambda: rot.cone_grid((0, 0, 0)), "axis"),
        (lambda: rot.rotation_grid(0.1), "local_grid"),
        (lambda: rot.so3_grid(psi_step=10, theta_step=10, base_grid="spiral"), "base_grid"),
    ],
)
def test_bad_inputs_name_the_argument(call, match):
    with pytest.raises(InputError, match=match):
        call()

"""Rotations: ZYZ Euler angles, rotation matrices, SO(3) grids, symmetry groups.

Convention (one matrix convention for the whole package)
--------------------------------------------------------
Euler angles are ``(phi, theta, psi)`` in degrees, ZYZ, RELION/cisTEM names
``(rot, tilt, psi)``. :func:`euler_to_matrix` returns

``R = Rz(phi) @ Ry(theta) @ Rz(psi)``

with the *active*, right-handed elementary rotations acting on column vectors ``(x, y, z)``::

    Rz(a) = [[cos a, -sin a, 0], [sin a, cos a, 0], [0, 0, 1]]
    Ry(a) = [[cos a, 0, sin a], [0, 1, 0], [-sin a, 0, cos a]]

This is exactly ``scipy.spatial.transform.Rotation.from_euler("ZYZ", [phi, theta, psi],
degrees=True).as_matrix()`` (upper case = intrinsic), ``roma.euler_to_rotmat("ZYZ", ...)`` as
used by Leopard-EM, and pyTME's Euler I/O. It is the **transpose** of RELION's
``Euler_angles2matrix`` matrix ``A = Rz'(psi) Ry'(theta) Rz'(phi)``, whose elementary matrices
``Rz'(a) = Rz(a)^T`` are passive (frame) rotations; so the sentence "R = Rz(psi) Ry(theta)
Rz(phi)" in RELION's documentation describes ``A = R^T``.

Every corrscan function that takes rotation matrices uses this ``R`` the same way:

* the rotated map is ``V_R(r) = V(R @ r)`` with ``r = (x, y, z)`` relative to the centre voxel
  (index ``N // 2`` per axis): the map is *sampled at rotated coordinates*. ``V_R`` is the
  reference actively rotated by ``A = R^T``, i.e. the particle as it sits in the sample when
  RELION/cisTEM/Leopard-EM report the angles ``(phi, theta, psi)``
  (:func:`corrscan.core.projection.rotate_volume`).
* the projection at ``(phi, theta, psi)`` is ``P(y, x) = sum_z V(R @ (x, y, z))``, the
  projection of ``V_R`` along z (:func:`corrscan.core.projection.project`): Leopard-EM's and
  RELION's projection. ``R @ (0, 0, 1) = (sin t cos p, sin t sin p, cos t)`` (t = theta,
  p = phi) is the projection direction in the map's frame.
* a map with point-group symmetry ``S`` (``V(S r) = V(r)``) gives the same ``V_R`` for ``R``
  and ``S @ R``: symmetry acts on the left of ``R``. For ``Cn`` (axis z) this shifts ``phi``
  by ``360/n`` (the RELION / torch-so3 reduction of the ``phi`` range).

To use a matrix ``M`` that *actively* rotates the template (pyTME's ``rotate_array``
convention, ``V'(r) = V(M^T r)``), pass ``R = M.T``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from corrscan.core.arrays import unwrap
from corrscan.errors import InputError

__all__ = [
    "angular_distance",
    "angular_distance_sym",
    "axis_angle_to_matrix",
    "cone_grid",
    "covering_rotations",
    "euler_to_matrix",
    "euler_window_mask",
    "healpix_directions",
    "local_grid",
    "matrix_to_euler",
    "matrix_to_quaternion",
    "n_covering_rotations",
    "n_rotations_for_step",
    "parse_symmetry",
    "quaternion_to_matrix",
    "rotation_grid",
    "rotation_grid_info",
    "so3_grid",
    "super_fibonacci_rotations",
    "symmetry_matrices",
    "symmetry_order",
]


# --------------------------------------------------------------------------------------------
# Euler angles <-> matrices
# --------------------------------------------------------------------------------------------


def _rz(a: torch.Tensor) -> torch.Tensor:
    c, s = torch.cos(a), torch.sin(a)
    o, z = torch.ones_like(a), torch.zeros_like(a)
    return torch.stack([c, -s, z, s, c, z, z, z, o], dim=-1).reshape(*a.shape, 3, 3)


def _ry(a: torch.Tensor) -> torch.Tensor:
    c, s = torch.cos(a), torch.sin(a)
    o, z = torch.ones_like(a), torch.zeros_like(a)
    return torch.stack([c, z, s, z, o, z, -s, z, c], dim=-1).reshape(*a.shape, 3, 3)


def _euler_to_matrix_t(angles: torch.Tensor) -> torch.Tensor:
    """Tensor kernel of :func:`euler_to_matrix` (computed in float64, cast back)."""
    a = torch.deg2rad(angles.to(torch.float64))
    r = _rz(a[..., 0]) @ _ry(a[..., 1]) @ _rz(a[..., 2])
    return r.to(angles.dtype)


def euler_to_matrix(angles: Any) -> Any:
    """Rotation matrices from ZYZ Euler angles.

    Parameters
    ----------
    angles
        `(..., 3)` ``(phi, theta, psi)`` in degrees (RELION ``rot, tilt, psi``).

    Returns
    -------
    matrices
        `(..., 3, 3)` ``R = Rz(phi) @ Ry(theta) @ Rz(psi)`` (active right-handed elementary
        rotations on column vectors ``(x, y, z)``; identical to scipy
        ``Rotation.from_euler("ZYZ", angles, degrees=True).as_matrix()``; the transpose of
        RELION's ``Euler_angles2matrix``). See the module docstring for what ``R`` means to
        projections and rotated maps. Same array kind as ``angles``; float64 in gives float64
        out, other input gives float32 (computed in float64 internally).
    """
    t, restore = unwrap(angles, name="angles")
    if t.dtype not in (torch.float32, torch.float64):
        t = t.to(torch.float32)
    if t.ndim < 1 or t.shape[-1] != 3:
        raise InputError(f"angles must have shape (..., 3) [phi, theta, psi], got {tuple(t.shape)}")
    return restore(_euler_to_matrix_t(t))


def _matrix_to_euler_t(r: torch.Tensor) -> torch.Tensor:
    rd = r.to(torch.float64)
    r02, r12, r22 = rd[..., 0, 2], rd[..., 1, 2], rd[..., 2, 2]
    r20, r21 = rd[..., 2, 0], rd[..., 2, 1]
    sin_t = torch.sqrt(r02 * r02 + r12 * r12)
    theta = torch.atan2(sin_t, r22)
    phi = torch.atan2(r12, r02)
    psi = torch.atan2(r21, -r20)
    # Gimbal lock (theta = 0 or 180): only phi +- psi is defined; set psi = 0 (as RELION/scipy).
    eps = 1e-6 if r.dtype == torch.float64 else 1e-4
    lock = sin_t < eps
    # theta ~ 0: R ~ Rz(phi + psi); theta ~ 180: R ~ Rz(phi - psi) @ diag(-1, 1, -1).
    phi_lock0 = torch.atan2(rd[..., 1, 0], rd[..., 0, 0])
    phi_lock180 = torch.atan2(-rd[..., 0, 1], rd[..., 1, 1])
    phi_lock = torch.where(r22 > 0, phi_lock0, phi_lock180)
    phi = torch.where(lock, phi_lock, phi)
    psi = torch.where(lock, torch.zeros_like(psi), psi)
    theta_lock = torch.where(r22 > 0, torch.zeros_like(theta), torch.full_like(theta, math.pi))
    theta = torch.where(lock, theta_lock, theta)
    out = torch.rad2deg(torch.stack([phi, theta, psi], dim=-1))
    # phi, psi in (-180, 180]
    out[..., 0] = torch.where(out[..., 0] <= -180.0, out[..., 0] + 360.0, out[..., 0])
    out[..., 2] = torch.where(out[..., 2] <= -180.0, out[..., 2] + 360.0, out[..., 2])
    return out.to(r.dtype)


def matrix_to_euler(matrices: Any) -> Any:
    """ZYZ Euler angles of rotation matrices (inverse of :func:`euler_to_matrix`).

    Parameters
    ----------
    matrices
        `(..., 3, 3)` rotation matrices in the :func:`euler_to_matrix` convention.

    Returns
    -------
    angles
        `(..., 3)` ``(phi, theta, psi)`` degrees with ``theta`` in [0, 180] and ``phi``,
        ``psi`` in (-180, 180]. In gimbal lock (``theta`` = 0 or 180, where only ``phi + psi``
        resp. ``phi - psi`` is defined) ``psi = 0`` and ``phi`` carries the whole in-plane
        angle (RELION's and scipy's choice). ``euler_to_matrix(matrix_to_euler(R)) == R``.
    """
    t, restore = unwrap(matrices, name="matrices")
    if t.dtype not in (torch.float32, torch.float64):
        t = t.to(torch.float32)
    if t.ndim < 2 or tuple(t.shape[-2:]) != (3, 3):
        raise InputError(f"matrices must have shape (..., 3, 3), got {tuple(t.shape)}")
    return restore(_matrix_to_euler_t(t))


def axis_angle_to_matrix(rotvec: torch.Tensor) -> torch.Tensor:
    """Active rotation matrices from rotation vectors (axis * angle in **radians**), `(..., 3)`.

    Rodrigues' formula; ``rotvec`` is ``(x, y, z)``. Tensor in, tensor out.
    """
    theta = torch.linalg.norm(rotvec, dim=-1, keepdim=True)
    small = theta < 1e-12
    axis = rotvec / torch.where(small, torch.ones_like(theta), theta)
    x, y, z = axis.unbind(-1)
    zero = torch.zeros_like(x)
    k = torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], dim=-1).reshape(*x.shape, 3, 3)
    th = theta[..., None]
    eye = torch.eye(3, dtype=rotvec.dtype, device=rotvec.device).expand(k.shape)
    return eye + torch.sin(th) * k + (1.0 - torch.cos(th)) * (k @ k)


def matrix_to_quaternion(r: torch.Tensor) -> torch.Tensor:
    """Unit quaternions ``(w, x, y, z)`` with ``w >= 0`` of rotation matrices `(..., 3, 3)`.

    Tensor in, tensor out. Numerically stable (largest-diagonal branch).
    """
    m = r.to(torch.float64)
    m00, m11, m22 = m[..., 0, 0], m[..., 1, 1], m[..., 2, 2]
    # four candidate |components|
    q_abs = torch.sqrt(
        torch.clamp(
            torch.stack(
                [
                    1.0 + m00 + m11 + m22,
                    1.0 + m00 - m11 - m22,
                    1.0 - m00 + m11 - m22,
                    1.0 - m00 - m11 + m22,
                ],
                dim=-1,
            ),
            min=0.0,
        )
    )
    # candidate quaternions, each computed from one large component
    m21, m12 = m[..., 2, 1], m[..., 1, 2]
    m02, m20 = m[..., 0, 2], m[..., 2, 0]
    m10, m01 = m[..., 1, 0], m[..., 0, 1]
    cands = torch.stack(
        [
            torch.stack([q_abs[..., 0] ** 2, m21 - m12, m02 - m20, m10 - m01], dim=-1),
            torch.stack([m21 - m12, q_abs[..., 1] ** 2, m10 + m01, m02 + m20], dim=-1),
            torch.stack([m02 - m20, m10 + m01, q_abs[..., 2] ** 2, m12 + m21], dim=-1),
            torch.stack([m10 - m01, m20 + m02, m21 + m12, q_abs[..., 3] ** 2], dim=-1),
        ],
        dim=-2,
    )
    denom = 2.0 * torch.clamp(q_abs, min=1e-12)[..., None]
    cands = cands / denom
    best = torch.argmax(q_abs, dim=-1)
    q = torch.take_along_dim(cands, best[..., None, None].expand(*best.shape, 1, 4), dim=-2)[
        ..., 0, :
    ]
    q = q / torch.linalg.norm(q, dim=-1, keepdim=True)
    q = torch.where(q[..., :1] < 0, -q, q)
    return q.to(r.dtype)


def quaternion_to_matrix(q: torch.Tensor) -> torch.Tensor:
    """Active rotation matrices `(..., 3, 3)` of quaternions ``(w, x, y, z)`` `(..., 4)`."""
    q = q / torch.linalg.norm(q, dim=-1, keepdim=True)
    w, x, y, z = q.unbind(-1)
    return torch.stack(
        [
            1 - 2 * (y * y + z * z),
            2 * (x * y - z * w),
            2 * (x * z + y * w),
            2 * (x * y + z * w),
            1 - 2 * (x * x + z * z),
            2 * (y * z - x * w),
            2 * (x * z - y * w),
            2 * (y * z + x * w),
            1 - 2 * (x * x + y * y),
        ],
        dim=-1,
    ).reshape(*q.shape[:-1], 3, 3)


# --------------------------------------------------------------------------------------------
# Distances
# --------------------------------------------------------------------------------------------


def _angle_of(rel: torch.Tensor) -> torch.Tensor:
    """Rotation angle (degrees) of rotation matrices `(..., 3, 3)`, stable near 0 and 180."""
    tr = rel[..., 0, 0] + rel[..., 1, 1] + rel[..., 2, 2]
    cos = (tr - 1.0) / 2.0
    skew = torch.stack(
        [
            rel[..., 2, 1] - rel[..., 1, 2],
            rel[..., 0, 2] - rel[..., 2, 0],
            rel[..., 1, 0] - rel[..., 0, 1],
        ],
        dim=-1,
    )
    sin = torch.linalg.norm(skew, dim=-1) / 2.0
    return torch.rad2deg(torch.atan2(sin, cos))


def angular_distance(r1: Any, r2: Any) -> Any:
    """Geodesic distance between rotations, in degrees.

    Parameters
    ----------
    r1, r2
        `(..., 3, 3)` rotation matrices (broadcast against each other).

    Returns
    -------
    angle
        `(...)` the rotation angle of ``r1^T @ r2`` in [0, 180] degrees (bi-invariant: the
        same for left and right composition with any rotation).
    """
    t1, restore = unwrap(r1, name="r1")
    t2, _ = unwrap(r2, name="r2", device=t1.device)
    dt = torch.promote_types(t1.dtype, t2.dtype)
    rel = t1.to(dt).transpose(-1, -2) @ t2.to(dt)
    return restore(_angle_of(rel))


def angular_distance_sym(r1: Any, r2: Any, symmetry: str = "C1") -> Any:
    """Geodesic distance modulo a point group, in degrees.

    ``min_S angular_distance(r1, S @ r2)`` over the symmetry operators ``S`` of
    :func:`symmetry_matrices` (symmetry acts on the left of ``R`` in corrscan's convention,
    see the module docstring).

    Parameters
    ----------
    r1, r2
        `(..., 3, 3)` rotation matrices (broadcast).
    symmetry
        ``"C1"``, ``"Cn"``, ``"Dn"``, ``"T"``, ``"O"`` or ``"I"``.

    Returns
    -------
    angle
        `(...)` degrees.
    """
    t1, restore = unwrap(r1, name="r1")
    t2, _ = unwrap(r2, name="r2", device=t1.device)
    dt = torch.promote_types(t1.dtype, t2.dtype)
    sym = symmetry_matrices(symmetry, dtype=dt, device=t1.device)  # (k, 3, 3)
    s_r2 = sym @ t2.to(dt)[..., None, :, :]  # (..., k, 3, 3)
    rel = t1.to(dt)[..., None, :, :].transpose(-1, -2) @ s_r2
    return restore(_angle_of(rel).amin(dim=-1))


# --------------------------------------------------------------------------------------------
# Symmetry groups
# --------------------------------------------------------------------------------------------


def parse_symmetry(symmetry: str) -> tuple[str, int]:
    """``"C4" -> ("C", 4)``, ``"D7" -> ("D", 7)``, ``"T"/"O"/"I" -> (letter, 1)``.

    Case-insensitive; ``"I2"`` is accepted as ``"I"``. Raises :class:`InputError` otherwise.
    """
    if not isinstance(symmetry, str) or not symmetry.strip():
        raise InputError(
            f"symmetry must be a string like 'C1', 'C4', 'D2', 'T', 'O', 'I': {symmetry!r}"
        )
    s = symmetry.strip().upper()
    letter, rest = s[0], s[1:]
    if letter in ("C", "D"):
        if not rest.isdigit() or int(rest) < 1:
            raise InputError(
                f"symmetry {symmetry!r}: expected {letter}n with n >= 1, e.g. {letter}2"
            )
        return letter, int(rest)
    if letter in ("T", "O") and rest == "":
        return letter, 1
    if letter == "I" and rest in ("", "2"):
        return "I", 1
    raise InputError(
        f"unknown symmetry {symmetry!r}: use Cn, Dn (n >= 1), T, O or I (Crowther I2 setting)"
    )


def symmetry_order(symmetry: str) -> int:
    """Number of operators of a point group (``C4`` -> 4, ``D4`` -> 8, T 12, O 24, I 60)."""
    letter, n = parse_symmetry(symmetry)
    return {"C": n, "D": 2 * n, "T": 12, "O": 24, "I": 60}[letter]


def _axis_rotation(axis: tuple[float, float, float], degrees: float) -> torch.Tensor:
    v = torch.tensor(axis, dtype=torch.float64)
    v = v / torch.linalg.norm(v)
    return axis_angle_to_matrix(v * math.radians(degrees))


def _close_group(generators: list[torch.Tensor], order: int) -> torch.Tensor:
    """All products of the generators (float64), deduplicated; loops over group size only."""
    group = torch.stack([torch.eye(3, dtype=torch.float64), *generators])
    for _ in range(64):
        prod = (group[:, None] @ group[None, :]).reshape(-1, 3, 3)
        key = torch.round(prod.reshape(-1, 9) * 1e6).to(torch.int64)
        _, idx = np.unique(key.numpy(), axis=0, return_index=True)
        new = prod[torch.as_tensor(np.sort(idx))]
        if new.shape[0] == group.shape[0]:
            break
        group = new
    if group.shape[0] != order:  # pragma: no cover - construction error
        raise RuntimeError(
            f"symmetry group closure gave {group.shape[0]} operators, expected {order}"
        )
    # identity first, then by rotation angle
    ang = _angle_of(group)
    return group[torch.argsort(ang, stable=True)]


def symmetry_matrices(
    symmetry: str = "C1",
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Rotation operators of a point group (identity first).

    Settings (RELION's): ``Cn`` n-fold axis along z; ``Dn`` adds a 2-fold axis along x;
    ``T`` 2-folds along x, y, z and a 3-fold along (1, 1, 1); ``O`` 4-folds along x, y, z;
    ``I`` Crowther "I2" setting: 2-folds along x, y, z, a 5-fold along (0, 1, golden ratio)
    (in the y-z plane) and a 3-fold along (1, 1, 1).

    Parameters
    ----------
    symmetry
        ``"Cn"``, ``"Dn"``, ``"T"``, ``"O"`` or ``"I"`` (case-insensitive).
    dtype, device
        Of the returned tensor.

    Returns
    -------
    matrices
        `(k, 3, 3)` active rotation matrices ``S`` with ``V(S r) = V(r)`` for a map of that
        symmetry; ``k`` = n (Cn), 2n (Dn), 12 (T), 24 (O), 60 (I).
    """
    letter, n = parse_symmetry(symmetry)
    if letter == "C":
        gens = [_axis_rotation((0, 0, 1), 360.0 / n)] if n > 1 else []
    elif letter == "D":
        gens = [_axis_rotation((1, 0, 0), 180.0)]
        if n > 1:
            gens.append(_axis_rotation((0, 0, 1), 360.0 / n))
    elif letter == "T":
        gens = [_axis_rotation((0, 0, 1), 180.0), _axis_rotation((1, 1, 1), 120.0)]
    elif letter == "O":
        gens = [_axis_rotation((0, 0, 1), 90.0), _axis_rotation((1, 0, 0), 90.0)]
    else:
        golden = (1.0 + math.sqrt(5.0)) / 2.0
        gens = [
            _axis_rotation((0, 0, 1), 180.0),
            _axis_rotation((1, 1, 1), 120.0),
            _axis_rotation((0, 1, golden), 72.0),
        ]
    group = _close_group(gens, symmetry_order(symmetry))
    return group.to(dtype=dtype, device=device)


# --------------------------------------------------------------------------------------------
# Euler-angle grids (Leopard-EM / torch-so3 compatible)
# --------------------------------------------------------------------------------------------


def so3_grid(
    *,
    psi_step: float = 1.5,
    theta_step: float = 2.5,
    base_grid: str = "uniform",
    symmetry: str | None = "C1",
    phi_range: tuple[float, float] | None = None,
    theta_range: tuple[float, float] | None = None,
    psi_range: tuple[float, float] | None = None,
    phi_step: float | None = None,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Euler-angle grid of SO(3) as used by Leopard-EM's 2D template matching (torch-so3).

    Projection directions ``(phi, theta)`` on a ``"uniform"`` (Hopf-like: theta rings spaced
    ``theta_step``, phi spacing ``theta_step / sin(theta)`` rounded to divide the range, phi = 0
    only at the pole), ``"healpix"`` or ``"cartesian"`` (plain phi x theta, needs
    ``phi_step``) base grid, times ``psi`` in ``arange(psi_min, psi_max, psi_step)``.
    Identical, value for value and in order, to
    ``torch_so3.get_uniform_euler_angles`` with Leopard-EM's ``OrientationSearchConfig``.

    Parameters
    ----------
    psi_step, theta_step
        Steps in degrees (in-plane ``psi``; ``theta`` ring spacing of the base grid).
    base_grid
        ``"uniform"``, ``"healpix"`` or ``"cartesian"``.
    symmetry
        Reduces the ranges as torch-so3 / Leopard-EM do (``Cn``: phi in [0, 360/n);
        ``Dn``: also theta in [0, 90]; ``T``, ``O``, ``I``: approximate boxes, see
        ``torch_so3.get_symmetry_ranges``; for exact asymmetric units use
        :func:`rotation_grid`). ``None`` means C1.
    phi_range, theta_range, psi_range
        Explicit ``(min, max)`` in degrees; each one given overrides the symmetry's range
        for that angle. Upper bounds: phi and psi exclusive, theta inclusive (torch-so3).
    phi_step
        Only for ``base_grid="cartesian"`` (default 2.5).
    dtype, device
        Of the result.

    Returns
    -------
    angles
        `(n, 3)` ``(phi, theta, psi)`` degrees; ``n = angles.shape[0]`` is the number of
        orientations searched (Leopard-EM's default ``psi_step=1.5, theta_step=2.5`` gives
        1,584,480).
    """
    import torch_so3

    if psi_step <= 0 or theta_step <= 0:
        raise InputError(f"psi_step and theta_step must be > 0, got {psi_step}, {theta_step}")
    if base_grid not in ("uniform", "healpix", "cartesian"):
        raise InputError(
            f"base_grid must be 'uniform', 'healpix' or 'cartesian', got {base_grid!r}"
        )
    letter, n = parse_symmetry(symmetry or "C1")
    rng = torch_so3.get_symmetry_ranges(letter, n)
    phi_min, phi_max = phi_range if phi_range is not None else (rng.phi_min, rng.phi_max)
    th_min, th_max = theta_range if theta_range is not None else (rng.theta_min, rng.theta_max)
    psi_min, psi_max = psi_range if psi_range is not None else (rng.psi_min, rng.psi_max)
    kw: dict[str, Any] = {}
    if base_grid == "cartesian":
        kw["phi_step"] = 2.5 if phi_step is None else phi_step
    angles = torch_so3.get_uniform_euler_angles(
        psi_step=psi_step,
        theta_step=theta_step,
        phi_min=float(phi_min),
        phi_max=float(phi_max),
        theta_min=float(th_min),
        theta_max=float(th_max),
        psi_min=float(psi_min),
        psi_max=float(psi_max),
        base_grid_method=base_grid,
        **kw,
    )
    if angles.shape[0] == 0:
        raise InputError("the angular ranges give an empty orientation set: widen the ranges")
    return angles.to(dtype=dtype, device=device)


# --------------------------------------------------------------------------------------------
# Near-uniform SO(3) sets (Hopf fibration: HEALPix directions x uniform in-plane circle)
# --------------------------------------------------------------------------------------------


def healpix_directions(nside: int) -> tuple[np.ndarray, np.ndarray]:
    """HEALPix RING-scheme pixel centres: ``(theta, phi)`` in radians, each `(12 nside^2,)`.

    Same values as ``healpy.pix2ang(nside, arange(12 nside^2))`` (any ``nside >= 1``).
    """
    ns = int(nside)
    if ns < 1:
        raise InputError(f"nside must be >= 1, got {nside}")
    npix = 12 * ns * ns
    p = np.arange(npix, dtype=np.int64)
    ncap = 2 * ns * (ns - 1)
    z = np.empty(npix)
    phi = np.empty(npix)
    # north cap
    m = p < ncap
    pn = p[m]
    i = np.floor((1 + np.sqrt(1 + 2 * pn)) / 2).astype(np.int64)
    j = pn - 2 * i * (i - 1) + 1
    z[m] = 1 - i * i / (3.0 * ns * ns)
    phi[m] = np.pi / (2 * i) * (j - 0.5)
    # equatorial belt
    m = (p >= ncap) & (p < npix - ncap)
    pe = p[m] - ncap
    i = pe // (4 * ns) + ns
    j = pe % (4 * ns) + 1
    fodd = np.where((i + ns) % 2 == 1, 1.0, 0.5)
    z[m] = 4.0 / 3.0 - 2.0 * i / (3.0 * ns)
    phi[m] = np.pi / (2 * ns) * (j - fodd)
    # south cap
    m = p >= npix - ncap
    ps = npix - p[m]
    i = np.floor((1 + np.sqrt(2 * ps - 1)) / 2).astype(np.int64)
    j = 4 * i + 1 - (ps - 2 * i * (i - 1))
    z[m] = -1 + i * i / (3.0 * ns * ns)
    phi[m] = np.pi / (2 * i) * (j - 0.5)
    return np.arccos(np.clip(z, -1.0, 1.0)), phi


# Covering radius of the Hopf grid with ``n_psi = f * nside`` in-plane angles: the distance of
# any rotation to the nearest grid rotation is <= _HOPF_COVER[f] / nside degrees (measured
# maxima over 6e4 random rotations for nside 1..5, times ~1.04 for safety; checked in the
# tests). f = 5 is the most economical; the others fill the gaps between nside levels.
_HOPF_COVER = {3: 74.0, 4: 66.0, 5: 57.0, 6: 56.0}
# widening of the symmetry cell, in units of the covering radius (see rotation_grid;
# 0.25 still covered in checks with 4e4 random rotations for D2, D7, T, O, I at 15-30 deg)
_SYM_MARGIN = 0.5


def _hopf_params(angular_step: float, n_circle: int = 1) -> tuple[int, int, float]:
    """``(nside, n_psi_per_unit, covering_deg)`` with the fewest rotations for the step.

    ``n_circle``: the in-plane circle is cut to ``1 / n_circle`` (Cn symmetry); the count is
    ``12 nside^2 * ceil(f nside / n_circle)``.
    """
    best: tuple[int, int, int, float] | None = None
    for f, c in _HOPF_COVER.items():
        ns = max(1, math.ceil(c / float(angular_step) - 1e-9))
        per = max(1, math.ceil(f * ns / n_circle))
        count = 12 * ns * ns * per
        if best is None or count < best[0]:
            best = (count, ns, per, c / ns)
    assert best is not None
    return best[1], best[2], best[3]


def _hopf_grid(nside: int, n_psi: int, psi_period: float = 360.0) -> torch.Tensor:
    """Matrices ``R^T`` for ``R = Rz(phi) Ry(theta) Rz(psi)``; float64 `(12 nside^2 n_psi, 3, 3)`.

    Transposing makes the circle factor act on the left (``Rz(-psi) @ ...``), so that left
    multiplication by a z rotation (Cn symmetry) shifts the circle coordinate exactly.
    """
    theta, phi = healpix_directions(nside)
    psi = (np.arange(n_psi) + 0.5) * (psi_period / n_psi)
    th = torch.as_tensor(np.repeat(theta, n_psi))
    ph = torch.as_tensor(np.repeat(phi, n_psi))
    ps = torch.as_tensor(np.tile(np.deg2rad(psi), theta.size))
    r = _rz(ph) @ _ry(th) @ _rz(ps)
    return r.transpose(-1, -2).contiguous()


def _reduce_by_symmetry(
    r: torch.Tensor, sym: torch.Tensor, margin_deg: float, n_sub: int = 1
) -> torch.Tensor:
    """Keep ``R`` with ``min_{S in H} angle(S R) <= min_{S not in H} angle(S R) + margin``.

    ``H`` = the first ``n_sub`` operators of ``sym`` (a subgroup whose reduction was already
    done exactly; identity only by default): the Dirichlet cell of ``H`` widened by ``margin``.
    """
    q = matrix_to_quaternion(r)  # (m, 4)
    qs = matrix_to_quaternion(sym.to(r.dtype))  # (k, 4)
    # scalar part of the product qs * q; |w| = cos(angle / 2)
    w = qs[:, 0:1] @ q[:, 0:1].T - qs[:, 1:] @ q[:, 1:].T  # (k, m)
    ang = 2.0 * torch.rad2deg(torch.acos(torch.clamp(w.abs(), max=1.0)))
    own = ang[:n_sub].amin(dim=0)
    other = ang[n_sub:].amin(dim=0)
    keep = own <= other + margin_deg + 1e-9
    return r[keep]


def rotation_grid_info(angular_step: float, *, symmetry: str = "C1") -> dict[str, Any]:
    """Parameters and size of :func:`rotation_grid` for a step and symmetry.

    Returns a dict: ``symmetry``, ``nside`` (HEALPix resolution of the directions),
    ``n_directions`` (``12 nside^2``), ``n_inplane`` (in-plane angles kept per direction,
    after the Cn cut), ``covering_deg`` (calibrated bound on the distance of any rotation to
    the set, modulo symmetry; <= ``angular_step``) and ``n_rotations``.
    """
    letter, n = parse_symmetry(symmetry)
    nside, per, cover = _hopf_params(angular_step, n if letter in ("C", "D") else 1)
    r = rotation_grid(angular_step, symmetry=symmetry, dtype=torch.float64)
    return {
        "symmetry": symmetry,
        "nside": nside,
        "n_directions": 12 * nside * nside,
        "n_inplane": per,
        "covering_deg": cover,
        "n_rotations": int(r.shape[0]),
    }


def rotation_grid(
    angular_step: float,
    *,
    symmetry: str = "C1",
    method: str = "hopf",
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Near-uniform set of rotations covering SO(3) (modulo a point group) for 3D matching.

    Hopf-fibration grid (Yershova et al. 2010): ``12 nside^2`` HEALPix directions times
    ``n_psi = f nside`` equally spaced in-plane angles (``f`` in 3..6), the pair with the
    fewest rotations whose calibrated covering radius is at most ``angular_step``: **every
    rotation is within ``angular_step`` degrees of a grid rotation** (modulo symmetry). For
    C1: 15 deg -> 3,840 rotations (covering 14.3 deg), 20 deg -> 1,620, 30 deg -> 480 (in
    the same league as Karney's optimised sets used by pyTME, whose nominal angle is not a
    covering bound). Symmetry: ``Cn`` keeps an exact 1/n of the in-plane circle (the grid
    is built so that Cn acts on it); ``Dn``, ``T``, ``O``, ``I`` keep the rotations in the
    Dirichlet cell of the identity (``angle(R) <= min_S angle(S R)``, after the exact Cn cut
    for Dn) widened by half the covering radius, which keeps the coverage (checked in the
    tests) at the cost of extra rotations near the cell's faces (about 1.1x-2x the ideal
    ``n_C1 / |G|``, the most for the smallest sets).

    ``method="fibonacci"`` gives :func:`covering_rotations` instead: a super-Fibonacci set
    sized by its measured covering radius (30 deg -> 360 rotations, pyTME's count for that
    step; covering radius about ``angular_step``, not a strict bound).

    Parameters
    ----------
    angular_step
        Largest allowed distance (degrees) of any rotation to the set; >= 0.5.
    symmetry
        Point group of the template (:func:`symmetry_matrices`; acts on the left of ``R``).
    method
        ``"hopf"`` (default, strict covering bound) or ``"fibonacci"``.
    dtype, device
        Of the result.

    Returns
    -------
    matrices
        `(n, 3, 3)` rotation matrices in corrscan's convention (module docstring); ``n`` is
        :func:`n_rotations_for_step`. Euler angles: :func:`matrix_to_euler`.
    """
    if method not in ("hopf", "fibonacci"):
        raise InputError(f"method must be 'hopf' or 'fibonacci', got {method!r}")
    if not (angular_step > 0):
        raise InputError(f"angular_step must be > 0 degrees, got {angular_step}")
    if angular_step < 0.5:
        raise InputError(
            f"angular_step {angular_step} deg would give > {60 * 114**3:,} rotations: "
            "use local_grid for fine searches around known poses"
        )
    if method == "fibonacci":
        return covering_rotations(
            angular_step=angular_step, symmetry=symmetry, dtype=dtype, device=device
        )
    letter, n = parse_symmetry(symmetry)
    if letter in ("C", "D"):
        # exact Cn reduction: circle coordinate restricted to [0, 360/n)
        nside, per, cover = _hopf_params(angular_step, n)
        r = _hopf_grid(nside, per, psi_period=360.0 / n)
        if letter == "D":
            cn = symmetry_matrices(f"C{n}", dtype=torch.float64)
            flip = _axis_rotation((1, 0, 0), 180.0)
            sym = torch.cat([cn, flip @ cn])
            r = _reduce_by_symmetry(r, sym, _SYM_MARGIN * cover, n_sub=n)
    else:
        nside, per, cover = _hopf_params(angular_step)
        r = _hopf_grid(nside, per)
        sym = symmetry_matrices(symmetry, dtype=torch.float64)
        r = _reduce_by_symmetry(r, sym, _SYM_MARGIN * cover)
    return r.to(dtype=dtype, device=device)


def n_rotations_for_step(angular_step: float, symmetry: str = "C1", method: str = "hopf") -> int:
    """Number of rotations :func:`rotation_grid` gives for ``angular_step``, ``symmetry`` and
    ``method``."""
    r = rotation_grid(angular_step, symmetry=symmetry, method=method, dtype=torch.float64)
    return int(r.shape[0])


# --------------------------------------------------------------------------------------------
# Super-Fibonacci covering sets (any size)
# --------------------------------------------------------------------------------------------

# Covering-radius calibration of super-Fibonacci sets: n * step_rad**3 ~ _FIB_K (measured by
# dense random sampling for n = 60..2000: covering radius 60.5 deg at 60, 31.3 at 360, 16.6 at
# 2000). 30 degrees -> 360 rotations, the size pyTME uses for 30 degrees.
_FIB_K = 51.6
_FIB_PSI = 1.533751168755204288118041


def n_covering_rotations(angular_step: float) -> int:
    """Size of the full (C1) super-Fibonacci set with covering radius about ``angular_step``.

    ``ceil(51.6 / step_rad^3)``: 60 deg -> 45, 30 deg -> 360, 15 deg -> 2,876.
    """
    if not 0.0 < angular_step <= 180.0:
        raise InputError(f"angular_step must be in (0, 180] degrees, got {angular_step}")
    return max(1, math.ceil(_FIB_K / math.radians(angular_step) ** 3))


def super_fibonacci_rotations(
    n: int, *, dtype: torch.dtype = torch.float64, device: torch.device | str | None = None
) -> torch.Tensor:
    """``(n, 3, 3)`` near-uniform rotations of any size: a super-Fibonacci spiral.

    Alexa (2022), "Super-Fibonacci spirals: fast, low-discrepancy sampling of SO(3)": unit
    quaternions ``q_s = (r sin a, r cos a, r' sin b, r' cos b)`` with ``t = (s + 1/2) / n``,
    ``r = sqrt(t)``, ``r' = sqrt(1 - t)``, ``a = 2 pi s / sqrt(2)``, ``b = 2 pi s / psi``
    (``psi^4 = psi + 4``), ``s = 0..n-1``. Deterministic, no data files. The matrices
    returned are the transposes (inverses) of the spiral's, so that ``R^T`` (the active
    rotation that turns a template, the convention of :mod:`corrscan.match3d` and pyTME) runs
    along the spiral; inverting does not change the covering radius.
    """
    n = int(n)
    if n < 1:
        raise InputError(f"number of rotations must be >= 1, got {n}")
    s = np.arange(n, dtype=np.float64) + 0.5
    t = s / n
    r, rr = np.sqrt(t), np.sqrt(1.0 - t)
    alpha = 2.0 * np.pi * s / math.sqrt(2.0)
    beta = 2.0 * np.pi * s / _FIB_PSI
    w, x, y, z = r * np.sin(alpha), r * np.cos(alpha), rr * np.sin(beta), rr * np.cos(beta)
    m = np.empty((n, 3, 3))
    # transpose of the quaternion's matrix (element [i, j] holds the spiral's [j, i])
    m[:, 0, 0] = 1 - 2 * (y * y + z * z)
    m[:, 1, 0] = 2 * (x * y - z * w)
    m[:, 2, 0] = 2 * (x * z + y * w)
    m[:, 0, 1] = 2 * (x * y + z * w)
    m[:, 1, 1] = 1 - 2 * (x * x + z * z)
    m[:, 2, 1] = 2 * (y * z - x * w)
    m[:, 0, 2] = 2 * (x * z - y * w)
    m[:, 1, 2] = 2 * (y * z + x * w)
    m[:, 2, 2] = 1 - 2 * (x * x + y * y)
    return torch.from_numpy(m).to(dtype=dtype, device=device)


def euler_window_mask(matrices: Any, symmetry: str) -> Any:
    """``(n,)`` bool: which rotations lie in one asymmetric unit of ``Cn`` / ``Dn`` (an Euler
    window; symmetry acting on the left). Same array kind as ``matrices`` `(n, 3, 3)`.

    ``S @ R`` with ``S = Rz(t)`` shifts ``phi`` by ``t``; with the 2-fold about x (Dn) it maps
    ``theta`` to ``180 - theta``. Kept: ``(180 - phi) mod 360 < 360 / n`` (``phi`` in
    ``(180 - 360/n, 180]``; the poles, where ``phi`` is undefined, are kept) and, for Dn,
    ``theta <= 90``. An exact partition without a margin: near the window's edges the set
    covers up to ~1.3x worse than the full set.
    """
    letter, n = parse_symmetry(symmetry)
    if letter not in ("C", "D"):
        raise InputError(
            f"Euler-window asymmetric units exist for Cn and Dn only, got {symmetry!r}: use "
            "rotation_grid(method='hopf') for T, O and I"
        )
    r, restore = unwrap(matrices, name="matrices")
    if r.ndim != 3 or r.shape[1:] != (3, 3):
        raise InputError(f"matrices must be (n, 3, 3), got {tuple(r.shape)}")
    if letter == "C" and n == 1:
        return restore(torch.ones(r.shape[0], dtype=torch.bool, device=r.device))
    rd = r.to(torch.float64)
    theta = torch.rad2deg(torch.acos(torch.clamp(rd[:, 2, 2], -1.0, 1.0)))
    a = torch.rad2deg(torch.atan2(rd[:, 1, 2], -rd[:, 0, 2]))  # = 180 - phi
    a = torch.where(torch.sin(torch.deg2rad(theta)) < 1e-6, torch.zeros_like(a), a)
    keep = torch.remainder(a, 360.0) < 360.0 / n - 1e-9
    if letter == "D":
        keep &= theta <= 90.0
    return restore(keep)


def covering_rotations(
    *,
    angular_step: float | None = None,
    n_rotations: int | None = None,
    symmetry: str = "C1",
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Super-Fibonacci rotation set sized by a covering radius or a count (3D matching).

    Parameters
    ----------
    angular_step
        Wanted covering radius in degrees (about the largest distance of any rotation to its
        nearest set member; calibrated, not a strict bound: use
        ``rotation_grid(method="hopf")`` for one). 30 deg -> 360 rotations.
    n_rotations
        Or the size of the full C1 set (before the symmetry cut).
    symmetry
        ``"Cn"`` or ``"Dn"`` (acts on the left of ``R``; one asymmetric unit is kept by an
        Euler-angle window, about ``1/|G|`` of the set).
    dtype, device
        Of the result.

    Returns
    -------
    matrices
        `(n, 3, 3)` in corrscan's convention (:func:`super_fibonacci_rotations`).
    """
    if (angular_step is None) == (n_rotations is None):
        raise InputError("give exactly one of angular_step or n_rotations")
    n = n_covering_rotations(angular_step) if angular_step is not None else int(n_rotations)
    if n < 1:
        raise InputError(f"n_rotations must be >= 1, got {n_rotations}")
    r = super_fibonacci_rotations(n)
    r = r[euler_window_mask(r, symmetry)]
    return r.to(dtype=dtype, device=device)


# --------------------------------------------------------------------------------------------
# Local and cone-restricted grids
# --------------------------------------------------------------------------------------------


def _ball_offsets(half_range_deg: float, step_deg: float) -> torch.Tensor:
    """Rotation vectors (radians) on a cubic lattice of spacing ``step`` inside a ball."""
    k = math.floor(half_range_deg / step_deg + 1e-9)
    ax = torch.arange(-k, k + 1, dtype=torch.float64) * step_deg
    g = torch.stack(torch.meshgrid(ax, ax, ax, indexing="ij"), dim=-1).reshape(-1, 3)
    g = g[torch.linalg.norm(g, dim=-1) <= half_range_deg + 1e-9]
    # centre first, then by distance
    g = g[torch.argsort(torch.linalg.norm(g, dim=-1), stable=True)]
    return torch.deg2rad(g)


def local_grid(
    center: Any,
    *,
    half_range_deg: float,
    step_deg: float,
    mode: str = "ball",
    psi_half_range_deg: float | None = None,
    psi_step_deg: float | None = None,
) -> Any:
    """Euler angles around a pose (or several poses) for local refinement.

    Parameters
    ----------
    center
        `(..., 3)` ``(phi, theta, psi)`` degrees.
    half_range_deg, step_deg
        ``mode="ball"`` (default): rotations ``R_c @ exp(v)`` for rotation vectors ``v`` on a
        cubic lattice of spacing ``step_deg`` with ``|v| <= half_range_deg``; every offset is
        a rotation of exactly ``|v|`` degrees from the centre (bi-invariant distance), the
        first one is the centre itself. ``mode="euler"``: Leopard-EM style offsets of the
        Euler angles themselves, ``phi, theta`` in ``[-half, half]`` and ``psi`` in
        ``[-psi_half, psi_half]`` (defaults to ``half_range_deg`` / ``step_deg``), centre
        included; near theta = 0 this is *not* a uniform neighbourhood.
    mode
        ``"ball"`` or ``"euler"``.

    Returns
    -------
    angles
        `(..., m, 3)` degrees (same array kind as ``center``); ``m`` rotations per centre.
    """
    t, restore = unwrap(center, name="center")
    if t.shape[-1:] != (3,):
        raise InputError(f"center must have shape (..., 3), got {tuple(t.shape)}")
    if step_deg <= 0 or half_range_deg < 0:
        raise InputError(f"need step_deg > 0 and half_range_deg >= 0: {step_deg}, {half_range_deg}")
    out_dtype = t.dtype if t.dtype in (torch.float32, torch.float64) else torch.float32
    c = t.to(torch.float64)
    if mode == "ball":
        v = _ball_offsets(half_range_deg, step_deg).to(c.device)
        rc = _euler_to_matrix_t(c)[..., None, :, :]  # (..., 1, 3, 3)
        r = rc @ axis_angle_to_matrix(v)  # (..., m, 3, 3)
        out = _matrix_to_euler_t(r)
    elif mode == "euler":
        ph = psi_half_range_deg if psi_half_range_deg is not None else half_range_deg
        ps = psi_step_deg if psi_step_deg is not None else step_deg
        k = math.floor(half_range_deg / step_deg + 1e-9)
        kp = math.floor(ph / ps + 1e-9)
        a = torch.arange(-k, k + 1, dtype=torch.float64) * step_deg
        b = torch.arange(-kp, kp + 1, dtype=torch.float64) * ps
        off = torch.stack(torch.meshgrid(a, a, b, indexing="ij"), dim=-1).reshape(-1, 3)
        off = off[torch.argsort(off.abs().sum(-1), stable=True)].to(c.device)
        out = c[..., None, :] + off
    else:
        raise InputError(f"mode must be 'ball' or 'euler', got {mode!r}")
    return restore(out.to(out_dtype))


def cone_grid(
    axis: Any = (0.0, 0.0, 1.0),
    cone_angle: float = 10.0,
    angular_step: float = 2.0,
    *,
    inplane_step: float | None = None,
    inplane_range: tuple[float, float] = (0.0, 360.0),
) -> torch.Tensor:
    """Euler angles whose projection direction lies in a cone, times in-plane angles.

    Directions ``d = R @ (0, 0, 1) = (sin t cos p, sin t sin p, cos t)`` (the projection
    direction in the map's frame, RELION ``rot, tilt``) within ``cone_angle`` of ``axis``,
    on a Fibonacci spherical cap with spacing about ``angular_step``; for each direction
    ``psi`` in ``arange(*inplane_range, inplane_step)``.

    Parameters
    ----------
    axis
        `(3,)` cone axis ``(x, y, z)`` in the map's frame (normalised here).
    cone_angle
        Half-opening angle, degrees (0 gives the axis only).
    angular_step
        Direction spacing in degrees.
    inplane_step
        ``psi`` step (degrees), default ``angular_step``.
    inplane_range
        ``(min, max)`` of ``psi``, max exclusive.

    Returns
    -------
    angles
        `(n, 3)` float64 tensor ``(phi, theta, psi)`` degrees; the first direction is the
        axis itself.
    """
    a = torch.as_tensor(np.asarray(axis, dtype=np.float64))
    if a.shape != (3,) or float(torch.linalg.norm(a)) == 0.0:
        raise InputError(f"axis must be a non-zero (x, y, z) vector, got {axis!r}")
    if angular_step <= 0 or cone_angle < 0:
        raise InputError("need angular_step > 0 and cone_angle >= 0")
    a = a / torch.linalg.norm(a)
    step = math.radians(angular_step)
    cap = math.radians(min(cone_angle, 180.0))
    area = 2.0 * math.pi * (1.0 - math.cos(cap))
    n = max(1, round(area / (step * step)))
    # Fibonacci points on the cap around +z (first point at the pole)
    i = torch.arange(n, dtype=torch.float64)
    cos_t = 1.0 - (1.0 - math.cos(cap)) * i / max(n - 1, 1) if n > 1 else torch.ones(1)
    cos_t = torch.as_tensor(cos_t, dtype=torch.float64)
    sin_t = torch.sqrt(torch.clamp(1.0 - cos_t**2, min=0.0))
    golden = math.pi * (3.0 - math.sqrt(5.0))
    ph = i * golden
    d = torch.stack([sin_t * torch.cos(ph), sin_t * torch.sin(ph), cos_t], dim=-1)
    # rotate the cap from +z to the axis (Rodrigues, shortest arc)
    z = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
    cross = torch.linalg.cross(z, a)
    s = float(torch.linalg.norm(cross))
    c = float(torch.dot(z, a))
    if s < 1e-12:
        rot = (
            torch.eye(3, dtype=torch.float64)
            if c > 0
            else torch.diag(torch.tensor([1.0, -1.0, -1.0], dtype=torch.float64))
        )
    else:
        rot = axis_angle_to_matrix(cross / s * math.atan2(s, c))
    d = d @ rot.T
    theta = torch.rad2deg(torch.acos(torch.clamp(d[:, 2], -1.0, 1.0)))
    phi = torch.rad2deg(torch.atan2(d[:, 1], d[:, 0]))
    ips = angular_step if inplane_step is None else inplane_step
    if ips <= 0:
        raise InputError(f"inplane_step must be > 0, got {ips}")
    psi = torch.arange(inplane_range[0], inplane_range[1], ips, dtype=torch.float64)
    if psi.numel() == 0:
        psi = torch.tensor([float(inplane_range[0])], dtype=torch.float64)
    pt = torch.stack([phi, theta], dim=-1)
    out = torch.cat(
        [pt.repeat_interleave(psi.numel(), dim=0), psi.repeat(pt.shape[0])[:, None]], dim=-1
    )
    return out

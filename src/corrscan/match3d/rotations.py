"""Rotation sets for 3D template matching.

Conventions (same as :mod:`corrscan.core.rotations`):

* A rotation matrix ``R`` acts on column vectors ``(x, y, z)``.
* Matching "at rotation ``R``" correlates the target with the template rotated by ``R`` about
  its centre index ``S // 2``: ``g_R(x) = g(R^T (x - c) + c)``.
* Euler angles (``rot, tilt, psi``) follow :mod:`corrscan.core.rotations` (RELION's angles;
  ``core.euler_to_matrix(angles) = Rz(rot) Ry(tilt) Rz(psi)`` samples the reference at rotated
  coordinates, ``V(R r)``). Our template rotation ``M`` is active (``g(M^T r)``), so a particle
  that looks like the template rotated by ``M`` has the RELION angles of ``R = M^T``; see
  :func:`matrices_to_relion_euler`.

The near-uniform SO(3) sets are super-Fibonacci spirals (Alexa 2022): deterministic, any size,
no data files. The size for an angular step is chosen so that the covering radius (largest
distance from any rotation to the nearest set member) is about the step.
"""

from __future__ import annotations

import math
import re

import numpy as np
import torch

from corrscan.errors import InputError

__all__ = [
    "cone_rotations",
    "euler_to_matrix",
    "matrices_to_relion_euler",
    "matrix_to_euler",
    "n_rotations_for_step",
    "reduce_by_symmetry",
    "relion_euler_to_matrices",
    "rotation_angle_deg",
    "rotation_set",
    "super_fibonacci_rotations",
    "symmetry_matrices",
]

# Covering-radius calibration of super-Fibonacci sets: n * step_rad**3 ~ _K (measured by dense
# random sampling for n = 60..2000: covering radius 60.5 deg at 60, 31.3 at 360, 16.6 at 2000).
# 30 degrees -> 360 rotations, the size pyTME uses for 30 degrees.
_K = 51.6
_PSI = 1.533751168755204288118041


def _rz(a: np.ndarray) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    out = np.zeros((*np.shape(a), 3, 3))
    out[..., 0, 0], out[..., 0, 1], out[..., 1, 0], out[..., 1, 1] = c, -s, s, c
    out[..., 2, 2] = 1.0
    return out


def _ry(a: np.ndarray) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    out = np.zeros((*np.shape(a), 3, 3))
    out[..., 0, 0], out[..., 0, 2], out[..., 2, 0], out[..., 2, 2] = c, s, -s, c
    out[..., 1, 1] = 1.0
    return out


def _zyz_active(angles: np.ndarray) -> np.ndarray:
    """``Rz(c) @ Ry(b) @ Rz(a)`` for ``(..., 3)`` ``[a, b, c]`` degrees (internal)."""
    a = np.deg2rad(np.asarray(angles, dtype=np.float64))
    return _rz(a[..., 2]) @ _ry(a[..., 1]) @ _rz(a[..., 0])


def _zyz_active_angles(matrices: np.ndarray) -> np.ndarray:
    """Inverse of :func:`_zyz_active`: ``(..., 3)`` ``[a, b, c]``, ``b`` in [0, 180]."""
    r = np.asarray(matrices, dtype=np.float64)
    b = np.arccos(np.clip(r[..., 2, 2], -1.0, 1.0))
    gimbal = np.sin(b) < 1e-6
    a = np.arctan2(r[..., 2, 1], -r[..., 2, 0])
    c = np.arctan2(r[..., 1, 2], r[..., 0, 2])
    c_g = np.where(
        r[..., 2, 2] > 0,
        np.arctan2(r[..., 1, 0], r[..., 0, 0]),
        np.arctan2(-r[..., 1, 0], -r[..., 0, 0]),
    )
    a = np.where(gimbal, 0.0, a)
    c = np.where(gimbal, c_g, c)
    return np.rad2deg(np.stack([a, b, c], axis=-1))


def euler_to_matrix(angles: np.ndarray) -> np.ndarray:
    """``corrscan.core.rotations.euler_to_matrix`` in float64 NumPy (``(..., 3)`` degrees)."""
    from corrscan.core.rotations import euler_to_matrix as _core

    return np.asarray(_core(np.asarray(angles, dtype=np.float64)), dtype=np.float64)


def matrix_to_euler(matrices: np.ndarray) -> np.ndarray:
    """``corrscan.core.rotations.matrix_to_euler`` in float64 NumPy."""
    from corrscan.core.rotations import matrix_to_euler as _core

    return np.asarray(_core(np.asarray(matrices, dtype=np.float64)), dtype=np.float64)


def matrices_to_relion_euler(matrices: np.ndarray) -> np.ndarray:
    """RELION ``(rot, tilt, psi)`` of particles that look like the template rotated by ``M``.

    ``matrix_to_euler(M^T)`` (see the module docstring).
    """
    return matrix_to_euler(np.swapaxes(np.asarray(matrices, dtype=np.float64), -1, -2))


def relion_euler_to_matrices(angles: np.ndarray) -> np.ndarray:
    """Inverse of :func:`matrices_to_relion_euler`: RELION angles -> template rotations ``M``."""
    return np.swapaxes(euler_to_matrix(angles), -1, -2)


def rotation_angle_deg(r1: np.ndarray, r2: np.ndarray) -> np.ndarray:
    """Geodesic distance in degrees between rotations ``(..., 3, 3)`` (broadcasting)."""
    r1 = np.asarray(r1, dtype=np.float64)
    r2 = np.asarray(r2, dtype=np.float64)
    tr = np.einsum("...ij,...ij->...", r1, r2)  # trace(r1^T r2)
    return np.rad2deg(np.arccos(np.clip((tr - 1.0) / 2.0, -1.0, 1.0)))


def _quat_to_matrix(q: np.ndarray) -> np.ndarray:
    w, x, y, z = q[..., 0], q[..., 1], q[..., 2], q[..., 3]
    out = np.empty((*q.shape[:-1], 3, 3))
    out[..., 0, 0] = 1 - 2 * (y * y + z * z)
    out[..., 0, 1] = 2 * (x * y - z * w)
    out[..., 0, 2] = 2 * (x * z + y * w)
    out[..., 1, 0] = 2 * (x * y + z * w)
    out[..., 1, 1] = 1 - 2 * (x * x + z * z)
    out[..., 1, 2] = 2 * (y * z - x * w)
    out[..., 2, 0] = 2 * (x * z - y * w)
    out[..., 2, 1] = 2 * (y * z + x * w)
    out[..., 2, 2] = 1 - 2 * (x * x + y * y)
    return out


def super_fibonacci_rotations(n: int) -> np.ndarray:
    """``(n, 3, 3)`` float64 near-uniform rotations (super-Fibonacci spiral, Alexa 2022).

    Deterministic; the first is close to, but not exactly, the identity.
    """
    if n < 1:
        raise InputError(f"number of rotations must be >= 1, got {n}")
    s = np.arange(n, dtype=np.float64) + 0.5
    t = s / n
    r, rr = np.sqrt(t), np.sqrt(1.0 - t)
    alpha = 2.0 * np.pi * s / math.sqrt(2.0)
    beta = 2.0 * np.pi * s / _PSI
    q = np.stack([r * np.sin(alpha), r * np.cos(alpha), rr * np.sin(beta), rr * np.cos(beta)], -1)
    return _quat_to_matrix(q)


def n_rotations_for_step(angular_step: float) -> int:
    """Size of the full (C1) set whose covering radius is about ``angular_step`` degrees."""
    if not 0.0 < angular_step <= 180.0:
        raise InputError(f"angular_step must be in (0, 180] degrees, got {angular_step}")
    return max(1, math.ceil(_K / math.radians(angular_step) ** 3))


def symmetry_matrices(symmetry: str) -> np.ndarray:
    """``(k, 3, 3)`` matrices of the point group ``"C1" | "Cn" | "Dn"`` (axis z; Dn 2-fold x)."""
    m = re.fullmatch(r"([CcDd])(\d+)", str(symmetry).strip())
    if not m or int(m.group(2)) < 1:
        raise InputError(f"symmetry {symmetry!r} not understood: use 'C1', 'Cn' or 'Dn' (n >= 1)")
    n = int(m.group(2))
    cn = _rz(2.0 * np.pi * np.arange(n) / n)
    if m.group(1).upper() == "C":
        return cn
    flip = np.diag([1.0, -1.0, -1.0])
    return np.concatenate([cn, cn @ flip], axis=0)


def reduce_by_symmetry(matrices: np.ndarray, symmetry: str) -> np.ndarray:
    """Keep the rotations in one asymmetric unit of a ``Cn``/``Dn`` symmetric template.

    With template symmetry ``S`` the rotations ``R`` and ``R S`` give the same rotated
    template. Writing ``R = Rz(c) Ry(b) Rz(a)``, ``R Rz(t)`` shifts ``a`` by ``t``
    and ``R Rx(180)`` maps ``b`` to ``180 - b``; the kept unit is
    ``a mod 360 in [0, 360/n)`` (and ``b <= 90`` for ``Dn``), about ``1/|G|`` of a
    uniform set.
    """
    sym = str(symmetry).strip().upper()
    k = symmetry_matrices(sym).shape[0]
    if k == 1:
        return np.asarray(matrices)
    n = k if sym.startswith("C") else k // 2
    eul = _zyz_active_angles(matrices)
    keep = np.mod(eul[:, 0], 360.0) < 360.0 / n - 1e-9
    if sym.startswith("D"):
        keep &= eul[:, 1] <= 90.0
    return np.asarray(matrices)[keep]


def cone_rotations(
    matrices: np.ndarray, axis: tuple[float, float, float], cone_angle: float
) -> np.ndarray:
    """Keep rotations that bring the template z axis within ``cone_angle`` of ``axis``.

    ``axis`` is ``(x, y, z)`` in the tomogram frame; the in-plane angle about the template z
    axis stays fully sampled.
    """
    a = np.asarray(axis, dtype=np.float64)
    if a.shape != (3,) or not np.linalg.norm(a) > 0:
        raise InputError(f"cone axis must be a non-zero (x, y, z) vector, got {axis!r}")
    a = a / np.linalg.norm(a)
    z_rot = np.asarray(matrices)[:, :, 2]  # R @ e_z
    cosang = z_rot @ a
    return np.asarray(matrices)[cosang >= math.cos(math.radians(cone_angle)) - 1e-12]


def rotation_set(
    *,
    angular_step: float | None = None,
    n_rotations: int | None = None,
    symmetry: str = "C1",
    cone_axis: tuple[float, float, float] | None = None,
    cone_angle: float | None = None,
) -> torch.Tensor:
    """The rotations of a search, ``(n, 3, 3)`` float32 torch tensor.

    Parameters
    ----------
    angular_step
        Wanted covering radius in degrees (about the largest error of the nearest rotation).
    n_rotations
        Or the number of rotations of the full C1 set (before symmetry/cone reduction).
    symmetry
        ``"C1"``, ``"Cn"`` or ``"Dn"`` (template symmetry, axis z, 2-fold about x).
    cone_axis, cone_angle
        Restrict the template z axis to a cone (``cone_angle`` degrees around ``cone_axis``).
        The full set is made ``(180 / cone_angle)^2``-ish denser so the cone keeps the
        requested step.
    """
    if (angular_step is None) == (n_rotations is None):
        raise InputError("give exactly one of angular_step or n_rotations")
    n = n_rotations_for_step(angular_step) if angular_step is not None else int(n_rotations)
    if n < 1:
        raise InputError(f"n_rotations must be >= 1, got {n_rotations}")
    mats = super_fibonacci_rotations(n)
    mats = reduce_by_symmetry(mats, symmetry)
    if cone_angle is not None:
        mats = cone_rotations(mats, cone_axis if cone_axis is not None else (0, 0, 1), cone_angle)
    if len(mats) == 0:
        raise InputError("the rotation set is empty: use a smaller step or a wider cone")
    return torch.from_numpy(mats.astype(np.float32))

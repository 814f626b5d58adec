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

The near-uniform SO(3) sets are :func:`corrscan.core.rotations.covering_rotations`
(super-Fibonacci spirals, Alexa 2022: deterministic, any size, no data files; the size for an
angular step is chosen so that the covering radius is about the step), transposed to the
active template rotations used here.
"""

from __future__ import annotations

import math
import re

import numpy as np
import torch

from corrscan.core import rotations as _core_rot
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


def _rz(a: np.ndarray) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    out = np.zeros((*np.shape(a), 3, 3))
    out[..., 0, 0], out[..., 0, 1], out[..., 1, 0], out[..., 1, 1] = c, -s, s, c
    out[..., 2, 2] = 1.0
    return out


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


def super_fibonacci_rotations(n: int) -> np.ndarray:
    """``(n, 3, 3)`` float64 near-uniform template rotations (super-Fibonacci spiral).

    The active rotations of :func:`corrscan.core.rotations.super_fibonacci_rotations` (its
    transposes). Deterministic; the first is close to, but not exactly, the identity.
    """
    return np.swapaxes(_core_rot.super_fibonacci_rotations(n).numpy(), -1, -2).copy()


def n_rotations_for_step(angular_step: float) -> int:
    """Size of the full (C1) set whose covering radius is about ``angular_step`` degrees."""
    return _core_rot.n_covering_rotations(angular_step)


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
    """Keep the template rotations in one asymmetric unit of a ``Cn``/``Dn`` template.

    With template symmetry ``S`` the rotations ``M`` and ``M S`` give the same rotated
    template; for ``R = M^T`` (corrscan's convention) symmetry acts on the left, and the
    unit is the Euler window of :func:`corrscan.core.rotations.covering_rotations`.
    """
    m = np.asarray(matrices)
    r = torch.from_numpy(np.ascontiguousarray(np.swapaxes(m, -1, -2), dtype=np.float64))
    keep = _core_rot.euler_window_mask(r, symmetry).numpy()
    return m[keep]


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
    symmetry_matrices(symmetry)  # Cn / Dn only, with this module's error message
    r = _core_rot.covering_rotations(
        angular_step=angular_step, n_rotations=n_rotations, symmetry=symmetry,
        dtype=torch.float64,
    )  # fmt: skip
    mats = np.swapaxes(r.numpy(), -1, -2)  # active template rotations M = R^T
    if cone_angle is not None:
        mats = cone_rotations(mats, cone_axis if cone_axis is not None else (0, 0, 1), cone_angle)
    if len(mats) == 0:
        raise InputError("the rotation set is empty: use a smaller step or a wider cone")
    return torch.from_numpy(mats.astype(np.float32))

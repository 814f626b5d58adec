"""Pseudo-atom 3D densities with planted truth (seeded).

A map is a sum of isotropic Gaussians ("pseudo-atoms") sampled at voxel centres::

    V(z, y, x) = sum_i a_i exp(-|r - p_i|^2 / (2 sigma^2))

with positions ``p_i`` in voxel indices ``(z, y, x)`` (origin at the first voxel's centre).
Because a rotated or projected Gaussian is again a Gaussian, the same truth also gives exact
(analytic) projections at any pose, :func:`project_gaussians`, in corrscan's projection
convention (:mod:`corrscan.core.projection`): ``P(y, x) = sum_z V(R @ (x, y, z))`` about the
centre voxel ``N // 2``, i.e. atom ``i`` lands at ``(R^T @ (p_i - c))_(x, y)`` with weight
``a_i sqrt(2 pi) sigma``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from corrscan.core.arrays import resolve_device, unwrap
from corrscan.errors import InputError

__all__ = [
    "project_gaussians",
    "pseudo_atom_map",
    "pseudo_atom_positions",
    "render_gaussians",
]


def _as_shape(shape: int | tuple[int, ...]) -> tuple[int, int, int]:
    s = (shape,) * 3 if isinstance(shape, (int, np.integer)) else tuple(int(v) for v in shape)
    if len(s) != 3 or min(s) < 1:
        raise InputError(f"shape must be an int or (D, H, W) with positive sizes, got {shape!r}")
    return s  # type: ignore[return-value]


def pseudo_atom_positions(
    n_atoms: int,
    *,
    radius: float,
    center: tuple[float, float, float] = (0.0, 0.0, 0.0),
    min_distance: float = 0.0,
    mode: str = "uniform",
    bond_length: float = 3.8,
    seed: int | np.random.Generator | None = 0,
) -> np.ndarray:
    """Random pseudo-atom positions inside a ball.

    Parameters
    ----------
    n_atoms
        Number of atoms (>= 1).
    radius
        Radius of the ball, in the same length unit as the result (voxels or Å).
    center
        ``(z, y, x)`` centre of the ball.
    min_distance
        ``mode="uniform"``: no two atoms closer than this (rejection sampling; raises
        :class:`InputError` if the ball is too crowded).
    mode
        ``"uniform"``: independent uniform points in the ball; ``"chain"``: a random
        walk with steps ``bond_length`` (C-alpha-like chain, compact and asymmetric) that
        stays in the ball and avoids earlier atoms where it can.
    bond_length
        Step of the chain.
    seed
        Seed or generator (reproducible).

    Returns
    -------
    positions
        `(n_atoms, 3)` float64 ``(z, y, x)``.
    """
    if n_atoms < 1:
        raise InputError(f"n_atoms must be >= 1, got {n_atoms}")
    if radius <= 0:
        raise InputError(f"radius must be > 0, got {radius}")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    c = np.asarray(center, dtype=np.float64)
    if mode == "uniform":
        if (
            min_distance > 0
            and n_atoms * (min_distance / 2.0) ** 3 > 0.6 * (radius + min_distance / 2.0) ** 3
        ):
            raise InputError(
                f"cannot place {n_atoms} atoms {min_distance} apart in a ball of radius "
                f"{radius} (denser than random packing): lower n_atoms or min_distance"
            )
        accepted = np.empty((0, 3))
        for _ in range(100):
            if accepted.shape[0] >= n_atoms:
                break
            k = 4 * (n_atoms - accepted.shape[0]) + 16
            v = rng.normal(size=(k, 3))
            v /= np.linalg.norm(v, axis=1, keepdims=True)
            cand = v * (radius * rng.uniform(size=(k, 1)) ** (1.0 / 3.0))
            if min_distance <= 0:
                accepted = np.concatenate([accepted, cand])[:n_atoms]
                continue
            for p in cand:  # loop over candidate atoms (vectorised distance test)
                if accepted.shape[0] >= n_atoms:
                    break
                if (
                    accepted.shape[0] == 0
                    or np.min(np.sum((accepted - p) ** 2, axis=1)) >= min_distance**2
                ):
                    accepted = np.concatenate([accepted, p[None]])
        if accepted.shape[0] < n_atoms:
            raise InputError(
                f"could not place {n_atoms} atoms {min_distance} apart in a ball of radius "
                f"{radius}: lower n_atoms or min_distance"
            )
        return accepted + c
    if mode == "chain":
        # random walk with fixed steps; each step picks, among 16 random directions, the first
        # that stays in the ball and keeps >= 0.75 bond lengths from all earlier atoms (else
        # the candidate farthest from them inside the ball, else the one nearest the centre)
        pos = np.zeros((n_atoms, 3))
        for i in range(1, n_atoms):  # a walk is sequential by nature
            steps = rng.normal(size=(16, 3))
            steps *= bond_length / np.linalg.norm(steps, axis=1, keepdims=True)
            cand = pos[i - 1] + steps
            inside = np.linalg.norm(cand, axis=1) <= radius
            dmin = np.sqrt(((cand[:, None] - pos[None, :i]) ** 2).sum(-1).min(1))
            ok = inside & (dmin >= 0.75 * bond_length)
            if ok.any():
                j = int(np.argmax(ok))
            elif inside.any():
                j = int(np.argmax(np.where(inside, dmin, -np.inf)))
            else:
                j = int(np.argmin(np.linalg.norm(cand, axis=1)))
            pos[i] = cand[j]
        return pos + c
    raise InputError(f"mode must be 'uniform' or 'chain', got {mode!r}")


def render_gaussians(
    positions: Any,
    shape: int | tuple[int, int, int],
    *,
    sigma: float,
    amplitudes: Any = None,
    dtype: torch.dtype = torch.float32,
    device: Any = None,
) -> torch.Tensor:
    """Sum of isotropic Gaussians sampled at voxel centres (separable, batched matmul).

    Parameters
    ----------
    positions
        `(n, 3)` ``(z, y, x)`` voxel indices.
    shape
        ``(D, H, W)`` or an int for a cube.
    sigma
        Standard deviation in voxels (> 0).
    amplitudes
        `(n,)` peak heights (default 1).
    dtype, device
        Of the result (computed in float64; ``device`` as
        :func:`corrscan.core.arrays.resolve_device`, default: that of ``positions``).

    Returns
    -------
    volume
        `(D, H, W)` torch tensor.
    """
    d, h, w = _as_shape(shape)
    p, _ = unwrap(positions, name="positions", dtype=torch.float64)
    if p.ndim != 2 or p.shape[1] != 3:
        raise InputError(f"positions must be (n, 3) (z, y, x), got {tuple(p.shape)}")
    if sigma <= 0:
        raise InputError(f"sigma must be > 0 voxels, got {sigma}")
    a = (
        torch.ones(p.shape[0], dtype=torch.float64, device=p.device)
        if amplitudes is None
        else unwrap(amplitudes, name="amplitudes", dtype=torch.float64, device=p.device)[0]
    )

    def g(n: int, col: int) -> torch.Tensor:
        ax = torch.arange(n, dtype=torch.float64, device=p.device)
        return torch.exp(-((ax[None, :] - p[:, col : col + 1]) ** 2) / (2.0 * sigma * sigma))

    gz, gy, gx = g(d, 0) * a[:, None], g(h, 1), g(w, 2)
    yx = (gy[:, :, None] * gx[:, None, :]).reshape(p.shape[0], h * w)
    vol = (gz.T @ yx).reshape(d, h, w)
    return vol.to(dtype=dtype, device=resolve_device(device) if device is not None else p.device)


def project_gaussians(
    positions: Any,
    rotation_matrices: Any,
    image_shape: tuple[int, int],
    *,
    sigma: float,
    amplitudes: Any = None,
    volume_shape: tuple[int, int, int] | None = None,
    dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """Exact projections of a pseudo-atom map at given rotations (analytic line integrals).

    ``P(y, x) = integral_z V(R @ (x, y, z) + c)``, atoms at ``(R^T (p - c))`` projected
    along z, each a 2D Gaussian of weight ``a sqrt(2 pi) sigma``; ``c`` is the map's centre
    voxel (``N // 2`` of ``volume_shape``), the image centre is ``(h // 2, w // 2)``.

    Parameters
    ----------
    positions
        `(n, 3)` ``(z, y, x)`` voxel indices in the map.
    rotation_matrices
        `(m, 3, 3)` corrscan/Leopard-EM ``R`` (or `(3, 3)`).
    image_shape
        ``(h, w)``.
    sigma, amplitudes
        As in :func:`render_gaussians`.
    volume_shape
        Map shape defining the centre (default ``(h, h, w)``).

    Returns
    -------
    projections
        `(m, h, w)` tensor (`(h, w)` for one matrix).
    """
    h, w = (int(image_shape[0]), int(image_shape[1]))
    vs = _as_shape(volume_shape) if volume_shape is not None else (h, h, w)
    p, _ = unwrap(positions, name="positions", dtype=torch.float64)
    r, _ = unwrap(rotation_matrices, name="rotation_matrices", dtype=torch.float64, device=p.device)
    single = r.ndim == 2
    if single:
        r = r[None]
    a = (
        torch.ones(p.shape[0], dtype=torch.float64, device=p.device)
        if amplitudes is None
        else unwrap(amplitudes, name="amplitudes", dtype=torch.float64, device=p.device)[0]
    )
    c = torch.tensor([vs[0] // 2, vs[1] // 2, vs[2] // 2], dtype=torch.float64, device=p.device)
    rel_xyz = (p - c).flip(-1)  # (n, 3) x, y, z
    # P(r2) = sum_i g(R r - rel_i) = sum_i g(r - R^T rel_i): atoms at R^T rel_i
    moved = torch.einsum("mji,nj->mni", r, rel_xyz)  # (m, n, 3) = (R^T rel)
    ys = torch.arange(h, dtype=torch.float64, device=p.device) - h // 2
    xs = torch.arange(w, dtype=torch.float64, device=p.device) - w // 2
    gy = torch.exp(-((ys[None, None, :] - moved[..., 1:2]) ** 2) / (2 * sigma * sigma))
    gx = torch.exp(-((xs[None, None, :] - moved[..., 0:1]) ** 2) / (2 * sigma * sigma))
    weight = a * math.sqrt(2.0 * math.pi) * sigma  # (n,)
    out = torch.einsum("mny,mnx,n->myx", gy, gx, weight)
    if single:
        out = out[0]
    return out.to(dtype)


def pseudo_atom_map(
    shape: int | tuple[int, int, int] = 64,
    *,
    n_atoms: int = 300,
    sigma: float = 1.5,
    pixel_size: float = 1.0,
    radius: float | None = None,
    min_distance: float = 0.0,
    mode: str = "chain",
    amplitude_range: tuple[float, float] = (0.5, 1.5),
    seed: int | None = 0,
    dtype: np.dtype | type = np.float32,
) -> tuple[np.ndarray, dict[str, Any]]:
    """A seeded pseudo-atom density with its planted truth.

    Parameters
    ----------
    shape
        Map shape ``(D, H, W)`` or cube size.
    n_atoms
        Number of pseudo-atoms.
    sigma
        Gaussian standard deviation, **Å** (voxels = ``sigma / pixel_size``).
    pixel_size
        Å per voxel.
    radius
        Radius (Å) of the ball holding the atom centres; default
        ``(min(shape) / 2 - 3 sigma_px - 1) * pixel_size`` so the whole density (and any
        rotation of it about the centre voxel) stays inside the box.
    min_distance
        Minimum distance between atoms, Å (``mode="uniform"`` only).
    mode
        ``"chain"`` (compact random walk with 3.8 Å steps, protein-like, asymmetric) or
        ``"uniform"`` (independent points in the ball).
    amplitude_range
        Atom peak heights drawn uniformly from this range.
    seed
        Same seed, same map.
    dtype
        NumPy dtype of the map.

    Returns
    -------
    volume
        `(D, H, W)` NumPy array.
    truth
        dict: ``positions`` `(n, 3)` float64 ``(z, y, x)`` voxel indices, ``positions_angstrom``
        (same times ``pixel_size``), ``amplitudes`` `(n,)`, ``sigma_px``, ``sigma_angstrom``,
        ``center`` ``(z, y, x)`` = ``N // 2`` per axis, ``pixel_size``, ``shape``, ``seed``,
        ``mode``.
    """
    d, h, w = _as_shape(shape)
    if pixel_size <= 0:
        raise InputError(f"pixel_size must be > 0 Å, got {pixel_size}")
    sigma_px = sigma / pixel_size
    center = np.array([d // 2, h // 2, w // 2], dtype=np.float64)
    r_px = radius / pixel_size if radius is not None else min(d, h, w) / 2.0 - 3.0 * sigma_px - 1.0
    if r_px <= 0:
        raise InputError(f"box {(d, h, w)} too small for sigma {sigma} Å at {pixel_size} Å/voxel")
    rng = np.random.default_rng(seed)
    pos = pseudo_atom_positions(
        n_atoms,
        radius=r_px,
        center=tuple(center),
        min_distance=min_distance / pixel_size,
        mode=mode,
        bond_length=3.8 / pixel_size,
        seed=rng,
    )
    amps = rng.uniform(amplitude_range[0], amplitude_range[1], size=n_atoms)
    vol = render_gaussians(pos, (d, h, w), sigma=sigma_px, amplitudes=amps, dtype=torch.float64)
    truth = {
        "positions": pos,
        "positions_angstrom": pos * pixel_size,
        "amplitudes": amps,
        "sigma_px": sigma_px,
        "sigma_angstrom": float(sigma),
        "center": center,
        "pixel_size": float(pixel_size),
        "shape": (d, h, w),
        "seed": seed,
        "mode": mode,
    }
    return vol.numpy().astype(dtype), truth

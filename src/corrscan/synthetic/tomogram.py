"""Synthetic tomograms with planted, rotated template copies and a missing wedge (seeded).

The template is a pseudo-atom density (:func:`corrscan.synthetic.density.pseudo_atom_map`,
a sum of Gaussians, scaled to a peak of 1). Each copy is rendered **analytically** at its
rotation (a rotated Gaussian is a Gaussian), so the planted truth carries no interpolation
error: copy ``k`` at voxel ``p_k`` with rotation ``R_k`` is

    ``V(x) = sum_i a_i exp(-|x - p_k - R_k (q_i - c)|^2 / (2 sigma^2))``

(vectors ``(x, y, z)``; ``q_i`` the template's atom positions, ``c = S // 2``), i.e. exactly
the template rotated by ``R_k`` about its centre voxel (``corrscan.match3d`` convention) with
its centre voxel at ``p_k``. Then white Gaussian noise of standard deviation ``noise_std`` is
added and, optionally, the whole volume passes through a continuous missing wedge (beam along
z, tilt axis y by default; frequencies whose tilt angle lies outside ``wedge`` are removed).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import torch

from corrscan.core.fourier import fftfreq_grid
from corrscan.errors import InputError
from corrscan.synthetic.density import pseudo_atom_map, render_gaussians

__all__ = ["missing_wedge_mask", "random_rotations", "simulate_tomogram"]


def random_rotations(n: int, rng: np.random.Generator) -> np.ndarray:
    """``(n, 3, 3)`` uniformly random rotations (normalised Gaussian quaternions)."""
    q = rng.normal(size=(n, 4))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    w, x, y, z = q.T
    r = np.empty((n, 3, 3))
    r[:, 0] = np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)], -1)
    r[:, 1] = np.stack([2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)], -1)
    r[:, 2] = np.stack([2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], -1)
    return r


def missing_wedge_mask(
    shape: tuple[int, int, int], wedge: tuple[float, float], tilt_axis: str = "y"
) -> np.ndarray:
    """Binary continuous-wedge mask on the ``rfftn`` grid of ``shape`` (1 = measured)."""
    lo, hi = wedge
    if not -90.0 <= lo < hi <= 90.0:
        raise InputError(f"wedge must satisfy -90 <= min < max <= 90, got {wedge}")
    k = fftfreq_grid(shape, rfft=True, dtype=torch.float64).numpy()
    kz, ky, kx = k[..., 0], k[..., 1], k[..., 2]
    u = kx if tilt_axis == "y" else -ky
    ang = np.degrees(np.arctan2(-kz, u))
    ang = np.where(ang > 90.0, ang - 180.0, ang)
    ang = np.where(ang <= -90.0, ang + 180.0, ang)
    ok = ((ang >= lo - 1e-9) & (ang <= hi + 1e-9)) | ((u == 0) & (kz == 0))
    return ok.astype(np.float32)


def _place(
    shape: tuple[int, int, int],
    n: int,
    box: tuple[int, int, int],
    min_sep: float,
    rng: np.random.Generator,
) -> np.ndarray:
    lo = np.array([b // 2 for b in box])
    hi = np.array(shape) - np.array(box) + lo  # exclusive: copy fully inside
    if np.any(hi <= lo):
        raise InputError(f"tomogram {shape} too small for template box {box}")
    pts: list[np.ndarray] = []
    for _ in range(20000):
        if len(pts) == n:
            break
        p = rng.integers(lo, hi)
        if all(np.linalg.norm(p - q) >= min_sep for q in pts):
            pts.append(p)
    if len(pts) < n:
        raise InputError(
            f"could not place {n} copies {min_sep:.1f} voxels apart in {shape}: "
            "use fewer copies or a larger tomogram"
        )
    return np.asarray(pts, dtype=np.int64)


def simulate_tomogram(
    shape: int | tuple[int, int, int] = 48,
    *,
    template_shape: int | tuple[int, int, int] = 12,
    n_particles: int = 4,
    rotations: np.ndarray | None = None,
    positions: np.ndarray | None = None,
    noise_std: float = 0.3,
    wedge: tuple[float, float] | None = (-60.0, 60.0),
    tilt_axis: str = "y",
    n_atoms: int = 40,
    sigma: float = 1.2,
    pixel_size: float = 1.0,
    min_separation: float | None = None,
    seed: int = 0,
) -> tuple[np.ndarray, dict[str, Any]]:
    """A noisy tomogram with rotated template copies at known positions.

    Parameters
    ----------
    shape
        Tomogram ``(D, H, W)`` (or a cube size).
    template_shape
        Template box ``(S0, S1, S2)`` (or a cube size).
    n_particles
        Number of copies.
    rotations
        ``(n, 3, 3)`` rotations of the copies (default uniformly random).
    positions
        ``(n, 3)`` ``(z, y, x)`` voxel positions of the copies' centre voxels (default random,
        copies fully inside and ``min_separation`` apart).
    noise_std
        Standard deviation of the white noise (template peak = 1).
    wedge
        Measured tilt range in degrees (``None``: no missing wedge).
    tilt_axis
        ``"y"`` or ``"x"``.
    n_atoms, sigma
        Pseudo-atoms of the template and their Gaussian width (Å).
    pixel_size
        Å per voxel.
    min_separation
        Minimum distance between copies in voxels (default the largest template size).
    seed
        Seed of everything random.

    Returns
    -------
    tomogram
        ``(D, H, W)`` float32.
    truth
        ``template`` (S0, S1, S2) float32, ``template_mask`` (sphere, radius ``min(S)//2``),
        ``positions`` (n, 3) int64 ``(z, y, x)``, ``rotations`` (n, 3, 3) float64, ``table``
        (DataFrame ``z, y, x`` + matrix), ``clean`` (noise-free, no wedge), ``wedge``,
        ``noise_std``, ``pixel_size``, ``seed``.
    """
    shp = (shape,) * 3 if isinstance(shape, int) else tuple(int(s) for s in shape)
    tsh = (
        (template_shape,) * 3
        if isinstance(template_shape, int)
        else tuple(int(s) for s in template_shape)
    )
    if len(shp) != 3 or len(tsh) != 3:
        raise InputError("shape and template_shape must be 3D")
    rng = np.random.default_rng(seed)
    template, info = pseudo_atom_map(
        tsh, n_atoms=n_atoms, sigma=sigma, pixel_size=pixel_size, seed=int(rng.integers(2**31))
    )
    scale = float(np.abs(template).max()) or 1.0
    template = (template / scale).astype(np.float32)
    atoms = np.asarray(info["positions"], dtype=np.float64)  # (m, 3) zyx
    amps = np.asarray(info["amplitudes"], dtype=np.float64) / scale
    sigma_px = float(info["sigma_px"])
    centre = np.array([s // 2 for s in tsh], dtype=np.float64)

    if rotations is None:
        rotations = random_rotations(n_particles, rng)
    rotations = np.asarray(rotations, dtype=np.float64).reshape(-1, 3, 3)
    n = len(rotations)
    if positions is None:
        sep = float(max(tsh)) if min_separation is None else float(min_separation)
        positions = _place(shp, n, tsh, sep, rng)
    positions = np.asarray(positions, dtype=np.int64).reshape(-1, 3)
    if len(positions) != n:
        raise InputError(f"{len(positions)} positions for {n} rotations")

    clean = torch.zeros(shp, dtype=torch.float64)
    rel_xyz = (atoms - centre)[:, ::-1]  # (m, 3) x, y, z
    for p, r in zip(positions, rotations, strict=True):  # loop over copies, not voxels
        moved = (rel_xyz @ r.T)[:, ::-1] + centre  # rotated atoms in the copy's box (z, y, x)
        start = p - centre.astype(np.int64)
        lo = np.maximum(start, 0)
        hi = np.minimum(start + np.array(tsh), np.array(shp))
        local = render_gaussians(
            moved - (lo - start),
            tuple(int(v) for v in hi - lo),
            sigma=sigma_px,
            amplitudes=amps,
            dtype=torch.float64,
        )
        clean[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]] += local
    vol = clean + noise_std * torch.from_numpy(rng.standard_normal(shp))
    if wedge is not None:
        w = torch.from_numpy(missing_wedge_mask(shp, wedge, tilt_axis)).to(torch.float64)
        vol = torch.fft.irfftn(torch.fft.rfftn(vol) * w, s=shp)
    grids = np.meshgrid(*(np.arange(s) - s // 2 for s in tsh), indexing="ij")
    rmask = min(tsh) // 2
    mask = (sum(g.astype(np.float64) ** 2 for g in grids) <= rmask * rmask).astype(np.float32)
    table = pd.DataFrame({"z": positions[:, 0], "y": positions[:, 1], "x": positions[:, 2]})
    for i in range(3):
        for j in range(3):
            table[f"r{i}{j}"] = rotations[:, i, j]
    truth = {
        "template": template,
        "template_mask": mask,
        "positions": positions,
        "rotations": rotations,
        "table": table,
        "clean": clean.numpy().astype(np.float32),
        "wedge": wedge,
        "noise_std": noise_std,
        "pixel_size": pixel_size,
        "seed": seed,
    }
    return vol.numpy().astype(np.float32), truth

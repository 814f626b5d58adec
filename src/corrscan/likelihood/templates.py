"""Templates on the polar grid from a 3D map or an atomic model, and atom-file readers.

Every template is the 2D transform of a projection of the structure seen along a viewing
direction ``(phi, theta, psi=0)`` (core Euler convention: the transform of the structure at
``R (k_x, k_y, 0)``), L2-normalised on the grid (``Σ ω |T|² = 1``). The box mean is not
removed (it does not commute with the in-plane rotation; see :func:`finish_templates`).

* Maps: type-2 NUFFT of the map at the slice points (:func:`~corrscan.likelihood.transform.
  volume_nufft`), batched over all templates at once.
* Atoms: Gaussian atoms of standard deviation ``σ`` (Å) with unit mass, evaluated analytically:
  ``T(k) = (1/n) Σ_i exp(−2π² σ_i² |k|²) exp(−2πi (R k)·a_i)`` (``k`` in cycles/Å).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from corrscan.core.arrays import DeviceLike, resolve_device
from corrscan.core.io.structure import read_atoms  # re-exported (moved to the core layer)
from corrscan.errors import InputError
from corrscan.likelihood.grid import PolarGrid, ViewingGrid, euler_zyz_to_matrix
from corrscan.likelihood.stacks import PolarTemplates
from corrscan.likelihood.transform import fill_hermitian, volume_to_polar_templates

__all__ = [
    "atoms_to_polar_templates",
    "finish_templates",
    "map_to_polar_templates",
    "read_atoms",
    "templates_from_file",
]


def finish_templates(raw: torch.Tensor, grid: PolarGrid) -> torch.Tensor:
    """L2-normalise templates on the grid (``Σ ω |T|² = 1``), `(S, N, W)`.

    The box mean is deliberately **not** removed: the box is fixed in the image frame, so
    ``T − T(0)/N² · 𝟙̂`` rotated by ψ is not the mean-removed projection at ψ (it would carry
    the box rotated by ψ, a pose-dependent error of up to 0.6 % in the noise-free CC at the
    true pose). The image mean / offset is handled in the image frame instead: images are
    mean-removed, and the likelihood's offset term ``β · 𝟙̂`` is exact for every pose.
    """
    w = torch.as_tensor(grid.point_weights, device=raw.device, dtype=raw.real.dtype)
    norm = torch.sqrt((w[:, None] * raw.abs() ** 2).sum(dim=(-2, -1)))
    if bool((norm <= 0).any()) or not bool(torch.isfinite(norm).all()):
        raise InputError("a template is identically zero on the grid (empty map or model?)")
    return raw / norm[:, None, None]


def map_to_polar_templates(
    volume,
    grid: PolarGrid,
    viewing: ViewingGrid,
    *,
    voxel_size: float | None = None,
    name: str = "map",
    device: DeviceLike = "cpu",
    precision: str = "single",
) -> PolarTemplates:
    """Templates from a cubic 3D map `(D, D, D)` (z, y, x), voxel size = image pixel size.

    ``voxel_size`` (Å) is checked against ``grid.pixel_size`` when given; resample the map
    first if they differ.
    """
    from corrscan.core.arrays import to_tensor

    vol = to_tensor(volume, dtype=torch.float64, name="map")
    if vol.ndim != 3 or len(set(vol.shape)) != 1:
        raise InputError(f"map must be a cubic (D, D, D) volume, got {tuple(vol.shape)}")
    if voxel_size is not None and abs(voxel_size - grid.pixel_size) > 1e-3 * grid.pixel_size:
        raise InputError(
            f"map voxel size {voxel_size} Å differs from the image pixel size "
            f"{grid.pixel_size} Å: resample the map (e.g. Fourier crop/pad) first"
        )
    if not bool(torch.isfinite(vol).all()):
        raise InputError("map contains NaN/Inf")
    dev = resolve_device(device)
    cdt = torch.complex128 if precision == "double" else torch.complex64
    raw = volume_to_polar_templates(vol.to(dev), grid, viewing.euler, dtype=torch.complex128)
    data = finish_templates(raw, grid).to(cdt)
    return PolarTemplates(
        data.cpu(), grid, np.asarray(viewing.euler), np.asarray(viewing.weights), name
    )


def atoms_to_polar_templates(
    coordinates,
    grid: PolarGrid,
    viewing: ViewingGrid,
    *,
    sigma: float | np.ndarray = 1.5,
    center: bool = True,
    name: str = "model",
    device: DeviceLike = "cpu",
    precision: str = "single",
    batch_size: int | None = None,
) -> PolarTemplates:
    """Templates from atom coordinates `(n_atoms, 3)` ``(x, y, z)`` in Å, Gaussian atoms.

    Parameters
    ----------
    sigma
        Gaussian standard deviation per atom (Å), scalar or `(n_atoms,)`.
    center
        Subtract the mean coordinate (the model's centre goes to the box centre).
    batch_size
        Templates per batch (default: about 64 MB of phase table per batch).
    """
    a = torch.as_tensor(np.array(coordinates, dtype=np.float64))
    if a.ndim != 2 or a.shape[1] != 3 or a.shape[0] == 0:
        raise InputError(f"atom coordinates must be (n_atoms, 3) Å, got {tuple(a.shape)}")
    if center:
        a = a - a.mean(dim=0, keepdim=True)
    n_atoms = a.shape[0]
    sig = np.broadcast_to(np.asarray(sigma, dtype=np.float64), (n_atoms,))
    if np.any(sig <= 0):
        raise InputError("atom sigma must be positive (Å)")
    dev = resolve_device(device)
    real = torch.float64 if precision == "double" else torch.float32
    cdt = torch.complex128 if precision == "double" else torch.complex64
    kx, ky = grid.points(half=True)
    kxy = torch.as_tensor(
        np.stack([kx.ravel(), ky.ravel()], 1) / grid.pixel_size, device=dev, dtype=torch.float64
    )  # (P, 2) cycles/Å
    k2 = (kxy**2).sum(dim=1)
    p = kxy.shape[0]
    rot = euler_zyz_to_matrix(viewing.euler).to(dev)  # (S, 3, 3)
    a = a.to(dev)
    s_tot = rot.shape[0]
    if batch_size is None:
        batch_size = max(1, int(128 * 2**20 // (12 * p * n_atoms)))
    uniq, inv = np.unique(sig, return_inverse=True)
    groups = [torch.as_tensor(np.nonzero(inv == u)[0], device=dev) for u in range(len(uniq))]
    envs = [torch.exp(-2.0 * np.pi**2 * sg**2 * k2).to(real) for sg in uniq]
    kxy_r = (2.0 * np.pi * kxy).to(real)
    out = torch.empty(
        (s_tot, grid.n_shells, grid.n_inplanes // 2), dtype=torch.complex128, device=dev
    )
    for s0 in range(0, s_tot, batch_size):
        r = rot[s0 : s0 + batch_size]
        # (R k)·a = k · (R^T a) for k in the xy plane: need (R^T a)_xy = (a @ R)_xy
        b = torch.einsum("ai,sij->sja", a, r)[:, :2].to(real)  # (Sb, 2, A)
        ph = torch.matmul(kxy_r, b)  # (Sb, P, A) radians
        re = torch.zeros((r.shape[0], p), dtype=real, device=dev)
        im = torch.zeros_like(re)
        for sel, env in zip(groups, envs, strict=True):
            phs = ph if len(groups) == 1 else ph[:, :, sel]
            re += torch.cos(phs).sum(dim=-1) * env
            im -= torch.sin(phs).sum(dim=-1) * env
        val = torch.complex(re.to(torch.float64), im.to(torch.float64)) / n_atoms
        out[s0 : s0 + r.shape[0]] = val.reshape(r.shape[0], grid.n_shells, -1)
    raw = fill_hermitian(out)
    data = finish_templates(raw, grid).to(cdt)
    return PolarTemplates(
        data.cpu(), grid, np.asarray(viewing.euler), np.asarray(viewing.weights), name
    )


def templates_from_file(
    path: str | Path,
    grid: PolarGrid,
    viewing: ViewingGrid,
    *,
    atom_selection: str = "all",
    atom_sigma: float = 1.5,
    device: DeviceLike = "cpu",
    precision: str = "single",
) -> PolarTemplates:
    """Templates from a map (``.mrc/.map/.mrcs``) or an atom model (``.pdb/.cif``)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in (".mrc", ".map", ".mrcs", ".rec"):
        from corrscan.likelihood.particles import read_mrc

        vol, voxel = read_mrc(path)
        return map_to_polar_templates(
            vol, grid, viewing, voxel_size=voxel, name=path.stem, device=device, precision=precision
        )
    atoms = read_atoms(path, selection=atom_selection)
    return atoms_to_polar_templates(
        atoms[["x", "y", "z"]].to_numpy(),
        grid,
        viewing,
        sigma=atom_sigma,
        name=path.stem,
        device=device,
        precision=precision,
    )

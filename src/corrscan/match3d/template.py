"""Templates for 3D matching from atomic models, and phase-scrambled (noise) templates.

:func:`build_template` reads a PDB / mmCIF / GRO model (:mod:`corrscan.core.io.structure`),
renders it with :func:`corrscan.core.atoms.atoms_to_volume` (Z-weighted Gaussian atoms,
voxel-integrated, weight per voxel), then optionally low-passes, inverts the contrast and
phase-scrambles it, in that order. The model's centre of mass sits at voxel ``S // 2``, the
template centre that :func:`corrscan.match3d.match_template` reports positions for.

:func:`phase_scramble` keeps a map's amplitude spectrum and replaces its phases by those of a
seeded white-noise field: a template with the same power spectrum (and mean) but no structure,
used for phase-scrambled background correction (:mod:`corrscan.match3d.background`) and as a
negative control.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch

from corrscan.core.arrays import DeviceLike, resolve_device, unwrap
from corrscan.core.atoms import (
    atom_positions_voxels,
    atom_weights,
    atoms_to_volume,
    b_factor_to_sigma,
)
from corrscan.core.fourier import bandpass_filter, next_fast_len
from corrscan.core.io.structure import read_atoms
from corrscan.errors import InputError

__all__ = ["build_template", "default_box_size", "phase_scramble"]

#: smallest default box edge (voxels)
MIN_BOX = 8


def phase_scramble(volume: Any, seed: int = 42) -> Any:
    """The map with its Fourier phases replaced by those of seeded white noise.

    ``out = irfftn(|F| exp(i angle(N)))`` with ``F = rfftn(volume)`` and ``N = rfftn(noise)``,
    ``noise`` standard normal from ``numpy.random.default_rng(seed)`` with the volume's shape.
    The noise field is real, so its phases are Hermitian-symmetric and the result is real with
    exactly the input's amplitude spectrum; the DC term (the sum, hence the mean) is kept as it
    is. Same seed and shape, same phases (on every device).

    Parameters
    ----------
    volume
        Real array of any dimension, e.g. a template `(D, H, W)` (NumPy/CuPy/torch).
    seed
        Seed of the noise field (pyTME uses 42).

    Returns
    -------
    scrambled
        Same shape, dtype (floating) and array kind as ``volume``.
    """
    v, restore = unwrap(volume, name="volume")
    if v.is_complex() or v.ndim == 0 or v.numel() < 2:
        raise InputError(f"volume must be a real array with >= 2 elements, got {tuple(v.shape)}")
    if not bool(torch.isfinite(v).all()):
        raise InputError("volume contains NaN/Inf")
    shape = tuple(v.shape)
    dims = tuple(range(v.ndim))
    x = v.to(torch.float64)
    ft = torch.fft.rfftn(x, dim=dims)
    noise = np.random.default_rng(int(seed)).standard_normal(shape)
    nft = torch.fft.rfftn(torch.from_numpy(noise).to(x.device), dim=dims)
    mag = nft.abs()
    phase = torch.where(mag > 0, nft / mag.clamp_min(1e-300), torch.ones_like(nft))
    out_ft = ft.abs() * phase
    dc = (0,) * v.ndim
    out_ft[dc] = ft[dc]
    out = torch.fft.irfftn(out_ft, s=shape, dim=dims)
    return restore(out.to(v.dtype))


def _even_fast_len(n: int) -> int:
    """Smallest even 2,3,5,7-smooth integer ``>= n``."""
    m = next_fast_len(max(int(n), 2))
    while m % 2:
        m = next_fast_len(m + 1)
    return m


def default_box_size(xyz: Any, pixel_size: float) -> int:
    """Default cubic box edge (voxels) for atoms `(n, 3)` Å: twice the model's extent.

    ``extent = max over axes of (max - min coordinate) / pixel_size``; the edge is the
    smallest even 2,3,5,7-smooth integer ``>= max(ceil(2 * extent), 8)`` (pyTME also boxes
    models at twice their size). Any centre inside the model's bounding box (e.g. its centre
    of mass) then keeps every atom inside the box.
    """
    a = np.asarray(xyz, dtype=np.float64).reshape(-1, 3)
    extent = float((a.max(0) - a.min(0)).max()) / float(pixel_size)
    return _even_fast_len(max(math.ceil(2.0 * extent - 1e-9), MIN_BOX))


def _atoms_from(path_or_atoms: Any, selection: str) -> tuple[np.ndarray, Any]:
    """``(xyz (n, 3) Å, elements or weights (n,))`` from a path, a DataFrame or a tuple."""
    if isinstance(path_or_atoms, (str, os.PathLike)):
        path_or_atoms = read_atoms(path_or_atoms, selection=selection)
    if isinstance(path_or_atoms, pd.DataFrame):
        missing = {"x", "y", "z", "element"} - set(path_or_atoms.columns)
        if missing:
            raise InputError(f"atom table lacks columns {sorted(missing)} (see read_atoms)")
        return path_or_atoms[["x", "y", "z"]].to_numpy(np.float64), path_or_atoms["element"]
    if isinstance(path_or_atoms, tuple) and len(path_or_atoms) == 2:
        return np.asarray(path_or_atoms[0], dtype=np.float64), path_or_atoms[1]
    raise InputError(
        "path_or_atoms must be a model file path, a read_atoms DataFrame or a tuple "
        f"(xyz (n, 3) Å, elements or weights (n,)), got {type(path_or_atoms).__name__}"
    )


def _sphere(shape: tuple[int, int, int], radius: float) -> np.ndarray:
    grids = np.meshgrid(*(np.arange(s) - s // 2 for s in shape), indexing="ij")
    r2 = sum(g.astype(np.float64) ** 2 for g in grids)
    return (r2 <= radius * radius + 1e-9).astype(np.float32)


def build_template(
    path_or_atoms: Any,
    pixel_size: float,
    *,
    box: int | Sequence[int] | None = None,
    lowpass_angstrom: float | None = None,
    invert_contrast: bool = False,
    center: str | Sequence[float] | None = "mass",
    scramble_phases: bool = False,
    seed: int = 42,
    selection: str = "all",
    b_factor: float | Any = 20.0,
    device: DeviceLike = "cpu",
) -> tuple[np.ndarray, np.ndarray]:
    """A 3D matching template (and a spherical mask) from an atomic model.

    Parameters
    ----------
    path_or_atoms
        A ``.pdb/.ent/.cif/.mmcif/.gro`` file, a :func:`~corrscan.core.io.structure.read_atoms`
        DataFrame, or a tuple ``(xyz (n, 3) Å (x, y, z), elements or weights (n,))``.
    pixel_size
        Å per voxel of the template (use the tomogram's).
    box
        Box edge (int, cube) or ``(D, H, W)``; default :func:`default_box_size` (twice the
        model's extent, even, FFT-friendly).
    lowpass_angstrom
        Gaussian low-pass cut-off in Å (pyTME's filter shape: ``exp(-ln2 k^2 / k_c^2)``, 0.5 at
        ``k_c = 1 / lowpass_angstrom``); ``None``: none. Recommended: at least
        ``2 * pixel_size``, since single atoms are much smaller than tomogram voxels.
    invert_contrast
        Multiply by -1 (dark protein, as in most tomograms).
    center
        ``"mass"`` (Z-weighted centre of mass at voxel ``S // 2``), ``"mean"``, an ``(x, y, z)``
        Å point placed at ``S // 2``, or ``None`` (file coordinates, Å origin at voxel 0).
    scramble_phases
        Return :func:`phase_scramble` of the template (a noise template with its spectrum).
    seed
        Seed of the phase scrambling.
    selection
        Atom selection when reading a file (``all``, ``heavy``, ``CA``, ``backbone``).
    b_factor
        Å², scalar or per atom: Gaussian atoms of ``sigma = sqrt(B / (8 pi^2))``.
    device
        Where to render.

    Returns
    -------
    volume
        `(D, H, W)` float32 NumPy template (weight per voxel, atomic numbers as weights).
    mask
        `(D, H, W)` float32 binary sphere at ``S // 2`` whose radius is the largest atom
        distance from the centre plus ``3 sigma + 1`` voxels (plus half the low-pass cut-off),
        capped at ``min(S) // 2`` (rotation-invariant, as FLCSphericalMask needs).
    """
    if not (isinstance(pixel_size, (int, float, np.floating)) and pixel_size > 0):
        raise InputError(f"pixel_size must be > 0 Å, got {pixel_size!r}")
    xyz, weights = _atoms_from(path_or_atoms, selection)
    xyz = np.array(xyz, dtype=np.float64)  # a writable copy
    if xyz.ndim != 2 or xyz.shape[1] != 3 or len(xyz) == 0:
        raise InputError(f"atoms must be (n, 3) (x, y, z) Å, got {xyz.shape}")
    if box is None:
        shape = (default_box_size(xyz, pixel_size),) * 3
    elif isinstance(box, (int, np.integer)):
        shape = (int(box),) * 3
    else:
        shape = tuple(int(b) for b in box)
    if len(shape) != 3 or min(shape) < 2:
        raise InputError(f"box must be an int >= 2 or (D, H, W), got {box!r}")
    dev = resolve_device(device)
    vol = atoms_to_volume(
        torch.as_tensor(xyz, device=dev), weights, float(pixel_size), shape,
        center=center, b_factor=b_factor, dtype=torch.float64,
    )  # fmt: skip
    if lowpass_angstrom is not None:
        filt = bandpass_filter(
            shape, pixel_size=float(pixel_size), lowpass_angstrom=float(lowpass_angstrom),
            mode="gaussian", device=dev, dtype=torch.float64,
        )  # fmt: skip
        vol = torch.fft.irfftn(torch.fft.rfftn(vol) * filt, s=shape)
    if invert_contrast:
        vol = -vol
    if scramble_phases:
        vol = phase_scramble(vol, seed=seed)
    # mask: sphere around the centre voxel holding the (blurred) model
    pos = atom_positions_voxels(
        torch.as_tensor(xyz, dtype=torch.float64),
        atom_weights(weights, len(xyz)),
        float(pixel_size),
        shape,
        center,
    ).numpy()
    c = np.array([s // 2 for s in shape], dtype=np.float64)
    sig_px = float(np.max(b_factor_to_sigma(b_factor))) / float(pixel_size)
    radius = float(np.sqrt(((pos - c) ** 2).sum(1)).max()) + 3.0 * sig_px + 1.0
    if lowpass_angstrom is not None:
        radius += 0.5 * float(lowpass_angstrom) / float(pixel_size)
    mask = _sphere(shape, min(radius, min(shape) // 2))
    return vol.cpu().numpy().astype(np.float32), mask

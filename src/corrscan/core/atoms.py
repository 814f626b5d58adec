"""A 3D density map from atoms: a sum of voxel-integrated Gaussian atoms.

Atom model (a simple **Z-weighted Gaussian**, not tabulated scattering factors): atom ``i``
is an isotropic Gaussian of total weight ``w_i`` and standard deviation
``sigma_i = sqrt(B_i / (8 pi^2))`` Å (the Debye-Waller displacement of the B-factor ``B_i``
in Å²). By default ``w_i`` is the atomic number ``Z`` of the element, a rough stand-in for the
scattering power that is adequate for low-resolution templates (low-pass filter the map); pass
your own weights for anything finer.

Sampling: the value of voxel ``v`` is the **integral** of the atom over the voxel's cube,
separable per axis::

    V[v] = sum_i w_i prod_a (Phi((v_a + 1/2 - p_ia) / s_i) - Phi((v_a - 1/2 - p_ia) / s_i))

(``Phi`` the standard normal CDF, ``p_i`` the atom's position in voxel indices, ``s_i =
sigma_i / pixel_size``), so any width works, even atoms much smaller than a voxel (then the
atom's weight falls into the voxel containing it), and every atom inside the box contributes
exactly its weight: ``V.sum() == sum(w)``. The map is weight **per voxel** (divide by
``pixel_size ** 3`` for a density per Å³). Each atom touches only the ``k^3`` voxels within
``cutoff`` standard deviations (its per-axis profile renormalised to sum to 1 there); atoms are
processed in vectorised chunks (bounded memory), no Python loop over atoms.

Coordinates: atoms are ``(x, y, z)`` in Å (PDB order); the map is ``(D, H, W)`` = ``(z, y, x)``
(core convention). ``center=None``: Å ``(0, 0, 0)`` is the centre of voxel ``(0, 0, 0)``, so an
atom at ``(x, y, z)`` lands at voxel index ``(z, y, x) / pixel_size``; otherwise the given point
(or the centre of mass) goes to the box centre ``N // 2`` per axis (match3d's template centre).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from corrscan.core.arrays import DeviceLike, as_numpy, resolve_device, unwrap
from corrscan.errors import InputError

__all__ = [
    "ATOMIC_NUMBERS",
    "atom_positions_voxels",
    "atom_weights",
    "atoms_to_volume",
    "b_factor_to_sigma",
    "element_weights",
]

_SYMBOLS = (
    "H He Li Be B C N O F Ne Na Mg Al Si P S Cl Ar K Ca Sc Ti V Cr Mn Fe Co Ni Cu Zn Ga Ge As "
    "Se Br Kr Rb Sr Y Zr Nb Mo Tc Ru Rh Pd Ag Cd In Sn Sb Te I Xe Cs Ba La Ce Pr Nd Pm Sm Eu "
    "Gd Tb Dy Ho Er Tm Yb Lu Hf Ta W Re Os Ir Pt Au Hg Tl Pb Bi Po At Rn Fr Ra Ac Th Pa U Np "
    "Pu Am Cm Bk Cf Es Fm Md No Lr"
).split()

#: upper-case element symbol -> atomic number (1..103; deuterium ``D`` counts as hydrogen)
ATOMIC_NUMBERS: dict[str, int] = {s.upper(): i + 1 for i, s in enumerate(_SYMBOLS)} | {"D": 1}


def element_weights(elements: Sequence[str] | Any) -> np.ndarray:
    """Atomic numbers `(n,)` float64 of element symbols (case-insensitive, e.g. ``"Fe"``).

    Unknown symbols raise :class:`InputError` listing them (pass numeric weights instead).
    """
    sym = [str(e).strip().upper() for e in np.asarray(elements, dtype=object).ravel()]
    bad = sorted({s for s in sym if s not in ATOMIC_NUMBERS})
    if bad:
        raise InputError(
            f"unknown element symbol(s) {bad[:10]}: fix the model's element column or pass "
            "numeric weights"
        )
    return np.array([ATOMIC_NUMBERS[s] for s in sym], dtype=np.float64)


def b_factor_to_sigma(b_factor: Any) -> Any:
    """Gaussian standard deviation (Å) of a B-factor (Å²): ``sqrt(B / (8 pi^2))``."""
    return np.sqrt(np.asarray(b_factor, dtype=np.float64) / (8.0 * math.pi**2))


def atom_weights(weights: Any, n: int, device: DeviceLike = "cpu") -> torch.Tensor:
    """Weights `(n,)` float64 tensor: numbers (a scalar is broadcast), element symbols
    (atomic numbers, :func:`element_weights`) or ``None`` (all 1)."""
    device = resolve_device(device)
    if weights is None:
        return torch.ones(n, dtype=torch.float64, device=device)
    if hasattr(weights, "to_numpy"):  # pandas
        a = np.asarray(weights.to_numpy())
    elif isinstance(weights, (str, bytes)):
        a = np.asarray([weights])
    else:
        try:
            a = as_numpy(weights)
        except InputError:
            a = np.asarray(weights)
    a = a.ravel()
    if a.dtype.kind in "OUS":
        w = element_weights(a)
    else:
        w = np.asarray(a, dtype=np.float64)
    if w.shape[0] == 1:
        w = np.repeat(w, n)
    if w.shape != (n,):
        raise InputError(f"got {w.shape[0]} weights/elements for {n} atoms")
    return torch.as_tensor(w.copy(), device=device)


def _as_shape(shape: int | Sequence[int]) -> tuple[int, int, int]:
    s = (int(shape),) * 3 if isinstance(shape, (int, np.integer)) else tuple(int(v) for v in shape)
    if len(s) != 3 or min(s) < 1:
        raise InputError(f"shape must be an int or (D, H, W) with positive sizes, got {shape!r}")
    return s  # type: ignore[return-value]


def atom_positions_voxels(
    xyz: torch.Tensor,
    weights: torch.Tensor,
    pixel_size: float,
    shape: tuple[int, int, int],
    center: str | Sequence[float] | None,
) -> torch.Tensor:
    """Atom positions in voxel indices `(n, 3)` ``(z, y, x)`` float64 (see module docstring).

    ``xyz`` `(n, 3)` Å ``(x, y, z)``; ``center``: ``None``, ``"mass"`` (weight-weighted
    centroid), ``"mean"`` (plain centroid) or an ``(x, y, z)`` point in Å, placed at voxel
    ``N // 2``.
    """
    zyx = xyz.flip(-1) / pixel_size
    if center is None:
        return zyx
    if isinstance(center, str):
        if center == "mass":
            total = weights.sum()
            if not bool(torch.isfinite(total)) or float(total) == 0.0:
                raise InputError("center='mass' needs weights with a non-zero sum")
            c = (weights[:, None] * zyx).sum(0) / total
        elif center == "mean":
            c = zyx.mean(0)
        else:
            raise InputError(f"center must be None, 'mass', 'mean' or (x, y, z) Å, got {center!r}")
    else:
        pt = torch.as_tensor(np.asarray(center, dtype=np.float64), device=xyz.device)
        if pt.shape != (3,) or not bool(torch.isfinite(pt).all()):
            raise InputError(f"center point must be finite (x, y, z) Å, got {center!r}")
        c = pt.flip(-1) / pixel_size
    box_c = torch.tensor([s // 2 for s in shape], dtype=torch.float64, device=xyz.device)
    return zyx - c + box_c


def atoms_to_volume(
    xyz: Any,
    weights: Any,
    pixel_size: float,
    shape: int | Sequence[int],
    *,
    center: str | Sequence[float] | None = None,
    b_factor: float | Any = 20.0,
    cutoff: float = 4.0,
    dtype: torch.dtype = torch.float32,
    device: DeviceLike = None,
    chunk_elements: int = 2**22,
) -> Any:
    """Density map `(D, H, W)` of Gaussian atoms (see the module docstring for the model).

    Parameters
    ----------
    xyz
        `(n, 3)` atom coordinates ``(x, y, z)`` in Å (NumPy/CuPy/torch).
    weights
        `(n,)` numeric weights, or `(n,)` element symbols (weight = atomic number ``Z``), or
        ``None`` (all 1). A scalar is broadcast.
    pixel_size
        Å per voxel (> 0).
    shape
        ``(D, H, W)`` or an int for a cube.
    center
        ``None`` (Å origin at voxel ``(0, 0, 0)``), ``"mass"`` (weighted centroid to voxel
        ``N // 2``), ``"mean"`` (plain centroid to ``N // 2``) or an ``(x, y, z)`` Å point to
        ``N // 2``.
    b_factor
        Å², scalar or `(n,)`, >= 0; ``sigma = sqrt(B / (8 pi^2))`` (default 20 Å² ->
        0.50 Å). ``B = 0`` puts each atom's weight in the voxel that contains it.
    cutoff
        Support of each atom in standard deviations (>= 1).
    dtype
        Result dtype (float64 also accumulates in float64; else float32).
    device
        Where to compute (default: that of ``xyz``).
    chunk_elements
        Bound on atoms x window voxels per vectorised chunk (memory ~16 bytes each).

    Returns
    -------
    volume
        `(D, H, W)` map, weight per voxel, same array kind as ``xyz``.
    """
    shp = _as_shape(shape)
    if not (isinstance(pixel_size, (int, float, np.floating)) and pixel_size > 0):
        raise InputError(f"pixel_size must be > 0 Å, got {pixel_size!r}")
    if not (cutoff >= 1.0 and math.isfinite(cutoff)):
        raise InputError(f"cutoff must be >= 1 standard deviation, got {cutoff!r}")
    p_in, restore = unwrap(xyz, dtype=torch.float64, name="xyz")
    dev = resolve_device(device) if device is not None else p_in.device
    p = p_in.to(dev)
    if p.ndim != 2 or p.shape[1] != 3 or p.shape[0] == 0:
        raise InputError(f"xyz must be (n_atoms, 3) (x, y, z) Å, got {tuple(p.shape)}")
    if not bool(torch.isfinite(p).all()):
        raise InputError("xyz contains NaN/Inf coordinates")
    n = p.shape[0]
    w = atom_weights(weights, n, dev)
    if not bool(torch.isfinite(w).all()):
        raise InputError("weights contain NaN/Inf")
    b = np.broadcast_to(np.asarray(b_factor, dtype=np.float64).ravel(), (n,))
    if not np.all(np.isfinite(b)) or np.any(b < 0):
        raise InputError("b_factor must be finite and >= 0 Å²")
    sig = torch.as_tensor(b_factor_to_sigma(b).copy(), device=dev) / float(pixel_size)
    sig = sig.clamp_min(1e-3)  # voxels; B = 0 -> a step (all weight in one voxel)
    pos = atom_positions_voxels(p, w, float(pixel_size), shp, center)  # (n, 3) z, y, x

    acc = torch.float64 if dtype == torch.float64 else torch.float32
    vol = torch.zeros(shp[0] * shp[1] * shp[2], dtype=acc, device=dev)
    r = math.ceil(cutoff * float(sig.max()) + 0.5)
    k = 2 * r + 1
    offs = torch.arange(-r, r + 1, device=dev, dtype=torch.float64)
    sizes = torch.tensor(shp, device=dev, dtype=torch.float64)
    strides = torch.tensor([shp[1] * shp[2], shp[2], 1], device=dev, dtype=torch.int64)
    chunk = max(1, int(chunk_elements) // k**3)
    inv_sqrt2 = 1.0 / math.sqrt(2.0)
    for s0 in range(0, n, chunk):  # chunks of atoms (bounded memory), vectorised inside
        pc, sc, wc = pos[s0 : s0 + chunk], sig[s0 : s0 + chunk], w[s0 : s0 + chunk]
        idx = torch.round(pc)[:, :, None] + offs  # (m, 3, k) voxel indices
        z = inv_sqrt2 / sc[:, None, None]
        prof = 0.5 * (
            torch.erf((idx + 0.5 - pc[:, :, None]) * z)
            - torch.erf((idx - 0.5 - pc[:, :, None]) * z)
        )
        prof = prof / prof.sum(-1, keepdim=True)  # exact weight per atom inside the box
        prof = torch.where((idx >= 0) & (idx < sizes[:, None]), prof, 0.0)
        flat_ax = idx.clamp_min(0).minimum(sizes[:, None] - 1).to(torch.int64) * strides[:, None]
        vals = (
            (wc[:, None, None, None] * prof[:, 0, :, None, None])
            * prof[:, 1, None, :, None]
            * prof[:, 2, None, None, :]
        )
        flat = (
            flat_ax[:, 0, :, None, None]
            + flat_ax[:, 1, None, :, None]
            + flat_ax[:, 2, None, None, :]
        )
        vol.index_add_(0, flat.reshape(-1), vals.reshape(-1).to(acc))
    return restore(vol.reshape(shp).to(dtype))

"""Z-slab selection and random voxel sampling for contrast limits.

The slab is the set of z slices ``z0 <= z < z1`` around the central slice ``c``:

- fixed radius ``r``: ``z0 = max(0, ceil(c - r))``, ``z1 = min(n_z, floor(c + r) + 1)``; with the
  default centre ``c = n_z / 2 - 0.5`` this is exactly ``2 r`` slices for even ``n_z`` and
  ``2 r + 1`` for odd ``n_z`` (at least one slice is always kept);
- ``None``: the whole volume;
- ``"computed"``: between the minima of the per-slice standard deviation curve that bracket
  the centre, found with a prominence relative to the curve's range (scale independent).

Samples are drawn uniformly **with replacement** from the finite voxels' positions, chunk of
slices by chunk of slices (the chunking depends on the shape only, so NumPy, Dask, Zarr and
MRC inputs give the same sample for the same seed), so only one chunk of a file is in memory
at a time and no index array of the slab's size is ever built.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Literal

import numpy as np

from corrscan.contrast.volumes import VolumeSource
from corrscan.errors import InputError

__all__ = [
    "Sample",
    "central_slice",
    "computed_slab",
    "draw_sample",
    "fixed_slab",
    "slab_bounds",
    "slice_std_curve",
]

ZRadius = int | None | Literal["auto", "computed"]

# Voxels per chunk of slices read at once (shape-only dependent: same sample for all inputs).
_CHUNK_VOXELS = 1 << 23
# Voxels drawn per batch inside a chunk (bounds index arrays to 1 MiB).
_BATCH = 1 << 17


def central_slice(n_z: int, central_z_slice: float | None) -> float:
    """Centre of the slab: ``central_z_slice`` if given (0 is valid), else ``n_z / 2 - 0.5``."""
    if central_z_slice is None:
        return 0.5 * n_z - 0.5
    c = float(central_z_slice)
    if not 0 <= c <= n_z - 1:
        raise InputError(f"central_z_slice={central_z_slice} outside the volume's 0..{n_z - 1}")
    return c


def fixed_slab(n_z: int, radius: int, center: float) -> tuple[int, int]:
    """``(z0, z1)`` of the slices within ``radius`` of ``center`` (at least one slice)."""
    z0 = max(0, math.ceil(center - radius))
    z1 = min(n_z, math.floor(center + radius) + 1)
    if z1 <= z0:  # radius 0 between two slices: keep the nearest one
        z0 = min(n_z - 1, max(0, round(center)))
        z1 = z0 + 1
    return z0, z1


def slice_std_curve(source: VolumeSource) -> np.ndarray:
    """Standard deviation of the finite voxels of every z slice, `(n_z,)` float64.

    Streams chunks of slices (float64 temporaries of about 16 MiB); all-NaN slices get NaN.
    """
    n_z, ny, nx = source.shape
    step = max(1, (1 << 21) // (ny * nx))
    out = np.empty(n_z, dtype=np.float64)
    for z in range(0, n_z, step):
        chunk = np.asarray(source.read(z, min(n_z, z + step)), dtype=np.float64)
        finite = np.isfinite(chunk)
        if finite.all():
            out[z : z + step] = chunk.std(axis=(1, 2))
        else:
            chunk[~finite] = np.nan
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                out[z : z + step] = np.nanstd(chunk, axis=(1, 2))
    return out


def computed_slab(
    std_curve: np.ndarray, center: float, *, relative_prominence: float = 0.05
) -> tuple[int, int]:
    """Slab between the std-curve minima bracketing ``center``.

    Minima are found with ``scipy.signal.find_peaks`` on ``-std`` with a prominence of
    ``relative_prominence`` times the curve's range (so the choice does not depend on the data
    units). ``z0`` = last minimum below the centre (0 if none), ``z1`` = first minimum at or above
    it, plus one (``n_z`` if none). A flat curve gives the whole volume, with a warning.
    """
    from scipy.signal import find_peaks

    n_z = std_curve.size
    curve = np.nan_to_num(
        std_curve, nan=np.nanmax(std_curve) if np.isfinite(std_curve).any() else 0.0
    )
    span = float(curve.max() - curve.min())
    if span <= 0:
        warnings.warn(
            "z_radius='computed': the per-slice std is constant; using the whole volume",
            RuntimeWarning,
            stacklevel=3,
        )
        return 0, n_z
    minima, _ = find_peaks(-curve, prominence=relative_prominence * span)
    below = minima[minima < center]
    above = minima[minima >= center]
    if below.size == 0 and above.size == 0:
        warnings.warn(
            "z_radius='computed': no minimum in the per-slice std curve; using the whole volume",
            RuntimeWarning,
            stacklevel=3,
        )
    z0 = int(below[-1]) if below.size else 0
    z1 = int(above[0]) + 1 if above.size else n_z
    return z0, z1


def slab_bounds(
    source: VolumeSource,
    z_radius: ZRadius,
    *,
    auto_radius: int,
    central_z_slice: float | None = None,
) -> tuple[int, int]:
    """``(z0, z1)`` for a ``z_radius`` option (``"auto"`` uses ``auto_radius``)."""
    n_z = source.shape[0]
    center = central_slice(n_z, central_z_slice)
    if z_radius is None:
        return 0, n_z
    if isinstance(z_radius, str):
        if z_radius == "auto":
            return fixed_slab(n_z, auto_radius, center)
        if z_radius == "computed":
            return computed_slab(slice_std_curve(source), center)
        raise InputError(f"z_radius={z_radius!r}: use 'auto', 'computed', None or an integer >= 0")
    if isinstance(z_radius, bool) or not isinstance(z_radius, (int, np.integer)):
        raise InputError(f"z_radius={z_radius!r}: use 'auto', 'computed', None or an integer >= 0")
    if z_radius < 0:
        raise InputError(f"z_radius must be >= 0, got {z_radius}")
    return fixed_slab(n_z, int(z_radius), center)


@dataclass(frozen=True)
class Sample:
    """Finite voxel values drawn from a slab.

    Attributes
    ----------
    values
        `(n,)` float32 (float64 for float64 data) finite voxel values.
    z_range
        ``(z0, z1)`` slab bounds.
    n_drawn
        Voxels drawn (including non-finite ones that were dropped).
    n_nonfinite
        Drawn voxels that were NaN or Inf (ignored).
    slab_voxels
        Voxels in the slab.
    """

    values: np.ndarray
    z_range: tuple[int, int]
    n_drawn: int
    n_nonfinite: int
    slab_voxels: int


def _n_samples(slab_voxels: int, ratio: float | None, max_samples: int | None) -> int | None:
    """Number of voxels to draw, or ``None`` for all of them."""
    if ratio is None:
        return None
    ratio = float(ratio)
    if not 0.0 < ratio <= 1.0:
        raise InputError(f"downsampling_ratio must be in (0, 1] or None, got {ratio}")
    n = math.ceil(ratio * slab_voxels)
    if max_samples is not None:
        if max_samples < 1:
            raise InputError(f"max_samples must be >= 1 or None, got {max_samples}")
        n = min(n, int(max_samples))
    return None if n >= slab_voxels else n


def draw_sample(
    source: VolumeSource,
    z_range: tuple[int, int],
    *,
    downsampling_ratio: float | None = 0.3,
    max_samples: int | None = 1_000_000,
    seed: int | None = 42,
) -> Sample:
    """Random finite voxel values from the slab ``z_range`` of ``source``.

    Parameters
    ----------
    downsampling_ratio
        Fraction of the **slab's** voxels to draw (the peer applied it to the whole volume,
        which disabled sampling on real tomograms); ``None`` takes every voxel of the slab.
    max_samples
        Cap on the number drawn (cost independent of the volume's size); ``None``: no cap.
    seed
        Seed of ``numpy.random.default_rng`` (fixed default: repeatable limits).

    Warns
    -----
    RuntimeWarning
        When NaN/Inf voxels were drawn (they are ignored).
    """
    z0, z1 = z_range
    _, ny, nx = source.shape
    slab_voxels = (z1 - z0) * ny * nx
    n_total = _n_samples(slab_voxels, downsampling_ratio, max_samples)
    rng = np.random.default_rng(seed)
    step = max(1, _CHUNK_VOXELS // (ny * nx))
    starts = list(range(z0, z1, step))
    sizes = np.array([(min(z1, s + step) - s) * ny * nx for s in starts], dtype=np.int64)
    if n_total is None:
        per_chunk = sizes
    else:
        per_chunk = rng.multinomial(n_total, sizes / sizes.sum())
    out_dtype = (
        np.float64 if source.dtype.kind == "f" and source.dtype.itemsize == 8 else np.float32
    )
    values = np.empty(int(per_chunk.sum()), dtype=out_dtype)
    filled = 0
    n_bad = 0
    for s, n in zip(starts, per_chunk, strict=True):
        if n == 0:
            continue
        block = np.asarray(source.read(s, min(z1, s + step))).reshape(-1)
        # Draw (or copy) in batches so index arrays and temporaries stay small.
        for b0 in range(0, int(n), _BATCH):
            m = min(_BATCH, int(n) - b0)
            if n_total is None:
                flat = block[b0 : b0 + m]
            else:
                flat = block[rng.integers(0, block.size, size=m)]
            if flat.dtype.kind == "f":
                finite = np.isfinite(flat)
                if not finite.all():
                    n_bad += int(flat.size - finite.sum())
                    flat = flat[finite]
            values[filled : filled + flat.size] = flat
            filled += flat.size
    values = values[:filled]
    n_drawn = int(per_chunk.sum())
    if n_bad:
        warnings.warn(
            f"{source.name}: ignored {n_bad} NaN/Inf voxel(s) of {n_drawn} drawn from slices "
            f"{z0}..{z1 - 1}",
            RuntimeWarning,
            stacklevel=3,
        )
    if filled == 0:
        raise InputError(
            f"{source.name}: no finite voxel in slices {z0}..{z1 - 1}: "
            "check the data or choose another z_radius/central_z_slice"
        )
    return Sample(values, (z0, z1), n_drawn, n_bad, slab_voxels)

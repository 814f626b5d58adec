"""Synthetic tomogram intensity mixtures with planted components (for contrast limits).

Two simulators, both seeded and returning the volume plus a truth dictionary:

- :func:`gaussian_mixture_volume`: every voxel drawn independently from a Gaussian mixture
  (plus optional uniform outliers and NaN/Inf holes). The planted component of every voxel is
  returned, so tests know the exact weights, means and standard deviations.
- :func:`tomogram_mixture`: a spatially structured, cryo-ET-like volume: a lamella (central part
  of z) of background noise holding blobby dark "signal" (dense matter is dark in cryo-ET), a
  few very dark gold-fiducial cubes, sparse bright outliers, and weaker noise outside the
  lamella. This is the recipe of the contrast peer spec's measurements.

Conventions: volumes are ``(z, y, x)``; intensities are in arbitrary data units (the mixtures
are defined relative to a background of mean 0 and standard deviation 1 unless given
otherwise); ``scale`` and ``offset`` map them to other data ranges (portal tomograms range from
±0.001 to ±40,000).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from corrscan.errors import InputError

__all__ = [
    "LABEL_BACKGROUND",
    "LABEL_GOLD",
    "LABEL_OUTLIER",
    "LABEL_OUTSIDE",
    "LABEL_SIGNAL",
    "MixtureComponent",
    "gaussian_mixture_volume",
    "mixture_cdf",
    "mixture_quantile",
    "tomogram_mixture",
]

# Labels of the planted classes in ``tomogram_mixture``'s truth["labels"].
LABEL_OUTSIDE = 0
LABEL_BACKGROUND = 1
LABEL_SIGNAL = 2
LABEL_GOLD = 3
LABEL_OUTLIER = 4


@dataclass(frozen=True)
class MixtureComponent:
    """One Gaussian component: mixing ``weight`` (fraction), ``mean`` and ``std`` (data units)."""

    weight: float
    mean: float
    std: float
    name: str = ""


def _shape3(shape: Sequence[int]) -> tuple[int, ...]:
    shape = tuple(int(s) for s in shape)
    if len(shape) not in (2, 3) or any(s <= 0 for s in shape):
        raise InputError(f"shape must be 2 or 3 positive sizes (z, y, x), got {shape}")
    return shape


def gaussian_mixture_volume(
    shape: Sequence[int],
    components: Sequence[MixtureComponent],
    *,
    outlier_fraction: float = 0.0,
    outlier_range: tuple[float, float] = (15.0, 40.0),
    nonfinite_fraction: float = 0.0,
    seed: int = 0,
    dtype: Any = np.float32,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Volume of independent voxels from a Gaussian mixture, with optional outliers and holes.

    Parameters
    ----------
    shape
        ``(z, y, x)`` or ``(y, x)``.
    components
        The mixture; weights are normalised to sum to 1. Each voxel gets exactly one component
        (drawn with these probabilities).
    outlier_fraction
        Fraction of voxels replaced by uniform values in ``outlier_range`` (label ``-1``).
    nonfinite_fraction
        Fraction of voxels replaced by NaN (half) and +Inf (half), label ``-2``.
    seed
        Seed of ``numpy.random.default_rng``.

    Returns
    -------
    volume
        `shape` array of ``dtype``.
    truth
        ``{"components": list[MixtureComponent] (normalised weights), "labels": int8 array of
        `shape` (component index, -1 outlier, -2 non-finite), "outlier_range": ...}``.
    """
    shape = _shape3(shape)
    if not components:
        raise InputError("components: give at least one MixtureComponent")
    w = np.array([c.weight for c in components], dtype=np.float64)
    if np.any(w <= 0) or np.any([c.std <= 0 for c in components]):
        raise InputError("components: weights and stds must be positive")
    w = w / w.sum()
    comps = [
        MixtureComponent(float(wi), float(c.mean), float(c.std), c.name)
        for wi, c in zip(w, components, strict=True)
    ]
    for name, frac in (
        ("outlier_fraction", outlier_fraction),
        ("nonfinite_fraction", nonfinite_fraction),
    ):
        if not 0.0 <= frac < 1.0:
            raise InputError(f"{name} must be in [0, 1), got {frac}")
    rng = np.random.default_rng(seed)
    n = int(np.prod(shape))
    labels = rng.choice(len(comps), size=n, p=w).astype(np.int8)
    means = np.array([c.mean for c in comps])
    stds = np.array([c.std for c in comps])
    vol = rng.standard_normal(n, dtype=np.float64)
    vol *= stds[labels]
    vol += means[labels]
    if outlier_fraction > 0:
        k = round(outlier_fraction * n)
        idx = rng.choice(n, size=k, replace=False)
        vol[idx] = rng.uniform(*outlier_range, size=k)
        labels[idx] = -1
    if nonfinite_fraction > 0:
        k = round(nonfinite_fraction * n)
        idx = rng.choice(n, size=k, replace=False)
        vol[idx[: k // 2]] = np.nan
        vol[idx[k // 2 :]] = np.inf
        labels[idx] = -2
    truth = {
        "components": comps,
        "labels": labels.reshape(shape),
        "outlier_fraction": float(outlier_fraction),
        "outlier_range": tuple(float(v) for v in outlier_range),
        "nonfinite_fraction": float(nonfinite_fraction),
    }
    return vol.reshape(shape).astype(dtype, copy=False), truth


def mixture_cdf(x: np.ndarray | float, components: Sequence[MixtureComponent]) -> np.ndarray:
    """Cumulative distribution of a (normalised) Gaussian mixture at ``x`` (float64)."""
    from scipy.special import ndtr

    x = np.asarray(x, dtype=np.float64)
    total = sum(c.weight for c in components)
    return sum(c.weight * ndtr((x - c.mean) / c.std) for c in components) / total


def mixture_quantile(q: float, components: Sequence[MixtureComponent]) -> float:
    """Exact quantile ``q`` in (0, 1) of a Gaussian mixture (root of :func:`mixture_cdf`)."""
    from scipy.optimize import brentq

    if not 0.0 < q < 1.0:
        raise InputError(f"quantile must be in (0, 1), got {q}")
    lo = min(c.mean - 40 * c.std for c in components)
    hi = max(c.mean + 40 * c.std for c in components)
    return float(brentq(lambda v: float(mixture_cdf(v, components)) - q, lo, hi, xtol=1e-12))


def tomogram_mixture(
    shape: Sequence[int] = (64, 128, 128),
    *,
    seed: int = 0,
    background: tuple[float, float] = (0.0, 1.0),
    signal: tuple[float, float] = (-2.5, 0.8),
    signal_fraction: float = 0.1,
    blob_scale: int = 8,
    lamella_fraction: float = 0.7,
    outside_std: float = 0.6,
    n_gold: int = 4,
    gold: tuple[float, float] = (-12.0, 1.0),
    gold_size: int = 6,
    outlier_fraction: float = 1e-4,
    outlier_range: tuple[float, float] = (15.0, 40.0),
    scale: float = 1.0,
    offset: float = 0.0,
    dtype: Any = np.float32,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Cryo-ET-like tomogram: lamella with dark blobby signal, gold cubes, bright outliers.

    Parameters
    ----------
    shape
        ``(z, y, x)`` voxels.
    background, signal
        ``(mean, std)`` of the lamella background and of the dark signal (data units before
        ``scale``/``offset``).
    signal_fraction
        Fraction of lamella voxels that are signal: a smoothed random field on a grid
        ``blob_scale`` times coarser, trilinearly upsampled and thresholded at its quantile.
    lamella_fraction
        Central fraction of z holding the lamella; outside it voxels are ``N(0, outside_std)``.
    n_gold, gold, gold_size
        Number of gold cubes (edge ``gold_size`` voxels, inside the lamella), their
        ``(mean, std)``.
    outlier_fraction, outlier_range
        Fraction of all voxels replaced by uniform bright outliers.
    scale, offset
        Final affine map ``v -> scale * v + offset`` (also applied to the truth).

    Returns
    -------
    volume
        `(z, y, x)` array of ``dtype``.
    truth
        ``{"labels": uint8 (z, y, x) (LABEL_* constants), "lamella_z": (z0, z1) slice bounds,
        "components": {"background": MixtureComponent, "signal": ..., "gold": ..., "outside":
        ...} (means/stds after scale/offset, weights = fraction of all voxels), "gold_centres":
        (n_gold, 3) int zyx}``.
    """
    shape = _shape3(shape)
    if len(shape) != 3:
        raise InputError(f"tomogram_mixture needs a 3-D shape (z, y, x), got {shape}")
    if not 0.0 < lamella_fraction <= 1.0:
        raise InputError(f"lamella_fraction must be in (0, 1], got {lamella_fraction}")
    if not 0.0 <= signal_fraction < 1.0:
        raise InputError(f"signal_fraction must be in [0, 1), got {signal_fraction}")
    rng = np.random.default_rng(seed)
    nz, ny, nx = shape
    n_lam = max(1, round(lamella_fraction * nz))
    z0 = (nz - n_lam) // 2
    z1 = z0 + n_lam

    labels = np.full(shape, LABEL_OUTSIDE, dtype=np.uint8)
    labels[z0:z1] = LABEL_BACKGROUND

    # Blobby signal mask inside the lamella: coarse smoothed field, upsampled, thresholded.
    if signal_fraction > 0:
        coarse = tuple(max(2, -(-s // blob_scale)) for s in (n_lam, ny, nx))
        field = ndimage.gaussian_filter(rng.standard_normal(coarse), sigma=1.0, mode="wrap")
        zoom = [s / c for s, c in zip((n_lam, ny, nx), coarse, strict=True)]
        fine = ndimage.zoom(field.astype(np.float32), zoom, order=1, mode="nearest", grid_mode=True)
        fine = fine[:n_lam, :ny, :nx]
        thr = np.quantile(fine[:: max(1, n_lam // 16), ::4, ::4], 1.0 - signal_fraction)
        labels[z0:z1][fine > thr] = LABEL_SIGNAL
        del fine

    centres = np.zeros((0, 3), dtype=np.int64)
    if n_gold > 0:
        g = int(gold_size)
        lo = np.array([z0, 0, 0]) + g // 2
        hi = np.array([z1, ny, nx]) - (g - g // 2)
        if np.any(hi <= lo):
            raise InputError(f"gold_size {gold_size} does not fit in the lamella of shape {shape}")
        centres = rng.integers(lo, hi, size=(n_gold, 3))
        for c in centres:
            s = tuple(slice(int(ci) - g // 2, int(ci) - g // 2 + g) for ci in c)
            labels[s] = LABEL_GOLD

    vol = rng.standard_normal(shape, dtype=np.float32)
    params = {
        LABEL_OUTSIDE: (0.0, outside_std),
        LABEL_BACKGROUND: background,
        LABEL_SIGNAL: signal,
        LABEL_GOLD: gold,
    }
    # Affine per label, applied slab by slab to keep temporaries small.
    mean_lut = np.zeros(5, dtype=np.float32)
    std_lut = np.ones(5, dtype=np.float32)
    for lab, (m, s) in params.items():
        mean_lut[lab], std_lut[lab] = m, s
    for zs in range(0, nz, 16):
        lab = labels[zs : zs + 16]
        vol[zs : zs + 16] *= std_lut[lab]
        vol[zs : zs + 16] += mean_lut[lab]

    if outlier_fraction > 0:
        n = vol.size
        k = round(outlier_fraction * n)
        idx = rng.choice(n, size=k, replace=False)
        vol.reshape(-1)[idx] = rng.uniform(*outlier_range, size=k).astype(np.float32)
        labels.reshape(-1)[idx] = LABEL_OUTLIER

    if scale != 1.0 or offset != 0.0:
        vol *= np.float32(scale)
        vol += np.float32(offset)

    counts = np.bincount(labels.reshape(-1), minlength=5) / labels.size
    names = {
        LABEL_OUTSIDE: "outside",
        LABEL_BACKGROUND: "background",
        LABEL_SIGNAL: "signal",
        LABEL_GOLD: "gold",
    }
    components = {
        names[lab]: MixtureComponent(
            float(counts[lab]), float(scale * m + offset), float(abs(scale) * s), names[lab]
        )
        for lab, (m, s) in params.items()
    }
    truth = {
        "labels": labels,
        "lamella_z": (int(z0), int(z1)),
        "components": components,
        "outlier_fraction": float(counts[LABEL_OUTLIER]),
        "outlier_range": tuple(float(scale * v + offset) for v in outlier_range),
        "gold_centres": centres,
    }
    return vol.astype(dtype, copy=False), truth

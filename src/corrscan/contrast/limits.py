"""Tomogram contrast limits: GMM/BIC, CDF gradient or percentiles on a central z slab.

Pipeline (cryo-ET data portal semantics, fixed where the peer was broken):

1. Slab: the slices around the central z slice (``z_radius``; "auto" = 15 for GMM and
   percentile, 5 for CDF; see :mod:`corrscan.contrast.sampling`). Only these slices are read.
2. Sample: ``downsampling_ratio`` of the slab's voxels, at most ``max_samples``, drawn with a
   seeded generator; NaN/Inf voxels are dropped with a warning.
3. Method: ``"gmm"`` (:mod:`corrscan.contrast.gmm`), ``"cdf"`` or ``"percentile"``
   (:mod:`corrscan.contrast.cdf`). Unknown names are an error.

Limits are in the data's units, ``low <= high``, within the sampled values' range.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

import numpy as np

from corrscan.contrast.cdf import cdf_limits, percentile_limits
from corrscan.contrast.gmm import gmm_limits
from corrscan.contrast.histogram import bin_sample
from corrscan.contrast.sampling import ZRadius, draw_sample, slab_bounds
from corrscan.contrast.volumes import open_volume
from corrscan.errors import InputError

__all__ = [
    "AUTO_Z_RADIUS",
    "METHODS",
    "ContrastLimits",
    "ContrastReport",
    "compute_contrast_limits",
    "contrast_report",
]

Method = Literal["gmm", "cdf", "percentile"]
METHODS: tuple[str, ...] = ("gmm", "cdf", "percentile")
#: Slab radius used for ``z_radius="auto"``.
AUTO_Z_RADIUS: dict[str, int] = {"gmm": 15, "cdf": 5, "percentile": 15}

_OPTIONS: dict[str, frozenset[str]] = {
    "gmm": frozenset(
        {
            "max_components",
            "low_std_multiplier",
            "high_std_multiplier",
            "multipliers",
            "tol",
            "max_iter",
        }
    ),
    "cdf": frozenset({"gradient_threshold", "n_bins", "robust_k"}),
    "percentile": frozenset({"low_percentile", "high_percentile"}),
}


class ContrastLimits(NamedTuple):
    """``(low, high)`` contrast limits in data units (a plain tuple of two floats)."""

    low: float
    high: float


@dataclass(frozen=True)
class ContrastReport:
    """Limits plus how they were obtained.

    Attributes
    ----------
    limits
        :class:`ContrastLimits`.
    method
        ``"gmm"``, ``"cdf"`` or ``"percentile"``.
    z_range
        ``(z0, z1)``: slices ``z0 <= z < z1`` used.
    shape
        ``(z, y, x)`` of the input.
    n_samples
        Finite voxel values used.
    n_nonfinite
        NaN/Inf voxels drawn and ignored.
    sample_range
        ``(min, max)`` of the used values.
    details
        Method specifics: GMM ``{"n_components", "weights", "means", "stds", "bic",
        "chosen_component", "multipliers"}``; CDF ``{"start_threshold", "end_threshold"}``;
        percentile ``{"low_percentile", "high_percentile"}``.
    sample
        The sampled values `(n_samples,)` when ``keep_sample=True`` (for plots), else ``None``.
    """

    limits: ContrastLimits
    method: str
    z_range: tuple[int, int]
    shape: tuple[int, int, int]
    n_samples: int
    n_nonfinite: int
    sample_range: tuple[float, float]
    details: dict[str, Any] = field(default_factory=dict)
    sample: np.ndarray | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable summary (no sample)."""
        return {
            "low": self.limits.low,
            "high": self.limits.high,
            "method": self.method,
            "z_range": list(self.z_range),
            "shape": list(self.shape),
            "n_samples": self.n_samples,
            "n_nonfinite": self.n_nonfinite,
            "sample_range": list(self.sample_range),
            "details": _jsonable(self.details),
        }


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def _check_method(method: Any, options: dict[str, Any]) -> str:
    if not isinstance(method, str) or method.lower() not in METHODS:
        raise InputError(f"unknown contrast method {method!r}: use one of {', '.join(METHODS)}")
    method = method.lower()
    unknown = set(options) - _OPTIONS[method]
    if unknown:
        raise InputError(
            f"method {method!r} has no option(s) {sorted(unknown)}; "
            f"its options are {sorted(_OPTIONS[method])}"
        )
    return method


def contrast_report(
    data: Any,
    method: Method = "gmm",
    z_radius: ZRadius = "auto",
    downsampling_ratio: float | None = 0.3,
    seed: int | None = 42,
    *,
    central_z_slice: float | None = None,
    max_samples: int | None = 1_000_000,
    level: int = 0,
    keep_sample: bool = False,
    **options: Any,
) -> ContrastReport:
    """Contrast limits of a tomogram with everything that produced them.

    Same parameters as :func:`compute_contrast_limits`, plus ``keep_sample`` (keep the sampled
    values in the report, e.g. for a histogram plot).
    """
    method = _check_method(method, options)
    source = open_volume(data, level=level)
    z_range = slab_bounds(
        source, z_radius, auto_radius=AUTO_Z_RADIUS[method], central_z_slice=central_z_slice
    )
    sample = draw_sample(
        source,
        z_range,
        downsampling_ratio=downsampling_ratio,
        max_samples=max_samples,
        seed=seed,
    )
    values = sample.values
    details: dict[str, Any]
    if method == "gmm":
        sel = gmm_limits(bin_sample(values), **options)
        limits = sel.limits
        details = {
            "n_components": sel.best.n_components,
            "weights": sel.best.weights,
            "means": sel.best.means,
            "stds": sel.best.stds,
            "bic": [f.bic for f in sel.fits],
            "chosen_component": sel.chosen_component,
            "multipliers": sel.multipliers,
            "sample_mean": sel.sample_mean,
            "converged": [f.converged for f in sel.fits],
        }
    elif method == "cdf":
        res = cdf_limits(values, **options)
        limits = res.limits
        details = {"start_threshold": res.start_threshold, "end_threshold": res.end_threshold}
    else:
        lo_p = float(options.get("low_percentile", 1.0))
        hi_p = float(options.get("high_percentile", 99.0))
        limits = percentile_limits(values, low_percentile=lo_p, high_percentile=hi_p)
        details = {"low_percentile": lo_p, "high_percentile": hi_p}
    return ContrastReport(
        limits=ContrastLimits(float(limits[0]), float(limits[1])),
        method=method,
        z_range=sample.z_range,
        shape=source.shape,
        n_samples=int(values.size),
        n_nonfinite=sample.n_nonfinite,
        sample_range=(float(values.min()), float(values.max())),
        details=details,
        sample=values if keep_sample else None,
    )


def compute_contrast_limits(
    data: Any,
    method: Method = "gmm",
    z_radius: ZRadius = "auto",
    downsampling_ratio: float | None = 0.3,
    seed: int | None = 42,
    *,
    central_z_slice: float | None = None,
    max_samples: int | None = 1_000_000,
    level: int = 0,
    **options: Any,
) -> ContrastLimits:
    """Contrast limits ``(low, high)`` of a tomogram (cryo-ET data portal semantics).

    Parameters
    ----------
    data
        Volume `(z, y, x)` or image `(y, x)`: NumPy, torch, CuPy, Dask or zarr array, or a path
        to an MRC / OME-Zarr / ``.npy`` file. Only the slab's slices are read.
    method
        ``"gmm"`` (mixture of 1-3 Gaussians chosen by BIC; the component nearest the sample
        mean; ``mu - a sigma, mu + b sigma`` with ``(a, b)`` = (2, 0.5), (2.2, 0.65), (3, 0.8) for
        1, 2, 3 components), ``"cdf"`` (CDF-gradient thresholds, 30 %) or ``"percentile"`` (1st
        and 99th). Anything else raises :class:`~corrscan.errors.InputError`.
    z_radius
        ``"auto"`` (15 slices either side for GMM/percentile, 5 for CDF), an integer radius,
        ``None`` (whole volume) or ``"computed"`` (between the per-slice std minima around the
        centre).
    downsampling_ratio
        Fraction of the slab's voxels sampled (``None``: all of them), capped by
        ``max_samples``.
    seed
        Sampling seed (default 42: repeatable).
    central_z_slice
        Slab centre (default ``n_z / 2 - 0.5``; 0 is honoured).
    max_samples
        Cap on the sampled voxels (default 1,000,000; ``None``: no cap).
    level
        OME-Zarr pyramid level for paths.
    **options
        Method options. GMM: ``max_components=3``, ``low_std_multiplier``,
        ``high_std_multiplier``, ``multipliers={n: (a, b)}``, ``tol``, ``max_iter``.
        CDF: ``gradient_threshold=0.3``, ``n_bins=512``, ``robust_k=8``.
        Percentile: ``low_percentile=1``, ``high_percentile=99``. Unknown options raise.

    Returns
    -------
    ContrastLimits
        ``(low, high)`` Python floats in data units.

    Warns
    -----
    RuntimeWarning
        NaN/Inf voxels were sampled (they are ignored).
    """
    return contrast_report(
        data,
        method,
        z_radius,
        downsampling_ratio,
        seed,
        central_z_slice=central_z_slice,
        max_samples=max_samples,
        level=level,
        **options,
    ).limits

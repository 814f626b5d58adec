"""Peak extraction from 2D template-matching results, with Leopard-EM's names.

Compatibility (same names, arguments and semantics as ``leopard_em.analysis``):
:func:`gaussian_noise_zscore_cutoff`, :func:`find_peaks_from_zscore`,
:func:`extract_peaks_and_statistics_zscore` returning :class:`MatchTemplatePeaks`.
Beyond the peer: the p-value metric (after Zhang et al. 2025, IUCrJ 12:155), the GEV metric,
particle tables (Leopard-EM's CSV columns, RELION STAR).

Peak picking is greedy distance suppression over all supra-threshold pixels in descending
order (Leopard-EM's rule, Euclidean distance ``< mask_radius`` suppressed), but vectorised: the
loop runs once per *accepted* peak, each iteration a tensor operation over the remaining
candidates (Leopard-EM loops in Python over every candidate pair, quirk Q14).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import torch

from corrscan.core.arrays import to_tensor
from corrscan.core.peaks import gaussian_noise_zscore_cutoff as _core_cutoff
from corrscan.errors import InputError

__all__ = [
    "LEOPARD_COLUMNS",
    "MatchTemplatePeaks",
    "extract_peaks",
    "extract_peaks_and_statistics_gev",
    "extract_peaks_and_statistics_p_value",
    "extract_peaks_and_statistics_zscore",
    "filter_peaks_by_distance",
    "find_peaks_from_zscore",
    "gaussian_noise_zscore_cutoff",
    "gev_zscore_cutoff",
    "peaks_to_dataframe",
    "pvalue_score_map",
    "star_table",
    "write_star",
]


class MatchTemplatePeaks(NamedTuple):
    """Peaks of one micrograph (Leopard-EM's named tuple; all `(n,)` tensors but the total).

    ``pos_y, pos_x`` are map pixels (top-left corner of the template box).
    ``correlation_variance`` holds whatever map was passed under that name (corrscan's
    result passes the true variance; Leopard-EM's maps hold the standard deviation).
    """

    pos_y: torch.Tensor
    pos_x: torch.Tensor
    mip: torch.Tensor
    scaled_mip: torch.Tensor
    psi: torch.Tensor
    theta: torch.Tensor
    phi: torch.Tensor
    relative_defocus: torch.Tensor
    correlation_mean: torch.Tensor
    correlation_variance: torch.Tensor
    total_correlations: int


def gaussian_noise_zscore_cutoff(num_ccg: int, false_positives: float = 1.0) -> float:
    """z-score above which ``false_positives`` of ``num_ccg`` standard normal values lie.

    ``z* = sqrt(2) · erfcinv(2 · false_positives / num_ccg)``.

    Parameters
    ----------
    num_ccg
        Number of correlation values (pixels x orientations x defocus values).
    false_positives
        Expected number of noise values above the cut-off (per micrograph).
    """
    return _core_cutoff(num_ccg, false_positives)


def filter_peaks_by_distance(
    peak_values: torch.Tensor,
    peak_locations: torch.Tensor,
    distance_threshold: float = 5.0,
) -> torch.Tensor:
    """Greedy suppression: keep the highest candidate, drop candidates closer than
    ``distance_threshold`` (Euclidean, pixels), repeat. Returns `(k, ndim)` kept locations in
    descending value order. One vectorised step per kept peak."""
    if peak_locations.numel() == 0:
        return peak_locations.reshape(0, peak_locations.shape[-1] if peak_locations.ndim else 2)
    order = torch.argsort(peak_values, descending=True, stable=True)
    loc = peak_locations[order]
    locf = loc.to(torch.float64)
    alive = torch.ones(loc.shape[0], dtype=torch.bool, device=loc.device)
    kept: list[int] = []
    r2 = float(distance_threshold) ** 2
    start = 0
    n = loc.shape[0]
    while start < n:
        kept.append(start)
        d2 = ((locf - locf[start]) ** 2).sum(-1)
        alive &= d2 >= r2
        rest = alive[start + 1 :].nonzero()
        if rest.numel() == 0:
            break
        start = start + 1 + int(rest[0, 0])
    return loc[torch.tensor(kept, dtype=torch.long, device=loc.device)]


def find_peaks_from_zscore(
    zscore_map: Any, zscore_cutoff: float, mask_radius: float = 5.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(pos_y, pos_x)`` of peaks above ``zscore_cutoff``, highest first, no two closer
    than ``mask_radius`` pixels (Leopard-EM semantics, vectorised)."""
    z = to_tensor(zscore_map, name="zscore_map")
    cand = torch.nonzero(z > zscore_cutoff)
    if cand.shape[0] == 0:
        e = torch.zeros(0, dtype=torch.long)
        return e, e.clone()
    picked = filter_peaks_by_distance(z[tuple(cand.T)], cand, mask_radius)
    return picked[:, 0], picked[:, 1]


def _gather_peaks(
    pos_y: torch.Tensor,
    pos_x: torch.Tensor,
    maps: dict[str, torch.Tensor],
    total: int,
) -> MatchTemplatePeaks:
    def g(name: str) -> torch.Tensor:
        return maps[name][pos_y, pos_x]

    return MatchTemplatePeaks(
        pos_y=pos_y,
        pos_x=pos_x,
        mip=g("mip"),
        scaled_mip=g("scaled_mip"),
        psi=g("psi"),
        theta=g("theta"),
        phi=g("phi"),
        relative_defocus=g("relative_defocus"),
        correlation_mean=g("correlation_mean"),
        correlation_variance=g("correlation_variance"),
        total_correlations=int(total),
    )


def _maps(
    mip: Any,
    scaled_mip: Any,
    best_psi: Any,
    best_theta: Any,
    best_phi: Any,
    best_defocus: Any,
    correlation_average: Any,
    correlation_variance: Any,
) -> dict[str, torch.Tensor]:
    maps = {
        "mip": mip,
        "scaled_mip": scaled_mip,
        "psi": best_psi,
        "theta": best_theta,
        "phi": best_phi,
        "relative_defocus": best_defocus,
        "correlation_mean": correlation_average,
        "correlation_variance": correlation_variance,
    }
    out = {k: to_tensor(v, name=k).cpu() for k, v in maps.items()}
    shape = out["mip"].shape
    for k, v in out.items():
        if v.shape != shape:
            raise InputError(f"{k} has shape {tuple(v.shape)}, mip has {tuple(shape)}")
    return out


def extract_peaks_and_statistics_zscore(
    mip: Any,
    scaled_mip: Any,
    best_psi: Any,
    best_theta: Any,
    best_phi: Any,
    best_defocus: Any,
    correlation_average: Any,
    correlation_variance: Any,
    total_correlation_positions: int,
    false_positives: float = 1.0,
    z_score_cutoff: float | None = None,
    mask_radius: float = 5.0,
) -> MatchTemplatePeaks:
    """Peaks of the z-score map and the statistics there (Leopard-EM's function).

    The cut-off defaults to :func:`gaussian_noise_zscore_cutoff` with
    ``num_ccg = mip.numel() * total_correlation_positions``.
    """
    maps = _maps(
        mip, scaled_mip, best_psi, best_theta, best_phi, best_defocus,
        correlation_average, correlation_variance,
    )  # fmt: skip
    if z_score_cutoff is None:
        z_score_cutoff = gaussian_noise_zscore_cutoff(
            maps["mip"].numel() * int(total_correlation_positions), false_positives
        )
    pos_y, pos_x = find_peaks_from_zscore(maps["scaled_mip"], z_score_cutoff, mask_radius)
    if len(pos_y) == 0:
        warnings.warn("No peaks found using z-score metric.", stacklevel=2)
    return _gather_peaks(pos_y, pos_x, maps, total_correlation_positions)


# --------------------------------------------------------------------------------------------
# p-value metric (after Zhang et al. 2025)
# --------------------------------------------------------------------------------------------


def _probit_rank(x: torch.Tensor) -> torch.Tensor:
    """Rank-based inverse normal transform: ``Φ⁻¹((rank + 0.5) / n)`` (ties by order)."""
    from scipy.special import ndtri

    flat = x.reshape(-1).to(torch.float64)
    n = flat.numel()
    ranks = torch.empty(n, dtype=torch.float64)
    ranks[torch.argsort(flat, stable=True)] = torch.arange(n, dtype=torch.float64)
    return torch.from_numpy(ndtri(((ranks + 0.5) / n).numpy())).reshape(x.shape)


def pvalue_score_map(mip: Any, scaled_mip: Any, *, quadrants: int = 1) -> torch.Tensor:
    """``-ln p`` map of the 2D p-value metric.

    Both the MIP and the z-score maps are probit-transformed by rank (so each is standard
    normal over the micrograph); the pair ``u = (u_z, u_mip)`` is modelled as a zero-mean 2D
    Gaussian with the pixels' second-moment matrix ``Σ`` (eigen-decomposed). A pixel's
    p-value is the Gaussian tail beyond its Mahalanobis radius, ``p = exp(-r²/2)``,
    ``r² = uᵀ Σ⁻¹ u``, for pixels in the accepted quadrant(s) (``quadrants=1``: both
    coordinates positive; ``3``: all but both negative); others get ``p = 1``.

    Returns
    -------
    `(H, W)` float64 ``-ln p`` (0 outside the quadrant mask).
    """
    if quadrants not in (1, 3):
        raise InputError(f"quadrants must be 1 or 3, got {quadrants}")
    z = to_tensor(scaled_mip, name="scaled_mip").cpu()
    m = to_tensor(mip, name="mip").cpu()
    u = torch.stack([_probit_rank(z), _probit_rank(m)], dim=-1)  # (H, W, 2)
    flat = u.reshape(-1, 2)
    cov = flat.T @ flat / flat.shape[0]
    evals, evecs = torch.linalg.eigh(cov)
    evals = evals.clamp_min(1e-12)
    proj = flat @ evecs
    r2 = (proj**2 / evals).sum(-1).reshape(u.shape[:-1])
    if quadrants == 1:
        mask = (u[..., 0] > 0) & (u[..., 1] > 0)
    else:
        mask = ~((u[..., 0] < 0) & (u[..., 1] < 0))
    return torch.where(mask, 0.5 * r2, torch.zeros_like(r2))


def extract_peaks_and_statistics_p_value(
    mip: Any,
    scaled_mip: Any,
    best_psi: Any,
    best_theta: Any,
    best_phi: Any,
    best_defocus: Any,
    correlation_average: Any,
    correlation_variance: Any,
    total_correlation_positions: int,
    p_value_cutoff: float = 8.0,
    mask_radius: float = 5.0,
    quadrants: int = 1,
) -> MatchTemplatePeaks:
    """Peaks where ``-ln p`` of the 2D p-value metric exceeds ``p_value_cutoff`` (default
    8.0), distance-filtered like the z-score metric (see :func:`pvalue_score_map`)."""
    maps = _maps(
        mip, scaled_mip, best_psi, best_theta, best_phi, best_defocus,
        correlation_average, correlation_variance,
    )  # fmt: skip
    score = pvalue_score_map(maps["mip"], maps["scaled_mip"], quadrants=quadrants)
    pos_y, pos_x = find_peaks_from_zscore(score, p_value_cutoff, mask_radius)
    if len(pos_y) == 0:
        warnings.warn("No peaks found using p-value metric.", stacklevel=2)
    return _gather_peaks(pos_y, pos_x, maps, total_correlation_positions)


# --------------------------------------------------------------------------------------------
# GEV metric
# --------------------------------------------------------------------------------------------


def gev_zscore_cutoff(
    scaled_mip: Any,
    false_positives: float = 1.0,
    *,
    z_max: float = 8.5,
    max_samples: int = 200_000,
    seed: int = 0,
) -> float:
    """z-score cut-off from a generalised extreme-value fit to the z-score map.

    Fits ``scipy.stats.genextreme`` to up to ``max_samples`` random pixels with
    ``z <= z_max`` (the noise body), then returns the value exceeded by ``false_positives``
    of the map's pixels under the fit (inverse survival at ``false_positives / n_pixels``).
    """
    from scipy.stats import genextreme

    z = to_tensor(scaled_mip, name="scaled_mip").reshape(-1).cpu().numpy().astype(np.float64)
    body = z[np.isfinite(z) & (z <= z_max)]
    if body.size < 100:
        raise InputError("too few pixels below z_max for a GEV fit (need >= 100)")
    rng = np.random.default_rng(seed)
    if body.size > max_samples:
        body = rng.choice(body, max_samples, replace=False)
    c, loc, scale = genextreme.fit(body)
    return float(genextreme.isf(false_positives / z.size, c, loc=loc, scale=scale))


def extract_peaks_and_statistics_gev(
    mip: Any,
    scaled_mip: Any,
    best_psi: Any,
    best_theta: Any,
    best_phi: Any,
    best_defocus: Any,
    correlation_average: Any,
    correlation_variance: Any,
    total_correlation_positions: int,
    false_positives: float = 1.0,
    mask_radius: float = 5.0,
) -> MatchTemplatePeaks:
    """Peaks above the GEV cut-off (:func:`gev_zscore_cutoff`); warns above 1000 peaks."""
    maps = _maps(
        mip, scaled_mip, best_psi, best_theta, best_phi, best_defocus,
        correlation_average, correlation_variance,
    )  # fmt: skip
    cut = gev_zscore_cutoff(maps["scaled_mip"], false_positives)
    pos_y, pos_x = find_peaks_from_zscore(maps["scaled_mip"], cut, mask_radius)
    if len(pos_y) > 1000:
        warnings.warn(f"GEV metric found {len(pos_y)} peaks: the fit may be poor", stacklevel=2)
    return _gather_peaks(pos_y, pos_x, maps, total_correlation_positions)


# --------------------------------------------------------------------------------------------
# from a result, and tables
# --------------------------------------------------------------------------------------------


def extract_peaks(
    result: Any,
    *,
    method: str = "zscore",
    false_positives: float = 1.0,
    z_score_cutoff: float | None = None,
    mask_radius: float = 5.0,
    p_value_cutoff: float = 8.0,
) -> MatchTemplatePeaks:
    """Peaks of a :class:`~corrscan.match2d.result.MatchTemplateResult` by ``method``
    (``"zscore"``, ``"pvalue"`` or ``"gev"``)."""
    m = result.maps
    args = (
        m["mip"], m["scaled_mip"], m["psi"], m["theta"], m["phi"], m["relative_defocus"],
        m["correlation_mean"], m["correlation_variance"], result.total_correlations,
    )  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if method == "zscore":
            return extract_peaks_and_statistics_zscore(
                *args, false_positives, z_score_cutoff, mask_radius
            )
        if method == "pvalue":
            return extract_peaks_and_statistics_p_value(*args, p_value_cutoff, mask_radius)
        if method == "gev":
            return extract_peaks_and_statistics_gev(*args, false_positives, mask_radius)
    raise InputError(f"method must be 'zscore', 'pvalue' or 'gev', got {method!r}")


LEOPARD_COLUMNS = (
    "particle_index", "mip", "scaled_mip", "correlation_mean", "correlation_variance",
    "total_correlations", "pos_x", "pos_y", "pos_x_img", "pos_y_img",
    "pos_x_img_angstrom", "pos_y_img_angstrom", "phi", "theta", "psi", "relative_defocus",
    "defocus_u", "defocus_v", "astigmatism_angle", "pixel_size", "refined_pixel_size",
    "voltage", "spherical_aberration", "amplitude_contrast_ratio", "phase_shift",
    "ctf_B_factor", "micrograph_path", "template_path",
)  # fmt: skip
"""Leopard-EM's particle-table columns kept by :func:`peaks_to_dataframe` (plus
``correlation_std``; the Zernike/magnification JSON columns and per-map paths are omitted)."""


def peaks_to_dataframe(
    peaks: MatchTemplatePeaks,
    result: Any,
    *,
    micrograph_path: str = "",
    template_path: str = "",
) -> pd.DataFrame:
    """Particle table with Leopard-EM's column names.

    ``pos_x, pos_y``: map pixel (top-left corner of the box, at the maps' pixel size);
    ``pos_x_img, pos_y_img``: particle centre in the *input* micrograph's pixels
    (``(pos + box // 2) · scale`` where ``scale`` is 1 unless a resolution-limited search
    resampled the micrograph); ``*_angstrom`` = centre x input pixel size.
    ``correlation_variance`` is the variance (Leopard-EM writes the std there);
    ``correlation_std`` is added.
    """
    meta = result.metadata
    box = int(meta["template_box"])
    scale = float(meta.get("scale_to_input", 1.0))
    optics = meta["optics_group"]
    px_in = float(meta.get("input_pixel_size", optics["pixel_size"]))
    n = len(peaks.pos_y)
    py = peaks.pos_y.to(torch.float64).numpy()
    px = peaks.pos_x.to(torch.float64).numpy()
    cy = (py + box // 2) * scale
    cx = (px + box // 2) * scale
    rel = peaks.relative_defocus.to(torch.float64).numpy()
    var = peaks.correlation_variance.to(torch.float64).numpy()
    df = pd.DataFrame(
        {
            "particle_index": np.arange(n),
            "mip": peaks.mip.numpy().astype(np.float64),
            "scaled_mip": peaks.scaled_mip.numpy().astype(np.float64),
            "correlation_mean": peaks.correlation_mean.numpy().astype(np.float64),
            "correlation_variance": var,
            "correlation_std": np.sqrt(np.maximum(var, 0)),
            "total_correlations": int(peaks.total_correlations),
            "pos_x": px.astype(np.int64),
            "pos_y": py.astype(np.int64),
            "pos_x_img": cx,
            "pos_y_img": cy,
            "pos_x_img_angstrom": cx * px_in,
            "pos_y_img_angstrom": cy * px_in,
            "phi": peaks.phi.numpy().astype(np.float64),
            "theta": peaks.theta.numpy().astype(np.float64),
            "psi": peaks.psi.numpy().astype(np.float64),
            "relative_defocus": rel,
            "defocus_u": optics["defocus_u"] + rel,
            "defocus_v": optics["defocus_v"] + rel,
            "astigmatism_angle": optics["astigmatism_angle"],
            "pixel_size": px_in,
            "refined_pixel_size": px_in,
            "voltage": optics["voltage"],
            "spherical_aberration": optics["spherical_aberration"],
            "amplitude_contrast_ratio": optics["amplitude_contrast_ratio"],
            "phase_shift": optics["phase_shift"],
            "ctf_B_factor": optics["ctf_B_factor"],
            "micrograph_path": micrograph_path,
            "template_path": template_path,
        }
    )
    return df


def star_table(df: pd.DataFrame, *, pixel_size: float | None = None) -> pd.DataFrame:
    """RELION columns for a particle table (see :func:`write_star`)."""

    def col(name: str) -> pd.Series:
        ref = f"refined_{name}"
        return df[ref] if ref in df.columns else df[name]

    ps = df["pixel_size"] if "pixel_size" in df.columns else pixel_size
    star = pd.DataFrame(
        {
            "rlnCoordinateX": col("pos_x_img"),
            "rlnCoordinateY": col("pos_y_img"),
            "rlnAngleRot": col("phi"),
            "rlnAngleTilt": col("theta"),
            "rlnAnglePsi": col("psi"),
            "rlnDefocusU": df["defocus_u"] + (col("relative_defocus") - df["relative_defocus"]),
            "rlnDefocusV": df["defocus_v"] + (col("relative_defocus") - df["relative_defocus"]),
            "rlnDefocusAngle": df["astigmatism_angle"],
            "rlnVoltage": df["voltage"],
            "rlnSphericalAberration": df["spherical_aberration"],
            "rlnAmplitudeContrast": df["amplitude_contrast_ratio"],
            "rlnPhaseShift": df["phase_shift"],
            "rlnCtfBfactor": df["ctf_B_factor"],
            "rlnMicrographPixelSize": ps,
            "rlnAutopickFigureOfMerit": col("scaled_mip"),
            "rlnMicrographName": df["micrograph_path"] if "micrograph_path" in df else "",
        }
    )
    return star


def write_star(df: pd.DataFrame, path: str | Path, *, pixel_size: float | None = None) -> Path:
    """Write a particle table as a RELION 4/5 STAR file (``particles`` block).

    Columns: ``rlnCoordinateX/Y`` (particle centre, input pixels; refined values when
    present), ``rlnAngleRot/Tilt/Psi`` (= phi, theta, psi: corrscan/Leopard-EM angles are
    RELION's), ``rlnDefocusU/V`` (absolute, refined when present), ``rlnDefocusAngle``,
    ``rlnVoltage``, ``rlnSphericalAberration``, ``rlnAmplitudeContrast``, ``rlnPhaseShift``,
    ``rlnCtfBfactor``, ``rlnMicrographPixelSize``, ``rlnAutopickFigureOfMerit`` (z-score),
    ``rlnMicrographName``.
    """
    from corrscan.core.io.star import write_star as _write

    path = Path(path)
    _write(path, {"particles": star_table(df, pixel_size=pixel_size)})
    return path

"""File-to-file steps of the 2D job (what the CLI runs): search, peaks, refine."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from corrscan.core.io import read_image
from corrscan.errors import InputError
from corrscan.match2d.config import MatchTemplateConfig, PeakConfig, RefineConfig
from corrscan.match2d.peaks import extract_peaks, gaussian_noise_zscore_cutoff, peaks_to_dataframe
from corrscan.match2d.result import MatchTemplateResult
from corrscan.match2d.search import match_template

__all__ = ["find_particles", "read_inputs", "run_refine", "run_search"]


def read_inputs(cfg: MatchTemplateConfig) -> tuple[np.ndarray, np.ndarray]:
    """Micrograph `(H, W)` and template `(D, D, D)` as float32 NumPy arrays; checks that the
    template's voxel size (header or ``template_pixel_size``) matches the micrograph's."""
    img, _ = read_image(cfg.micrograph_path)
    vol, vox = read_image(cfg.template_volume_path)
    img = np.asarray(img, dtype=np.float32)
    vol = np.asarray(vol, dtype=np.float32)
    if img.ndim == 3 and img.shape[0] == 1:
        img = img[0]
    if img.ndim != 2:
        raise InputError(f"{cfg.micrograph_path}: expected a 2D micrograph, got {img.shape}")
    tpx = cfg.template_pixel_size or vox or cfg.optics_group.pixel_size
    if abs(tpx - cfg.optics_group.pixel_size) > 1e-3 * cfg.optics_group.pixel_size:
        raise InputError(
            f"template voxel size {tpx} Å differs from the micrograph pixel size "
            f"{cfg.optics_group.pixel_size} Å: resample the template (or set "
            "template_pixel_size if the header is wrong)"
        )
    return img, vol


def find_particles(
    result: MatchTemplateResult,
    peaks: PeakConfig,
    *,
    micrograph_path: str = "",
    template_path: str = "",
) -> pd.DataFrame:
    """Particle table (Leopard-EM columns) from a result with the given peak settings."""
    pk = extract_peaks(
        result,
        method=peaks.method,
        false_positives=peaks.false_positives,
        z_score_cutoff=peaks.z_score_cutoff,
        mask_radius=peaks.mask_radius,
        p_value_cutoff=peaks.pvalue_cutoff,
    )
    return peaks_to_dataframe(
        pk, result, micrograph_path=micrograph_path, template_path=template_path
    )


def zscore_cutoff(result: MatchTemplateResult, peaks: PeakConfig) -> float:
    """The z-score cut-off the z-score metric uses for this result."""
    if peaks.z_score_cutoff is not None:
        return float(peaks.z_score_cutoff)
    n = result.maps["mip"].numel() * result.total_correlations
    return gaussian_noise_zscore_cutoff(n, peaks.false_positives)


def search_kwargs(cfg: MatchTemplateConfig, config_dict: dict[str, Any] | None = None) -> dict:
    """Keyword arguments of :func:`~corrscan.match2d.search.match_template` from a config."""
    return {
        "optics": cfg.optics_group,
        "defocus_search": cfg.defocus_search_config,
        "orientation_search": cfg.orientation_search_config,
        "preprocessing": cfg.preprocessing_filters,
        "compute": cfg.computational_config,
        "valid_crop": cfg.output.valid_crop,
        "resolution_limit": cfg.resolution_limit,
        "config": config_dict or cfg.model_dump(mode="json"),
    }


def save_search(
    res: MatchTemplateResult,
    cfg: MatchTemplateConfig,
    path: Path,
    *,
    overwrite: bool | None = None,
) -> pd.DataFrame:
    """Pick particles, write the bundle at ``path`` and the configured tables; return picks."""
    parts = find_particles(
        res, cfg.peaks, micrograph_path=cfg.micrograph_path, template_path=cfg.template_volume_path
    )
    res.tables["particles"] = parts
    res.metadata["micrograph_path"] = cfg.micrograph_path
    res.metadata["template_path"] = cfg.template_volume_path
    res.metadata["zscore_cutoff"] = zscore_cutoff(res, cfg.peaks)
    res.save(path, overwrite=cfg.output.overwrite if overwrite is None else overwrite)
    if cfg.output.particles_csv:
        parts.to_csv(cfg.output.particles_csv, index=False)
    if cfg.output.particles_star:
        from corrscan.match2d.peaks import write_star

        write_star(parts, cfg.output.particles_star)
    return parts


def run_search(
    cfg: MatchTemplateConfig,
    *,
    out: str | Path | None = None,
    overwrite: bool | None = None,
    progress: bool | None = None,
    config_dict: dict[str, Any] | None = None,
) -> tuple[MatchTemplateResult, pd.DataFrame, Path]:
    """Read the inputs, search, pick particles and write the bundle (maps + particles)."""
    img, vol = read_inputs(cfg)
    res = match_template(img, vol, progress=progress, **search_kwargs(cfg, config_dict))
    path = Path(out or cfg.output.bundle_path)
    parts = save_search(res, cfg, path, overwrite=overwrite)
    return res, parts, path


def run_refine(
    cfg: MatchTemplateConfig,
    bundle: str | Path,
    refine: RefineConfig,
    *,
    particles: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Refine the particles of a search bundle (its ``particles`` table by default)."""
    from corrscan.match2d.refine import refine_template

    res = MatchTemplateResult.load(bundle)
    if particles is None:
        if "particles" not in res.tables:
            raise InputError(f"{bundle} has no particles table: run `corrscan match2d peaks`")
        particles = res.tables["particles"]
    img, vol = read_inputs(cfg)
    return refine_template(
        img,
        vol,
        particles,
        res,
        optics=cfg.optics_group,
        config=refine,
        preprocessing=cfg.preprocessing_filters,
        device=cfg.computational_config.devices()[0],
        oversampling=cfg.computational_config.template_oversampling,
    )

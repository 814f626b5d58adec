"""Peak extraction: Leopard-EM compatible names/semantics, vectorised, against brute force."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.special import erfc

from corrscan.match2d.peaks import (
    MatchTemplatePeaks,
    extract_peaks_and_statistics_p_value,
    extract_peaks_and_statistics_zscore,
    find_peaks_from_zscore,
    gaussian_noise_zscore_cutoff,
    gev_zscore_cutoff,
    pvalue_score_map,
)


def test_zscore_cutoff_formula():
    for n, fp in [(1e6, 1.0), (4096**2 * 20e6, 1.0), (1e4, 0.5)]:
        z = gaussian_noise_zscore_cutoff(int(n), fp)
        # n * P(Z > z) == fp
        assert math.isclose(n * 0.5 * erfc(z / math.sqrt(2)), fp, rel_tol=1e-9)
    # typical full search on a K3 micrograph: ~7.75-7.8
    assert 7.6 < gaussian_noise_zscore_cutoff(5760 * 4092 * 1_584_480 * 13) < 8.0


def _greedy_reference(z: np.ndarray, cutoff: float, radius: float) -> list[tuple[int, int]]:
    """Leopard-EM's rule, written as the plain O(N^2) loop."""
    ys, xs = np.nonzero(z > cutoff)
    order = np.argsort(-z[ys, xs], kind="stable")
    kept: list[tuple[int, int]] = []
    for i in order:
        p = (int(ys[i]), int(xs[i]))
        if all((p[0] - a) ** 2 + (p[1] - b) ** 2 >= radius**2 for a, b in kept):
            kept.append(p)
    return kept


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_find_peaks_matches_bruteforce(seed):
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(60, 70)).astype(np.float32)
    z[10, 10] = 9.0
    z[11, 11] = 8.5  # suppressed by (10, 10)
    z[10, 20] = 7.0
    ref = _greedy_reference(z, 1.5, 5.0)
    py, px = find_peaks_from_zscore(torch.from_numpy(z), 1.5, mask_radius=5.0)
    got = list(zip(py.tolist(), px.tolist(), strict=True))
    assert got == ref
    assert (10, 10) in got and (11, 11) not in got and (10, 20) in got


def test_find_peaks_empty():
    py, px = find_peaks_from_zscore(torch.zeros(8, 8), 1.0)
    assert py.numel() == 0 and px.numel() == 0


def _maps(rng, shape=(40, 50)):
    z = rng.normal(size=shape).astype(np.float32)
    z[5, 7] = 12.0
    z[30, 40] = 10.0
    maps = {
        "mip": z * 0.5 + 3,
        "scaled_mip": z,
        "best_psi": rng.uniform(0, 360, shape),
        "best_theta": rng.uniform(0, 180, shape),
        "best_phi": rng.uniform(0, 360, shape),
        "best_defocus": rng.choice([-200.0, 0.0, 200.0], shape),
        "correlation_average": rng.normal(size=shape) * 0.01,
        "correlation_variance": rng.uniform(0.9, 1.1, shape),
    }
    return {k: torch.from_numpy(np.asarray(v, dtype=np.float32)) for k, v in maps.items()}


def test_extract_peaks_and_statistics_zscore_fields(rng):
    maps = _maps(rng)
    pk = extract_peaks_and_statistics_zscore(**maps, total_correlation_positions=1000)
    assert isinstance(pk, MatchTemplatePeaks)
    assert pk.pos_y.tolist() == [5, 30] and pk.pos_x.tolist() == [7, 40]
    assert pk.total_correlations == 1000
    assert torch.equal(pk.psi, maps["best_psi"][pk.pos_y, pk.pos_x])
    assert torch.equal(pk.relative_defocus, maps["best_defocus"][pk.pos_y, pk.pos_x])
    # a fixed cut-off overrides the noise model
    pk2 = extract_peaks_and_statistics_zscore(
        **maps, total_correlation_positions=1000, z_score_cutoff=11.0
    )
    assert pk2.pos_y.tolist() == [5]
    with pytest.warns(UserWarning, match="No peaks"):
        extract_peaks_and_statistics_zscore(
            **maps, total_correlation_positions=1000, z_score_cutoff=50.0
        )


def test_pvalue_metric_finds_outliers(rng):
    maps = _maps(rng, shape=(256, 256))
    # MIP correlated with, but not a function of, the z-score (as in real maps)
    other = torch.from_numpy(rng.normal(size=(256, 256)).astype(np.float32))
    maps["mip"] = 0.5 * maps["scaled_mip"] + 0.5 * other + 3
    maps["mip"][5, 7] = 12.0
    maps["mip"][30, 40] = 11.0
    score = pvalue_score_map(maps["mip"], maps["scaled_mip"])
    assert score.shape == (256, 256)
    assert float(score[5, 7]) > 8.0 and float(score[30, 40]) > 8.0
    pk = extract_peaks_and_statistics_p_value(**maps, total_correlation_positions=1000)
    assert {(5, 7), (30, 40)} <= set(zip(pk.pos_y.tolist(), pk.pos_x.tolist(), strict=True))
    assert len(pk.pos_y) < 40
    maps = _maps(rng, shape=(80, 80))
    # noise alone rarely passes -ln p > 8 (p < 3.4e-4 per pixel): few picks in 6400 pixels
    noise = {k: v.clone() for k, v in maps.items()}
    noise["scaled_mip"] = torch.from_numpy(rng.normal(size=(80, 80)).astype(np.float32))
    noise["mip"] = noise["scaled_mip"] * 0.5 + 3
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "no peaks" is a fine outcome here
        pk = extract_peaks_and_statistics_p_value(**noise, total_correlation_positions=1000)
    assert len(pk.pos_y) <= 8


def test_gev_cutoff_on_extreme_value_noise(rng):
    # per-pixel maxima of 500 standard normals: a GEV body; 1 FP among 200x200 pixels
    z = rng.normal(size=(500, 200 * 200)).max(axis=0).reshape(200, 200)
    cut = gev_zscore_cutoff(torch.from_numpy(z), false_positives=1.0, max_samples=5000)
    exact = float(
        pd.Series(
            [
                x
                for x in np.linspace(3, 7, 4001)
                if 200 * 200 * -np.expm1(500 * np.log(1 - 0.5 * erfc(x / np.sqrt(2)))) >= 1
            ]
        ).max()
    )
    assert abs(cut - exact) < 0.35

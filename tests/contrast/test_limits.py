"""compute_contrast_limits: planted mixtures, stability, input kinds, slab-only reads, errors."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

from corrscan.contrast import ContrastLimits, compute_contrast_limits, contrast_report
from corrscan.contrast.gmm import DEFAULT_MULTIPLIERS
from corrscan.errors import FileFormatError, InputError
from corrscan.synthetic.mixtures import (
    MixtureComponent,
    gaussian_mixture_volume,
    mixture_quantile,
    tomogram_mixture,
)


@pytest.fixture(scope="module")
def tomo() -> tuple[np.ndarray, dict]:
    return tomogram_mixture((64, 128, 128), seed=11)


def write_ome_zarr(path: Path, vol: np.ndarray, voxel: float) -> None:
    """Minimal OME-Zarr 0.4 (Zarr v2) with two pyramid levels, units in Å."""
    import zarr

    g = zarr.open_group(str(path), mode="w", zarr_format=2)
    axes = [{"name": n, "type": "space", "unit": "angstrom"} for n in "zyx"]
    datasets = [
        {
            "path": str(i),
            "coordinateTransformations": [{"type": "scale", "scale": [voxel * 2**i] * 3}],
        }
        for i in range(2)
    ]
    g.attrs["multiscales"] = [
        {"version": "0.4", "name": "tomo", "axes": axes, "datasets": datasets}
    ]
    g.create_array("0", shape=vol.shape, chunks=(8, 64, 64), dtype=vol.dtype)[:] = vol
    g.create_array("1", shape=vol[::2, ::2, ::2].shape, chunks=(8, 64, 64), dtype=vol.dtype)[:] = (
        vol[::2, ::2, ::2]
    )


def test_gmm_limits_bracket_planted_component() -> None:
    """Background N(0, 1) (nearest the mean) and dark signal: limits mu - 2.2 sd, mu + 0.65 sd."""
    comps = [
        MixtureComponent(0.8, 0.0, 1.0, "background"),
        MixtureComponent(0.2, -4.0, 0.7, "signal"),
    ]
    vol, truth = gaussian_mixture_volume((40, 96, 96), comps, seed=1)
    rep = contrast_report(vol, "gmm")
    assert rep.details["n_components"] == 2
    a, b = DEFAULT_MULTIPLIERS[2]
    lo, hi = rep.limits
    assert lo == pytest.approx(0.0 - a * 1.0, abs=0.05)
    assert hi == pytest.approx(0.0 + b * 1.0, abs=0.05)
    # The window holds the background's bulk and reaches into the dark signal's upper half.
    assert lo < -2.0 < hi and lo > comps[1].mean
    del truth


def test_gmm_limits_on_portal_like_tomogram(tomo) -> None:
    """Lamella background N(0,1), dark blobs, gold, bright outliers: 3 components by BIC, the
    background is nearest the mean, so limits = (0 - 3 * 1, 0 + 0.8 * 1)."""
    vol, truth = tomo
    rep = contrast_report(vol, "gmm")
    assert rep.z_range == (17, 47)
    assert rep.details["n_components"] == 3
    bg = truth["components"]["background"]
    assert rep.limits.low == pytest.approx(bg.mean - 3.0 * bg.std, abs=0.1)
    assert rep.limits.high == pytest.approx(bg.mean + 0.8 * bg.std, abs=0.05)
    assert all(rep.details["converged"])


def test_stability_across_seeds_and_sample_counts(tomo) -> None:
    vol, _ = tomo
    data_range = float(vol.max() - vol.min())
    for method in ("gmm", "cdf", "percentile"):
        lims = np.array(
            [compute_contrast_limits(vol, method, seed=s) for s in range(4)]
            + [
                compute_contrast_limits(vol, method, downsampling_ratio=r, seed=7)
                for r in (0.1, 1.0)
            ]
        )
        spread = lims.max(axis=0) - lims.min(axis=0)
        assert np.all(spread < 0.01 * data_range), (method, lims)


def test_percentile_matches_exact_mixture_quantiles() -> None:
    comps = [MixtureComponent(0.7, 1.0, 2.0), MixtureComponent(0.3, -5.0, 1.0)]
    vol, _ = gaussian_mixture_volume((30, 100, 100), comps, seed=2)
    lo, hi = compute_contrast_limits(vol, "percentile", downsampling_ratio=None)
    assert lo == pytest.approx(mixture_quantile(0.01, comps), abs=0.05)
    assert hi == pytest.approx(mixture_quantile(0.99, comps), abs=0.05)
    lo, hi = compute_contrast_limits(vol, "percentile", low_percentile=10, high_percentile=60)
    assert lo == pytest.approx(mixture_quantile(0.10, comps), abs=0.05)
    assert hi == pytest.approx(mixture_quantile(0.60, comps), abs=0.05)


def test_cdf_limits_bracket_background(tomo) -> None:
    vol, _ = tomo
    rep = contrast_report(vol, "cdf")
    assert rep.z_range == (27, 37)  # auto radius 5
    lo, hi = rep.limits
    # High: density at 1 % of the mode, ~ +3 sd of the background; low reaches the dark signal.
    assert 2.6 < hi < 3.4
    assert -4.5 < lo < -2.5


def test_all_input_kinds_give_identical_limits(tomo, tmp_path: Path) -> None:
    import dask.array as da
    import torch
    import zarr

    from corrscan.core.io.mrc import write_mrc

    vol, _ = tomo
    ref = compute_contrast_limits(vol)
    assert isinstance(ref, ContrastLimits) and isinstance(ref.low, float)
    write_mrc(tmp_path / "t.mrc", vol, 10.0)
    write_ome_zarr(tmp_path / "t.zarr", vol, 10.0)
    np.save(tmp_path / "t.npy", vol)
    z = zarr.create_array(store={}, shape=vol.shape, chunks=(16, 64, 64), dtype="float32")
    z[:] = vol
    inputs = [
        torch.from_numpy(vol),
        da.from_array(vol, chunks=(16, 64, 64)),
        z,
        tmp_path / "t.mrc",
        str(tmp_path / "t.zarr"),
        tmp_path / "t.npy",
    ]
    for x in inputs:
        assert compute_contrast_limits(x) == ref, type(x)
    for method in ("cdf", "percentile"):
        r = compute_contrast_limits(vol, method)
        assert compute_contrast_limits(da.from_array(vol, chunks=(5, 64, 64)), method) == r
        assert compute_contrast_limits(tmp_path / "t.zarr", method) == r
    # Pyramid level 1 is the 2x-binned volume.
    assert compute_contrast_limits(tmp_path / "t.zarr", level=1) == compute_contrast_limits(
        np.ascontiguousarray(vol[::2, ::2, ::2])
    )


class _CountingArray:
    """Array-like recording the z ranges that are read."""

    def __init__(self, a: np.ndarray):
        self.a, self.shape, self.dtype, self.ndim = a, a.shape, a.dtype, a.ndim
        self.z_read: list[tuple[int, int]] = []

    def __getitem__(self, item):
        zs = item[0] if isinstance(item, tuple) else item
        start, stop, _ = zs.indices(self.shape[0])
        if stop > start:
            self.z_read.append((start, stop))
        return self.a[item]


def test_reads_only_the_slab(tomo) -> None:
    import dask.array as da

    vol, _ = tomo
    counting = _CountingArray(vol)
    d = da.from_array(counting, chunks=(8, 128, 128), asarray=True)
    rep = contrast_report(d, "cdf")
    z0, z1 = rep.z_range
    assert counting.z_read and all(s < z1 and e > z0 for s, e in counting.z_read)
    assert min(s for s, _ in counting.z_read) >= 24 and max(e for _, e in counting.z_read) <= 40


def test_nonfinite_ignored_with_warning(tomo) -> None:
    vol, _ = tomo
    bad = vol.copy()
    rng = np.random.default_rng(0)
    idx = rng.choice(bad.size, 5000, replace=False)
    bad.reshape(-1)[idx[:2500]] = np.nan
    bad.reshape(-1)[idx[2500:]] = np.inf
    for method in ("gmm", "cdf", "percentile"):
        with pytest.warns(RuntimeWarning, match="NaN/Inf"):
            rep = contrast_report(bad, method)
        assert rep.n_nonfinite > 0
        assert np.isfinite(rep.limits).all()
        clean = compute_contrast_limits(vol, method)
        assert np.allclose(rep.limits, clean, atol=0.01 * float(vol.max() - vol.min()))


def test_two_d_image_and_constant() -> None:
    comps = [MixtureComponent(0.8, 0.0, 1.0), MixtureComponent(0.2, -4.0, 0.7)]
    vol, _ = gaussian_mixture_volume((300, 300), comps, seed=3)
    rep = contrast_report(vol, "gmm")
    assert rep.shape == (1, 300, 300) and rep.z_range == (0, 1)
    assert rep.limits.low == pytest.approx(-2.2, abs=0.08)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert compute_contrast_limits(np.full((5, 8, 8), 3.0)) == (3.0, 3.0)
        assert compute_contrast_limits(np.full((5, 8, 8), 3.0), "cdf") == (3.0, 3.0)


def test_integer_data() -> None:
    rng = np.random.default_rng(5)
    vol = np.clip(rng.normal(128, 20, (20, 64, 64)), 0, 255).astype(np.uint8)
    lo, hi = compute_contrast_limits(vol, "gmm")
    assert lo == pytest.approx(128 - 2.0 * 20, abs=1.5) and hi == pytest.approx(
        128 + 0.5 * 20, abs=1.5
    )


def test_errors() -> None:
    vol = np.zeros((4, 4, 4), np.float32)
    with pytest.raises(InputError, match="unknown contrast method 'percentil'"):
        compute_contrast_limits(vol, "percentil")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="no option"):
        compute_contrast_limits(vol, "cdf", low_percentile=3)
    with pytest.raises(InputError):
        compute_contrast_limits(np.zeros(10))
    with pytest.raises(InputError):
        compute_contrast_limits(np.zeros((2, 2, 2, 2)))
    with pytest.raises(InputError):
        compute_contrast_limits(np.zeros((4, 4, 4), np.complex64))
    with pytest.raises(InputError):
        compute_contrast_limits({"a": 1})
    with pytest.raises(FileFormatError):
        compute_contrast_limits("/nonexistent/tomo.mrc")


def test_report_to_dict_is_json(tomo) -> None:
    import json

    vol, _ = tomo
    d = contrast_report(vol).to_dict()
    again = json.loads(json.dumps(d))
    assert (
        again["method"] == "gmm" and again["low"] == d["low"] and len(again["details"]["bic"]) == 3
    )

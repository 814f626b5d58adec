"""Z slab selection and voxel sampling."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from corrscan.contrast.sampling import (
    central_slice,
    computed_slab,
    draw_sample,
    fixed_slab,
    slab_bounds,
    slice_std_curve,
)
from corrscan.contrast.volumes import open_volume
from corrscan.errors import InputError


@pytest.mark.parametrize(
    ("n_z", "radius", "expected"),
    [
        (40, 5, (15, 25)),
        (41, 5, (15, 26)),
        (200, 15, (85, 115)),
        (10, 15, (0, 10)),
        (40, 0, (20, 21)),
    ],
)
def test_fixed_slab_matches_portal_formula(
    n_z: int, radius: int, expected: tuple[int, int]
) -> None:
    assert fixed_slab(n_z, radius, central_slice(n_z, None)) == expected


def test_fixed_slab_slice_counts() -> None:
    for n_z in range(31, 80):
        z0, z1 = fixed_slab(n_z, 15, central_slice(n_z, None))
        assert z1 - z0 == (30 if n_z % 2 == 0 else 31)


def test_central_slice_zero_is_honoured() -> None:
    # The peer replaced 0 by the centre (falsy test).
    assert central_slice(50, 0) == 0.0
    assert fixed_slab(50, 3, 0.0) == (0, 4)
    with pytest.raises(InputError):
        central_slice(50, 50)


def test_slab_bounds_options() -> None:
    src = open_volume(np.zeros((40, 4, 4), np.float32))
    assert slab_bounds(src, "auto", auto_radius=15) == (5, 35)
    assert slab_bounds(src, 3, auto_radius=15) == (17, 23)
    assert slab_bounds(src, None, auto_radius=15) == (0, 40)
    assert slab_bounds(src, 2, auto_radius=15, central_z_slice=0) == (0, 3)
    for bad in ("compute", -1, 2.5, True):
        with pytest.raises(InputError):
            slab_bounds(src, bad, auto_radius=15)  # type: ignore[arg-type]


def _std_profile_volume(profile: np.ndarray, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((profile.size, 48, 48)) * profile[:, None, None]).astype(np.float32)


@pytest.mark.parametrize("scale", [1e-3, 1.0, 4e4])
def test_computed_slab_between_std_minima_scale_free(scale: float) -> None:
    z = np.arange(60)
    # std curve with sharp minima at 12 and 44 (V shapes), maxima elsewhere.
    profile = scale * (1.0 + 0.3 * np.minimum(np.abs(z - 12), np.abs(z - 44)))
    vol = _std_profile_volume(profile)
    src = open_volume(vol)
    curve = slice_std_curve(src)
    np.testing.assert_allclose(curve, vol.reshape(60, -1).std(axis=1, dtype=np.float64), rtol=1e-6)
    assert slab_bounds(src, "computed", auto_radius=15) == (12, 45)


def test_computed_slab_one_sided_and_flat() -> None:
    # Only a minimum above the centre: start at 0 (the peer raised UnboundLocalError).
    curve = np.concatenate([np.full(20, 5.0), np.linspace(5, 1, 10), np.linspace(1, 5, 10)])
    assert computed_slab(curve, 19.5) == (0, 30)
    with pytest.warns(RuntimeWarning, match="constant"):
        assert computed_slab(np.ones(30), 14.5) == (0, 30)


def test_slice_std_ignores_nonfinite() -> None:
    rng = np.random.default_rng(0)
    vol = rng.standard_normal((3, 20, 20))
    ref = vol.reshape(3, -1).std(axis=1)
    vol[1, 0, :5] = np.nan
    vol[2, 3, 3] = np.inf
    curve = slice_std_curve(open_volume(vol))
    assert curve[0] == pytest.approx(ref[0])
    assert curve[1] == pytest.approx(np.std(vol[1][np.isfinite(vol[1])]))
    assert curve[2] == pytest.approx(np.std(vol[2][np.isfinite(vol[2])]))


def test_draw_sample_count_range_and_determinism() -> None:
    rng = np.random.default_rng(1)
    vol = rng.uniform(0, 1, (30, 40, 40)).astype(np.float32)
    vol[10:20] += 10.0  # slab values are in [10, 11]
    src = open_volume(vol)
    s = draw_sample(src, (10, 20), downsampling_ratio=0.25, max_samples=None, seed=3)
    assert s.values.size == 4000 and s.slab_voxels == 16000 and s.n_nonfinite == 0
    assert s.values.min() >= 10 and s.values.max() <= 11
    s2 = draw_sample(src, (10, 20), downsampling_ratio=0.25, max_samples=None, seed=3)
    np.testing.assert_array_equal(s.values, s2.values)
    capped = draw_sample(src, (10, 20), downsampling_ratio=0.25, max_samples=1000, seed=3)
    assert capped.values.size == 1000
    everything = draw_sample(src, (10, 20), downsampling_ratio=None, seed=3)
    np.testing.assert_array_equal(np.sort(everything.values), np.sort(vol[10:20].ravel()))
    # Uniform sampling: the sample mean matches the slab mean.
    assert abs(s.values.mean() - vol[10:20].mean()) < 4 * vol[10:20].std() / np.sqrt(4000)
    with pytest.raises(InputError):
        draw_sample(src, (10, 20), downsampling_ratio=0.0)
    with pytest.raises(InputError):
        draw_sample(src, (10, 20), downsampling_ratio=1.5)


def test_draw_sample_drops_nonfinite_with_warning() -> None:
    vol = np.ones((4, 10, 10), np.float32)
    vol[1, :5, :] = np.nan
    vol[2, 0, 0] = -np.inf
    with pytest.warns(RuntimeWarning, match="ignored 51 NaN/Inf"):
        s = draw_sample(open_volume(vol), (0, 4), downsampling_ratio=None)
    assert s.n_nonfinite == 51 and s.values.size == 349 and np.all(s.values == 1)
    vol[:] = np.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        with pytest.raises(InputError, match="no finite voxel"):
            draw_sample(open_volume(vol), (0, 4), downsampling_ratio=None)


def test_sample_identical_across_chunking_of_inputs() -> None:
    """NumPy, dask and zarr inputs give the same sample for the same seed."""
    import dask.array as da
    import zarr

    rng = np.random.default_rng(2)
    vol = rng.standard_normal((24, 32, 32)).astype(np.float32)
    z = zarr.create_array(store={}, shape=vol.shape, chunks=(5, 16, 16), dtype="float32")
    z[:] = vol
    ref = draw_sample(open_volume(vol), (4, 20), seed=9).values
    for other in (da.from_array(vol, chunks=(7, 11, 32)), z):
        np.testing.assert_array_equal(draw_sample(open_volume(other), (4, 20), seed=9).values, ref)

"""Every peak caller on maps with known maxima; filters; sub-voxel fit; false-positive cut."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import erfc

from corrscan.errors import InputError
from corrscan.match3d.peaks import (
    PEAK_METHODS,
    PeakCaller,
    PeakCallerFast,
    PeakCallerMaximumFilter,
    PeakCallerRecursiveMasking,
    PeakCallerScipy,
    PeakCallerSort,
    PeakClustering,
    call_peaks,
    false_positive_cutoff,
    subvoxel_refine,
)

SHAPE = (30, 32, 34)
TRUE = np.array([[6, 8, 9], [15, 20, 25], [22, 7, 28], [10, 26, 12], [24, 24, 6]])
HEIGHTS = np.array([5.0, 4.5, 4.0, 3.5, 3.0])


def _map(rng, noise=0.05, width=1.2):
    grid = np.stack(np.meshgrid(*(np.arange(s) for s in SHAPE), indexing="ij"), -1)
    m = rng.normal(scale=noise, size=SHAPE)
    for p, h in zip(TRUE, HEIGHTS, strict=True):
        m += h * np.exp(-np.sum((grid - p) ** 2, -1) / (2 * width**2))
    return m


def _as_set(coords):
    return {tuple(int(v) for v in c) for c in coords}


@pytest.mark.parametrize("method", PEAK_METHODS)
def test_every_method_finds_the_planted_maxima(rng, method):
    m = _map(rng)
    coords, scores = call_peaks(m, method=method, num_peaks=5, min_distance=4, min_score=1.0)
    assert _as_set(coords) == _as_set(TRUE)
    np.testing.assert_allclose(np.sort(scores)[::-1], HEIGHTS, atol=0.3)
    assert np.all(np.diff(scores) <= 0)  # sorted descending
    # num_peaks is honoured and takes the highest ones
    c3, _ = call_peaks(m, method=method, num_peaks=3, min_distance=4, min_score=1.0)
    assert _as_set(c3) == _as_set(TRUE[:3])


@pytest.mark.parametrize("method", PEAK_METHODS)
def test_filters_score_window_and_boundary(rng, method):
    m = _map(rng)
    c, _s = call_peaks(m, method=method, num_peaks=10, min_distance=4, min_score=3.2, max_score=4.7)
    assert _as_set(c) == _as_set(TRUE[1:4])
    c, _ = call_peaks(
        m, method=method, num_peaks=10, min_distance=4, min_score=1.0, min_boundary_distance=7
    )
    assert _as_set(c) == _as_set(TRUE[[1]])  # the others lie within 7 voxels of a face


@pytest.mark.parametrize("method", PEAK_METHODS)
def test_min_distance_suppresses_close_peaks(method):
    m = np.zeros(SHAPE)
    m[10, 10, 10], m[10, 10, 13], m[20, 20, 20] = 3.0, 2.0, 1.5
    c, _ = call_peaks(m, method=method, num_peaks=10, min_distance=5, min_score=1.0)
    assert _as_set(c) == {(10, 10, 10), (20, 20, 20)}
    c, _ = call_peaks(m, method=method, num_peaks=10, min_distance=2, min_score=1.0)
    assert _as_set(c) == {(10, 10, 10), (10, 10, 13), (20, 20, 20)}


def test_classes_match_functions_and_merge(rng):
    m = _map(rng)
    for cls in (
        PeakCallerSort,
        PeakCallerMaximumFilter,
        PeakCallerFast,
        PeakCallerScipy,
        PeakClustering,
        PeakCallerRecursiveMasking,
    ):
        pc = cls(SHAPE, num_peaks=5, min_distance=4, min_score=1.0)
        rot = np.eye(3) * 2  # stored as given
        pc(m, rotation_matrix=rot)
        t, r, _s, _d = pc
        assert _as_set(t) == _as_set(TRUE), cls.__name__
        assert r.shape == (5, 3, 3) and np.all(r == rot)
        # merging two halves' results gives the same peaks
        a = cls(SHAPE, num_peaks=5, min_distance=4, min_score=1.0)
        b = cls(SHAPE, num_peaks=5, min_distance=4, min_score=1.0)
        half = m.copy()
        half[:, :, 17:] = 0
        a(half)
        other = m.copy()
        other[:, :, :17] = 0
        b(other)
        merged = cls.merge([a, b])
        assert _as_set(merged.translations) == _as_set(TRUE), cls.__name__
    with pytest.raises(TypeError):
        PeakCaller(SHAPE)
    with pytest.raises(ValueError):
        PeakCallerSort(SHAPE, num_peaks=0)
    with pytest.raises(ValueError):
        PeakCallerSort(SHAPE, min_distance=-1)
    with pytest.raises(TypeError):
        PeakCallerSort(SHAPE, this_is_not_a_param=3)


def test_recursive_masking_with_rotated_template_mask():
    m = np.zeros(SHAPE)
    # a strong peak with a shoulder 4 voxels away along x inside an elongated mask
    m[15, 15, 15], m[15, 15, 19], m[15, 19, 15] = 5.0, 4.0, 3.0
    mask = np.zeros((11, 11, 11), dtype=np.float32)
    mask[5, 5, :] = 1.0  # a rod along x (template frame)
    rots = np.zeros(SHAPE, dtype=np.int32)
    ident = {0: np.eye(3, dtype=np.float32)}
    pc = PeakCallerRecursiveMasking(SHAPE, num_peaks=5, min_distance=1, min_score=1.0, mask=mask)
    pc(m, rotations=rots, rotation_mapping=ident)
    assert _as_set(pc.translations) == {(15, 15, 15), (15, 19, 15)}  # x-shoulder masked
    # rod turned 90 degrees about z: now along y, so the y-shoulder is masked instead
    rz = {0: np.array([[0, -1, 0], [1, 0, 0], [0, 0, 1]], dtype=np.float32)}
    pc = PeakCallerRecursiveMasking(SHAPE, num_peaks=5, min_distance=1, min_score=1.0, mask=mask)
    pc(m, rotations=rots, rotation_mapping=rz)
    assert _as_set(pc.translations) == {(15, 15, 15), (15, 15, 19)}


def test_subvoxel_refinement_recovers_offsets():
    grid = np.stack(np.meshgrid(*(np.arange(s) for s in (20, 20, 20)), indexing="ij"), -1)
    true = np.array([[8.3, 10.0, 11.6], [14.0, 5.45, 6.8]])
    m = sum(np.exp(-np.sum((grid - t) ** 2, -1) / (2 * 2.0**2)) for t in true)
    coords, _ = call_peaks(m, method="maximum_filter", num_peaks=2, min_distance=3)
    sub, heights = subvoxel_refine(m, coords)
    order = np.argsort(sub[:, 0])
    np.testing.assert_allclose(sub[order], true, atol=0.06)
    assert np.all(heights >= m[tuple(coords.T)])


@pytest.mark.parametrize("method", ["maximum_filter", "local_max", "fast"])
def test_candidate_rules_match_scipy_definitions(rng, method):
    """Local-maximum rules (core max filter) equal their SciPy definitions, then greedy
    Euclidean suppression, on a rough map with many maxima, edges and a NaN."""
    from scipy import ndimage
    from scipy.spatial.distance import cdist

    m = ndimage.gaussian_filter(rng.normal(size=(20, 21, 19)), 0.8)
    m[2, 3, 4] = np.nan
    md = 2
    f = np.where(np.isfinite(m), m, -np.inf)
    if method == "maximum_filter":
        ok = f == ndimage.maximum_filter(f, size=md, mode="constant", cval=-np.inf)
    elif method == "local_max":  # skimage-like: edge-replicating filter, border excluded
        ok = f == ndimage.maximum_filter(f, size=2 * md + 1, mode="nearest")
        ok[:md], ok[-md:], ok[:, :md], ok[:, -md:], ok[..., :md], ok[..., -md:] = (False,) * 6
    else:  # fast: best voxel of each md-wide grid cell that is a +-md maximum
        ok = np.zeros_like(f, dtype=bool)
        for cell in np.ndindex(*(-(-n // md) for n in f.shape)):
            sl = tuple(slice(c * md, (c + 1) * md) for c in cell)
            loc = np.unravel_index(np.argmax(f[sl]), f[sl].shape)
            ok[tuple(s.start + i for s, i in zip(sl, loc, strict=True))] = True
        ok &= f == ndimage.maximum_filter(f, size=2 * md + 1, mode="constant", cval=-np.inf)
    cand = np.argwhere(ok & np.isfinite(f))
    cand = cand[np.argsort(-f[tuple(cand.T)], kind="stable")]
    kept: list[np.ndarray] = []
    for c in cand:  # greedy: at least md (Euclidean) from every higher kept peak
        if not kept or cdist(c[None], np.array(kept)).min() >= md - 1e-9:
            kept.append(c)
    coords, scores = call_peaks(m, method=method, num_peaks=10_000, min_distance=md)
    assert len(kept) > 10
    np.testing.assert_array_equal(coords, np.array(kept))
    np.testing.assert_array_equal(scores, f[tuple(np.array(kept).T)])


def test_subvoxel_heights_of_an_exact_parabola():
    """A separable parabola's vertex and height are exact; offsets clamp at 0.5 voxel."""
    grid = np.stack(np.meshgrid(*(np.arange(9.0),) * 3, indexing="ij"), -1)
    vertex = np.array([4.3, 3.8, 4.1])
    m = 10.0 - np.sum((grid - vertex) ** 2, -1)
    sub, heights = subvoxel_refine(m, np.array([[4, 4, 4]]))
    np.testing.assert_allclose(sub[0], vertex, atol=1e-12)
    # per-axis heights: the largest is the axis with the largest offset (z: 0.3 voxel)
    np.testing.assert_allclose(heights, [10.0 - 0.2**2 - 0.1**2], atol=1e-12)
    far = 10.0 - np.sum((grid - np.array([4.0, 4.0, 4.9])) ** 2, -1)
    sub, heights = subvoxel_refine(far, np.array([[4, 4, 4]]))  # vertex 0.9 away: clamp
    np.testing.assert_allclose(sub[0], [4.0, 4.0, 4.5], atol=1e-12)
    np.testing.assert_allclose(heights, [10.0 - 0.4**2], atol=1e-12)  # parabola at 0.5


def test_false_positive_cutoff_matches_gaussian_tail():
    n = 1e7
    cut = false_positive_cutoff(n, 1.0)
    assert n * 0.5 * erfc(cut / np.sqrt(2)) == pytest.approx(1.0, rel=1e-6)
    assert false_positive_cutoff(n, 1.0, mean=1.0, std=2.0) == pytest.approx(1 + 2 * cut)
    with pytest.raises(InputError):
        false_positive_cutoff(10, 20)


def test_noise_only_map_has_about_n_fp_exceedances(rng):
    noise = rng.normal(size=(40, 40, 40))
    cut = false_positive_cutoff(noise.size, 10.0, mean=noise.mean(), std=noise.std())
    assert 2 <= int((noise > cut).sum()) <= 25

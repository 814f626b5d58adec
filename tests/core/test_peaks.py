"""Peak extraction: z-score cut-off, distance-suppressed peaks, maximum filter, sub-pixel fits."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from scipy import ndimage
from scipy.special import erfcinv
from scipy.stats import norm

from corrscan.core.peaks import (
    find_peaks,
    gaussian_noise_zscore_cutoff,
    maximum_filter_peaks,
    parabolic_vertex,
    subpixel_refine,
)
from corrscan.errors import InputError

# ----------------------------------------------------------------------------- cut-off


@pytest.mark.parametrize(
    ("n", "fp"), [(1e3, 1.0), (4096.0**2 * 1_584_480 * 13, 1.0), (1e9, 0.005), (50, 3.0)]
)
def test_zscore_cutoff_matches_scipy(n: float, fp: float) -> None:
    z = gaussian_noise_zscore_cutoff(n, fp)
    assert z == pytest.approx(np.sqrt(2) * erfcinv(2 * fp / n), rel=1e-14)
    assert z == pytest.approx(norm.isf(fp / n), rel=1e-9)
    # expected count of noise values above z* is fp
    assert n * norm.sf(z) == pytest.approx(fp, rel=1e-9)


def test_zscore_cutoff_leopard_value_and_errors() -> None:
    # full default Leopard-EM search on a 4096^2 micrograph: ~7.8
    assert 7.75 < gaussian_noise_zscore_cutoff(4096**2 * 1_584_480 * 13) < 7.85
    for n, fp in ((0, 1), (-5, 1), (100, 0), (100, 100), (100, float("nan"))):
        with pytest.raises(InputError):
            gaussian_noise_zscore_cutoff(n, fp)


# ----------------------------------------------------------------------------- find_peaks


def _brute_force(a: np.ndarray, thr, md: float, eb: int, metric: str) -> np.ndarray:
    """The documented definition, pixel by pixel."""
    nd = a.ndim
    r = int(np.floor(md))

    def dist(o) -> float:
        o = np.asarray(o, dtype=float)
        return float(np.abs(o).max()) if metric == "chebyshev" else float(np.sqrt((o * o).sum()))

    cands = []
    for p in itertools.product(*[range(s) for s in a.shape]):
        if any(pi < eb or pi >= s - eb for pi, s in zip(p, a.shape, strict=True)):
            continue
        if thr is not None and not a[p] > thr:
            continue
        ok = True
        for o in itertools.product(range(-r, r + 1), repeat=nd):
            if dist(o) > md:
                continue
            q = tuple(pi + oi for pi, oi in zip(p, o, strict=True))
            if all(0 <= qi < s for qi, s in zip(q, a.shape, strict=True)) and a[q] > a[p]:
                ok = False
                break
        if ok:
            cands.append(p)
    cands.sort(key=lambda p: (-a[p], np.ravel_multi_index(p, a.shape)))
    acc: list[tuple[int, ...]] = []
    for p in cands:
        if all(dist(np.subtract(p, q)) > md for q in acc):
            acc.append(p)
    return np.array(acc, dtype=np.int64).reshape(-1, nd)


@pytest.mark.parametrize("trial", range(24))
def test_find_peaks_matches_brute_force(trial: int) -> None:
    rng = np.random.default_rng(100 + trial)
    nd = 2 if trial % 2 == 0 else 3
    shape = (17, 19) if nd == 2 else (8, 9, 10)
    a = rng.normal(size=shape)
    if trial % 4 in (1, 2):
        a = np.round(a * 2) / 2  # many exact ties and plateaus
    md = [1, 2, 2.5, 3][trial % 4]
    metric = ["chebyshev", "euclidean"][(trial // 4) % 2]
    thr = None if trial % 3 else 0.0
    eb = trial % 3
    got = find_peaks(a, threshold=thr, min_distance=md, exclude_border=eb, metric=metric)
    assert isinstance(got, np.ndarray) and got.dtype == np.int64
    np.testing.assert_array_equal(got, _brute_force(a, thr, md, eb, metric))


def test_find_peaks_planted_maxima() -> None:
    rng = np.random.default_rng(0)
    a = rng.uniform(0, 0.1, size=(64, 80)).astype(np.float32)
    planted = {
        (10, 12): 5.0,
        (10, 17): 4.0,
        (40, 60): 3.0,
        (1, 40): 6.0,
        (30, 30): 2.0,
        (33, 32): 1.5,
    }
    for p, v in planted.items():
        a[p] = v
    coords, scores = find_peaks(
        a, threshold=1.0, min_distance=4, exclude_border=2, return_scores=True
    )
    # (1, 40) is inside the border, (10, 17) is 5 px from (10, 12) (> 4: kept),
    # (33, 32) is within 4 px (Chebyshev 3) of the higher (30, 30): suppressed
    expected = [(10, 12), (10, 17), (40, 60), (30, 30)]
    np.testing.assert_array_equal(coords, np.array(expected))
    np.testing.assert_array_equal(scores, np.array([5.0, 4.0, 3.0, 2.0], dtype=np.float32))
    assert np.all(np.diff(scores) <= 0)
    # min_distance honoured for every pair, with and without a threshold
    for md in (1, 3, 6):
        c = find_peaks(a, min_distance=md)
        d = np.abs(c[:, None, :] - c[None, :, :]).max(-1)
        np.fill_diagonal(d, 10**6)
        assert d.min() > md
    # max_peaks keeps the highest; torch in -> torch out
    top = find_peaks(torch.from_numpy(a), threshold=1.0, min_distance=4, max_peaks=2)
    assert isinstance(top, torch.Tensor)
    assert top.tolist() == [[1, 40], [10, 12]]


def test_find_peaks_euclidean_allows_diagonal_neighbours_beyond_radius() -> None:
    a = np.zeros((20, 20))
    a[5, 5], a[8, 8] = 2.0, 1.0  # Chebyshev 3, Euclidean 4.24
    assert len(find_peaks(a, threshold=0.5, min_distance=3.5, metric="chebyshev")) == 1
    assert len(find_peaks(a, threshold=0.5, min_distance=3.5, metric="euclidean")) == 2


def test_find_peaks_huge_plateau_is_a_clear_error() -> None:
    a = np.zeros((330, 330), dtype=np.float32)
    with pytest.raises(InputError, match="plateau"):
        find_peaks(a, min_distance=1)
    assert len(find_peaks(a, threshold=0.0)) == 0  # a threshold removes the background


def test_maximum_filter_peaks_matches_scipy() -> None:
    rng = np.random.default_rng(4)
    for shape, size in (((30, 31), 3), ((30, 31), 4), ((12, 13, 14), 5)):
        a = rng.normal(size=shape)
        ref_mask = a == ndimage.maximum_filter(a, size=size, mode="constant", cval=-np.inf)
        ref_mask &= a > 0.5
        ref = np.argwhere(ref_mask)
        ref = ref[np.argsort(-a[ref_mask], kind="stable")]
        got = maximum_filter_peaks(a, size=size, threshold=0.5)
        np.testing.assert_array_equal(got, ref)


# ----------------------------------------------------------------------------- sub-pixel


def test_parabolic_vertex_exact_on_parabolas() -> None:
    rng = np.random.default_rng(5)
    a = -rng.uniform(0.1, 3.0, 200)
    x0 = rng.uniform(-0.5, 0.5, 200)
    c = rng.normal(size=200)
    f = lambda x: a * (x - x0) ** 2 + c  # noqa: E731
    off, h, flag = parabolic_vertex(f(-1.0), f(0.0), f(1.0), return_flag=True)
    np.testing.assert_allclose(off, x0, atol=1e-12)
    np.testing.assert_allclose(h, c, atol=1e-12)
    assert not flag.any()
    off_t, _h_t = parabolic_vertex(*(torch.as_tensor(f(x)) for x in (-1.0, 0.0, 1.0)))
    assert isinstance(off_t, torch.Tensor)
    np.testing.assert_allclose(off_t.numpy(), x0, atol=1e-12)
    # not a maximum: offset 0, height y0, flagged; beyond half a pixel: clamped, flagged
    assert parabolic_vertex(1.0, 0.0, 1.0, return_flag=True) == (0.0, 0.0, True)
    o, _h, fl = parabolic_vertex(0.0, 1.0, 1.9, return_flag=True)
    assert o == 0.5 and fl


def test_subpixel_refine_on_sampled_gaussian_and_quadratics() -> None:
    y, x = np.mgrid[0:21, 0:23].astype(np.float64)
    cy, cx, s = 10.3, 11.6, 1.7
    g = 4.0 * np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * s**2))
    peak = find_peaks(g, min_distance=3)[:1]
    np.testing.assert_array_equal(peak, [[10, 12]])
    ref, val = subpixel_refine(g, peak, method="gaussian")
    np.testing.assert_allclose(ref, [[cy, cx]], atol=1e-9)
    np.testing.assert_allclose(val, [4.0], rtol=1e-9)
    ref_p, _ = subpixel_refine(g, peak, method="parabolic")
    assert np.abs(ref_p - [[cy, cx]]).max() < 0.06  # parabola on a Gaussian: small bias
    # full quadratic with a cross term: exact with "quadratic"
    q = 7.0 - 0.8 * (y - cy) ** 2 - 0.5 * (x - cx) ** 2 + 0.3 * (y - cy) * (x - cx)
    ref_q, val_q, flags = subpixel_refine(q, [[10, 12]], method="quadratic", return_flags=True)
    np.testing.assert_allclose(ref_q, [[cy, cx]], atol=1e-9)
    np.testing.assert_allclose(val_q, [7.0], atol=1e-9)
    assert not flags.any()


def test_subpixel_refine_3d_and_border() -> None:
    z, y, x = np.mgrid[0:9, 0:10, 0:11].astype(np.float64)
    c = (4.2, 4.7, 5.4)
    vol = 3.0 - (z - c[0]) ** 2 - 2 * (y - c[1]) ** 2 - 0.5 * (x - c[2]) ** 2
    ref, val = subpixel_refine(torch.from_numpy(vol), torch.tensor([[4, 5, 5]]))
    np.testing.assert_allclose(ref.numpy(), [c], atol=1e-12)
    np.testing.assert_allclose(val.numpy(), [3.0], atol=1e-12)
    ref_q, _ = subpixel_refine(vol, [[4, 5, 5]], method="quadratic")
    np.testing.assert_allclose(ref_q, [c], atol=1e-9)
    # on the border the offset along that axis is 0 and the peak is flagged
    ref_b, _, fl = subpixel_refine(vol, [[0, 5, 5]], return_flags=True)
    assert ref_b[0, 0] == 0.0 and fl[0]
    with pytest.raises(InputError):
        subpixel_refine(vol, [[9, 0, 0]])


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: find_peaks(np.zeros(5)), "2 or 3 dimensions"),
        (lambda: find_peaks(np.zeros((5, 5)), min_distance=-1), "min_distance"),
        (lambda: find_peaks(np.zeros((5, 5)), metric="manhattan"), "metric"),
        (lambda: find_peaks(np.zeros((5, 5)), exclude_border=-1), "exclude_border"),
        (lambda: find_peaks(np.zeros((5, 5)), max_peaks=-1), "max_peaks"),
        (lambda: find_peaks(np.zeros((5, 5), complex)), "real"),
        (lambda: maximum_filter_peaks(np.zeros((5, 5)), size=0), "size"),
        (lambda: subpixel_refine(np.zeros((5, 5)), [[1, 1]], method="cubic"), "method"),
        (lambda: subpixel_refine(np.zeros((5, 5)), [[1.5, 1]]), "integer"),
    ],
)
def test_bad_inputs_name_the_argument(call, match) -> None:
    with pytest.raises(InputError, match=match):
        call()

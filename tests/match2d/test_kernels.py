"""The compiled per-chunk update of the 2D search against plain torch formulas."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from corrscan.match2d import kernels, match_template
from corrscan.synthetic.micrograph import example_template, simulate_micrograph

pytestmark = pytest.mark.skipif(not kernels.AVAILABLE, reason="numba not installed")


def test_chunk_reduce_known_answers(rng):
    n, h, w, hv, wv = 6, 9, 11, 5, 7
    maps = rng.normal(size=(n, h, w)).astype(np.float32)
    maps[3, 0, :4] = maps[1, 0, :4]  # exact ties: the smaller search index must win
    items = np.array([10, 4, 7, 2, 8, 5], dtype=np.int64)  # not ascending (defocus-major)
    scale = rng.uniform(0.5, 2.0, size=n).astype(np.float32)
    scale[3] = scale[1]
    stored = np.full((hv, wv), 0.3, dtype=np.float32)
    s1 = np.full(h * w, 1.0, dtype=np.float32)  # sums are added to
    s2 = np.zeros(h * w, dtype=np.float32)
    best = np.empty((hv, wv), dtype=np.float32)
    arg = np.empty((hv, wv), dtype=np.int64)
    cand = np.empty(hv * wv, dtype=np.int64)
    k = kernels.chunk_reduce(maps, scale, items, stored, s1, s2, best, arg, cand)

    v = maps * scale[:, None, None]
    np.testing.assert_allclose(s1, 1.0 + v.sum(0).ravel(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(s2, (v.astype(np.float64) ** 2).sum(0).ravel(), rtol=1e-5)
    ref_best = v.max(0)[:hv, :wv]
    np.testing.assert_array_equal(best, ref_best)
    hit = v[:, :hv, :wv] == ref_best
    ref_arg = np.where(hit, items[:, None, None], np.iinfo(np.int64).max).min(0)
    np.testing.assert_array_equal(arg, ref_arg)
    assert arg[0, 0] == min(items[1], items[3]) or v[1, 0, 0] != ref_best[0, 0]
    ref_cand = np.flatnonzero(ref_best >= stored)
    np.testing.assert_array_equal(cand[:k], ref_cand)


def test_search_with_and_without_the_compiled_update(monkeypatch):
    """The whole search gives the torch update's maps (rounding of the float32 sums only)."""
    tpl = example_template(24, n_atoms=300, atom_sigma=0.7, seed=0)
    img, _ = simulate_micrograph(tpl, shape=(64, 64), pixel_size=1.5, n_particles=1, seed=1)
    kw = dict(
        optics={"pixel_size": 1.5, "defocus_u": 8000.0, "defocus_v": 8000.0},
        defocus_search={"defocus_min": -300.0, "defocus_max": 300.0, "defocus_step": 300.0},
        orientations=torch.rand(
            12, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0)
        )
        * torch.tensor([360.0, 180.0, 360.0], dtype=torch.float64),
        compute={"device": "cpu", "num_threads": 1},
        progress=False,
    )
    fast = match_template(img, tpl, **kw)
    monkeypatch.setattr(kernels, "AVAILABLE", False)
    slow = match_template(img, tpl, **kw)
    for key in ("mip", "correlation_mean", "correlation_variance"):
        a, b = np.asarray(fast.maps[key]), np.asarray(slow.maps[key])
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * float(np.abs(b).max()))
    for key in ("psi", "theta", "phi", "relative_defocus"):
        np.testing.assert_array_equal(np.asarray(fast.maps[key]), np.asarray(slow.maps[key]))

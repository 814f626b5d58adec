"""The compiled per-chunk update of the 2D search against plain torch formulas."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from corrscan.match2d import kernels, match_template
from corrscan.synthetic.micrograph import example_template, simulate_micrograph

pytestmark = pytest.mark.skipif(not kernels.AVAILABLE, reason="numba not installed")


def _reference(maps, scale, items, mip0, idx0):
    """float64 sums and the MaxAccumulator rule, written out plainly."""
    v = maps.astype(np.float64) * scale[:, None, None]
    hv, wv = mip0.shape
    mip, idx = mip0.copy(), idx0.copy()
    for i in np.argsort(items, kind="stable"):
        for y in range(hv):
            for x in range(wv):
                s = np.float32(v[i, y, x])
                if s > mip[y, x] or (s == mip[y, x] and items[i] < idx[y, x]):
                    mip[y, x], idx[y, x] = s, items[i]
    return v.sum(0).ravel(), (v**2).sum(0).ravel(), mip, idx


@pytest.mark.parametrize("n", [6, kernels.GROUP + 5])  # one group; two groups
def test_chunk_reduce_known_answers(rng, n):
    h, w, hv, wv = 9, 11, 5, 7
    maps = rng.normal(size=(n, h, w)).astype(np.float32)
    maps[3, 0, :4] = maps[1, 0, :4]  # exact ties inside a group: the smaller index wins
    maps[n - 1, 1, :3] = maps[0, 1, :3] + 50  # ties across groups (n > GROUP)
    maps[n - 2, 1, :3] = maps[0, 1, :3] + 50
    maps[2, 2, 2] = np.nan  # NaN never wins
    maps[:, 3, 1] = np.nan  # every map NaN: the stored value and index stay
    items = rng.permutation(np.arange(100, 100 + 3 * n, 3)).astype(np.int64)  # any order
    if n > kernels.GROUP:  # the tied maps n-1 and n-2 sort into different groups
        lo, hi = np.sort(items)[[0, -1]]
        rest = np.sort(items)[1:-1]
        items[: n - 2] = rng.permutation(rest)
        items[n - 2], items[n - 1] = hi, lo
    scale = rng.uniform(0.5, 2.0, size=n).astype(np.float32)
    scale[3] = scale[1]
    scale[n - 1] = scale[n - 2] = scale[0] = 1.0
    mip = np.full((hv, wv), 0.3, dtype=np.float32)
    mip[4, 6] = 50.0  # a stored maximum the chunk does not reach
    idx = np.full((hv, wv), 7, dtype=np.int64)
    # a stored maximum that the chunk ties, with a smaller stored index: it stays
    mip[0, 3] = (maps[:, 0, 3] * scale).max()
    idx[0, 3] = 5
    mip[0, 4] = (maps[:, 0, 4] * scale).max()  # ... with a larger one: the chunk's item wins
    idx[0, 4] = 10**6
    mip[3, 1], idx[3, 1] = -np.inf, np.iinfo(np.int64).max  # a never-updated pixel
    s1 = np.full(h * w, 1.0, dtype=np.float32)  # sums are added to
    s2 = np.zeros(h * w, dtype=np.float32)
    ref = _reference(maps, scale, items, mip, idx)
    kernels.chunk_reduce(list(maps), scale, items, s1, s2, mip, idx)

    finite = np.isfinite(ref[0])
    np.testing.assert_allclose(s1[finite], 1.0 + ref[0][finite], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(s2[finite], ref[1][finite], rtol=1e-5)
    np.testing.assert_array_equal(mip, ref[2])
    np.testing.assert_array_equal(idx, ref[3])
    assert mip[4, 6] == 50.0 and idx[4, 6] == 7
    assert idx[0, 3] == 5
    assert mip[3, 1] == -np.inf and idx[3, 1] == np.iinfo(np.int64).max
    assert idx[0, 4] == items[np.argmax(maps[:, 0, 4] * scale)]
    assert not np.isnan(mip).any()
    if n > kernels.GROUP:  # the cross-group tie went to the smaller item (in the 2nd group)
        assert (idx[1, :3] == items[n - 1]).all()


def test_chunk_reduce_matches_the_accumulator(rng):
    """Folding in place equals MaxAccumulator.update over the same maps (the reference rule)."""
    from corrscan.core.stats import MaxAccumulator

    n, h, w = 12, 8, 10
    maps = rng.normal(size=(n, h, w)).astype(np.float32)
    maps[5] = maps[2]  # whole-map ties
    items = rng.permutation(n).astype(np.int64)
    ref = MaxAccumulator((h, w), ("index",), device="cpu")
    ref.update(torch.from_numpy(maps), {"index": torch.from_numpy(items)})
    acc = MaxAccumulator((h, w), ("index",), device="cpu")
    for part in (slice(0, 7), slice(7, n)):  # two chunks
        mip, pl = acc.fused_buffers({"index": torch.int64})
        kernels.chunk_reduce(
            list(maps[part]), np.ones(len(items[part]), np.float32), items[part],
            np.zeros(h * w, np.float32), np.zeros(h * w, np.float32), mip.numpy(),
            pl["index"].numpy(),
        )  # fmt: skip
    assert torch.equal(acc.max, ref.max)
    assert torch.equal(acc.payloads["index"], ref.payloads["index"])


def test_chunk_reduce_rejects_bad_inputs(rng):
    maps = [np.zeros((4, 4), np.float32)] * 2
    ok = dict(
        scale=np.ones(2, np.float32), items=np.arange(2), s1=np.zeros(16, np.float32),
        s2=np.zeros(16, np.float32), mip=np.zeros((3, 3), np.float32),
        index=np.zeros((3, 3), np.int64),
    )  # fmt: skip
    kernels.chunk_reduce(maps, **ok)
    with pytest.raises(ValueError, match="at least one"):
        kernels.chunk_reduce([], **ok)
    with pytest.raises(ValueError, match="inconsistent"):
        kernels.chunk_reduce(maps, **{**ok, "s1": np.zeros(15, np.float32)})
    with pytest.raises(ValueError, match="one shape"):
        kernels.chunk_reduce([maps[0], np.zeros((4, 5), np.float32)], **ok)


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

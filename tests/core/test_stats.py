"""Search statistics: exact merges, accuracy over many updates, ties, payloads, state dicts."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from corrscan.core.stats import (
    FRAC_BITS,
    MaxAccumulator,
    MomentAccumulator,
    SearchStatistics,
    batch_argmax,
    batch_sum,
    batch_sum_of_squares,
)
from corrscan.errors import InputError

SHAPE = (6, 7)


def _updates(seed: int, n: int, shape=SHAPE) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Score batches of varying size and magnitude (|x| < 1 and >> 1, ties) + global index."""
    g = torch.Generator().manual_seed(seed)
    out, start = [], 0
    for u in range(n):
        b = int(torch.randint(1, 9, (1,), generator=g))
        scale = [1e-3, 0.7, 3.0, 250.0][u % 4]
        x = torch.randn((b, *shape), generator=g) * scale + (u % 3 - 1)
        if u % 5 == 0:  # exact ties across updates and inside the batch
            x[:, 0, 0] = 2.5
        out.append((x, torch.arange(start, start + b)))
        start += b
    return out


def _state_tensors(stats: SearchStatistics) -> dict[str, torch.Tensor]:
    d = stats.state_dict()
    out = {"max": d["max"]["max"], **{f"p_{k}": v for k, v in d["max"]["payloads"].items()}}
    out.update({k: d["moments"][k] for k in ("sum_hi", "sum_lo", "sumsq_hi", "sumsq_lo")})
    return out


def _payloads(idx: torch.Tensor) -> dict[str, torch.Tensor]:
    return {"index": idx, "angle": idx.to(torch.float32) * 0.5, "defocus": -idx.double()}


NAMES = ("index", "angle", "defocus")


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_merge_of_random_splits_equals_single_pass_bit_for_bit(seed: int) -> None:
    ups = _updates(seed, 60)
    single = SearchStatistics(SHAPE, NAMES, device="cpu")
    for x, idx in ups:
        single.update(x, _payloads(idx))
    ref = _state_tensors(single)

    rng = np.random.default_rng(seed)
    n_parts = int(rng.integers(2, 7))
    owner = rng.integers(0, n_parts, size=len(ups))  # interleaved, arbitrary split
    parts = [SearchStatistics(SHAPE, NAMES, device="cpu") for _ in range(n_parts)]
    for (x, idx), o in zip(ups, owner, strict=True):
        parts[o].update(x, _payloads(idx))
    # ship some parts through a state dict (checkpoint / Dask transfer) first
    for k in range(0, n_parts, 2):
        buf = io.BytesIO()
        torch.save(parts[k].state_dict(), buf)
        buf.seek(0)
        parts[k] = SearchStatistics.from_state_dict(
            torch.load(buf, weights_only=True), device="cpu"
        )
    order = rng.permutation(n_parts)
    merged = parts[order[0]]
    for k in order[1:]:
        merged.merge(parts[k])
    got = _state_tensors(merged)
    assert got.keys() == ref.keys()
    for key in ref:
        assert got[key].dtype == ref[key].dtype, key
        assert torch.equal(got[key], ref[key]), key
    assert merged.count == single.count == sum(x.shape[0] for x, _ in ups)


def test_tree_merge_equals_chain_merge() -> None:
    ups = _updates(5, 16)
    accs = []
    for x, _ in ups:
        m = MomentAccumulator(SHAPE, device="cpu")
        accs.append(m.update(x))
    chain = MomentAccumulator(SHAPE, device="cpu")
    for a in accs:
        chain.merge(MomentAccumulator.from_state_dict(a.state_dict(), device="cpu"))
    while len(accs) > 1:  # pairwise tree of merges
        accs = [accs[i].merge(accs[i + 1]) for i in range(0, len(accs), 2)]
    assert torch.equal(accs[0].sum, chain.sum)
    assert torch.equal(accs[0].sum_of_squares, chain.sum_of_squares)


def test_variance_over_millions_of_maps_matches_float64() -> None:
    """4*10^6 score maps (4,000 updates of 1,000) on a 4x4 map vs a float64 reference."""
    shape, b, n_up = (4, 4), 1000, 4000
    g = torch.Generator().manual_seed(7)
    acc = MomentAccumulator(shape, device="cpu")
    ref1 = torch.zeros(shape, dtype=torch.float64)
    ref2 = torch.zeros(shape, dtype=torch.float64)
    naive1 = torch.zeros(shape)  # float32 running sums (the Leopard-EM scheme), for contrast
    naive2 = torch.zeros(shape)
    mu = torch.linspace(-3.0, 3.0, 16).reshape(shape)
    for _ in range(n_up):
        x = torch.randn((b, *shape), generator=g) * 2.0 + mu
        acc.update(x)
        x64 = x.double()
        ref1 += x64.sum(0)
        ref2 += (x64 * x64).sum(0)
        naive1 += x.sum(0)
        naive2 += (x * x).sum(0)
    n = b * n_up
    assert acc.count == n == 4_000_000
    ref1, ref2 = ref1.numpy(), ref2.numpy()
    ref_mean = ref1 / n
    ref_var = ref2 / n - ref_mean**2
    mean, var = acc.mean.numpy(), acc.variance.numpy()
    err_mean = np.abs(mean - ref_mean).max()
    err_var = np.abs(var / ref_var - 1).max()
    assert err_mean < 1e-7
    assert err_var < 1e-7
    naive_var = (naive2 / n - (naive1 / n) ** 2).double().numpy()
    err_naive = np.abs(naive_var / ref_var - 1).max()
    assert err_naive > 100 * err_var, (err_naive, err_var)  # float32 running sums drift
    # the carry path ran (more than 1024 updates without a read)
    assert acc.n_updates > 1024


def test_sums_are_exact_for_exactly_representable_scores() -> None:
    """Scores on a 2**-8 grid with |x| < 4: batch sums are exact in float32, so the
    fixed-point total must equal the integer reference exactly (no rounding anywhere)."""
    g = np.random.default_rng(3)
    acc = MomentAccumulator((3, 5), device="cpu")
    tot1 = np.zeros((3, 5), dtype=np.int64)  # in units of 2**-8
    tot2 = np.zeros((3, 5), dtype=np.int64)  # in units of 2**-16
    for _ in range(300):
        q = g.integers(-(2**10), 2**10, size=(4, 3, 5))  # |x| < 4, multiple of 2**-8
        x = torch.from_numpy(q.astype(np.float32) / 256.0)
        acc.update(x)
        tot1 += q.sum(0)
        tot2 += (q * q).sum(0)
    assert torch.equal(acc.sum, torch.from_numpy(tot1 / 256.0))
    assert torch.equal(acc.sum_of_squares, torch.from_numpy(tot2 / 65536.0))


def test_fixed_point_limbs_are_normalised() -> None:
    acc = MomentAccumulator((2, 2), device="cpu")
    acc.update(torch.tensor([[[-0.3, 1.7], [-5.25, 1e-20]]]))
    d = acc.state_dict()
    assert d["frac_bits"] == FRAC_BITS
    assert bool(((d["sum_lo"] >= 0) & (d["sum_lo"] < 2**FRAC_BITS)).all())
    # -0.3 (float32) = hi + lo * 2**-52 with hi = -1
    assert int(d["sum_hi"][0, 0]) == -1
    assert acc.sum[1, 0] == -5.25


def test_ties_keep_the_smaller_index_in_batch_across_updates_and_merges() -> None:
    shape = (2, 3)
    a = torch.zeros((3, *shape))
    a[:, 0, 0] = 5.0  # three-way tie inside a batch, indices given out of order
    a[1, 0, 1] = 5.0
    acc = MaxAccumulator(shape, device="cpu")
    acc.update(a, {"index": torch.tensor([10, 4, 7])})
    assert int(acc.payloads["index"][0, 0]) == 4
    assert int(acc.payloads["index"][0, 1]) == 4
    # later update, equal score, smaller index -> wins; larger index -> loses
    b = torch.full((1, *shape), -1.0)
    b[0, 0, 0] = 5.0
    b[0, 0, 1] = 5.0
    acc2 = MaxAccumulator(shape, device="cpu").update(b, {"index": torch.tensor([2])})
    acc3 = MaxAccumulator(shape, device="cpu").update(b, {"index": torch.tensor([9])})
    for first, second in ((acc, acc2), (acc2, acc)):
        m = MaxAccumulator.from_state_dict(first.state_dict(), device="cpu")
        m.merge(MaxAccumulator.from_state_dict(second.state_dict(), device="cpu"))
        assert int(m.payloads["index"][0, 0]) == 2
    m = MaxAccumulator.from_state_dict(acc.state_dict(), device="cpu").merge(acc3)
    assert int(m.payloads["index"][0, 0]) == 4
    single = MaxAccumulator(shape, device="cpu")
    single.update(a, {"index": torch.tensor([10, 4, 7])}).update(b, {"index": torch.tensor([2])})
    assert int(single.payloads["index"][0, 0]) == 2


def test_payloads_follow_the_argmax() -> None:
    g = torch.Generator().manual_seed(11)
    shape = (9, 8)
    acc = MaxAccumulator(shape, ("index", "phi", "defocus"), device="cpu")
    all_x, all_phi, all_def = [], [], []
    start = 0
    for _ in range(7):
        b = int(torch.randint(1, 12, (1,), generator=g))
        x = torch.randn((b, *shape), generator=g)
        phi = torch.rand(b, generator=g) * 360.0
        dfc = torch.randint(-1000, 1000, (b,), generator=g).double()
        acc.update(x.numpy(), {"index": np.arange(start, start + b), "phi": phi, "defocus": dfc})
        all_x.append(x)
        all_phi.append(phi)
        all_def.append(dfc)
        start += b
    x = torch.cat(all_x)
    arg = x.argmax(0)  # continuous random values: no ties
    assert torch.equal(acc.max, x.amax(0))
    assert torch.equal(acc.payloads["index"], arg)
    assert torch.equal(acc.payloads["phi"], torch.cat(all_phi)[arg])
    assert torch.equal(acc.payloads["defocus"], torch.cat(all_def)[arg])
    assert acc.payloads["defocus"].dtype == torch.float64


def test_batch_reductions_match_references() -> None:
    g = torch.Generator().manual_seed(2)
    for b in (1, 2, 3, 5, 8, 13):
        x = torch.randint(-3, 4, (b, 4, 5), generator=g).float()
        v, i = batch_argmax(x)
        assert torch.equal(v, x.amax(0))
        first = (x == v).to(torch.int64).argmax(0)  # first occurrence
        assert torch.equal(i, first)
        assert torch.equal(batch_sum(x), x.sum(0))  # small integers: exact in any order
        assert torch.equal(batch_sum_of_squares(x), (x * x).sum(0))


def test_checkpoint_resume_equals_uninterrupted_run() -> None:
    ups = _updates(9, 20)
    full = SearchStatistics(SHAPE, NAMES, device="cpu")
    part = SearchStatistics(SHAPE, NAMES, device="cpu")
    for k, (x, idx) in enumerate(ups):
        full.update(x, _payloads(idx))
        if k < 8:
            part.update(x, _payloads(idx))
    buf = io.BytesIO()
    torch.save(part.state_dict(), buf)
    buf.seek(0)
    resumed = SearchStatistics.from_state_dict(torch.load(buf, weights_only=True), device="cpu")
    for x, idx in ups[8:]:
        resumed.update(x, _payloads(idx))
    a, b = _state_tensors(full), _state_tensors(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)
    z = resumed.zscore()
    ref = (resumed.max.double() - resumed.mean) / resumed.std
    assert torch.allclose(z, ref)


@pytest.mark.parametrize("shift", [0.0, 1.5])
def test_search_statistics_equals_separate_accumulators(shift: float) -> None:
    """The fused one-pass update gives the same bits as the two accumulators on their own,
    also when the index payload is not sorted within a batch."""
    g = torch.Generator().manual_seed(4)
    both = SearchStatistics(SHAPE, ("index",), device="cpu", shift=shift)
    mx = MaxAccumulator(SHAPE, ("index",), device="cpu")
    mo = MomentAccumulator(SHAPE, device="cpu", shift=shift)
    for u in range(6):
        x = torch.randn((5, *SHAPE), generator=g)
        x[:, 1, 1] = 0.25  # ties in every batch
        idx = torch.randperm(5, generator=g) + 5 * u
        both.update(x, {"index": idx})
        mx.update(x, {"index": idx})
        mo.update(x)
    assert torch.equal(both.max, mx.max)
    assert torch.equal(both.payloads["index"], mx.payloads["index"])
    assert int(mx.payloads["index"][1, 1]) == 0  # smallest index among all the ties
    assert torch.equal(both.moments.sum, mo.sum)
    assert torch.equal(both.moments.sum_of_squares, mo.sum_of_squares)


def test_chunked_reduction_equals_whole_batch(monkeypatch) -> None:
    import corrscan.core.stats as stats_mod

    x = torch.randn(7, 37, 11)
    whole = stats_mod.reduce_batch(x)
    monkeypatch.setattr(stats_mod, "REDUCE_CHUNK_BYTES", 7 * 4 * 11 * 3)  # 3 rows per slab
    sliced = stats_mod.reduce_batch(x)
    for k in whole:
        assert torch.equal(whole[k], sliced[k]), k
    assert torch.equal(whole["max"], x.amax(0))
    assert torch.equal(whole["s1"], batch_sum(x))
    assert torch.equal(whole["s2"], batch_sum_of_squares(x))


def test_sparse_and_dense_max_paths_agree() -> None:
    """Updates touching few pixels (gather path) and many (dense path) give one result."""
    g = torch.Generator().manual_seed(8)
    ups = [torch.randn((4, 20, 20), generator=g) for _ in range(30)]
    ups[10][:, 5, 5] = 100.0  # a late, isolated improvement with a 4-way tie
    acc = MaxAccumulator((20, 20), device="cpu")
    for k, x in enumerate(ups):
        acc.update(x, {"index": torch.arange(4 * k, 4 * k + 4)})
    allx = torch.cat(ups)
    assert torch.equal(acc.max, allx.amax(0))
    ref = (allx == allx.amax(0)).to(torch.int64).argmax(0)  # first occurrence
    assert torch.equal(acc.payloads["index"], ref)
    assert int(acc.payloads["index"][5, 5]) == 40


def test_shift_recentres_the_accumulation() -> None:
    x = torch.randn(50, 3, 3, dtype=torch.float64) + 1000.0
    acc = MomentAccumulator((3, 3), device="cpu", shift=1000.0).update(x)
    assert torch.allclose(acc.mean, x.mean(0), atol=1e-12, rtol=0)
    assert torch.allclose(acc.variance, x.var(0, unbiased=False), rtol=1e-9)
    with pytest.raises(InputError, match="shift"):
        acc.merge(MomentAccumulator((3, 3), device="cpu"))


def test_errors_name_the_problem() -> None:
    acc = SearchStatistics((4, 4), device="cpu")
    with pytest.raises(InputError, match="shape"):
        acc.update(torch.zeros(2, 4, 5), {"index": torch.arange(2)})
    with pytest.raises(InputError, match="missing"):
        acc.update(torch.zeros(2, 4, 4), {})
    with pytest.raises(InputError, match="one value per batch item"):
        acc.update(torch.zeros(2, 4, 4), {"index": torch.arange(3)})
    with pytest.raises(InputError, match="NaN"):
        MomentAccumulator((2, 2), device="cpu").update(torch.full((1, 2, 2), float("nan")))
    big = MomentAccumulator((2, 2), device="cpu")
    with pytest.raises(InputError, match="capacity"):
        big.update(torch.full((1, 2, 2), 3e9))  # squares 9e18 > 2**62
    with pytest.raises(InputError, match="count = 0"):
        _ = MomentAccumulator((2, 2), device="cpu").mean
    with pytest.raises(InputError, match="cannot merge"):
        MaxAccumulator((2, 2), device="cpu").merge(MaxAccumulator((2, 3), device="cpu"))
    with pytest.raises(InputError, match="not a corrscan.MomentAccumulator"):
        MomentAccumulator.from_state_dict({"format": "x"})


def test_float64_scores_in_a_float32_accumulator_keep_the_argmax_payloads() -> None:
    """Scores of another dtype than the stored maximum: payloads still follow the argmax
    (dense and sparse update paths), and float32-rounding ties go to the smaller index."""
    g = torch.Generator().manual_seed(12)
    ups = [torch.randn((5, 9, 8), generator=g, dtype=torch.float64) for _ in range(6)]
    acc = MaxAccumulator((9, 8), device="cpu", dtype=torch.float32)
    for k, x in enumerate(ups):
        acc.update(x, {"index": torch.arange(5 * k, 5 * k + 5)})
    allx = torch.cat(ups)
    assert torch.equal(acc.max, allx.amax(0).float())
    assert torch.equal(acc.payloads["index"], allx.argmax(0))
    # two float64 scores that round to the same float32: a tie, smaller index wins, in one
    # batch or split over two updates
    a, b = 1.0, 1.0 + 2.0**-40
    assert np.float32(a) == np.float32(b)
    x = torch.tensor([[[a]], [[b]]], dtype=torch.float64)
    one = MaxAccumulator((1, 1), device="cpu").update(x, {"index": torch.tensor([5, 3])})
    two = MaxAccumulator((1, 1), device="cpu").update(x[:1], {"index": torch.tensor([5])})
    two.update(x[1:], {"index": torch.tensor([3])})
    assert int(one.payloads["index"]) == int(two.payloads["index"]) == 3


def test_integer_payloads_keep_their_dtype_and_exact_values() -> None:
    """Global search indices beyond 2**24 (a full 2DTM search) are not rounded to float32."""
    big = 2**24 + 1  # not representable in float32
    x = torch.zeros((2, 2, 2))
    x[1, 0, 0] = 1.0
    for kind in (torch.tensor, np.array):
        acc = MaxAccumulator((2, 2), device="cpu")
        acc.update(x, {"index": kind([big, big + 2])})
        p = acc.payloads["index"]
        assert p.dtype == torch.int64
        assert int(p[0, 0]) == big + 2 and int(p[0, 1]) == big
    with pytest.raises(InputError, match="bool"):
        MaxAccumulator((2, 2), ("flag",), device="cpu").update(
            x, {"flag": torch.tensor([True, False])}
        )


@pytest.mark.parametrize("dense", [False, True])
def test_update_reduced_equals_update(dense: bool) -> None:
    """Pre-reduced candidates (the caller's own batch argmax) fold like ``update``, ties
    included; the sparse CPU path (few candidates) and the dense one agree."""
    rng = np.random.default_rng(7)
    shape = (9, 11)
    # few distinct values: many exact ties inside batches and across updates
    batches = [
        torch.from_numpy(rng.integers(0, 4 if dense else 40, (5, *shape)).astype(np.float32))
        for _ in range(6)
    ]
    order = rng.permutation(len(batches))  # updates out of index order: ties must still
    ref = MaxAccumulator(shape, ("index", "defocus"))  # keep the smaller global index
    red = MaxAccumulator(shape, ("index", "defocus"))
    junk = torch.full(shape, 10**9, dtype=torch.int64)
    for i in order:
        x = batches[i]
        idx = torch.arange(5, dtype=torch.int64) + 5 * int(i)
        ref.update(x, {"index": idx, "defocus": idx.double() * 100})
        m = x.amax(0)
        arg = (x == m).to(torch.int8).argmax(0)  # first (smallest index) winner per pixel
        win = idx[arg]
        # payloads below the stored maximum must not matter: fill them with junk
        below = m < red.max
        pmap = torch.where(below, junk, win)
        red.update_reduced(m, {"index": pmap, "defocus": win.double() * 100})
    assert torch.equal(red.max, ref.max)
    for name in ("index", "defocus"):
        assert torch.equal(red.payloads[name], ref.payloads[name]), name
    # and a brute-force reference: global max, smallest index among the maxima
    allx = torch.cat(batches)
    gm = allx.amax(0)
    first = (allx == gm).to(torch.int8).argmax(0)
    assert torch.equal(red.payloads["index"], first)


def test_update_reduced_rejects_bad_shapes_and_names() -> None:
    acc = MaxAccumulator((3, 4), ("index",))
    with pytest.raises(InputError, match="shape"):
        acc.update_reduced(torch.zeros(4, 3), {"index": torch.zeros(3, 4, dtype=torch.int64)})
    with pytest.raises(InputError, match="missing"):
        acc.update_reduced(torch.zeros(3, 4), {})
    with pytest.raises(InputError, match="payload map"):
        acc.update_reduced(torch.zeros(3, 4), {"index": torch.zeros(2, dtype=torch.int64)})

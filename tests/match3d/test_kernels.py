"""Compiled hot-loop kernels: known answers against plain NumPy / float64 references."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from corrscan.match3d import kernels
from corrscan.match3d.scores import SCORES, BoxScorer

pytestmark = pytest.mark.skipif(not kernels.AVAILABLE, reason="numba not installed")


def _sequential(maps, indices, cur, rot, scale):
    """Reference: one map at a time, strict-greater update, float64 statistics."""
    stats = []
    for m, i in zip(maps, indices, strict=True):
        s = m.astype(np.float64) * (1.0 if scale is None else scale.astype(np.float64))
        s32 = (m * (1.0 if scale is None else scale)).astype(np.float32)
        take = s32 > cur
        cur[take] = s32[take]
        rot[take] = i
        stats.append((s.sum(), (s * s).sum()))
    return np.array(stats)


@pytest.mark.parametrize("layout", ["pair", "separate", "three"])
@pytest.mark.parametrize("with_scale", [False, True])
def test_max_update_equals_sequential_updates(rng, layout, with_scale):
    shape = (5, 6, 7)
    b = 3 if layout == "three" else 2
    maps = rng.normal(size=(b, *shape)).astype(np.float32)
    maps[1, 0, 0, :3] = maps[0, 0, 0, :3]  # exact ties: the earlier rotation must win
    scale = (rng.uniform(0.5, 2.0, size=shape).astype(np.float32)) if with_scale else None
    if layout == "pair":  # the paired-FFT layout: real and imaginary parts of one buffer
        z = torch.complex(torch.from_numpy(maps[0]), torch.from_numpy(maps[1]))
        scores = torch.view_as_real(z).movedim(-1, 0).numpy()
        assert scores.strides[0] == 4
    else:
        scores = maps
    cur = np.full(shape, 0.1, dtype=np.float32)  # a threshold floor: lower scores never enter
    rot = np.full(shape, -1, dtype=np.int32)
    cur_ref, rot_ref = cur.copy(), rot.copy()
    idx = [7, 8, 9][:b]
    got = kernels.max_update(scores, idx, cur, rot, scale)
    ref = _sequential(maps, idx, cur_ref, rot_ref, scale)
    np.testing.assert_array_equal(cur, cur_ref)
    np.testing.assert_array_equal(rot, rot_ref)
    np.testing.assert_allclose(got, ref, rtol=1e-5)
    assert set(np.unique(rot)) <= {-1, *idx}


def test_max_update_on_a_sub_box_view(rng):
    """The analyzer hands a valid sub-region (strided view) of the FFT box."""
    z = torch.complex(torch.randn(9, 10, 11), torch.randn(9, 10, 11))
    full = torch.view_as_real(z).movedim(-1, 0)
    sub = full[:, 2:7, 1:9, 3:10]
    cur = np.full(sub.shape[1:], -np.inf, dtype=np.float32)
    rot = np.full(sub.shape[1:], -1, dtype=np.int32)
    kernels.max_update(sub.numpy(), [0, 1], cur, rot)
    best, arg = torch.max(sub.contiguous(), dim=0)
    np.testing.assert_array_equal(cur, best.numpy())
    np.testing.assert_array_equal(rot, arg.numpy().astype(np.int32))


@pytest.mark.parametrize("score", SCORES)
@pytest.mark.parametrize("b", [1, 2, 3])
def test_paired_transforms_equal_real_transforms(rng, score, b):
    """Two rotations per complex FFT pair give the real-transform scores (rounding only)."""
    f = torch.from_numpy(rng.normal(size=(20, 21, 22))).float()
    g = torch.from_numpy(rng.normal(size=(b, 7, 7, 7))).float()
    m = torch.ones(b, 7, 7, 7)
    m[:, :, :, :2] = 0.0
    kw = dict(overlap_ratio=0.3)
    paired = BoxScorer(f, (7, 7, 7), m[0], None, score, (20, 21, 22), 4, paired=True, **kw)
    real = BoxScorer(f, (7, 7, 7), m[0], None, score, (20, 21, 22), 4, paired=False, **kw)
    mr = m[:1] if score == "FLCSphericalMask" else (m if score in ("FLC", "MCC") else None)
    a = paired(g, mr).clone()
    r = real(g, mr)
    assert a.shape == r.shape == (b, 20, 21, 22)
    tol = 1e-4 * float(r.abs().max())
    np.testing.assert_allclose(a.numpy(), r.numpy(), atol=tol)


def test_threaded_kernels_equal_one_thread(rng):
    """Split between threads (z-slabs / point ranges), the kernels give the same maps."""
    from corrscan.match3d.rotate import TemplateRotator
    from corrscan.match3d.rotations import super_fibonacci_rotations

    z = torch.complex(torch.randn(9, 10, 11), torch.randn(9, 10, 11))
    scores = torch.view_as_real(z).movedim(-1, 0).numpy()
    scale = rng.uniform(0.5, 2.0, size=(9, 10, 11)).astype(np.float32)
    out = {}
    for threads in (1, 3):
        cur = np.full((9, 10, 11), -np.inf, dtype=np.float32)
        rot = np.full((9, 10, 11), -1, dtype=np.int32)
        st = kernels.max_update(scores, [4, 5], cur, rot, scale, threads=threads)
        out[threads] = (cur, rot, st)
    np.testing.assert_array_equal(out[1][0], out[3][0])
    np.testing.assert_array_equal(out[1][1], out[3][1])
    np.testing.assert_allclose(out[1][2], out[3][2], rtol=1e-6)
    v = torch.from_numpy(rng.normal(size=(12, 12, 12))).float()
    mats = torch.from_numpy(super_fibonacci_rotations(3)).float()
    for order in (1, 3):
        one = TemplateRotator(v, order=order, backend="numba")(mats)
        many = TemplateRotator(v, order=order, backend="numba", threads=3)(mats)
        np.testing.assert_array_equal(one.numpy(), many.numpy())


def test_nan_never_wins_and_shapes_are_checked():
    """A NaN score never enters the map and does not hide its pair partner's valid score;
    an equal score does not change the winner; wrong shapes are refused (no bounds checks in
    compiled loops)."""
    from corrscan.errors import InputError
    from corrscan.match3d.analyzers import MaxScoreOverRotations

    maps = np.zeros((2, 2, 3, 4), dtype=np.float32)
    maps[0, 0, 0, 0], maps[1, 0, 0, 0] = np.nan, 1.0
    maps[0, 1, 2, 3], maps[1, 1, 2, 3] = 0.5, np.nan
    for layout in ("pair", "separate"):
        if layout == "pair":
            z = torch.complex(torch.from_numpy(maps[0]), torch.from_numpy(maps[1]))
            scores = torch.view_as_real(z).movedim(-1, 0).numpy()
        else:
            scores = maps
        cur = np.full((2, 3, 4), -np.inf, dtype=np.float32)
        rot = np.full((2, 3, 4), -1, dtype=np.int32)
        kernels.max_update(scores, [3, 4], cur, rot)
        assert cur[0, 0, 0] == 1.0 and rot[0, 0, 0] == 4
        assert cur[1, 2, 3] == 0.5 and rot[1, 2, 3] == 3
        assert not np.isnan(cur).any()
        kernels.max_update(scores[:1] * 0 + cur[None], [9], cur, rot)  # equal: no change
        assert rot[0, 0, 0] == 4 and rot[1, 2, 3] == 3
    an = MaxScoreOverRotations((4, 5, 5), score_threshold=-np.inf, thread_safe=False)
    an.fused = True
    with pytest.raises(InputError, match="shape"):
        an.update(torch.full((1, 4, 5, 6), 3.0), torch.tensor([0], dtype=torch.int32))
    an.update(torch.full((1, 4, 5, 5), 3.0), torch.tensor([0], dtype=torch.int32),
              scale=torch.full((1, 1, 1), 2.0))  # fmt: skip
    np.testing.assert_array_equal(an.scores, np.full((4, 5, 5), 6.0, dtype=np.float32))


def test_search_fused_update_equals_torch_update(rng):
    """A whole search with the compiled update equals the torch update (maps, statistics)."""
    from corrscan.match3d import match_template

    tomo = rng.normal(size=(24, 24, 24)).astype(np.float32)
    tmpl = rng.normal(size=(8, 8, 8)).astype(np.float32)
    for score in ("CC", "FLCSphericalMask"):
        kw = dict(score=score, n_rotations=6, interpolation_order=1, progress=False)
        a = match_template(tomo, tmpl, fused=True, **kw)
        b = match_template(tomo, tmpl, fused=False, **kw)
        assert a.metadata["fused_update"] and not b.metadata["fused_update"]
        np.testing.assert_allclose(a.scores, b.scores, rtol=1e-6, atol=1e-6)
        np.testing.assert_array_equal(a.rotation_index, b.rotation_index)
        assert a.score_mean == pytest.approx(b.score_mean, rel=1e-5, abs=1e-7)
        assert a.score_std == pytest.approx(b.score_std, rel=1e-5)


@pytest.mark.parametrize("paired", [True, False])
def test_descending_batches_with_ties_to_new_equal_ascending(rng, paired):
    """Batches fed from the end of a range (the downward search thread) with ``ties_to_new``
    give the ascending result, exact ties included (the smaller index wins); without the
    flag they would not (the test can fail)."""
    shape = (4, 5, 6)
    base = rng.normal(size=(3, *shape)).astype(np.float32)
    # 6 maps: 0/1 a pair, 2/3 a pair equal to 0/1 (exact ties), 4/5 another pair
    maps = np.stack([base[0], base[1], base[0], base[1], base[2], base[2] - 0.5])
    batches = [(0, 2), (2, 4), (4, 6)]

    def feed(order, ties):
        cur = np.full(shape, -np.inf, dtype=np.float32)
        rot = np.full(shape, -1, dtype=np.int32)
        for a, b in order:
            if paired:
                z = torch.complex(torch.from_numpy(maps[a]), torch.from_numpy(maps[a + 1]))
                sc = torch.view_as_real(z).movedim(-1, 0).numpy()
            else:
                sc = maps[a:b]
            kernels.max_update(sc, list(range(a, b)), cur, rot, ties_to_new=ties)
        return cur, rot

    up = feed(batches, False)
    down = feed(batches[::-1], True)
    np.testing.assert_array_equal(up[0], down[0])
    np.testing.assert_array_equal(up[1], down[1])
    assert set(np.unique(up[1])) <= {0, 1, 4, 5}  # 2, 3 only tie with 0, 1
    wrong = feed(batches[::-1], False)
    assert (wrong[1] >= 2).any() and (wrong[1] != up[1]).any()

"""End-to-end recovery of planted copies, split/merge exactness and scores vs references."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from corrscan.errors import InputError
from corrscan.match3d import SCORES, match_template, rotation_set
from corrscan.match3d.rotations import rotation_angle_deg
from corrscan.match3d.scores import BoxScorer
from corrscan.match3d.search import (
    finish,
    merge_states,
    prepare_search,
    search_task,
    search_tasks,
)
from corrscan.synthetic.tomogram import simulate_tomogram

STEP = 30.0
WEDGE = (-60.0, 60.0)


@pytest.fixture(scope="module")
def planted():
    """4 copies at grid rotations perturbed by ~4 degrees, missing wedge, noise."""
    grid = rotation_set(angular_step=STEP).numpy().astype(np.float64)
    rng = np.random.default_rng(11)
    pick = rng.choice(len(grid), 4, replace=False)
    pert = Rotation.from_rotvec(rng.normal(size=(4, 3)) / np.sqrt(3) * np.radians(4)).as_matrix()
    rots = grid[pick] @ pert
    tomo, truth = simulate_tomogram(
        48,
        template_shape=12,
        rotations=rots,
        noise_std=0.15,
        wedge=WEDGE,
        seed=3,
        n_atoms=20,
        sigma=1.0,
    )
    return tomo, truth, grid, pick


def _check_recovery(res, truth, step):
    pk = res.peaks(num_peaks=len(truth["positions"]), min_distance=6)
    pos = pk[["z", "y", "x"]].to_numpy()
    for p, r in zip(truth["positions"], truth["rotations"], strict=True):
        d = np.abs(pos - p).max(axis=1)
        j = int(d.argmin())
        assert d[j] == 0, f"copy at {p} found {d[j]} voxels off"
        found = res.rotations[int(pk.rotation_index.iloc[j])]
        assert rotation_angle_deg(found, r) < step


@pytest.mark.parametrize("score", SCORES)
def test_every_score_recovers_every_copy(planted, score):
    tomo, truth, grid, pick = planted
    rots = grid
    if score in ("FLC", "MCC"):  # expensive scores: the planted neighbourhoods + ~30 decoys
        near = rotation_angle_deg(grid[:, None], grid[pick][None]).min(axis=1) < 50
        rots = np.concatenate([grid[near], grid[~near][::10]])
    filters = {"wedge": WEDGE}
    if score == "CC":  # not locally normalised: low frequencies dominate unless high-passed
        filters["highpass_angstrom"] = 6.0
    res = match_template(
        tomo, truth["template"], template_mask=truth["template_mask"], score=score,
        rotations=rots, interpolation_order=1, pad_edges=True, filters=filters,
    )  # fmt: skip
    assert res.n_rotations == len(rots)
    _check_recovery(res, truth, STEP)


def test_cubic_interpolation_and_angular_step(planted):
    tomo, truth, grid, _ = planted
    res = match_template(
        tomo,
        truth["template"],
        score="FLCSphericalMask",
        angular_step=STEP,
        interpolation_order=3,
        filters={"wedge": WEDGE},
    )
    assert res.n_rotations == len(grid) == 360
    _check_recovery(res, truth, STEP)


def test_split_and_chunks_merge_exactly(planted):
    tomo, truth, grid, _ = planted
    kw = dict(
        template_mask=truth["template_mask"],
        score="FLCSphericalMask",
        rotations=grid[:24],
        interpolation_order=1,
        pad_edges=True,
    )
    one = match_template(tomo, truth["template"], **kw)
    chunked = match_template(tomo, truth["template"], rotation_chunks=5, **kw)
    np.testing.assert_array_equal(chunked.scores, one.scores)
    np.testing.assert_array_equal(chunked.rotation_index, one.rotation_index)
    np.testing.assert_array_equal(chunked.rotations, one.rotations)
    assert chunked.score_mean == one.score_mean and chunked.score_std == one.score_std
    # batches of 4: chunk boundaries align with batches -> still bitwise
    kw16 = dict(kw, rotations=grid[:16])
    b1 = match_template(tomo, truth["template"], batch_size=4, **kw16)
    b2 = match_template(tomo, truth["template"], batch_size=4, rotation_chunks=3, **kw16)
    assert b2.metadata["rotation_chunks"] == 2  # chunks of 8 = two batches of 4
    np.testing.assert_array_equal(b1.scores, b2.scores)
    np.testing.assert_array_equal(b1.rotation_index, b2.rotation_index)
    # rotation-parallel worker threads: identical too
    w2 = match_template(tomo, truth["template"], workers=2, rotation_chunks=2, **kw)
    np.testing.assert_array_equal(w2.scores, one.scores)
    np.testing.assert_array_equal(w2.rotation_index, one.rotation_index)
    assert w2.score_mean == one.score_mean
    # target splits: same data per voxel, different FFT box -> equal to float rounding
    split = match_template(
        tomo, truth["template"], target_splits={0: 2, 2: 3}, rotation_chunks=2, **kw
    )
    np.testing.assert_allclose(split.scores, one.scores, atol=2e-5)
    same = split.rotation_index == one.rotation_index
    assert same.mean() > 0.999
    # where they differ, the two rotations score within rounding of each other
    assert np.all(np.abs(split.scores - one.scores)[~same] < 2e-5)
    for p in truth["positions"]:
        assert split.rotation_index[tuple(p)] == one.rotation_index[tuple(p)]
    assert split.score_count == one.score_count == tomo.size * 24
    assert split.score_std == pytest.approx(one.score_std, rel=1e-4)


def test_match_template_is_prepare_tasks_finish(planted):
    """The public steps reproduce match_template bit for bit (any task order, worker threads)."""
    tomo, truth, grid, _ = planted
    kw = dict(rotations=grid[:12], interpolation_order=1, target_splits={1: 2}, batch_size=2)
    ref = match_template(tomo, truth["template"], progress=False, **kw)
    # 2 threads, 6 sub-ranges per box: scorers are handed from task to task
    threads = match_template(
        tomo, truth["template"], progress=False, workers=2, rotation_chunks=3, **kw
    )
    prep = prepare_search(tomo, truth["template"], **kw)
    assert prep.n_rotations == 12 and len(prep.boxes) == 2 and prep.n_workers >= 1
    tasks = search_tasks(prep, chunk_size=3)  # rounded up to whole batches of 2
    assert [t[2] - t[1] for t in tasks[:3]] == [4, 4, 4] and len(tasks) == 6
    states = [search_task(prep, *t) for t in tasks[::-1]]
    state = states[0]
    for st in states[1:]:
        state = merge_states(state, st)
    for res in (threads, finish(prep, state)):
        np.testing.assert_array_equal(res.scores, ref.scores)
        np.testing.assert_array_equal(res.rotation_index, ref.rotation_index)
        np.testing.assert_array_equal(res.rotations, ref.rotations)
        assert (res.score_mean, res.score_std, res.score_count) == (
            ref.score_mean,
            ref.score_std,
            ref.score_count,
        )
    with pytest.raises(InputError, match="multiple of the batch size"):
        search_task(prep, 0, 1, 3)
    with pytest.raises(InputError, match="outside"):
        search_task(prep, 2, 0, 2)
    with pytest.raises(InputError, match="format"):
        finish(prep, {"boxes": {}})


def _brute_corr(f, g, p):
    c = np.array([s // 2 for s in g.shape])
    out = 0.0
    for q in np.ndindex(*g.shape):
        out += f[tuple(np.array(p) + np.array(q) - c)] * g[q]
    return out


def test_scores_match_float64_references(rng):
    f = rng.normal(size=(14, 15, 16)) + 3.0
    g = rng.normal(size=(5, 5, 5))
    m = np.add.outer(np.add.outer(np.arange(5) - 2, np.zeros(5)), np.zeros(5)) ** 2 <= 9
    m = m.astype(np.float64) * (rng.random((5, 5, 5)) > 0.2)
    p = (7, 7, 8)
    gt, mt = torch.from_numpy(g).float()[None], torch.from_numpy(m).float()[None]
    ft = torch.from_numpy(f).float()
    # CC
    cc = BoxScorer(ft, g.shape, None, None, "CC", f.shape, 1)(gt)[0].numpy()
    assert cc[p] == pytest.approx(_brute_corr(f, g, p), rel=1e-4)
    # FLC with binary mask: Pearson correlation of the masked window
    flc = BoxScorer(ft, g.shape, None, None, "FLC", f.shape, 1)(gt, mt)[0].numpy()
    inside = m > 0
    c = np.array([2, 2, 2])
    win = f[tuple(slice(pi - ci, pi - ci + 5) for pi, ci in zip(p, c, strict=True))]
    ref = np.corrcoef(win[inside], g[inside])[0, 1]
    assert flc[p] == pytest.approx(ref, abs=1e-4)
    # FLCSphericalMask with the same (unrotated) mask gives the same number
    fs = BoxScorer(ft, g.shape, mt[0], None, "FLCSphericalMask", f.shape, 1)(gt, mt)[0].numpy()
    assert fs[p] == pytest.approx(ref, abs=1e-4)
    # MCC with a full target mask equals the same Pearson correlation
    mcc = BoxScorer(ft, g.shape, None, None, "MCC", f.shape, 1)(gt, mt)[0].numpy()
    assert mcc[p] == pytest.approx(ref, abs=1e-4)
    # NCC: standardised correlation / sqrt(N)
    ncc = BoxScorer(ft, g.shape, None, None, "NCC", f.shape, 1)(gt)[0].numpy()
    gs = (g - g.mean()) / g.std()
    assert ncc[p] == pytest.approx(_brute_corr(f, gs, p) / np.sqrt(g.size), rel=1e-3)


def test_mcc_target_mask_zeroes_low_overlap(rng):
    f = torch.from_numpy(rng.normal(size=(16, 16, 16))).float()
    t = torch.zeros(16, 16, 16)
    t[:, :, :8] = 1.0
    g = torch.from_numpy(rng.normal(size=(5, 5, 5))).float()[None]
    m = torch.ones(1, 5, 5, 5)
    s = BoxScorer(f, (5, 5, 5), None, t, "MCC", (16, 16, 16), 1)(g, m)[0].numpy()
    assert np.all(s[:, :, 12:14] == 0.0)  # windows that do not reach the masked half
    assert np.all(np.abs(s) <= 1.0)
    assert np.any(s[:, :, 3:6] != 0.0)


def test_constrained_search_only_scores_seeds(planted):
    tomo, truth, grid, pick = planted
    seeds = truth["positions"][:2]
    res = match_template(
        tomo, truth["template"], score="FLCSphericalMask", rotations=grid,
        interpolation_order=1, filters={"wedge": WEDGE}, score_threshold=0.0,
        constraints={"positions": seeds, "rotations": grid[pick][:2], "cone_angle": 40.0,
                     "acceptance_radius": 1.5},
    )  # fmt: skip
    assert res.n_rotations < len(grid)
    allowed = np.zeros(tomo.shape, dtype=bool)
    for s in seeds:
        allowed[tuple(slice(v - 1, v + 2) for v in s)] = True
    assert np.all(res.scores[~allowed] == 0.0)
    for s, r in zip(seeds, truth["rotations"][:2], strict=True):
        assert rotation_angle_deg(res.rotations[res.rotation_index[tuple(s)]], r) < STEP


def test_symmetry_and_cone_reduce_rotation_count():
    full = len(rotation_set(angular_step=30))
    c4 = len(rotation_set(angular_step=30, symmetry="C4"))
    d2 = len(rotation_set(angular_step=30, symmetry="D2"))
    cone = rotation_set(angular_step=30, cone_axis=(0, 0, 1), cone_angle=40)
    assert abs(c4 - full / 4) < 0.15 * full / 4
    assert abs(d2 - full / 4) < 0.15 * full / 4
    assert np.all(cone.numpy()[:, 2, 2] >= np.cos(np.radians(40)) - 1e-6)


def test_bad_inputs_raise(planted):
    tomo, truth, *_ = planted
    with pytest.raises(InputError, match="score"):
        match_template(tomo, truth["template"], score="CORR", angular_step=60)
    with pytest.raises(InputError, match="exactly one"):
        match_template(tomo, truth["template"], angular_step=60, n_rotations=10)
    with pytest.raises(InputError, match="pad_edges"):
        match_template(tomo, truth["template"], angular_step=60, target_splits=2, pad_edges=False)
    with pytest.raises(TypeError):
        match_template(tomo, truth["template"], angular_step=60, this_is_not_a_param=1)
    with pytest.warns(UserWarning, match="rotation-invariant"):
        cube = np.ones(truth["template"].shape, dtype=np.float32)
        cube[:, :, :3] = 0
        match_template(tomo[:24, :24, :24], truth["template"], template_mask=cube, n_rotations=2)


@pytest.mark.parametrize("score", ["FLCSphericalMask", "FLC", "MCC"])
def test_batched_fft_path_equals_single(rng, score):
    """The GPU path (batched transforms) gives the CPU path's numbers (run here on CPU)."""
    f = torch.from_numpy(rng.normal(size=(20, 21, 22))).float()
    g = torch.from_numpy(rng.normal(size=(3, 7, 7, 7))).float()
    m = torch.ones(3, 7, 7, 7)
    one = BoxScorer(f, (7, 7, 7), m[0], None, score, (20, 21, 22), 3, paired=False)
    many = BoxScorer(f, (7, 7, 7), m[0], None, score, (20, 21, 22), 3, paired=False)
    many.fft_batch = 3
    mr = m[:1] if score == "FLCSphericalMask" else m
    a = one(g, mr).clone()
    b = many(g, mr)
    np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-5)


def test_balanced_threads_keep_the_smallest_rotation_on_ties(rng):
    """Two threads working a range from both ends (the downward one lets ties go to the new,
    smaller index) give the one-thread maps bit for bit, also when many rotations tie exactly
    (a template invariant under quarter turns about z, rotated exactly on the grid)."""
    tomo = rng.normal(size=(20, 20, 20)).astype(np.float32)
    z, y, x = np.mgrid[:9, :9, :9] - 4
    tmpl = np.exp(-(x**2 + y**2) / 6.0 - z**2 / 3.0).astype(np.float32) * (1 + 0.3 * (z > 0))
    quarter = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    tilt = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
    mats = [np.linalg.matrix_power(quarter, k) @ t for t in (np.eye(3), tilt) for k in range(4)]
    # 40 generic rotations first, then the 8 exact quarter-turn rotations twice (same pair
    # partners, so bitwise equal scores): the duplicates lie in the downward thread's part
    from corrscan.match3d.rotations import super_fibonacci_rotations

    generic = super_fibonacci_rotations(40)
    rots = np.concatenate([generic, np.stack(mats * 2)]).astype(np.float32)
    kw = dict(rotations=rots, score="CC", interpolation_order=1, progress=False)
    one = match_template(tomo, tmpl, workers=1, **kw)
    for workers in (2, 3):
        many = match_template(tomo, tmpl, workers=workers, **kw)
        assert many.metadata["workers"] == workers and many.metadata["fused_update"]
        np.testing.assert_array_equal(many.scores, one.scores)
        np.testing.assert_array_equal(many.rotation_index, one.rotation_index)
        np.testing.assert_array_equal(many.rotations, one.rotations)
        assert many.score_mean == one.score_mean and many.score_std == one.score_std
    # exact ties did happen, and the smaller index of each duplicate pair won
    idx = one.rotation_index
    assert (idx >= 40).mean() > 0.2 and idx.max() < 48

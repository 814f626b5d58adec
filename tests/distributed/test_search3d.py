"""Chunked 3D search: equals the one-shot search bit for bit; kill-and-resume."""

from __future__ import annotations

import numpy as np
import pytest

from corrscan.core.io import write_mrc
from corrscan.distributed.search3d import batch_search3d, run_search3d, search3d
from corrscan.errors import InputError, ResultExistsError
from corrscan.match3d import MatchResult, match_template, rotation_set
from corrscan.match3d import chunks as ch
from corrscan.synthetic.tomogram import simulate_tomogram


def problem():
    rots = rotation_set(angular_step=60).numpy()
    rots = np.concatenate([rots, rots[5:6]])  # a duplicate rotation: exact ties
    tomo, truth = simulate_tomogram(
        22, template_shape=10, rotations=rots[:2], noise_std=0.2, seed=3, n_atoms=10, sigma=1.0
    )
    kw = {"rotations": rots, "interpolation_order": 1}
    return tomo, truth["template"], kw


def assert_same(a, b):
    np.testing.assert_array_equal(a.scores, b.scores)
    np.testing.assert_array_equal(a.rotation_index, b.rotation_index)
    np.testing.assert_array_equal(a.rotations, b.rotations)
    assert (a.score_mean, a.score_std, a.score_count) == (b.score_mean, b.score_std, b.score_count)


@pytest.fixture(scope="module")
def setup():
    tomo, tpl, kw = problem()
    return tomo, tpl, kw


@pytest.mark.parametrize(
    "extra",
    [{}, {"target_splits": {0: 2, 2: 2}, "batch_size": 4}, {"score": "NCC", "target_splits": 2}],
)
def test_tasks_in_any_order_equal_one_shot(setup, extra):
    tomo, tpl, kw = setup
    ref = match_template(tomo, tpl, progress=False, **kw, **extra)
    prep = ch.prepare_search(tomo, tpl, **kw, **extra)
    tasks = ch.search_tasks(prep, rotation_chunks=3)
    assert all(a % prep.batch_size == 0 for _, a, _ in tasks)
    states = [ch.search_task(prep, *t) for t in tasks]
    order = np.random.default_rng(2).permutation(len(states))
    merged = states[order[0]]
    for i in order[1:]:
        merged = ch.merge_states(merged, states[i])
    assert_same(ch.finish(prep, merged), ref)
    if len(states) > 1:
        with pytest.raises(InputError, match="tasks are missing"):
            ch.finish(prep, states[0])
        with pytest.raises(InputError, match="searched twice"):
            ch.merge_states(states[0], states[0])


class _Killed(Exception):
    pass


def test_interrupted_at_random_task_and_resumed_equals_uninterrupted(setup, tmp_path):
    tomo, tpl, kw = setup
    kw = dict(kw, target_splits={1: 2})
    ref = match_template(tomo, tpl, progress=False, **kw)
    ck = tmp_path / "s.checkpoint.pt"
    n_tasks = 2 * 4
    stop_at = int(np.random.default_rng().integers(1, n_tasks))

    def kill(task, n_done):
        if n_done == stop_at:
            raise _Killed

    with pytest.raises(_Killed):
        search3d(tomo, tpl, rotation_chunks=4, checkpoint=ck, checkpoint_interval_s=0,
                 on_chunk=kill, **kw)  # fmt: skip
    assert ck.is_file()
    seen: list[int] = []
    # resumed with another chunking request: the checkpoint's chunks are used
    res = search3d(tomo, tpl, rotation_chunks=1, checkpoint=ck,
                   on_chunk=lambda t, n: seen.append(n), **kw)  # fmt: skip
    assert seen == list(range(stop_at + 1, n_tasks + 1))
    assert res.metadata["distributed"]["resumed"]
    assert_same(res, ref)


def test_bad_inputs_are_clear_errors(setup):
    tomo, tpl, kw = setup
    bad = tomo.copy()
    bad[1, 2, 3] = np.inf
    with pytest.raises(InputError, match="tomogram"):
        search3d(bad, tpl, **kw)
    with pytest.raises(InputError, match="larger than the tomogram"):
        search3d(tomo[:5], tpl, **kw)
    with pytest.raises(InputError, match="empty"):
        search3d(tomo, tpl, rotations=np.zeros((0, 3, 3)))


def test_batch_from_glob_skips_done_and_reports_bad_files(setup, tmp_path):
    tomo, tpl, kw = setup
    src = tmp_path / "in"
    src.mkdir()
    write_mrc(src / "t1.mrc", tomo, voxel_size=2.0)
    write_mrc(src / "t2.mrc", tomo[:, ::-1].copy(), voxel_size=2.0)
    (src / "t3.mrc").write_bytes((src / "t1.mrc").read_bytes()[:1500])  # truncated
    write_mrc(tmp_path / "tpl.mrc", tpl, voxel_size=2.0)
    write_mrc(tmp_path / "tpl_bad_px.mrc", tpl, voxel_size=3.0)
    out = tmp_path / "out"
    summary = batch_search3d(str(src / "*.mrc"), tmp_path / "tpl.mrc", out, **kw)
    assert list(summary["status"]) == ["done", "done", "failed"]
    assert "t3.mrc" in summary.loc[2, "error"]
    assert not list(out.glob("*partial*")) and not list(out.glob("*.checkpoint.pt"))
    ref = match_template(tomo, tpl, pixel_size=2.0, progress=False, **kw)
    assert_same(MatchResult.read(out / "t1"), ref)
    summary = batch_search3d(str(src / "*.mrc"), tmp_path / "tpl.mrc", out, **kw)
    assert list(summary["status"]) == ["skipped", "skipped", "failed"]
    with pytest.raises(InputError, match="voxel sizes differ.*resample"):
        run_search3d(src / "t1.mrc", tmp_path / "tpl_bad_px.mrc", tmp_path / "x", **kw)
    with pytest.raises(ResultExistsError):
        run_search3d(src / "t1.mrc", tmp_path / "tpl.mrc", out / "t1", **kw)


def test_constraints_and_threshold_equal_one_shot(setup):
    tomo, tpl, kw = setup
    cons = {
        "positions": np.array([[10, 10, 10], [5, 12, 15]]),
        "rotations": kw["rotations"][:2],
        "cone_angle": 70.0,
        "acceptance_radius": 3.0,
    }
    for extra in (
        {"constraints": cons, "target_splits": 2},
        {"score": "CC", "score_threshold": 0.2},
    ):
        ref = match_template(tomo, tpl, progress=False, **kw, **extra)
        res = search3d(tomo, tpl, rotation_chunks=3, **kw, **extra)
        assert_same(res, ref)
    assert (res.rotation_index < 0).any()  # voxels never above the threshold stay -1

"""Chunked 2D search: equals the one-shot search bit for bit; kill-and-resume; file step."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from corrscan.core.io import write_mrc
from corrscan.distributed.search2d import (
    batch_search2d,
    checkpoint_path_for,
    run_search2d,
    search2d,
)
from corrscan.errors import InputError, ResultExistsError
from corrscan.match2d import MatchTemplateConfig, MatchTemplateResult, match_template
from corrscan.match2d import chunks as ch
from corrscan.synthetic.micrograph import example_template, simulate_micrograph

PIXEL = 1.5


def problem(n_orient: int = 22, seed: int = 0):
    """Tiny micrograph with one planted particle, random orientations, 3 defocus planes."""
    vol = example_template(16, n_atoms=60, seed=1)
    img, _ = simulate_micrograph(
        vol, shape=(40, 44), pixel_size=PIXEL, n_particles=1, seed=2, noise_std=0.5,
        defocus_u=8000,
    )  # fmt: skip
    rng = np.random.default_rng(seed)
    ori = np.stack(
        [rng.uniform(-180, 180, n_orient), rng.uniform(0, 180, n_orient),
         rng.uniform(-180, 180, n_orient)], 1,
    )  # fmt: skip
    # duplicate an orientation: its maps tie exactly, so the smaller GLOBAL index must win
    ori[n_orient - 1] = ori[3]
    kw = {
        "optics": {"pixel_size": PIXEL, "defocus_u": 8000.0, "defocus_v": 8000.0},
        "defocus_search": {"defocus_min": -300.0, "defocus_max": 300.0, "defocus_step": 600.0},
        "orientations": ori,
        "compute": {"orientation_batch_size": 3},
    }
    return img, vol, kw


def assert_same(a, b):
    assert a.maps.keys() == b.maps.keys()
    for k in a.maps:
        assert torch.equal(a.maps[k], b.maps[k]), k


@pytest.fixture(scope="module")
def setup():
    img, vol, kw = problem()
    return img, vol, kw, match_template(img, vol, progress=False, **kw)


def test_chunks_in_any_order_equal_one_shot(setup):
    img, vol, kw, ref = setup
    prep = ch.prepare_search(img, vol, **kw)
    assert prep.batch == 3 and prep.n_defocus == 3  # -300, 0 (always), +300
    chunks = ch.orientation_chunks(prep.n_orient, prep.batch, chunk_size=4)
    assert all(a % prep.batch == 0 for a, _ in chunks)  # rounded up to whole batches
    states = [ch.search_chunk(prep, a, b) for a, b in chunks]
    rng = np.random.default_rng(5)
    order = rng.permutation(len(states))
    merged = ch.empty_state(prep)
    for i in order:
        merged = ch.merge_states(merged, states[i])
    assert_same(ch.finish(prep, merged), ref)
    with pytest.raises(InputError, match="some chunks are missing"):
        ch.finish(prep, states[0])
    with pytest.raises(InputError, match="multiple of the batch"):
        ch.search_chunk(prep, 1, 4)


def test_search2d_in_process_equals_one_shot(setup):
    img, vol, kw, ref = setup
    res = search2d(img, vol, n_chunks=3, **kw)
    assert_same(res, ref)
    assert res.metadata["distributed"]["n_chunks"] == 3


class _Killed(Exception):
    pass


def test_interrupted_at_random_chunk_and_resumed_equals_uninterrupted(setup, tmp_path):
    img, vol, kw, ref = setup
    ck = tmp_path / "search.checkpoint.pt"
    n_chunks = len(ch.orientation_chunks(22, 3))
    stop_at = int(np.random.default_rng().integers(1, n_chunks))  # a random point
    seen: list[int] = []

    def kill(task, n_done):
        seen.append(n_done)
        if n_done == stop_at:
            raise _Killed

    with pytest.raises(_Killed):
        search2d(img, vol, checkpoint=ck, checkpoint_interval_s=0, on_chunk=kill, **kw)
    assert ck.is_file()
    seen.clear()
    res = search2d(img, vol, checkpoint=ck, on_chunk=lambda t, n: seen.append(n), **kw)
    assert seen[0] == stop_at + 1  # the finished chunks were skipped
    assert res.metadata["distributed"]["resumed"]
    assert_same(res, ref)
    # the checkpoint belongs to this search: another search refuses it
    other = dict(kw, defocus_search={"defocus_min": 0.0, "defocus_max": 0.0, "defocus_step": 1})
    with pytest.raises(InputError, match="different search"):
        search2d(img, vol, checkpoint=ck, **other)


def test_sigkill_and_resume(setup, tmp_path):
    """A process killed by SIGKILL mid-search resumes from its last atomic checkpoint."""
    img, vol, kw, ref = setup
    np.save(tmp_path / "img.npy", img)
    np.save(tmp_path / "vol.npy", vol)
    np.save(tmp_path / "ori.npy", kw["orientations"])
    ck = tmp_path / "ck.pt"
    script = textwrap.dedent(
        f"""
        import os, signal, numpy as np, torch
        from corrscan.distributed.search2d import search2d
        torch.set_num_threads({torch.get_num_threads()})
        d = {str(tmp_path)!r}
        kw = dict(optics={kw["optics"]!r}, defocus_search={kw["defocus_search"]!r},
                  compute={kw["compute"]!r}, orientations=np.load(d + "/ori.npy"))
        def kill(task, n):
            if n == 3:
                os.kill(os.getpid(), signal.SIGKILL)
        search2d(np.load(d + "/img.npy"), np.load(d + "/vol.npy"), checkpoint={str(ck)!r},
                 checkpoint_interval_s=0, on_chunk=kill, **kw)
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    assert ck.is_file()
    assert not [p for p in os.listdir(tmp_path) if "partial" in p]  # nothing half-written
    res = search2d(img, vol, checkpoint=ck, **kw)
    assert res.metadata["distributed"]["resumed"]
    assert_same(res, ref)


def test_run_search2d_file_step(tmp_path):
    img, vol, _ = problem()
    write_mrc(tmp_path / "mic.mrc", img.astype(np.float32), voxel_size=PIXEL)
    write_mrc(tmp_path / "tpl.mrc", vol.astype(np.float32), voxel_size=PIXEL)
    out = tmp_path / "res"
    cfg = MatchTemplateConfig.from_dict(
        {
            "micrograph_path": str(tmp_path / "mic.mrc"),
            "template_volume_path": str(tmp_path / "tpl.mrc"),
            "optics_group": {"pixel_size": PIXEL, "defocus_u": 8000.0, "defocus_v": 8000.0},
            "defocus_search_config": {"enabled": False},
            "orientation_search_config": {"psi_step": 90.0, "theta_step": 90.0},
            "computational_config": {"orientation_batch_size": 4},
            "output": {"bundle_path": str(out)},
        }
    )
    res, _parts, path = run_search2d(cfg)
    assert path == out and (out / "metadata.json").is_file() and (out / "mip.mrc").is_file()
    assert not checkpoint_path_for(out).exists()  # removed once the bundle is written
    ref = match_template(
        img, vol, optics=cfg.optics_group, defocus_search=cfg.defocus_search_config,
        orientation_search=cfg.orientation_search_config, compute=cfg.computational_config,
        progress=False,
    )  # fmt: skip
    assert_same(res, ref)
    mtime = (out / "metadata.json").stat().st_mtime_ns
    with pytest.raises(ResultExistsError, match="already exists"):
        run_search2d(cfg)
    assert (out / "metadata.json").stat().st_mtime_ns == mtime  # never overwritten
    run_search2d(cfg, overwrite=True)
    # batch: a good micrograph and a truncated one; finished bundles are skipped on a rerun
    (tmp_path / "cut.mrc").write_bytes((tmp_path / "mic.mrc").read_bytes()[:2000])
    lst = tmp_path / "list.csv"
    lst.write_text("path\nmic.mrc\ncut.mrc\n")
    summary = batch_search2d(cfg, lst, tmp_path / "batch")
    assert list(summary["status"]) == ["done", "failed"]
    assert "cut.mrc" in summary.loc[1, "error"]
    assert summary.loc[0, "n_particles"] == len(_parts)
    done = MatchTemplateResult.load(tmp_path / "batch" / "mic")
    assert_same(done, res)
    summary = batch_search2d(cfg, lst, tmp_path / "batch")
    assert list(summary["status"]) == ["skipped", "failed"]
    assert (tmp_path / "batch" / "summary.csv").is_file()


def test_bad_inputs_are_clear_errors():
    img, vol, kw = problem()
    bad = img.copy()
    bad[3, 4] = np.nan
    with pytest.raises(InputError, match="micrograph"):
        search2d(bad, vol, **kw)
    with pytest.raises(InputError, match="larger than the micrograph"):
        search2d(img[:10, :10], vol, **kw)
    with pytest.raises(InputError, match="orientations is empty"):
        search2d(img, vol, **dict(kw, orientations=np.zeros((0, 3))))


def test_bits_do_not_depend_on_workers_or_torch_threads(setup):
    """The CPU search runs every worker torch-single-threaded and merges per-worker states
    exactly: 1 or 3 worker threads, under 1 or 2 torch threads, give the same bits (so Dask
    workers, which run one thread, reproduce any in-process run with the same batch)."""
    from corrscan.core.threads import torch_threads

    img, vol, kw, ref = setup
    runs = []
    for n_workers, n_torch in [(1, 1), (3, 2), (2, 1)]:
        comp = dict(kw["compute"], num_threads=n_workers)
        with torch_threads(n_torch):
            res = match_template(img, vol, progress=False, **dict(kw, compute=comp))
            assert torch.get_num_threads() == n_torch  # the caller's count is restored
        assert len(res.metadata["workers"]) == n_workers
        runs.append(res)
    for res in runs:
        assert_same(res, ref)
    # and a chunked run under 2 torch threads
    with torch_threads(2):
        assert_same(search2d(img, vol, chunk_size=6, **kw), ref)

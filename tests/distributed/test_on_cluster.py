"""2D, 3D and likelihood searches on a Dask LocalCluster (2 workers) equal in-process ones.

One cluster for the whole module (starting worker processes is the slow part). Workers run
torch single-threaded, so the in-process references are computed with one torch thread too:
the jobs' FFT/GEMM kernels round differently with other thread counts (see
``docs/distributed.md``).
"""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch

from corrscan.distributed import get_client
from corrscan.distributed.likelihood import likelihood_search
from corrscan.distributed.search2d import search2d
from corrscan.distributed.search3d import search3d
from corrscan.likelihood.kernel import search as likelihood_one_shot
from corrscan.match2d import match_template as match2d
from corrscan.match3d import match_template as match3d
from tests.distributed import test_likelihood, test_search2d, test_search3d


@contextlib.contextmanager
def one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(old)


@contextlib.contextmanager
def two_threads():
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        yield
    finally:
        torch.set_num_threads(old)


@pytest.fixture(scope="module")
def client():
    with get_client(workers=2) as c:
        yield c


def test_cluster_has_two_single_threaded_workers(client):
    assert len(client.scheduler_info()["workers"]) == 2
    threads = client.run(torch.get_num_threads)
    assert set(threads.values()) == {1}


def test_match2d_on_cluster_equals_in_process(client):
    img, vol, kw = test_search2d.problem()
    with one_thread():
        ref = match2d(img, vol, progress=False, **kw)
    res = search2d(img, vol, client=client, n_chunks=4, **kw)
    assert res.metadata["distributed"]["n_chunks"] == 4
    test_search2d.assert_same(res, ref)
    # the CPU search runs its workers single-threaded: the caller's thread count and the
    # number of in-process worker threads do not change the bits either
    with two_threads():
        ref2 = match2d(
            img, vol, progress=False, **dict(kw, compute={**kw["compute"], "num_threads": 2})
        )
    test_search2d.assert_same(res, ref2)


class _Killed(Exception):
    pass


def test_match2d_interrupted_in_process_resumed_on_cluster(client, tmp_path):
    img, vol, kw = test_search2d.problem()
    ck = tmp_path / "ck.pt"

    def kill(task, n_done):
        if n_done == 3:
            raise _Killed

    with one_thread():
        ref = match2d(img, vol, progress=False, **kw)
        with pytest.raises(_Killed):
            search2d(img, vol, checkpoint=ck, checkpoint_interval_s=0, on_chunk=kill, **kw)
    # same search, now on an existing scheduler address; the checkpoint's chunks are reused
    res = search2d(img, vol, scheduler=client.scheduler.address, checkpoint=ck, **kw)
    assert res.metadata["distributed"]["resumed"]
    test_search2d.assert_same(res, ref)


@pytest.mark.parametrize("extra", [{}, {"target_splits": {0: 2, 1: 2}, "batch_size": 2}])
def test_match3d_on_cluster_equals_in_process(client, extra):
    tomo, tpl, kw = test_search3d.problem()
    with one_thread():
        ref = match3d(tomo, tpl, progress=False, **kw, **extra)
    res = search3d(tomo, tpl, client=client, **kw, **extra)
    assert res.metadata["distributed"]["n_tasks"] >= 4
    test_search3d.assert_same(res, ref)


def test_likelihood_on_cluster_equals_in_process(client):
    ims, tpl, disp = test_likelihood.problem()
    kw = dict(level="pose", likelihood=True, optimal_likelihood=True, **test_likelihood.BATCHES)
    with one_thread():
        ref = likelihood_one_shot(ims, tpl, disp, device="cpu", **kw)
    res = likelihood_search(ims, tpl, disp, client=client, image_chunk=2, **kw)
    test_likelihood.assert_same(res, ref)
    assert np.isfinite(res.integrated_log_likelihood.numpy()).all()

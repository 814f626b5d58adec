"""Dask map-reduce of exact accumulators equals the in-process single pass."""

from __future__ import annotations

import pytest
import torch

from corrscan.core.stats import SearchStatistics
from corrscan.distributed import get_client, map_reduce
from corrscan.errors import InputError


def _chunks(n_chunks: int, per_chunk: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    return [torch.randn(per_chunk, 8, 9, generator=g) for _ in range(n_chunks)]


def test_map_reduce_on_local_cluster_equals_single_pass():
    chunks = _chunks(6, 5)
    reference = SearchStatistics((8, 9), payload_names=("index",))
    for i, c in enumerate(chunks):
        reference.update(c, {"index": torch.arange(5) + 5 * i})

    def work(task, chunks):
        i = task
        stats = SearchStatistics((8, 9), payload_names=("index",))
        stats.update(chunks[i], {"index": torch.arange(5) + 5 * i})
        return stats.state_dict()

    def merge(a, b):
        return (
            SearchStatistics.from_state_dict(a)
            .merge(SearchStatistics.from_state_dict(b))
            .state_dict()
        )

    with get_client(workers=2) as client:
        state = map_reduce(client, work, list(range(6)), merge, shared={"chunks": chunks})
    merged = SearchStatistics.from_state_dict(state)
    assert torch.equal(merged.max, reference.max)
    assert torch.equal(merged.payloads["index"], reference.payloads["index"])
    assert torch.equal(merged.mean, reference.mean)
    assert torch.equal(merged.variance, reference.variance)


def test_map_reduce_rejects_empty_and_bad_workers():
    with pytest.raises(InputError, match="empty"):
        map_reduce(None, lambda t: t, [], lambda a, b: a)
    with pytest.raises(InputError, match="workers"), get_client(workers=0):
        pass

"""Dask clients and the map-reduce used by every distributed search."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

from corrscan.core.progress import track
from corrscan.errors import InputError

T = TypeVar("T")
R = TypeVar("R")

__all__ = ["get_client", "map_reduce"]


@contextlib.contextmanager
def get_client(workers: int | None = None, scheduler: str | None = None) -> Iterator[Any]:
    """A ``dask.distributed.Client``: an existing scheduler, or a local cluster of processes.

    Parameters
    ----------
    workers
        Number of single-threaded worker processes of a new ``LocalCluster`` (ignored when
        ``scheduler`` is given).
    scheduler
        Address of a running scheduler (``tcp://host:8786``).

    The local cluster binds to the loopback interface only and is closed on exit.
    """
    from dask.distributed import Client, LocalCluster

    if scheduler:
        client = Client(scheduler)
        try:
            yield client
        finally:
            client.close()
        return
    n = 1 if workers is None else int(workers)
    if n < 1:
        raise InputError(f"workers must be >= 1, got {workers}")
    cluster = LocalCluster(
        n_workers=n,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address=None,
    )
    client = Client(cluster)
    try:
        yield client
    finally:
        client.close()
        cluster.close()


def map_reduce(
    client: Any,
    func: Callable[..., R],
    tasks: Sequence[Any],
    reduce: Callable[[R, R], R],
    *,
    shared: dict[str, Any] | None = None,
    description: str = "tasks",
) -> R:
    """Run ``func(task, **shared)`` for every task on the cluster and fold results with ``reduce``.

    ``shared`` values (inputs every task needs: images, templates, configs) are scattered to
    all workers once. ``reduce`` must be associative and order independent (the exact merges of
    :mod:`corrscan.core.stats` are), because results are folded as they complete.
    """
    if len(tasks) == 0:
        raise InputError("nothing to run: the list of tasks is empty")
    shared = dict(shared or {})
    # scatter each value as one object (a dict or list must not be split into items)
    futures_shared = {k: client.scatter([v], broadcast=True)[0] for k, v in shared.items()}
    futures = client.map(func, list(tasks), pure=False, **futures_shared)
    from dask.distributed import as_completed

    result: R | None = None
    for fut in track(as_completed(futures), total=len(futures), description=description):
        part = fut.result()
        result = part if result is None else reduce(result, part)
        fut.release()
    assert result is not None
    return result

"""Scoped control of torch's intra-op CPU thread count.

Why: torch splits every CPU operation over its intra-op thread pool. For the small operations
of the search loops (FFTs of a few maps, reductions of `(n, H, W)` chunks, tiny GEMMs) the
synchronisation per operation costs more than it saves, and on a loaded 2-core machine the
pool collapses (threads wait for a core while the others spin), so single-threaded ops in
several independent worker threads are faster. The thread count also changes how FFT/GEMM
kernels split their sums, hence the rounding of the results: a search that must give the same
bits in any process (Dask workers run torch single-threaded) fixes the count for its kernels.

:func:`torch_threads` sets the count for a block and always restores the caller's count, on
normal exit and on errors. The count is process-wide (torch has one intra-op pool), so use it
around a whole search from the thread that starts the search, not inside worker threads.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from corrscan.errors import InputError

__all__ = ["torch_threads"]


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[int]:
    """Run the block with ``torch.set_num_threads(n)``; restore the previous count after.

    Parameters
    ----------
    n
        Intra-op CPU threads for the block (``>= 1``); ``None`` leaves the count unchanged.

    Yields
    ------
    int
        The thread count in effect inside the block.

    Raises
    ------
    InputError
        ``n`` is not a positive integer.
    """
    old = torch.get_num_threads()
    if n is None:
        yield old
        return
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise InputError(f"torch thread count must be an integer >= 1, got {n!r}")
    if n == old:
        yield n
        return
    torch.set_num_threads(n)
    try:
        yield n
    finally:
        torch.set_num_threads(old)

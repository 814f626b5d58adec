"""Optional numba JIT for the few CPU hot loops that torch cannot fuse (one place to import it).

``njit`` is :func:`numba.njit` when numba imports, else a no-op decorator, and
:data:`AVAILABLE` says which; callers keep a torch path for ``AVAILABLE = False``. Kernels are
compiled with ``nogil=True`` (worker threads run them in parallel) and ``cache=True`` (compiled
once per machine, kept in numba's on-disk cache).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["AVAILABLE", "njit", "run_parallel"]

try:  # pragma: no cover - depends on the environment; numba is a declared dependency
    from numba import njit as _njit

    AVAILABLE = True
except Exception:  # pragma: no cover - broken or missing numba: callers fall back to torch
    _njit = None
    AVAILABLE = False


def njit(**options: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``numba.njit(**options)`` (or the function unchanged without numba)."""
    if _njit is None:
        return lambda f: f
    return _njit(**options)


_POOL: Any = None


def run_parallel(tasks: list[tuple[Callable[..., Any], tuple[Any, ...]]]) -> None:
    """Run ``f(*args)`` for every ``(f, args)``: the first on the calling thread, the others on
    a shared thread pool (for GIL-releasing kernels working on disjoint parts of the output).
    One task runs inline with no pool."""
    global _POOL
    if len(tasks) == 1:
        f, args = tasks[0]
        f(*args)
        return
    if _POOL is None:
        import os
        from concurrent.futures import ThreadPoolExecutor

        _POOL = ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2))
    futures = [_POOL.submit(f, *args) for f, args in tasks[1:]]
    f, args = tasks[0]
    f(*args)
    for fut in futures:
        fut.result()

"""Optional numba JIT for the few CPU hot loops that torch cannot fuse (one place to import it).

``njit`` is :func:`numba.njit` when numba imports, else a no-op decorator, and
:data:`AVAILABLE` says which; callers keep a torch path for ``AVAILABLE = False``. Kernels are
compiled with ``nogil=True`` (worker threads run them in parallel) and ``cache=True`` (compiled
once per machine, kept in numba's on-disk cache).
"""

from __future__ import annotations

import threading
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
_POOL_LOCK = threading.Lock()


def _pool() -> Any:
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            import os
            from concurrent.futures import ThreadPoolExecutor

            _POOL = ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2))
        return _POOL


def run_parallel(tasks: list[tuple[Callable[..., Any], tuple[Any, ...]]]) -> None:
    """Run ``f(*args)`` for every ``(f, args)``: the first on the calling thread, the others on
    a shared thread pool (for GIL-releasing kernels working on disjoint parts of the output).
    Returns when every task has finished; the first error is raised then. One task runs inline.
    """
    if len(tasks) == 1:
        f, args = tasks[0]
        f(*args)
        return
    pool = _pool()
    futures = [pool.submit(f, *args) for f, args in tasks[1:]]
    error: BaseException | None = None
    try:
        f, args = tasks[0]
        f(*args)
    except BaseException as exc:  # still wait: the others write into the same outputs
        error = exc
    for fut in futures:
        try:
            fut.result()
        except BaseException as exc:
            error = error or exc
    if error is not None:
        raise error

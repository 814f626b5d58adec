"""Optional numba JIT for the few CPU hot loops that torch cannot fuse (one place to import it).

``njit`` is :func:`numba.njit` when numba imports, else a no-op decorator, and
:data:`AVAILABLE` says which; callers keep a torch path for ``AVAILABLE = False``. Kernels are
compiled with ``nogil=True`` (worker threads run them in parallel) and ``cache=True`` (compiled
once per machine, kept in numba's on-disk cache).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["AVAILABLE", "njit"]

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

"""Checkpoints of long searches: atomic, fingerprinted, resumable.

A search saves its accumulator state (plain tensors, see :mod:`corrscan.core.stats`) and the
set of finished work items at intervals. A run restarted with the same inputs and configuration
finds the checkpoint, checks its fingerprint and continues with the remaining work; the final
result is identical to an uninterrupted run because the statistics merge exactly.

Files are written to a temporary sibling and renamed (:func:`corrscan.core.io._util.atomic_path`),
so a run killed while saving leaves the previous checkpoint intact.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from corrscan.core.arrays import as_numpy
from corrscan.core.io._util import atomic_path
from corrscan.errors import FileFormatError, InputError

__all__ = ["Checkpoint", "fingerprint"]

_FORMAT = "corrscan-checkpoint-v1"


def _is_array(x: Any) -> bool:
    return isinstance(x, (np.ndarray, torch.Tensor)) or type(x).__module__.startswith("cupy")


def _array_digest(x: Any) -> str:
    """``dtype:shape:sha256(bytes)`` of an array (host copy, C order)."""
    a = np.ascontiguousarray(as_numpy(x))
    digest = hashlib.sha256(a.view(np.uint8).reshape(-1).data).hexdigest()
    return f"array:{a.dtype.str}:{a.shape}:{digest}"


def _json_default(obj: Any) -> Any:
    """JSON form of non-JSON values: arrays by content digest (never a truncated repr)."""
    if _is_array(obj):
        return _array_digest(obj)
    if isinstance(obj, np.generic):
        return obj.item()
    if hasattr(obj, "model_dump"):  # pydantic configs
        return obj.model_dump(mode="json")
    return str(obj)


def fingerprint(*parts: Any) -> str:
    """SHA-256 hex digest of configuration values and arrays (order matters).

    Arrays (NumPy/CuPy/torch), also inside dicts and lists, are hashed by dtype, shape and
    bytes; pydantic models by their fields; everything else by its JSON form (``default=str``),
    so two runs of the same search on the same data agree and any change of the data changes
    the fingerprint.
    """
    h = hashlib.sha256()
    for part in parts:
        if _is_array(part):
            a = np.ascontiguousarray(as_numpy(part))
            h.update(f"array:{a.dtype.str}:{a.shape}".encode())
            h.update(a.view(np.uint8).reshape(-1).data)
        else:
            h.update(json.dumps(part, sort_keys=True, default=_json_default).encode())
        h.update(b"\x00")
    return h.hexdigest()


class Checkpoint:
    """Resumable state of one search at ``path``.

    Parameters
    ----------
    path
        Checkpoint file (``.pt``); its folder must exist.
    fingerprint
        Identity of the search (see :func:`fingerprint`); a checkpoint with another fingerprint
        is refused rather than silently mixed into a different search.
    interval_s
        Minimum seconds between two saves made through :meth:`maybe_save`.
    """

    def __init__(self, path: str | os.PathLike, fingerprint: str, *, interval_s: float = 60.0):
        self.path = Path(path)
        self.fingerprint = fingerprint
        self.interval_s = float(interval_s)
        self._last_save = time.monotonic()

    def exists(self) -> bool:
        """Whether a checkpoint file is present."""
        return self.path.is_file()

    def load(self) -> dict[str, Any] | None:
        """The saved state, or ``None`` when there is no checkpoint.

        Raises
        ------
        InputError
            The checkpoint belongs to a different search (inputs or configuration changed).
        FileFormatError
            The file is not a readable corrscan checkpoint.
        """
        if not self.exists():
            return None
        try:
            payload = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises many types for corrupt files
            raise FileFormatError(
                f"checkpoint {self.path} is unreadable ({type(exc).__name__}); delete it to start "
                "the search from the beginning"
            ) from None
        if not isinstance(payload, dict) or payload.get("format") != _FORMAT:
            raise FileFormatError(f"{self.path} is not a corrscan checkpoint")
        if payload.get("fingerprint") != self.fingerprint:
            raise InputError(
                f"checkpoint {self.path} belongs to a different search (inputs or configuration "
                "changed); delete it or write to another output folder"
            )
        return payload["state"]

    def save(self, state: dict[str, Any]) -> None:
        """Atomically replace the checkpoint with ``state`` (tensors, numbers, strings, lists)."""
        payload = {"format": _FORMAT, "fingerprint": self.fingerprint, "state": state}
        with atomic_path(self.path, overwrite=True, what="checkpoint") as tmp:
            torch.save(payload, tmp)
        self._last_save = time.monotonic()

    def maybe_save(self, state_fn: Callable[[], dict[str, Any]]) -> bool:
        """Save ``state_fn()`` if ``interval_s`` has passed since the last save; return whether.

        ``state_fn`` is only called when a save is due (building the state may cost a device
        to host copy).
        """
        if time.monotonic() - self._last_save < self.interval_s:
            return False
        self.save(state_fn())
        return True

    def remove(self) -> None:
        """Delete the checkpoint (after the final result is safely written)."""
        self.path.unlink(missing_ok=True)

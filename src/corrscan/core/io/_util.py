"""Shared helpers of the file readers and writers: error wrapping and atomic writes."""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

from corrscan.errors import FileFormatError, ResultExistsError

__all__ = ["atomic_path", "require_file"]


def require_file(path: str | os.PathLike, what: str) -> Path:
    """``Path(path)`` if it is an existing regular file, else :class:`FileFormatError`."""
    p = Path(path)
    if not p.exists():
        raise FileFormatError(f"{what} file not found: {p}")
    if not p.is_file():
        raise FileFormatError(f"{what} path is not a regular file: {p}")
    return p


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, overwrite: bool, what: str) -> Iterator[Path]:
    """Yield a temporary sibling path; on success rename it onto ``path`` (atomic on POSIX).

    On any exception the temporary file is removed and ``path`` is left untouched. With
    ``overwrite=False`` an existing ``path`` raises :class:`ResultExistsError` (checked before
    writing and again before the rename).
    """
    dest = Path(path)
    if dest.exists() and not overwrite:
        raise ResultExistsError(
            f"{what} already exists: {dest} (pass overwrite=True to replace it)"
        )
    if not dest.parent.exists():
        raise FileFormatError(f"cannot write {dest}: directory {dest.parent} does not exist")
    tmp = dest.with_name(f".{dest.name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        yield tmp
        if dest.exists() and not overwrite:
            raise ResultExistsError(
                f"{what} already exists: {dest} (pass overwrite=True to replace it)"
            )
        os.replace(tmp, dest)
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                tmp.unlink()
        raise

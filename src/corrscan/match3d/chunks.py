"""Chunk-level hooks of the 3D search (kept for :mod:`corrscan.distributed` and its docs).

The hooks now live in :mod:`corrscan.match3d.search`, where
:func:`~corrscan.match3d.search.match_template` is built from them: :func:`prepare_search`,
:func:`search_tasks`, :func:`search_task`, :func:`merge_states`, :func:`finish` and
:class:`Prepared3D`. This module re-exports them under their established names.
"""

from corrscan.match3d.search import (
    STATE_FORMAT,
    Prepared3D,
    finish,
    merge_states,
    prepare_search,
    search_task,
    search_tasks,
)

__all__ = [
    "STATE_FORMAT",
    "Prepared3D",
    "finish",
    "merge_states",
    "prepare_search",
    "search_task",
    "search_tasks",
]

"""Chunk-level hooks of the 2D search (for :mod:`corrscan.distributed.search2d`).

The functions live in :mod:`corrscan.match2d.search`, where
:func:`~corrscan.match2d.search.match_template` itself is ``prepare_search`` + ``search_chunk``
over all orientations + ``finish``: a chunked search and the one-shot search run the same
code, so they cannot drift apart.

* :func:`prepare_search` (same arguments as ``match_template``) -> :class:`PreparedSearch`;
* :func:`orientation_chunks` -> batch-aligned ``[(start, stop), ...]`` (GLOBAL indices);
* :func:`search_chunk` -> partial state (MIP with the global winning item, exact moments);
* :func:`merge_states` (exact, order independent), :func:`empty_state`;
* :func:`finish` -> :class:`~corrscan.match2d.result.MatchTemplateResult`.

Exactness: merged states of any batch-aligned split equal the one-shot state bit for bit for
the same ``orientation_batch_size`` (the float32 batch sums are the unit), on the same kind of
device; on the CPU the search always runs torch single-threaded per worker, so neither the
number of workers/processes nor the caller's torch thread count changes the bits.
"""

from __future__ import annotations

from corrscan.match2d.search import (
    STATE_FORMAT,
    PreparedSearch,
    empty_state,
    finish,
    merge_states,
    orientation_chunks,
    prepare_search,
    search_chunk,
)

#: former name of :class:`PreparedSearch`
Prepared2D = PreparedSearch

__all__ = [
    "STATE_FORMAT",
    "Prepared2D",
    "PreparedSearch",
    "empty_state",
    "finish",
    "merge_states",
    "orientation_chunks",
    "prepare_search",
    "search_chunk",
]

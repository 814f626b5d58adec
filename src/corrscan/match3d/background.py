"""Background correction of a 3D search with a second, background search.

Phase-scrambled background correction (pyTME's ``background_correction="phase-scrambling"``):
the same search (same tomogram, filters, score, mask and rotations) is run a second time with
the template phase-scrambled (:func:`corrscan.match3d.template.phase_scramble`, seed 42).
Regions that correlate with *any* template of that power spectrum (bright or high-variance
structures, edges, gold, membranes) score high in both; the template-specific signal only in
the first. The corrected map is

    ``scores_corrected = scores - (bg - mean(bg))``

with ``bg`` the background search's max-over-rotations map and ``mean(bg)`` its mean over the
voxels where it is finite; voxels where ``bg`` is not finite are left as they are. Subtracting
a zero-mean map keeps the scores' overall level (the mean over voxels of the best scores moves
by ``-mean`` of the finite part of ``bg - mean(bg)``, i.e. not at all when ``bg`` is finite
everywhere).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np

from corrscan.errors import InputError
from corrscan.match3d.results import MatchResult

__all__ = ["correct_background"]


def correct_background(
    result: MatchResult,
    background: MatchResult,
    *,
    method: str = "phase-scrambling",
    details: Mapping[str, Any] | None = None,
) -> MatchResult:
    """Subtract a background search's mean-free max-score map from a search's scores.

    Parameters
    ----------
    result
        The real search.
    background
        The background search (e.g. with the phase-scrambled template) over the same
        tomogram region: same map shape and pixel size.
    method
        Label recorded in the metadata (``"phase-scrambling"``).
    details
        Extra entries for the metadata record (e.g. ``{"seed": 42}``).

    Returns
    -------
    MatchResult
        A new result: ``scores = scores - (bg - mean(bg))`` (float32), the same rotation map,
        rotation table and template shape, and ``metadata["background_correction"] =
        {"method", "background_mean", "background_std", "background_n_rotations",
        "background_seconds", **details}``. ``score_mean``, ``score_std`` and
        ``score_count`` stay those of the uncorrected search (the statistics of all
        voxel x rotation scores, which the correction does not produce), so
        :meth:`MatchResult.false_positive_cutoff` is that of the uncorrected search.

    Raises
    ------
    InputError
        If the shapes or pixel sizes differ, or the background map has no finite value.
    """
    if not isinstance(result, MatchResult) or not isinstance(background, MatchResult):
        raise InputError("correct_background takes two MatchResult objects (search, background)")
    s = np.asarray(result.scores)
    bg = np.asarray(background.scores, dtype=np.float64)
    if s.shape != bg.shape:
        raise InputError(
            f"score maps differ in shape: search {s.shape}, background {bg.shape}; run the "
            "background search on the same tomogram region"
        )
    ps, pb = float(result.pixel_size), float(background.pixel_size)
    if abs(ps - pb) > 1e-6 * max(abs(ps), abs(pb)):
        raise InputError(
            f"pixel sizes differ: search {ps} Å, background {pb} Å; use the same tomogram"
        )
    finite = np.isfinite(bg)
    if not finite.any():
        raise InputError("the background score map has no finite value")
    mean = float(bg[finite].mean())
    std = float(bg[finite].std())
    shift = np.where(finite, bg - mean, 0.0)
    corrected = (s.astype(np.float64) - shift).astype(np.float32)
    meta = dict(result.metadata)
    meta["background_correction"] = {
        "method": str(method),
        "background_mean": mean,
        "background_std": std,
        "background_n_rotations": int(background.n_rotations),
        "background_seconds": background.metadata.get("seconds"),
        **dict(details or {}),
    }
    return dataclasses.replace(
        result,
        scores=corrected,
        rotation_index=np.array(result.rotation_index, copy=True),
        metadata=meta,
    )

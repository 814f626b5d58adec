"""corrscan.match3d: exhaustive 3D template matching in tomograms (replaces pyTME).

``match_template`` searches a tomogram for rotated copies of a template with the scores CC,
LCC, NCC, FLCSphericalMask (default), FLC and MCC, lab-frame template filters (missing wedge,
tilt weighting, CTF, band-pass, whitening), target splits and rotation chunks merged exactly.
``MatchResult.peaks`` calls peaks; ``write_table`` writes CSV / RELION 4 / RELION 5 STAR.
pyTME-compatible names: :mod:`corrscan.match3d.analyzers` (``MaxScoreOverRotations`` ...) and
:mod:`corrscan.match3d.peaks` (``PeakCallerMaximumFilter`` ...).
"""

from corrscan.match3d.analyzers import (
    MaxScoreOverRotations,
    MaxScoreOverRotationsConstrained,
    MaxScoreOverTranslations,
)
from corrscan.match3d.filters import FilterConfig
from corrscan.match3d.peaks import call_peaks, false_positive_cutoff, subvoxel_refine
from corrscan.match3d.results import MatchResult, read_table, write_table
from corrscan.match3d.rotations import rotation_set
from corrscan.match3d.scores import SCORES
from corrscan.match3d.search import match_template, spherical_mask, split_boxes

__all__ = [
    "SCORES",
    "FilterConfig",
    "MatchResult",
    "MaxScoreOverRotations",
    "MaxScoreOverRotationsConstrained",
    "MaxScoreOverTranslations",
    "call_peaks",
    "false_positive_cutoff",
    "match_template",
    "read_table",
    "rotation_set",
    "spherical_mask",
    "split_boxes",
    "subvoxel_refine",
    "write_table",
]

"""Per-bead quality flags of the tracker (a bit field; 0 means a clean measurement)."""

from __future__ import annotations

from enum import IntFlag

__all__ = ["TrackFlag", "describe_flags"]


class TrackFlag(IntFlag):
    """Why a bead's x, y or z is NaN (or suspect) in one image.

    Values combine bitwise; a measurement is clean when its flags are 0.
    """

    #: the image contains NaN or Inf pixels: x, y, z are NaN
    NONFINITE = 1
    #: the image has no contrast (all pixels equal, e.g. a dropped frame): x, y, z are NaN
    BLANK = 2
    #: the bead centre is within ``edge_margin_px`` of the ROI border (or outside it): x, y, z NaN
    EDGE = 4
    #: the symmetry-centre fit failed (no peak, diverged) or the image is not radially
    #: symmetric about the fitted centre (bead mostly outside the ROI, two beads, debris):
    #: x, y, z are NaN
    XY_FAILED = 8
    #: the best Z-LUT match is at the first or last LUT plane: z is NaN
    Z_OUT_OF_RANGE = 16
    #: the correlation with the best Z-LUT plane is below ``min_correlation``: z is NaN
    Z_LOW_CORRELATION = 32


def describe_flags(value: int) -> str:
    """Human-readable names of the set bits of ``value`` (``"ok"`` for 0)."""
    v = int(value)
    if v == 0:
        return "ok"
    return "|".join(f.name for f in TrackFlag if v & f and f.name is not None)

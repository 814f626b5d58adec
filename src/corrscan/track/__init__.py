"""Magnetic-tweezers bead tracking: x, y, z of beads in ROI images with a Z look-up table.

Native, batch-first API (images `(..., H, W)`, x = column, y = row, pixels):

- :func:`track_stack` / :class:`TrackConfig` / :class:`TrackResult`: the whole pipeline;
- :func:`build_zlut` / :class:`ZLUT`: Z-LUT from a focus sweep, save/load, lookup;
- kernels: :func:`center_of_mass`, :func:`symmetry_center`, :func:`radial_profile`,
  :func:`fft_profile`, :func:`lookup_z`;
- movies: :func:`crop_rois`, :func:`read_rois`, :func:`track_movie` (TIFF, in chunks),
  :func:`zlut_from_sweep`;
- :class:`TrackFlag`: per-image quality flags.

``corrscan.track.magtrack_api`` mirrors MagTrack's public functions and
`(n_pixels, n_pixels, n_images)` layout.
"""

from corrscan.track.flags import TrackFlag, describe_flags
from corrscan.track.movie import read_rois, track_movie, zlut_from_sweep
from corrscan.track.pipeline import TrackConfig, TrackResult, build_zlut, crop_rois, track_stack
from corrscan.track.profiles import fft_profile, radial_profile
from corrscan.track.xy import center_of_mass, symmetry_center
from corrscan.track.zlut import ZLUT, lookup_z

__all__ = [
    "ZLUT",
    "TrackConfig",
    "TrackFlag",
    "TrackResult",
    "build_zlut",
    "center_of_mass",
    "crop_rois",
    "describe_flags",
    "fft_profile",
    "lookup_z",
    "radial_profile",
    "read_rois",
    "symmetry_center",
    "track_movie",
    "track_stack",
    "zlut_from_sweep",
]

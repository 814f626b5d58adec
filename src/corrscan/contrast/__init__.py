"""corrscan.contrast: tomogram contrast limits and Neuroglancer viewing (cryo-ET portal job).

- :func:`compute_contrast_limits` / :func:`contrast_report`: GMM/BIC, CDF-gradient or
  percentile limits on a central z slab, reading only that slab (arrays, Dask, Zarr, MRC,
  OME-Zarr).
- :mod:`corrscan.contrast.states`: Neuroglancer layers and viewer states, shareable URLs.
- :func:`serve_viewer`: local loopback Neuroglancer viewer with the computed limits.
- :mod:`corrscan.contrast.portal_api`: the cryo-ET portal package's names and signatures.

Neuroglancer-related names are imported lazily so that computing limits does not import the
``neuroglancer`` package.
"""

from __future__ import annotations

from typing import Any

from corrscan.contrast.limits import (
    AUTO_Z_RADIUS,
    METHODS,
    ContrastLimits,
    ContrastReport,
    compute_contrast_limits,
    contrast_report,
)

__all__ = [
    "AUTO_Z_RADIUS",
    "METHODS",
    "ContrastLimits",
    "ContrastReport",
    "Picks",
    "compute_contrast_limits",
    "contrast_report",
    "image_layer",
    "oriented_point_layer",
    "point_layer",
    "read_picks",
    "segmentation_layer",
    "serve_viewer",
    "state_url",
    "tomogram_state",
    "viewer_state",
]

_LAZY = {
    "Picks": "corrscan.contrast.picks",
    "read_picks": "corrscan.contrast.picks",
    "image_layer": "corrscan.contrast.states",
    "oriented_point_layer": "corrscan.contrast.states",
    "point_layer": "corrscan.contrast.states",
    "segmentation_layer": "corrscan.contrast.states",
    "state_url": "corrscan.contrast.states",
    "tomogram_state": "corrscan.contrast.states",
    "viewer_state": "corrscan.contrast.states",
    "serve_viewer": "corrscan.contrast.viewer",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'corrscan.contrast' has no attribute {name!r}")

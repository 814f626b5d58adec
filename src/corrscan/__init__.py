"""corrscan: find, pose and track particles in microscopy images by correlation.

Layers (imports only point down): ``cli`` > ``distributed`` > jobs (``match2d``, ``match3d``,
``likelihood``, ``contrast``, ``track``) > ``synthetic`` > ``core``.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("corrscan")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]

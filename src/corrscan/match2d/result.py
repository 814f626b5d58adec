"""Result bundle of a 2D template search.

A bundle is a folder with one MRC per map (voxel size = the maps' pixel size, unlike
Leopard-EM's 0, quirk Q11), ``metadata.json`` (totals, configuration, timings, conventions) and
optional particle tables (CSV, STAR). It is written to ``<path>.partial-<pid>`` and renamed
when complete, so an interrupted run never leaves a folder that looks finished.

Maps (all `(H', W')` float32; ``H' = H - D + 1`` with valid cropping):

========================  ===========================================================
``mip``                   maximum normalised correlation over orientations x defocus
``scaled_mip``            z-score ``(mip - correlation_mean) / correlation_std``
``correlation_mean``      per-pixel mean over the search
``correlation_variance``  per-pixel (population) **variance** (Leopard-EM stores the std
                          under this name, quirk Q2)
``correlation_std``       per-pixel standard deviation
``phi, theta, psi``       best ZYZ Euler angles, degrees
``relative_defocus``      best defocus offset, Å, relative to ``(U + V) / 2``
========================  ===========================================================

Map pixel ``(i, j)`` is the top-left corner of the template box; the particle centre in the
searched micrograph is ``(i + D // 2, j + D // 2)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from corrscan.errors import FileFormatError

__all__ = ["MAP_NAMES", "MatchTemplateResult"]

MAP_NAMES = (
    "mip",
    "scaled_mip",
    "correlation_mean",
    "correlation_variance",
    "correlation_std",
    "phi",
    "theta",
    "psi",
    "relative_defocus",
)


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, torch.Tensor):
        return x.tolist()
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    return x


@dataclass
class MatchTemplateResult:
    """Maps and metadata of one search (see the module docstring for the map list).

    Attributes
    ----------
    maps
        Name -> `(H', W')` float32 CPU tensor.
    metadata
        Totals (``total_orientations``, ``total_defocus``, ``total_correlations``), pixel size
        of the maps (Å), template box, valid-crop flag, configuration, timings.
    tables
        Optional particle tables (pandas DataFrames) saved with the bundle.
    """

    maps: dict[str, torch.Tensor]
    metadata: dict[str, Any]
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)

    def __getattr__(self, name: str) -> Any:
        maps = self.__dict__.get("maps", {})
        if name in maps:
            return maps[name]
        raise AttributeError(name)

    # -- properties
    @property
    def pixel_size(self) -> float:
        """Å/pixel of the maps."""
        return float(self.metadata["pixel_size"])

    @property
    def box(self) -> int:
        """Template box side (pixels at the maps' pixel size)."""
        return int(self.metadata["template_box"])

    @property
    def total_correlations(self) -> int:
        """Orientations x defocus values searched (CCGs per pixel)."""
        return int(self.metadata["total_correlations"])

    def numpy(self, name: str) -> np.ndarray:
        """A map as a NumPy array."""
        return self.maps[name].numpy()

    # -- I/O
    def save(self, path: str | Path, *, overwrite: bool = False) -> Path:
        """Write the bundle folder (MRC maps with the pixel size, ``metadata.json``, tables as
        CSV and RELION STAR) atomically (:func:`corrscan.core.io.bundle.write_bundle`).

        Raises :class:`ResultExistsError` if ``path`` exists and ``overwrite`` is false.
        """
        from corrscan.core.io.bundle import write_bundle
        from corrscan.match2d.peaks import star_table

        star = {name: star_table(df) for name, df in self.tables.items() if "pos_x_img" in df}
        return write_bundle(
            path,
            maps={k: v.numpy() for k, v in self.maps.items()},
            metadata=_jsonable(self.metadata),
            voxel_size=self.pixel_size,
            tables=self.tables,
            overwrite=overwrite,
            star=star or False,
        )

    @classmethod
    def load(cls, path: str | Path) -> MatchTemplateResult:
        """Read a bundle written by :meth:`save`."""
        from corrscan.core.io.bundle import read_bundle

        b = read_bundle(path)
        metadata = dict(b.metadata.get("metadata", b.metadata))
        maps = {k: torch.from_numpy(np.array(v, dtype=np.float32)) for k, v in b.maps.items()}
        missing = [n for n in ("mip", "scaled_mip") if n not in maps]
        if missing or "template_box" not in metadata:
            raise FileFormatError(f"{path} is not a match2d result bundle (missing {missing})")
        return cls(maps=maps, metadata=metadata, tables=dict(b.tables))

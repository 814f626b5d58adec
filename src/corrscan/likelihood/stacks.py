"""Polar image and template stacks (in memory and on disk).

On disk a stack is one ``.pt`` file holding a plain dict of tensors, strings and numbers (loads
with ``torch.load(weights_only=True)``; no pickled classes).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from corrscan.errors import FileFormatError, InputError
from corrscan.likelihood.ctf import CtfParams
from corrscan.likelihood.grid import PolarGrid
from corrscan.likelihood.transform import images_to_polar

__all__ = ["PolarImages", "PolarTemplates", "atomic_save", "images_from_real_space"]


def atomic_save(obj: dict, path: str | Path) -> None:
    """``torch.save`` to a temporary name, then rename (no half-written result files)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial-{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _load(path: str | Path, kind: str) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileFormatError(f"{kind} file not found: {path}")
    try:
        d = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several unrelated types for corrupt files
        raise FileFormatError(f"{path} is not a corrscan {kind} file: {exc}") from exc
    if not isinstance(d, dict) or d.get("kind") != kind:
        found = d.get("kind") if isinstance(d, dict) else type(d).__name__
        raise FileFormatError(
            f"{path} is not a corrscan {kind} file (kind={found!r}); rewrite it with .save()"
        )
    return d


def _bad(path: str | Path, kind: str, problem: str) -> FileFormatError:
    return FileFormatError(
        f"{path}: corrupt or incompatible corrscan {kind} file: {problem} (rewrite it with .save())"
    )


def _field(d: dict, key: str, path: str | Path, kind: str, types: type | tuple):
    if key not in d:
        raise _bad(path, kind, f"missing field {key!r}")
    v = d[key]
    if not isinstance(v, types):
        raise _bad(path, kind, f"field {key!r} is a {type(v).__name__}")
    return v


def _tensor(
    d: dict, key: str, path: str | Path, kind: str, ndim: int, *, complex_: bool = False
) -> torch.Tensor:
    t = _field(d, key, path, kind, torch.Tensor)
    if t.ndim != ndim:
        raise _bad(path, kind, f"field {key!r} has shape {tuple(t.shape)}, expected {ndim} axes")
    ok = t.is_complex() if complex_ else t.is_floating_point()
    if not ok:
        want = "complex" if complex_ else "real floating-point"
        raise _bad(path, kind, f"field {key!r} has dtype {t.dtype}, expected {want}")
    if not bool(torch.isfinite(t).all()):
        raise _bad(path, kind, f"field {key!r} contains NaN/Inf")
    return t


def _grid(d: dict, data: torch.Tensor, path: str | Path, kind: str) -> PolarGrid:
    """The stored grid, checked against the data's `(n_shells, W)` before it is built."""
    raw = _field(d, "grid", path, kind, str)
    try:
        g = json.loads(raw)
    except ValueError as exc:
        raise _bad(path, kind, f"grid is not valid JSON ({exc})") from exc
    if not isinstance(g, dict):
        raise _bad(path, kind, "grid is not a JSON object")
    want = {"n_pixels": int, "pixel_size": (int, float), "resolution_factor": (int, float),
            "n_shells": int, "n_inplanes": int, "quadrature": str}  # fmt: skip
    for key, typ in want.items():
        if key not in g:
            raise _bad(path, kind, f"grid lacks {key!r}")
        if isinstance(g[key], bool) or not isinstance(g[key], typ):
            raise _bad(path, kind, f"grid field {key!r} = {g[key]!r} has the wrong type")
        if isinstance(g[key], float) and not math.isfinite(g[key]):
            raise _bad(path, kind, f"grid field {key!r} = {g[key]!r} is not finite")
    if (g["n_shells"], g["n_inplanes"]) != tuple(data.shape[1:]):
        raise _bad(
            path,
            kind,
            f"grid says {g['n_shells']} shells x {g['n_inplanes']} angles but the data are "
            f"{tuple(data.shape)}",
        )
    try:
        return PolarGrid.from_dict(g)
    except (InputError, ValueError, OverflowError) as exc:
        raise _bad(path, kind, f"invalid grid {g} ({exc})") from exc


@dataclass
class PolarTemplates:
    """Templates on a polar grid, L2-normalised (``Σ ω |T|² = 1``), box mean kept (see
    :func:`corrscan.likelihood.templates.finish_templates`).

    Attributes
    ----------
    data
        `(S, n_shells, W)` complex.
    grid
        The polar grid.
    euler
        `(S, 3)` Euler angles (degrees, core convention) of the viewing directions.
    weights
        `(S,)` viewing quadrature weights (log-prior ``ln(w / Σ w)``).
    name
        Structure name (file stem).
    """

    data: torch.Tensor
    grid: PolarGrid
    euler: np.ndarray
    weights: np.ndarray
    name: str = "structure"

    def __len__(self) -> int:
        return int(self.data.shape[0])

    def save(self, path: str | Path) -> None:
        atomic_save(
            {
                "kind": "corrscan-polar-templates",
                "data": self.data.cpu(),
                "grid": json.dumps(self.grid.to_dict()),
                "euler": torch.from_numpy(np.asarray(self.euler, dtype=np.float64)),
                "weights": torch.from_numpy(np.asarray(self.weights, dtype=np.float64)),
                "name": self.name,
            },
            path,
        )

    @classmethod
    def load(cls, path: str | Path) -> PolarTemplates:
        """Read a file written by :meth:`save`.

        Raises :class:`~corrscan.errors.FileFormatError` naming the file and the problem when it
        is missing, not a template file, truncated or corrupt (never another exception).
        """
        kind = "corrscan-polar-templates"
        d = _load(path, kind)
        data = _tensor(d, "data", path, kind, 3, complex_=True)
        grid = _grid(d, data, path, kind)
        euler = _tensor(d, "euler", path, kind, 2)
        weights = _tensor(d, "weights", path, kind, 1)
        s = data.shape[0]
        if tuple(euler.shape) != (s, 3) or tuple(weights.shape) != (s,):
            raise _bad(
                path,
                kind,
                f"{s} templates but euler {tuple(euler.shape)} and weights {tuple(weights.shape)}",
            )
        if bool((weights <= 0).any()):
            raise _bad(path, kind, "viewing weights must be positive")
        name = _field(d, "name", path, kind, str)
        return cls(data=data, grid=grid, euler=euler.numpy(), weights=weights.numpy(), name=name)


@dataclass
class PolarImages:
    """Particle images on a polar grid with their CTFs.

    Attributes
    ----------
    data
        `(M, n_shells, W)` complex, mean removed (real space) and L2-normalised.
    grid
        The polar grid.
    ctf
        Per-image CTF parameters, or an explicit real CTF tensor `(M, n_shells, W)`.
    norms
        `(M,)` float64: the quadrature norm ``sqrt(Σ ω |F|²)`` divided out (the likelihoods add
        ``-(N/2 - 2) · 2 ln norm`` back so that they refer to the data as given).
    table
        Optional per-image metadata (source file, index, prior angles/shifts ...).
    """

    data: torch.Tensor
    grid: PolarGrid
    ctf: CtfParams | torch.Tensor
    norms: torch.Tensor
    table: pd.DataFrame | None = field(default=None)

    def __len__(self) -> int:
        return int(self.data.shape[0])

    def subset(self, index: slice) -> PolarImages:
        tab = None if self.table is None else self.table.iloc[index].reset_index(drop=True)
        idx = np.arange(len(self))[index]
        ctf = self.ctf[idx] if isinstance(self.ctf, torch.Tensor) else self.ctf.subset(idx)
        return PolarImages(self.data[index], self.grid, ctf, self.norms[index], tab)

    def save(self, path: str | Path) -> None:
        d = {
            "kind": "corrscan-polar-images",
            "data": self.data.cpu(),
            "grid": json.dumps(self.grid.to_dict()),
            "norms": self.norms.cpu(),
        }
        if isinstance(self.ctf, torch.Tensor):
            d["ctf_tensor"] = self.ctf.cpu()
        else:
            d["ctf"] = {k: torch.from_numpy(v) for k, v in self.ctf.to_dict().items()}
        if self.table is not None:
            d["table"] = self.table.to_json(orient="split")
        atomic_save(d, path)

    @classmethod
    def load(cls, path: str | Path) -> PolarImages:
        """Read a file written by :meth:`save`.

        Raises :class:`~corrscan.errors.FileFormatError` naming the file and the problem when it
        is missing, not an image-stack file, truncated or corrupt (never another exception).
        """
        kind = "corrscan-polar-images"
        d = _load(path, kind)
        data = _tensor(d, "data", path, kind, 3, complex_=True)
        grid = _grid(d, data, path, kind)
        m = data.shape[0]
        norms = _tensor(d, "norms", path, kind, 1)
        if tuple(norms.shape) != (m,) or bool((norms <= 0).any()):
            raise _bad(path, kind, f"norms must be {m} positive values, got {tuple(norms.shape)}")
        ctf: CtfParams | torch.Tensor
        if "ctf_tensor" in d:
            ctf = _tensor(d, "ctf_tensor", path, kind, 3)
            if tuple(ctf.shape) != tuple(data.shape):
                raise _bad(path, kind, f"ctf_tensor {tuple(ctf.shape)} != data {tuple(data.shape)}")
        else:
            raw = _field(d, "ctf", path, kind, dict)
            names = set(CtfParams(np.zeros(1)).to_dict())
            if set(raw) != names:
                raise _bad(path, kind, f"ctf fields {sorted(map(str, raw))} != {sorted(names)}")
            cols = {k: _tensor(raw, k, path, kind, 1) for k in sorted(names)}
            if any(v.shape[0] != m for v in cols.values()):
                raise _bad(path, kind, f"ctf parameters are not {m} values each")
            try:
                ctf = CtfParams(**{k: v.numpy() for k, v in cols.items()})
            except InputError as exc:
                raise _bad(path, kind, f"invalid CTF parameters ({exc})") from exc
        table = None
        if "table" in d:
            from io import StringIO

            txt = _field(d, "table", path, kind, str)
            try:
                table = pd.read_json(StringIO(txt), orient="split")
            except Exception as exc:  # pandas raises many unrelated types for bad JSON
                raise _bad(path, kind, f"unreadable per-image table ({exc})") from exc
            if len(table) != m:
                raise _bad(path, kind, f"per-image table has {len(table)} rows for {m} images")
        return cls(data=data, grid=grid, ctf=ctf, norms=norms, table=table)

    @classmethod
    def concat(cls, items: list[PolarImages]) -> PolarImages:
        if not items:
            raise InputError("no image stacks to concatenate")
        tabs = [it.table for it in items]
        table = None if any(t is None for t in tabs) else pd.concat(tabs, ignore_index=True)
        return cls(
            torch.cat([it.data for it in items]),
            items[0].grid,
            torch.cat([it.ctf for it in items])
            if isinstance(items[0].ctf, torch.Tensor)
            else CtfParams.concat([it.ctf for it in items]),
            torch.cat([it.norms for it in items]),
            table,
        )


def images_from_real_space(
    images,
    grid: PolarGrid,
    ctf: CtfParams | None = None,
    *,
    table: pd.DataFrame | None = None,
    shifts: np.ndarray | None = None,
    precision: str = "single",
    method: str = "auto",
    device=None,
) -> PolarImages:
    """Real-space particle images `(M, N, N)` -> :class:`PolarImages`.

    Steps: subtract each image's mean (real space), transform to the polar grid
    (:func:`~corrscan.likelihood.transform.images_to_polar`, ``method`` "auto" | "direct" |
    "nufft"), divide by the quadrature norm.
    ``ctf=None`` means no CTF (``CTF ≡ 1``). ``shifts`` `(M, 2)` ``(x, y)`` pixels moves every
    image by ``+shift`` (exact Fourier phase; used to apply RELION/cryoSPARC prior origins).
    """
    from corrscan.core.arrays import to_tensor

    dtype = torch.float64 if precision == "double" else torch.float32
    t = to_tensor(images, dtype=dtype, name="images")
    if t.ndim == 2:
        t = t[None]
    if t.ndim != 3:
        raise InputError(f"images must be (M, N, N), got {tuple(t.shape)}")
    if not bool(torch.isfinite(t).all()):
        raise InputError("images contain NaN/Inf: clean the stack first")
    t = t - t.mean(dim=(-2, -1), keepdim=True)
    pol = images_to_polar(t, grid, method=method, device=device)
    if shifts is not None:
        sh = np.asarray(shifts, dtype=np.float64).reshape(-1, 2)
        if sh.shape[0] != t.shape[0]:
            raise InputError(f"{sh.shape[0]} shifts for {t.shape[0]} images")
        kx, ky = grid.points()
        ph = -2.0 * np.pi * (sh[:, 0, None, None] * kx[None] + sh[:, 1, None, None] * ky[None])
        pol = pol * torch.from_numpy(np.exp(1j * ph)).to(device=pol.device, dtype=pol.dtype)
    norms = torch.sqrt(grid.integrate(pol.abs().to(torch.float64) ** 2))
    if bool((norms <= 0).any()):
        raise InputError("an image is constant (zero after mean removal)")
    pol = pol / norms.to(pol.real.dtype)[:, None, None]
    if ctf is None:
        ctf = CtfParams.none(t.shape[0])
    if len(ctf) != t.shape[0]:
        raise InputError(f"{len(ctf)} CTF entries for {t.shape[0]} images")
    return PolarImages(pol, grid, ctf, norms.cpu(), table)

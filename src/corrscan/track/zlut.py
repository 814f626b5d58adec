"""Z look-up tables (radial profile vs focus) and the z lookup.

A :class:`ZLUT` holds reference radial profiles ``profiles`` `(n_ref, n_bins)` (one shared
table) or `(n_beads, n_ref, n_bins)` (one table per bead) recorded at focus positions ``z``
`(n_ref,)` (nm by convention, strictly increasing), plus the profile geometry they were made
with (``oversample``, ``samples_per_px``): measurements must use the same geometry.

Lookup (:func:`lookup_z`):

1. The table is interpolated along z with a natural cubic spline (per radial bin) onto
   ``upsample`` sub-planes per LUT step (cached per device and dtype).
2. Weighted Pearson correlation of each measured profile with every sub-plane profile, bin
   weights = the profile's sample counts (inverse-variance for shot noise; bins outside the
   image have weight 0). One matrix product for the whole batch.
   Coarse to fine: first against the table's own planes, then against the sub-planes within
   two planes of the best one.
3. Argmax, then a 3-point parabola on the sub-plane correlations (spacing ``dz / upsample``, so
   the parabola is a good local model; MagTrack fits 7 points spaced ``dz``).
4. z NaN and :class:`TrackFlag.Z_OUT_OF_RANGE` when the best sub-plane is the first or last.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from corrscan.core.arrays import to_tensor, unwrap
from corrscan.core.peaks import parabolic_vertex
from corrscan.errors import FileFormatError, InputError
from corrscan.track.flags import TrackFlag

__all__ = ["ZLUT", "lookup_z", "spline_upsample"]


def spline_upsample(
    z: torch.Tensor, values: torch.Tensor, upsample: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Natural cubic spline of ``values`` along ``z``, sampled ``upsample`` times per interval.

    Parameters
    ----------
    z
        `(n,)` strictly increasing knots.
    values
        `(..., n, B)`: values at the knots (interpolated independently per trailing column).
    upsample
        Sub-intervals per knot interval (1 returns the knots).

    Returns
    -------
    z_fine
        `((n - 1) * upsample + 1,)`.
    values_fine
        `(..., (n - 1) * upsample + 1, B)`.
    """
    n = z.shape[0]
    up = max(int(upsample), 1)
    if n < 2:
        raise InputError("a Z-LUT needs at least 2 planes")
    h = z[1:] - z[:-1]  # (n-1,)
    m = torch.zeros_like(values)
    if n > 2:
        a = torch.zeros((n - 2, n - 2), dtype=z.dtype, device=z.device)
        idx = torch.arange(n - 2, device=z.device)
        a[idx, idx] = 2.0 * (h[:-1] + h[1:])
        a[idx[1:], idx[:-1]] = h[1:-1]
        a[idx[:-1], idx[1:]] = h[1:-1]
        slope = (values[..., 1:, :] - values[..., :-1, :]) / h[:, None]
        rhs = 6.0 * (slope[..., 1:, :] - slope[..., :-1, :])  # (..., n-2, B)
        m_inner = torch.linalg.solve(a, rhs)
        m = torch.cat([torch.zeros_like(values[..., :1, :]), m_inner, m[..., -1:, :]], dim=-2)
    s = torch.arange(up, dtype=z.dtype, device=z.device) / up  # (up,)
    hh = h[:, None]  # (n-1, 1)
    za = z[:-1, None]
    zf = (za + s * hh).reshape(-1)
    zf = torch.cat([zf, z[-1:]])
    # per interval i, position t = s * h in [0, h)
    t = s * hh  # (n-1, up)
    u = hh - t
    p0 = values[..., :-1, None, :]  # (..., n-1, 1, B)
    p1 = values[..., 1:, None, :]
    m0 = m[..., :-1, None, :]
    m1 = m[..., 1:, None, :]
    h3 = hh[..., None]
    t3 = t[..., None]
    u3 = u[..., None]
    vf = (
        m0 * u3**3 / (6.0 * h3)
        + m1 * t3**3 / (6.0 * h3)
        + (p0 / h3 - m0 * h3 / 6.0) * u3
        + (p1 / h3 - m1 * h3 / 6.0) * t3
    )
    vf = vf.reshape(*values.shape[:-2], -1, values.shape[-1])
    vf = torch.cat([vf, values[..., -1:, :]], dim=-2)
    return zf, vf


@dataclass
class ZLUT:
    """Reference radial profiles vs focus position.

    Attributes
    ----------
    z
        `(n_ref,)` focus positions, strictly increasing (nm by convention).
    profiles
        `(n_ref, n_bins)` shared table or `(n_beads, n_ref, n_bins)` one table per bead.
    oversample, samples_per_px
        Radial profile geometry the table was made with (:func:`radial_profile`).
    units
        Unit of ``z`` (``"nm"``).
    metadata
        Free-form provenance (JSON-serialisable values).
    """

    z: np.ndarray
    profiles: np.ndarray
    oversample: int = 1
    samples_per_px: float = 1.0
    units: str = "nm"
    metadata: dict[str, Any] = field(default_factory=dict)
    _cache: dict[Any, tuple[torch.Tensor, torch.Tensor]] = field(
        default_factory=dict, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        z = np.asarray(self.z, dtype=np.float64).reshape(-1)
        p = np.asarray(self.profiles, dtype=np.float64)
        if p.ndim not in (2, 3):
            raise InputError(
                f"ZLUT profiles must be (n_ref, n_bins) or (n_beads, n_ref, n_bins), got {p.shape}"
            )
        if p.shape[-2] != z.shape[0]:
            raise InputError(
                f"ZLUT has {z.shape[0]} z values but {p.shape[-2]} profile planes: they must match"
            )
        if z.shape[0] < 4:
            raise InputError(f"a Z-LUT needs at least 4 planes, got {z.shape[0]}")
        if not np.all(np.isfinite(z)) or not np.all(np.diff(z) > 0):
            order = np.argsort(z)
            if np.all(np.isfinite(z)) and np.all(np.diff(z[order]) > 0):
                z = z[order]
                p = np.take(p, order, axis=-2)
            else:
                raise InputError("ZLUT z values must be finite and distinct (one per plane)")
        if not np.all(np.isfinite(p)):
            raise InputError(
                "ZLUT profiles contain NaN/Inf: rebuild the table with the bead inside the ROI"
            )
        self.z = z
        self.profiles = p
        self.oversample = int(self.oversample)
        self._cache = {}

    @property
    def n_ref(self) -> int:
        """Number of reference planes."""
        return int(self.z.shape[0])

    @property
    def n_bins(self) -> int:
        """Number of radial bins per profile."""
        return int(self.profiles.shape[-1])

    @property
    def n_tables(self) -> int:
        """1 for a shared table, else the number of beads."""
        return 1 if self.profiles.ndim == 2 else int(self.profiles.shape[0])

    def fine(
        self, upsample: int, *, device: torch.device | str = "cpu"
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Spline-upsampled table ``(z_fine (J,), profiles (L, J, n_bins))`` in float64 (cached)."""
        key = (int(upsample), str(device))
        if key not in self._cache:
            z = torch.as_tensor(self.z, dtype=torch.float64, device=device)
            p = torch.as_tensor(self.profiles, dtype=torch.float64, device=device)
            if p.ndim == 2:
                p = p[None]
            zf, pf = spline_upsample(z, p, upsample)
            pf = pf - pf.mean(dim=-1, keepdim=True)  # Pearson ignores offsets; keeps sums small
            self._cache[key] = (zf, pf)
        return self._cache[key]

    # ---- I/O -------------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write an ``.npz`` (keys ``z``, ``profiles``, ``oversample``, ``samples_per_px``,
        ``units``, ``metadata`` as JSON); written to a temporary name, then renamed."""
        import json
        import os

        path = Path(path)
        if path.suffix != ".npz":
            path = path.with_suffix(".npz")
        tmp = path.with_name(f"{path.name}.partial-{os.getpid()}.npz")
        np.savez(
            tmp,
            z=self.z,
            profiles=self.profiles,
            oversample=np.int64(self.oversample),
            samples_per_px=np.float64(self.samples_per_px),
            units=np.str_(self.units),
            metadata=np.str_(json.dumps(self.metadata, default=str)),
        )
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> ZLUT:
        """Read a table written by :meth:`save`, or a MagTrack array (``.npy``/text,
        `(1 + n_bins, n_ref)`, row 0 = z) via :meth:`from_magtrack`."""
        import json

        path = Path(path)
        if not path.is_file():
            raise FileFormatError(f"Z-LUT file not found: {path}")
        try:
            if path.suffix == ".npz":
                with np.load(path, allow_pickle=False) as d:
                    if "z" not in d or "profiles" not in d:
                        raise FileFormatError(
                            f"{path} is not a corrscan Z-LUT (needs arrays 'z' and 'profiles')"
                        )
                    meta = json.loads(str(d["metadata"])) if "metadata" in d else {}
                    return cls(
                        z=d["z"],
                        profiles=d["profiles"],
                        oversample=int(d["oversample"]) if "oversample" in d else 1,
                        samples_per_px=float(d["samples_per_px"]) if "samples_per_px" in d else 1.0,
                        units=str(d["units"]) if "units" in d else "nm",
                        metadata=meta,
                    )
            arr = np.load(path) if path.suffix == ".npy" else np.loadtxt(path, ndmin=2)
        except (OSError, ValueError) as exc:
            raise FileFormatError(f"cannot read Z-LUT {path}: {exc}") from None
        return cls.from_magtrack(arr)

    @classmethod
    def from_magtrack(cls, zlut: Any, *, oversample: int = 1) -> ZLUT:
        """From MagTrack's layout `(1 + n_bins, n_ref)`: row 0 = z, rows 1... = profiles."""
        a = np.asarray(to_tensor(zlut, dtype=torch.float64).cpu().numpy())
        if a.ndim != 2 or a.shape[0] < 2:
            raise InputError(f"a MagTrack Z-LUT is (1 + n_bins, n_ref), got shape {a.shape}")
        return cls(z=a[0], profiles=a[1:].T, oversample=oversample)

    def to_magtrack(self, bead: int = 0) -> np.ndarray:
        """MagTrack's layout `(1 + n_bins, n_ref)` (for per-bead tables, the table of ``bead``)."""
        p = self.profiles if self.profiles.ndim == 2 else self.profiles[bead]
        return np.concatenate([self.z[None, :], p.T], axis=0)


def _weighted_pearson(
    wpc: torch.Tensor, w: torch.Tensor, sw: torch.Tensor, var_p: torch.Tensor, lut: torch.Tensor
) -> torch.Tensor:
    """Weighted Pearson of centred profiles with table rows.

    ``wpc``, ``w`` `(T, L, B)`; ``sw``, ``var_p`` `(T, L)`; ``lut`` `(L, J, B)` shared by all
    T, or `(T, L, J, B)` per profile. Returns `(T, L, J)`.
    """
    if lut.ndim == 3:
        cov = torch.einsum("tlb,ljb->tlj", wpc, lut)
        s1 = torch.einsum("tlb,ljb->tlj", w, lut)
        s2 = torch.einsum("tlb,ljb->tlj", w, lut * lut)
    else:
        cov = (wpc[:, :, None, :] * lut).sum(-1)
        wl = w[:, :, None, :] * lut
        s1 = wl.sum(-1)
        s2 = (wl * lut).sum(-1)
    var_l = (s2 - s1 * s1 / sw[..., None]).clamp(min=0.0)
    r = cov / torch.sqrt(var_p[..., None] * var_l).clamp(min=1e-300)
    return torch.nan_to_num(r, nan=-2.0)


def lookup_kernel(
    prof: torch.Tensor,
    weights: torch.Tensor,
    z_fine: torch.Tensor,
    lut_fine: torch.Tensor,
    *,
    upsample: int,
    min_correlation: float = -1.0,
    search_planes: int = 2,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """z by weighted Pearson + sub-plane parabola (torch only).

    Coarse pass against the table's planes (every ``upsample``-th sub-plane), then the
    sub-planes within ``search_planes`` planes of the best one.

    Parameters
    ----------
    prof, weights
        `(T, L, B)` profiles and bin weights (NaN bins get weight 0).
    z_fine, lut_fine
        `(J,)` and `(L, J, B)` (centred per sub-plane) from :meth:`ZLUT.fine` with the same
        ``upsample``.

    Returns
    -------
    z `(T, L)` (NaN when flagged), r `(T, L)` best correlation, flags `(T, L)` int32.
    """
    up = max(int(upsample), 1)
    l_n = prof.shape[1]
    p = torch.nan_to_num(prof.to(torch.float64), nan=0.0)
    w = weights.to(torch.float64) * torch.isfinite(prof)
    sw = w.sum(-1).clamp(min=1e-30)  # (T, L)
    pm = (w * p).sum(-1, keepdim=True) / sw[..., None]
    pc = p - pm
    wpc = w * pc
    var_p = (wpc * pc).sum(-1)  # (T, L)
    n_j = lut_fine.shape[1]
    f32 = torch.float32  # the coarse argmax needs no float64
    coarse = _weighted_pearson(
        wpc.to(f32), w.to(f32), sw.to(f32), var_p.to(f32), lut_fine[:, ::up].to(f32)
    )
    k = coarse.argmax(dim=-1)  # (T, L) plane index
    width = min(2 * search_planes * up + 1, n_j)
    start = (k * up - search_planes * up).clamp(0, n_j - width)
    jj = start[..., None] + torch.arange(width, device=prof.device)  # (T, L, width)
    li = torch.arange(l_n, device=prof.device)[None, :, None]
    r = _weighted_pearson(wpc, w, sw, var_p, lut_fine[li, jj])  # (T, L, width)
    jl = r.argmax(dim=-1, keepdim=True)
    jm = (jl - 1).clamp(min=0)
    jp = (jl + 1).clamp(max=width - 1)
    r0 = r.gather(-1, jl).squeeze(-1)
    rm = r.gather(-1, jm).squeeze(-1)
    rp = r.gather(-1, jp).squeeze(-1)
    delta, _height = parabolic_vertex(rm, r0, rp)  # offset in [-0.5, 0.5]; 0 if not a max
    js = jj.gather(-1, jl).squeeze(-1)  # global sub-plane index
    z0 = z_fine[js]
    z_up = z_fine[(js + 1).clamp(max=n_j - 1)]
    z_dn = z_fine[(js - 1).clamp(min=0)]
    z = torch.where(delta >= 0, z0 + delta * (z_up - z0), z0 + delta * (z0 - z_dn))
    flags = torch.zeros(z.shape, dtype=torch.int32, device=z.device)
    edge = (js == 0) | (js == n_j - 1) | ~(var_p > 0)
    flags = flags | torch.where(edge, int(TrackFlag.Z_OUT_OF_RANGE), 0).to(torch.int32)
    low = r0 < min_correlation
    flags = flags | torch.where(low & ~edge, int(TrackFlag.Z_LOW_CORRELATION), 0).to(torch.int32)
    z = torch.where(flags == 0, z, torch.full_like(z, float("nan")))
    r0 = torch.where(var_p > 0, r0, torch.full_like(r0, float("nan")))
    return z, r0, flags


def lookup_z(
    profiles: Any,
    zlut: ZLUT,
    *,
    weights: Any = None,
    upsample: int = 10,
    min_correlation: float = -1.0,
) -> tuple[Any, Any, Any]:
    """Focus position of each measured radial profile (see the module docstring).

    Parameters
    ----------
    profiles
        `(..., n_bins)` radial profiles (same geometry as the table). For a per-bead table the
        second-to-last batch axis is the bead: `(..., n_beads, n_bins)`.
    zlut
        The :class:`ZLUT`.
    weights
        `(..., n_bins)` bin weights (e.g. ``counts`` from :func:`radial_profile`); default: the
        number of samples per bin of a full circle.
    upsample
        Spline sub-planes per LUT step.
    min_correlation
        z below this best-plane correlation is NaN (flag ``Z_LOW_CORRELATION``).

    Returns
    -------
    z, r, flags
        `(...)`: z in the table's units, best correlation, :class:`TrackFlag` bits.
    """
    t, restore = unwrap(profiles, name="profiles")
    if t.shape[-1] != zlut.n_bins:
        raise InputError(
            f"profiles have {t.shape[-1]} bins but the Z-LUT has {zlut.n_bins}: measure them "
            "with the same n_bins/oversample as the table"
        )
    lead = t.shape[:-1]
    n_tab = zlut.n_tables
    if weights is None:
        from corrscan.track.profiles import polar_plan

        plan = polar_plan(zlut.n_bins, zlut.oversample, zlut.samples_per_px, dtype=torch.float64)
        w = plan[2].sum(0).to(t.device).expand(t.shape)
    else:
        w = unwrap(weights, name="weights")[0].to(t.device).expand(t.shape)
    if n_tab > 1:
        if t.ndim < 2 or t.shape[-2] != n_tab:
            raise InputError(
                f"per-bead Z-LUT has {n_tab} tables: profiles must be (..., {n_tab}, n_bins)"
            )
        p3 = t.reshape(-1, n_tab, t.shape[-1])
        w3 = w.reshape(-1, n_tab, t.shape[-1])
    else:
        p3 = t.reshape(-1, 1, t.shape[-1])
        w3 = w.reshape(-1, 1, t.shape[-1])
    zf, lf = zlut.fine(upsample, device=t.device)
    z, r, flags = lookup_kernel(p3, w3, zf, lf, upsample=upsample, min_correlation=min_correlation)
    return restore(z.reshape(lead)), restore(r.reshape(lead)), restore(flags.reshape(lead))

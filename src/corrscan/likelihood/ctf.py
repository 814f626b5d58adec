"""Per-image astigmatic CTF on the polar grid.

Same formula, sign and astigmatism convention as :mod:`corrscan.core.ctf` (tested against
``core.ctf.ctf_2d``)::

    γ(k) = -π λ Δf(α) |k|² + (π/2) C_s λ³ |k|⁴ - φ - arcsin(A),   CTF = -sin γ · exp(-B |k|²/4)
    Δf(α) = (U + V)/2 + (U - V)/2 · cos 2(α - θ_ast)

``|k|`` in cycles/Å, ``α`` the azimuth of ``k`` from +x towards +y, signed astigmatism (no
``|U - V|``), B-factor envelope supported. The core exposes the CTF on Cartesian FFT grids only,
so this module evaluates it at the polar points (private helper; see the job report).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from corrscan.core.ctf import electron_wavelength
from corrscan.errors import InputError
from corrscan.likelihood.grid import PolarGrid

__all__ = ["CtfParams", "ctf_at", "ctf_polar"]


def _arr(x, n: int, name: str) -> np.ndarray:
    a = np.array(x, dtype=np.float64).reshape(-1)  # own, writable copy
    if a.size == 1:
        a = np.full(n, float(a[0]))
    if a.size != n:
        raise InputError(f"CTF parameter {name} has {a.size} values for {n} images")
    if not np.all(np.isfinite(a)):
        raise InputError(f"CTF parameter {name} contains NaN/Inf")
    return a


@dataclass
class CtfParams:
    """CTF parameters of ``n`` images (arrays `(n,)`; Å, degrees, kV, mm, Å²).

    ``defocus_u``/``defocus_v`` positive = underfocus; ``astigmatism_angle`` from +x to the
    ``U`` axis; ``phase_shift`` in degrees.
    """

    defocus_u: np.ndarray
    defocus_v: np.ndarray | None = None
    astigmatism_angle: np.ndarray | float = 0.0
    voltage: np.ndarray | float = 300.0
    spherical_aberration: np.ndarray | float = 2.7
    amplitude_contrast: np.ndarray | float = 0.07
    phase_shift: np.ndarray | float = 0.0
    b_factor: np.ndarray | float = 0.0
    _n: int = field(init=False, repr=False, default=0)

    def __post_init__(self) -> None:
        du = np.asarray(self.defocus_u, dtype=np.float64).reshape(-1)
        n = du.size
        self._n = n
        self.defocus_u = _arr(du, n, "defocus_u")
        self.defocus_v = _arr(du if self.defocus_v is None else self.defocus_v, n, "defocus_v")
        self.astigmatism_angle = _arr(self.astigmatism_angle, n, "astigmatism_angle")
        self.voltage = _arr(self.voltage, n, "voltage")
        self.spherical_aberration = _arr(self.spherical_aberration, n, "spherical_aberration")
        self.amplitude_contrast = _arr(self.amplitude_contrast, n, "amplitude_contrast")
        self.phase_shift = _arr(self.phase_shift, n, "phase_shift")
        self.b_factor = _arr(self.b_factor, n, "b_factor")
        if np.any(self.voltage <= 0):
            raise InputError("CTF voltage must be positive (kV)")
        if np.any((self.amplitude_contrast < 0) | (self.amplitude_contrast >= 1)):
            raise InputError("amplitude_contrast must be a fraction in [0, 1)")

    def __len__(self) -> int:
        return self._n

    def subset(self, index) -> CtfParams:
        return CtfParams(**{k: np.asarray(v)[index] for k, v in self.to_dict().items()})

    def to_dict(self) -> dict[str, np.ndarray]:
        return {
            "defocus_u": self.defocus_u,
            "defocus_v": self.defocus_v,
            "astigmatism_angle": self.astigmatism_angle,
            "voltage": self.voltage,
            "spherical_aberration": self.spherical_aberration,
            "amplitude_contrast": self.amplitude_contrast,
            "phase_shift": self.phase_shift,
            "b_factor": self.b_factor,
        }

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.to_dict())

    @classmethod
    def concat(cls, items: list[CtfParams]) -> CtfParams:
        d = {k: np.concatenate([it.to_dict()[k] for it in items]) for k in items[0].to_dict()}
        return cls(**d)

    @classmethod
    def none(cls, n: int) -> CtfParams:
        """Parameters that give ``CTF ≡ 1`` (A -> 1 is not allowed, so use phase shift 90°)."""
        return cls(np.zeros(n), amplitude_contrast=0.0, phase_shift=90.0, spherical_aberration=0.0)


def ctf_at(
    params: CtfParams,
    kx: np.ndarray,
    ky: np.ndarray,
    pixel_size: float,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """CTF of every image at frequencies ``(kx, ky)`` (cycles/pixel, any shape), `(n, *k.shape)`."""
    dev = torch.device(device)
    f64 = torch.float64
    kshape = np.shape(kx)
    extra = (None,) * len(kshape)

    def t(a) -> torch.Tensor:
        return torch.as_tensor(np.asarray(a), dtype=f64, device=dev)[(slice(None), *extra)]

    kxt = torch.as_tensor(np.asarray(kx) / pixel_size, dtype=f64, device=dev)
    kyt = torch.as_tensor(np.asarray(ky) / pixel_size, dtype=f64, device=dev)
    k2 = kxt**2 + kyt**2
    alpha = torch.atan2(kyt, kxt)
    p = params
    lam = t(electron_wavelength(np.array(p.voltage, dtype=np.float64)))
    du, dv = t(p.defocus_u), t(p.defocus_v)
    ang = torch.deg2rad(t(p.astigmatism_angle))
    dz = 0.5 * (du + dv) + 0.5 * (du - dv) * torch.cos(2.0 * (alpha - ang))
    cs = t(p.spherical_aberration) * 1e7
    offset = torch.deg2rad(t(p.phase_shift)) + torch.asin(t(p.amplitude_contrast))
    gamma = -math.pi * lam * dz * k2 + 0.5 * math.pi * cs * lam**3 * k2**2 - offset
    ctf = -torch.sin(gamma)
    bf = t(p.b_factor)
    if bool((bf != 0).any()):
        ctf = ctf * torch.exp(-0.25 * bf * k2)
    return ctf.to(dtype)


def ctf_polar(
    params: CtfParams | torch.Tensor,
    grid: PolarGrid,
    *,
    index: slice | np.ndarray | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """CTF of every image at every polar point, `(n, n_shells, W)` real.

    ``params`` may also be an explicit real CTF tensor `(M, n_shells, W)` (it must be even,
    ``CTF(-k) = CTF(k)``); ``index`` selects a subset of the images. Computed in float64,
    returned in ``dtype``.
    """
    if isinstance(params, torch.Tensor):
        t = params if index is None else params[torch.as_tensor(np.arange(len(params))[index])]
        return t.to(device=device, dtype=dtype)
    p = params if index is None else params.subset(index)
    kx, ky = grid.points()
    return ctf_at(p, kx, ky, grid.pixel_size, device=device, dtype=dtype)

"""Polar Fourier grids with exact quadrature, displacement grids and viewing-direction grids.

Conventions
-----------
* Frequencies are in cycles/pixel (``k = r (cos θ, sin θ)``, ``x`` along ``cos θ`` = image column
  axis, ``y`` along ``sin θ`` = image row axis). The Nyquist radius is 0.5 cycles/pixel; the grid
  reaches ``radius_max = 0.5 * resolution_factor``.
* Radial shells are Gauss–Jacobi nodes (weight ``r``, i.e. Jacobi ``α = 0, β = 1`` on
  ``[-1, 1]`` mapped to ``[0, radius_max]``) or Gauss–Legendre nodes; angles are ``W`` uniform
  points ``θ_j = 2π j / W`` (``W`` even, so ``θ_j + π`` is on the grid and a real image's
  transform is determined by the first ``W/2`` angles).
* Point weights ``ω_n = w_n · 2π / W`` integrate over the disc of radius ``radius_max``:
  ``Σ_{n,j} ω_n f(r_n, θ_j) = ∫∫ f(r, θ) r dr dθ`` exactly for ``f = r^a e^{i m θ}`` with
  ``a ≤ 2 n_shells − 2`` (Jacobi) / ``a ≤ 2 n_shells − 2`` (Legendre, ``a + 1 ≤ 2 n − 1``) and
  ``|m| < W``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from scipy.special import roots_jacobi, roots_legendre

from corrscan.errors import InputError

__all__ = [
    "PolarGrid",
    "ViewingGrid",
    "displacement_grid",
    "euler_zyz_to_matrix",
    "viewing_grid_fibonacci",
    "viewing_grid_from_angles",
    "viewing_grid_gauss_legendre",
]

Quadrature = Literal["gauss-jacobi", "gauss-legendre"]


@dataclass(frozen=True)
class PolarGrid:
    """A polar Fourier grid of ``n_shells`` radii times ``n_inplanes`` uniform angles.

    Build with :meth:`PolarGrid.create`. All arrays are float64 NumPy (moved to torch by the
    kernels); frequencies in cycles/pixel.

    Attributes
    ----------
    n_pixels
        Side of the (square) real-space images the grid belongs to.
    pixel_size
        Å/pixel.
    resolution_factor
        ``radius_max / Nyquist``.
    quadrature
        ``"gauss-jacobi"`` or ``"gauss-legendre"``.
    radii
        `(n_shells,)` shell radii, cycles/pixel, increasing.
    shell_weights
        `(n_shells,)` weights with ``Σ_n w_n f(r_n) = ∫_0^R f(r) r dr`` for polynomial ``f``.
    n_inplanes
        Number of angles ``W`` per shell (even).
    """

    n_pixels: int
    pixel_size: float
    resolution_factor: float
    quadrature: str
    radii: np.ndarray
    shell_weights: np.ndarray
    n_inplanes: int

    @classmethod
    def create(
        cls,
        n_pixels: int,
        pixel_size: float = 1.0,
        *,
        resolution_factor: float = 1.0,
        n_shells: int | None = None,
        n_inplanes: int | None = None,
        quadrature: Quadrature = "gauss-jacobi",
    ) -> PolarGrid:
        """Build a grid for ``n_pixels``-square images.

        Parameters
        ----------
        n_pixels
            Image side in pixels (>= 4).
        pixel_size
            Å/pixel (> 0).
        resolution_factor
            Radius of the outermost shell in units of Nyquist (0 < f <= 1 recommended).
        n_shells
            Number of radial shells; default ``round(n_pixels * resolution_factor) + 1`` (65 for a
            64-pixel box, the CryoLike default of 4 shells per pixel of radius).
        n_inplanes
            Angles per shell ``W`` (even); default ``2 * n_pixels``.
        quadrature
            ``"gauss-jacobi"`` (weight ``r``, default) or ``"gauss-legendre"``.
        """
        if n_pixels < 4:
            raise InputError(f"n_pixels must be >= 4, got {n_pixels}")
        if pixel_size <= 0:
            raise InputError(f"pixel_size must be positive (Å/pixel), got {pixel_size}")
        if not 0 < resolution_factor <= 2:
            raise InputError(f"resolution_factor must be in (0, 2], got {resolution_factor}")
        if n_shells is None:
            n_shells = round(n_pixels * resolution_factor) + 1
        if n_inplanes is None:
            n_inplanes = 2 * n_pixels
        if n_shells < 1:
            raise InputError(f"n_shells must be >= 1, got {n_shells}")
        if n_inplanes < 4 or n_inplanes % 2:
            raise InputError(
                f"n_inplanes must be even and >= 4 (real images need θ and θ+π), got {n_inplanes}"
            )
        r_max = 0.5 * resolution_factor
        if quadrature == "gauss-jacobi":
            x, w = roots_jacobi(n_shells, 0.0, 1.0)
            radii = (x + 1.0) * r_max / 2.0
            weights = w * (r_max / 2.0) ** 2
        elif quadrature == "gauss-legendre":
            x, w = roots_legendre(n_shells)
            radii = (x + 1.0) * r_max / 2.0
            weights = w * (r_max / 2.0) * radii
        else:
            raise InputError(
                f"unknown quadrature {quadrature!r}: use 'gauss-jacobi' or 'gauss-legendre'"
            )
        return cls(
            n_pixels=int(n_pixels),
            pixel_size=float(pixel_size),
            resolution_factor=float(resolution_factor),
            quadrature=quadrature,
            radii=np.asarray(radii, dtype=np.float64),
            shell_weights=np.asarray(weights, dtype=np.float64),
            n_inplanes=int(n_inplanes),
        )

    # ------------------------------------------------------------------ derived quantities
    @property
    def n_shells(self) -> int:
        return int(self.radii.shape[0])

    @property
    def radius_max(self) -> float:
        """Outer radius of the integration disc, cycles/pixel."""
        return 0.5 * self.resolution_factor

    @property
    def angles(self) -> np.ndarray:
        """`(W,)` angles ``2π j / W`` in radians."""
        return 2.0 * np.pi * np.arange(self.n_inplanes) / self.n_inplanes

    @property
    def point_weights(self) -> np.ndarray:
        """`(n_shells,)` weight of every point of a shell: ``w_n · 2π / W``."""
        return self.shell_weights * (2.0 * np.pi / self.n_inplanes)

    @property
    def n_points(self) -> int:
        return self.n_shells * self.n_inplanes

    def points(self, *, half: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Cartesian frequencies ``(kx, ky)``, each `(n_shells, W)` (or `(n_shells, W/2)`).

        ``half=True`` returns the angles ``θ_j < π`` only (the rest follow by ``k -> -k``).
        """
        a = self.angles
        if half:
            a = a[: self.n_inplanes // 2]
        kx = self.radii[:, None] * np.cos(a)[None, :]
        ky = self.radii[:, None] * np.sin(a)[None, :]
        return kx, ky

    def compatible(self, other: PolarGrid) -> bool:
        """Same pixels, pixel size, shells and angles (within float tolerance)."""
        return (
            self.n_pixels == other.n_pixels
            and self.n_inplanes == other.n_inplanes
            and self.n_shells == other.n_shells
            and math.isclose(self.pixel_size, other.pixel_size, rel_tol=1e-6)
            and np.allclose(self.radii, other.radii, rtol=1e-9, atol=0)
        )

    def integrate(self, values: torch.Tensor) -> torch.Tensor:
        """``Σ ω f`` over the last two axes `(..., n_shells, W)` (real or complex)."""
        w = torch.as_tensor(self.point_weights, device=values.device)
        w = w.to(values.real.dtype)
        return (values * w[:, None]).sum(dim=(-2, -1))

    def to_dict(self) -> dict:
        return {
            "n_pixels": self.n_pixels,
            "pixel_size": self.pixel_size,
            "resolution_factor": self.resolution_factor,
            "n_shells": self.n_shells,
            "n_inplanes": self.n_inplanes,
            "quadrature": self.quadrature,
        }

    @classmethod
    def from_dict(cls, d: dict) -> PolarGrid:
        return cls.create(
            int(d["n_pixels"]),
            float(d["pixel_size"]),
            resolution_factor=float(d["resolution_factor"]),
            n_shells=int(d["n_shells"]),
            n_inplanes=int(d["n_inplanes"]),
            quadrature=d["quadrature"],
        )


# ---------------------------------------------------------------------- displacements
def displacement_grid(
    max_displacement_pixels: float = 8.0,
    n_displacements_x: int = 1,
    n_displacements_y: int = 1,
    *,
    pixel_size: float = 1.0,
) -> np.ndarray:
    """Rectangular grid of image-frame displacements, `(D, 2)` ``(x, y)`` in Å.

    ``linspace(-M, M, n_x) × linspace(-M, M, n_y)`` with ``M = max_displacement_pixels ·
    pixel_size``; a count of 1 gives 0 on that axis. As in CryoLike, ``(0, 0)`` is appended when
    it is not on the grid (an even count). Order: x fastest.
    """
    if n_displacements_x < 1 or n_displacements_y < 1:
        raise InputError(
            f"n_displacements_x/y must be >= 1, got {n_displacements_x}, {n_displacements_y}"
        )
    if max_displacement_pixels < 0:
        raise InputError(f"max_displacement_pixels must be >= 0, got {max_displacement_pixels}")
    m = max_displacement_pixels * pixel_size
    xs = np.linspace(-m, m, n_displacements_x) if n_displacements_x > 1 else np.zeros(1)
    ys = np.linspace(-m, m, n_displacements_y) if n_displacements_y > 1 else np.zeros(1)
    gy, gx = np.meshgrid(ys, xs, indexing="ij")
    d = np.stack([gx.ravel(), gy.ravel()], axis=1)
    if not np.any(np.all(np.abs(d) < 1e-12 * max(m, 1.0), axis=1)):
        d = np.concatenate([d, np.zeros((1, 2))], axis=0)
    return d


# ---------------------------------------------------------------------- viewing directions
def euler_zyz_to_matrix(euler_deg: torch.Tensor | np.ndarray) -> torch.Tensor:
    """ZYZ Euler ``(phi, theta, psi)`` (degrees) -> float64 ``R`` `(..., 3, 3)`, core convention.

    Thin wrapper of :func:`corrscan.core.rotations.euler_to_matrix`
    (``R = Rz(phi) Ry(theta) Rz(psi)``; the projection at these angles is the map sampled at
    ``R r`` projected along z, so its 2D transform is the 3D transform at ``R (k_x, k_y, 0)``).
    """
    from corrscan.core.rotations import euler_to_matrix

    return euler_to_matrix(torch.as_tensor(np.asarray(euler_deg), dtype=torch.float64))


@dataclass(frozen=True)
class ViewingGrid:
    """Viewing directions (templates) with quadrature weights.

    Attributes
    ----------
    euler
        `(S, 3)` ZYZ Euler angles in degrees ``(phi, theta, psi = 0)`` (core/RELION convention:
        ``(phi, theta)`` are the azimuth and polar angle of the projection direction
        ``R ẑ`` in the structure's frame).
    weights
        `(S,)` positive quadrature weights (sum 4π for the sphere grids, 1 for explicit lists);
        the integrated likelihood uses ``ln(w_s / Σ w)`` as log-prior.
    """

    euler: np.ndarray
    weights: np.ndarray

    def __len__(self) -> int:
        return int(self.euler.shape[0])


def viewing_grid_gauss_legendre(viewing_distance: float = 1.0 / (4.0 * np.pi)) -> ViewingGrid:
    """CryoLike's sphere grid: Gauss–Legendre in ``cos(theta)``, uniform azimuth per ring.

    ``n_polar = 3 + ceil((3 + round(2π/dist)) / 2)``; per ring ``n_azimuth = 3 +
    round(2π sin(theta) / dist)``; weight = GL weight × Δazimuth (sum 4π). ``dist`` is the
    angular spacing in radians / 2π units as in CryoLike (default ``1/(4π)`` -> 2,370 views).
    """
    if viewing_distance <= 0:
        raise InputError(f"viewing_distance must be positive, got {viewing_distance}")
    n_polar = 3 + math.ceil((3 + round(2 * np.pi / viewing_distance)) / 2)
    x, w = roots_legendre(n_polar)
    eul, wts = [], []
    for xi, wi in zip(x, w, strict=True):
        theta = np.arccos(xi)
        n_az = 3 + round(2 * np.pi * np.sin(theta) / viewing_distance)
        az = 2 * np.pi * np.arange(n_az) / n_az
        eul.append(np.stack([np.rad2deg(az), np.full(n_az, np.rad2deg(theta)), np.zeros(n_az)], 1))
        wts.append(np.full(n_az, wi * 2 * np.pi / n_az))
    return ViewingGrid(np.concatenate(eul), np.concatenate(wts))


def viewing_grid_fibonacci(n: int) -> ViewingGrid:
    """``n`` near-uniform directions on the sphere (Fibonacci lattice), equal weights 4π/n."""
    if n < 1:
        raise InputError(f"number of viewing directions must be >= 1, got {n}")
    i = np.arange(n) + 0.5
    z = 1 - 2 * i / n
    theta = np.rad2deg(np.arccos(z))
    phi = np.rad2deg(np.mod(np.pi * (1 + 5**0.5) * i, 2 * np.pi))
    return ViewingGrid(np.stack([phi, theta, np.zeros(n)], 1), np.full(n, 4 * np.pi / n))


def viewing_grid_from_angles(
    euler_deg: np.ndarray, weights: np.ndarray | None = None
) -> ViewingGrid:
    """Explicit `(S, 2)` ``(phi, theta)`` or `(S, 3)` Euler angles (degrees), weights 1/S."""
    e = np.asarray(euler_deg, dtype=np.float64)
    if e.ndim != 2 or e.shape[1] not in (2, 3):
        raise InputError(f"viewing angles must be (S, 2) or (S, 3) degrees, got {e.shape}")
    if e.shape[1] == 2:
        e = np.concatenate([e, np.zeros((e.shape[0], 1))], 1)
    w = np.full(e.shape[0], 1.0 / e.shape[0]) if weights is None else np.asarray(weights, float)
    if w.shape != (e.shape[0],) or np.any(w <= 0):
        raise InputError("viewing weights must be positive, one per direction")
    return ViewingGrid(e, w)

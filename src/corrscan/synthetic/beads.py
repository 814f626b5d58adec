"""Bead images for magnetic-tweezers tracking, with planted x, y, z.

Optics model (scalar angular spectrum of a refracting, optionally absorbing sphere; the same
physical model as MagTrack's simulator, written from its description):

1. A square grid of ``size_px`` pixels of ``nm_per_px`` nm, padded with unit transmission to
   ``n_pad = ceil(pad_factor * size_px)`` (rounded up to even) to limit wrap-around.
2. Projected thickness of a sphere of radius ``a`` at lateral distance ``R`` from its centre:
   ``t(R) = 2 sqrt(a^2 - R^2)`` for ``R <= a``, else 0.
3. Transmission ``T = exp(-absorption_per_nm * t) * exp(i 2 pi (n_sphere - n_medium) t / lambda)``.
4. Angular-spectrum propagation over ``z`` nm in the medium: ``k = 2 pi n_medium / lambda``,
   ``k_z = sqrt(max(k^2 - (2 pi f)^2, 0))``, propagator ``exp(i z k_z)``; objective pupil = hard
   disc ``|f| <= na / lambda``; camera pixel MTF ``sinc(dx f_x) sinc(dx f_y)``; the lateral
   position enters as the phase ramp ``exp(-2 pi i (f_x x + f_y y))`` (exact sub-pixel shift).
5. Intensity ``|E|^2`` cropped to the central ``size_px`` square, normalised by the mean of the
   top-left ``max(size_px // 16, 1)`` square corner ``bg``:
   ``I = background_level * (1 + contrast_scale * (|E|^2 / bg - 1))``, clipped to ``[0, 1]``
   when ``clip`` (an 8-bit-like camera that saturates in focus).
6. Optional shot noise: ``Poisson(photons * I) / photons`` (or the counts themselves with
   ``as_counts=True``, as ``uint16`` camera frames), plus Gaussian read noise in photons.

Conventions: images are ``(n, size_px, size_px)`` in (y, x) order; x is the column index. A
bead with planted offset ``(dx, dy)`` nm is centred at pixel ``(size_px // 2 + dx / nm_per_px,
size_px // 2 + dy / nm_per_px)`` (x, y), origin at the first pixel's centre. ``z`` is the
propagation distance from the bead's mid-plane to the focal plane in nm (positive and
negative z give different images).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from corrscan.core.arrays import to_like, to_tensor
from corrscan.errors import InputError

__all__ = ["simulate_beads", "simulate_focus_sweep"]


def _bead_transmission_ft(
    n_pad: int,
    centre: int,
    nm_per_px: float,
    radius_nm: float,
    wavelength_nm: float,
    n_sphere: float,
    n_medium: float,
    absorption_per_nm: float,
) -> torch.Tensor:
    """2-D FFT of the sphere's transmission on the padded grid, ``(n_pad, n_pad)`` complex128."""
    idx = torch.arange(n_pad, dtype=torch.float64)
    r2 = ((idx[:, None] - centre) ** 2 + (idx[None, :] - centre) ** 2) * nm_per_px**2
    t = 2.0 * torch.sqrt(torch.clamp(radius_nm**2 - r2, min=0.0))
    phase = 2.0 * math.pi * (n_sphere - n_medium) * t / wavelength_nm
    amp = torch.exp(-absorption_per_nm * t)
    trans = torch.polar(amp, phase)
    return torch.fft.fft2(trans)


def simulate_beads(
    xyz_nm: Any,
    *,
    nm_per_px: float = 100.0,
    size_px: int = 64,
    radius_nm: float = 1500.0,
    wavelength_nm: float = 550.0,
    n_sphere: float = 1.59,
    n_medium: float = 1.33,
    absorption_per_nm: float = 0.0,
    background_level: float = 0.4,
    contrast_scale: float = 1.0,
    pad_factor: float = 2.0,
    na: float = 1.3,
    clip: bool = True,
    photons: float | None = None,
    read_noise: float = 0.0,
    as_counts: bool = False,
    seed: int | None = 0,
    chunk: int = 256,
) -> tuple[Any, dict[str, Any]]:
    """Simulate one bead image per row of ``xyz_nm`` (see the module docstring for the optics).

    Parameters
    ----------
    xyz_nm
        `(n, 3)` planted offsets ``(dx, dy, z)`` in nm: lateral offsets from the ROI centre
        pixel ``size_px // 2`` and the focus distance. NumPy, CuPy or torch.
    nm_per_px, size_px
        Pixel size (nm) and ROI width (pixels).
    radius_nm, wavelength_nm, n_sphere, n_medium, absorption_per_nm
        Bead radius, illumination wavelength (vacuum), refractive indices, absorption (1/nm).
    background_level, contrast_scale
        Output background level and contrast gain.
    pad_factor
        Padding of the propagation grid relative to ``size_px``.
    na
        Numerical aperture of the objective pupil (hard disc; MagTrack hard-codes 1.3).
    clip
        Clip intensities to ``[0, 1]`` (saturating camera).
    photons
        Expected photons per pixel at intensity 1; ``None`` means noise-free.
    read_noise
        Gaussian read noise, standard deviation in photons (needs ``photons``).
    as_counts
        Return photon counts as ``uint16`` frames (needs ``photons``) instead of intensities.
    seed
        Seed of the noise generator.
    chunk
        Beads propagated per FFT batch (memory: ``chunk * n_pad^2 * 16`` bytes).

    Returns
    -------
    stack
        `(n, size_px, size_px)` float64 images (``uint16`` counts with ``as_counts``), the same
        array kind as ``xyz_nm``.
    truth
        ``x_px``, ``y_px`` `(n,)` planted centres in pixels (column, row), ``z_nm`` `(n,)`,
        ``x_nm``, ``y_nm`` (centre positions in nm from pixel 0) and the optics parameters.
    """
    xyz = to_tensor(xyz_nm, dtype=torch.float64, name="xyz_nm")
    if xyz.ndim == 1 and xyz.shape[0] == 3:
        xyz = xyz[None]
    if xyz.ndim != 2 or xyz.shape[1] != 3:
        raise InputError(
            f"xyz_nm must have shape (n, 3) = (dx, dy, z) in nm, got {tuple(xyz.shape)}"
        )
    if not bool(torch.isfinite(xyz).all()):
        raise InputError("xyz_nm contains NaN or Inf: give finite planted positions")
    if size_px < 4 or nm_per_px <= 0 or radius_nm <= 0 or wavelength_nm <= 0:
        raise InputError("size_px >= 4 and positive nm_per_px, radius_nm, wavelength_nm required")
    if (as_counts or read_noise) and photons is None:
        raise InputError("as_counts and read_noise need photons (expected photons at I = 1)")
    device = xyz.device
    xyz_cpu = xyz.detach().cpu()
    n = xyz_cpu.shape[0]

    n_pad = math.ceil(pad_factor * size_px)
    n_pad += n_pad % 2
    n_pad = max(n_pad, size_px)
    off = (n_pad - size_px) // 2
    centre = off + size_px // 2
    trans_ft = _bead_transmission_ft(
        n_pad, centre, nm_per_px, radius_nm, wavelength_nm, n_sphere, n_medium, absorption_per_nm
    )
    f = torch.fft.fftfreq(n_pad, d=nm_per_px, dtype=torch.float64)  # cycles / nm
    fy, fx = f[:, None], f[None, :]
    f2 = fx**2 + fy**2
    k = 2.0 * math.pi * n_medium / wavelength_nm
    kz = torch.sqrt(torch.clamp(k**2 - (2.0 * math.pi) ** 2 * f2, min=0.0))
    pupil = (f2 <= (na / wavelength_nm) ** 2).to(torch.float64)
    pupil = pupil * torch.sinc(nm_per_px * fx) * torch.sinc(nm_per_px * fy)
    base = trans_ft * pupil

    corner = max(size_px // 16, 1)
    out = torch.empty((n, size_px, size_px), dtype=torch.float64)
    for start in range(0, n, max(int(chunk), 1)):  # chunks of beads, each chunk one batched FFT
        p = xyz_cpu[start : start + chunk]
        dx, dy, z = p[:, 0, None, None], p[:, 1, None, None], p[:, 2, None, None]
        phase = z * kz - 2.0 * math.pi * (fx * dx + fy * dy)
        field = torch.fft.ifft2(base * torch.polar(torch.ones_like(phase), phase))
        inten = field.real**2 + field.imag**2
        inten = inten[:, off : off + size_px, off : off + size_px]
        bg = inten[:, :corner, :corner].mean(dim=(-2, -1), keepdim=True)
        img = background_level * (1.0 + contrast_scale * (inten / bg - 1.0))
        if clip:
            img = img.clamp(0.0, 1.0)
        out[start : start + chunk] = img

    if photons is not None:
        gen = torch.Generator().manual_seed(0 if seed is None else int(seed))
        counts = torch.poisson(out.clamp(min=0.0) * photons, generator=gen)
        if read_noise:
            counts = counts + read_noise * torch.randn(
                counts.shape, generator=gen, dtype=torch.float64
            )
        if as_counts:
            out = counts.round().clamp(0, 65535).to(torch.int32)
        else:
            out = counts / photons

    x_px = size_px // 2 + xyz_cpu[:, 0] / nm_per_px
    y_px = size_px // 2 + xyz_cpu[:, 1] / nm_per_px
    truth = {
        "x_px": x_px.numpy(),
        "y_px": y_px.numpy(),
        "z_nm": xyz_cpu[:, 2].numpy().copy(),
        "x_nm": (x_px * nm_per_px).numpy(),
        "y_nm": (y_px * nm_per_px).numpy(),
        "nm_per_px": nm_per_px,
        "size_px": size_px,
        "radius_nm": radius_nm,
        "wavelength_nm": wavelength_nm,
        "n_sphere": n_sphere,
        "n_medium": n_medium,
        "na": na,
        "photons": photons,
    }
    result = out.to(device)
    if as_counts:
        arr = to_like(result, xyz_nm) if not isinstance(xyz_nm, (list, tuple)) else result.numpy()
        if isinstance(arr, np.ndarray):
            return arr.astype(np.uint16), truth
        if isinstance(arr, torch.Tensor):
            return arr.to(torch.uint16), truth
        return arr.astype("uint16"), truth
    if isinstance(xyz_nm, (list, tuple)):
        return result.numpy(), truth
    return to_like(result, xyz_nm), truth


def simulate_focus_sweep(
    z_nm: Any,
    *,
    xy_jitter_px: float = 0.0,
    frames_per_plane: int = 1,
    seed: int | None = 0,
    **simulate_kwargs: Any,
) -> tuple[Any, dict[str, Any]]:
    """A focus sweep of one bead for building a Z look-up table.

    Parameters
    ----------
    z_nm
        `(n_planes,)` stage positions (focus distances) in nm.
    xy_jitter_px
        Standard deviation of a random lateral bead position per frame, in pixels (0: the bead
        sits on the centre pixel ``size_px // 2``).
    frames_per_plane
        Frames recorded at each stage position (one after another).
    seed
        Seed of the jitter and of the noise.
    **simulate_kwargs
        Passed to :func:`simulate_beads` (optics, noise, ``size_px``, ``nm_per_px``...).

    Returns
    -------
    stack
        `(n_planes * frames_per_plane, size_px, size_px)`, the same kind as ``z_nm``.
    truth
        As :func:`simulate_beads`, plus ``z_stage_nm`` `(n_frames,)`.
    """
    z = to_tensor(z_nm, dtype=torch.float64, name="z_nm").detach().cpu().reshape(-1)
    nm_per_px = float(simulate_kwargs.get("nm_per_px", 100.0))
    zz = z.repeat_interleave(int(frames_per_plane))
    gen = torch.Generator().manual_seed(0 if seed is None else int(seed) + 1)
    xy = (
        xy_jitter_px * nm_per_px * torch.randn((zz.shape[0], 2), generator=gen, dtype=torch.float64)
    )
    xyz = torch.cat([xy, zz[:, None]], dim=1)
    if isinstance(z_nm, (np.ndarray, list, tuple)):
        xyz_in: Any = xyz.numpy()
    else:
        xyz_in = to_like(xyz, z_nm)
    stack, truth = simulate_beads(xyz_in, seed=seed, **simulate_kwargs)
    truth["z_stage_nm"] = zz.numpy()
    return stack, truth

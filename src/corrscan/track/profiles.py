"""Radial intensity profiles of bead images at sub-pixel centres.

The radial profile is the azimuthal mean of the image on circles of radius
``rho_b = b / oversample`` pixels around the centre ``(x, y)``, ``b = 0 ... n_bins - 1``. Each
circle is sampled at about ``samples_per_px`` points per pixel of arc (at least 8; one point
for ``rho = 0``), with the angles of successive circles offset by the golden angle so that the
samples do not line up with the pixel grid.

Sub-pixel centres: each image is first moved by the fractional part of its centre with an
exact Fourier (phase-ramp) shift, so that the bead sits on the pixel ``(round(x), round(y))``;
the circles are then sampled by bilinear interpolation around that pixel. The sample
geometry, and so the small smoothing of bilinear interpolation, is then the same for every
bead and for the Z-LUT, whatever the sub-pixel position: z does not depend on it (a
nearest-bin histogram, as in MagTrack, jumps when the centre crosses a pixel boundary; plain
bilinear sampling at the sub-pixel centre smooths fine rings differently per phase).
``fourier_shift=False`` samples at the sub-pixel centre directly (no FFT).

Samples that fall outside the image are left out; ``counts`` gives the number of samples
kept per circle (the statistical weight of that bin; 0 means the bin is NaN).
"""

from __future__ import annotations

import functools
import math
from typing import Any

import torch
import torch.nn.functional as F

from corrscan.core.arrays import unwrap
from corrscan.errors import InputError

__all__ = ["fft_profile", "polar_plan", "radial_profile"]

_GOLDEN_ANGLE = math.pi * (3.0 - math.sqrt(5.0))


@functools.lru_cache(maxsize=32)
def _plan_cpu(
    n_bins: int, oversample: int, samples_per_px: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    offs_x, offs_y, ring = [], [], []
    for b in range(n_bins):  # plan built once per geometry (cached), not per image
        rho = b / oversample
        n_theta = 1 if b == 0 else max(8, math.ceil(2.0 * math.pi * rho * samples_per_px))
        theta = torch.arange(n_theta, dtype=torch.float64) * (2.0 * math.pi / n_theta)
        theta = theta + b * _GOLDEN_ANGLE
        offs_x.append(rho * torch.cos(theta))
        offs_y.append(rho * torch.sin(theta))
        ring.append(torch.full((n_theta,), b, dtype=torch.int64))
    dx = torch.cat(offs_x)
    dy = torch.cat(offs_y)
    rid = torch.cat(ring)
    member = torch.zeros((dx.shape[0], n_bins), dtype=torch.float64)
    member[torch.arange(dx.shape[0]), rid] = 1.0
    return dx, dy, member


def polar_plan(
    n_bins: int,
    oversample: int = 1,
    samples_per_px: float = 1.0,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sample offsets of the radial profile: ``dx``, ``dy`` `(S,)` px, ``member`` `(S, n_bins)`."""
    dx, dy, member = _plan_cpu(int(n_bins), int(oversample), float(samples_per_px))
    return (
        dx.to(device=device, dtype=dtype),
        dy.to(device=device, dtype=dtype),
        member.to(device=device, dtype=dtype),
    )


def radial_kernel(
    img: torch.Tensor,
    x: torch.Tensor,
    y: torch.Tensor,
    n_bins: int,
    oversample: int = 1,
    samples_per_px: float = 1.0,
    return_score: bool = False,
    fourier_shift: bool = True,
) -> Any:
    """Radial profiles (torch only): ``img`` `(n, H, W)`, ``x``, ``y`` `(n,)` finite.

    Returns ``profile`` and ``counts``, both `(n, n_bins)`; empty bins are NaN with count 0.
    ``counts`` is the in-image weight of each circle's samples (a sample's bilinear corners
    inside the image; 1 per sample away from the border). With ``return_score`` also the
    radial-symmetry score `(n,)`: ``1 - (within-ring sum of squares) / (total sum of
    squares)`` of the samples, 1 for a perfectly radially symmetric image about ``(x, y)``,
    near 0 for a wrong centre or no bead.
    """
    n, h, w = img.shape
    dx, dy, member = polar_plan(
        n_bins, oversample, samples_per_px, device=img.device, dtype=img.dtype
    )
    if fourier_shift:
        xi, yi = torch.round(x), torch.round(y)
        fx, fy = x - xi, y - yi
        if bool(((fx != 0) | (fy != 0)).any()):
            spec = torch.fft.rfft2(img)
            ky = torch.fft.fftfreq(h, device=img.device, dtype=img.dtype)
            kx = torch.fft.rfftfreq(w, device=img.device, dtype=img.dtype)
            ph_y = (2.0 * math.pi) * ky[None, :] * fy[:, None]  # (n, H): separable ramp
            ph_x = (2.0 * math.pi) * kx[None, :] * fx[:, None]  # (n, W // 2 + 1)
            ramp_y = torch.polar(torch.ones_like(ph_y), ph_y)[:, :, None]
            ramp_x = torch.polar(torch.ones_like(ph_x), ph_x)[:, None, :]
            img = torch.fft.irfft2(spec * ramp_y * ramp_x, s=(h, w))
        x, y = xi, yi
    # normalised grid_sample coordinates (align_corners=True): -1 at pixel 0, +1 at pixel W-1
    sx, sy = 2.0 / max(w - 1, 1), 2.0 / max(h - 1, 1)
    base = torch.stack([dx * sx, dy * sy], dim=-1)  # (S, 2)
    centre = torch.stack([x * sx - 1.0, y * sy - 1.0], dim=-1)  # (n, 2)
    grid = (centre[:, None, :] + base)[:, None]  # (n, 1, S, 2)
    # zero padding: each sample = (in-image bilinear weight) x value
    sv = F.grid_sample(
        img[:, None], grid, mode="bilinear", padding_mode="zeros", align_corners=True
    )
    sv = sv.reshape(n, -1)  # (n, S)
    num = sv @ member
    counts = member.sum(0).expand(n, -1).clone()
    r_max = float(dx.abs().max()), float(dy.abs().max())
    cut = (x - r_max[0] < 0) | (x + r_max[0] > w - 1) | (y - r_max[1] < 0) | (y + r_max[1] > h - 1)
    if bool(cut.any()):  # circles leaving the image: in-image weight of each sample (separable)
        idx = torch.nonzero(cut).squeeze(1)
        centres = torch.stack([x[idx], y[idx]], dim=1)
        if fourier_shift:  # integer centres: one weight row per distinct centre
            centres, inverse = torch.unique(centres, dim=0, return_inverse=True)
        px = centres[:, :1] + dx
        py = centres[:, 1:] + dy
        wx = (1.0 - torch.relu(-px) - torch.relu(px - (w - 1))).clamp(0.0, 1.0)
        wy = (1.0 - torch.relu(-py) - torch.relu(py - (h - 1))).clamp(0.0, 1.0)
        table = (wx * wy) @ member
        counts[idx] = table[inverse] if fourier_shift else table
    profile = num / counts  # 0/0 -> NaN for empty bins
    if not return_score:
        return profile, counts
    ss_rings = (sv * sv) @ member  # (n, B); sv^2 ~ weight * value^2 (weights are ~0/1)
    within = (ss_rings - torch.nan_to_num(num * profile)).sum(-1)
    n_s = counts.sum(-1)
    total = ss_rings.sum(-1) - num.sum(-1) ** 2 / n_s
    score = 1.0 - within / total
    return profile, counts, score


def radial_profile(
    stack: Any,
    x: Any,
    y: Any,
    *,
    n_bins: int | None = None,
    oversample: int = 1,
    samples_per_px: float = 1.0,
    return_counts: bool = False,
    fourier_shift: bool = True,
) -> Any:
    """Azimuthally averaged intensity around sub-pixel centres (see the module docstring).

    Parameters
    ----------
    stack
        `(..., H, W)` images (float or integer; not modified).
    x, y
        `(...)` centres in pixels (x = column, y = row). Non-finite centres give NaN profiles.
    n_bins
        Number of radii; default ``(min(H, W) // 2) * oversample``.
    oversample
        Radii per pixel (bin ``b`` is at radius ``b / oversample`` px).
    samples_per_px
        Angular samples per pixel of arc length.
    return_counts
        Also return the samples kept per bin.
    fourier_shift
        Move each image by the fractional part of its centre (exact phase-ramp shift) and
        sample around the nearest pixel (default); ``False`` samples at the sub-pixel centre.

    Returns
    -------
    profile
        `(..., n_bins)` in the image's units (float32 for integer input).
    counts
        `(..., n_bins)` (only with ``return_counts``).
    """
    t, restore = unwrap(stack, name="stack")
    if t.ndim < 2:
        raise InputError(f"stack must be images (..., H, W), got shape {tuple(t.shape)}")
    if not t.is_floating_point():
        t = t.to(torch.float32)
    h, w = t.shape[-2:]
    lead = t.shape[:-2]
    if oversample < 1:
        raise InputError(f"oversample must be a positive integer, got {oversample}")
    nb = int(n_bins) if n_bins is not None else (min(h, w) // 2) * int(oversample)
    if nb < 1:
        raise InputError(f"n_bins must be >= 1, got {nb}")
    img = t.reshape(-1, h, w)
    xt = unwrap(x, name="x")[0].to(img).reshape(-1).expand(img.shape[0])
    yt = unwrap(y, name="y")[0].to(img).reshape(-1).expand(img.shape[0])
    good = torch.isfinite(xt) & torch.isfinite(yt)
    xs = torch.where(good, xt, torch.zeros_like(xt))
    ys = torch.where(good, yt, torch.zeros_like(yt))
    prof, counts = radial_kernel(
        img, xs, ys, nb, int(oversample), samples_per_px, fourier_shift=fourier_shift
    )
    prof = torch.where(good[:, None], prof, torch.full_like(prof, float("nan")))
    counts = torch.where(good[:, None], counts, torch.zeros_like(counts))
    prof = prof.reshape(*lead, nb)
    if return_counts:
        return restore(prof), restore(counts.reshape(*lead, nb))
    return restore(prof)


def fft_profile(
    stack: Any, *, n_bins: int | None = None, rmin: float = 0.0, rmax: float = 1.0
) -> Any:
    """Translation-invariant profile: radial mean of ``|FFT|`` of each image.

    Parameters
    ----------
    stack
        `(..., H, W)` images (not modified).
    n_bins
        Number of frequency bins between ``rmin`` and ``rmax`` (default ``min(H, W) // 2``).
    rmin, rmax
        Frequency range as fractions of Nyquist (0.5 cycles/px); ``rmax = 1`` reaches Nyquist.

    Returns
    -------
    profile
        `(..., n_bins)`: mean ``|F|`` in rings of equal width (nearest ring; empty -> NaN).
    """
    t, restore = unwrap(stack, name="stack")
    if not t.is_floating_point():
        t = t.to(torch.float32)
    h, w = t.shape[-2:]
    lead = t.shape[:-2]
    nb = int(n_bins) if n_bins is not None else min(h, w) // 2
    if not 0.0 <= rmin < rmax:
        raise InputError(f"need 0 <= rmin < rmax (fractions of Nyquist), got {rmin}, {rmax}")
    mag = torch.fft.rfft2(t.reshape(-1, h, w)).abs()
    fy = torch.fft.fftfreq(h, device=t.device, dtype=t.dtype)
    fx = torch.fft.rfftfreq(w, device=t.device, dtype=t.dtype)
    fr = torch.sqrt(fy[:, None] ** 2 + fx[None, :] ** 2) / 0.5  # fraction of Nyquist
    pos = (fr - rmin) / (rmax - rmin) * nb
    idx = torch.floor(pos).long()
    inside = (idx >= 0) & (idx < nb)
    member = torch.zeros((idx.numel(), nb), dtype=t.dtype, device=t.device)
    sel = torch.nonzero(inside.reshape(-1)).squeeze(1)
    member[sel, idx.reshape(-1)[sel]] = 1.0
    num = mag.reshape(mag.shape[0], -1) @ member
    cnt = member.sum(0)
    prof = num / cnt
    return restore(prof.reshape(*lead, nb))

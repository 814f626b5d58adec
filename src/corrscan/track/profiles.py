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


@functools.lru_cache(maxsize=32)
def _dense_plan_cpu(
    h: int, w: int, n_bins: int, oversample: int, samples_per_px: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Bilinear sampling of the circles around pixel ``(w // 2, h // 2)`` as one matrix.

    Returns ``ring`` `(H * W, n_bins)` (each column: the summed bilinear weights of that
    circle's samples; samples' corners outside the image are dropped, as zero padding),
    ``disc`` `(H * W,)` (1 for pixels within the outermost circle) and ``interp``
    `(n_bins, H * W)` (linear interpolation of a profile at each pixel's radius).
    """
    dx, dy, member = _plan_cpu(n_bins, oversample, samples_per_px)
    px = w // 2 + dx
    py = h // 2 + dy
    x0, y0 = torch.floor(px), torch.floor(py)
    fx, fy = px - x0, py - y0
    ring = torch.zeros((h * w, n_bins), dtype=torch.float64)
    rid = member.argmax(dim=1)
    for oy, ox, wt in (  # the four bilinear corners (fixed count)
        (0, 0, (1 - fx) * (1 - fy)),
        (0, 1, fx * (1 - fy)),
        (1, 0, (1 - fx) * fy),
        (1, 1, fx * fy),
    ):
        yy = (y0 + oy).long()
        xx = (x0 + ox).long()
        ok = (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)
        ring.index_put_((yy[ok] * w + xx[ok], rid[ok]), wt[ok], accumulate=True)
    rows, cols = torch.meshgrid(
        torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij"
    )
    r = torch.sqrt((rows - h // 2) ** 2 + (cols - w // 2) ** 2).reshape(-1) * oversample
    disc = (r <= n_bins - 1).to(torch.float64)
    lo = torch.clamp(torch.floor(r), max=n_bins - 2).long()
    frac = (r - lo).clamp(0.0, 1.0)
    interp = torch.zeros((n_bins, h * w), dtype=torch.float64)
    pix = torch.arange(h * w)
    interp[lo, pix] = (1.0 - frac) * disc
    interp[lo + 1, pix] += frac * disc
    return ring, disc, interp


def _score_samples(
    profile: torch.Tensor,
    counts: torch.Tensor,
    s0: torch.Tensor,
    s1: torch.Tensor,
    s2: torch.Tensor,
) -> torch.Tensor:
    """Share of the sample variance explained by the ring means (grid_sample path)."""
    mean = s1 / s0
    total = s2 - s1 * mean
    explained = (counts * (torch.nan_to_num(profile - mean[:, None]) ** 2)).sum(-1)
    return explained / total


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
    radial-symmetry score `(n,)`: the share of the pixel variance inside the outermost circle
    explained by the radial profile, ~1 for a radially symmetric image about ``(x, y)``, near
    0 for a wrong centre or no bead.

    With ``fourier_shift`` (default) each image is moved by a phase ramp so that the centre
    lands on pixel ``(W // 2, H // 2)`` (integer part: a circular shift whose wrapped pixels
    are masked out; fractional part: exact band-limited shift), then all profiles are one
    matrix product with the fixed sampling matrix of that pixel. Without it, the circles are
    sampled at the sub-pixel centre with ``grid_sample``.
    """
    n, h, w = img.shape
    if not fourier_shift:
        return _radial_grid_sample(img, x, y, n_bins, oversample, samples_per_px, return_score)
    plan = _dense_plan_cpu(h, w, int(n_bins), int(oversample), float(samples_per_px))
    ring, disc, interp = (a.to(device=img.device, dtype=img.dtype) for a in plan)
    sx = x - (w // 2)
    sy = y - (h // 2)
    if bool(((sx != 0) | (sy != 0)).any()):
        spec = torch.fft.rfft2(img)
        ky = torch.fft.fftfreq(h, device=img.device, dtype=img.dtype)
        kx = torch.fft.rfftfreq(w, device=img.device, dtype=img.dtype)
        ph_y = (2.0 * math.pi) * ky[None, :] * sy[:, None]  # (n, H): separable ramp
        ph_x = (2.0 * math.pi) * kx[None, :] * sx[:, None]  # (n, W // 2 + 1)
        spec = spec * torch.polar(torch.ones_like(ph_y), ph_y)[:, :, None]
        spec = spec * torch.polar(torch.ones_like(ph_x), ph_x)[:, None, :]
        img = torch.fft.irfft2(spec, s=(h, w))
    ix = torch.round(sx).to(torch.int64)
    iy = torch.round(sy).to(torch.int64)
    flat = img.reshape(n, -1)
    # one weight set per distinct integer shift: valid (not wrapped) pixels of the shift
    shifts, inverse = torch.unique(torch.stack([ix, iy], dim=1), dim=0, return_inverse=True)
    cols = torch.arange(w, device=img.device)
    rows = torch.arange(h, device=img.device)
    mx = ((cols + shifts[:, :1] >= 0) & (cols + shifts[:, :1] <= w - 1)).to(img.dtype)
    my = ((rows + shifts[:, 1:] >= 0) & (rows + shifts[:, 1:] <= h - 1)).to(img.dtype)
    masks = (my[:, :, None] * mx[:, None, :]).reshape(shifts.shape[0], -1)  # (u, H * W)
    wrapped = bool((shifts != 0).any())
    if wrapped:
        flat = flat * masks[inverse]
    counts = (masks @ ring)[inverse]  # (n, B)
    if not return_score:
        return (flat @ ring) / counts, counts  # 0/0 -> NaN for empty bins
    # one product gives the ring sums and the projections on the interpolation rows
    both = flat @ torch.cat([ring, interp.T], dim=1)  # (n, 2B)
    num, proj = both[:, :n_bins], both[:, n_bins:]
    profile = num / counts
    # pixel-space R^2 inside the outermost circle, 1 - sum w (I - P(r))^2 / sum w (I - mean)^2,
    # expanded into sums so that no (n, H * W) model image is formed
    wd = masks * disc  # (u, H * W)
    s0 = (wd.sum(-1))[inverse]
    s1 = flat @ disc
    s2 = (flat * flat) @ disc
    p = torch.nan_to_num(profile)
    gram = torch.einsum("bp,up,cp->ubc", interp, wd, interp)  # (u, B, B)
    model2 = torch.einsum("nb,nbc,nc->n", p, gram[inverse], p)
    within = s2 - 2.0 * (p * proj).sum(-1) + model2
    total = s2 - s1 * s1 / s0
    return profile, counts, 1.0 - within / total


def _radial_grid_sample(
    img: torch.Tensor,
    x: torch.Tensor,
    y: torch.Tensor,
    n_bins: int,
    oversample: int,
    samples_per_px: float,
    return_score: bool,
) -> Any:
    """:func:`radial_kernel` sampling at the sub-pixel centres directly (``grid_sample``)."""
    n, h, w = img.shape
    dx, dy, member = polar_plan(
        n_bins, oversample, samples_per_px, device=img.device, dtype=img.dtype
    )
    # normalised grid_sample coordinates (align_corners=True): -1 at pixel 0, +1 at pixel W-1
    sxn, syn = 2.0 / max(w - 1, 1), 2.0 / max(h - 1, 1)
    base = torch.stack([dx * sxn, dy * syn], dim=-1)  # (S, 2)
    centre = torch.stack([x * sxn - 1.0, y * syn - 1.0], dim=-1)  # (n, 2)
    grid = (centre[:, None, :] + base)[:, None]  # (n, 1, S, 2)
    # zero padding: each sample = (in-image bilinear weight) x value
    sv = F.grid_sample(
        img[:, None], grid, mode="bilinear", padding_mode="zeros", align_corners=True
    ).reshape(n, -1)
    px = x[:, None] + dx
    py = y[:, None] + dy
    wx = (1.0 - torch.relu(-px) - torch.relu(px - (w - 1))).clamp(0.0, 1.0)
    wy = (1.0 - torch.relu(-py) - torch.relu(py - (h - 1))).clamp(0.0, 1.0)
    counts = (wx * wy) @ member
    num = sv @ member
    profile = num / counts
    if not return_score:
        return profile, counts
    n_s = counts.sum(-1)
    s1 = sv.sum(-1)
    s2 = (sv * sv).sum(-1)
    return profile, counts, _score_samples(profile, counts, n_s, s1, s2)


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

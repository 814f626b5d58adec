"""Fourier-space utilities: FFT sizes, padding, shifts, spectra, filters, resampling, correlation.

Conventions
-----------
- Spatial axes are the *last* ``ndim`` axes of an array (``(..., H, W)`` images,
  ``(..., D, H, W)`` volumes); everything before them is a batch and is processed in one
  vectorised call.
- Frequencies are in **cycles/pixel** (Nyquist = 0.5) unless a function takes ``pixel_size``,
  then cycles/Å (``k_Å = k_px / pixel_size``). Grids follow ``torch.fft.fftfreq`` ordering
  (DC first, not fftshifted); ``rfft`` grids have ``W // 2 + 1`` columns on the last axis.
- The centre of an ``N``-long axis is index ``N // 2`` (FFT convention): padding and cropping
  keep that index at the centre.
- Real-space shift sign: a positive shift moves content towards higher indices,
  ``y[r] = x[r - s]``, i.e. the spectrum is multiplied by ``exp(-2πi k·s)``.
- Cross-correlation: ``c[s] = Σ_r image[r + s] · template[r]``.

Every public function accepts NumPy, CuPy or torch arrays and returns the same kind on the
same device (:func:`corrscan.core.arrays.unwrap`). Grid/filter builders that take only a shape
return torch tensors on ``device``. float32 is the default; float64 inputs stay float64
(complex128 for spectra).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any, Literal

import torch

from corrscan.core.arrays import DeviceLike, check_finite, resolve_device, to_tensor, unwrap
from corrscan.errors import InputError

__all__ = [
    "bandpass_filter",
    "crop_to",
    "cross_correlate",
    "fftfreq_grid",
    "fourier_bin",
    "fourier_crop",
    "fourier_crop_rfft",
    "fourier_resample",
    "fourier_shift",
    "frequency_radius",
    "next_fast_len",
    "pad_to",
    "radial_average",
    "radial_power_spectrum",
    "radial_profile_to_grid",
    "rfft_shape",
    "rfftn_padded",
    "shift_image",
    "whitening_filter",
]


# --------------------------------------------------------------------------------------------
# validation helpers
# --------------------------------------------------------------------------------------------
def _as_shape(shape: Any, name: str = "shape") -> tuple[int, ...]:
    if isinstance(shape, int):
        shape = (shape,)
    try:
        out = tuple(int(s) for s in shape)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{name} must be a sequence of positive integers, got {shape!r}") from exc
    if not out or any(s <= 0 for s in out) or any(int(s) != s for s in shape):
        raise InputError(f"{name} must be a non-empty sequence of positive integers, got {shape!r}")
    if len(out) > 3:
        raise InputError(f"{name} must have 1, 2 or 3 spatial dimensions, got {len(out)}: {out}")
    return out


def _check_positive(value: float, name: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{name} must be a positive finite number, got {value!r}") from exc
    if not math.isfinite(v) or v <= 0:
        raise InputError(f"{name} must be a positive finite number, got {value!r}")
    return v


def _infer_ndim(t: torch.Tensor, ndim: int | None, name: str) -> int:
    """Number of spatial dims: ``ndim`` if given, else all dims of an unbatched array."""
    if ndim is None:
        if t.ndim not in (1, 2, 3):
            raise InputError(
                f"{name} has shape {tuple(t.shape)}: with more than 3 dimensions pass ndim=2 "
                "(batch of images) or ndim=3 (batch of volumes)"
            )
        ndim = t.ndim
    if ndim not in (1, 2, 3):
        raise InputError(f"ndim must be 1, 2 or 3, got {ndim!r}")
    if t.ndim < ndim:
        raise InputError(
            f"{name} must have at least {ndim} dimensions (spatial axes last), "
            f"got shape {tuple(t.shape)}"
        )
    if any(s == 0 for s in t.shape):
        raise InputError(f"{name} is empty: shape {tuple(t.shape)}")
    return ndim


def _real_dtype(t: torch.Tensor) -> torch.dtype:
    if t.dtype in (torch.float64, torch.complex128):
        return torch.float64
    return torch.float32


def _to_real(t: torch.Tensor, name: str) -> torch.Tensor:
    if t.is_complex():
        raise InputError(f"{name} must be real-valued, got dtype {t.dtype}")
    if t.dtype not in (torch.float32, torch.float64):
        t = t.to(torch.float32)
    return t


# --------------------------------------------------------------------------------------------
# sizes and grids
# --------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=4096)
def next_fast_len(n: int) -> int:
    """Smallest 2,3,5,7-smooth integer ``>= n`` (fast for cuFFT / pocketfft).

    Parameters
    ----------
    n
        Minimum size, ``>= 1``.
    """
    n = int(n)
    if n < 1:
        raise InputError(f"next_fast_len needs n >= 1, got {n}")
    m = n
    while True:
        r = m
        for p in (2, 3, 5, 7):
            while r % p == 0:
                r //= p
        if r == 1:
            return m
        m += 1


def rfft_shape(shape: Sequence[int]) -> tuple[int, ...]:
    """Shape of the ``rfftn`` of a real array of ``shape``: last axis ``W // 2 + 1``."""
    s = _as_shape(shape)
    return (*s[:-1], s[-1] // 2 + 1)


@functools.lru_cache(maxsize=64)
def _freq_axes_cached(
    shape: tuple[int, ...], rfft: bool, fftshift: bool, device: torch.device, dtype: torch.dtype
) -> tuple[torch.Tensor, ...]:
    axes = []
    for i, n in enumerate(shape):
        if rfft and i == len(shape) - 1:
            f = torch.fft.rfftfreq(n, device=device, dtype=dtype)
        else:
            f = torch.fft.fftfreq(n, device=device, dtype=dtype)
            if fftshift:
                f = torch.fft.fftshift(f)
        axes.append(f)
    return tuple(axes)


def _freq_axes(
    shape: tuple[int, ...],
    *,
    rfft: bool = True,
    fftshift: bool = False,
    device: torch.device | None = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, ...]:
    """Per-axis 1D frequency vectors (cycles/px), cached; read-only."""
    dev = torch.device("cpu") if device is None else torch.device(device)
    return _freq_axes_cached(tuple(shape), bool(rfft), bool(fftshift), dev, dtype)


def fftfreq_grid(
    shape: Sequence[int],
    *,
    rfft: bool = True,
    fftshift: bool = False,
    device: DeviceLike = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Grid of DFT sample frequencies in cycles/pixel.

    Parameters
    ----------
    shape
        Real-space shape ``(H, W)`` or ``(D, H, W)`` (or ``(N,)``).
    rfft
        Half grid of an ``rfftn`` (last axis ``W // 2 + 1`` non-negative frequencies).
    fftshift
        Put DC in the middle of the full (non-rfft) axes.
    device, dtype
        Placement of the returned tensor (``None``: CPU).

    Returns
    -------
    torch.Tensor
        ``(*shape', ndim)`` with ``shape' = rfft_shape(shape)`` if ``rfft``; the last axis
        holds the frequency components ordered like ``shape`` (``(ky, kx)``, ``(kz, ky, kx)``).
    """
    s = _as_shape(shape)
    dev = None if device is None else resolve_device(device)
    axes = _freq_axes(s, rfft=rfft, fftshift=fftshift, device=dev, dtype=dtype)
    grids = torch.meshgrid(*axes, indexing="ij")
    return torch.stack(grids, dim=-1)


_CACHE_MAX_ELEMENTS = 1 << 22  # larger grids (whole micrographs/tomograms) are not cached


def _radius_cached(
    shape: tuple[int, ...], rfft: bool, fftshift: bool, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """``|k|`` grid (cycles/px); cached for grids up to ``_CACHE_MAX_ELEMENTS``. Read-only."""
    n = math.prod(shape[:-1]) * (shape[-1] // 2 + 1 if rfft else shape[-1])
    if n <= _CACHE_MAX_ELEMENTS:
        return _radius_lru(shape, rfft, fftshift, device, dtype)
    return _radius_grid(shape, rfft, fftshift, device, dtype)


def _radius_grid(
    shape: tuple[int, ...], rfft: bool, fftshift: bool, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    axes = _freq_axes_cached(shape, rfft, fftshift, device, dtype)
    r2 = torch.zeros((), device=device, dtype=dtype)
    for i, f in enumerate(axes):
        view = [1] * len(shape)
        view[i] = -1
        r2 = r2 + f.reshape(view) ** 2
    return r2.sqrt()


_radius_lru = functools.lru_cache(maxsize=64)(_radius_grid)


def frequency_radius(
    shape: Sequence[int],
    *,
    rfft: bool = True,
    fftshift: bool = False,
    device: DeviceLike = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """``|k|`` in cycles/pixel on the (r)fft grid of ``shape``: ``rfft_shape(shape)`` tensor.

    Built from a per-(shape, layout, device, dtype) cache; the returned tensor is a copy.
    """
    s = _as_shape(shape)
    dev = torch.device("cpu") if device is None else resolve_device(device)
    return _radius_cached(s, bool(rfft), bool(fftshift), dev, dtype).clone()


# --------------------------------------------------------------------------------------------
# padding / cropping
# --------------------------------------------------------------------------------------------
def _centred_slices(big: tuple[int, ...], small: tuple[int, ...]) -> tuple[slice, ...]:
    """Slices of the ``small`` block inside ``big`` that keep index ``N // 2`` centred."""
    out = []
    for nb, ns in zip(big, small, strict=True):
        start = nb // 2 - ns // 2
        out.append(slice(start, start + ns))
    return tuple(out)


def pad_to(x: Any, shape: Sequence[int], *, value: float | Literal["mean"] = 0.0) -> Any:
    """Pad the last ``len(shape)`` axes of ``x`` to ``shape``, keeping the centre index.

    Index ``n // 2`` of each padded axis lands on index ``N // 2`` of the output (``N`` the
    new size), so ``crop_to(pad_to(x, S), x.shape)`` returns ``x`` exactly.

    Parameters
    ----------
    x
        ``(..., *old)`` real or complex array.
    shape
        New spatial shape, each entry ``>=`` the old one.
    value
        Fill value, or ``"mean"``: the mean of each batch item's spatial block.

    Returns
    -------
    ``(..., *shape)`` array of the same kind and dtype as ``x``.
    """
    t, restore = unwrap(x, name="x")
    new = _as_shape(shape)
    nd = len(new)
    if t.ndim < nd:
        raise InputError(f"x has shape {tuple(t.shape)}: fewer dims than target shape {new}")
    old = tuple(t.shape[-nd:])
    if any(n < o for n, o in zip(new, old, strict=True)):
        raise InputError(f"pad_to: target shape {new} is smaller than x's {old}: use crop_to")
    batch = tuple(t.shape[:-nd])
    if isinstance(value, str):
        if value != "mean":
            raise InputError(f"value must be a number or 'mean', got {value!r}")
        fill = t.mean(dim=tuple(range(-nd, 0)), keepdim=True)
        out = fill.expand(*batch, *new).clone()
    else:
        out = torch.full((*batch, *new), float(value), dtype=t.dtype, device=t.device)
    out[(Ellipsis, *_centred_slices(new, old))] = t
    return restore(out)


def crop_to(x: Any, shape: Sequence[int]) -> Any:
    """Centred crop of the last ``len(shape)`` axes (inverse of :func:`pad_to`).

    Index ``N // 2`` of each input axis becomes index ``n // 2`` of the output.

    Parameters
    ----------
    x
        ``(..., *old)`` array.
    shape
        New spatial shape, each entry ``<=`` the old one.

    Returns
    -------
    ``(..., *shape)`` (a copy, contiguous) of the same kind as ``x``.
    """
    t, restore = unwrap(x, name="x")
    new = _as_shape(shape)
    nd = len(new)
    if t.ndim < nd:
        raise InputError(f"x has shape {tuple(t.shape)}: fewer dims than target shape {new}")
    old = tuple(t.shape[-nd:])
    if any(n > o for n, o in zip(new, old, strict=True)):
        raise InputError(f"crop_to: target shape {new} is larger than x's {old}: use pad_to")
    return restore(t[(Ellipsis, *_centred_slices(old, new))].contiguous())


# --------------------------------------------------------------------------------------------
# shifts
# --------------------------------------------------------------------------------------------
def _phase_ramp(
    shifts: torch.Tensor,
    image_shape: tuple[int, ...],
    rfft: bool,
    device: torch.device,
    real_dtype: torch.dtype,
) -> torch.Tensor:
    """``exp(-2πi k·s)`` of shape ``(*shifts.shape[:-1], *ft_shape)`` (separable product).

    The per-axis phases are computed in float64 (large shifts keep their accuracy) and cast.
    """
    nd = len(image_shape)
    axes = _freq_axes(image_shape, rfft=rfft, device=device, dtype=torch.float64)
    cdt = torch.complex128 if real_dtype == torch.float64 else torch.complex64
    s64 = shifts.to(torch.float64)
    batch = shifts.shape[:-1]
    ramp = None
    for i, f in enumerate(axes):
        ph = -2.0 * math.pi * s64[..., i, None] * f  # (*batch, n_i)
        e = torch.polar(torch.ones_like(ph), ph).to(cdt)
        view = [*batch] + [1] * nd
        view[len(batch) + i] = f.shape[0]
        e = e.reshape(view)
        ramp = e if ramp is None else ramp * e
    assert ramp is not None
    return ramp


def fourier_shift(x_ft: Any, shifts: Any, *, image_shape: Sequence[int], rfft: bool = True) -> Any:
    """Multiply a spectrum by the phase ramp that shifts its real-space image by ``shifts``.

    ``irfftn(fourier_shift(rfftn(x), s))[r] = x[r - s]`` (periodic): positive shifts move
    content towards higher indices. Integer shifts equal ``torch.roll(x, s)``; fractional
    shifts are exact for band-limited signals (sinc interpolation).

    Parameters
    ----------
    x_ft
        ``(..., *ft_shape)`` complex spectrum, unshifted (DC first); ``ft_shape`` is
        ``rfft_shape(image_shape)`` if ``rfft`` else ``image_shape``.
    shifts
        ``(..., ndim)`` shifts in pixels, ordered like ``image_shape`` (``(dy, dx)``); leading
        dims broadcast against those of ``x_ft``.
    image_shape
        Real-space shape of the spatial axes.
    rfft
        Whether ``x_ft`` is an rfft half spectrum.

    Returns
    -------
    Spectrum of broadcast shape, same kind as ``x_ft``.
    """
    t, restore = unwrap(x_ft, name="x_ft")
    ishape = _as_shape(image_shape, "image_shape")
    nd = len(ishape)
    ft_shape = rfft_shape(ishape) if rfft else ishape
    if tuple(t.shape[-nd:]) != ft_shape:
        raise InputError(
            f"x_ft has spatial shape {tuple(t.shape[-nd:])}, expected {ft_shape} for "
            f"image_shape {ishape} (rfft={rfft})"
        )
    if not t.is_complex():
        t = t.to(torch.complex128 if t.dtype == torch.float64 else torch.complex64)
    rdt = _real_dtype(t)
    s = torch.as_tensor(to_tensor(shifts, name="shifts"), dtype=rdt, device=t.device)
    if s.ndim == 0 or s.shape[-1] != nd:
        raise InputError(f"shifts must have shape (..., {nd}), got {tuple(s.shape)}")
    return restore(t * _phase_ramp(s, ishape, rfft, t.device, rdt))


def shift_image(x: Any, shifts: Any, *, ndim: int | None = None) -> Any:
    """Periodic Fourier (sinc) shift of real images/volumes: ``y[r] = x[r - shifts]``.

    Parameters
    ----------
    x
        ``(..., *spatial)`` real array.
    shifts
        ``(..., ndim)`` pixels, broadcast against the batch dims of ``x``.
    ndim
        Number of spatial axes (default: all axes of an unbatched ``x``).
    """
    t, restore = unwrap(x, name="x")
    t = _to_real(t, "x")
    nd = _infer_ndim(t, ndim, "x")
    dims = tuple(range(-nd, 0))
    ishape = tuple(t.shape[-nd:])
    ft = torch.fft.rfftn(t, dim=dims)
    out = torch.fft.irfftn(
        fourier_shift(ft, to_tensor(shifts, name="shifts").to(t.device), image_shape=ishape),
        s=ishape,
        dim=dims,
    )
    return restore(out)


# --------------------------------------------------------------------------------------------
# radial profiles
# --------------------------------------------------------------------------------------------
def _radial_bin(
    values: torch.Tensor,
    radius: torch.Tensor,
    weights: torch.Tensor | None,
    width: float,
    n_bins: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted mean of ``values (..., *grid)`` in bins ``round(radius / width)``.

    Returns ``(mean (..., n_bins), count (n_bins,))``; empty bins give NaN.
    """
    nd = radius.ndim
    idx = torch.round(radius / width).to(torch.int64).reshape(-1)
    keep = idx < n_bins
    idx = idx.clamp(max=n_bins - 1)
    w = torch.ones_like(radius).reshape(-1) if weights is None else weights.reshape(-1)
    w = w * keep.to(w.dtype)
    batch = values.shape[: values.ndim - nd]
    v = values.reshape(-1, radius.numel())
    sums = torch.zeros((v.shape[0], n_bins), dtype=v.dtype, device=v.device)
    sums.index_add_(1, idx, v * w)
    counts = torch.zeros(n_bins, dtype=w.dtype, device=w.device).index_add_(0, idx, w)
    mean = sums / counts
    mean = torch.where(counts > 0, mean, torch.full_like(mean, float("nan")))
    return mean.reshape(*batch, n_bins), counts


def radial_average(
    x: Any, *, n_bins: int | None = None, ndim: int | None = None
) -> tuple[Any, Any]:
    """Radial (rotational) average of a centred real or power image/volume.

    The centre is index ``N // 2`` on every axis (an ``fftshift``-ed spectrum, or a real-space
    image centred the FFT way). Pixels go to bin ``round(r / w)``, ``r`` the distance to the
    centre in pixels; ``w = 1`` by default, else ``r_max / (n_bins - 1)``.

    Parameters
    ----------
    x
        ``(..., *spatial)`` real array.
    n_bins
        Number of bins (default: ``round(r_max) + 1`` bins of width 1 pixel).
    ndim
        Number of spatial axes (default: all axes of an unbatched ``x``).

    Returns
    -------
    radius
        ``(n_bins,)`` bin centres in pixels (same kind as ``x``).
    mean
        ``(..., n_bins)`` mean per bin; NaN for empty bins.
    """
    t, restore = unwrap(x, name="x")
    t = _to_real(t, "x")
    nd = _infer_ndim(t, ndim, "x")
    shape = tuple(t.shape[-nd:])
    rdt = t.dtype
    r2 = torch.zeros((), dtype=rdt, device=t.device)
    for i, n in enumerate(shape):
        view = [1] * nd
        view[i] = n
        c = torch.arange(n, dtype=rdt, device=t.device) - n // 2
        r2 = r2 + (c**2).reshape(view)
    r = r2.sqrt()
    r_max = float(r.max())
    if n_bins is None:
        width, nb = 1.0, round(r_max) + 1
    else:
        nb = int(n_bins)
        if nb < 2:
            raise InputError(f"n_bins must be >= 2, got {n_bins!r}")
        width = max(r_max, 1e-12) / (nb - 1)
    mean, _ = _radial_bin(t, r, None, width, nb)
    radius = torch.arange(nb, dtype=rdt, device=t.device) * width
    return restore((radius, mean))


def _rfft_weights(shape: tuple[int, ...], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Multiplicity of each rfft coefficient in the full spectrum (1 or 2), last axis only."""
    n = shape[-1]
    m = n // 2 + 1
    w = torch.full((m,), 2.0, dtype=dtype, device=device)
    w[0] = 1.0
    if n % 2 == 0:
        w[-1] = 1.0
    return w


def _power_profile(
    t: torch.Tensor, nd: int, n_bins: int | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(freq (nb,), power (..., nb), counts (nb,))`` of real tensor ``t`` over last nd axes."""
    shape = tuple(t.shape[-nd:])
    dims = tuple(range(-nd, 0))
    rdt = t.dtype
    ft = torch.fft.rfftn(t, dim=dims)
    power = (ft.real**2 + ft.imag**2) / math.prod(shape)
    radius = _radius_cached(shape, True, False, t.device, rdt)
    weights = _rfft_weights(shape, t.device, rdt).expand_as(radius)
    r_max = float(radius.max())
    if n_bins is None:
        width = 1.0 / max(shape)
        nb = math.floor(r_max / width + 0.5) + 1
    else:
        nb = int(n_bins)
        if nb < 2:
            raise InputError(f"n_bins must be >= 2, got {n_bins!r}")
        width = r_max / (nb - 1)
    mean, counts = _radial_bin(power, radius, weights, width, nb)
    freq = torch.arange(nb, dtype=rdt, device=t.device) * width
    return freq, mean, counts


def radial_power_spectrum(
    image: Any, *, n_bins: int | None = None, ndim: int | None = None
) -> tuple[Any, Any]:
    """Radially averaged power spectrum ``|F(k)|² / N`` of real images or volumes.

    Normalised by the number of pixels ``N`` so white noise of variance ``σ²`` gives a flat
    spectrum equal to ``σ²``. Averages are over the full (Hermitian) spectrum: rfft
    coefficients that stand for two full-spectrum ones count twice.

    Parameters
    ----------
    image
        ``(..., *spatial)`` real array (not fftshifted; origin irrelevant).
    n_bins
        Number of frequency bins from 0 to the largest ``|k|`` on the grid (the corner).
        Default: bins of width ``1 / max(shape)`` cycles/pixel.
    ndim
        Number of spatial axes (default: all axes of an unbatched ``image``).

    Returns
    -------
    freq
        ``(n_bins,)`` bin centres, cycles/pixel.
    power
        ``(..., n_bins)`` mean power per bin; NaN where a bin has no coefficient.
    """
    t, restore = unwrap(image, name="image")
    t = _to_real(t, "image")
    nd = _infer_ndim(t, ndim, "image")
    check_finite(t, "image")
    freq, power, _ = _power_profile(t, nd, n_bins)
    return restore((freq, power))


def radial_profile_to_grid(
    freq: Any,
    profile: Any,
    shape: Sequence[int],
    *,
    rfft: bool = True,
    fftshift: bool = False,
) -> Any:
    """Evaluate a radial profile on the (r)fft grid of ``shape`` by linear interpolation.

    Parameters
    ----------
    freq
        ``(n,)`` increasing frequencies, cycles/pixel. NaN profile entries are skipped.
    profile
        ``(..., n)`` values at ``freq``; beyond the ends the end values are held.
    shape
        Real-space shape of the target grid (its pixel size must equal the profile's).
    rfft, fftshift
        Layout of the target grid.

    Returns
    -------
    ``(..., *grid)`` values, same kind as ``profile``.
    """
    p, restore = unwrap(profile, name="profile")
    f = to_tensor(freq, name="freq").to(device=p.device, dtype=p.dtype)
    s = _as_shape(shape)
    radius = _radius_cached(s, bool(rfft), bool(fftshift), p.device, p.dtype)
    return restore(_interp_profile(radius, f, p))


def _interp_profile(q: torch.Tensor, xp: torch.Tensor, fp: torch.Tensor) -> torch.Tensor:
    """Linear interpolation of ``fp (..., n)`` at ``xp (n,)`` to points ``q (*grid)``.

    Bins that are not finite in any batch item (e.g. empty or skipped radial bins) are
    dropped for all items, so the profile is interpolated (or held at the ends) across them.
    """
    if xp.ndim != 1 or fp.shape[-1] != xp.shape[0]:
        raise InputError(f"freq {tuple(xp.shape)} and profile {tuple(fp.shape)} disagree")
    good = torch.isfinite(fp).reshape(-1, fp.shape[-1]).all(dim=0)
    if int(good.sum()) == 0:
        raise InputError("radial profile has no finite values")
    xp = xp[good]
    fp = fp[..., good]
    if xp.numel() == 1:
        return fp[..., :1].expand(*fp.shape[:-1], q.numel()).reshape(*fp.shape[:-1], *q.shape)
    qf = q.reshape(-1).contiguous()
    hi = torch.searchsorted(xp.contiguous(), qf).clamp(1, xp.numel() - 1)
    lo = hi - 1
    x0, x1 = xp[lo], xp[hi]
    frac = ((qf - x0) / (x1 - x0)).clamp(0.0, 1.0)
    y = fp[..., lo] * (1 - frac) + fp[..., hi] * frac
    return y.reshape(*fp.shape[:-1], *q.shape)


# --------------------------------------------------------------------------------------------
# filters
# --------------------------------------------------------------------------------------------
def whitening_filter(
    image: Any,
    *,
    output_shape: Sequence[int] | None = None,
    n_bins: int | None = None,
    max_freq: float | None = None,
    ndim: int | None = None,
    min_count: int = 16,
    rfft: bool = True,
    fftshift: bool = False,
) -> Any:
    """Whitening filter ``1 / sqrt(P(|k|))`` from an image's own radially averaged power.

    ``P`` is :func:`radial_power_spectrum` of ``image``; the filter is linearly interpolated in
    ``|k|`` (cycles/pixel, so ``image`` and the target must share the pixel size) onto the rfft
    grid of ``output_shape`` (e.g. the template box), normalised to a maximum of 1 and its DC
    set to 0. Multiplying ``rfftn(image)`` by the filter for ``output_shape = image.shape``
    gives a flat spectrum (up to the radial binning). Bins with (almost) no power, e.g. beyond
    the band limit of a noise-free or low-passed image, get a huge filter value that then
    dominates the normalisation: set ``max_freq`` or multiply by a band-pass in that case.

    Parameters
    ----------
    image
        ``(..., *spatial)`` real array; each batch item gets its own filter.
    output_shape
        Real-space shape of the target grid (default: the image's spatial shape). Also fixes
        ``ndim``.
    n_bins
        Radial bins of the spectrum estimate (default: width ``1 / max(shape)``).
    max_freq
        Optional cycles/pixel limit (Leopard-EM's ``max_freq``): the maximum used for the
        normalisation is taken over ``|k| <= max_freq`` and the filter is 1 above it.
    ndim
        Number of spatial axes when ``output_shape`` is not given.
    min_count
        Bins holding fewer Fourier coefficients (full-spectrum count) are too noisy to use
        (the sparse corners): they are skipped and their neighbours interpolated/held.
    rfft, fftshift
        Layout of the returned grid.

    Returns
    -------
    ``(..., *rfft_shape(output_shape))`` real filter, same kind as ``image``.
    """
    t, restore = unwrap(image, name="image")
    t = _to_real(t, "image")
    if output_shape is not None:
        out_shape = _as_shape(output_shape, "output_shape")
        nd = _infer_ndim(t, len(out_shape), "image")
    else:
        nd = _infer_ndim(t, ndim, "image")
        out_shape = tuple(t.shape[-nd:])
    check_finite(t, "image")
    freq, power, counts = _power_profile(t, nd, n_bins)
    sparse = counts < min(float(min_count), float(counts.max()))
    sparse[0] = True  # the DC bin only measures the mean; the filter's DC is 0 anyway
    power = power.masked_fill(sparse, float("nan"))
    pmax = torch.nan_to_num(power, nan=0.0).amax(dim=-1, keepdim=True)
    if bool((pmax <= 0).any()):
        raise InputError("image has zero power (constant image?): cannot build a whitening filter")
    tiny = pmax * torch.finfo(t.dtype).eps
    amp_inv = torch.rsqrt(torch.maximum(power, tiny))
    amp_inv = torch.where(torch.isnan(power), power, amp_inv)
    radius = _radius_cached(out_shape, bool(rfft), bool(fftshift), t.device, t.dtype)
    filt = _interp_profile(radius, freq, amp_inv)
    dc = radius == 0
    filt = filt.masked_fill(dc, 0.0)
    if max_freq is not None:
        mf = _check_positive(max_freq, "max_freq")
        inside = radius <= mf
        norm = filt.masked_fill(~inside, 0.0).amax(dim=tuple(range(-nd, 0)), keepdim=True)
        filt = torch.where(inside, filt / norm, torch.ones_like(filt))
    else:
        filt = filt / filt.amax(dim=tuple(range(-nd, 0)), keepdim=True)
    return restore(filt)


def bandpass_filter(
    shape: Sequence[int],
    *,
    pixel_size: float,
    highpass_angstrom: float | None = None,
    lowpass_angstrom: float | None = None,
    falloff: float = 0.0,
    mode: Literal["cosine", "gaussian"] = "cosine",
    rfft: bool = True,
    fftshift: bool = False,
    device: DeviceLike = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Band-pass filter with cut-offs in Å on the (r)fft grid of ``shape``.

    Cut-off frequencies: ``k_low = 1 / highpass_angstrom`` and ``k_high = 1 / lowpass_angstrom``
    cycles/Å (``|k|_Å = |k|_px / pixel_size``).

    ``mode="cosine"``: soft raised-cosine edges of total width ``falloff`` (cycles/pixel)
    centred on each cut-off, so the filter is exactly 0.5 at the cut-off (``falloff=0``: hard
    edges, pass ``k_low <= |k| <= k_high``).
    ``mode="gaussian"`` (pyTME's default): low-pass ``exp(-ln2 · k² / k_high²)`` and high-pass
    ``1 - exp(-ln2 · k² / k_low²)``; also 0.5 at each cut-off; ``falloff`` is ignored.

    Parameters
    ----------
    shape
        Real-space shape ``(H, W)`` / ``(D, H, W)``.
    pixel_size
        Å per pixel, > 0.
    highpass_angstrom
        Remove features larger than this (Å); ``None``: no high-pass.
    lowpass_angstrom
        Remove features smaller than this (Å); ``None``: no low-pass.
    falloff
        Width of the cosine edges in cycles/pixel (>= 0).
    mode
        ``"cosine"`` or ``"gaussian"``.
    rfft, fftshift, device, dtype
        Layout and placement of the grid.

    Returns
    -------
    torch.Tensor
        ``rfft_shape(shape)`` (or ``shape`` if not ``rfft``) real filter in [0, 1].
    """
    s = _as_shape(shape)
    ps = _check_positive(pixel_size, "pixel_size")
    if falloff < 0 or not math.isfinite(falloff):
        raise InputError(f"falloff must be >= 0 (cycles/pixel), got {falloff!r}")
    k_low = (
        None
        if highpass_angstrom is None
        else 1.0 / _check_positive(highpass_angstrom, "highpass_angstrom")
    )
    k_high = (
        None
        if lowpass_angstrom is None
        else 1.0 / _check_positive(lowpass_angstrom, "lowpass_angstrom")
    )
    if k_low is not None and k_high is not None and k_low >= k_high:
        raise InputError(
            f"highpass_angstrom ({highpass_angstrom} Å) must be larger than lowpass_angstrom "
            f"({lowpass_angstrom} Å)"
        )
    dev = torch.device("cpu") if device is None else resolve_device(device)
    k = _radius_cached(s, bool(rfft), bool(fftshift), dev, dtype) / ps  # cycles/Å
    filt = torch.ones_like(k)
    if mode == "gaussian":
        if k_high is not None:
            filt = filt * torch.exp(-math.log(2.0) * k**2 / k_high**2)
        if k_low is not None:
            filt = filt * (1.0 - torch.exp(-math.log(2.0) * k**2 / k_low**2))
        return filt
    if mode != "cosine":
        raise InputError(f"mode must be 'cosine' or 'gaussian', got {mode!r}")
    half = falloff / ps / 2.0  # cycles/Å
    if k_high is not None:
        filt = filt * _cosine_edge(k_high - k, half)
    if k_low is not None:
        filt = filt * _cosine_edge(k - k_low, half)
    return filt


def _cosine_edge(d: torch.Tensor, half: float) -> torch.Tensor:
    """1 for ``d >= half``, 0 for ``d <= -half``, raised cosine between (0.5 at ``d = 0``)."""
    if half <= 0:
        return (d >= 0).to(d.dtype)
    x = (d / half).clamp(-1.0, 1.0)
    return 0.5 * (1.0 + torch.sin(0.5 * math.pi * x))


# --------------------------------------------------------------------------------------------
# resampling
# --------------------------------------------------------------------------------------------
def _crop_index(n_old: int, n_new: int, device: torch.device) -> torch.Tensor:
    """Indices of a full fft axis of length ``n_old`` kept for length ``n_new`` (DC first)."""
    pos = torch.arange(0, (n_new + 1) // 2, device=device)
    neg = torch.arange(n_old - n_new // 2, n_old, device=device)
    return torch.cat([pos, neg])


def fourier_crop_rfft(
    x_ft: Any, image_shape: Sequence[int], new_shape: Sequence[int], *, fold_nyquist: bool = True
) -> Any:
    """Keep the low frequencies of an rfft spectrum for a smaller real-space grid.

    Parameters
    ----------
    x_ft
        ``(..., *rfft_shape(image_shape))`` complex spectrum (DC first) of a real array.
    image_shape, new_shape
        Old and new real-space shapes (new <= old on every axis).
    fold_nyquist
        For an even new size ``M < N``, the new Nyquist coefficient receives both old
        coefficients at ``±M/2`` (so a cosine exactly at the new Nyquist is sampled exactly,
        as ``scipy.signal.resample`` does); ``False`` keeps only the ``-M/2`` one (full axes)
        / ``+M/2`` one (rfft axis).

    Returns
    -------
    ``(..., *rfft_shape(new_shape))`` spectrum (not rescaled; see :func:`fourier_crop`).
    """
    t, restore = unwrap(x_ft, name="x_ft")
    old = _as_shape(image_shape, "image_shape")
    new = _as_shape(new_shape, "new_shape")
    if len(old) != len(new):
        raise InputError(f"image_shape {old} and new_shape {new} differ in length")
    if any(n > o for n, o in zip(new, old, strict=True)):
        raise InputError(f"new_shape {new} must not exceed image_shape {old}")
    nd = len(old)
    if tuple(t.shape[-nd:]) != rfft_shape(old):
        raise InputError(f"x_ft spatial shape {tuple(t.shape[-nd:])} != {rfft_shape(old)}")
    out = t
    for i in range(nd - 1):
        dim = t.ndim - nd + i
        n_old, n_new = old[i], new[i]
        if n_new == n_old:
            continue
        cropped = out.index_select(dim, _crop_index(n_old, n_new, t.device))
        if fold_nyquist and n_new % 2 == 0:
            # new index n_new // 2 holds -M/2; add the +M/2 coefficient (old index M/2)
            pos = out.narrow(dim, n_new // 2, 1)
            cropped = cropped.index_add(dim, torch.tensor([n_new // 2], device=t.device), pos)
        out = cropped
    m_old, m_new = old[-1], new[-1]
    out = out[..., : m_new // 2 + 1]
    if fold_nyquist and m_new < m_old and m_new % 2 == 0:
        # partner of (k, +M/2) is (k, -M/2) = conj(X(-k, +M/2)) on the (cropped) full axes
        ny = out[..., -1:]
        partner = ny.conj()
        for i in range(nd - 1):
            dim = out.ndim - nd + i
            neg = (-torch.arange(new[i], device=t.device)) % new[i]
            partner = partner.index_select(dim, neg)
        out = torch.cat([out[..., :-1], ny + partner], dim=-1)
    return restore(out)


def fourier_crop(x: Any, new_shape: Sequence[int]) -> Any:
    """Band-limited down-sampling by cropping the Fourier transform (sinc resampling).

    The output samples the same field of view on a coarser grid: pixel size scales by
    ``old / new`` per axis, output pixel ``j`` sits at input coordinate ``j · old / new``
    (origin at the first pixel). Values are preserved (the spectrum is scaled by
    ``N_new / N_old``, so the mean is kept), and a band-limited image (no content above the
    new Nyquist; a cosine exactly at an even new size's Nyquist is kept by folding the
    ``±M/2`` coefficients) is resampled exactly. Content above the new Nyquist is discarded.
    Same result as ``scipy.signal.resample`` applied along each axis.

    Parameters
    ----------
    x
        ``(..., *old)`` real array; the spatial axes are the last ``len(new_shape)``.
    new_shape
        New spatial shape, each ``<=`` the old one.

    Returns
    -------
    ``(..., *new_shape)`` same kind and dtype as ``x``.
    """
    t, restore = unwrap(x, name="x")
    t = _to_real(t, "x")
    new = _as_shape(new_shape, "new_shape")
    nd = _infer_ndim(t, len(new), "x")
    old = tuple(t.shape[-nd:])
    if any(n > o for n, o in zip(new, old, strict=True)):
        raise InputError(f"fourier_crop: new_shape {new} must not exceed the input's {old}")
    dims = tuple(range(-nd, 0))
    ft = torch.fft.rfftn(t, dim=dims)
    ft = fourier_crop_rfft(ft, old, new)
    scale = math.prod(new) / math.prod(old)
    out = torch.fft.irfftn(ft * scale, s=new, dim=dims)
    return restore(out)


def _pad_spectrum_rfft(t: torch.Tensor, old: tuple[int, ...], new: tuple[int, ...]) -> torch.Tensor:
    """Zero-pad an rfft spectrum from ``old`` to a larger ``new`` real shape (Nyquist split)."""
    nd = len(old)
    out = t
    for i in range(nd - 1):
        n, m = old[i], new[i]
        if m == n:
            continue
        dim = out.ndim - nd + i
        shape = list(out.shape)
        shape[dim] = m
        big = out.new_zeros(shape)
        pos, neg = (n + 1) // 2, n // 2
        big.narrow(dim, 0, pos).copy_(out.narrow(dim, 0, pos))
        if neg:
            big.narrow(dim, m - neg, neg).copy_(out.narrow(dim, n - neg, neg))
        if n % 2 == 0:
            # old Nyquist (-n/2) becomes half at -n/2 and half at +n/2
            half = out.narrow(dim, n // 2, 1) * 0.5
            big.narrow(dim, m - n // 2, 1).copy_(half)
            big.narrow(dim, n // 2, 1).copy_(half)
        out = big
    n, m = old[-1], new[-1]
    if m != n:
        shape = list(out.shape)
        shape[-1] = m // 2 + 1
        big = out.new_zeros(shape)
        big[..., : n // 2 + 1] = out
        if n % 2 == 0:
            big[..., n // 2] *= 0.5
        out = big
    return out


def fourier_resample(x: Any, new_shape: Sequence[int]) -> Any:
    """Fourier (trigonometric / sinc) resampling to any new shape, up or down per axis.

    Same field of view, new grid: pixel size scales by ``old / new`` per axis; output pixel
    ``j`` sits at input coordinate ``j · old / new``. Down-sampling axes are Fourier-cropped
    (:func:`fourier_crop`), up-sampling axes zero-padded in Fourier space (an even old size's
    Nyquist coefficient split between ``±N/2``). Values (and the mean) are preserved; equals
    ``scipy.signal.resample`` along each axis.

    Parameters
    ----------
    x
        ``(..., *old)`` real array; the spatial axes are the last ``len(new_shape)``.
    new_shape
        New spatial shape.

    Returns
    -------
    ``(..., *new_shape)`` same kind and dtype as ``x``.
    """
    t, restore = unwrap(x, name="x")
    t = _to_real(t, "x")
    new = _as_shape(new_shape, "new_shape")
    nd = _infer_ndim(t, len(new), "x")
    old = tuple(t.shape[-nd:])
    dims = tuple(range(-nd, 0))
    mid = tuple(min(a, b) for a, b in zip(old, new, strict=True))
    ft = torch.fft.rfftn(t, dim=dims)
    if mid != old:
        ft = fourier_crop_rfft(ft, old, mid)
    if mid != new:
        ft = _pad_spectrum_rfft(ft, mid, new)
    scale = math.prod(new) / math.prod(old)
    return restore(torch.fft.irfftn(ft * scale, s=new, dim=dims))


def fourier_bin(x: Any, factor: float, *, ndim: int | None = None) -> Any:
    """Fourier binning: :func:`fourier_crop` to ``round(n / factor)`` on every spatial axis.

    The new pixel size is ``old_pixel_size · n / round(n / factor)`` (exactly ``factor`` when
    ``factor`` divides ``n``).

    Parameters
    ----------
    x
        ``(..., *spatial)`` real array.
    factor
        Binning factor ``>= 1`` (may be fractional).
    ndim
        Number of spatial axes (default: all axes of an unbatched ``x``).
    """
    t, _ = unwrap(x, name="x")
    f = _check_positive(factor, "factor")
    if f < 1:
        raise InputError(f"factor must be >= 1 (down-sampling), got {factor!r}")
    nd = _infer_ndim(t, ndim, "x")
    new = tuple(max(1, round(n / f)) for n in t.shape[-nd:])
    return fourier_crop(x, new)


# --------------------------------------------------------------------------------------------
# FFT helpers and correlation
# --------------------------------------------------------------------------------------------
def rfftn_padded(
    x: Any, shape: Sequence[int], *, center: bool = False, prune: bool | None = None
) -> Any:
    """``rfftn`` of ``x`` zero-padded (at the end of each axis, origin kept) to ``shape``.

    Equals ``torch.fft.rfftn(x, s=shape, dim=last len(shape) axes)``. With pruning, the
    last axis is transformed on the input's rows only and each further axis on the
    zero-padded columns, skipping transforms of all-zero rows (the saving grows with
    ``shape / small``).

    Parameters
    ----------
    x
        ``(..., *small)`` real array.
    shape
        Padded spatial shape (each >= small).
    center
        If True, the input's centre index ``m // 2`` is put at the origin (the input wraps
        around the corners of the padded array), as needed for correlation maps whose peak
        index is the template centre: equals ``rfftn(roll(padded, -m // 2))``. Done with a
        separable phase ramp on the transform.
    prune
        ``None`` (default): pruned on CUDA, plain ``rfftn(s=shape)`` on the CPU (measured on
        torch's CPU FFT, the one-call padded transform is faster than the pruned sequence of
        1D transforms). ``True`` / ``False`` force either path.

    Returns
    -------
    ``(..., *rfft_shape(shape))`` complex spectrum, same kind as ``x``.
    """
    t, restore = unwrap(x, name="x")
    t = _to_real(t, "x")
    s = _as_shape(shape)
    nd = _infer_ndim(t, len(s), "x")
    small = tuple(t.shape[-nd:])
    if any(a > b for a, b in zip(small, s, strict=True)):
        raise InputError(f"x spatial shape {small} exceeds padded shape {s}")
    if prune is None:
        prune = t.device.type == "cuda"
    if prune:
        out = torch.fft.rfft(t, n=s[-1], dim=-1)
        for i in range(nd - 2, -1, -1):
            out = torch.fft.fft(out, n=s[i], dim=t.ndim - nd + i)
    else:
        out = torch.fft.rfftn(t, s=s, dim=tuple(range(-nd, 0)))
    if center:
        shifts = torch.tensor([-(m // 2) for m in small], dtype=t.dtype, device=t.device)
        out = out * _phase_ramp(shifts, s, True, t.device, t.dtype)
    return restore(out)


def cross_correlate(
    image: Any,
    template: Any,
    *,
    mode: Literal["same", "full", "valid"] = "same",
    ndim: int | None = None,
) -> Any:
    """FFT cross-correlation ``c[s] = Σ_r image[r + s] · template[r]`` (no normalisation).

    Reference kernel for tests and small problems (the jobs fuse their own hot loops).
    Linear (not circular): the image is zero outside its box.

    Modes (per axis, image length ``N``, template length ``M``):

    - ``"full"``: ``s = -(M-1) … N-1``, output length ``N + M - 1`` (index ``s + M - 1``).
    - ``"valid"``: ``s = 0 … N-M``, output length ``N - M + 1`` (needs ``M <= N``).
    - ``"same"``: output length ``N``; output index ``p`` is the image position under the
      template's centre index ``M // 2`` (``s = p - M // 2``). Same as
      ``scipy.signal.correlate(image, template, mode="same")``.

    Parameters
    ----------
    image
        ``(..., *spatial)`` real array.
    template
        ``(..., *tspatial)`` real array; batch dims broadcast with the image's.
    mode
        ``"same"``, ``"full"`` or ``"valid"``.
    ndim
        Number of spatial axes. Default: ``template.ndim`` if it is 1-3 (an unbatched
        template); pass ``ndim=2`` for a batch of 2D templates.

    Returns
    -------
    Correlation map, same kind as ``image``; float64 if either input is float64.
    """
    img, restore = unwrap(image, name="image")
    tpl = to_tensor(template, name="template").to(img.device)
    img = _to_real(img, "image")
    tpl = _to_real(tpl, "template")
    nd = _infer_ndim(tpl, ndim, "template")
    _infer_ndim(img, nd, "image")
    check_finite(img, "image")
    check_finite(tpl, "template")
    dt = torch.promote_types(img.dtype, tpl.dtype)
    img, tpl = img.to(dt), tpl.to(dt)
    n = tuple(img.shape[-nd:])
    m = tuple(tpl.shape[-nd:])
    if mode == "full":
        starts = [-(mi - 1) for mi in m]
        lengths = [ni + mi - 1 for ni, mi in zip(n, m, strict=True)]
    elif mode == "same":
        starts = [-(mi // 2) for mi in m]
        lengths = list(n)
    elif mode == "valid":
        if any(mi > ni for ni, mi in zip(n, m, strict=True)):
            raise InputError(f"mode='valid' needs template {m} <= image {n} on every axis")
        starts = [0] * nd
        lengths = [ni - mi + 1 for ni, mi in zip(n, m, strict=True)]
    else:
        raise InputError(f"mode must be 'same', 'full' or 'valid', got {mode!r}")
    if mode == "valid":
        size = tuple(next_fast_len(ni) for ni in n)
    else:
        size = tuple(next_fast_len(ni + mi - 1) for ni, mi in zip(n, m, strict=True))
    dims = tuple(range(-nd, 0))
    fi = rfftn_padded(img, size)
    ft = rfftn_padded(tpl, size)
    c = torch.fft.irfftn(fi * ft.conj(), s=size, dim=dims)
    for i in range(nd):
        dim = c.ndim - nd + i
        idx = (torch.arange(lengths[i], device=c.device) + starts[i]) % size[i]
        c = c.index_select(dim, idx)
    return restore(c)

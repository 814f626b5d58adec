"""Micrograph preprocessing and the filters shared by the micrograph and the templates.

Leopard-EM's procedure (peer spec §6.1): the micrograph's rfft with DC removed is multiplied by
the combined filter ``Φ = whitening × bandpass × arbitrary curve`` and scaled so that its mean
power per Fourier coefficient over the pass band is 1. The same radial curves, evaluated on the
template's grid, filter the templates. Correlations are then divided by the exact noise
standard deviation of each template (see :mod:`corrscan.match2d.search`), so a whitened noise
micrograph gives correlation maps of mean 0 and variance 1.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from corrscan.core.fourier import (
    bandpass_filter,
    radial_power_spectrum,
    radial_profile_to_grid,
    whitening_filter,
)
from corrscan.errors import ConfigError
from corrscan.match2d.config import PreprocessingFilters

__all__ = [
    "combined_filter",
    "leopard_num_bins",
    "noise_power_grid",
    "rfft_weights",
    "whiten_micrograph",
]


def leopard_num_bins(shape: Sequence[int]) -> int:
    """Leopard-EM's default number of radial bins ``int((max_dim // 2 + 1) * sqrt(2) + 1)``."""
    return int((max(shape) // 2 + 1) * math.sqrt(2) + 1)


def rfft_weights(shape: Sequence[int], device: torch.device | None = None) -> torch.Tensor:
    """`(H, W // 2 + 1)` multiplicity (1 or 2) of each rfft coefficient in the full spectrum."""
    h, w = int(shape[-2]), int(shape[-1])
    m = w // 2 + 1
    wt = torch.full((m,), 2.0, device=device)
    wt[0] = 1.0
    if w % 2 == 0:
        wt[-1] = 1.0
    return wt.expand(h, m)


def combined_filter(
    image: torch.Tensor,
    shape: Sequence[int],
    filters: PreprocessingFilters,
    *,
    pixel_size: float,
) -> torch.Tensor:
    """Combined filter `(h, w // 2 + 1)` on the rfft grid of ``shape`` (float32).

    Parameters
    ----------
    image
        `(H, W)` micrograph the whitening curve is estimated from.
    shape
        Real-space `(h, w)` of the target grid (the micrograph's own or the template box); the
        pixel size must be the micrograph's.
    filters
        Which filters, with Leopard-EM's semantics (frequencies in cycles/pixel).
    pixel_size
        Å/pixel (for the band-pass, defined in cycles/pixel here but computed in Å).
    """
    shape = (int(shape[0]), int(shape[1]))
    dev = image.device
    out = torch.ones((shape[0], shape[1] // 2 + 1), device=dev)
    wf = filters.whitening_filter
    if wf.enabled:
        if not wf.do_power_spectrum:
            raise ConfigError(
                "preprocessing_filters.whitening_filter.do_power_spectrum=false is not "
                "supported: use true (whitening by 1/sqrt(radial power))"
            )
        n_bins = wf.num_freq_bins or leopard_num_bins(image.shape[-2:])
        out = out * whitening_filter(
            image.to(torch.float32),
            output_shape=shape,
            n_bins=n_bins,
            max_freq=wf.max_freq,
        ).to(dev)
    bp = filters.bandpass_filter
    if bp.enabled:
        hp = None if not bp.low_freq_cutoff else pixel_size / bp.low_freq_cutoff
        lp = None if not bp.high_freq_cutoff else pixel_size / bp.high_freq_cutoff
        out = out * bandpass_filter(
            shape,
            pixel_size=pixel_size,
            highpass_angstrom=hp,
            lowpass_angstrom=lp,
            falloff=bp.falloff or 0.0,
            device=dev,
        )
    ac = filters.arbitrary_curve_filter
    if ac.enabled:
        f = torch.tensor(ac.frequencies, dtype=torch.float32, device=dev)
        a = torch.tensor(ac.amplitudes, dtype=torch.float32, device=dev)
        out = out * radial_profile_to_grid(f, a, shape)
    return out.to(torch.float32)


def whiten_micrograph(
    image: torch.Tensor, filters: PreprocessingFilters, *, pixel_size: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Filtered, normalised micrograph spectrum.

    Parameters
    ----------
    image
        `(H, W)` float micrograph.
    filters, pixel_size
        See :func:`combined_filter`.

    Returns
    -------
    spectrum
        `(H, W // 2 + 1)` complex64 ``rfft2(image) · Φ`` with DC = 0, scaled so the mean of
        ``|X|²`` over the ``d`` full-spectrum coefficients of the pass band is 1 (``d = H·W``
        without band-pass / curve filters, as in Leopard-EM).
    filt
        `(H, W // 2 + 1)` the combined filter ``Φ`` on the micrograph's grid.
    """
    img = image.to(torch.float32)
    h, w = img.shape[-2:]
    ft = torch.fft.rfft2(img.to(torch.float64)).to(torch.complex64)
    ft[0, 0] = 0
    filt = combined_filter(img, (h, w), filters, pixel_size=pixel_size)
    x = ft * filt
    wts = rfft_weights((h, w), device=img.device)
    power = (wts * (x.real.double() ** 2 + x.imag.double() ** 2)).sum()
    if filters.bandpass_filter.enabled or filters.arbitrary_curve_filter.enabled:
        band = combined_filter(
            img,
            (h, w),
            PreprocessingFilters(
                whitening_filter={"enabled": False},
                bandpass_filter=filters.bandpass_filter,
                arbitrary_curve_filter=filters.arbitrary_curve_filter,
            ),
            pixel_size=pixel_size,
        )
        d = float((wts * (band != 0)).sum())
    else:
        d = float(h * w)
    if power <= 0:
        raise ConfigError("the filtered micrograph has no power: check the filter settings")
    x = x * float(math.sqrt(d / power))
    return x, filt


def noise_power_grid(spectrum: torch.Tensor, *, n_bins: int | None = None) -> torch.Tensor:
    """Radially averaged ``|X(k)|²`` of a filtered micrograph spectrum on its own rfft grid.

    This is the noise model used to normalise correlations exactly: the variance of
    ``sum_r x(r + s) t(r)`` for Gaussian noise with this (radially symmetric) power spectrum
    is ``sum_k S(k) |T_k|² / N²``. For a perfectly whitened micrograph ``S = 1`` (Leopard-EM's
    assumption); the radial estimate corrects imperfect whitening (e.g. the filter held at 1
    beyond ``max_freq``, which gives Leopard-EM its 0.977 noise standard deviation).

    Parameters
    ----------
    spectrum
        `(H, W // 2 + 1)` complex rfft of the filtered micrograph.
    n_bins
        Radial bins (default Leopard-EM's count for the image size).

    Returns
    -------
    `(H, W // 2 + 1)` float32 ``S(k)`` (same normalisation as ``|X|²``).
    """
    h = spectrum.shape[-2]
    w = 2 * (spectrum.shape[-1] - 1)
    img = torch.fft.irfft2(spectrum, s=(h, w))
    nb = n_bins or leopard_num_bins((h, w))
    freq, power = radial_power_spectrum(img.to(torch.float64), n_bins=nb)
    grid = radial_profile_to_grid(freq, power * (h * w), (h, w))
    return grid.to(torch.float32)

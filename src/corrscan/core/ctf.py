"""Contrast transfer function (CTF) of a transmission electron microscope, in Å.

Formula and sign follow torch-ctf (the cisTEM / CTFFIND4 form, also RELION's and CryoLike's)::

    γ(k) = -π λ Δf(α) |k|² + (π/2) C_s λ³ |k|⁴ - φ - arcsin(A)
    CTF(k) = -sin γ(k) · exp(-B |k|² / 4)

with ``|k|`` in cycles/Å, ``λ`` the relativistic electron wavelength (Å), ``C_s`` in Å
(input in mm), ``φ`` the extra phase shift (input in degrees, e.g. a phase plate), ``A`` the
amplitude-contrast fraction and ``B`` the B-factor (Å²). ``arcsin(A) = arctan(A / √(1 - A²))``.
Equivalently ``CTF = √(1 - A²) sin(χ + φ) + A cos(χ + φ)`` with ``χ = π λ Δf k² - (π/2) C_s λ³ k⁴``.

Consequences (tested):

- ``CTF(0) = sin(φ + arcsin A)``; with no phase shift ``CTF(0) = +A`` (e.g. ``+0.07``), and the
  CTF is **positive at low frequency for underfocus**. (A positive-density template therefore
  needs the usual contrast flip, ``-1 ×``, to model dark particles: Leopard-EM does that.)
- Defocus is positive for underfocus (Å). Astigmatism: ``Δf(α) = (U + V)/2 + (U - V)/2 ·
  cos 2(α - θ)``, ``α`` the azimuth of ``k`` measured from the +x axis (last array axis)
  towards +y (second-last axis), ``θ = astigmatism_angle`` (degrees). ``Δf = U`` along the
  direction ``θ`` and ``V`` perpendicular to it. torch-ctf's ``astigmatism_angle`` is the same
  angle (its docstring says "y-axis" but its code measures from x; our tests pin it).
- torch-ctf takes defocus in µm: ``defocus_µm = defocus_Å · 1e-4``. corrscan exposes Å only.

The kernel is written here (same formula as torch-ctf, cross-checked against it in the tests)
so that float64 is honoured, parameters broadcast as batches, and the frequency grids are
cached; torch-ctf computes in float32 and needs ``U >= V``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from corrscan.core.arrays import DeviceLike, array_kind, resolve_device, to_like
from corrscan.core.fourier import _CACHE_MAX_ELEMENTS, _freq_axes
from corrscan.errors import InputError

__all__ = [
    "ctf_1d",
    "ctf_2d",
    "ctf_3d",
    "ctf_zero_frequencies",
    "electron_wavelength",
]

# CODATA 2018 (same values as scipy.constants, used by torch-ctf)
_H = 6.62607015e-34  # J s
_C = 299792458.0  # m / s
_M0 = 9.1093837015e-31  # kg
_E = 1.602176634e-19  # C


def electron_wavelength(voltage: Any) -> Any:
    """Relativistic electron wavelength ``λ = h c / √(eV (2 m₀ c² + eV))`` in Å.

    Parameters
    ----------
    voltage
        Acceleration voltage in kV (> 0): a number or an array.

    Returns
    -------
    Å: a Python float for a number, else the same kind of array (float64 for NumPy).
    """
    if isinstance(voltage, (int, float, np.generic)):
        v = float(voltage)
        if not math.isfinite(v) or v <= 0:
            raise InputError(f"voltage must be a positive number of kV, got {voltage!r}")
        ev = _E * v * 1e3
        return _H * _C / math.sqrt(ev * (2.0 * _M0 * _C**2 + ev)) * 1e10
    kind = array_kind(voltage)
    t = _param(voltage, "voltage", torch.device("cpu"), torch.float64, positive=True)
    if kind == "torch":
        t = t.to(voltage.device)
    return to_like(_wavelength_t(t), voltage)


def _wavelength_t(voltage_kv: torch.Tensor) -> torch.Tensor:
    ev = _E * voltage_kv.to(torch.float64) * 1e3
    lam = _H * _C / torch.sqrt(ev * (2.0 * _M0 * _C**2 + ev)) * 1e10
    return lam.to(voltage_kv.dtype)


# --------------------------------------------------------------------------------------------
# argument handling
# --------------------------------------------------------------------------------------------
def _param(
    value: Any,
    name: str,
    device: torch.device,
    dtype: torch.dtype,
    *,
    positive: bool = False,
    nonneg: bool = False,
) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        t = value.detach().to(device=device, dtype=dtype)
    elif array_kind(value) == "cupy":
        t = torch.from_dlpack(value).to(device=device, dtype=dtype)
    else:
        try:
            t = torch.as_tensor(np.asarray(value, dtype=np.float64), dtype=dtype, device=device)
        except (TypeError, ValueError) as exc:
            raise InputError(f"{name} must be a number or an array, got {value!r}") from exc
    if t.is_complex():
        raise InputError(f"{name} must be real, got dtype {t.dtype}")
    if not bool(torch.isfinite(t).all()):
        raise InputError(f"{name} contains NaN or Inf: {value!r}")
    if positive and bool((t <= 0).any()):
        raise InputError(f"{name} must be > 0, got {value!r}")
    if nonneg and bool((t < 0).any()):
        raise InputError(f"{name} must be >= 0, got {value!r}")
    return t


def _output_policy(
    defocus: Any, device: DeviceLike, dtype: torch.dtype | None
) -> tuple[torch.device, torch.dtype, Any]:
    """Device, dtype and the 'like' object for the result kind (None -> torch)."""
    kind = "torch" if isinstance(defocus, (int, float, np.generic)) else array_kind(defocus)
    like = None
    if kind == "torch":
        dev = defocus.device if isinstance(defocus, torch.Tensor) else torch.device("cpu")
        src_dtype = defocus.dtype if isinstance(defocus, torch.Tensor) else None
    elif kind == "cupy":
        dev = torch.device("cuda", defocus.device.id)
        src_dtype = torch.float64 if str(defocus.dtype) == "float64" else None
        like = defocus
    else:
        dev = torch.device("cpu")
        a = np.asarray(defocus)
        src_dtype = (
            torch.float64 if a.dtype == np.float64 and isinstance(defocus, np.ndarray) else None
        )
        like = defocus if isinstance(defocus, np.ndarray) else None
    if device is not None:
        dev = resolve_device(device)
        if like is not None and array_kind(like) == "numpy" and dev.type != "cpu":
            like = None  # asked for a device explicitly: return a tensor there
    if dtype is None:
        dtype = torch.float64 if src_dtype == torch.float64 else torch.float32
    if dtype not in (torch.float32, torch.float64):
        raise InputError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
    return dev, dtype, like


def _finish(out: torch.Tensor, like: Any) -> Any:
    return out if like is None else to_like(out, like)


def _check_pixel_size(pixel_size: Any, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    return _param(pixel_size, "pixel_size (Å/pixel)", device, dtype, positive=True)


def _shape(shape: Any, n: int, name: str) -> tuple[int, ...]:
    try:
        s = tuple(int(v) for v in shape)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{name} must be a tuple of {n} positive integers, got {shape!r}") from exc
    if len(s) != n or any(v <= 0 for v in s):
        raise InputError(f"{name} must be a tuple of {n} positive integers, got {shape!r}")
    return s


def _grid_terms(
    shape: tuple[int, ...], rfft: bool, fftshift: bool, device: torch.device, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Frequency-grid terms, cached for template-sized grids (see :func:`_grid_terms_uncached`)."""
    n = math.prod(shape[:-1]) * (shape[-1] // 2 + 1 if rfft else shape[-1])
    if n <= _CACHE_MAX_ELEMENTS:
        return _grid_terms_cached(shape, rfft, fftshift, device, dtype)
    return _grid_terms_uncached(shape, rfft, fftshift, device, dtype)


def _grid_terms_uncached(
    shape: tuple[int, ...], rfft: bool, fftshift: bool, device: torch.device, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(|k|², |k|² cos 2α, |k|² sin 2α)`` in cycles²/px² on the (r)fft grid, ``α`` the
    azimuth of ``(ky, kx)`` (2D: ``kx² - ky²`` and ``2 kx ky``); computed in float64, returned
    in ``dtype``. The cached variant's tensors are shared: read-only."""
    axes = _freq_axes(shape, rfft=rfft, fftshift=fftshift, device=device, dtype=torch.float64)
    grids = torch.meshgrid(*axes, indexing="ij")
    kx, ky = grids[-1], grids[-2]
    kxy2 = kx**2 + ky**2
    k2 = kxy2 + (grids[0] ** 2 if len(shape) == 3 else 0.0)
    c2, s2 = kx**2 - ky**2, 2.0 * kx * ky
    if len(shape) == 3:
        # azimuth from (ky, kx), magnitude from the full |k|: scale by |k|² / (kx² + ky²)
        ratio = torch.where(kxy2 > 0, k2 / kxy2.clamp_min(1e-300), torch.zeros_like(k2))
        c2, s2 = c2 * ratio, s2 * ratio
    return (
        k2.to(dtype).contiguous(),
        c2.to(dtype).contiguous(),
        s2.to(dtype).contiguous(),
    )


_grid_terms_cached = functools.lru_cache(maxsize=32)(_grid_terms_uncached)


def _ctf_kernel(
    k2: torch.Tensor,
    c2: torch.Tensor | None,
    s2: torch.Tensor | None,
    *,
    pixel_size: torch.Tensor,
    defocus: torch.Tensor,
    defocus_v: torch.Tensor,
    astigmatism_angle: torch.Tensor,
    voltage: torch.Tensor,
    spherical_aberration: torch.Tensor,
    amplitude_contrast: torch.Tensor,
    phase_shift: torch.Tensor,
    b_factor: torch.Tensor,
) -> torch.Tensor:
    """CTF on a grid. Grid terms in cycles²/px²; parameters broadcast to a batch ``(...)``.

    Returns ``(*batch, *grid)``.
    """
    dtype, device = k2.dtype, k2.device
    # batch scalars in float64 (exact coefficients), the grid pass in the output dtype
    params = torch.broadcast_tensors(
        *(
            p.to(torch.float64)
            for p in (
                pixel_size,
                defocus,
                defocus_v,
                astigmatism_angle,
                voltage,
                spherical_aberration,
                amplitude_contrast,
                phase_shift,
                b_factor,
            )
        )
    )
    ps, du, dv, ang, kv, cs, ac, phi, bf = params
    g = (Ellipsis, *([None] * k2.ndim))

    def coef(v: torch.Tensor) -> torch.Tensor:
        return v.to(dtype)[g]

    lam = _wavelength_t(kv)
    inv_ps2 = 1.0 / ps**2
    a1 = -math.pi * lam * inv_ps2
    # γ = -πλ[mean k² + half (cos2θ (kx²-ky²) + sin2θ 2kxky)] + (π/2) Cs λ³ k⁴ - φ - asin A
    out = torch.empty((*ps.shape, *k2.shape), dtype=dtype, device=device)
    torch.mul(k2, coef(a1 * 0.5 * (du + dv)), out=out)
    out.addcmul_(k2 * k2, coef(0.5 * math.pi * (cs * 1e7) * lam**3 * inv_ps2**2))
    if c2 is not None and s2 is not None and bool((du != dv).any()):
        th = torch.deg2rad(2.0 * ang)
        half = a1 * 0.5 * (du - dv)
        out.addcmul_(c2, coef(half * torch.cos(th)))
        out.addcmul_(s2, coef(half * torch.sin(th)))
    out.sub_(coef(torch.deg2rad(phi) + torch.asin(ac)))
    out.sin_().neg_()
    if bool((bf != 0).any()):
        out.mul_(torch.exp(k2 * coef(-0.25 * bf * inv_ps2)))
    return out


def _common_params(
    defocus: Any,
    defocus_v: Any,
    astigmatism_angle: Any,
    voltage: Any,
    spherical_aberration: Any,
    amplitude_contrast: Any,
    phase_shift: Any,
    b_factor: Any,
    pixel_size: Any,
    device: torch.device,
    dtype: torch.dtype,
) -> dict[str, torch.Tensor]:
    du = _param(defocus, "defocus (Å)", device, dtype)
    dv = du if defocus_v is None else _param(defocus_v, "defocus_v (Å)", device, dtype)
    ac = _param(amplitude_contrast, "amplitude_contrast", device, dtype, nonneg=True)
    if bool((ac >= 1).any()):
        raise InputError(
            f"amplitude_contrast must be a fraction in [0, 1), got {amplitude_contrast!r}"
        )
    return {
        "pixel_size": _check_pixel_size(pixel_size, device, dtype),
        "defocus": du,
        "defocus_v": dv,
        "astigmatism_angle": _param(astigmatism_angle, "astigmatism_angle (deg)", device, dtype),
        "voltage": _param(voltage, "voltage (kV)", device, dtype, positive=True),
        "spherical_aberration": _param(
            spherical_aberration, "spherical_aberration (mm)", device, dtype, nonneg=True
        ),
        "amplitude_contrast": ac,
        "phase_shift": _param(phase_shift, "phase_shift (deg)", device, dtype),
        "b_factor": _param(b_factor, "b_factor (Å²)", device, dtype),
    }


# --------------------------------------------------------------------------------------------
# public CTFs
# --------------------------------------------------------------------------------------------
def ctf_2d(
    image_shape: Sequence[int],
    *,
    pixel_size: Any,
    defocus: Any,
    defocus_v: Any = None,
    astigmatism_angle: Any = 0.0,
    voltage: Any = 300.0,
    spherical_aberration: Any = 2.7,
    amplitude_contrast: Any = 0.07,
    phase_shift: Any = 0.0,
    b_factor: Any = 0.0,
    rfft: bool = True,
    fftshift: bool = False,
    device: DeviceLike = None,
    dtype: torch.dtype | None = None,
) -> Any:
    """2D CTF with astigmatism, phase shift and B-factor on an (r)fft grid (see module doc).

    Every parameter may be a number or an array; all broadcast together to a batch shape
    ``(...)`` (usually ``defocus.shape``), evaluated in one vectorised pass.

    Parameters
    ----------
    image_shape
        Real-space ``(H, W)``.
    pixel_size
        Å/pixel (> 0).
    defocus
        Defocus U in Å, positive = underfocus (scalar or ``(...)``).
    defocus_v
        Defocus V in Å (default: ``defocus``, no astigmatism).
    astigmatism_angle
        Degrees from +x towards +y of the U direction.
    voltage
        kV.
    spherical_aberration
        C_s in mm.
    amplitude_contrast
        Fraction in [0, 1).
    phase_shift
        Extra phase shift in degrees.
    b_factor
        B in Å² of the envelope ``exp(-B k² / 4)`` (0: none; negative sharpens).
    rfft
        Half grid ``(H, W // 2 + 1)`` (default) or full ``(H, W)``.
    fftshift
        DC in the middle of the full axes.
    device
        Output device (default: ``defocus``'s device, CPU for numbers/NumPy).
    dtype
        ``torch.float32`` (default) or ``torch.float64`` (default when ``defocus`` is float64).

    Returns
    -------
    ``(..., H, W // 2 + 1)`` real CTF: a tensor, or a NumPy/CuPy array if ``defocus`` is one.
    """
    shape = _shape(image_shape, 2, "image_shape")
    dev, dt, like = _output_policy(defocus, device, dtype)
    p = _common_params(
        defocus, defocus_v, astigmatism_angle, voltage, spherical_aberration,
        amplitude_contrast, phase_shift, b_factor, pixel_size, dev, dt,
    )  # fmt: skip
    k2, c2, s2 = _grid_terms(shape, bool(rfft), bool(fftshift), dev, dt)
    return _finish(_ctf_kernel(k2, c2, s2, **p), like)


def ctf_3d(
    volume_shape: Sequence[int],
    *,
    pixel_size: Any,
    defocus: Any,
    defocus_v: Any = None,
    astigmatism_angle: Any = 0.0,
    voltage: Any = 300.0,
    spherical_aberration: Any = 2.7,
    amplitude_contrast: Any = 0.07,
    phase_shift: Any = 0.0,
    b_factor: Any = 0.0,
    rfft: bool = True,
    fftshift: bool = False,
    device: DeviceLike = None,
    dtype: torch.dtype | None = None,
) -> Any:
    """3D CTF of a tomogram / subtomogram on the (r)fft grid of ``(D, H, W)``.

    The CTF formula is evaluated at the 3D frequency magnitude ``|k| = √(kz² + ky² + kx²)``,
    with the astigmatic defocus taken from the azimuth of ``(ky, kx)``. For a tilt series at
    one defocus without astigmatism this is exactly the CTF carried by every central slice
    (each tilt's 2D CTF depends only on ``|k|``), i.e. the 3D transfer function of the
    reconstruction, before any missing-wedge mask (apply that separately). With astigmatism
    it is exact for the untilted slice and an approximation elsewhere. Parameters as
    :func:`ctf_2d`.

    Returns
    -------
    ``(..., D, H, W // 2 + 1)`` real CTF.
    """
    shape = _shape(volume_shape, 3, "volume_shape")
    dev, dt, like = _output_policy(defocus, device, dtype)
    p = _common_params(
        defocus, defocus_v, astigmatism_angle, voltage, spherical_aberration,
        amplitude_contrast, phase_shift, b_factor, pixel_size, dev, dt,
    )  # fmt: skip
    k2, c2, s2 = _grid_terms(shape, bool(rfft), bool(fftshift), dev, dt)
    return _finish(_ctf_kernel(k2, c2, s2, **p), like)


def ctf_1d(
    n_or_freqs: int | Any,
    *,
    pixel_size: Any,
    defocus: Any,
    voltage: Any = 300.0,
    spherical_aberration: Any = 2.7,
    amplitude_contrast: Any = 0.07,
    phase_shift: Any = 0.0,
    b_factor: Any = 0.0,
    device: DeviceLike = None,
    dtype: torch.dtype | None = None,
) -> Any:
    """Radial (1D, non-astigmatic) CTF.

    Parameters
    ----------
    n_or_freqs
        An int ``n``: ``n`` frequencies ``linspace(0, 0.5, n)`` cycles/pixel (DC to Nyquist,
        torch-ctf's 1D sampling); or an array of frequencies in cycles/pixel (with
        ``pixel_size=1`` they are cycles/Å).
    pixel_size, defocus, voltage, spherical_aberration, amplitude_contrast, phase_shift, b_factor
        As :func:`ctf_2d`; they broadcast to a batch ``(...)``.

    Returns
    -------
    ``(..., n)`` CTF: a tensor, or the kind of ``defocus`` (NumPy/CuPy) if it is an array.
    """
    dev, dt, like = _output_policy(defocus, device, dtype)
    if isinstance(n_or_freqs, (int, np.integer)) and not isinstance(n_or_freqs, bool):
        n = int(n_or_freqs)
        if n < 1:
            raise InputError(f"n must be >= 1, got {n}")
        f = torch.linspace(0.0, 0.5, n, device=dev, dtype=torch.float64).to(dt)
    else:
        f = _param(n_or_freqs, "freqs (cycles/pixel)", dev, dt, nonneg=True)
        if f.ndim != 1:
            raise InputError(f"freqs must be 1D, got shape {tuple(f.shape)}")
    p = _common_params(
        defocus, None, 0.0, voltage, spherical_aberration,
        amplitude_contrast, phase_shift, b_factor, pixel_size, dev, dt,
    )  # fmt: skip
    return _finish(_ctf_kernel(f**2, None, None, **p), like)


def ctf_zero_frequencies(
    defocus: Any,
    voltage: float = 300.0,
    cs: float = 2.7,
    amplitude_contrast: float = 0.07,
    n: int = 5,
    *,
    phase_shift: float = 0.0,
) -> Any:
    """Analytic frequencies (cycles/Å) of the first ``n`` CTF zeros (excluding ``k = 0``).

    Zeros satisfy ``γ(k) = -mπ`` for integer ``m``; with ``u = k²`` each is a root of
    ``(π/2) C_s λ³ u² - π λ Δf u + (mπ - φ - arcsin A) = 0``. All positive real roots over
    the relevant ``m`` (both branches of γ, so overfocus and huge ``C_s`` work too) are
    collected, sorted, and the first ``n`` returned. For an astigmatic CTF call it with
    ``defocus_u`` (zeros along the astigmatism angle) and ``defocus_v`` (perpendicular).

    Parameters
    ----------
    defocus
        Å (number or array ``(...)``), positive = underfocus.
    voltage, cs, amplitude_contrast
        kV, mm, fraction.
    n
        Number of zeros.
    phase_shift
        Degrees.

    Returns
    -------
    ``(..., n)`` float64 frequencies in cycles/Å (same kind as ``defocus``; NumPy for numbers);
    NaN where fewer than ``n`` zeros exist.
    """
    n = int(n)
    if n < 1:
        raise InputError(f"n must be >= 1, got {n}")
    scalar = isinstance(defocus, (int, float, np.generic))
    dev = defocus.device if isinstance(defocus, torch.Tensor) else torch.device("cpu")
    df = _param(defocus, "defocus (Å)", dev, torch.float64)
    kv = _param(voltage, "voltage (kV)", dev, torch.float64, positive=True)
    cs_a = _param(cs, "cs (mm)", dev, torch.float64, nonneg=True) * 1e7
    ac = _param(amplitude_contrast, "amplitude_contrast", dev, torch.float64, nonneg=True)
    if bool((ac >= 1).any()):
        raise InputError(f"amplitude_contrast must be in [0, 1), got {amplitude_contrast!r}")
    c = torch.deg2rad(_param(phase_shift, "phase_shift (deg)", dev, torch.float64)) + torch.asin(ac)
    lam = _wavelength_t(kv)
    df, lam, cs_a, c = torch.broadcast_tensors(df, lam, cs_a, c)
    c_max = float(c.abs().max())
    m_hi = n + 2 + math.ceil(c_max / math.pi)
    m = torch.arange(-n - 2 - math.ceil(c_max / math.pi), m_hi + 1, device=dev, dtype=torch.float64)
    a = (0.5 * math.pi * cs_a * lam**3)[..., None]
    b = (-math.pi * lam * df)[..., None]
    cc = m * math.pi - c[..., None]
    disc = b**2 - 4 * a * cc
    sq = torch.sqrt(disc.clamp_min(0))
    ok = disc >= 0
    # numerically stable roots; a may be 0 (Cs = 0): then u = -cc / b
    q = -0.5 * (b + torch.where(b >= 0, sq, -sq))
    r1 = torch.where(a > 0, q / a, torch.full_like(q, float("nan")))
    r2 = torch.where(q != 0, cc / q, torch.full_like(q, float("nan")))
    roots = torch.cat([r1, r2], dim=-1)
    okk = torch.cat([ok, ok], dim=-1) & torch.isfinite(roots) & (roots > 1e-30)
    roots = torch.where(okk, roots, torch.full_like(roots, float("inf")))
    roots = torch.sort(roots, dim=-1).values
    # a double root (disc = 0) appears twice: drop consecutive duplicates
    dup = torch.zeros_like(roots, dtype=torch.bool)
    dup[..., 1:] = torch.isclose(roots[..., 1:], roots[..., :-1], rtol=1e-12, atol=0.0)
    roots = torch.where(dup, torch.full_like(roots, float("inf")), roots)
    roots = torch.sort(roots, dim=-1).values[..., :n]
    k = torch.sqrt(roots)
    k = torch.where(torch.isfinite(k), k, torch.full_like(k, float("nan")))
    if scalar or array_kind(defocus) == "numpy":
        return k.cpu().numpy()
    return to_like(k, defocus)

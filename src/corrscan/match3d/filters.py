"""Fourier filters of a 3D search: missing wedge, tilt weighting, CTF, band-pass, whitening.

All filters are real weights on the ``rfftn`` grid of a box ``(D, H, W)`` (frequencies from
``corrscan.core.fourier``, cycles/pixel; Å via ``pixel_size``). The **template** filter is
applied to every rotated template in the lab (tomogram) frame, after rotation, as a Fourier
multiply on the template box — the physically right place for a missing wedge or a CTF. The
**target** filter (band-pass x whitening, optional) is applied once to the tomogram.

Geometry: the beam is along z; a tilt by ``theta`` about the tilt axis (``"y"`` default, or
``"x"``) turns the beam direction to ``b = (sin theta, 0, cos theta)`` in ``(x, y, z)`` for the
y axis (``(0, -sin theta, cos theta)`` for the x axis). Each tilt image fills the central
plane ``k . b = 0`` of Fourier space.

* **Continuous wedge** ``wedge=(theta_min, theta_max)``: ``k`` is measured when its plane angle
  ``atan2(-k_z, k_x)`` (y axis; ``atan2(k_z, k_y)`` for the x axis), folded into (-90, 90],
  lies in ``[theta_min, theta_max]``; frequencies along the tilt axis are always measured.
* **Tilt list** ``tilt_angles=[...]``: each tilt contributes a slab one Fourier voxel thick
  (triangle kernel ``max(0, 1 - |k . b| n)``, ``n = max(D, H, W)``) weighted by its tilt weight
  and CTF; the weights of overlapping slabs are averaged (``sum w_t tri_t / max(1, sum tri_t)``).
* **Tilt weighting**: ``"angle"`` ``cos(theta)``; ``"relion"`` ``exp(-D_t k^2) cos(theta)``
  (``k`` in 1/Å, ``D_t`` accumulated exposure in e/Å²); ``"grigorieff"`` critical-exposure
  filter ``exp(-D_t / (2 N_e(k)))``, ``N_e = 0.245 k^-1.665 + 2.81`` (Grant & Grigorieff 2015).
  A scalar ``dose_per_tilt`` is spread dose-symmetrically (increasing ``|theta|``).
* **CTF**: ``ctf_mode="3d"`` multiplies the 3D CTF ``CTF(|k|)`` (``corrscan.core.ctf.ctf_3d``);
  ``"per-tilt"`` evaluates each tilt's CTF (its own defocus) on its slab. Correction:
  ``"phase-flip"`` ``|CTF|`` (tomogram was phase-flipped), ``"raw"`` ``CTF`` (uncorrected
  tomogram), ``"wiener"`` ``CTF / (CTF^2 + 1/SNR)``, ``SNR = exp(-B k^2 / 4)``, scaled to max 1.
* **Band-pass**: Gaussian edges in Å (``corrscan.core.fourier.bandpass_filter(mode="gaussian")``;
  0.5 at each cut-off).
* **Whitening**: ``1/sqrt(P(|k|))`` of the tomogram's own radially averaged power spectrum
  (``corrscan.core.fourier.whitening_filter``), applied to template and target.
* **Tilt metadata file** ``tilt_file``: read once when the config is built
  (:func:`corrscan.core.io.tilt.read_tilt_metadata`: IMOD ``.tlt``/text, SerialEM ``.mdoc``,
  Warp/M ``.xml``, ``.tomostar`` / RELION 5 STAR, CTFFIND4 output). It fills only the fields
  the config does not set itself (explicit fields, even ``null``, win): ``tilt_angles``,
  ``dose_per_tilt`` (the file's accumulated pre-exposure per tilt), ``defocus`` (per tilt, Å,
  the mean of U and V), ``voltage``, ``spherical_aberration``, ``amplitude_contrast`` and
  ``phase_shift`` (mean of the file's per-tilt values). Tilts the file marks as excluded
  (Warp ``UseTilt=False``) are **dropped** (pyTME instead keeps them with weight 1e-4; with
  corrscan's overlap averaging such a weight would also halve the weight of every slab it
  crosses, so dropping is the faithful choice). When ``tilt_angles`` is given explicitly the
  file's per-tilt values are used if their count matches it (all tilts, or only the used
  ones). ``tilt_file`` cannot be reassigned after construction.
"""

from __future__ import annotations

import os
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field, model_validator

from corrscan.core.config import Config
from corrscan.core.ctf import ctf_1d
from corrscan.core.fourier import bandpass_filter, fftfreq_grid, whitening_filter
from corrscan.errors import ConfigError, InputError

__all__ = [
    "FilterConfig",
    "continuous_wedge",
    "ctf_weights",
    "target_filter",
    "template_filter",
    "tilt_wedge",
    "tilt_weights",
]


class FilterConfig(Config):
    """Filters of a 3D template search (all optional; nothing set = no filtering)."""

    lowpass_angstrom: float | None = Field(None, gt=0, description="low-pass cut-off (Å)")
    highpass_angstrom: float | None = Field(None, gt=0, description="high-pass cut-off (Å)")
    wedge: tuple[float, float] | None = Field(
        None, description="continuous wedge: measured tilt range (min, max) in degrees"
    )
    tilt_angles: list[float] | None = Field(None, description="tilt angles (degrees)")
    tilt_axis: Literal["y", "x"] = "y"
    tilt_weighting: Literal["angle", "relion", "grigorieff"] | None = None
    dose_per_tilt: float | list[float] | None = Field(
        None, description="e/Å² per tilt (scalar: dose-symmetric order) or accumulated per tilt"
    )
    defocus: float | list[float] | None = Field(
        None, description="defocus in Å (positive = underfocus), scalar or one per tilt"
    )
    ctf_mode: Literal["3d", "per-tilt"] = "3d"
    ctf_correction: Literal["phase-flip", "raw", "wiener"] = "phase-flip"
    voltage: float = 300.0
    spherical_aberration: float = 2.7
    amplitude_contrast: float = 0.07
    phase_shift: float = 0.0
    wiener_b_factor: float = Field(100.0, ge=0, description="B (Å²) of the Wiener SNR model")
    whiten: bool = False
    filter_target: bool = True
    tilt_file: str | None = Field(
        None,
        frozen=True,
        description="tilt metadata file (.tlt/.rawtlt/text, .mdoc, Warp .xml, .tomostar/.star, "
        "CTFFIND4 output) filling tilt_angles, dose_per_tilt, defocus and microscope settings "
        "that are not given explicitly",
    )

    @model_validator(mode="before")
    @classmethod
    def _fill_from_tilt_file(cls, data: Any) -> Any:
        """Fill the fields the input does not give from ``tilt_file`` (see module docstring)."""
        if not isinstance(data, dict) or data.get("tilt_file") is None:
            return data
        data = dict(data)
        if isinstance(data["tilt_file"], os.PathLike):
            data["tilt_file"] = os.fspath(data["tilt_file"])
        if not isinstance(data["tilt_file"], str):
            return data  # the field validation reports the wrong type
        missing = [k for k in _FROM_TILT_FILE if k not in data]
        if data.get("wedge") is not None:  # an explicit continuous wedge: no tilt list
            missing = [k for k in missing if k not in ("tilt_angles", "dose_per_tilt")]
        if missing:
            data.update(_values_from_tilt_file(data["tilt_file"], data, missing))
        return data

    def is_identity(self) -> bool:
        """True when no template filter is configured."""
        return (
            self.lowpass_angstrom is None
            and self.highpass_angstrom is None
            and self.wedge is None
            and self.tilt_angles is None
            and self.defocus is None
            and not self.whiten
        )


_FROM_TILT_FILE = (
    "tilt_angles",
    "dose_per_tilt",
    "defocus",
    "voltage",
    "spherical_aberration",
    "amplitude_contrast",
    "phase_shift",
)


def _values_from_tilt_file(path: str, data: dict[str, Any], missing: list[str]) -> dict[str, Any]:
    """Config values for the ``missing`` fields from a tilt metadata file.

    Excluded tilts (``use == False``) are dropped. Per-tilt arrays follow the final tilt list:
    the used tilts when the angles come from the file (or an explicit list of that length),
    all tilts when an explicit list has the file's full length; otherwise ConfigError.
    """
    from corrscan.core.io.tilt import read_tilt_metadata

    meta = read_tilt_metadata(path)
    keep = meta.use
    out: dict[str, Any] = {}
    if "tilt_angles" in missing and meta.tilt_angles is not None:
        out["tilt_angles"] = meta.tilt_angles[keep].tolist()
    angles = out.get("tilt_angles", data.get("tilt_angles"))
    try:
        n_used = len(angles) if angles is not None else None
    except TypeError:
        n_used = None  # an invalid explicit value: its own validation reports it

    def per_tilt(values: np.ndarray, name: str) -> np.ndarray:
        if n_used is None or n_used == int(keep.sum()):
            return values[keep]
        if n_used == values.size:
            return values
        raise ConfigError(
            f"tilt_file {path}: {values.size} {name} values ({int(keep.sum())} used tilts) "
            f"do not match the {n_used} tilt_angles given"
        )

    if "dose_per_tilt" in missing and meta.accumulated_dose is not None:
        out["dose_per_tilt"] = per_tilt(meta.accumulated_dose, "dose").tolist()
    if "defocus" in missing and meta.defocus is not None:
        out["defocus"] = per_tilt(meta.defocus, "defocus").tolist()
    if "phase_shift" in missing and meta.phase_shift is not None:
        out["phase_shift"] = float(np.mean(per_tilt(meta.phase_shift, "phase shift")))
    scalars = {"voltage": meta.voltage, "spherical_aberration": meta.cs,
               "amplitude_contrast": meta.amplitude_contrast}  # fmt: skip
    for k, v in scalars.items():
        if k in missing and v is not None:
            out[k] = float(v)
    return out


def _freq_xyz(shape: tuple[int, ...]) -> torch.Tensor:
    """``(*rfft_shape, 3)`` frequencies as ``(k_x, k_y, k_z)`` cycles/pixel, float64."""
    k = fftfreq_grid(shape, rfft=True, dtype=torch.float64)  # (..., 3) as (kz, ky, kx)
    return k.flip(-1)


def _beam(theta_deg: torch.Tensor, tilt_axis: str) -> torch.Tensor:
    t = torch.deg2rad(theta_deg.to(torch.float64))
    z = torch.zeros_like(t)
    if tilt_axis == "y":
        return torch.stack([torch.sin(t), z, torch.cos(t)], -1)
    return torch.stack([z, -torch.sin(t), torch.cos(t)], -1)


def continuous_wedge(
    shape: tuple[int, ...], theta_min: float, theta_max: float, *, tilt_axis: str = "y"
) -> torch.Tensor:
    """Binary continuous wedge ``rfft_shape(shape)`` float32 (1 = measured)."""
    if not -90.0 <= theta_min < theta_max <= 90.0:
        raise InputError(
            f"wedge must satisfy -90 <= min < max <= 90, got ({theta_min}, {theta_max})"
        )
    k = _freq_xyz(shape)
    kx, ky, kz = k[..., 0], k[..., 1], k[..., 2]
    u = kx if tilt_axis == "y" else -ky
    ang = torch.rad2deg(torch.atan2(-kz, u))  # (-180, 180]
    ang = torch.where(ang > 90.0, ang - 180.0, ang)
    ang = torch.where(ang <= -90.0, ang + 180.0, ang)
    on_axis = (u == 0) & (kz == 0)
    inside = (ang >= theta_min - 1e-9) & (ang <= theta_max + 1e-9)
    return (inside | on_axis).to(torch.float32)


def _accumulated_dose(tilts: np.ndarray, dose: float | list[float] | None) -> np.ndarray:
    if dose is None:
        return np.zeros(len(tilts))
    if np.ndim(dose) == 0:
        order = np.argsort(np.argsort(np.abs(tilts), kind="stable"), kind="stable")
        return float(dose) * (order + 1.0)
    d = np.asarray(dose, dtype=np.float64)
    if d.shape != tilts.shape:
        raise InputError(
            f"dose_per_tilt has {d.size} values for {tilts.size} tilt angles: give one per tilt"
        )
    return d


def tilt_weights(
    tilts: np.ndarray,
    k_angstrom: torch.Tensor,
    *,
    weighting: str | None,
    dose: float | list[float] | None,
) -> torch.Tensor:
    """``(T, *k.shape)`` per-tilt weights (see module docstring)."""
    t = torch.as_tensor(np.asarray(tilts, dtype=np.float64))
    shape = (-1,) + (1,) * k_angstrom.ndim
    cos = torch.cos(torch.deg2rad(t)).reshape(shape)
    if weighting is None:
        return torch.ones((len(t), *k_angstrom.shape), dtype=torch.float64)
    if weighting == "angle":
        return cos.expand(len(t), *k_angstrom.shape)
    d = torch.as_tensor(_accumulated_dose(np.asarray(tilts, dtype=np.float64), dose)).reshape(shape)
    if weighting == "relion":
        return torch.exp(-d * k_angstrom**2) * cos
    if weighting == "grigorieff":
        ne = 0.245 * torch.clamp(k_angstrom, min=1e-6) ** -1.665 + 2.81
        return torch.exp(-d / (2.0 * ne))
    raise InputError(f"tilt_weighting must be angle, relion or grigorieff, got {weighting!r}")


def _ctf_radial(k_angstrom: torch.Tensor, defocus: torch.Tensor, cfg: FilterConfig) -> torch.Tensor:
    """Isotropic CTF at ``|k|`` (1/Å) for defoci ``(T,)`` Å -> ``(T, *k.shape)``.

    Evaluated with :func:`corrscan.core.ctf.ctf_1d` (corrscan's CTF sign convention).
    """
    flat = k_angstrom.reshape(-1).to(torch.float64)
    ctf = ctf_1d(
        flat, pixel_size=1.0, defocus=defocus.to(torch.float64).reshape(-1),
        voltage=cfg.voltage, spherical_aberration=cfg.spherical_aberration,
        amplitude_contrast=cfg.amplitude_contrast, phase_shift=cfg.phase_shift,
    )  # fmt: skip
    return torch.as_tensor(ctf).reshape(-1, *k_angstrom.shape)


def _correct(ctf: torch.Tensor, k_angstrom: torch.Tensor, cfg: FilterConfig) -> torch.Tensor:
    if cfg.ctf_correction == "phase-flip":
        return ctf.abs()
    if cfg.ctf_correction == "raw":
        return ctf
    snr = torch.exp(-cfg.wiener_b_factor * k_angstrom.to(torch.float64) ** 2 / 4.0)
    w = ctf / (ctf**2 + 1.0 / snr)
    return w / w.abs().amax().clamp(min=1e-12)


def ctf_weights(shape: tuple[int, ...], pixel_size: float, cfg: FilterConfig) -> torch.Tensor:
    """3D CTF filter ``rfft_shape(shape)`` (``ctf_mode="3d"``, first defocus), corrected."""
    if cfg.defocus is None:
        raise InputError("ctf_weights needs FilterConfig.defocus")
    df = cfg.defocus if np.ndim(cfg.defocus) == 0 else float(np.mean(cfg.defocus))
    k = torch.linalg.vector_norm(_freq_xyz(shape), dim=-1) / pixel_size
    ctf = _ctf_radial(k, torch.tensor([float(df)]), cfg)[0]
    return _correct(ctf, k, cfg).to(torch.float32)


def tilt_wedge(
    shape: tuple[int, ...], pixel_size: float, cfg: FilterConfig, *, with_ctf: bool = False
) -> torch.Tensor:
    """Wedge from ``cfg.tilt_angles`` with tilt weights (and per-tilt CTFs), rfft grid."""
    tilts = np.asarray(cfg.tilt_angles, dtype=np.float64)
    if tilts.ndim != 1 or tilts.size == 0:
        raise InputError("tilt_angles must be a non-empty list of degrees")
    k = _freq_xyz(shape)
    kabs = torch.linalg.vector_norm(k, dim=-1) / pixel_size
    n = max(shape)
    beams = _beam(torch.as_tensor(tilts), cfg.tilt_axis)  # (T, 3)
    proj = torch.einsum("...c,tc->t...", k, beams)  # (T, *grid)
    tri = torch.clamp(1.0 - proj.abs() * n, min=0.0)
    w = tilt_weights(tilts, kabs, weighting=cfg.tilt_weighting, dose=cfg.dose_per_tilt)
    if with_ctf:
        df = cfg.defocus
        dfs = np.full(len(tilts), float(df)) if np.ndim(df) == 0 else np.asarray(df, float)
        if dfs.shape != tilts.shape:
            raise InputError(f"defocus has {dfs.size} values for {tilts.size} tilts")
        w = w * _correct(_ctf_radial(kabs, torch.as_tensor(dfs), cfg), kabs, cfg)
    num = (tri * w).sum(0)
    den = torch.clamp(tri.sum(0), min=1.0)
    return (num / den).to(torch.float32)


def template_filter(
    shape: tuple[int, ...],
    pixel_size: float,
    cfg: FilterConfig,
    *,
    tomogram: torch.Tensor | None = None,
) -> torch.Tensor | None:
    """Product of the configured template filters on the rfft grid of ``shape``, or None."""
    if cfg.is_identity():
        return None
    filt = torch.ones((*shape[:-1], shape[-1] // 2 + 1), dtype=torch.float32)
    per_tilt_ctf = cfg.defocus is not None and cfg.ctf_mode == "per-tilt"
    if per_tilt_ctf and cfg.tilt_angles is None:
        raise InputError("ctf_mode='per-tilt' needs tilt_angles")
    if cfg.tilt_angles is not None:
        filt = filt * tilt_wedge(shape, pixel_size, cfg, with_ctf=per_tilt_ctf)
    elif cfg.wedge is not None:
        filt = filt * continuous_wedge(shape, *cfg.wedge, tilt_axis=cfg.tilt_axis)
    if cfg.defocus is not None and not per_tilt_ctf:
        filt = filt * ctf_weights(shape, pixel_size, cfg)
    if cfg.lowpass_angstrom is not None or cfg.highpass_angstrom is not None:
        filt = filt * bandpass_filter(
            shape, pixel_size=pixel_size, lowpass_angstrom=cfg.lowpass_angstrom,
            highpass_angstrom=cfg.highpass_angstrom, mode="gaussian",
        )  # fmt: skip
    if cfg.whiten:
        if tomogram is None:
            raise InputError("whitening needs the tomogram")
        filt = filt * whitening_filter(tomogram, output_shape=shape).to(torch.float32)
    return filt


def target_filter(
    shape: tuple[int, ...],
    pixel_size: float,
    cfg: FilterConfig,
    *,
    tomogram: torch.Tensor | None = None,
) -> torch.Tensor | None:
    """Band-pass x whitening for the tomogram (``filter_target``), or None."""
    if not cfg.filter_target:
        return None
    has_bp = cfg.lowpass_angstrom is not None or cfg.highpass_angstrom is not None
    if not has_bp and not cfg.whiten:
        return None
    filt = torch.ones((*shape[:-1], shape[-1] // 2 + 1), dtype=torch.float32)
    if has_bp:
        filt = filt * bandpass_filter(
            shape, pixel_size=pixel_size, lowpass_angstrom=cfg.lowpass_angstrom,
            highpass_angstrom=cfg.highpass_angstrom, mode="gaussian",
        )  # fmt: skip
    if cfg.whiten:
        filt = filt * whitening_filter(tomogram, output_shape=shape).to(torch.float32)
    return filt


def apply_filter(volume: torch.Tensor, filt: torch.Tensor | None) -> torch.Tensor:
    """``irfftn(rfftn(volume) * filt)`` over the last three axes (batch dims kept)."""
    if filt is None:
        return volume
    s = tuple(volume.shape[-3:])
    ft = torch.fft.rfftn(volume, dim=(-3, -2, -1))
    return torch.fft.irfftn(ft * filt, s=s, dim=(-3, -2, -1))

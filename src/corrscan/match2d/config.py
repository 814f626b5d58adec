"""Configuration models of the 2D template-matching job (YAML-loadable, pydantic).

Field names and defaults follow Leopard-EM 1.2 (``OpticsGroup``, ``DefocusSearchConfig``,
``OrientationSearchConfig``, ``PreprocessingFilters``) so a Leopard-EM YAML translates field by
field; the compute settings use clear names instead (``device``, ``orientation_batch_size``,
``num_threads``; Leopard-EM's ``num_cpus`` really meant CUDA streams).

Units: Å (pixel size, defocus), degrees (angles), kV, mm (Cs), Å² (B-factor), cycles/pixel
for filter frequencies (0.5 = Nyquist).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

import torch
from pydantic import Field, field_validator, model_validator

from corrscan.core.config import Config
from corrscan.errors import ConfigError, InputError

__all__ = [
    "ArbitraryCurveFilterConfig",
    "BandpassFilterConfig",
    "ComputeConfig",
    "ConstrainedSearchConfig",
    "DefocusSearchConfig",
    "MatchTemplateConfig",
    "OpticsGroup",
    "OrientationSearchConfig",
    "OutputConfig",
    "PeakConfig",
    "PixelSizeSearchConfig",
    "PreprocessingFilters",
    "RefineConfig",
    "RefineOrientationConfig",
    "WhiteningFilterConfig",
]


class OpticsGroup(Config):
    """Microscope optics and CTF of one micrograph.

    Attributes
    ----------
    label
        Free text.
    pixel_size
        Å/pixel of the micrograph.
    voltage
        Acceleration voltage, kV.
    spherical_aberration
        C_s, mm.
    amplitude_contrast_ratio
        Fraction in [0, 1).
    phase_shift
        Extra phase shift (phase plate), degrees.
    defocus_u, defocus_v
        Defocus along the major/minor astigmatism axes, Å, positive = underfocus. Astigmatism
        keeps its sign (Leopard-EM's ``|U - V| / 2`` rotates the axis by 90° when V > U).
    astigmatism_angle
        Angle of the U axis, degrees.
    ctf_B_factor
        B-factor of the envelope ``exp(-B k² / 4)`` applied to the template, Å².
    """

    label: str = "optics"
    pixel_size: float = Field(gt=0)
    voltage: float = Field(300.0, gt=0)
    spherical_aberration: float = Field(2.7, ge=0)
    amplitude_contrast_ratio: float = Field(0.07, ge=0, lt=1)
    phase_shift: float = 0.0
    defocus_u: float
    defocus_v: float
    astigmatism_angle: float = 0.0
    ctf_B_factor: float = Field(0.0, ge=0)

    @property
    def mean_defocus(self) -> float:
        """``(defocus_u + defocus_v) / 2`` in Å: the reference of the relative defocus."""
        return 0.5 * (self.defocus_u + self.defocus_v)


class DefocusSearchConfig(Config):
    """Defocus offsets searched, relative to the optics group's mean defocus (Å).

    Values are ``arange(defocus_min, defocus_max + step, step)`` (inclusive, Leopard-EM), with 0
    inserted (and re-sorted) unless ``skip_enforce_zero``; disabled gives ``[0]``.
    """

    enabled: bool = True
    defocus_min: float = -1000.0
    defocus_max: float = 1000.0
    defocus_step: float = Field(200.0, gt=0)
    skip_enforce_zero: bool = False

    @model_validator(mode="after")
    def _check(self) -> DefocusSearchConfig:
        if self.enabled and self.defocus_max < self.defocus_min:
            raise ValueError("defocus_max must be >= defocus_min")
        return self

    def values(self) -> torch.Tensor:
        """`(n_defocus,)` float64 relative defocus values in Å, sorted."""
        if not self.enabled:
            return torch.zeros(1, dtype=torch.float64)
        n = math.floor((self.defocus_max - self.defocus_min) / self.defocus_step + 1e-9) + 1
        v = self.defocus_min + self.defocus_step * torch.arange(n, dtype=torch.float64)
        if not self.skip_enforce_zero and not bool((v.abs() < 1e-6).any()):
            v = torch.sort(torch.cat([v, torch.zeros(1, dtype=torch.float64)])).values
        return v


class PixelSizeSearchConfig(Config):
    """Pixel-size offsets (Å) for refinement, emulated through C_s like Leopard-EM."""

    enabled: bool = False
    pixel_size_min: float = 0.0
    pixel_size_max: float = 0.0
    pixel_size_step: float = Field(0.0, ge=0)
    skip_enforce_zero: bool = False

    def values(self) -> torch.Tensor:
        """`(n,)` float64 pixel-size offsets in Å (``[0]`` when disabled)."""
        if not self.enabled or self.pixel_size_step <= 0:
            return torch.zeros(1, dtype=torch.float64)
        step = self.pixel_size_step
        n = math.floor((self.pixel_size_max - self.pixel_size_min) / step + 1e-9) + 1
        v = self.pixel_size_min + step * torch.arange(n, dtype=torch.float64)
        if not self.skip_enforce_zero and not bool((v.abs() < 1e-9).any()):
            v = torch.sort(torch.cat([v, torch.zeros(1, dtype=torch.float64)])).values
        return v


class OrientationSearchConfig(Config):
    """Global orientation grid (torch-so3 / Leopard-EM semantics).

    Either ``symmetry`` is set (ranges reduced like torch-so3) or explicit ranges are given
    (missing ones default to phi 0-360, theta 0-180, psi 0-360). Upper bounds: phi and psi
    exclusive, theta inclusive.

    ``match_resolution_limit`` (corrscan addition, default off): in a resolution-limited
    search (``resolution_limit`` set), multiply ``psi_step`` and ``theta_step`` by
    ``resolution_limit / (2 · pixel_size)`` (1.5 at 2/3 Nyquist). The angular step a template
    needs scales with the resolution it is matched at (a rotation by ``Δ`` radians moves a
    point at radius ``r`` by ``r·Δ``; keeping that below the same fraction of the resolution
    gives ``Δ ∝ d / r``), so the coarser grid samples the cropped search as densely as the
    steps given sample the full one, for about ``1 / scale³`` of the orientations.
    """

    psi_step: float = Field(1.5, gt=0)
    theta_step: float = Field(2.5, gt=0)
    phi_min: float | None = None
    phi_max: float | None = None
    theta_min: float | None = None
    theta_max: float | None = None
    psi_min: float | None = None
    psi_max: float | None = None
    base_grid_method: Literal["uniform", "healpix", "cartesian"] = "uniform"
    symmetry: str | None = "C1"
    match_resolution_limit: bool = False

    def _range(self, lo: float | None, hi: float | None, full: tuple[float, float]):
        if lo is None and hi is None:
            return None
        return (full[0] if lo is None else lo, full[1] if hi is None else hi)

    def angles(self, step_scale: float = 1.0) -> torch.Tensor:
        """`(n, 3)` float64 ``(phi, theta, psi)`` degrees; ``step_scale`` multiplies both
        steps (see ``match_resolution_limit``)."""
        if not step_scale > 0:
            raise InputError(f"step_scale must be > 0, got {step_scale}")
        from corrscan.core.rotations import so3_grid

        ranges = {
            "phi_range": self._range(self.phi_min, self.phi_max, (0.0, 360.0)),
            "theta_range": self._range(self.theta_min, self.theta_max, (0.0, 180.0)),
            "psi_range": self._range(self.psi_min, self.psi_max, (0.0, 360.0)),
        }
        any_range = any(v is not None for v in ranges.values())
        if any_range:
            ranges = {
                "phi_range": ranges["phi_range"] or (0.0, 360.0),
                "theta_range": ranges["theta_range"] or (0.0, 180.0),
                "psi_range": ranges["psi_range"] or (0.0, 360.0),
            }
        sym = self.symmetry if (self.symmetry and not any_range) else "C1"
        return so3_grid(
            psi_step=self.psi_step * step_scale,
            theta_step=self.theta_step * step_scale,
            base_grid=self.base_grid_method,
            symmetry=sym,
            **ranges,
        )


class RefineOrientationConfig(Config):
    """Local orientation offsets for refinement (Leopard-EM names and defaults).

    Offsets are a Euler grid within ``±coarse`` with the fine steps, composed with each
    particle's orientation (``R_particle @ R_offset``).
    """

    enabled: bool = True
    phi_step_coarse: float = Field(2.5, gt=0)
    phi_step_fine: float = Field(0.25, gt=0)
    theta_step_coarse: float = Field(2.5, gt=0)
    theta_step_fine: float = Field(0.25, gt=0)
    psi_step_coarse: float = Field(1.5, gt=0)
    psi_step_fine: float = Field(0.1, gt=0)


class WhiteningFilterConfig(Config):
    """Whitening from the micrograph's own radially averaged power spectrum.

    ``num_freq_bins=None`` uses Leopard-EM's ``int((max_dim // 2 + 1) * sqrt(2) + 1)``;
    ``max_freq`` (cycles/pixel) bounds the normalisation, the filter is 1 above it.
    """

    enabled: bool = True
    num_freq_bins: int | None = Field(None, ge=2)
    max_freq: float = Field(0.5, gt=0)
    do_power_spectrum: bool = True


class BandpassFilterConfig(Config):
    """Band-pass in cycles/pixel (0.5 = Nyquist); cosine edges of width ``falloff``."""

    enabled: bool = False
    low_freq_cutoff: float | None = Field(None, ge=0)
    high_freq_cutoff: float | None = Field(None, gt=0)
    falloff: float | None = Field(None, ge=0)

    @classmethod
    def from_spatial_resolution(
        cls, low_resolution: float | None, high_resolution: float | None, pixel_size: float
    ) -> BandpassFilterConfig:
        """Band-pass from resolutions in Å (``low`` = largest kept feature)."""
        lo = None if not low_resolution else pixel_size / low_resolution
        hi = None if not high_resolution else pixel_size / high_resolution
        return cls(enabled=True, low_freq_cutoff=lo, high_freq_cutoff=hi)


class ArbitraryCurveFilterConfig(Config):
    """Any radial curve: ``amplitudes`` at ``frequencies`` (cycles/pixel), linear in between."""

    enabled: bool = False
    frequencies: list[float] | None = None
    amplitudes: list[float] | None = None

    @model_validator(mode="after")
    def _check(self) -> ArbitraryCurveFilterConfig:
        if self.enabled:
            if not self.frequencies or not self.amplitudes:
                raise ValueError("arbitrary_curve_filter needs frequencies and amplitudes")
            if len(self.frequencies) != len(self.amplitudes):
                raise ValueError("frequencies and amplitudes must have the same length")
            if any(b <= a for a, b in zip(self.frequencies, self.frequencies[1:], strict=False)):
                raise ValueError("frequencies must increase")
        return self


class PreprocessingFilters(Config):
    """Filters applied to the micrograph and (the same curves) to the templates."""

    whitening_filter: WhiteningFilterConfig = WhiteningFilterConfig()
    bandpass_filter: BandpassFilterConfig = BandpassFilterConfig()
    arbitrary_curve_filter: ArbitraryCurveFilterConfig = ArbitraryCurveFilterConfig()


class ComputeConfig(Config):
    """Where and how the search runs.

    Attributes
    ----------
    device
        ``"auto"`` (CUDA if present, else CPU), ``"cpu"``, ``"cuda:N"``, or a list of devices
        (the orientation set is split between them and the partial results merged exactly).
    orientation_batch_size
        Orientations projected per batch; ``None`` plans it from free memory.
    chunk_orientations
        Orientations correlated per fused step. ``None``: on the CPU with numba, as many as
        keep the step at <= 16 maps (all defocus planes of each orientation) and <= ~32 MB
        of maps (1 when the defocus planes alone exceed that); on the CPU without numba, as
        many as keep the step's spectra and maps in ~8 MB (at least 1); on CUDA, planned
        from free memory (<= 16).
    num_threads
        CPU worker threads (each with single-threaded torch ops and its own partial state,
        merged at the end); ``None`` = torch's thread count.
    ctf_placement
        ``"micrograph"`` (default, fast): the CTF x whitening filter of each defocus plane is
        applied to the micrograph's spectrum once, so each orientation needs one padded
        forward FFT for all defocus planes and the template's CTF is not truncated to the box.
        ``"template_box"``: Leopard-EM's exact order (filter the projection in its box, then
        pad), one forward FFT per correlation.
    template_oversampling
        Zero-padding factor of the template before its 3D FFT (1 = Leopard-EM; 2 = more
        accurate central slices).
    """

    device: str | list[str] = "auto"
    orientation_batch_size: int | None = Field(None, ge=1)
    chunk_orientations: int | None = Field(None, ge=1)
    num_threads: int | None = Field(None, ge=1)
    ctf_placement: Literal["micrograph", "template_box"] = "micrograph"
    template_oversampling: int = Field(1, ge=1, le=4)

    def devices(self) -> list[str]:
        """The device list (always a list)."""
        return [self.device] if isinstance(self.device, str) else list(self.device)


class OutputConfig(Config):
    """Where results go. ``valid_crop`` keeps only positions where the whole template box fits
    (map pixel ``(i, j)`` = top-left corner of the box; particle centre = ``(i, j) + box // 2``).
    """

    bundle_path: str = "match2d_result"
    overwrite: bool = False
    valid_crop: bool = True
    particles_csv: str | None = None
    particles_star: str | None = None


class PeakConfig(Config):
    """Peak extraction settings (Leopard-EM defaults)."""

    method: Literal["zscore", "pvalue", "gev"] = "zscore"
    false_positives: float = Field(1.0, gt=0)
    z_score_cutoff: float | None = None
    mask_radius: float = Field(5.0, ge=0)
    pvalue_cutoff: float = Field(8.0, gt=0)


class MatchTemplateConfig(Config):
    """Full configuration of ``corrscan match2d search``.

    ``resolution_limit`` (Å, optional) Fourier-crops the micrograph and the template so that
    the new Nyquist frequency is ``1 / resolution_limit``: the search is faster and the maps
    come at the coarser pixel size (positions in the tables are converted back to the input
    micrograph's pixels).
    """

    micrograph_path: str
    template_volume_path: str
    optics_group: OpticsGroup
    defocus_search_config: DefocusSearchConfig = DefocusSearchConfig()
    orientation_search_config: OrientationSearchConfig = OrientationSearchConfig()
    preprocessing_filters: PreprocessingFilters = PreprocessingFilters()
    computational_config: ComputeConfig = ComputeConfig()
    output: OutputConfig = OutputConfig()
    peaks: PeakConfig = PeakConfig()
    resolution_limit: float | None = Field(None, gt=0)
    template_pixel_size: float | None = Field(
        None, gt=0, description="Å/voxel of the template; default: the micrograph's"
    )

    @field_validator("micrograph_path", "template_volume_path")
    @classmethod
    def _exists(cls, v: str) -> str:
        if not Path(v).expanduser().exists():
            raise ValueError(f"file not found: {v}")
        return v


class ConstrainedSearchConfig(Config):
    """Constrained search of a second particle relative to a reference particle.

    Offsets are rotations about ``rotation_axis`` (unit vector in the reference particle's
    frame) by angles in ``±axis_range`` (step ``axis_step``) times small tilts of that axis
    (``±tilt_range``, step ``tilt_step``); the defocus shift of each particle is the z
    component of the rotated ``center_vector`` (Å).
    """

    center_vector: tuple[float, float, float] = (0.0, 0.0, 0.0)
    rotation_axis: tuple[float, float, float] = (0.0, 0.0, 1.0)
    axis_range: float = Field(30.0, ge=0)
    axis_step: float = Field(1.5, gt=0)
    tilt_range: float = Field(0.0, ge=0)
    tilt_step: float = Field(2.5, gt=0)
    false_positives: float = Field(0.005, gt=0)


class RefineConfig(Config):
    """Local refinement around each particle (``corrscan match2d refine``)."""

    orientation_refinement: RefineOrientationConfig = RefineOrientationConfig()
    defocus_refinement: DefocusSearchConfig = DefocusSearchConfig(
        defocus_min=-200.0, defocus_max=200.0, defocus_step=50.0
    )
    pixel_size_refinement: PixelSizeSearchConfig = PixelSizeSearchConfig()
    box_margin: int = Field(8, ge=0)
    particle_batch_size: int = Field(1, ge=1)


def check_positive_int(value: int, name: str) -> int:
    """Raise :class:`InputError` unless ``value`` is a positive integer."""
    if int(value) != value or value < 1:
        raise InputError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def load_config(path: str | Path) -> MatchTemplateConfig:
    """Load a :class:`MatchTemplateConfig` from YAML (errors name the file and field)."""
    try:
        return MatchTemplateConfig.from_yaml(path)
    except ConfigError:
        raise

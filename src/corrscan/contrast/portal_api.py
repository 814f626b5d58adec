"""Compatibility layer with ``cryoet-data-portal-neuroglancer`` (cdpng) names and signatures.

Switch by changing the import::

    # from cryoet_data_portal_neuroglancer.precompute.contrast_limits import compute_contrast_limits
    # from cryoet_data_portal_neuroglancer.state_generator import generate_image_layer, ...
    from corrscan.contrast.portal_api import compute_contrast_limits, generate_image_layer, ...

Same parameters and defaults, corrscan's implementation underneath. Deliberate differences
(the peer's bugs are not reproduced):

- unknown ``method`` names raise instead of silently running CDF; ``"percentile"`` works;
- GMM ``low_variance_mult`` / ``high_variance_mult`` are honoured when given (``None``: the
  per-component-count table);
- ``z_radius=None`` keeps the peer's actual meaning (the "computed" slab between the per-slice
  std minima; its docstring says "whole volume") in :func:`compute_contrast_limits` and in
  the calculator classes, but never raises; ``"computed"`` is accepted too (the peer raised
  ``TypeError``); ``central_z_slice=0`` is honoured;
- ``num_samples`` counts voxels drawn **from the slab**; NaN/Inf are ignored with a warning;
- layer dicts hold only Neuroglancer keys: the view hints the peer stored as ``_position``,
  ``_crossSectionScale`` and ``_projectionScale`` are attributes of the returned dict
  (:class:`LayerJSON`), read by :func:`combine_json_layers`;
- URLs are joined keeping every path segment of ``url``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, Literal

import neuroglancer
import numpy as np

from corrscan.contrast.cdf import cdf_limits, percentile_limits
from corrscan.contrast.gmm import gmm_limits
from corrscan.contrast.histogram import bin_sample
from corrscan.contrast.limits import compute_contrast_limits as _compute
from corrscan.contrast.sampling import draw_sample, slab_bounds
from corrscan.contrast.shaders import image_shader, oriented_point_shader, point_shader
from corrscan.contrast.states import DEFAULT_PROJECTION_ORIENTATION, join_url
from corrscan.contrast.volumes import open_volume
from corrscan.errors import InputError

__all__ = [
    "CDFContrastLimitCalculator",
    "ContrastLimitCalculator",
    "GMMContrastLimitCalculator",
    "LayerJSON",
    "PercentileContrastLimitCalculator",
    "combine_json_layers",
    "compute_contrast_limits",
    "generate_image_layer",
    "generate_oriented_point_layer",
    "generate_point_layer",
    "generate_segmentation_mask_layer",
]


def compute_contrast_limits(
    data: Any,
    method: Literal["gmm", "cdf", "percentile"] = "gmm",
    z_radius: int | Literal["auto", "computed"] | None = "auto",
    downsampling_ratio: float | None = 0.3,
) -> tuple[float, float]:
    """cdpng's entry point (see :func:`corrscan.contrast.compute_contrast_limits`; seed 42).

    ``z_radius=None`` is the peer's computed slab (``"computed"`` in corrscan's native API,
    where ``None`` means the whole volume).
    """
    zr = "computed" if z_radius is None else z_radius
    return tuple(_compute(data, method, zr, downsampling_ratio, 42))  # type: ignore[return-value]


class ContrastLimitCalculator(ABC):
    """Slab restriction and sampling at construction; ``compute_contrast_limit`` per method.

    Parameters
    ----------
    volume
        `(z, y, x)` array (NumPy, Dask, ...) or path.
    z_radius
        ``None`` or ``"computed"``: slab between the per-slice std minima (cdpng's default);
        an integer: fixed radius; ``"all"``: whole volume.
    num_samples
        Voxels drawn from the slab (``None``: all).
    central_z_slice
        Slab centre (default the middle; 0 is honoured).
    """

    def __init__(
        self,
        volume: Any,
        z_radius: int | str | None = None,
        num_samples: int | None = None,
        central_z_slice: float | None = None,
    ) -> None:
        source = open_volume(volume)
        zr: Any = "computed" if z_radius is None else (None if z_radius == "all" else z_radius)
        z_range = slab_bounds(source, zr, auto_radius=15, central_z_slice=central_z_slice)
        ratio = None
        if num_samples is not None:
            slab = (z_range[1] - z_range[0]) * source.shape[1] * source.shape[2]
            ratio = min(1.0, max(int(num_samples), 1) / slab)
        self.z_range = z_range
        self.volume = draw_sample(
            source, z_range, downsampling_ratio=ratio, max_samples=num_samples, seed=42
        ).values

    @abstractmethod
    def compute_contrast_limit(self, *args: Any, **kwargs: Any) -> tuple[float, float]:
        """``(low, high)`` limits of the sample (defined by each method's calculator)."""


class PercentileContrastLimitCalculator(ContrastLimitCalculator):
    def compute_contrast_limit(
        self, low_percentile: float = 1.0, high_percentile: float = 99.0
    ) -> tuple[float, float]:
        """Exact percentiles of the sample."""
        return percentile_limits(
            self.volume, low_percentile=low_percentile, high_percentile=high_percentile
        )


class GMMContrastLimitCalculator(ContrastLimitCalculator):
    def compute_contrast_limit(
        self,
        low_variance_mult: float | None = None,
        high_variance_mult: float | None = None,
        max_components: int = 3,
    ) -> tuple[float, float]:
        """GMM/BIC limits; the multipliers override the per-count table when given."""
        return gmm_limits(
            bin_sample(self.volume),
            max_components=max_components,
            low_std_multiplier=low_variance_mult,
            high_std_multiplier=high_variance_mult,
        ).limits


class CDFContrastLimitCalculator(ContrastLimitCalculator):
    def compute_contrast_limit(self, gradient_threshold: float = 0.3) -> tuple[float, float]:
        """CDF-gradient limits."""
        return cdf_limits(self.volume, gradient_threshold=gradient_threshold).limits


class LayerJSON(dict):
    """Layer JSON (a plain ``dict`` for ``json.dumps``) with view hints as attributes."""

    position: list[float] | None = None
    cross_section_scale: float | None = None
    projection_scale: float | None = None


def _scale3(scale: float | Sequence[float], name: str = "scale") -> tuple[float, float, float]:
    s = np.atleast_1d(np.asarray(scale, dtype=np.float64))
    if s.size == 1:
        s = np.repeat(s, 3)
    if s.size != 3 or np.any(~np.isfinite(s)) or np.any(s <= 0):
        raise InputError(f"{name} must be one or three positive numbers, got {scale!r}")
    return (float(s[0]), float(s[1]), float(s[2]))


def _source(
    source: str, url: str | None, prefix: str, scale: Any, output_scale: Any
) -> neuroglancer.LayerDataSource:
    location = join_url(url, source) if url else source
    if not location.startswith(f"{prefix}://"):
        location = f"{prefix}://{location}"
    sin = _scale3(scale)
    sout = _scale3(output_scale if output_scale is not None else scale, "output_scale")

    def space(s: tuple[float, float, float]) -> neuroglancer.CoordinateSpace:
        return neuroglancer.CoordinateSpace(names=["x", "y", "z"], units="m", scales=list(s))

    return neuroglancer.LayerDataSource(
        url=location,
        transform=neuroglancer.CoordinateSpaceTransform(
            output_dimensions=space(sout), input_dimensions=space(sin)
        ),
    )


def _name(source: str, name: str | None) -> str:
    if name:
        return name
    stem = source.rstrip("/").rsplit("/", 1)[-1]
    return stem.rsplit(".", 1)[0] if "." in stem else stem


def _managed(name: str, layer: Any, visible: bool) -> LayerJSON:
    return LayerJSON(neuroglancer.ManagedLayer(name, layer, visible=bool(visible)).to_json())


def generate_image_layer(
    source: str,
    scale: float | Sequence[float],
    size: Sequence[int],
    name: str | None = None,
    url: str | None = None,
    start: Sequence[int] | None = None,
    mean: float | None = None,
    rms: float | None = None,
    is_visible: bool = True,
    has_volume_rendering_shader: bool | None = None,
    twodee_contrast_limits: tuple[float, float] | None = None,
    threedee_contrast_limits: tuple[float, float] | None = None,
    volume_rendering_is_visible: bool = False,
    volume_rendering_gain: float = -7.8,
    can_hide_high_values_in_neuroglancer: bool | None = None,
    blend: str = "additive",
    opacity: float = 1.0,
    is_code_editor_visible: bool = False,
    output_scale: float | Sequence[float] | None = None,
) -> LayerJSON:
    """Image layer JSON as cdpng's (2D window = limits ± 20 %, 3D window ± 200 %).

    2D limits: ``twodee_contrast_limits``, else ``mean ± 3 rms`` when either is given (missing
    ``mean`` = 0, missing ``rms`` = 1/3; the peer needed both), else (0, 1). 3D limits default to
    the 2D ones; the volume-rendering controls are added when volume rendering is visible or 3D
    limits are given. ``size`` and ``start`` are ``(x, y, z)`` voxels (for the view hints).
    """
    given_3d = threedee_contrast_limits is not None
    if twodee_contrast_limits is None:
        if mean is not None or rms is not None:
            m = 0.0 if mean is None else float(mean)
            r = 1.0 / 3.0 if rms is None else float(rms)
            twodee_contrast_limits = (m - 3 * r, m + 3 * r)
        else:
            twodee_contrast_limits = (0.0, 1.0)
    if threedee_contrast_limits is None:
        threedee_contrast_limits = twodee_contrast_limits
    vr = bool(
        has_volume_rendering_shader
        if has_volume_rendering_shader is not None
        else volume_rendering_is_visible or given_3d
    )
    shader = image_shader(
        twodee_contrast_limits,
        volume_rendering_limits=threedee_contrast_limits if vr else None,
        hide_outside_3d=bool(can_hide_high_values_in_neuroglancer),
    )
    layer = neuroglancer.ImageLayer(
        source=_source(source, url, "zarr", scale, output_scale),
        shader=shader,
        opacity=float(opacity),
        blend=blend,
    )
    if vr:
        layer.volume_rendering_mode = "on" if volume_rendering_is_visible else "off"
        layer.volume_rendering_gain = float(volume_rendering_gain)
        layer.volume_rendering_depth_samples = 128
    out = _managed(_name(source, name), layer, is_visible)
    out["codeVisible"] = bool(is_code_editor_visible)
    sz = np.asarray(size, dtype=np.float64)
    st = np.zeros(3) if start is None else np.asarray(start, dtype=np.float64)
    out.position = [float(v) for v in np.round((sz + st) / 2.0)]
    out.cross_section_scale = max(float(sz.max()) / 400.0, 1.0)
    out.projection_scale = 1.1 * float(sz.max())
    return out


def generate_segmentation_mask_layer(
    source: str,
    name: str | None = None,
    url: str | None = None,
    color: str | dict[int, str] | None = "#FFFFFF",
    scale: float | Sequence[float] = (1.0, 1.0, 1.0),
    is_visible: bool = True,
    display_bounding_box: bool = False,
    display_mesh: bool = True,
    highlight_on_hover: bool = False,
    mesh_render_scale: float = 2.0,
    visible_segments: Sequence[int] = (1,),
    enable_pick: bool = False,
    output_scale: float | Sequence[float] | None = None,
) -> LayerJSON:
    """Segmentation layer JSON (precomputed source with mesh) as cdpng's."""
    from corrscan.contrast.states import segmentation_layer

    layer = segmentation_layer(
        "precomputed://placeholder",
        segments=visible_segments,
        color=color,
        mesh=display_mesh,
        bounding_box=display_bounding_box,
        pick=enable_pick,
        hover_highlight=highlight_on_hover,
        mesh_render_scale=mesh_render_scale,
    )
    src = _source(source, url, "precomputed", scale, output_scale)
    src.subsources = {"default": True, "mesh": bool(display_mesh)}
    src.enable_default_subsources = bool(display_bounding_box)
    layer.source = [src]
    return _managed(_name(source, name), layer, is_visible)


def generate_point_layer(
    source: str,
    name: str | None = None,
    url: str | None = None,
    color: str = "#FFFFFF",
    point_size_multiplier: float = 1.0,
    scale: float | Sequence[float] = (1.0, 1.0, 1.0),
    is_visible: bool = True,
    is_instance_segmentation: bool = False,
    output_scale: float | Sequence[float] | None = None,
) -> LayerJSON:
    """Annotation layer JSON for a precomputed point-annotation source."""
    layer = neuroglancer.AnnotationLayer(
        source=_source(source, url, "precomputed", scale, output_scale),
        annotation_color=color,
        shader=point_shader(size=8.0 * float(point_size_multiplier)),
    )
    out = _managed(_name(source, name), layer, is_visible)
    out["codeVisible"] = False
    del is_instance_segmentation
    return out


def generate_oriented_point_layer(
    source: str,
    name: str | None = None,
    url: str | None = None,
    color: str = "#FFFFFF",
    point_size_multiplier: float = 1.0,
    line_width: float = 1.0,
    scale: float | Sequence[float] = (1.0, 1.0, 1.0),
    is_visible: bool = True,
    is_instance_segmentation: bool = False,
    output_scale: float | Sequence[float] | None = None,
    is_code_editor_visible: bool = False,
) -> LayerJSON:
    """Annotation layer JSON for precomputed oriented points (lines with an ``axis`` property)."""
    layer = neuroglancer.AnnotationLayer(
        source=_source(source, url, "precomputed", scale, output_scale),
        annotation_color=color,
        shader=oriented_point_shader(line_width=float(line_width)),
    )
    out = _managed(_name(source, name), layer, is_visible)
    out["codeVisible"] = bool(is_code_editor_visible)
    del point_size_multiplier, is_instance_segmentation
    return out


def combine_json_layers(
    layers: Sequence[dict[str, Any]],
    scale: float | Sequence[float],
    units: str = "m",
    projection_quaternion: Sequence[float] | None = None,
    set_slices_visible_in_3d: bool | None = None,
    show_axis_lines: bool = True,
    use_old_neuroglancer_layout: bool = True,
    gpu_memory_limit_gb: float = 1.5,
    voxel_size_scale: float = 1.0,
) -> dict[str, Any]:
    """Full viewer state JSON from layer dicts (cdpng's defaults; empty list -> InputError)."""
    if not layers:
        raise InputError("combine_json_layers needs at least one layer")
    s = _scale3(scale)
    state = neuroglancer.ViewerState({"layers": [dict(layer) for layer in layers]})
    state.dimensions = neuroglancer.CoordinateSpace(
        names=["x", "y", "z"], units=units, scales=list(s)
    )
    images = [layer for layer in layers if layer.get("type") == "image"]
    state.cross_section_scale = 1.8
    if images and isinstance(images[0], LayerJSON) and images[0].position is not None:
        first = images[0]
        state.position = [float(np.round(v * voxel_size_scale)) for v in first.position or []]
        state.cross_section_scale = float(first.cross_section_scale or 1.8) * voxel_size_scale
        state.projection_scale = float(first.projection_scale or 1.0) * voxel_size_scale
    q = DEFAULT_PROJECTION_ORIENTATION if projection_quaternion is None else projection_quaternion
    state.projection_orientation = [float(v) for v in q]
    vr_on = any(layer.get("volumeRendering") in ("on", True) for layer in images)
    state.show_slices = (
        (not vr_on) if set_slices_visible_in_3d is None else set_slices_visible_in_3d
    )
    state.show_axis_lines = bool(show_axis_lines)
    state.hide_cross_section_background_3d = True
    state.cross_section_background_color = "#000000"
    state.layout = "4panel" if use_old_neuroglancer_layout else "4panel-alt"
    state.gpu_memory_limit = int(gpu_memory_limit_gb * 1e9)
    state.selected_layer.layer = str(layers[0]["name"])
    state.selected_layer.visible = True
    return state.to_json()

"""Neuroglancer viewer states for tomograms: image (2D + volume rendering), segmentation masks,
point and oriented-point picks, combined states and shareable URLs.

Everything is built with the ``neuroglancer`` package's state classes, so a state is validated
by construction and serialises with :func:`state_json` / :func:`state_url`.

Conventions
-----------
- Arrays are ``(z, y, x)``; Neuroglancer's global dimensions are named ``x, y, z`` in metres
  (``voxel_size`` Å · 1e-10), so positions in the state are ``(x, y, z)`` voxels.
- Voxel sizes are in Å, given as one number or ``(z, y, x)``.
- A layer ``source`` is either a URL (``"zarr://https://..."``, ``"precomputed://..."``;
  :func:`source_url` builds one) or an array, served by a live local viewer
  (:mod:`corrscan.contrast.viewer`); states holding arrays cannot become shareable URLs.
- Layer JSON holds only Neuroglancer keys (no private helper keys, unlike the portal's).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import neuroglancer
import numpy as np

from corrscan.contrast.picks import Picks, particle_axes
from corrscan.contrast.shaders import image_shader, oriented_point_shader, point_shader
from corrscan.errors import InputError

__all__ = [
    "DEFAULT_PROJECTION_ORIENTATION",
    "coordinate_space",
    "image_layer",
    "join_url",
    "local_volume",
    "oriented_point_layer",
    "picks_layers",
    "point_layer",
    "segmentation_layer",
    "source_url",
    "state_json",
    "state_url",
    "tomogram_state",
    "viewer_state",
]

#: Quaternion ``(x, y, z, w)``: 45° about x, the portal's default 3D view.
DEFAULT_PROJECTION_ORIENTATION = (0.3826834323650898, 0.0, 0.0, 0.9238795325112867)
_LAYOUTS = ("xy", "xz", "yz", "3d", "4panel", "4panel-alt", "xy-3d", "xz-3d", "yz-3d")


def _voxel_zyx(voxel_size: float | Sequence[float] | None) -> np.ndarray:
    if voxel_size is None:
        return np.ones(3)
    vs = np.broadcast_to(np.asarray(voxel_size, dtype=np.float64), (3,)).copy()
    if not np.all(np.isfinite(vs)) or np.any(vs <= 0):
        raise InputError(
            f"voxel_size must be positive Å (one value or (z, y, x)), got {voxel_size!r}"
        )
    return vs


def coordinate_space(
    voxel_size: float | Sequence[float] | None, *, order: str = "xyz"
) -> neuroglancer.CoordinateSpace:
    """Neuroglancer coordinate space in metres for ``voxel_size`` Å (``(z, y, x)`` or scalar).

    ``order`` = ``"xyz"`` (global dimensions, annotations) or ``"zyx"`` (a NumPy volume).
    """
    vz, vy, vx = _voxel_zyx(voxel_size) * 1e-10
    scales = {"x": vx, "y": vy, "z": vz}
    names = list(order)
    return neuroglancer.CoordinateSpace(
        names=names, units=["m"] * 3, scales=[scales[n] for n in names]
    )


def join_url(base: str, *parts: str) -> str:
    """Join URL path parts, keeping every segment of ``base`` (``urljoin`` drops the last one
    when ``base`` has no trailing slash, which broke the portal's URLs)."""
    if not base:
        raise InputError("join_url: empty base URL")
    out = base.rstrip("/")
    for p in parts:
        p = str(p).strip("/")
        if p:
            out = f"{out}/{p}"
    return out


def source_url(location: str, *, kind: str = "zarr") -> str:
    """Neuroglancer data-source URL ``"<kind>://<location>"`` (``location`` an http(s)/gs/s3
    URL; an existing ``kind://`` prefix is kept)."""
    if "://" in location and location.split("://", 1)[0] in {
        "zarr",
        "zarr2",
        "zarr3",
        "precomputed",
        "n5",
        "nifti",
    }:
        return location
    if kind not in {"zarr", "zarr2", "zarr3", "precomputed", "n5", "nifti"}:
        raise InputError(f"unknown Neuroglancer source kind {kind!r}")
    return f"{kind}://{location}"


def local_volume(
    data: Any, voxel_size: float | Sequence[float] | None = None, *, segmentation: bool = False
) -> neuroglancer.LocalVolume:
    """Serve a `(z, y, x)` array (NumPy, memmap, dask, zarr) in a live local viewer.

    ``data`` is read lazily chunk by chunk by the viewer; float64 is served as float32.
    """
    if len(getattr(data, "shape", ())) == 2:
        data = np.asarray(data)[None]
    if len(getattr(data, "shape", ())) != 3:
        raise InputError(
            f"local volume must be (z, y, x), got shape {getattr(data, 'shape', None)}"
        )
    kwargs: dict[str, Any] = {"dimensions": coordinate_space(voxel_size, order="zyx")}
    if segmentation:
        kwargs["volume_type"] = "segmentation"
        if np.dtype(data.dtype).kind not in "iub":
            raise InputError("segmentation volume must have an integer dtype")
        if np.dtype(data.dtype) not in (np.dtype(np.uint32), np.dtype(np.uint64)):
            data = np.asarray(data).astype(np.uint32)  # NumPy arrays (views pass through)
    return neuroglancer.LocalVolume(data, **kwargs)


def _layer_source(source: Any, voxel_size: Any, *, segmentation: bool = False) -> Any:
    if isinstance(source, str):
        if "://" not in source:
            raise InputError(
                f"layer source {source!r} is not a URL: use source_url() "
                "(e.g. 'zarr://https://host/tomogram.zarr') or pass an array"
            )
        return source
    if isinstance(source, neuroglancer.LocalVolume):
        return source
    return local_volume(source, voxel_size, segmentation=segmentation)


def image_layer(
    source: Any,
    limits: Sequence[float],
    *,
    voxel_size: float | Sequence[float] | None = None,
    window_padding: float = 0.2,
    invert: bool = False,
    volume_rendering: bool = False,
    volume_rendering_limits: Sequence[float] | None = None,
    volume_rendering_padding: float = 2.0,
    volume_rendering_gain: float = 0.0,
    depth_samples: int = 128,
    invert_3d: bool = True,
    hide_outside_3d: bool = False,
    opacity: float = 1.0,
    blend: str = "additive",
) -> neuroglancer.ImageLayer:
    """Image layer with ``contrast`` / ``invert_contrast`` controls and optional volume rendering.

    Parameters
    ----------
    source
        URL or `(z, y, x)` array (see the module conventions).
    limits
        ``(low, high)`` 2D contrast limits (data units), e.g. from
        :func:`~corrscan.contrast.compute_contrast_limits`.
    voxel_size
        Å, for array sources.
    window_padding
        Slider window around the limits, fraction of their width (20 %).
    invert
        Start with the 2D contrast inverted.
    volume_rendering
        Turn volume rendering on (``volumeRendering: "on"``).
    volume_rendering_limits
        Limits of the 3D transfer function; default ``limits``. Giving them adds the 3D
        controls even with volume rendering off.
    volume_rendering_padding, volume_rendering_gain, depth_samples, invert_3d, hide_outside_3d
        3D window padding (200 %), gain, depth samples, checkbox defaults (see
        :func:`~corrscan.contrast.shaders.image_shader`).
    """
    if not 0 <= opacity <= 1:
        raise InputError(f"opacity must be in [0, 1], got {opacity}")
    vr_limits = volume_rendering_limits
    if vr_limits is None and volume_rendering:
        vr_limits = limits
    shader = image_shader(
        limits,
        window_padding=window_padding,
        invert=invert,
        volume_rendering_limits=vr_limits,
        volume_rendering_padding=volume_rendering_padding,
        invert_3d=invert_3d,
        hide_outside_3d=hide_outside_3d,
    )
    layer = neuroglancer.ImageLayer(
        source=_layer_source(source, voxel_size),
        shader=shader,
        opacity=float(opacity),
        blend=blend,
    )
    if vr_limits is not None:
        layer.volume_rendering_mode = "on" if volume_rendering else "off"
        layer.volume_rendering_gain = float(volume_rendering_gain)
        layer.volume_rendering_depth_samples = int(depth_samples)
    return layer


def segmentation_layer(
    source: Any,
    *,
    voxel_size: float | Sequence[float] | None = None,
    segments: Sequence[int] | None = (1,),
    color: str | Mapping[int, str] | None = None,
    mesh: bool = True,
    bounding_box: bool = False,
    pick: bool = False,
    hover_highlight: bool = False,
    mesh_render_scale: float = 2.0,
) -> neuroglancer.SegmentationLayer:
    """Segmentation (label mask) layer.

    Parameters
    ----------
    source
        URL (``precomputed://`` with an optional mesh) or integer `(z, y, x)` label array.
    segments
        Segment ids shown (``None``: none selected).
    color
        ``"#RRGGBB"`` for all segments, or ``{id: "#RRGGBB"}``.
    mesh, bounding_box
        Show the source's mesh / bounding-box sub-sources (URL sources).
    pick
        Whether clicking selects segments.
    """
    src = _layer_source(source, voxel_size, segmentation=True)
    layer = neuroglancer.SegmentationLayer(source=src)
    if isinstance(src, str):
        layer.source[0].enable_default_subsources = bool(bounding_box)
        layer.source[0].subsources = {"default": True, "mesh": bool(mesh)}
    if segments is not None:
        layer.segments = sorted(int(s) for s in segments)
    if isinstance(color, str):
        _check_color(color)
        layer.segment_default_color = color
    elif color is not None:
        for c in color.values():
            _check_color(c)
        layer.segment_colors = {int(k): v for k, v in color.items()}
    layer.pick = bool(pick)
    layer.hover_highlight = bool(hover_highlight)
    layer.selected_alpha = 1.0
    layer.mesh_render_scale = float(mesh_render_scale)
    return layer


def _check_color(color: str) -> None:
    if not (isinstance(color, str) and len(color) == 7 and color[0] == "#"):
        raise InputError(f"colour must be '#RRGGBB', got {color!r}")
    try:
        int(color[1:], 16)
    except ValueError:
        raise InputError(f"colour must be '#RRGGBB', got {color!r}") from None


def _xyz(points_zyx: Any) -> np.ndarray:
    p = np.asarray(points_zyx, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != 3:
        raise InputError(f"points must have shape (n, 3) (z, y, x), got {p.shape}")
    if not np.all(np.isfinite(p)):
        raise InputError("points contain NaN/Inf")
    return p[:, ::-1]


def point_layer(
    points: Any,
    *,
    voxel_size: float | Sequence[float] | None = None,
    scores: Any = None,
    color: str = "#ffff00",
    size: float = 8.0,
    opacity: float = 1.0,
) -> neuroglancer.LocalAnnotationLayer:
    """Point annotations at `(n, 3)` ``(z, y, x)`` voxel positions, embedded in the state.

    With ``scores`` `(n,)` each point carries a ``score`` property (min-max normalised to
    [0, 1]) and is coloured blue (low) to yellow (high); ``raw_score`` keeps the values.
    """
    _check_color(color)
    xyz = _xyz(points)
    props = []
    norm = None
    if scores is not None:
        s = np.asarray(scores, dtype=np.float64).reshape(-1)
        if s.size != xyz.shape[0]:
            raise InputError(f"scores has {s.size} values for {xyz.shape[0]} points")
        span = float(s.max() - s.min()) if s.size else 0.0
        norm = (s - s.min()) / span if span > 0 else np.ones_like(s)
        props = [
            neuroglancer.AnnotationPropertySpec(id="score", type="float32", default=1.0),
            neuroglancer.AnnotationPropertySpec(id="raw_score", type="float32", default=0.0),
        ]
    annotations = [
        neuroglancer.PointAnnotation(
            id=str(i),
            point=[float(v) for v in p],
            props=[] if norm is None else [float(norm[i]), float(s[i])],
        )
        for i, p in enumerate(xyz)
    ]
    return neuroglancer.LocalAnnotationLayer(
        dimensions=coordinate_space(voxel_size),
        annotation_properties=props,
        annotations=annotations,
        annotation_color=color,
        shader=point_shader(size=size, opacity=opacity, color_by_score=norm is not None),
    )


def oriented_point_layer(
    points: Any,
    angles: Any,
    *,
    voxel_size: float | Sequence[float] | None = None,
    line_length: float = 10.0,
    line_width: float = 2.0,
    opacity: float = 1.0,
) -> neuroglancer.LocalAnnotationLayer:
    """Oriented picks: three lines per particle along its x, y, z axes (red, green, blue).

    Parameters
    ----------
    points
        `(n, 3)` ``(z, y, x)`` voxel positions.
    angles
        `(n, 3)` ``(phi, theta, psi)`` ZYZ degrees (corrscan/RELION convention; the axes are
        :func:`~corrscan.contrast.picks.particle_axes`).
    line_length
        Line length in voxels.
    """
    xyz = _xyz(points)
    ang = np.asarray(angles, dtype=np.float64)
    if ang.shape != xyz.shape:
        raise InputError(f"angles must have shape {xyz.shape} (phi, theta, psi), got {ang.shape}")
    if line_length <= 0:
        raise InputError(f"line_length must be > 0 voxels, got {line_length}")
    axes = particle_axes(ang) if len(ang) else np.zeros((0, 3, 3))
    vs = _voxel_zyx(voxel_size)[::-1]  # x, y, z Å per voxel
    # A unit direction in Å space drawn line_length voxels long (anisotropic voxels handled).
    ends = xyz[:, None, :] + line_length * axes / vs * vs.min()
    annotations = [
        neuroglancer.LineAnnotation(
            id=f"{i}-{k}",
            point_a=[float(v) for v in xyz[i]],
            point_b=[float(v) for v in ends[i, k]],
            props=[float(k)],
        )
        for i in range(xyz.shape[0])
        for k in range(3)
    ]
    return neuroglancer.LocalAnnotationLayer(
        dimensions=coordinate_space(voxel_size),
        annotation_properties=[
            neuroglancer.AnnotationPropertySpec(id="axis", type="float32", default=0.0)
        ],
        annotations=annotations,
        shader=oriented_point_shader(line_width=line_width, opacity=opacity),
    )


def picks_layers(
    picks: Picks,
    *,
    voxel_size: float | Sequence[float] | None = None,
    name: str = "picks",
    color: str = "#ffff00",
    size: float = 8.0,
    line_length: float = 10.0,
) -> dict[str, neuroglancer.LocalAnnotationLayer]:
    """``{name: point layer}`` plus ``{name + "-axes": oriented layer}`` when picks have angles."""
    layers: dict[str, Any] = {
        name: point_layer(
            picks.coordinates, voxel_size=voxel_size, scores=picks.scores, color=color, size=size
        )
    }
    if picks.angles is not None:
        layers[f"{name}-axes"] = oriented_point_layer(
            picks.coordinates, picks.angles, voxel_size=voxel_size, line_length=line_length
        )
    return layers


def viewer_state(
    layers: Mapping[str, Any] | Sequence[tuple[str, Any]],
    *,
    voxel_size: float | Sequence[float] | None = None,
    shape: Sequence[int] | None = None,
    position: Sequence[float] | None = None,
    layout: str = "4panel",
    projection_orientation: Sequence[float] = DEFAULT_PROJECTION_ORIENTATION,
    cross_section_scale: float | None = None,
    projection_scale: float | None = None,
    show_slices: bool | None = None,
    show_axis_lines: bool = True,
    gpu_memory_limit_gb: float = 1.5,
    hidden: Sequence[str] = (),
    title: str | None = None,
) -> neuroglancer.ViewerState:
    """Combine layers into a full viewer state.

    Parameters
    ----------
    layers
        ``{name: layer}`` (or ``[(name, layer), ...]``) in display order; the first is selected.
    voxel_size
        Å; sets the global dimensions ``x, y, z``.
    shape
        ``(z, y, x)`` of the tomogram: the view is centred on voxel ``N // 2`` per axis, the 3D
        view zoomed to fit (``projection_scale = 1.1 · max(shape)``) and the slices to about 400
        screen pixels (``cross_section_scale = max(y, x) / 400`` voxels per pixel) unless given.
    position
        ``(z, y, x)`` voxel position of the view (overrides ``shape``'s centre).
    layout
        Neuroglancer layout (``"4panel"``, ``"xy"``, ``"3d"``, ``"xy-3d"`` ...).
    show_slices
        Cross-sections in the 3D view; default: off when an image layer volume-renders.
    gpu_memory_limit_gb
        Neuroglancer's GPU memory limit.
    hidden
        Names of layers added but not shown.
    """
    items = list(layers.items()) if isinstance(layers, Mapping) else list(layers)
    if not items:
        raise InputError("viewer_state needs at least one layer")
    if layout not in _LAYOUTS:
        raise InputError(f"unknown layout {layout!r}: use one of {', '.join(_LAYOUTS)}")
    q = np.asarray(projection_orientation, dtype=np.float64)
    if q.shape != (4,) or not np.isclose(np.linalg.norm(q), 1.0, atol=1e-6):
        raise InputError(
            "projection_orientation must be a unit quaternion (x, y, z, w), "
            f"got {projection_orientation}"
        )
    state = neuroglancer.ViewerState()
    state.dimensions = coordinate_space(voxel_size)
    for name, layer in items:
        state.layers.append(name=str(name), layer=layer, visible=str(name) not in set(hidden))
    if position is not None:
        p = np.asarray(position, dtype=np.float64)
        state.position = [float(v) for v in p[::-1]]
    elif shape is not None:
        sh = [int(s) for s in shape][-3:]
        state.position = [float(s // 2) for s in sh[::-1]]
    if shape is not None:
        sh = [int(s) for s in shape]
        if projection_scale is None:
            projection_scale = 1.1 * max(sh)
        if cross_section_scale is None:
            cross_section_scale = max(sh[-2:]) / 400.0
    if projection_scale is not None:
        state.projection_scale = float(projection_scale)
    if cross_section_scale is not None:
        state.cross_section_scale = float(cross_section_scale)
    state.projection_orientation = [float(v) for v in q]
    if show_slices is None:
        show_slices = not any(
            isinstance(layer, neuroglancer.ImageLayer)
            and layer.volume_rendering_mode in ("on", True, "max", "min")
            for _, layer in items
        )
    state.show_slices = bool(show_slices)
    state.show_axis_lines = bool(show_axis_lines)
    state.hide_cross_section_background_3d = True
    state.cross_section_background_color = "#000000"
    state.gpu_memory_limit = int(gpu_memory_limit_gb * 1e9)
    state.layout = layout
    state.selected_layer.layer = str(items[0][0])
    state.selected_layer.visible = True
    if title is not None:
        state.title = title
    return state


def tomogram_state(
    source: Any,
    limits: Sequence[float],
    *,
    voxel_size: float | Sequence[float] | None = None,
    shape: Sequence[int] | None = None,
    name: str = "tomogram",
    volume_rendering: bool = False,
    volume_rendering_limits: Sequence[float] | None = None,
    picks: Picks | None = None,
    segmentation: Any = None,
    layout: str = "4panel",
) -> neuroglancer.ViewerState:
    """One-call state: image layer with the limits (+ volume rendering), picks, segmentation.

    ``shape`` defaults to the array's shape for array sources.
    """
    if shape is None and hasattr(source, "shape"):
        shape = tuple(source.shape)
    layers: dict[str, Any] = {
        name: image_layer(
            source,
            limits,
            voxel_size=voxel_size,
            volume_rendering=volume_rendering,
            volume_rendering_limits=volume_rendering_limits,
        )
    }
    if segmentation is not None:
        layers["segmentation"] = segmentation_layer(segmentation, voxel_size=voxel_size)
    if picks is not None:
        layers.update(picks_layers(picks, voxel_size=voxel_size))
    return viewer_state(layers, voxel_size=voxel_size, shape=shape, layout=layout)


def state_json(state: neuroglancer.ViewerState) -> dict[str, Any]:
    """The state as plain JSON (a dict), as Neuroglancer stores it."""
    return state.to_json()


def _has_local_sources(state: neuroglancer.ViewerState) -> bool:
    for managed in state.layers:
        layer = managed.layer
        if isinstance(layer, neuroglancer.LocalAnnotationLayer):
            continue
        for src in getattr(layer, "source", []) or []:
            url = src.url
            if not isinstance(url, str) or url.startswith("python://"):
                return True
    return False


def state_url(
    state: neuroglancer.ViewerState, prefix: str = "https://neuroglancer-demo.appspot.com/"
) -> str:
    """Shareable URL ``prefix#!<state JSON>`` (Neuroglancer's URL encoding).

    Raises :class:`InputError` if a layer is served from a local array (the URL would not work
    outside this process): use URL sources (:func:`source_url`) for shareable states.
    """
    if _has_local_sources(state):
        raise InputError(
            "state has layers backed by local arrays; give URL sources (source_url) to share it"
        )
    return neuroglancer.to_url(state, prefix=prefix.rstrip("/") + "/")

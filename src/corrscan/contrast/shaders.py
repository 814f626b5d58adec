"""GLSL shaders for Neuroglancer layers: image contrast (2D and volume rendering), picks.

Conventions
-----------
- Contrast controls are Neuroglancer ``invlerp`` controls: ``range`` = the contrast limits
  (mapped to 0 and 1), ``window`` = the slider's extent, padded around the limits by a fraction
  of their width (2D: 20 %, volume rendering: 200 %, as in the portal's states).
- ``invert_contrast`` (2D, default off) and ``invert_contrast_3d`` (volume rendering, default
  on: dense matter, dark in cryo-ET, renders bright and opaque) are checkboxes.
- ``hide_outside_3d`` makes voxels beyond the low limit transparent in volume rendering (after
  inversion), e.g. to hide gold fiducials.
- Oriented picks are drawn as three lines per particle coloured by axis: x red, y green, z blue.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from corrscan.errors import InputError

__all__ = [
    "image_shader",
    "oriented_point_shader",
    "padded_window",
    "point_shader",
]


def _fmt(v: float) -> str:
    return f"{float(v):.9g}"


def padded_window(limits: Sequence[float], padding: float) -> tuple[float, float]:
    """Slider window ``limits ± padding · |high - low|`` (limits given in either order).

    A zero-width window (constant data) is widened by 1 data unit so the control stays usable.
    """
    lo, hi = sorted(float(v) for v in limits)
    if padding < 0:
        raise InputError(f"window padding must be >= 0, got {padding}")
    width = hi - lo
    if width <= 0:
        return lo - 1.0, hi + 1.0
    return lo - padding * width, hi + padding * width


def _check_limits(limits: Sequence[float], name: str) -> tuple[float, float]:
    vals = tuple(float(v) for v in limits)
    if len(vals) != 2 or not all(np.isfinite(vals)):
        raise InputError(f"{name} must be two finite numbers (low, high), got {limits!r}")
    return vals  # type: ignore[return-value]


def image_shader(
    limits: Sequence[float],
    *,
    window_padding: float = 0.2,
    invert: bool = False,
    volume_rendering_limits: Sequence[float] | None = None,
    volume_rendering_padding: float = 2.0,
    invert_3d: bool = True,
    hide_outside_3d: bool = False,
) -> str:
    """GLSL of an image layer with contrast/invert controls and, optionally, volume rendering.

    Parameters
    ----------
    limits
        ``(low, high)`` 2D contrast limits (data units).
    window_padding
        2D slider window padding, fraction of the limits' width.
    invert
        Default of the 2D ``invert_contrast`` checkbox.
    volume_rendering_limits
        ``(low, high)`` for volume rendering; ``None``: no volume-rendering branch.
    volume_rendering_padding, invert_3d, hide_outside_3d
        Volume-rendering window padding and checkbox defaults.
    """
    lo, hi = _check_limits(limits, "limits")
    wlo, whi = padded_window((lo, hi), window_padding)
    lines = [
        f"#uicontrol invlerp contrast(range=[{_fmt(lo)}, {_fmt(hi)}], "
        f"window=[{_fmt(wlo)}, {_fmt(whi)}])",
        f"#uicontrol bool invert_contrast checkbox(default={str(bool(invert)).lower()})",
    ]
    body_2d = [
        "  float v = contrast();",
        "  if (invert_contrast) { v = 1.0 - v; }",
        "  emitGrayscale(v);",
    ]
    if volume_rendering_limits is None:
        return "\n".join([*lines, "void main() {", *body_2d, "}", ""])
    vlo, vhi = _check_limits(volume_rendering_limits, "volume_rendering_limits")
    vwlo, vwhi = padded_window((vlo, vhi), volume_rendering_padding)
    lines += [
        f"#uicontrol invlerp contrast_3d(range=[{_fmt(vlo)}, {_fmt(vhi)}], "
        f"window=[{_fmt(vwlo)}, {_fmt(vwhi)}], clamp=false)",
        f"#uicontrol bool invert_contrast_3d checkbox(default={str(bool(invert_3d)).lower()})",
        f"#uicontrol bool hide_outside_3d checkbox(default={str(bool(hide_outside_3d)).lower()})",
    ]
    body_3d = [
        "  if (VOLUME_RENDERING) {",
        "    float w = contrast_3d();",
        "    if (invert_contrast_3d) { w = 1.0 - w; }",
        "    if (hide_outside_3d && w > 1.0) { w = 0.0; }",
        "    w = clamp(w, 0.0, 1.0);",
        "    emitIntensity(w);",
        "    emitGrayscale(w);",
        "    return;",
        "  }",
    ]
    return "\n".join([*lines, "void main() {", *body_3d, *body_2d, "}", ""])


def point_shader(*, size: float = 8.0, opacity: float = 1.0, color_by_score: bool = False) -> str:
    """Point annotations: ``point_size`` (screen pixels) and ``opacity`` sliders.

    With ``color_by_score`` the ``score`` property (normalised to [0, 1] beforehand) maps from
    blue (low) to yellow (high); otherwise the layer's ``annotationColor`` is used.
    """
    if size <= 0 or not 0 <= opacity <= 1:
        raise InputError(f"point size must be > 0 and opacity in [0, 1], got {size}, {opacity}")
    color = (
        "vec3 c = mix(vec3(0.1, 0.3, 1.0), vec3(1.0, 0.9, 0.1), clamp(prop_score(), 0.0, 1.0));"
        if color_by_score
        else "vec3 c = defaultColor().rgb;"
    )
    return "\n".join(
        [
            f"#uicontrol float point_size slider(min=1, max=40, default={_fmt(size)})",
            f"#uicontrol float opacity slider(min=0, max=1, default={_fmt(opacity)})",
            "void main() {",
            f"  {color}",
            "  setColor(vec4(c, opacity));",
            "  setPointMarkerSize(point_size);",
            "}",
            "",
        ]
    )


def oriented_point_shader(*, line_width: float = 2.0, opacity: float = 1.0) -> str:
    """Line annotations with an ``axis`` property (0, 1, 2) coloured red, green, blue."""
    if line_width <= 0 or not 0 <= opacity <= 1:
        raise InputError(
            f"line width must be > 0 and opacity in [0, 1], got {line_width}, {opacity}"
        )
    return "\n".join(
        [
            f"#uicontrol float line_width slider(min=0.5, max=10, default={_fmt(line_width)})",
            f"#uicontrol float opacity slider(min=0, max=1, default={_fmt(opacity)})",
            "void main() {",
            "  float a = prop_axis();",
            "  vec3 c = a < 0.5 ? vec3(1.0, 0.0, 0.0)",
            "         : (a < 1.5 ? vec3(0.0, 1.0, 0.0) : vec3(0.0, 0.0, 1.0));",
            "  setColor(vec4(c, opacity));",
            "  setLineWidth(line_width);",
            "  setEndpointMarkerSize(0.0, 0.0);",
            "}",
            "",
        ]
    )

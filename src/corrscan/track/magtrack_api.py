"""MagTrack-compatible API: the public functions of MagTrack 1.0.0 on corrscan's kernels.

Switch with one import (``from corrscan.track import magtrack_api as magtrack``): same names,
signatures, defaults, return tuples and the `(n_pixels, n_pixels, n_images)` layout (frame index
last; x = column index, y = row index, pixels, origin at the first pixel's centre). Written from
MagTrack's documented behaviour (no MagTrack code). NumPy, CuPy or torch in; the same kind out on
the same device (``stack_to_xyzp_advanced`` returns NumPy, as MagTrack's does).

Differences, all deliberate:

- never a failed batch: a NaN estimate, a blank frame or a bead at the edge gives NaN for that
  frame only (MagTrack raises ``IndexError`` for the whole batch); indices are clipped;
- inputs are never modified (MagTrack's ``binmean`` clips ``x`` in place and
  ``fft_profile_with_center`` multiplies the caller's stack);
- integer camera frames are accepted everywhere;
- ``radial_profile`` uses interpolated (sub-pixel) sampling of circles instead of nearest-bin
  histograms, so profiles do not jump with the sub-pixel bead position (bin 0 = centre sample);
- ``lookup_z`` refines the best LUT plane on a cubic-spline-interpolated table
  (``method="spline"``, default) instead of a 7-point parabola on the Pearson curve
  (``method="parabola"`` keeps MagTrack's computation);
- ``fft_profile_with_center`` puts the window at column x, row y (MagTrack transposes it);
- ``stack_to_xyzp`` runs corrscan's native tracker (Fourier symmetry-centre x, y; interpolated
  profiles; spline z) and returns MagTrack's ``(x, y, z, profiles)``;
  ``stack_to_xyzp_advanced`` with stage options runs MagTrack's stage chain on these functions;
- no import side effects (no ``np.seterr``, no warnings), explicit ``__all__``;
- ``stack_to_xyzp`` and ``stack_to_xyzp_advanced`` run with one torch CPU thread (the native
  ``TrackConfig.cpu_threads`` default; the caller's count is restored afterwards), in
  memory-planned batches.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
import torch.nn.functional as F

from corrscan.core.arrays import as_numpy, unwrap
from corrscan.errors import InputError
from corrscan.track.pipeline import TrackConfig, cpu_threads, crop_rois, run_batched
from corrscan.track.profiles import radial_kernel
from corrscan.track.xy import com_kernel
from corrscan.track.zlut import ZLUT, lookup_kernel

__all__ = [
    "LookupZProfileSizeError",
    "LookupZProfileSizeWarning",
    "auto_conv",
    "auto_conv_multiline",
    "auto_conv_multiline_sub_pixel",
    "auto_conv_sub_pixel",
    "binmean",
    "center_of_mass",
    "crop_stack_to_rois",
    "fft_profile",
    "fft_profile_with_center",
    "gaussian",
    "gaussian_2d",
    "lookup_z",
    "parabolic_vertex",
    "pearson",
    "qi",
    "radial_profile",
    "stack_to_xyzp",
    "stack_to_xyzp_advanced",
]


class LookupZProfileSizeError(InputError):
    """The profiles' bin count does not match the Z-LUT (``zlut.shape[0] - 1``)."""


class LookupZProfileSizeWarning(UserWarning):
    """The Z-LUT has fewer planes than ``n_local``: the coarse (argmax) z is returned."""


# ---- helpers ---------------------------------------------------------------------------------
def _float(t: torch.Tensor) -> torch.Tensor:
    return t if t.is_floating_point() else t.to(torch.float64)


def _stack(stack: Any, *, square: bool = True) -> tuple[torch.Tensor, Any]:
    """`(n_px, n_px, n_images)` -> float tensor view `(n_images, n_px, n_px)` and restore."""
    t, restore = unwrap(stack, name="stack")
    if t.ndim != 3:
        raise InputError(
            f"stack must be 3-D (n_pixels, n_pixels, n_images), got shape {tuple(t.shape)}"
        )
    if square and t.shape[0] != t.shape[1]:
        raise InputError(f"stack frames must be square, got {t.shape[0]} x {t.shape[1]}")
    return _float(t).permute(2, 0, 1), restore


def _vec(v: Any, n: int, like: torch.Tensor, name: str) -> torch.Tensor:
    t = unwrap(v, name=name)[0].to(device=like.device, dtype=like.dtype).reshape(-1)
    if t.numel() == 1:
        t = t.expand(n)
    if t.numel() != n:
        raise InputError(f"{name} has {t.numel()} values for {n} images: give one per image")
    return t


def _autoconv_same(line: torch.Tensor) -> torch.Tensor:
    """'same'-length autoconvolution of `(n, W)` lines (full index ``k + (W - 1) // 2``)."""
    w = line.shape[-1]
    size = 2 * w
    spec = torch.fft.rfft(line, n=size)
    full = torch.fft.irfft(spec * spec, n=size)[:, : 2 * w - 1]
    start = (w - 1) // 2
    return full[:, start : start + w]


def _windowed_lines(
    img: torch.Tensor, x0: torch.Tensor, y0: torch.Tensor, half: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rows around round(y0) (for x) and columns around round(x0) (for y), mean removed and
    Gaussian-windowed (sigma W / 6) at the estimate; NaN estimates give zero lines + bad mask."""
    n, h, w = img.shape
    good = torch.isfinite(x0) & torch.isfinite(y0)
    xs = torch.where(good, x0, torch.full_like(x0, w // 2))
    ys = torch.where(good, y0, torch.full_like(y0, h // 2))
    off = torch.arange(-half, half + 1, device=img.device)
    rows = (torch.round(ys).long()[:, None] + off).clamp(0, h - 1)  # (n, k)
    cols = (torch.round(xs).long()[:, None] + off).clamp(0, w - 1)
    bi = torch.arange(n, device=img.device)[:, None]
    line_x = img[bi, rows, :].mean(dim=1)  # (n, W)
    line_y = img[bi, :, cols].mean(dim=1)  # (n, H)
    cx = torch.arange(w, dtype=img.dtype, device=img.device)
    cy = torch.arange(h, dtype=img.dtype, device=img.device)
    line_x = (line_x - line_x.mean(-1, keepdim=True)) * torch.exp(
        -0.5 * ((cx - xs[:, None]) / (w / 6.0)) ** 2
    )
    line_y = (line_y - line_y.mean(-1, keepdim=True)) * torch.exp(
        -0.5 * ((cy - ys[:, None]) / (h / 6.0)) ** 2
    )
    return line_x, line_y, good


def _pv(data: torch.Tensor, est: torch.Tensor, n_local: int, weighted: bool) -> torch.Tensor:
    """MagTrack's parabolic vertex on `(n, n_points)` (torch; float64 result)."""
    d = data.to(torch.float64)
    n, n_points = d.shape
    n_local = int(n_local)
    h = n_local // 2
    e = est.to(torch.float64).reshape(-1).expand(n)
    finite = torch.isfinite(e)
    v0 = torch.round(torch.where(finite, e, torch.zeros_like(e)))
    clipped = (v0 <= h) | (v0 >= n_points - h - 1) | ~finite
    v0 = v0.clamp(h, max(n_points - h - 1, h)).long()
    u = torch.arange(n_local, dtype=torch.float64, device=d.device)
    idx = (v0[:, None] - h + u.long()).clamp(0, n_points - 1)
    y = d.gather(1, idx)
    a_mat = torch.stack([u * u, u, torch.ones_like(u)], dim=1)  # (n_local, 3)
    wts = (h + 1 - (u - h).abs()) if weighted else torch.ones_like(u)
    aw = a_mat * (wts * wts)[:, None]
    proj = torch.linalg.solve(a_mat.T @ aw, aw.T)  # (3, n_local)
    coef = y @ proj.T  # (n, 3)
    vertex = -coef[:, 1] / (2.0 * coef[:, 0]) + v0.to(torch.float64) - h
    return torch.where(clipped, torch.full_like(vertex, float("nan")), vertex)


# ---- utilities -------------------------------------------------------------------------------
def binmean(x: Any, weights: Any, n_bins: int) -> Any:
    """Per-column mean of ``weights`` grouped by integer bin index ``x``.

    Parameters
    ----------
    x
        `(n_values,)` or `(n_values, n_datasets)` integer bin indices; indices outside
        ``[0, n_bins)`` are dropped. Not modified.
    weights
        `(n_values, n_datasets)` values.
    n_bins
        Number of bins.

    Returns
    -------
    `(n_bins, n_datasets)` means; empty bins are NaN.
    """
    w, restore = unwrap(weights, name="weights")
    w = _float(w)
    if w.ndim == 1:
        w = w[:, None]
    xi = unwrap(x, name="x")[0].to(w.device)
    if xi.ndim == 1:
        xi = xi[:, None].expand(-1, w.shape[1])
    xi = xi.to(torch.int64)
    if xi.shape != w.shape:
        raise InputError(f"x {tuple(xi.shape)} and weights {tuple(w.shape)} must match")
    idx = torch.where((xi >= 0) & (xi < n_bins), xi, torch.full_like(xi, n_bins))
    sums = torch.zeros((n_bins + 1, w.shape[1]), dtype=w.dtype, device=w.device)
    sums.scatter_add_(0, idx, w)
    cnt = torch.zeros_like(sums).scatter_add_(0, idx, torch.ones_like(w))
    return restore(sums[:n_bins] / cnt[:n_bins])


def pearson(x: Any, y: Any) -> Any:
    """Column-wise Pearson correlation: ``x`` `(n, m)`, ``y`` `(n, k)` -> `(k, m)`.

    NaN entries are ignored in the means and count as 0 after centring; a zero-variance column
    gives NaN.
    """
    xt, restore = unwrap(x, name="x")
    yt = unwrap(y, name="y")[0].to(xt.device)
    xt, yt = _float(xt), _float(yt).to(_float(xt).dtype)
    if xt.ndim == 1:
        xt = xt[:, None]
    if yt.ndim == 1:
        yt = yt[:, None]
    if xt.shape[0] != yt.shape[0]:
        raise InputError(
            f"x and y need the same number of rows, got {xt.shape[0]} and {yt.shape[0]}"
        )
    return restore(_pearson_t(xt, yt))


def _pearson_t(xt: torch.Tensor, yt: torch.Tensor) -> torch.Tensor:
    """Torch core of :func:`pearson`: `(n, m)`, `(n, k)` -> `(k, m)`."""
    xc = torch.nan_to_num(xt - torch.nanmean(xt, dim=0, keepdim=True), nan=0.0)
    yc = torch.nan_to_num(yt - torch.nanmean(yt, dim=0, keepdim=True), nan=0.0)
    num = yc.T @ xc
    den = torch.linalg.vector_norm(yc, dim=0)[:, None] * torch.linalg.vector_norm(xc, dim=0)[None]
    r = num / den
    return torch.where(den > 0, r, torch.full_like(r, float("nan")))


def gaussian(x: Any, mu: Any, sigma: Any) -> Any:
    """Unnormalised Gaussian ``exp(-(x - mu)^2 / (2 sigma^2))`` (broadcasting)."""
    xt, restore = unwrap(x, name="x")
    xt = _float(xt)
    mu_t = unwrap(mu, name="mu")[0].to(xt)
    s_t = unwrap(sigma, name="sigma")[0].to(xt)
    return restore(torch.exp(-((xt - mu_t) ** 2) / (2.0 * s_t**2)))


def gaussian_2d(x: Any, y: Any, mu_x: Any, mu_y: Any, sigma: Any) -> Any:
    """Gaussians on the grid ``x`` x ``y``: `(len(x), len(y), n_centres)`, **x on axis 0**
    (MagTrack's layout, the transpose of an image's (row, column))."""
    xt, restore = unwrap(x, name="x")
    xt = _float(xt).reshape(-1)
    yt = unwrap(y, name="y")[0].to(xt).reshape(-1)
    mx = unwrap(mu_x, name="mu_x")[0].to(xt).reshape(-1)
    my = unwrap(mu_y, name="mu_y")[0].to(xt).reshape(-1)
    st = unwrap(sigma, name="sigma")[0].to(xt).reshape(-1)
    d2 = (xt[:, None, None] - mx) ** 2 + (yt[None, :, None] - my) ** 2
    return restore(torch.exp(-d2 / (2.0 * st**2)))


def crop_stack_to_rois(stack: Any, rois: Any) -> Any:
    """Cut ROIs ``[top, bottom, left, right]`` out of a `(H, W, n_images)` stack.

    Returns `(w, w, n_images, n_roi)`; all ROIs must be squares of one size inside the frame
    (else :class:`corrscan.errors.InputError`, a ``ValueError``).
    """
    t, restore = unwrap(stack, name="stack")
    if t.ndim != 3:
        raise InputError(f"stack must be (H, W, n_images), got shape {tuple(t.shape)}")
    crops = unwrap(crop_rois(t.permute(2, 0, 1), rois), name="crops")[0]  # (n, n_roi, w, w)
    return restore(crops.permute(2, 3, 0, 1))


def parabolic_vertex(data: Any, vertex_est: Any, n_local: int, weighted: bool = True) -> Any:
    """Vertex of a least-squares parabola through ``n_local`` points around an estimate.

    Parameters
    ----------
    data
        `(n_datasets, n_points)`.
    vertex_est
        `(n_datasets,)` estimated vertex index; rounded to ``v0``.
    n_local
        Points in the fit, ``data[v0 - h ... v0 + h]`` with ``h = n_local // 2``.
    weighted
        Triangular weights ``h + 1 - |u - h|`` on the residuals (squared in the fit).

    Returns
    -------
    `(n_datasets,)` float64 vertex positions; NaN where ``v0`` reaches the limits
    (``v0 <= h`` or ``v0 >= n_points - h - 1``, as MagTrack) or the estimate is not finite.
    """
    d, restore = unwrap(data, name="data")
    d = _float(d)
    if d.ndim == 1:
        d = d[None]
    est = unwrap(vertex_est, name="vertex_est")[0].to(d.device)
    return restore(_pv(d, est, n_local, weighted))


# ---- xy --------------------------------------------------------------------------------------
def center_of_mass(stack: Any, background: str = "median") -> tuple[Any, Any]:
    """Centre of mass of ``|I - b|`` per frame (``b`` = median, mean or none).

    Returns ``(x, y)`` `(n_images,)`; zero mass gives NaN. Integer frames are accepted.
    """
    if background not in ("median", "mean", "none"):
        raise InputError(f"background must be 'median', 'mean' or 'none', got {background!r}")
    img, restore = _stack(stack)
    x, y = com_kernel(img, background)
    return restore(x), restore(y)


def auto_conv(stack: Any, x_old: Any, y_old: Any, return_conv: bool = False) -> Any:
    """Symmetry centre from the autoconvolution of the row through ``round(y_old)`` (-> x) and
    the column through ``round(x_old)`` (-> y), integer peak: 0.5-px resolution.

    Returns ``(x, y)``; with ``return_conv`` MagTrack's ``(col_max, row_max, col_con,
    row_con)``: the integer argmax of the column line's (-> y) and the row line's (-> x)
    'same'-length autoconvolutions, ``col_con`` `(W, n_images)`, ``row_con`` `(n_images, W)`
    (note the axis orders). NaN estimates give NaN for that frame.
    """
    return _auto_conv(stack, x_old, y_old, 0, None, return_conv)


def auto_conv_sub_pixel(stack: Any, x_old: Any, y_old: Any, n_local: int = 5) -> Any:
    """:func:`auto_conv` refined by :func:`parabolic_vertex` on the autoconvolution."""
    return _auto_conv(stack, x_old, y_old, 0, n_local, False)


def auto_conv_multiline(
    stack: Any, x_old: Any, y_old: Any, line_ratio: float = 0.05, return_conv: bool = False
) -> Any:
    """:func:`auto_conv` on the mean of ``2 h + 1`` adjacent rows/columns,
    ``h = int(W * line_ratio // 2)`` (rows beyond the frame are clipped to the edge)."""
    w = _stack(stack)[0].shape[-1]
    return _auto_conv(stack, x_old, y_old, int(w * line_ratio // 2), None, return_conv)


def auto_conv_multiline_sub_pixel(
    stack: Any, x_old: Any, y_old: Any, line_ratio: float = 0.1, n_local: int = 5
) -> Any:
    """:func:`auto_conv_multiline` refined by :func:`parabolic_vertex` (note MagTrack's
    different default ``line_ratio``)."""
    w = _stack(stack)[0].shape[-1]
    return _auto_conv(stack, x_old, y_old, int(w * line_ratio // 2), n_local, False)


def _auto_conv(
    stack: Any, x_old: Any, y_old: Any, half: int, n_local: int | None, return_conv: bool
) -> Any:
    img, restore = _stack(stack)
    n, _h, w = img.shape
    x0 = _vec(x_old, n, img, "x_old")
    y0 = _vec(y_old, n, img, "y_old")
    line_x, line_y, good = _windowed_lines(img, x0, y0, half)
    conv_x = _autoconv_same(line_x)
    conv_y = _autoconv_same(line_y)
    rho = (w - 1) // 2
    kx = conv_x.argmax(-1).to(torch.float64)
    ky = conv_y.argmax(-1).to(torch.float64)
    if n_local is not None:
        kx = _pv(conv_x, kx, n_local, True)
        ky = _pv(conv_y, ky, n_local, True)
    nan = torch.full_like(kx, float("nan"))
    x = torch.where(good, rho - (rho - kx) / 2.0, nan).to(img.dtype)
    y = torch.where(good, rho - (rho - ky) / 2.0, nan).to(img.dtype)
    if return_conv:  # MagTrack: (col_max, row_max, col_con (W, n), row_con (n, W)), raw argmax
        col_max = torch.where(good, ky, nan).to(img.dtype)
        row_max = torch.where(good, kx, nan).to(img.dtype)
        return restore((col_max, row_max, conv_y.T.contiguous(), conv_x))
    return restore(x), restore(y)


def qi(stack: Any, x_old: Any, y_old: Any) -> tuple[Any, Any]:
    """Three-point parabola refinement: intensity at the estimate and +-1 px along x and y
    (bicubic interpolation); ``d = (l - r) / (2 (l - 2 c + r))`` per axis.

    Only meaningful when the estimate sits on an intensity extremum (as in MagTrack). Non-finite
    estimates are never interpolated (NaN out); a flat neighbourhood gives NaN.
    """
    img, restore = _stack(stack)
    n, h, w = img.shape
    x0 = _vec(x_old, n, img, "x_old")
    y0 = _vec(y_old, n, img, "y_old")
    good = torch.isfinite(x0) & torch.isfinite(y0)
    xs = torch.where(good, x0, torch.zeros_like(x0))
    ys = torch.where(good, y0, torch.zeros_like(y0))
    dx = torch.tensor([0.0, -1.0, 1.0, 0.0, 0.0], dtype=img.dtype, device=img.device)
    dy = torch.tensor([0.0, 0.0, 0.0, -1.0, 1.0], dtype=img.dtype, device=img.device)
    gx = (xs[:, None] + dx) * (2.0 / (w - 1)) - 1.0
    gy = (ys[:, None] + dy) * (2.0 / (h - 1)) - 1.0
    grid = torch.stack([gx, gy], -1)[:, None]
    v = F.grid_sample(img[:, None], grid, mode="bicubic", padding_mode="border", align_corners=True)
    v = v[:, 0, 0]  # (n, 5)
    c, lx, rx, ly, ry = v.unbind(-1)
    eps = torch.finfo(img.dtype).eps
    denx = lx - 2 * c + rx
    deny = ly - 2 * c + ry
    nan = torch.full_like(c, float("nan"))
    x = torch.where((denx.abs() > eps) & good, xs + 0.5 * (lx - rx) / denx, nan)
    y = torch.where((deny.abs() > eps) & good, ys + 0.5 * (ly - ry) / deny, nan)
    return restore(x), restore(y)


# ---- profiles and z --------------------------------------------------------------------------
def radial_profile(stack: Any, x: Any, y: Any, oversample: int = 1) -> Any:
    """Radial profiles `(n_bins, n_images)`, ``n_bins = (W // 2) * oversample``, bin ``b`` at
    radius ``b / oversample`` px around ``(x, y)``, by interpolated sampling of circles (see
    :mod:`corrscan.track.profiles`); bins outside the frame or non-finite centres give NaN."""
    img, restore = _stack(stack)
    n, _h, w = img.shape
    xt = _vec(x, n, img, "x")
    yt = _vec(y, n, img, "y")
    good = torch.isfinite(xt) & torch.isfinite(yt)
    nb = (w // 2) * int(oversample)
    prof, _ = radial_kernel(
        img,
        torch.where(good, xt, torch.zeros_like(xt)),
        torch.where(good, yt, torch.zeros_like(yt)),
        nb,
        int(oversample),
    )
    prof = torch.where(good[:, None], prof, torch.full_like(prof, float("nan")))
    return restore(prof.T.contiguous())


def _fft_profile_t(img: torch.Tensor, oversample: int, rmin: float, rmax: float) -> torch.Tensor:
    n, h, w = img.shape
    mag = torch.fft.rfft2(img).abs()  # (n, H, W // 2 + 1)
    mag = torch.fft.fftshift(mag, dim=-2)
    ky = torch.arange(h, dtype=img.dtype, device=img.device) - h / 2
    kx = torch.arange(mag.shape[-1], dtype=img.dtype, device=img.device)
    q = torch.round(oversample * torch.sqrt(kx[None, :] ** 2 + ky[:, None] ** 2)).long()
    n_bins = round(w / 2 * rmax * oversample)
    start = round(w / 2 * rmin * oversample)
    q = q.reshape(-1)
    inside = q < n_bins
    member = torch.zeros((q.numel(), n_bins), dtype=img.dtype, device=img.device)
    sel = torch.nonzero(inside).squeeze(1)
    member[sel, q[sel]] = 1.0
    prof = (mag.reshape(n, -1) @ member) / member.sum(0)
    return prof[:, start:].T.contiguous()


def fft_profile(stack: Any, oversample: int = 4, rmin: float = 0.0, rmax: float = 0.5) -> Any:
    """Translation-invariant profile: ring means of ``|rFFT2|`` of each frame,
    `(n_bins - start, n_images)`.

    Ring ``q = round(oversample * |k|)`` with ``k`` in frequency-index units; ``n_bins =
    round(W / 2 * rmax * oversample)``, ``start = round(W / 2 * rmin * oversample)``. So
    ``rmax`` is a fraction of ``W / 2`` frequency *indices*: ``rmax = 1`` reaches Nyquist and
    the default 0.5 stops at half Nyquist (MagTrack's geometry, kept so LUT shapes match; its
    docstring calls 0.5 Nyquist). Empty rings are NaN.
    """
    img, restore = _stack(stack)
    return restore(_fft_profile_t(img, int(oversample), rmin, rmax))


def fft_profile_with_center(
    stack: Any,
    x: Any,
    y: Any,
    oversample: int = 4,
    rmin: float = 0.0,
    rmax: float = 0.5,
    gaus_factor: float = 6.0,
) -> Any:
    """:func:`fft_profile` of the frames times a Gaussian window (sigma ``W / gaus_factor``)
    centred at column ``x``, row ``y`` (the caller's stack is not modified)."""
    img, restore = _stack(stack)
    n, h, w = img.shape
    xt = _vec(x, n, img, "x")
    yt = _vec(y, n, img, "y")
    good = torch.isfinite(xt) & torch.isfinite(yt)
    cx = torch.arange(w, dtype=img.dtype, device=img.device)
    cy = torch.arange(h, dtype=img.dtype, device=img.device)
    s = w / gaus_factor
    win = torch.exp(
        -(
            (cx[None, None, :] - xt[:, None, None]) ** 2
            + (cy[None, :, None] - yt[:, None, None]) ** 2
        )
        / (2.0 * s * s)
    )
    prof = _fft_profile_t(img * win, int(oversample), rmin, rmax)
    prof = torch.where(good[None, :], prof, torch.full_like(prof, float("nan")))
    return restore(prof)


def lookup_z(profiles: Any, zlut: Any, n_local: int = 7, *, method: str = "spline") -> Any:
    """z of each profile from a MagTrack-layout Z-LUT.

    Parameters
    ----------
    profiles
        `(n_bins, n_images)` radial profiles.
    zlut
        `(1 + n_bins, n_ref)`: row 0 = reference z, rows 1... = reference profiles.
    n_local
        ``method="parabola"``: points of MagTrack's weighted parabola on the Pearson curve.
        Both methods: with fewer than ``n_local`` planes a :class:`LookupZProfileSizeWarning`
        is issued and the coarse z of the best plane returned.
    method
        ``"spline"`` (default): Pearson with every sub-plane of a natural-cubic-spline
        upsampled table (10 per step), 3-point parabola on the sub-planes. ``"parabola"``:
        MagTrack's computation. Radial bin 0 is ignored by both.

    Returns
    -------
    `(n_images,)` float64 z; NaN at the table's ends or for NaN profiles.
    """
    pt, restore = unwrap(profiles, name="profiles")
    pt = _float(pt).to(torch.float64)
    if pt.ndim == 1:
        pt = pt[:, None]
    lut = unwrap(zlut, name="zlut")[0].to(device=pt.device, dtype=torch.float64)
    if lut.ndim != 2 or pt.shape[0] != lut.shape[0] - 1:
        raise LookupZProfileSizeError(
            f"profiles have {pt.shape[0]} bins but the Z-LUT has {lut.shape[0] - 1} "
            f"(shape {tuple(lut.shape)}): measure profiles with the LUT's geometry"
        )
    if method not in ("spline", "parabola"):
        raise InputError(f"method must be 'spline' or 'parabola', got {method!r}")
    zref = lut[0]
    ref = lut[2:]  # drop bin 0
    meas = pt[1:]
    n_ref = ref.shape[1]
    r = _pearson_t(ref, meas)  # (n_images, n_ref), on the input's device
    r_clean = torch.nan_to_num(r, nan=-2.0)
    k = r_clean.argmax(dim=1)
    bad = ~torch.isfinite(r).all(dim=1)
    nan = torch.full((pt.shape[1],), float("nan"), dtype=torch.float64, device=pt.device)
    if n_ref < n_local:
        warnings.warn(
            f"Z-LUT has {n_ref} planes < n_local={n_local}: returning the coarse z of the best "
            "plane",
            LookupZProfileSizeWarning,
            stacklevel=2,
        )
        return restore(torch.where(bad, nan, zref[k]))
    if method == "parabola":
        v = _pv(r, k.to(torch.float64), n_local, True)
        idx = torch.arange(n_ref, dtype=torch.float64, device=pt.device)
        inside = torch.isfinite(v) & (v >= 0) & (v <= n_ref - 1)
        vc = torch.where(inside, v, torch.zeros_like(v))
        lo = vc.floor().long().clamp(max=n_ref - 2)
        frac = vc - idx[lo]
        z = zref[lo] + frac * (zref[lo + 1] - zref[lo])
        return restore(torch.where(inside & ~bad, z, nan))
    table = ZLUT(z=as_numpy(zref), profiles=as_numpy(lut[1:].T))
    zf, lf = table.fine(10, device=pt.device)
    w = torch.ones_like(meas.T)
    w = torch.cat([torch.zeros_like(w[:, :1]), w], dim=1)  # bin 0 ignored
    z, _r, _f = lookup_kernel(pt.T[:, None, :], w[:, None, :], zf, lf, upsample=10)
    return restore(torch.where(bad, nan, z[:, 0]))


# ---- pipelines -------------------------------------------------------------------------------
def stack_to_xyzp(stack: Any, zlut: Any = None) -> tuple[Any, Any, Any, Any]:
    """x, y, z and radial profiles of every frame with corrscan's native tracker.

    Parameters
    ----------
    stack
        `(n_px, n_px, n_images)` frames (float or integer; not modified).
    zlut
        MagTrack-layout Z-LUT `(1 + n_bins, n_ref)` with ``n_bins = n_px // 2`` (built with
        :func:`radial_profile`), or ``None`` (z all NaN). A bin-count mismatch warns
        (:class:`LookupZProfileSizeWarning`) and gives NaN z.

    Returns
    -------
    x, y, z
        `(n_images,)` float64 (pixels, pixels, LUT units); NaN for bad frames (blank, NaN
        pixels, bead at the edge, z beyond the table).
    profiles
        `(n_bins, n_images)`.
    """
    img, restore = _stack(stack)
    n_bins = img.shape[-1] // 2
    table = None
    if zlut is not None:
        lut = as_numpy(zlut)
        if lut.ndim != 2 or lut.shape[0] - 1 != n_bins:
            warnings.warn(
                f"Z-LUT has {lut.shape[0] - 1} bins but profiles have {n_bins}: z set to NaN",
                LookupZProfileSizeWarning,
                stacklevel=2,
            )
        else:
            table = ZLUT.from_magtrack(lut)
    cfg = TrackConfig(
        n_bins=n_bins,
        min_correlation=-1.0,  # MagTrack returns the best match whatever its correlation
    )  # float32 compute is ample (< 0.01 nm); one torch thread, batches planned from memory
    out = run_batched(img, cfg, table)
    f64 = torch.float64
    return (
        restore(out["x"].to(f64)),
        restore(out["y"].to(f64)),
        restore(out["z"].to(f64)),
        restore(out["profiles"].T.contiguous().to(img.dtype)),
    )


_STAGES = (
    "center_of_mass",
    "auto_conv",
    "auto_conv_multiline_sub_pixel",
    "radial_profile",
    "fft_profile",
    "lookup_z",
)
_FLAGS = ("n auto_conv_multiline_sub_pixel", "use fft_profile")


def stack_to_xyzp_advanced(stack: Any, zlut: Any = None, **kwargs: Any) -> tuple[Any, ...]:
    """MagTrack's configurable pipeline; always returns NumPy arrays.

    Without keyword arguments it is :func:`stack_to_xyzp`. With any of MagTrack's options it
    runs MagTrack's stage chain on this module's functions: :func:`center_of_mass` ->
    :func:`auto_conv` -> ``n`` x :func:`auto_conv_multiline_sub_pixel` ->
    :func:`radial_profile` (or :func:`fft_profile_with_center`) -> :func:`lookup_z`.

    Keyword arguments: per-stage option dicts under ``'center_of_mass'``, ``'auto_conv'``,
    ``'auto_conv_multiline_sub_pixel'``, ``'radial_profile'``, ``'fft_profile'``,
    ``'lookup_z'``; ``'n auto_conv_multiline_sub_pixel'`` (int, default 5) and
    ``'use fft_profile'`` (bool, default False). Pass them with ``**{...}`` (the keys contain
    spaces). Unknown keys raise :class:`corrscan.errors.InputError`.
    """
    unknown = set(kwargs) - set(_STAGES) - set(_FLAGS)
    if unknown:
        raise InputError(
            f"unknown option(s) {sorted(unknown)}: use {list(_STAGES)} (dicts) or {list(_FLAGS)}"
        )
    if not kwargs:
        return tuple(as_numpy(a) for a in stack_to_xyzp(stack, zlut))
    img, _ = _stack(stack)
    st = img.permute(1, 2, 0).to(torch.float64)  # (n_px, n_px, n) float64, as MagTrack casts
    opt = {k: dict(kwargs.get(k, {}) or {}) for k in _STAGES}
    with cpu_threads(TrackConfig().cpu_threads, st.device):  # as the native tracker
        x, y = center_of_mass(st, **opt["center_of_mass"])
        x, y = auto_conv(st, x, y, **opt["auto_conv"])
        for _ in range(int(kwargs.get("n auto_conv_multiline_sub_pixel", 5))):  # MagTrack's
            x, y = auto_conv_multiline_sub_pixel(st, x, y, **opt["auto_conv_multiline_sub_pixel"])
        if kwargs.get("use fft_profile", False):
            profiles = fft_profile_with_center(st, x, y, **opt["fft_profile"])
        else:
            profiles = radial_profile(st, x, y, **opt["radial_profile"])
        n = st.shape[-1]
        z = torch.full((n,), float("nan"), dtype=torch.float64)
        if zlut is not None:
            try:
                z = lookup_z(profiles, zlut, **opt["lookup_z"])
            except LookupZProfileSizeError as exc:
                warnings.warn(str(exc), LookupZProfileSizeWarning, stacklevel=2)
    return as_numpy(x), as_numpy(y), as_numpy(z), as_numpy(profiles)

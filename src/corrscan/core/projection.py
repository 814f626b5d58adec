"""Projections of 3D maps (central-slice theorem) and real-space rotation of volumes.

Matrix convention (see :mod:`corrscan.core.rotations`): ``R = euler_to_matrix(phi, theta,
psi) = Rz(phi) @ Ry(theta) @ Rz(psi)`` (scipy ``"ZYZ"``, Leopard-EM, transpose of RELION's
``A``). Coordinates ``r = (x, y, z)`` are in voxels relative to the centre voxel, index
``N // 2`` on every axis; arrays are indexed ``(z, y, x)``.

* :func:`rotate_volume`: ``out(r) = V(R @ r)`` (the map sampled at rotated coordinates,
  i.e. the reference actively rotated by ``R^T``: the particle at angles ``(phi, theta, psi)``).
* :func:`project`: ``P(y, x) = sum_z V(R @ (x, y, z))`` — the projection along z of
  ``rotate_volume(V, R)``, in voxel units (line sums). This is Leopard-EM's and RELION's
  projection at ``(phi, theta, psi)``. Fourier side (central-slice theorem):
  ``P^(ky, kx) = V^(R @ (kx, ky, 0))``.
* :func:`project_fourier`: the rfft2 of ``ifftshift(P)`` (the projection with its centre
  moved to index 0), i.e. the central slice itself, unnormalised like ``torch.fft.rfft2``;
  ``fftshift(irfft2(slice))`` is :func:`project`'s image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from corrscan.core.arrays import check_finite, check_ndim, unwrap
from corrscan.errors import InputError

__all__ = [
    "PreparedVolume",
    "bspline_prefilter",
    "prepare_volume_rfft",
    "project",
    "project_fourier",
    "project_real_space_reference",
    "rotate_volume",
    "sample_volume",
]


# --------------------------------------------------------------------------------------------
# Fourier-slice projection
# --------------------------------------------------------------------------------------------


@dataclass
class PreparedVolume:
    """A 3D map prepared for repeated central-slice extraction (:func:`prepare_volume_rfft`).

    Attributes
    ----------
    dft
        `(P, P, P // 2 + 1)` complex rfft of the padded (and gridding-corrected) map, centre
        moved to index 0 before the transform, then ``fftshift`` over the z and y axes
        (torch-fourier-slice's layout).
    shape
        ``(D, H, W)`` of the original map.
    padded_size
        ``P``.
    pad
        Padding factor requested.
    gridding_correction
        Whether the map was divided by ``sinc^2`` (trilinear-interpolation correction).
    """

    dft: torch.Tensor
    shape: tuple[int, int, int]
    padded_size: int
    pad: float
    gridding_correction: bool

    @property
    def device(self) -> torch.device:
        return self.dft.device

    def to(self, device: torch.device | str) -> PreparedVolume:
        """Copy to another device."""
        return PreparedVolume(
            self.dft.to(device), self.shape, self.padded_size, self.pad, self.gridding_correction
        )


def _sinc2(size: int, device: torch.device) -> torch.Tensor:
    """``sinc^2`` of the voxel index relative to the centre ``size // 2``, in units of size."""
    f = (torch.arange(size, device=device, dtype=torch.float64) - size // 2) / size
    return torch.sinc(f) ** 2


def prepare_volume_rfft(
    volume: Any,
    *,
    pad: float = 2.0,
    gridding_correction: bool = True,
    device: Any = None,
) -> PreparedVolume:
    """Prepare a cubic map for central slicing: pad, gridding-correct, rfft (once per map).

    Parameters
    ----------
    volume
        `(D, D, D)` real map (NumPy/CuPy/torch), indexed ``(z, y, x)``, centre at ``D // 2``.
    pad
        Padding factor >= 1: the map is zero-padded (centred) to ``P = D + 2 * floor(D (pad -
        1) / 2)`` per axis. Padding makes the trilinear interpolation of the transform more
        accurate; ``pad=1`` with ``gridding_correction=False`` reproduces Leopard-EM exactly.
    gridding_correction
        Divide the padded map by ``sinc^2(i / P)`` per axis (``i`` relative to the centre),
        which undoes the low-pass of trilinear interpolation in Fourier space.
    device
        Where to keep the transform (default: the volume's device).

    Returns
    -------
    PreparedVolume
        Pass it to :func:`project_fourier` / :func:`project`. Complex64 for float32 input,
        complex128 for float64 input.
    """
    t, _ = unwrap(volume, name="volume", device=device)
    check_ndim(t, 3, "volume", layout="(D, H, W)")
    if t.dtype not in (torch.float32, torch.float64):
        t = t.to(torch.float32)
    d, h, w = t.shape
    if not (d == h == w):
        raise InputError(
            f"volume must be cubic for Fourier slicing, got shape {tuple(t.shape)}: pad it"
        )
    if pad < 1.0:
        raise InputError(f"pad must be >= 1, got {pad}")
    p = int((d * (pad - 1.0)) // 2)
    size = d + 2 * p
    if p > 0:
        t = F.pad(t, [p] * 6)
    if gridding_correction:
        s = _sinc2(size, t.device).to(t.dtype)
        t = t / (s[:, None, None] * s[None, :, None] * s[None, None, :])
    dft = torch.fft.ifftshift(t, dim=(-3, -2, -1))
    dft = torch.fft.rfftn(dft, dim=(-3, -2, -1))
    dft = torch.fft.fftshift(dft, dim=(-3, -2))
    return PreparedVolume(dft, (d, h, w), size, float(pad), bool(gridding_correction))


def _check_rotations(r: torch.Tensor, name: str = "rotation_matrices") -> torch.Tensor:
    if r.ndim < 2 or tuple(r.shape[-2:]) != (3, 3):
        raise InputError(f"{name} must have shape (..., 3, 3), got {tuple(r.shape)}")
    return r


def _slice_coordinates(
    r: torch.Tensor, h: int, w: int, size: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sampling coordinates of central slices in a prepared (fftshifted z, y) rfft volume.

    Returns ``(idx_xyz, conj)``: `(n, 1, h, w // 2 + 1, 3)` voxel indices ``(x, y, z)`` of the
    padded transform at the rotated output frequencies ``R @ (kx, ky, 0)`` (``ky =
    fftfreq(h)``, ``kx = rfftfreq(w)``, cycles/voxel), and the `(n, h, w // 2 + 1)` bool mask of
    the samples taken from the Friedel mate (``kx' < 0``: conjugate the sample).
    """
    dt = r.dtype
    ky = torch.fft.fftfreq(h, device=r.device, dtype=dt)
    kx = torch.fft.rfftfreq(w, device=r.device, dtype=dt)
    kyy, kxx = torch.meshgrid(ky, kx, indexing="ij")
    k = torch.stack([kxx, kyy, torch.zeros_like(kxx)], dim=-1)  # (h, wr, 3) x, y, z
    q = torch.einsum("nij,hwj->nhwi", r, k)  # rotated frequencies (x, y, z)
    conj = q[..., 0] < 0
    q = torch.where(conj[..., None], -q, q)
    idx = q * size
    idx = idx + torch.tensor([0.0, size // 2, size // 2], dtype=dt, device=r.device)
    return idx[:, None], conj


def project_fourier(
    prepared: PreparedVolume,
    rotation_matrices: Any,
    *,
    output_shape: tuple[int, int] | None = None,
    fftfreq_max: float | None = None,
    method: str = "native",
) -> Any:
    """Central slices of a prepared map: the 2D DFTs of its projections.

    ``slice(ky, kx) = V^(R @ (kx, ky, 0))`` sampled by trilinear interpolation of the padded
    transform (Friedel mates taken for ``kx' < 0``), for the rfft frequencies of an
    ``(h, w)`` image (cycles/voxel).

    Parameters
    ----------
    prepared
        From :func:`prepare_volume_rfft`.
    rotation_matrices
        `(..., 3, 3)` ``R`` (corrscan/Leopard-EM convention; module docstring).
    output_shape
        ``(h, w)`` of the projection images (default the map's ``(H, W)``). The image is the
        projection wrapped periodically into an ``h x w`` box centred on ``(h//2, w//2)``
        (the usual central-slice result; keep the density inside the box).
    fftfreq_max
        Optional low-pass: frequencies with ``|k|`` above this (cycles/voxel) are zeroed.
    method
        ``"native"`` (default; any output size, float32 or float64, samples only the output
        frequencies) or ``"torch-fourier-slice"`` (``extract_central_slices_rfft_3d``;
        float32, ``output_shape`` = padded size, else cropped in real space; with
        ``pad=1, gridding_correction=False`` this is Leopard-EM's call).

    Returns
    -------
    slices
        `(..., h, w // 2 + 1)` complex: ``rfft2(ifftshift(P))`` for each projection ``P``
        (not fftshifted; DC at [0, 0]; unnormalised, so ``slices[..., 0, 0]`` is the sum of
        the projection); same array kind as ``rotation_matrices``.
    """
    r, restore = unwrap(rotation_matrices, name="rotation_matrices", device=prepared.device)
    _check_rotations(r)
    size = prepared.padded_size
    h, w = output_shape if output_shape is not None else prepared.shape[1:]
    batch = r.shape[:-2]
    rdt = torch.float64 if prepared.dft.dtype == torch.complex128 else torch.float32
    r2 = r.reshape(-1, 3, 3).to(rdt)
    if method == "native":
        idx, conj = _slice_coordinates(r2, h, w, size)
        n = r2.shape[0]
        vol = torch.view_as_real(prepared.dft).permute(3, 0, 1, 2)  # (2, P, P, P//2+1)
        vol5 = vol.unsqueeze(0).expand(n, *vol.shape)
        samples = _grid_sample_linear(vol5, idx, tuple(vol.shape[-3:]))[:, :, 0]  # (n,2,h,wr)
        sl = torch.complex(samples[:, 0], samples[:, 1])
        sl = torch.where(conj, sl.conj(), sl)
        if fftfreq_max is not None:
            ky = torch.fft.fftfreq(h, device=r2.device, dtype=rdt)
            kx = torch.fft.rfftfreq(w, device=r2.device, dtype=rdt)
            mask = (ky[:, None] ** 2 + kx[None, :] ** 2) <= fftfreq_max**2
            sl = sl * mask
    elif method == "torch-fourier-slice":
        from torch_fourier_slice import extract_central_slices_rfft_3d

        if h > size or w > size:
            raise InputError(f"output_shape {(h, w)} exceeds the padded map size {size}")
        sl = extract_central_slices_rfft_3d(
            volume_rfft=prepared.dft.to(torch.complex64),
            rotation_matrices=r2.to(torch.float32),
            fftfreq_max=fftfreq_max,
        )  # (n, P, P//2+1), rows fftshifted
        sl = torch.fft.ifftshift(sl, dim=-2)
        if (h, w) != (size, size):
            img = torch.fft.irfftn(sl, s=(size, size), dim=(-2, -1))  # centre at [0, 0]
            img = torch.fft.fftshift(img, dim=(-2, -1))  # centre at size // 2
            y0, x0 = size // 2 - h // 2, size // 2 - w // 2
            img = img[..., y0 : y0 + h, x0 : x0 + w]
            sl = torch.fft.rfftn(torch.fft.ifftshift(img, dim=(-2, -1)), dim=(-2, -1))
    else:
        raise InputError(f"method must be 'native' or 'torch-fourier-slice', got {method!r}")
    return restore(sl.reshape(*batch, *sl.shape[-2:]))


def project(
    volume: Any,
    rotation_matrices: Any,
    *,
    pad: float = 2.0,
    gridding_correction: bool = True,
    output_shape: tuple[int, int] | None = None,
    batch_size: int | None = None,
) -> Any:
    """Real-space projections of a 3D map by the central-slice theorem.

    Parameters
    ----------
    volume
        `(D, D, D)` map ``(z, y, x)`` or a :class:`PreparedVolume`.
    rotation_matrices
        `(..., 3, 3)` ``R``: ``P(y, x) = sum_z V(R @ (x, y, z))`` about the centre voxel.
    pad, gridding_correction
        See :func:`prepare_volume_rfft` (ignored for a :class:`PreparedVolume`).
    output_shape
        ``(h, w)``, default ``(H, W)`` of the map.
    batch_size
        Rotations per slicing call (default all at once).

    Returns
    -------
    projections
        `(..., h, w)` real, line sums in voxel units, centre at ``(h // 2, w // 2)``; same
        array kind as ``volume`` (or as ``rotation_matrices`` for a prepared map).
    """
    if isinstance(volume, PreparedVolume):
        prepared = volume
        _, restore = unwrap(rotation_matrices, name="rotation_matrices")
    else:
        vt, restore = unwrap(volume, name="volume")
        check_finite(vt, "volume")
        prepared = prepare_volume_rfft(vt, pad=pad, gridding_correction=gridding_correction)
    r, _ = unwrap(rotation_matrices, name="rotation_matrices", device=prepared.device)
    _check_rotations(r)
    batch = r.shape[:-2]
    r2 = r.reshape(-1, 3, 3)
    h, w = output_shape if output_shape is not None else prepared.shape[1:]
    bs = r2.shape[0] if batch_size is None else max(1, int(batch_size))
    outs = []
    for i in range(0, r2.shape[0], bs):
        sl = project_fourier(prepared, r2[i : i + bs], output_shape=(h, w))
        img = torch.fft.irfftn(sl, s=(h, w), dim=(-2, -1))
        outs.append(torch.fft.fftshift(img, dim=(-2, -1)))
    out = torch.cat(outs) if outs else torch.zeros(0, h, w, device=prepared.device)
    return restore(out.reshape(*batch, h, w))


# --------------------------------------------------------------------------------------------
# Real-space sampling, rotation and reference projection
# --------------------------------------------------------------------------------------------


def bspline_prefilter(volume: torch.Tensor, ndim: int = 3) -> torch.Tensor:
    """Cubic B-spline coefficients of the last ``ndim`` axes (mirror boundary, like scipy).

    Exact inverse of the sampled cubic B-spline kernel ``[1, 4, 1] / 6`` on the symmetric
    (``"mirror"``, period ``2N - 2``) extension of each axis, computed with FFTs. Tensor in,
    tensor out; same dtype.
    """
    out = volume
    for ax in range(-ndim, 0):
        n = out.shape[ax]
        if n < 3:
            continue
        inner = out.narrow(ax, 1, n - 2).flip(ax)
        ext = torch.cat([out, inner], dim=ax)  # period 2n - 2
        m = ext.shape[ax]
        k = torch.fft.rfftfreq(m, device=out.device, dtype=torch.float64)
        kern = ((4.0 + 2.0 * torch.cos(2.0 * math.pi * k)) / 6.0).to(out.dtype)
        shape = [1] * out.ndim
        shape[ax] = kern.numel()
        f = torch.fft.rfft(ext, dim=ax) / kern.reshape(shape)
        out = torch.fft.irfft(f, n=m, dim=ax).narrow(ax, 0, n)
    return out


def _normalised_grid(idx_xyz: torch.Tensor, shape: tuple[int, int, int]) -> torch.Tensor:
    """Voxel indices ``(x, y, z)`` -> ``grid_sample`` coordinates in [-1, 1] (align_corners)."""
    d, h, w = shape
    scale = torch.tensor(
        [2.0 / max(w - 1, 1), 2.0 / max(h - 1, 1), 2.0 / max(d - 1, 1)],
        dtype=idx_xyz.dtype,
        device=idx_xyz.device,
    )
    return idx_xyz * scale - 1.0


def _grid_sample_linear(
    vol5: torch.Tensor, idx_xyz: torch.Tensor, shape: tuple[int, int, int], mode: str = "bilinear"
) -> torch.Tensor:
    """Trilinear (or ``mode="nearest"``) samples of ``vol5`` `(B, C, D, H, W)` at voxel
    indices `(B, Do, Ho, Wo, 3)` ``(x, y, z)``; 0 outside. Returns `(B, C, Do, Ho, Wo)`."""
    grid = _normalised_grid(idx_xyz, shape)
    return F.grid_sample(vol5, grid, mode=mode, padding_mode="zeros", align_corners=True)


def _sample(vol4: torch.Tensor, idx_xyz: torch.Tensor, order: int) -> torch.Tensor:
    """Sample `(C, D, H, W)` at `(B, Do, Ho, Wo, 3)` index coordinates (x, y, z) -> `(B, C, ...)`.

    order 0 nearest, 1 trilinear, 3 cubic B-spline (``vol4`` must hold prefiltered
    coefficients) evaluated as 8 trilinear fetches (Sigg & Hadwiger 2005). Outside: 0.
    """
    b = idx_xyz.shape[0]
    shape = tuple(vol4.shape[-3:])
    if order in (0, 1):
        mode = "bilinear" if order == 1 else "nearest"
        return _grid_sample_linear(vol4.unsqueeze(0).expand(b, *vol4.shape), idx_xyz, shape, mode)
    if order != 3:
        raise InputError(f"order must be 0, 1 or 3, got {order}")
    # mirror-extend the coefficients by 2 voxels so that the spline is exact up to the edge
    # voxels; samples outside [0, N - 1] are set to 0 below
    d, h, w = shape
    upper = torch.tensor([w - 1, h - 1, d - 1], dtype=idx_xyz.dtype, device=idx_xyz.device)
    inside = ((idx_xyz >= -1e-6) & (idx_xyz <= upper + 1e-6)).all(dim=-1)
    pad_mode = "reflect" if min(shape) > 2 else "constant"
    coeff = F.pad(vol4.unsqueeze(0), [2] * 6, mode=pad_mode)[0]
    vol5 = coeff.unsqueeze(0).expand(b, *coeff.shape)
    shape = tuple(coeff.shape[-3:])
    t = idx_xyz + 2.0
    base = torch.floor(t)
    f = t - base
    f2 = f * f
    f3 = f2 * f
    # cubic B-spline weights w0..w3 folded into two linear fetches per axis:
    # g0 = w0 + w1 at base - 1 + w1 / g0, g1 = w2 + w3 at base + 1 + w3 / g1
    w1 = (4.0 - 6.0 * f2 + 3.0 * f3) / 6.0
    g0 = (1.0 - 3.0 * f + 3.0 * f2 - f3) / 6.0 + w1
    g1 = 1.0 - g0
    h0 = base - 1.0 + w1 / g0
    h1 = base + 1.0 + (f3 / 6.0) / g1
    del f, f2, f3, w1, base
    # normalised grid_sample coordinates of the two fetch positions per axis
    hn = (_normalised_grid(h0, shape), _normalised_grid(h1, shape))
    gs = (g0 * inside[..., None], g1 * inside[..., None])  # (x, y, z) weights, 0 outside
    del h0, h1, g0, g1, t
    out = None
    for cz in (0, 1):
        for cy in (0, 1):
            wzy = gs[cz][..., 2] * gs[cy][..., 1]
            for cx in (0, 1):
                grid = torch.stack([hn[cx][..., 0], hn[cy][..., 1], hn[cz][..., 2]], dim=-1)
                smp = F.grid_sample(
                    vol5, grid, mode="bilinear", padding_mode="zeros", align_corners=True
                )
                smp.mul_((wzy * gs[cx][..., 0])[:, None])
                out = smp if out is None else out.add_(smp)
    assert out is not None
    return out


def sample_volume(volume: torch.Tensor, idx_xyz: torch.Tensor, *, order: int = 1) -> torch.Tensor:
    """Interpolate a volume at arbitrary index coordinates (tensors only).

    Parameters
    ----------
    volume
        `(C, D, H, W)` tensor (float32/float64).
    idx_xyz
        `(B, Do, Ho, Wo, 3)` coordinates ``(x, y, z)`` in voxel indices (x indexes W).
    order
        0 nearest, 1 trilinear, 3 cubic B-spline (prefiltered here). Outside the volume the
        map is 0 (the cubic spline's coefficients are 0 beyond the edge).

    Returns
    -------
    samples
        `(B, C, Do, Ho, Wo)`.
    """
    coeff = bspline_prefilter(volume) if order == 3 else volume
    return _sample(coeff, idx_xyz.to(volume.dtype), order)


def _centered_coords(shape: tuple[int, int, int], dtype, device) -> torch.Tensor:
    """`(D, H, W, 3)` coordinates (x, y, z) relative to the centre voxel ``N // 2``."""
    d, h, w = shape
    z = torch.arange(d, dtype=dtype, device=device) - d // 2
    y = torch.arange(h, dtype=dtype, device=device) - h // 2
    x = torch.arange(w, dtype=dtype, device=device) - w // 2
    zz, yy, xx = torch.meshgrid(z, y, x, indexing="ij")
    return torch.stack([xx, yy, zz], dim=-1)


def _rotate_cubic_cpu(
    coeff: torch.Tensor, r: torch.Tensor, center_zyx: torch.Tensor
) -> torch.Tensor:
    """Order-3 :func:`rotate_volume` on the CPU with ``scipy.ndimage.affine_transform``.

    ``coeff`` `(C, D, H, W)` B-spline coefficients (mirror prefilter), ``r`` `(n, 3, 3)`,
    ``center_zyx`` `(3,)`. SciPy's ``mode="constant"`` (``prefilter=False``) evaluates the
    spline with mirrored coefficients inside ``[0, N - 1]`` and gives 0 outside, like the
    ``grid_sample`` form; the voxels whose source lies within that form's 1e-6 tolerance
    outside the box (exact edges hit with rounding, e.g. 90 degree turns) are evaluated
    with ``map_coordinates(mode="mirror")``. The tests check both forms agree to 1e-9.
    Returns `(n, C, D, H, W)` in ``coeff``'s dtype.
    """
    from scipy import ndimage

    src = coeff.detach().numpy()
    shape = src.shape[-3:]
    mats = r.detach().to(torch.float64).numpy()
    c = center_zyx.detach().to(torch.float64).numpy()
    out = np.empty((mats.shape[0], *src.shape), dtype=src.dtype)
    axes = [np.arange(n, dtype=np.float64) for n in shape]
    tol = 1e-6
    for i, rm in enumerate(mats):  # scipy is per volume; the spline cost dominates
        m = rm[::-1, ::-1]  # R acting on (x, y, z) -> the same map on (z, y, x) indices
        off = c - m @ c
        for ch in range(src.shape[0]):
            ndimage.affine_transform(
                src[ch], m, offset=off, output=out[i, ch], order=3, prefilter=False,
                mode="constant", cval=0.0,
            )  # fmt: skip
        # source positions per axis (rank-1 sums, cheap): inside with tolerance / strictly
        pos = [
            (m[a, 0] * axes[0])[:, None, None]
            + (m[a, 1] * axes[1])[None, :, None]
            + (m[a, 2] * axes[2] + off[a])[None, None, :]
            for a in range(3)
        ]
        loose = np.ones(shape, dtype=bool)
        strict = np.ones(shape, dtype=bool)
        for a, p in enumerate(pos):
            loose &= (p >= -tol) & (p <= shape[a] - 1 + tol)
            strict &= (p >= 0.0) & (p <= shape[a] - 1)
        band = np.nonzero(loose & ~strict)
        if band[0].size:
            pts = np.stack([p[band] for p in pos])
            for ch in range(src.shape[0]):
                out[i, ch][band] = ndimage.map_coordinates(
                    src[ch], pts, order=3, prefilter=False, mode="mirror"
                )
    return torch.from_numpy(out)


def rotate_volume(
    volume: Any,
    rotation_matrices: Any,
    *,
    order: int = 1,
    center: tuple[float, float, float] | None = None,
    prefiltered: bool = False,
    batch_size: int | None = None,
) -> Any:
    """Rotate 3D maps in real space, batched over rotations.

    ``out[n](r) = V(R_n @ (r - c) + c)`` with ``r = (x, y, z)`` voxel coordinates and ``c`` the
    centre (index ``N // 2`` per axis unless ``center`` is given): the map sampled at rotated
    coordinates, so ``project(V, R) ~= rotate_volume(V, R).sum(-3)`` and
    ``rotate_volume(rotate_volume(V, R1), R2) ~= rotate_volume(V, R1 @ R2)``. For a matrix
    ``M`` that actively rotates the map (pyTME), pass ``M.T``. Example: ``R = Rz(90 deg)``
    gives ``np.rot90(V, 1, axes=(1, 2))`` for odd sizes.

    Parameters
    ----------
    volume
        `(..., D, H, W)`; leading dims are treated as channels rotated together (e.g. a
        template and its mask).
    rotation_matrices
        `(n, 3, 3)` or `(3, 3)`.
    order
        0 nearest, 1 trilinear (``grid_sample``), 3 cubic B-spline with exact prefilter
        (like ``scipy.ndimage.affine_transform(order=3)``, mirror prefilter boundary),
        computed as 8 trilinear fetches on a GPU and with
        ``scipy.ndimage.affine_transform(prefilter=False)`` on the coefficients on the CPU
        (same values; 5-8x faster there). Samples outside the map are 0.
    center
        ``(z, y, x)`` centre of rotation in voxel indices (default ``N // 2`` per axis).
    prefiltered
        For ``order=3``: ``volume`` already holds :func:`bspline_prefilter` coefficients
        (skip the prefilter when rotating one map many times in batches).
    batch_size
        Rotations per interpolation call (bounds the `(batch, D, H, W, 3)` coordinate
        temporaries); default all at once.

    Returns
    -------
    rotated
        `(n, ..., D, H, W)` (no leading ``n`` for a single `(3, 3)` matrix); same array kind and
        float dtype as ``volume``.
    """
    vt, restore = unwrap(volume, name="volume")
    if vt.dtype not in (torch.float32, torch.float64):
        vt = vt.to(torch.float32)
    if vt.ndim < 3:
        raise InputError(f"volume must have shape (..., D, H, W), got {tuple(vt.shape)}")
    r, _ = unwrap(rotation_matrices, name="rotation_matrices", device=vt.device, dtype=vt.dtype)
    single = r.ndim == 2
    r = _check_rotations(r if not single else r[None])
    if r.ndim != 3:
        raise InputError(f"rotation_matrices must be (n, 3, 3) or (3, 3), got {tuple(r.shape)}")
    lead = vt.shape[:-3]
    d, h, w = vt.shape[-3:]
    v4 = vt.reshape(-1, d, h, w)
    if order == 3 and not prefiltered:
        v4 = bspline_prefilter(v4)
    if center is None:
        c = torch.tensor([w // 2, h // 2, d // 2], dtype=vt.dtype, device=vt.device)
    else:
        cz, cy, cx = center
        c = torch.tensor([cx, cy, cz], dtype=vt.dtype, device=vt.device)
    # coordinates relative to the centre c: index - c, (D, H, W, 3) as (x, y, z)
    rel = _centered_coords((d, h, w), vt.dtype, vt.device) + (
        torch.tensor([w // 2, h // 2, d // 2], dtype=vt.dtype, device=vt.device) - c
    )
    n = r.shape[0]
    if order == 3 and v4.device.type == "cpu" and min(d, h, w) > 2:
        # CPU: compiled SciPy spline evaluation on the coefficients (5-8x faster than the
        # 8-fetch grid_sample form there; same spline, same mirror extension, 0 outside)
        out = _rotate_cubic_cpu(v4, r, c.flip(0))
        out = out.reshape(n, *lead, d, h, w)
        return restore(out[0] if single else out)
    bs = n if batch_size is None else max(1, int(batch_size))
    outs = []
    for i in range(0, n, bs):
        # source coordinates R @ rel + c: (b, D, H, W, 3)
        src = torch.einsum("nij,dhwj->ndhwi", r[i : i + bs], rel) + c
        outs.append(_sample(v4, src, order))  # (b, C, D, H, W)
    out = torch.cat(outs) if len(outs) > 1 else outs[0]
    out = out.reshape(n, *lead, d, h, w)
    if single:
        out = out[0]
    return restore(out)


def project_real_space_reference(
    volume: Any,
    rotation_matrices: Any,
    *,
    order: int = 1,
    oversample: int = 1,
) -> Any:
    """Slow float64 real-space projection (line integrals) for tests and validation.

    ``P(y, x) = sum_z V(R @ (x, y, z))`` about the centre voxel, with ``V`` interpolated
    (``order`` 1 or 3) in float64 and the line extended to ``ceil(sqrt(3) * max(D, H, W))``
    samples so that no part of the map is missed; ``oversample`` > 1 samples the line at
    ``1/oversample`` voxel steps (the sum is scaled to voxel units).

    Parameters
    ----------
    volume
        `(D, H, W)` map.
    rotation_matrices
        `(n, 3, 3)` or `(3, 3)`.

    Returns
    -------
    projections
        `(n, H, W)` float64 (or `(H, W)` for one matrix); same array kind as ``volume``.
    """
    vt, restore = unwrap(volume, name="volume", dtype=torch.float64)
    check_ndim(vt, 3, "volume", layout="(D, H, W)")
    r, _ = unwrap(
        rotation_matrices, name="rotation_matrices", device=vt.device, dtype=torch.float64
    )
    single = r.ndim == 2
    r = _check_rotations(r if not single else r[None])
    d, h, w = vt.shape
    length = math.ceil(math.sqrt(3.0) * max(d, h, w)) * oversample
    zs = (torch.arange(length, dtype=torch.float64) - length // 2) / oversample
    y = torch.arange(h, dtype=torch.float64) - h // 2
    x = torch.arange(w, dtype=torch.float64) - w // 2
    zz, yy, xx = torch.meshgrid(zs, y, x, indexing="ij")
    rel = torch.stack([xx, yy, zz], dim=-1)  # (L, H, W, 3)
    c = torch.tensor([w // 2, h // 2, d // 2], dtype=torch.float64)
    coeff = bspline_prefilter(vt[None]) if order == 3 else vt[None]
    outs = []
    for i in range(r.shape[0]):  # reference implementation: memory over speed
        src = torch.einsum("ij,lhwj->lhwi", r[i], rel) + c
        s = _sample(coeff, src[None], order)[0, 0]  # (L, H, W)
        outs.append(s.sum(0) / oversample)
    out = torch.stack(outs)
    if single:
        out = out[0]
    return restore(out)

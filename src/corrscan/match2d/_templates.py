"""Template projections for 2D matching (tensor kernels, internal; on ``core.projection``).

Leopard-EM's projection convention (see :mod:`corrscan.core.rotations`): the projection at
``(phi, theta, psi)`` is ``P(y, x) = sum_z V(R @ (x, y, z))`` about the centre voxel ``D // 2``,
computed as a central slice of the map's 3D rfft by trilinear interpolation
(torch-fourier-slice). ``oversampling=1`` is Leopard-EM's exact procedure (no padding, no
gridding correction); ``oversampling=2`` zero-pads the map and divides by the sinc² of the
trilinear kernel (projections closer to true line integrals).
"""

from __future__ import annotations

import torch

from corrscan.core.projection import PreparedVolume, prepare_volume_rfft, project_fourier

PreparedTemplate = PreparedVolume


def prepare_template(volume: torch.Tensor, oversampling: int = 1) -> PreparedVolume:
    """Prepare a cubic `(D, D, D)` map for :func:`central_slices`."""
    return prepare_volume_rfft(
        volume.to(torch.float32), pad=float(oversampling), gridding_correction=oversampling > 1
    )


def template_box(prepared: PreparedVolume) -> int:
    """Side ``D`` of the template box."""
    return int(prepared.shape[-1])


def central_slices(prepared: PreparedVolume, rotation_matrices: torch.Tensor) -> torch.Tensor:
    """`(B, D, D // 2 + 1)` complex box-size slices (``rfft2(ifftshift(P))``), DC set to 0."""
    d = template_box(prepared)
    s = project_fourier(prepared, rotation_matrices, output_shape=(d, d))
    s[..., 0, 0] = 0
    return s


def slices_to_images(prepared: PreparedVolume, slices: torch.Tensor) -> torch.Tensor:
    """Real-space `(..., D, D)` images (centre at ``D // 2``) from (filtered) slices."""
    d = template_box(prepared)
    return torch.fft.fftshift(torch.fft.irfft2(slices, s=(d, d)), dim=(-2, -1))


def subtract_edge_mean(img: torch.Tensor) -> torch.Tensor:
    """Subtract, per image, the mean of the one-pixel frame of `(..., h, w)` images
    (Leopard-EM's edge mean)."""
    h, w = img.shape[-2:]
    total = (
        img[..., 0, :].sum(-1)
        + img[..., -1, :].sum(-1)
        + img[..., 1:-1, 0].sum(-1)
        + img[..., 1:-1, -1].sum(-1)
    )
    mean = total / (2 * w + 2 * (h - 2))
    return img - mean[..., None, None]


def project_batch(
    prepared: PreparedVolume, rotation_matrices: torch.Tensor, *, edge_mean: bool = True
) -> torch.Tensor:
    """Projections `(B, D, D)` (float32, centre at ``D // 2``, zero box mean before the
    optional edge-mean subtraction) for rotation matrices `(B, 3, 3)`."""
    img = slices_to_images(prepared, central_slices(prepared, rotation_matrices))
    return subtract_edge_mean(img) if edge_mean else img

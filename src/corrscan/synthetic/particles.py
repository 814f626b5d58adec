"""Synthetic particle image stacks with planted truth (for the likelihood job and its tests).

Particles are projections of Gaussian pseudo-atoms (unit mass each, standard deviation
``sigma`` Å), evaluated analytically on the image's DFT grid (no interpolation), rotated by a
known pose (core Euler convention: the projection of the model sampled at ``R r``, i.e. atoms
at ``R^T a``), shifted by a known image-frame shift, multiplied by a known astigmatic CTF
(:func:`corrscan.core.ctf.ctf_2d`), scaled, offset, and corrupted with white Gaussian noise.

Image model (real space, pixel ``p``, centre ``c = N // 2``)::

    image = amplitude · IDFT[ CTF · exp(-2πi k·(shift)) · P̂_R ](p) + offset + noise

with ``P̂_R(k) = (1/n) Σ_i exp(−2π² σ² |k|²) exp(−2πi k·(R^T a_i)_xy)`` (``k`` in cycles/Å).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from corrscan.core.ctf import ctf_2d
from corrscan.core.rotations import euler_to_matrix
from corrscan.errors import InputError

__all__ = ["project_atoms", "random_chain", "random_euler", "simulate_particles"]


def random_chain(
    n_atoms: int = 300, *, step: float = 3.8, radius: float = 30.0, seed: int = 0
) -> np.ndarray:
    """A compact random chain of ``n_atoms`` pseudo-atoms, `(n_atoms, 3)` Å, centred.

    Random walk with bond length ``step`` kept inside a sphere of ``radius`` Å (steps that
    would leave are redrawn).
    """
    if n_atoms < 1:
        raise InputError(f"n_atoms must be >= 1, got {n_atoms}")
    rng = np.random.default_rng(seed)
    pos = np.zeros((n_atoms, 3))
    for i in range(1, n_atoms):  # sequential by nature (a walk); n_atoms is small
        for _ in range(100):
            v = rng.standard_normal(3)
            cand = pos[i - 1] + step * v / np.linalg.norm(v)
            if np.linalg.norm(cand) <= radius:
                break
        pos[i] = cand
    return pos - pos.mean(axis=0)


def random_euler(n: int, *, seed: int = 0) -> np.ndarray:
    """``n`` uniformly distributed rotations as ZYZ Euler angles `(n, 3)` degrees."""
    rng = np.random.default_rng(seed)
    phi = rng.uniform(0, 360, n)
    theta = np.rad2deg(np.arccos(rng.uniform(-1, 1, n)))
    psi = rng.uniform(0, 360, n)
    return np.stack([phi, theta, psi], 1)


def project_atoms(
    coordinates: np.ndarray,
    euler: np.ndarray,
    *,
    n_pixels: int,
    pixel_size: float,
    sigma: float = 1.5,
    shifts: np.ndarray | None = None,
    ctf: np.ndarray | torch.Tensor | None = None,
) -> np.ndarray:
    """Projections of Gaussian atoms at poses ``euler`` `(M, 3)`, `(M, N, N)` float64.

    ``shifts`` `(M, 2)` ``(x, y)`` pixels moves each projection (image frame); ``ctf``
    `(M, N, N//2+1)` multiplies the rfft (optional). The image's sum equals 1 (unit total mass)
    before the CTF.
    """
    a = torch.as_tensor(np.array(coordinates, dtype=np.float64))
    e = np.array(euler, dtype=np.float64).reshape(-1, 3)  # writable copy
    m, n = e.shape[0], int(n_pixels)
    rot = euler_to_matrix(torch.from_numpy(e))  # (M, 3, 3)
    b = torch.einsum("ai,mij->maj", a, rot)[..., :2]  # (R^T a)_xy, (M, A, 2) Å
    ky = torch.fft.fftfreq(n, dtype=torch.float64)
    kx = torch.fft.rfftfreq(n, dtype=torch.float64)
    kyy, kxx = torch.meshgrid(ky, kx, indexing="ij")  # cycles/pixel
    c = n // 2
    out = np.empty((m, n, n), dtype=np.float64)
    env = torch.exp(-2.0 * np.pi**2 * sigma**2 * (kxx**2 + kyy**2) / pixel_size**2)
    for i0 in range(0, m, 16):  # batches bound memory: (16, N, N/2+1, A)
        bb = b[i0 : i0 + 16] / pixel_size  # pixels
        ph = (
            kxx[None, ..., None] * bb[:, None, None, :, 0]
            + kyy[None, ..., None] * bb[:, None, None, :, 1]
        )
        f = torch.exp(-2j * np.pi * ph).mean(dim=-1) * env  # (b, N, N/2+1)
        sh = (
            np.zeros((bb.shape[0], 2))
            if shifts is None
            else np.array(shifts, np.float64)[i0 : i0 + 16]
        )
        sh = torch.from_numpy(sh)
        tot = sh + c  # place the origin at the centre pixel, then shift
        f = f * torch.exp(
            -2j * np.pi * (kxx[None] * tot[:, 0, None, None] + kyy[None] * tot[:, 1, None, None])
        )
        if ctf is not None:
            f = f * torch.as_tensor(ctf[i0 : i0 + 16], dtype=torch.float64)
        out[i0 : i0 + bb.shape[0]] = torch.fft.irfft2(f, s=(n, n)).numpy()
    return out


def simulate_particles(
    coordinates: np.ndarray,
    *,
    n_images: int,
    n_pixels: int = 64,
    pixel_size: float = 2.0,
    sigma: float = 2.5,
    euler: np.ndarray | None = None,
    shifts: np.ndarray | None = None,
    max_shift: float = 1.0,
    defocus_range: tuple[float, float] = (8000.0, 20000.0),
    max_astigmatism: float = 500.0,
    voltage: float = 300.0,
    spherical_aberration: float = 2.7,
    amplitude_contrast: float = 0.1,
    b_factor: float = 0.0,
    snr: float | None = 0.1,
    noise_sigma: float | np.ndarray | None = None,
    amplitude: float | np.ndarray = 1.0,
    offset: float | np.ndarray = 0.0,
    apply_ctf: bool = True,
    return_clean: bool = False,
    seed: int = 0,
) -> tuple[np.ndarray, pd.DataFrame] | tuple[np.ndarray, pd.DataFrame, np.ndarray]:
    """Simulate ``n_images`` particles with known pose, shift, CTF, scale, offset and noise.

    Parameters
    ----------
    coordinates
        `(A, 3)` atom positions, Å (centred on the box centre).
    euler
        `(M, 3)` poses (degrees, core convention); default uniformly random.
    shifts
        `(M, 2)` image-frame shifts ``(x, y)`` in pixels; default uniform in ``±max_shift``.
    defocus_range, max_astigmatism
        Defocus U uniform in the range (Å); ``V = U − uniform(0, max_astigmatism)``; angle
        uniform in [0, 180).
    snr
        Signal variance / noise variance over the box (used when ``noise_sigma`` is None).
    noise_sigma
        Noise standard deviation per image (scalar or `(M,)`), overrides ``snr``.
    amplitude, offset
        Scale and constant added to the clean image (scalar or `(M,)`).
    apply_ctf
        ``False`` simulates without CTF (the truth table then has CTF ≡ 1 parameters).
    return_clean
        Also return the noise-free images (float64, amplitude applied, no offset).

    Returns
    -------
    images
        `(M, N, N)` float32.
    truth
        DataFrame with ``phi, theta, psi`` (deg), ``shift_x, shift_y`` (pixels),
        ``shift_x_angst, shift_y_angst``, CTF columns ``defocus_u, defocus_v,
        astigmatism_angle, voltage, spherical_aberration, amplitude_contrast, phase_shift,
        b_factor``, ``amplitude, offset, noise_sigma`` and the clean-image energy ``signal_ss``.
    """
    m = int(n_images)
    if m < 1:
        raise InputError(f"n_images must be >= 1, got {n_images}")
    rng = np.random.default_rng(seed)
    e = (
        random_euler(m, seed=seed + 1)
        if euler is None
        else np.asarray(euler, np.float64).reshape(m, 3)
    )
    sh = (
        rng.uniform(-max_shift, max_shift, (m, 2))
        if shifts is None
        else np.asarray(shifts, np.float64).reshape(m, 2)
    )
    if apply_ctf:
        du = rng.uniform(*defocus_range, m)
        dv = du - rng.uniform(0, max_astigmatism, m)
        ang = rng.uniform(0, 180, m)
        ctf_params = {
            "defocus_u": du,
            "defocus_v": dv,
            "astigmatism_angle": ang,
            "voltage": np.full(m, voltage),
            "spherical_aberration": np.full(m, spherical_aberration),
            "amplitude_contrast": np.full(m, amplitude_contrast),
            "phase_shift": np.zeros(m),
            "b_factor": np.full(m, b_factor),
        }
        ctf = ctf_2d(
            (n_pixels, n_pixels),
            pixel_size=pixel_size,
            defocus=torch.from_numpy(du),
            defocus_v=torch.from_numpy(dv),
            astigmatism_angle=torch.from_numpy(ang),
            voltage=voltage,
            spherical_aberration=spherical_aberration,
            amplitude_contrast=amplitude_contrast,
            b_factor=b_factor,
            dtype=torch.float64,
        )
    else:
        ctf = None
        ctf_params = {
            "defocus_u": np.zeros(m),
            "defocus_v": np.zeros(m),
            "astigmatism_angle": np.zeros(m),
            "voltage": np.full(m, 300.0),
            "spherical_aberration": np.zeros(m),
            "amplitude_contrast": np.zeros(m),
            "phase_shift": np.full(m, 90.0),
            "b_factor": np.zeros(m),
        }
    clean = project_atoms(
        coordinates, e, n_pixels=n_pixels, pixel_size=pixel_size, sigma=sigma, shifts=sh, ctf=ctf
    )
    amp = np.broadcast_to(np.asarray(amplitude, np.float64), (m,))
    off = np.broadcast_to(np.asarray(offset, np.float64), (m,))
    clean = clean * amp[:, None, None]
    var = clean.var(axis=(1, 2))
    if noise_sigma is None:
        if snr is None or snr <= 0:
            raise InputError("give snr > 0 or noise_sigma")
        ns = np.sqrt(var.mean() / snr) * np.ones(m)
    else:
        ns = np.broadcast_to(np.asarray(noise_sigma, np.float64), (m,)).copy()
    noise = rng.standard_normal(clean.shape) * ns[:, None, None]
    images = (clean + off[:, None, None] + noise).astype(np.float32)
    truth = pd.DataFrame(
        {
            "phi": e[:, 0],
            "theta": e[:, 1],
            "psi": e[:, 2],
            "shift_x": sh[:, 0],
            "shift_y": sh[:, 1],
            "shift_x_angst": sh[:, 0] * pixel_size,
            "shift_y_angst": sh[:, 1] * pixel_size,
            **ctf_params,
            "amplitude": amp,
            "offset": off,
            "noise_sigma": ns,
            "signal_ss": (clean**2).sum(axis=(1, 2)),
        }
    )
    if return_clean:
        return images, truth, clean
    return images, truth

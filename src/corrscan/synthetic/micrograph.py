"""Simulated cryo-EM micrographs with planted particles (known positions, poses, defocus).

Image model (the same conventions as :mod:`corrscan.match2d`):

``image = sum_i irfft2( -a · CTF(Δf_i) · rfft2(place(P_i, centre_i)) ) + noise``

* ``P_i(y, x) = sum_z V(R_i @ (x, y, z))`` is the projection of the map at the particle's ZYZ
  Euler angles (:func:`corrscan.core.projection.project`, padded and gridding corrected),
  placed with its centre (pixel ``D // 2``) on the particle's integer centre ``(y, x)``;
* ``CTF`` is :func:`corrscan.core.ctf.ctf_2d` (torch-ctf's ``-sin γ``) at the particle's
  absolute defocus, with the micrograph's astigmatism; the ``-1`` makes protein dark at low
  frequency; ``a`` is ``signal_scale``. The CTF is applied as a linear convolution (on a
  canvas padded by the delocalisation radius ``λ Δf k_Nyquist``), so signal delocalised
  beyond the field of view is lost, as in a real micrograph, not wrapped around;
* noise is white Gaussian of standard deviation ``noise_std`` plus, optionally, a smooth
  coloured component (``colored_noise_std``, power ~ 1/(k + k0)) that whitening must remove.

Everything is seeded; the truth table lists what was planted.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
import torch

from corrscan.core.arrays import to_tensor
from corrscan.core.ctf import ctf_2d
from corrscan.core.projection import project
from corrscan.core.rotations import euler_to_matrix
from corrscan.errors import InputError

__all__ = ["example_template", "random_positions", "simulate_micrograph"]


def example_template(
    size: int = 48,
    *,
    n_atoms: int = 300,
    atom_sigma: float = 1.2,
    seed: int = 0,
) -> np.ndarray:
    """An asymmetric pseudo-atomic density map `(size, size, size)` float32 (positive density).

    Gaussian "atoms" (width ``atom_sigma`` voxels) fill three overlapping ellipsoidal lobes of
    different sizes, so every view is distinct (no symmetry). Centre voxel ``size // 2``; the
    map stays inside a sphere of radius ``0.38 * size``.
    """
    rng = np.random.default_rng(seed)
    lobes = np.array([[0.0, 0.0, 0.0], [0.16, 0.08, -0.05], [-0.1, 0.15, 0.12]]) * size
    radii = np.array([[0.2, 0.14, 0.11], [0.12, 0.09, 0.1], [0.08, 0.1, 0.07]]) * size
    counts = rng.multinomial(n_atoms, [0.55, 0.28, 0.17])
    pts = []
    for c, r, n in zip(lobes, radii, counts, strict=True):
        u = rng.normal(size=(n, 3))
        u /= np.linalg.norm(u, axis=1, keepdims=True)
        u *= rng.uniform(0, 1, size=(n, 1)) ** (1 / 3)
        pts.append(c + u * r)
    xyz = np.concatenate(pts)
    weights = rng.uniform(0.6, 1.4, size=len(xyz))
    ax = np.arange(size) - size // 2
    zz, yy, xx = np.meshgrid(ax, ax, ax, indexing="ij")
    vol = np.zeros((size, size, size))
    rad = math.ceil(3.5 * atom_sigma)
    for (x, y, z), w in zip(xyz, weights, strict=True):
        iz, iy, ix = round(z) + size // 2, round(y) + size // 2, round(x) + size // 2
        sl = (
            slice(max(iz - rad, 0), iz + rad + 1),
            slice(max(iy - rad, 0), iy + rad + 1),
            slice(max(ix - rad, 0), ix + rad + 1),
        )
        d2 = (xx[sl] - x) ** 2 + (yy[sl] - y) ** 2 + (zz[sl] - z) ** 2
        vol[sl] += w * np.exp(-0.5 * d2 / atom_sigma**2)
    return (vol / vol.max()).astype(np.float32)


def random_positions(
    n: int,
    shape: tuple[int, int],
    *,
    margin: int,
    min_distance: float,
    rng: np.random.Generator,
    max_tries: int = 10000,
) -> np.ndarray:
    """`(n, 2)` integer ``(y, x)`` centres at least ``margin`` from the edges and
    ``min_distance`` apart (rejection sampling; raises if they do not fit)."""
    out: list[tuple[int, int]] = []
    tries = 0
    while len(out) < n:
        tries += 1
        if tries > max_tries:
            raise InputError(
                f"could not place {n} particles {min_distance} px apart in {shape}: "
                "use fewer particles, a smaller min_distance or a larger micrograph"
            )
        y = int(rng.integers(margin, shape[0] - margin))
        x = int(rng.integers(margin, shape[1] - margin))
        if all((y - a) ** 2 + (x - b) ** 2 >= min_distance**2 for a, b in out):
            out.append((y, x))
    return np.array(out, dtype=np.int64).reshape(-1, 2)


def random_orientations(n: int, rng: np.random.Generator) -> np.ndarray:
    """`(n, 3)` uniformly distributed ZYZ Euler angles ``(phi, theta, psi)`` in degrees."""
    phi = rng.uniform(0, 360, n)
    psi = rng.uniform(0, 360, n)
    theta = np.degrees(np.arccos(rng.uniform(-1, 1, n)))
    return np.stack([phi, theta, psi], axis=1)


def simulate_micrograph(
    volume: Any,
    *,
    shape: tuple[int, int] = (512, 512),
    pixel_size: float = 1.0,
    n_particles: int = 5,
    positions: Any = None,
    orientations: Any = None,
    defocus_u: float = 10000.0,
    defocus_v: float | None = None,
    astigmatism_angle: float = 0.0,
    relative_defocus: Any = None,
    voltage: float = 300.0,
    spherical_aberration: float = 2.7,
    amplitude_contrast: float = 0.07,
    b_factor: float = 0.0,
    signal_scale: float = 1.0,
    noise_std: float = 1.0,
    colored_noise_std: float = 0.0,
    min_distance: float | None = None,
    seed: int = 0,
    projection_pad: float = 2.0,
) -> tuple[np.ndarray, pd.DataFrame]:
    """Simulate a micrograph with planted particles.

    Parameters
    ----------
    volume
        `(D, D, D)` map (positive density), same pixel size as the micrograph.
    shape
        `(H, W)` of the micrograph.
    pixel_size
        Å/pixel.
    n_particles
        Number of particles when ``positions`` is not given.
    positions
        Optional `(n, 2)` integer ``(y, x)`` particle centres (pixel of the map's centre voxel).
    orientations
        Optional `(n, 3)` ``(phi, theta, psi)`` degrees; default uniformly random.
    defocus_u, defocus_v, astigmatism_angle
        Micrograph CTF (Å, Å, degrees); ``defocus_v`` defaults to ``defocus_u``.
    relative_defocus
        Optional `(n,)` per-particle defocus offsets (Å) added to U and V (particle height).
    voltage, spherical_aberration, amplitude_contrast, b_factor
        kV, mm, fraction, Å².
    signal_scale
        Multiplies the projections (map units x voxels -> image units).
    noise_std, colored_noise_std
        Standard deviations of the white and the smooth coloured noise.
    min_distance
        Minimum distance between random centres (default: the box size ``D``).
    seed
        Seeds positions, orientations and noise.
    projection_pad
        Padding factor of the map before its Fourier transform for the projections (2:
        accurate; 1: an eighth of the memory, for very large maps).

    Returns
    -------
    image
        `(H, W)` float32.
    truth
        One row per particle: ``y, x`` (centre, pixels), ``y_corner, x_corner`` (top-left of
        the template box = match2d map pixel), ``phi, theta, psi`` (degrees),
        ``relative_defocus`` and ``defocus_u``, ``defocus_v`` (Å).
    """
    vol = to_tensor(volume, name="volume").to(torch.float32)
    if vol.ndim != 3 or len(set(vol.shape)) != 1:
        raise InputError(f"volume must be a cubic (D, D, D) map, got {tuple(vol.shape)}")
    d = int(vol.shape[0])
    h, w = int(shape[0]), int(shape[1])
    if d > min(h, w):
        raise InputError(f"box {d} larger than the micrograph {shape}")
    rng = np.random.default_rng(seed)
    if positions is None:
        pos = random_positions(
            n_particles,
            (h, w),
            margin=d // 2 + 1,
            min_distance=float(min_distance if min_distance is not None else d),
            rng=rng,
        )
    else:
        pos = np.asarray(positions, dtype=np.int64).reshape(-1, 2)
    n = len(pos)
    if orientations is None:
        ang = random_orientations(n, rng)
    else:
        ang = np.asarray(orientations, dtype=np.float64).reshape(-1, 3)
        if len(ang) != n:
            raise InputError(f"orientations has {len(ang)} rows, positions {n}")
    rel = np.zeros(n) if relative_defocus is None else np.asarray(relative_defocus, float)
    rel = np.broadcast_to(rel, (n,)).astype(np.float64)
    dv = defocus_u if defocus_v is None else defocus_v

    # linear (not circular) CTF convolution: work on a canvas padded by the CTF's
    # delocalisation radius at Nyquist, lambda * defocus * k_max, then crop
    from corrscan.core.ctf import electron_wavelength

    df_max = max(abs(defocus_u), abs(dv)) + (float(np.abs(rel).max()) if n else 0.0)
    deloc = float(electron_wavelength(voltage)) * df_max * (0.5 / pixel_size) / pixel_size
    pad = int(min(math.ceil(deloc) + 2, 2 * max(h, w)))
    hp, wp = h + 2 * pad, w + 2 * pad
    spec = torch.zeros(hp, wp // 2 + 1, dtype=torch.complex128)
    if n:
        rot = euler_to_matrix(torch.from_numpy(ang)).to(torch.float32)
        proj = project(vol, rot, pad=projection_pad, gridding_correction=projection_pad > 1)
        ctf = ctf_2d(
            (hp, wp),
            pixel_size=pixel_size,
            defocus=torch.from_numpy(defocus_u + rel),
            defocus_v=torch.from_numpy(dv + rel),
            astigmatism_angle=astigmatism_angle,
            voltage=voltage,
            spherical_aberration=spherical_aberration,
            amplitude_contrast=amplitude_contrast,
            b_factor=b_factor,
            dtype=torch.float64,
        )
        for i in range(n):  # one canvas per particle (each has its own defocus)
            canvas = torch.zeros(hp, wp, dtype=torch.float64)
            y0, x0 = int(pos[i, 0]) - d // 2 + pad, int(pos[i, 1]) - d // 2 + pad
            ys, xs = slice(max(y0, 0), min(y0 + d, hp)), slice(max(x0, 0), min(x0 + d, wp))
            canvas[ys, xs] = proj[
                i, ys.start - y0 : ys.stop - y0, xs.start - x0 : xs.stop - x0
            ].double()
            spec += ctf[i] * torch.fft.rfft2(canvas)
    image = torch.fft.irfft2(-signal_scale * spec, s=(hp, wp))[pad : pad + h, pad : pad + w]
    image = image.contiguous()
    gen = torch.Generator().manual_seed(int(seed))
    image += noise_std * torch.randn(h, w, generator=gen, dtype=torch.float64)
    if colored_noise_std > 0:
        white = torch.fft.rfft2(torch.randn(h, w, generator=gen, dtype=torch.float64))
        ky = torch.fft.fftfreq(h, dtype=torch.float64)[:, None]
        kx = torch.fft.rfftfreq(w, dtype=torch.float64)[None, :]
        k = torch.sqrt(ky**2 + kx**2)
        col = torch.fft.irfft2(white / torch.sqrt(k + 0.01), s=(h, w))
        image += colored_noise_std * col / col.std()
    truth = pd.DataFrame(
        {
            "particle": np.arange(n),
            "y": pos[:, 0],
            "x": pos[:, 1],
            "y_corner": pos[:, 0] - d // 2,
            "x_corner": pos[:, 1] - d // 2,
            "phi": ang[:, 0],
            "theta": ang[:, 1],
            "psi": ang[:, 2],
            "relative_defocus": rel,
            "defocus_u": defocus_u + rel,
            "defocus_v": dv + rel,
        }
    )
    return image.to(torch.float32).numpy(), truth

"""Synthetic particle stacks: the planted truth is what the images contain."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from corrscan.core.ctf import ctf_2d
from corrscan.errors import InputError
from corrscan.synthetic.particles import (
    project_atoms,
    random_chain,
    random_euler,
    simulate_particles,
)


def test_random_chain_bonds_and_radius():
    xyz = random_chain(200, step=3.8, radius=20.0, seed=4)
    bonds = np.linalg.norm(np.diff(xyz, axis=0), axis=1)
    np.testing.assert_allclose(bonds, 3.8, rtol=1e-12)
    assert np.abs(xyz.mean(0)).max() < 1e-9
    assert np.linalg.norm(xyz, axis=1).max() < 2 * 20.0


def test_random_euler_is_uniform_on_the_sphere():
    e = random_euler(4000, seed=1)
    z = np.cos(np.deg2rad(e[:, 1]))
    assert abs(z.mean()) < 0.05 and abs((z**2).mean() - 1 / 3) < 0.02


def test_projection_of_one_atom_is_a_gaussian_at_the_rotated_position():
    n, ps, sigma = 32, 1.0, 1.8
    a = np.array([[4.0, -3.0, 2.0]])
    e = np.array([[40.0, 70.0, 15.0]])
    img = project_atoms(
        a, e, n_pixels=n, pixel_size=ps, sigma=sigma, shifts=np.array([[1.0, 2.0]])
    )[0]
    from corrscan.core.rotations import euler_to_matrix

    r = euler_to_matrix(torch.from_numpy(e))[0].numpy()
    cx, cy = (r.T @ a[0])[:2] / ps + np.array([1.0, 2.0]) + n // 2
    y, x = np.mgrid[:n, :n]
    want = np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * sigma**2)) / (2 * np.pi * sigma**2)
    np.testing.assert_allclose(img, want, atol=1e-6)
    assert img.sum() == pytest.approx(1.0)


def test_simulated_stack_truth_ctf_and_noise():
    xyz = random_chain(50, radius=10, seed=2)
    imgs, truth, clean = simulate_particles(
        xyz, n_images=6, n_pixels=24, pixel_size=2.0, snr=0.5, offset=3.0, return_clean=True, seed=9
    )
    assert imgs.shape == (6, 24, 24) and imgs.dtype == np.float32
    assert (truth["defocus_v"] <= truth["defocus_u"]).all()
    assert (truth[["shift_x", "shift_y"]].abs() <= 1.0).all().all()
    # CTF-free projection times the CTF equals the clean image
    raw = project_atoms(
        xyz, truth[["phi", "theta", "psi"]].to_numpy(), n_pixels=24, pixel_size=2.0, sigma=2.5,
        shifts=truth[["shift_x", "shift_y"]].to_numpy(),
    )  # fmt: skip
    c = ctf_2d(
        (24, 24), pixel_size=2.0, defocus=torch.tensor(truth["defocus_u"].to_numpy()),
        defocus_v=torch.tensor(truth["defocus_v"].to_numpy()),
        astigmatism_angle=torch.tensor(truth["astigmatism_angle"].to_numpy()),
        amplitude_contrast=0.1, dtype=torch.float64,
    ).numpy()  # fmt: skip
    # (equal up to the Nyquist row/column, where irfft keeps only the real part)
    np.testing.assert_allclose(
        np.fft.irfft2(np.fft.rfft2(raw) * c, s=(24, 24)), clean, atol=1e-4 * np.abs(clean).max()
    )
    noise = imgs - clean - 3.0
    snr = clean.var(axis=(1, 2)).mean() / noise.var()
    assert snr == pytest.approx(0.5, rel=0.15)
    np.testing.assert_allclose(truth["noise_sigma"], noise.std(), rtol=0.1)
    with pytest.raises(InputError):
        simulate_particles(xyz, n_images=0)

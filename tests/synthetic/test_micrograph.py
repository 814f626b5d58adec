"""Simulated micrographs: planted truth, conventions, noise, determinism."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from corrscan.core.ctf import ctf_2d
from corrscan.core.projection import project
from corrscan.core.rotations import euler_to_matrix
from corrscan.errors import InputError
from corrscan.synthetic.micrograph import example_template, simulate_micrograph


def test_example_template_properties():
    v = example_template(32, n_atoms=150, seed=1)
    assert v.shape == (32, 32, 32) and v.dtype == np.float32
    assert v.min() >= 0 and abs(v.max() - 1) < 1e-6
    assert np.array_equal(v, example_template(32, n_atoms=150, seed=1))
    # asymmetric: a 180° rotation about z changes the map
    assert np.abs(v - np.rot90(v, 2, axes=(1, 2))).max() > 0.1


def test_noise_free_particle_matches_forward_model():
    vol = example_template(24, n_atoms=100, seed=2)
    ang = np.array([[30.0, 60.0, 90.0]])
    img, truth = simulate_micrograph(
        vol, shape=(64, 80), pixel_size=2.0, positions=[[30, 41]], orientations=ang,
        defocus_u=10000.0, noise_std=0.0, signal_scale=2.0,
    )  # fmt: skip
    assert truth.loc[0, "y_corner"] == 30 - 12 and truth.loc[0, "x_corner"] == 41 - 12
    # independent rebuild: projection centred on (30, 41), times -2·CTF, as a linear
    # convolution (generous zero padding, then crop: no wrap-around)
    p = project(torch.from_numpy(vol), euler_to_matrix(torch.tensor(ang)).float(), pad=2.0)[0]
    pad = 100
    canvas = torch.zeros(64 + 2 * pad, 80 + 2 * pad, dtype=torch.float64)
    canvas[pad + 30 - 12 : pad + 30 + 12, pad + 41 - 12 : pad + 41 + 12] = p.double()
    big = (64 + 2 * pad, 80 + 2 * pad)
    ctf = ctf_2d(big, pixel_size=2.0, defocus=10000.0, dtype=torch.float64)
    ref = torch.fft.irfft2(-2.0 * ctf * torch.fft.rfft2(canvas), s=big)[pad:-pad, pad:-pad]
    scale = float(ref.abs().max())
    np.testing.assert_allclose(img, ref.numpy(), atol=0.01 * scale)
    # protein is dark at low frequency: the low-passed particle is negative at its centre
    ky = torch.fft.fftfreq(64, dtype=torch.float64)[:, None]
    kx = torch.fft.rfftfreq(80, dtype=torch.float64)[None, :]
    lowpass = (ky**2 + kx**2).sqrt() < 0.08
    low = torch.fft.irfft2(torch.fft.rfft2(torch.from_numpy(img).double()) * lowpass, s=(64, 80))
    assert float(low[30, 41]) < 0


def test_noise_level_and_seed():
    vol = example_template(16, n_atoms=40)
    a, t1 = simulate_micrograph(vol, shape=(128, 128), n_particles=0, noise_std=2.0, seed=5)
    b, _ = simulate_micrograph(vol, shape=(128, 128), n_particles=0, noise_std=2.0, seed=5)
    assert np.array_equal(a, b) and len(t1) == 0
    assert abs(a.std() - 2.0) < 0.05


def test_random_positions_respect_margins_and_distance():
    vol = example_template(16, n_atoms=40)
    _, t = simulate_micrograph(
        vol, shape=(160, 160), n_particles=6, min_distance=20, noise_std=1.0, seed=3
    )
    pos = t[["y", "x"]].to_numpy()
    assert (pos >= 9).all() and (pos < 160 - 8).all()
    d = np.hypot(*(pos[:, None, :] - pos[None, :, :]).transpose(2, 0, 1))
    assert d[~np.eye(6, dtype=bool)].min() >= 20


def test_errors():
    vol = example_template(16, n_atoms=40)
    with pytest.raises(InputError):
        simulate_micrograph(vol[:, :, :8], shape=(64, 64))
    with pytest.raises(InputError):
        simulate_micrograph(vol, shape=(64, 64), n_particles=50, min_distance=30)

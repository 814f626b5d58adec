"""The polar-grid CTF follows the core CTF exactly."""

from __future__ import annotations

import numpy as np
import torch

from corrscan.core.ctf import ctf_2d
from corrscan.likelihood.ctf import CtfParams, ctf_at, ctf_polar
from corrscan.likelihood.grid import PolarGrid


def test_ctf_at_matches_core_ctf_2d_on_the_fft_grid():
    n, ps = 32, 1.7
    p = CtfParams(
        defocus_u=np.array([9000.0, 15000.0, 12000.0]),
        defocus_v=np.array([8500.0, 15400.0, 12000.0]),  # U < V on purpose (signed astigmatism)
        astigmatism_angle=np.array([20.0, 110.0, 0.0]),
        voltage=np.array([300.0, 200.0, 300.0]),
        spherical_aberration=2.7,
        amplitude_contrast=0.1,
        phase_shift=np.array([0.0, 30.0, 0.0]),
        b_factor=np.array([0.0, 50.0, 10.0]),
    )
    ky = np.fft.fftfreq(n)[:, None] * np.ones((1, n // 2 + 1))
    kx = np.fft.rfftfreq(n)[None, :] * np.ones((n, 1))
    mine = ctf_at(p, kx, ky, ps, dtype=torch.float64)
    core = ctf_2d(
        (n, n),
        pixel_size=ps,
        defocus=torch.from_numpy(p.defocus_u),
        defocus_v=torch.from_numpy(p.defocus_v),
        astigmatism_angle=torch.from_numpy(p.astigmatism_angle),
        voltage=torch.from_numpy(p.voltage),
        spherical_aberration=2.7,
        amplitude_contrast=0.1,
        phase_shift=torch.from_numpy(p.phase_shift),
        b_factor=torch.from_numpy(p.b_factor),
        dtype=torch.float64,
    )
    torch.testing.assert_close(mine, core, atol=1e-10, rtol=0)


def test_ctf_polar_is_even_and_none_is_one():
    g = PolarGrid.create(16, 2.0)
    p = CtfParams(np.array([10000.0]), np.array([9000.0]), astigmatism_angle=33.0)
    c = ctf_polar(p, g, dtype=torch.float64)[0]
    h = g.n_inplanes // 2
    torch.testing.assert_close(c[:, :h], c[:, h:])  # CTF(-k) = CTF(k)
    one = ctf_polar(CtfParams.none(2), g, dtype=torch.float64)
    torch.testing.assert_close(one, torch.ones_like(one), atol=1e-12, rtol=0)

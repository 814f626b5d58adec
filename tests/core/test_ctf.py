"""Known-answer tests for corrscan.core.ctf."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch_ctf

from corrscan.core import ctf as C
from corrscan.errors import InputError
from tests.conftest import requires_cuda

PS = 1.0  # Å/pixel


def _reference_ctf(
    ky: np.ndarray,
    kx: np.ndarray,
    *,
    du: float,
    dv: float,
    angle: float,
    kv: float = 300.0,
    cs: float = 2.7,
    ac: float = 0.07,
    phase: float = 0.0,
    b: float = 0.0,
) -> np.ndarray:
    """Independent float64 formula with an explicit azimuth (atan2); k in cycles/Å."""
    e = 1.602176634e-19 * kv * 1e3
    lam = 6.62607015e-34 * 299792458.0 / math.sqrt(e * (2 * 9.1093837015e-31 * 299792458.0**2 + e))
    lam *= 1e10
    k2 = kx**2 + ky**2
    alpha = np.arctan2(ky, kx)
    df = 0.5 * (du + dv) + 0.5 * (du - dv) * np.cos(2 * (alpha - np.deg2rad(angle)))
    gamma = (
        -np.pi * lam * df * k2
        + 0.5 * np.pi * cs * 1e7 * lam**3 * k2**2
        - np.deg2rad(phase)
        - np.arctan(ac / np.sqrt(1 - ac**2))
    )
    return -np.sin(gamma) * np.exp(-b * k2 / 4)


def test_electron_wavelength_known_values() -> None:
    # textbook relativistic wavelengths (Å)
    assert C.electron_wavelength(300) == pytest.approx(0.019687, abs=2e-6)
    assert C.electron_wavelength(200) == pytest.approx(0.025079, abs=2e-6)
    assert C.electron_wavelength(100) == pytest.approx(0.037014, abs=2e-6)
    # the common approximation 12.2643 / sqrt(V (1 + 0.978476e-6 V))
    for kv in (80.0, 120.0, 300.0):
        v = kv * 1e3
        assert C.electron_wavelength(kv) == pytest.approx(
            12.2643 / math.sqrt(v * (1 + 0.978476e-6 * v)), rel=2e-5
        )
    arr = C.electron_wavelength(np.array([100.0, 300.0]))
    assert isinstance(arr, np.ndarray) and arr[1] == pytest.approx(0.019687, abs=2e-6)
    with pytest.raises(InputError):
        C.electron_wavelength(-300)


def test_ctf_at_zero_frequency() -> None:
    c = C.ctf_2d((16, 16), pixel_size=PS, defocus=15000.0, amplitude_contrast=0.07)
    assert float(c[0, 0]) == pytest.approx(0.07, abs=1e-6)  # +A (torch-ctf/cisTEM sign)
    c90 = C.ctf_2d(
        (16, 16), pixel_size=PS, defocus=15000.0, amplitude_contrast=0.1, phase_shift=90.0
    )
    assert float(c90[0, 0]) == pytest.approx(math.sqrt(1 - 0.1**2), abs=1e-6)
    c1 = C.ctf_1d(5, pixel_size=PS, defocus=15000.0, amplitude_contrast=0.2, phase_shift=30.0)
    assert float(c1[0]) == pytest.approx(math.sin(math.radians(30) + math.asin(0.2)), abs=1e-6)


def test_ctf_positive_at_low_frequency_for_underfocus() -> None:
    c = C.ctf_1d(200, pixel_size=PS, defocus=20000.0, dtype=torch.float64)
    first_zero = C.ctf_zero_frequencies(20000.0, n=1)[0]
    f = torch.linspace(0, 0.5, 200, dtype=torch.float64)
    assert torch.all(c[(f > 0) & (f < 0.9 * first_zero)] > 0)


def test_zeros_isotropic() -> None:
    df = 12000.0
    zeros = C.ctf_zero_frequencies(df, n=6)
    assert zeros.shape == (6,) and np.all(np.diff(zeros) > 0)
    # the CTF vanishes there and changes sign across each zero
    vals = C.ctf_1d(torch.as_tensor(zeros), pixel_size=1.0, defocus=df, dtype=torch.float64)
    assert float(vals.abs().max()) < 1e-9
    lo = C.ctf_1d(torch.as_tensor(zeros * 0.999), pixel_size=1.0, defocus=df, dtype=torch.float64)
    hi = C.ctf_1d(torch.as_tensor(zeros * 1.001), pixel_size=1.0, defocus=df, dtype=torch.float64)
    assert torch.all(lo * hi < 0)
    # on a 2D grid: sign changes along x and y at the analytic radii (within a pixel)
    n, ps = 256, 1.2
    c = C.ctf_2d((n, n), pixel_size=ps, defocus=df, dtype=torch.float64)
    _check_axis_zeros(c[0, :].numpy(), zeros, n, ps)  # along +x
    _check_axis_zeros(c[: n // 2 + 1, 0].numpy(), zeros, n, ps)  # along +y


def _check_axis_zeros(profile: np.ndarray, zeros: np.ndarray, n: int, ps: float) -> None:
    k = np.arange(profile.size) / (n * ps)  # cycles/Å
    crossings = np.nonzero(np.sign(profile[1:]) != np.sign(profile[:-1]))[0]
    # linear interpolation of each crossing
    kc = k[crossings] - profile[crossings] * (k[crossings + 1] - k[crossings]) / (
        profile[crossings + 1] - profile[crossings]
    )
    inside = zeros[zeros < k[-1]]
    assert len(inside) >= 3
    np.testing.assert_allclose(kc[: len(inside)], inside, atol=0.15 / (n * ps))


def test_zeros_along_astigmatism_axes() -> None:
    du, dv, n, ps = 18000.0, 12000.0, 256, 1.0
    zu = C.ctf_zero_frequencies(du, n=5)
    zv = C.ctf_zero_frequencies(dv, n=5)
    c0 = C.ctf_2d(
        (n, n), pixel_size=ps, defocus=du, defocus_v=dv, astigmatism_angle=0.0, dtype=torch.float64
    )
    _check_axis_zeros(c0[0, :].numpy(), zu, n, ps)  # U along x at angle 0
    _check_axis_zeros(c0[: n // 2 + 1, 0].numpy(), zv, n, ps)  # V along y
    c90 = C.ctf_2d(
        (n, n), pixel_size=ps, defocus=du, defocus_v=dv, astigmatism_angle=90.0, dtype=torch.float64
    )
    _check_axis_zeros(c90[0, :].numpy(), zv, n, ps)
    _check_axis_zeros(c90[: n // 2 + 1, 0].numpy(), zu, n, ps)
    # at 45 degrees U lies on the diagonal ky = kx: exact zeros of the float64 formula there
    c45 = C.ctf_2d(
        (n, n), pixel_size=ps, defocus=du, defocus_v=dv, astigmatism_angle=45.0, dtype=torch.float64
    )
    diag = c45[torch.arange(n // 2), torch.arange(n // 2)].numpy()
    k = np.sqrt(2) * np.arange(n // 2) / (n * ps)
    crossings = np.nonzero(np.sign(diag[1:]) != np.sign(diag[:-1]))[0]
    kc = k[crossings] - diag[crossings] * (k[crossings + 1] - k[crossings]) / (
        diag[crossings + 1] - diag[crossings]
    )
    inside = zu[zu < k[-1]]
    np.testing.assert_allclose(kc[: len(inside)], inside, atol=0.3 / (n * ps))


def test_zero_frequencies_overfocus_and_no_cs() -> None:
    # overfocus: the only zeros come from the Cs term (ascending branch of gamma)
    z = C.ctf_zero_frequencies(-5000.0, n=3, amplitude_contrast=0.1)
    v = C.ctf_1d(
        torch.as_tensor(z),
        pixel_size=1.0,
        defocus=-5000.0,
        amplitude_contrast=0.1,
        dtype=torch.float64,
    )
    assert np.all(np.isfinite(z)) and float(v.abs().max()) < 1e-9
    # Cs = 0: k_m = sqrt((m pi - asin A) / (pi lambda df))
    lam = C.electron_wavelength(300.0)
    z0 = C.ctf_zero_frequencies(10000.0, cs=0.0, n=3)
    m = np.arange(1, 4)
    np.testing.assert_allclose(
        z0, np.sqrt((m * np.pi - math.asin(0.07)) / (np.pi * lam * 1e4)), rtol=1e-12
    )
    # batched defocus -> (..., n); torch in -> torch out
    zt = C.ctf_zero_frequencies(torch.tensor([[8000.0, 16000.0]], dtype=torch.float64), n=4)
    assert isinstance(zt, torch.Tensor) and zt.shape == (1, 2, 4)
    assert float(zt[0, 0, 0]) > float(zt[0, 1, 0])


def test_float64_reference_astigmatic_phase_b_factor() -> None:
    shape, ps = (40, 34), 1.7
    params = {
        "du": 21000.0,
        "dv": 17500.0,
        "angle": 33.0,
        "kv": 200.0,
        "cs": 2.0,
        "ac": 0.1,
        "phase": 25.0,
        "b": 80.0,
    }
    c = C.ctf_2d(
        shape,
        pixel_size=ps,
        defocus=np.float64(params["du"]) * np.ones(1),
        defocus_v=params["dv"],
        astigmatism_angle=params["angle"],
        voltage=params["kv"],
        spherical_aberration=params["cs"],
        amplitude_contrast=params["ac"],
        phase_shift=params["phase"],
        b_factor=params["b"],
    )
    assert isinstance(c, np.ndarray) and c.dtype == np.float64 and c.shape == (1, 40, 18)
    ky = np.fft.fftfreq(shape[0])[:, None] / ps
    kx = np.fft.rfftfreq(shape[1])[None, :] / ps
    ref = _reference_ctf(ky, kx, **params)
    np.testing.assert_allclose(c[0], ref, atol=1e-12)
    # full, fftshifted layout
    full = C.ctf_2d(
        shape,
        pixel_size=ps,
        defocus=21000.0,
        defocus_v=17500.0,
        astigmatism_angle=33.0,
        voltage=200.0,
        spherical_aberration=2.0,
        amplitude_contrast=0.1,
        phase_shift=25.0,
        b_factor=80.0,
        rfft=False,
        fftshift=True,
        dtype=torch.float64,
    )
    kyf = np.fft.fftshift(np.fft.fftfreq(shape[0]))[:, None] / ps
    kxf = np.fft.fftshift(np.fft.fftfreq(shape[1]))[None, :] / ps
    np.testing.assert_allclose(full.numpy(), _reference_ctf(kyf, kxf, **params), atol=1e-12)


def test_b_factor_envelope_and_phase_shift() -> None:
    shape, ps, b = (64, 64), 1.3, 120.0
    c0 = C.ctf_2d(shape, pixel_size=ps, defocus=9000.0, dtype=torch.float64)
    cb = C.ctf_2d(shape, pixel_size=ps, defocus=9000.0, b_factor=b, dtype=torch.float64)
    k2 = (
        torch.fft.fftfreq(64, dtype=torch.float64)[:, None] ** 2
        + torch.fft.rfftfreq(64, dtype=torch.float64) ** 2
    ) / ps**2
    assert torch.allclose(cb, c0 * torch.exp(-b * k2 / 4), atol=1e-14)
    # phase shift phi with A = 0: CTF = -sin(gamma0 - phi); 90 deg turns sin into cos
    s0 = C.ctf_2d(shape, pixel_size=ps, defocus=9000.0, amplitude_contrast=0.0, dtype=torch.float64)
    s90 = C.ctf_2d(
        shape,
        pixel_size=ps,
        defocus=9000.0,
        amplitude_contrast=0.0,
        phase_shift=90.0,
        dtype=torch.float64,
    )
    assert torch.allclose(s0**2 + s90**2, torch.ones_like(s0), atol=1e-12)
    assert float(s90[0, 0]) == pytest.approx(1.0)


def test_matches_torch_ctf_in_micrometres() -> None:
    du, dv, ang = 14000.0, 11000.0, 37.0
    ours = C.ctf_2d(
        (48, 48), pixel_size=1.1, defocus=du, defocus_v=dv, astigmatism_angle=ang, phase_shift=10.0
    )
    theirs = torch_ctf.calculate_ctf_2d(
        defocus=(du + dv) / 2 * 1e-4,
        astigmatism=(du - dv) / 2 * 1e-4,
        astigmatism_angle=ang,
        voltage=300.0,
        spherical_aberration=2.7,
        amplitude_contrast=0.07,
        phase_shift=10.0,
        pixel_size=1.1,
        image_shape=(48, 48),
        rfft=True,
        fftshift=False,
    )
    assert ours.dtype == torch.float32
    assert float((ours - theirs).abs().max()) < 2e-4
    ours1 = C.ctf_1d(50, pixel_size=1.1, defocus=du)
    theirs1 = torch_ctf.calculate_ctf_1d(
        defocus=du * 1e-4, voltage=300.0, spherical_aberration=2.7, amplitude_contrast=0.07,
        phase_shift=0.0, pixel_size=1.1, n_samples=50, oversampling_factor=1,
    )  # fmt: skip
    assert float((ours1 - theirs1).abs().max()) < 2e-4


def test_batched_over_defocus_and_kinds() -> None:
    dfs = torch.tensor([[8000.0, 10000.0], [12000.0, 14000.0], [16000.0, 18000.0]])
    c = C.ctf_2d((32, 30), pixel_size=1.5, defocus=dfs, b_factor=torch.tensor(50.0))
    assert isinstance(c, torch.Tensor) and c.shape == (3, 2, 32, 16) and c.dtype == torch.float32
    single = C.ctf_2d((32, 30), pixel_size=1.5, defocus=float(dfs[2, 1]), b_factor=50.0)
    assert single.shape == (32, 16)
    assert torch.allclose(c[2, 1], single, atol=1e-6)
    # defocus_v broadcasts against defocus; numpy float32 in -> numpy float32 out
    cn = C.ctf_2d(
        (32, 30),
        pixel_size=1.5,
        defocus=np.array([9000.0, 11000.0], dtype=np.float32),
        defocus_v=np.array([[8000.0], [7000.0]]),
    )
    assert isinstance(cn, np.ndarray) and cn.dtype == np.float32 and cn.shape == (2, 2, 32, 16)
    c1 = C.ctf_1d(np.linspace(0, 0.5, 7), pixel_size=2.0, defocus=np.array([9000.0, 12000.0]))
    assert isinstance(c1, np.ndarray) and c1.shape == (2, 7) and c1.dtype == np.float64


def test_ctf_3d() -> None:
    shape, ps = (12, 16, 14), 2.0
    du, dv, ang = 15000.0, 11000.0, 20.0
    c3 = C.ctf_3d(
        shape, pixel_size=ps, defocus=du, defocus_v=dv, astigmatism_angle=ang, dtype=torch.float64
    )
    assert c3.shape == (12, 16, 8)
    # kz = 0 plane is the 2D CTF
    c2 = C.ctf_2d(
        shape[1:],
        pixel_size=ps,
        defocus=du,
        defocus_v=dv,
        astigmatism_angle=ang,
        dtype=torch.float64,
    )
    assert torch.allclose(c3[0], c2, atol=1e-12)
    # no astigmatism: a function of |k| only, equal to ctf_1d(|k|)
    iso = C.ctf_3d(shape, pixel_size=ps, defocus=du, dtype=torch.float64)
    kz = torch.fft.fftfreq(12, dtype=torch.float64)[:, None, None]
    ky = torch.fft.fftfreq(16, dtype=torch.float64)[None, :, None]
    kx = torch.fft.rfftfreq(14, dtype=torch.float64)[None, None, :]
    kabs = torch.sqrt(kz**2 + ky**2 + kx**2)
    ref = C.ctf_1d(kabs.reshape(-1), pixel_size=ps, defocus=du, dtype=torch.float64).reshape(
        kabs.shape
    )
    assert torch.allclose(iso, ref, atol=1e-12)
    # on the z axis (no azimuth) the astigmatic 3D CTF uses the mean defocus
    mean = C.ctf_1d(kabs[:, 0, 0], pixel_size=ps, defocus=(du + dv) / 2, dtype=torch.float64)
    assert torch.allclose(c3[:, 0, 0], mean, atol=1e-12)
    # everywhere: the formula at |k| (3D) with the defocus of the (ky, kx) azimuth
    kz_, ky_, kx_ = (np.asarray(a) / ps for a in (kz, ky, kx))
    k3 = np.sqrt(kz_**2 + ky_**2 + kx_**2)
    alpha = np.arctan2(ky_, kx_)
    df = np.where(
        (ky_**2 + kx_**2) > 0,
        (du + dv) / 2 + (du - dv) / 2 * np.cos(2 * (alpha - np.deg2rad(ang))),
        (du + dv) / 2,
    )
    lam = C.electron_wavelength(300.0)
    gamma = -np.pi * lam * df * k3**2 + 0.5 * np.pi * 2.7e7 * lam**3 * k3**4 - math.asin(0.07)
    np.testing.assert_allclose(c3.numpy(), -np.sin(gamma), atol=1e-12)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"pixel_size": -1.0, "defocus": 1e4}, "pixel_size"),
        ({"pixel_size": 1.0, "defocus": float("nan")}, "defocus"),
        ({"pixel_size": 1.0, "defocus": np.array([1e4, np.nan])}, "defocus"),
        ({"pixel_size": 1.0, "defocus": 1e4, "amplitude_contrast": 1.0}, "amplitude_contrast"),
        ({"pixel_size": 1.0, "defocus": 1e4, "voltage": 0.0}, "voltage"),
    ],
)
def test_errors(kwargs, match) -> None:
    with pytest.raises(InputError, match=match):
        C.ctf_2d((8, 8), **kwargs)


def test_bad_shapes() -> None:
    with pytest.raises(InputError, match="image_shape"):
        C.ctf_2d((8, 8, 8), pixel_size=1.0, defocus=1e4)
    with pytest.raises(InputError, match="volume_shape"):
        C.ctf_3d((8, 8), pixel_size=1.0, defocus=1e4)
    with pytest.raises(InputError, match="1D"):
        C.ctf_1d(np.ones((2, 2)), pixel_size=1.0, defocus=1e4)


@requires_cuda
def test_cuda_defocus_gives_cuda_ctf() -> None:
    d = torch.tensor([9000.0, 12000.0], device="cuda")
    c = C.ctf_2d((32, 32), pixel_size=1.0, defocus=d)
    assert c.device.type == "cuda" and c.shape == (2, 32, 17)
    ref = C.ctf_2d((32, 32), pixel_size=1.0, defocus=d.cpu())
    assert torch.allclose(c.cpu(), ref, atol=1e-5)
    assert C.ctf_3d((8, 8, 8), pixel_size=1.0, defocus=1e4, device="cuda").device.type == "cuda"


def test_u_smaller_than_v_equals_swapped_axes() -> None:
    # torch-ctf needs U >= V (sqrt of the astigmatism); here U < V is the same CTF as the
    # swapped pair rotated by 90 degrees
    a = C.ctf_2d(
        (32, 32), pixel_size=1.0, defocus=9000.0, defocus_v=13000.0, astigmatism_angle=25.0
    )
    b = C.ctf_2d(
        (32, 32), pixel_size=1.0, defocus=13000.0, defocus_v=9000.0, astigmatism_angle=115.0
    )
    assert torch.isfinite(a).all()
    assert torch.allclose(a, b, atol=1e-5)
    assert not torch.allclose(
        a,
        C.ctf_2d(
            (32, 32), pixel_size=1.0, defocus=13000.0, defocus_v=9000.0, astigmatism_angle=25.0
        ),
        atol=1e-2,
    )

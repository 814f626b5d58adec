"""Known-answer tests for corrscan.core.fourier."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import scipy.signal
import torch

from corrscan.core import fourier as F
from corrscan.errors import InputError
from tests.conftest import requires_cuda


# ------------------------------------------------------------------------------------------
# sizes and grids
# ------------------------------------------------------------------------------------------
def _smooth(n: int) -> bool:
    for p in (2, 3, 5, 7):
        while n % p == 0:
            n //= p
    return n == 1


def test_next_fast_len_is_smallest_smooth() -> None:
    for n in range(1, 400):
        m = F.next_fast_len(n)
        assert m >= n and _smooth(m)
        assert not any(_smooth(k) for k in range(n, m))
    assert F.next_fast_len(4097) == 4116  # 2^2 * 3 * 7^3


def test_rfft_shape_and_fftfreq_grid() -> None:
    assert F.rfft_shape((10, 7)) == (10, 4)
    assert F.rfft_shape((4, 6, 8)) == (4, 6, 5)
    g = F.fftfreq_grid((6, 5), rfft=True)
    assert g.shape == (6, 3, 2)
    assert torch.allclose(g[:, 0, 0], torch.fft.fftfreq(6))
    assert torch.allclose(g[0, :, 1], torch.fft.rfftfreq(5))
    g3 = F.fftfreq_grid((4, 6, 8), rfft=False, fftshift=True, dtype=torch.float64)
    assert g3.dtype == torch.float64 and g3.shape == (4, 6, 8, 3)
    assert torch.allclose(
        g3[:, 0, 0, 0], torch.fft.fftshift(torch.fft.fftfreq(4, dtype=torch.float64))
    )
    r = F.frequency_radius((6, 5))
    assert torch.allclose(r, g.norm(dim=-1))


# ------------------------------------------------------------------------------------------
# pad / crop
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("old", "new"), [((5, 6), (9, 12)), ((6, 5), (11, 8)), ((4, 5, 6), (7, 8, 9))]
)
def test_pad_crop_round_trip_and_centre(rng: np.random.Generator, old, new) -> None:
    x = rng.normal(size=(2, *old))
    p = F.pad_to(x, new)
    assert isinstance(p, np.ndarray) and p.shape == (2, *new)
    np.testing.assert_array_equal(F.crop_to(p, old), x)
    # the centre index N // 2 stays the centre
    d = np.zeros(old)
    d[tuple(n // 2 for n in old)] = 1.0
    pd = F.pad_to(d, new)
    assert np.unravel_index(np.argmax(pd), new) == tuple(n // 2 for n in new)
    cd = F.crop_to(pd, old)
    np.testing.assert_array_equal(cd, d)
    # padding adds only the fill value
    assert np.isclose(p.sum(), x.sum())


def test_pad_mean_and_errors(rng: np.random.Generator) -> None:
    x = torch.as_tensor(rng.normal(size=(3, 4, 4)))
    p = F.pad_to(x, (8, 8), value="mean")
    assert isinstance(p, torch.Tensor) and p.dtype == torch.float64
    assert torch.allclose(p[:, 0, 0], x.mean(dim=(-2, -1)))
    with pytest.raises(InputError):
        F.pad_to(x, (2, 8))
    with pytest.raises(InputError):
        F.crop_to(x, (8, 2))
    with pytest.raises(InputError):
        F.pad_to(x, (8, 8), value="median")


# ------------------------------------------------------------------------------------------
# cross-correlation
# ------------------------------------------------------------------------------------------
def _brute_xcorr(img: np.ndarray, tpl: np.ndarray, mode: str) -> np.ndarray:
    """c[s] = sum_r img[r + s] tpl[r], direct float64 sum over every shift."""
    n, m = img.shape, tpl.shape
    if mode == "full":
        starts = [-(mi - 1) for mi in m]
        lens = [ni + mi - 1 for ni, mi in zip(n, m, strict=True)]
    elif mode == "same":
        starts = [-(mi // 2) for mi in m]
        lens = list(n)
    else:
        starts = [0] * len(n)
        lens = [ni - mi + 1 for ni, mi in zip(n, m, strict=True)]
    out = np.zeros(lens)
    for idx in itertools.product(*(range(ln) for ln in lens)):
        s = [i + s0 for i, s0 in zip(idx, starts, strict=True)]
        acc = 0.0
        for r in itertools.product(*(range(mi) for mi in m)):
            q = tuple(ri + si for ri, si in zip(r, s, strict=True))
            if all(0 <= qi < ni for qi, ni in zip(q, n, strict=True)):
                acc += img[q] * tpl[r]
        out[idx] = acc
    return out


@pytest.mark.parametrize("mode", ["same", "full", "valid"])
@pytest.mark.parametrize(("n", "m"), [((9, 8), (4, 3)), ((7,), (4,)), ((5, 4, 6), (2, 3, 3))])
def test_cross_correlate_brute_force(rng: np.random.Generator, mode, n, m) -> None:
    img = rng.normal(size=n)
    tpl = rng.normal(size=m)
    got = F.cross_correlate(img, tpl, mode=mode)
    ref = _brute_xcorr(img, tpl, mode)
    assert isinstance(got, np.ndarray) and got.dtype == np.float64
    np.testing.assert_allclose(got, ref, atol=1e-11)
    if len(n) == 2:
        np.testing.assert_allclose(got, scipy.signal.correlate(img, tpl, mode=mode), atol=1e-11)


def test_cross_correlate_batched_torch(rng: np.random.Generator) -> None:
    img = torch.as_tensor(rng.normal(size=(3, 10, 9)), dtype=torch.float32)
    tpl = torch.as_tensor(rng.normal(size=(4, 5)), dtype=torch.float32)
    got = F.cross_correlate(img, tpl, mode="same")
    assert isinstance(got, torch.Tensor) and got.dtype == torch.float32 and got.shape == (3, 10, 9)
    for b in range(3):
        ref = _brute_xcorr(img[b].double().numpy(), tpl.double().numpy(), "same")
        np.testing.assert_allclose(got[b].numpy(), ref, atol=1e-4)
    # a batch of 2D templates needs ndim=2
    tpls = torch.stack([tpl, 2 * tpl, -tpl])
    got2 = F.cross_correlate(img, tpls, mode="valid", ndim=2)
    assert torch.allclose(got2[1], 2 * F.cross_correlate(img[1], tpl, mode="valid"), atol=1e-4)


def test_cross_correlate_errors(rng: np.random.Generator) -> None:
    img = rng.normal(size=(2, 2, 8, 8))
    with pytest.raises(InputError, match="ndim"):
        F.cross_correlate(img, img)
    with pytest.raises(InputError, match="NaN"):
        bad = rng.normal(size=(8, 8))
        bad[1, 1] = np.nan
        F.cross_correlate(bad, rng.normal(size=(3, 3)))
    with pytest.raises(InputError, match="valid"):
        F.cross_correlate(rng.normal(size=(4, 4)), rng.normal(size=(5, 3)), mode="valid")
    with pytest.raises(InputError, match="mode"):
        F.cross_correlate(rng.normal(size=(4, 4)), rng.normal(size=(3, 3)), mode="circular")


# ------------------------------------------------------------------------------------------
# shifts
# ------------------------------------------------------------------------------------------
def test_fourier_shift_integer_equals_roll(rng: np.random.Generator) -> None:
    x = torch.as_tensor(rng.normal(size=(2, 12, 15)))
    shifts = torch.tensor([[3.0, -4.0], [-7.0, 16.0]], dtype=torch.float64)
    ft = torch.fft.rfftn(x, dim=(-2, -1))
    y = torch.fft.irfftn(F.fourier_shift(ft, shifts, image_shape=(12, 15)), s=(12, 15))
    for b in range(2):
        ref = torch.roll(x[b], shifts=[int(s) for s in shifts[b]], dims=(-2, -1))
        assert torch.allclose(y[b], ref, atol=1e-12)
    # full fft layout, 3D
    v = torch.as_tensor(rng.normal(size=(6, 7, 8)))
    fv = torch.fft.fftn(v)
    yv = torch.fft.ifftn(F.fourier_shift(fv, [1.0, -2.0, 3.0], image_shape=(6, 7, 8), rfft=False))
    assert torch.allclose(yv.real, torch.roll(v, (1, -2, 3), dims=(0, 1, 2)), atol=1e-12)


def test_fourier_shift_subpixel_band_limited() -> None:
    n_y, n_x = 32, 30
    y, x = np.meshgrid(np.arange(n_y), np.arange(n_x), indexing="ij")
    comps = [(3, 2, 0.3), (-5, 7, 1.1), (9, -11, 2.0), (0, 13, -0.4)]  # (fy, fx, phase) < Nyquist

    def field(dy: float, dx: float) -> np.ndarray:
        return sum(
            np.cos(2 * np.pi * (fy * (y - dy) / n_y + fx * (x - dx) / n_x) + ph)
            for fy, fx, ph in comps
        )

    img = field(0.0, 0.0)
    s = (0.37, -1.62)
    got = F.shift_image(img, np.array(s))
    assert isinstance(got, np.ndarray)
    np.testing.assert_allclose(got, field(*s), atol=1e-10)
    # float32 torch: same within single precision
    got32 = F.shift_image(torch.as_tensor(img, dtype=torch.float32), torch.tensor(s))
    assert got32.dtype == torch.float32
    np.testing.assert_allclose(got32.numpy(), field(*s), atol=2e-5)


def test_fourier_shift_bad_shape() -> None:
    ft = torch.zeros(8, 5, dtype=torch.complex64)
    with pytest.raises(InputError):
        F.fourier_shift(ft, [1.0, 2.0], image_shape=(8, 12))
    with pytest.raises(InputError):
        F.fourier_shift(ft, [1.0, 2.0, 3.0], image_shape=(8, 8))


# ------------------------------------------------------------------------------------------
# radial profiles
# ------------------------------------------------------------------------------------------
def test_radial_average_of_ring_image() -> None:
    shape = (17, 20)
    yy, xx = np.meshgrid(*(np.arange(n) - n // 2 for n in shape), indexing="ij")
    rr = np.rint(np.hypot(yy, xx))
    radius, mean = F.radial_average(np.stack([rr, 3 * rr]), ndim=2)
    assert radius.shape == mean.shape[-1:]
    np.testing.assert_allclose(mean[0], radius)
    np.testing.assert_allclose(mean[1], 3 * radius)


def test_radial_power_spectrum_white_noise_flat() -> None:
    sigma = 2.0
    x = torch.randn(32, 96, 96, dtype=torch.float64) * sigma
    freq, power = F.radial_power_spectrum(x, ndim=2)
    assert freq.shape[0] == power.shape[-1]
    assert float(freq[1] - freq[0]) == pytest.approx(1 / 96)
    assert torch.isfinite(power).all()
    # flat at sigma^2: bins above 0.1 cycles/px average >= 30 * 32 independent coefficients
    # (relative std <= 3.3 %; 10 seeds: max deviation 0.086)
    sel = (freq > 0.1) & (freq <= 0.5)
    p = power.mean(dim=0)[sel]
    assert float((p / sigma**2 - 1).abs().max()) < 0.15
    assert float(p.mean() / sigma**2) == pytest.approx(1.0, abs=0.02)


def test_radial_power_spectrum_one_over_f() -> None:
    n = 128
    k = F.frequency_radius((n, n), dtype=torch.float64)
    amp = torch.where(k > 0, 1.0 / k.clamp_min(1e-12), torch.zeros_like(k))  # |H| = 1/k
    noise = torch.randn(16, n, n, dtype=torch.float64)
    x = torch.fft.irfftn(torch.fft.rfftn(noise, dim=(-2, -1)) * amp, s=(n, n), dim=(-2, -1))
    freq, power = F.radial_power_spectrum(x, ndim=2)
    p = power.mean(dim=0)
    sel = (freq > 0.04) & (freq < 0.45)
    expected = 1.0 / freq[sel] ** 2
    ratio = p[sel] / expected
    assert float((ratio - 1).abs().max()) < 0.2
    slope = np.polyfit(np.log(freq[sel].numpy()), np.log(p[sel].numpy()), 1)[0]
    assert slope == pytest.approx(-2.0, abs=0.05)


def test_radial_power_spectrum_nan_error() -> None:
    x = np.ones((8, 8))
    x[2, 3] = np.nan
    with pytest.raises(InputError, match="NaN"):
        F.radial_power_spectrum(x)


# ------------------------------------------------------------------------------------------
# whitening and bandpass
# ------------------------------------------------------------------------------------------
def _coloured_noise(n: int, batch: int = 1) -> torch.Tensor:
    k = F.frequency_radius((n, n), dtype=torch.float64)
    colour = 1.0 / (0.02 + k) ** 1.5 * (1 + 0.5 * torch.cos(40 * k))
    noise = torch.randn(batch, n, n, dtype=torch.float64)
    return torch.fft.irfftn(torch.fft.rfftn(noise, dim=(-2, -1)) * colour, s=(n, n), dim=(-2, -1))


def test_whitening_flattens_coloured_noise() -> None:
    n = 128
    x = _coloured_noise(n)[0]
    _, p0 = F.radial_power_spectrum(x)
    assert float(p0[2] / p0[60]) > 100  # really coloured
    filt = F.whitening_filter(x)
    assert filt.shape == (n, n // 2 + 1)
    assert float(filt.max()) == pytest.approx(1.0) and float(filt[0, 0]) == 0.0
    white = torch.fft.irfftn(torch.fft.rfftn(x) * filt, s=(n, n))
    freq, p = F.radial_power_spectrum(white, n_bins=24)
    sel = (freq > 0.05) & (freq <= 0.5)  # skip DC/lowest bins and the sparse corners
    assert float(p[sel].max() / p[sel].min()) < 1.3  # 30 seeds: <= 1.13


def test_whitening_from_large_image_whitens_independent_boxes() -> None:
    # filter estimated on a 256^2 image, evaluated on a 128^2 grid (same pixel size),
    # applied to 16 independent realisations: flat on average (20 seeds: max/min <= 1.2)
    filt = F.whitening_filter(_coloured_noise(256)[0], output_shape=(128, 128))
    assert filt.shape == (128, 65)
    y = _coloured_noise(128, batch=16)
    white = torch.fft.irfftn(torch.fft.rfftn(y, dim=(-2, -1)) * filt, s=(128, 128), dim=(-2, -1))
    freq, p = F.radial_power_spectrum(white, n_bins=24, ndim=2)
    p = p.mean(dim=0)
    sel = (freq > 0.06) & (freq <= 0.5)
    assert float(p[sel].max() / p[sel].min()) < 1.35
    _, p_raw = F.radial_power_spectrum(y, n_bins=24, ndim=2)
    p_raw = p_raw.mean(dim=0)
    assert float(p_raw[sel].max() / p_raw[sel].min()) > 20


def test_whitening_on_template_grid_interpolates_same_curve() -> None:
    x = _coloured_noise(128, batch=2)
    big = F.whitening_filter(x, ndim=2)
    small = F.whitening_filter(x, output_shape=(64, 64))
    assert small.shape == (2, 64, 33)
    # template grid frequencies j/64 are the image grid's 2j/128: same curve up to the norm
    sub = big[:, ::2, ::2][:, :64, :33]
    ratio = small[:, 1:, 1:] / sub[:, 1:, 1:]
    assert float((ratio / ratio.mean(dim=(-2, -1), keepdim=True) - 1).abs().max()) < 1e-9
    # max_freq: filter is 1 above it and normalised below
    mf = F.whitening_filter(x[0], max_freq=0.3)
    k = F.frequency_radius((128, 128), dtype=torch.float64)
    assert torch.all(mf[k > 0.3] == 1.0)
    assert float(mf[k <= 0.3].max()) == pytest.approx(1.0)


def test_bandpass_cutoffs_in_angstrom() -> None:
    ps = 2.0
    # lowpass 8 Å -> 0.25 cycles/px = column 16 of 64; highpass 32 Å -> 0.0625 = column 4
    f = F.bandpass_filter(
        (64, 64), pixel_size=ps, lowpass_angstrom=8.0, highpass_angstrom=32.0, falloff=0.1
    )
    assert f.shape == (64, 33)
    assert float(f[0, 16]) == pytest.approx(0.5, abs=1e-6)
    assert float(f[0, 4]) == pytest.approx(0.5, abs=1e-6)
    assert float(f[0, 0]) == 0.0 and float(f[0, 10]) == pytest.approx(1.0)
    assert float(f[0, 20]) == 0.0 and float(f[0, 32]) == 0.0  # > 0.25 + 0.05
    assert float(f[0, 12]) == pytest.approx(1.0)  # < 0.25 - 0.05 (edge starts at 0.2)
    # along y too (isotropic)
    assert torch.allclose(f[:33, 0], f[0, :33])
    # hard edges
    h = F.bandpass_filter((64, 64), pixel_size=ps, lowpass_angstrom=8.0)
    assert float(h[0, 16]) == 1.0 and float(h[0, 17]) == 0.0
    # Gaussian (pyTME): 0.5 at the cut-off
    g = F.bandpass_filter(
        (64, 64), pixel_size=ps, lowpass_angstrom=8.0, highpass_angstrom=32.0, mode="gaussian"
    )
    k = 16 / 64 / ps
    expected = math.exp(-math.log(2) * k**2 * 64) * (1 - math.exp(-math.log(2) * k**2 * 32**2))
    assert float(g[0, 16]) == pytest.approx(expected, rel=1e-5)
    g_lp = F.bandpass_filter((64, 64), pixel_size=ps, lowpass_angstrom=8.0, mode="gaussian")
    assert float(g_lp[0, 16]) == pytest.approx(0.5, rel=1e-6)


def test_bandpass_errors() -> None:
    with pytest.raises(InputError, match="pixel_size"):
        F.bandpass_filter((8, 8), pixel_size=-1.0, lowpass_angstrom=4.0)
    with pytest.raises(InputError, match="larger"):
        F.bandpass_filter((8, 8), pixel_size=1.0, lowpass_angstrom=20.0, highpass_angstrom=10.0)
    with pytest.raises(InputError):
        F.bandpass_filter((8, 8), pixel_size=float("nan"), lowpass_angstrom=4.0)


# ------------------------------------------------------------------------------------------
# resampling and pruned FFT
# ------------------------------------------------------------------------------------------
def test_fourier_crop_band_limited_equals_analytic() -> None:
    old, new = (48, 40), (24, 16)
    comps = [(2, 3, 0.2), (-7, 5, 1.0), (11, -7, -0.5), (0, 4, 0.7)]  # below the new Nyquist

    def field(shape, step):
        y, x = np.meshgrid(
            np.arange(shape[0]) * step[0], np.arange(shape[1]) * step[1], indexing="ij"
        )
        return 0.3 + sum(
            np.cos(2 * np.pi * (fy * y / old[0] + fx * x / old[1]) + ph) for fy, fx, ph in comps
        )

    img = field(old, (1.0, 1.0))
    got = F.fourier_crop(img, new)
    ref = field(new, (old[0] / new[0], old[1] / new[1]))
    np.testing.assert_allclose(got, ref, atol=1e-10)
    binned = F.fourier_bin(torch.as_tensor(img, dtype=torch.float32), 2)
    assert binned.shape == (24, 20)
    np.testing.assert_allclose(binned.numpy(), field((24, 20), (2.0, 2.0)), atol=1e-4)


@pytest.mark.parametrize(
    ("old", "new"), [((20, 18), (10, 8)), ((21, 17), (12, 9)), ((9, 8, 10), (6, 5, 4))]
)
def test_fourier_crop_matches_scipy_resample(rng: np.random.Generator, old, new) -> None:
    x = rng.normal(size=(2, *old))  # not band-limited: exercises the Nyquist folding
    ref = x
    for ax, m in enumerate(new):
        ref = scipy.signal.resample(ref, m, axis=ax + 1)
    got = F.fourier_crop(x, new)
    np.testing.assert_allclose(got, ref, atol=1e-12)


@pytest.mark.parametrize(
    ("old", "new"),
    [((10, 8), (20, 18)), ((9, 7), (16, 11)), ((12, 9), (7, 16)), ((6, 5, 8), (9, 10, 5))],
)
def test_fourier_resample_matches_scipy(rng: np.random.Generator, old, new) -> None:
    x = rng.normal(size=(2, *old))
    ref = x
    for ax, m in enumerate(new):
        ref = scipy.signal.resample(ref, m, axis=ax + 1)
    got = F.fourier_resample(x, new)
    np.testing.assert_allclose(got, ref, atol=1e-12)
    # up then down is the identity
    if all(m >= n for m, n in zip(new, old, strict=True)):
        np.testing.assert_allclose(F.fourier_crop(got, old), x, atol=1e-12)


def test_fourier_crop_3d_odd_and_errors(rng: np.random.Generator) -> None:
    old, new = (15, 12, 10), (9, 7, 5)
    z, y, x = np.meshgrid(*(np.arange(n) for n in old), indexing="ij")
    f = lambda zz, yy, xx: np.cos(2 * np.pi * (2 * zz / 15 + yy / 12 - 2 * xx / 10))  # noqa: E731
    got = F.fourier_crop(f(z, y, x), new)
    zn, yn, xn = np.meshgrid(
        *(np.arange(n) * o / m for n, o, m in zip(new, old, new, strict=True)), indexing="ij"
    )
    np.testing.assert_allclose(got, f(zn, yn, xn), atol=1e-10)
    with pytest.raises(InputError):
        F.fourier_crop(rng.normal(size=(8, 8)), (9, 4))
    with pytest.raises(InputError):
        F.fourier_bin(rng.normal(size=(8, 8)), 0.5)


def test_rfftn_padded_equals_padded_rfftn(rng: np.random.Generator) -> None:
    x = torch.as_tensor(rng.normal(size=(3, 5, 7, 6)))
    ref = torch.fft.rfftn(x, s=(11, 12, 16), dim=(-3, -2, -1))
    for prune in (None, True, False):
        got = F.rfftn_padded(x, (11, 12, 16), prune=prune)
        assert torch.allclose(got, ref, atol=1e-10)
    got2 = F.rfftn_padded(x[0, 0], (20, 9))
    assert torch.allclose(got2, torch.fft.rfftn(x[0, 0], s=(20, 9)), atol=1e-10)
    # centred: template index m // 2 at the origin (wrapped around the corners)
    big = torch.zeros(3, 11, 12, 16, dtype=torch.float64)
    big[:, :5, :7, :6] = x
    ref_c = torch.fft.rfftn(torch.roll(big, (-2, -3, -3), dims=(-3, -2, -1)), dim=(-3, -2, -1))
    for prune in (True, False):
        got_c = F.rfftn_padded(x, (11, 12, 16), center=True, prune=prune)
        assert torch.allclose(got_c, ref_c, atol=1e-10)


# ------------------------------------------------------------------------------------------
# array kinds
# ------------------------------------------------------------------------------------------
def test_kinds_and_dtypes(rng: np.random.Generator) -> None:
    x64 = rng.normal(size=(16, 16))
    x32 = torch.as_tensor(x64, dtype=torch.float32)
    for fn in (
        lambda a: F.whitening_filter(a),
        lambda a: F.fourier_crop(a, (8, 8)),
        lambda a: F.pad_to(a, (20, 20)),
        lambda a: F.radial_power_spectrum(a)[1],
        lambda a: F.cross_correlate(a, a[:4, :4]),
    ):
        out_np = fn(x64)
        out_t = fn(x32)
        assert isinstance(out_np, np.ndarray) and out_np.dtype == np.float64
        assert isinstance(out_t, torch.Tensor) and out_t.dtype == torch.float32
        np.testing.assert_allclose(
            out_t.numpy(), out_np, rtol=1e-3, atol=1e-3 * np.abs(out_np).max()
        )


def test_whitening_and_spectrum_of_volumes() -> None:
    # 3D (pyTME-style): coloured noise volume whitened by its own filter
    n = 32
    k = F.frequency_radius((n, n, n), dtype=torch.float64)
    colour = 1.0 / (0.05 + k)
    noise = torch.randn(n, n, n, dtype=torch.float64)
    v = torch.fft.irfftn(torch.fft.rfftn(noise) * colour, s=(n, n, n))
    filt = F.whitening_filter(v)
    assert filt.shape == (n, n, n // 2 + 1)
    freq, p0 = F.radial_power_spectrum(v, n_bins=16)
    sel = (freq > 0.05) & (freq <= 0.5)
    assert float(p0[sel].max() / p0[sel].min()) > 20
    _, p = F.radial_power_spectrum(
        torch.fft.irfftn(torch.fft.rfftn(v) * filt, s=(n, n, n)), n_bins=16
    )
    assert float(p[sel].max() / p[sel].min()) < 1.45  # 10 seeds: <= 1.31


@requires_cuda
def test_cuda_in_cuda_out() -> None:
    x = torch.randn(2, 64, 64, device="cuda")
    assert F.whitening_filter(x, ndim=2).device.type == "cuda"
    assert F.cross_correlate(x, x[0, :8, :8]).device.type == "cuda"
    assert F.fourier_crop(x, (32, 32)).device.type == "cuda"
    b = F.bandpass_filter((64, 64), pixel_size=1.0, lowpass_angstrom=4.0, device="cuda")
    assert b.device.type == "cuda"
    ft = torch.fft.rfftn(x, dim=(-2, -1))
    y = F.fourier_shift(ft, torch.tensor([1.0, 2.0], device="cuda"), image_shape=(64, 64))
    assert torch.allclose(
        torch.fft.irfftn(y, s=(64, 64)), torch.roll(x, (1, 2), (-2, -1)), atol=1e-5
    )


def test_wrong_ndim_errors(rng: np.random.Generator) -> None:
    five = rng.normal(size=(2, 2, 2, 4, 4))
    with pytest.raises(InputError, match="ndim"):
        F.radial_power_spectrum(five)
    with pytest.raises(InputError, match="ndim"):
        F.whitening_filter(five)
    with pytest.raises(InputError, match="at least 2 dimensions"):
        F.fourier_crop(rng.normal(size=8), (4, 4))
    with pytest.raises(InputError, match="empty"):
        F.radial_power_spectrum(np.zeros((0, 4)))
    with pytest.raises(InputError, match="positive integers"):
        F.pad_to(rng.normal(size=(4, 4)), (8, -1))
    with pytest.raises(InputError, match="real"):
        F.fourier_crop(np.ones((4, 4), dtype=complex), (2, 2))

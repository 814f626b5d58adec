"""Z look-up tables: spline interpolation (vs SciPy), I/O, lookup of planted z."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.interpolate import CubicSpline

from corrscan.errors import FileFormatError, InputError
from corrscan.synthetic.beads import simulate_beads
from corrscan.track import ZLUT, TrackFlag, lookup_z, radial_profile
from corrscan.track.zlut import spline_upsample

from .conftest import Z_LUT, planted, rms


def test_spline_matches_scipy_natural_spline(rng: np.random.Generator) -> None:
    z = np.sort(rng.uniform(0, 10, 9))
    vals = np.sin(z)[:, None] * np.array([1.0, -2.0]) + z[:, None] ** 2 * 0.1
    zf, vf = spline_upsample(torch.tensor(z), torch.tensor(vals), 5)
    ref = CubicSpline(z, vals, bc_type="natural", axis=0)(zf.numpy())
    assert zf.shape == ((len(z) - 1) * 5 + 1,)
    np.testing.assert_allclose(vf.numpy(), ref, atol=1e-10)
    np.testing.assert_allclose(vf.numpy()[::5], vals, atol=1e-12)  # knots reproduced


def test_zlut_validation_sorting_and_io(tmp_path) -> None:
    z = np.array([300.0, 0.0, 100.0, 200.0])
    prof = np.arange(12.0).reshape(4, 3)
    lut = ZLUT(z=z, profiles=prof, metadata={"a": 1})
    np.testing.assert_array_equal(lut.z, [0.0, 100.0, 200.0, 300.0])
    np.testing.assert_array_equal(lut.profiles[0], prof[1])
    path = lut.save(tmp_path / "lut.npz")
    back = ZLUT.load(path)
    np.testing.assert_array_equal(back.profiles, lut.profiles)
    assert back.metadata == {"a": 1} and back.oversample == 1
    mt = lut.to_magtrack()
    assert mt.shape == (4, 4)
    np.save(tmp_path / "mt.npy", mt)
    np.testing.assert_array_equal(ZLUT.load(tmp_path / "mt.npy").profiles, lut.profiles)
    with pytest.raises(InputError):
        ZLUT(z=z[:3], profiles=prof)
    with pytest.raises(InputError):
        ZLUT(z=np.array([0.0, 0.0, 1.0, 2.0]), profiles=prof)
    with pytest.raises(InputError):
        ZLUT(z=z, profiles=np.full((4, 3), np.nan))
    with pytest.raises(FileFormatError):
        ZLUT.load(tmp_path / "missing.npz")


def test_lookup_planted_z_true_centres(zlut: ZLUT) -> None:
    """Profiles at the planted centres, z uniform in +-3 um, table 100 nm apart:
    RMS <= 3 nm noise-free (MagTrack's 7-point parabola: ~29 nm on such data)."""
    xyz = planted(150, seed=31)
    stack, truth = simulate_beads(xyz)
    prof, counts = radial_profile(stack, truth["x_px"], truth["y_px"], return_counts=True)
    z, r, flags = lookup_z(prof, zlut, weights=counts)
    assert (flags == 0).all() and (r > 0.99).all()
    assert rms(z - xyz[:, 2]) < 3.0


def test_lookup_out_of_range_is_flagged(zlut: ZLUT) -> None:
    xyz = np.array([[0.0, 0.0, 6000.0], [0.0, 0.0, -7000.0], [0.0, 0.0, 0.0]])
    stack, truth = simulate_beads(xyz)
    prof = radial_profile(stack, truth["x_px"], truth["y_px"])
    out = TrackFlag.Z_OUT_OF_RANGE | TrackFlag.Z_LOW_CORRELATION
    z, r, flags = lookup_z(prof, zlut, min_correlation=0.98)
    assert np.isnan(z[:2]).all() and (flags[:2] & out).all()
    assert abs(z[2]) < 5.0 and flags[2] == 0 and r[2] > 0.999
    # without the correlation cut-off a bead beyond the table matches a wrong plane
    z_any, _, _ = lookup_z(prof, zlut)
    assert np.isfinite(z_any[:2]).any()


def test_lookup_bin_mismatch_raises(zlut: ZLUT) -> None:
    with pytest.raises(InputError):
        lookup_z(np.zeros((2, zlut.n_bins + 1)), zlut)


def test_per_bead_tables(zlut: ZLUT) -> None:
    """Two tables (the second rescaled: Pearson is affine-invariant), profiles (T, 2, B)."""
    lut2 = ZLUT(z=zlut.z, profiles=np.stack([zlut.profiles, 2.0 * zlut.profiles + 1.0]))
    xyz = planted(10, seed=4)
    stack, truth = simulate_beads(xyz)
    prof = radial_profile(stack, truth["x_px"], truth["y_px"]).reshape(5, 2, -1)
    z, _, flags = lookup_z(prof, lut2)
    assert z.shape == (5, 2) and (flags == 0).all()
    assert rms(z.reshape(-1) - xyz[:, 2]) < 5.0
    with pytest.raises(InputError):
        lookup_z(prof.reshape(10, -1), lut2)
    assert Z_LUT.shape[0] == zlut.n_ref

"""Whole tracker: planted x, y, z (bounds in nm per test), bad images per bead, kinds,
Z-LUT building from sweeps, ROI cropping, config."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from corrscan.errors import ConfigError, InputError
from corrscan.synthetic.beads import simulate_beads, simulate_focus_sweep
from corrscan.track import TrackConfig, TrackFlag, build_zlut, crop_rois, track_stack

from .conftest import Z_LUT, planted, rms


def test_planted_xyz_noise_free(zlut, beads_clean) -> None:
    """Saturating camera (MagTrack's simulator settings), offsets +-1.5 px, z +-3 um, LUT
    100 nm apart: x, y <= 1.6 nm RMS, z <= 3 nm RMS (MagTrack: ~1.2 / ~29 nm)."""
    stack, truth, xyz = beads_clean
    res = track_stack(stack, zlut)
    assert (res.flags == 0).all()
    assert rms((res.x - truth["x_px"]) * 100) < 1.6
    assert rms((res.y - truth["y_px"]) * 100) < 1.6
    assert rms(res.z - xyz[:, 2]) < 3.0


def test_planted_xyz_shot_noise(zlut, beads_noisy) -> None:
    """Poisson noise, 1,000 photons at I = 1 (~400 per background pixel): x, y <= 2 nm RMS,
    z <= 5 nm RMS (MagTrack: ~1.8 / ~29 nm)."""
    stack, truth, xyz = beads_noisy
    res = track_stack(stack, zlut)
    assert (res.flags == 0).all()
    assert rms((res.x - truth["x_px"]) * 100) < 2.0
    assert rms((res.y - truth["y_px"]) * 100) < 2.0
    assert rms(res.z - xyz[:, 2]) < 5.0


def test_z_independent_of_subpixel_position(zlut) -> None:
    """Same z, bead at 0, 0.25, 0.5 px offsets in x and y, table recorded at 0 px.
    Unsaturated camera: z spread across offsets < 4 nm at every z. Saturating camera (the
    clipped images alias differently per sub-pixel phase): z RMS < 3 nm at each offset
    (MagTrack: 25 / 27 / 60 nm)."""
    z = np.repeat(np.linspace(-2500, 2500, 11), 3)
    off = np.tile([0.0, 25.0, 50.0], 11)
    sweep, _ = simulate_focus_sweep(Z_LUT, clip=False)
    lut_lin = build_zlut(sweep, Z_LUT, center="roi")
    stack, _ = simulate_beads(np.c_[off, off, z], clip=False)
    zz = track_stack(stack, lut_lin).z.reshape(11, 3)
    assert (zz.max(1) - zz.min(1)).max() < 4.0
    stack, _ = simulate_beads(np.c_[off, off, z])
    err = (track_stack(stack, zlut).z - z).reshape(11, 3)
    assert np.sqrt(np.mean(err**2, axis=0)).max() < 3.0


def test_bad_images_flagged_per_bead_never_failing_the_batch(zlut, beads_clean) -> None:
    stack, _truth, _xyz = beads_clean
    good = stack[:8].copy()
    edge, _ = simulate_beads(np.array([[3000.0, 0.0, 500.0]]))  # 30 px off: 2 px from edge
    bad = np.concatenate([good, good[:3], edge])
    bad[8, 10, 10] = np.nan  # NaN pixel
    bad[9] = 0.4  # blank (dropped) frame
    bad[10] = np.inf
    before = bad.copy()
    res = track_stack(bad, zlut)
    np.testing.assert_array_equal(bad, before)
    assert res.flags[8] == TrackFlag.NONFINITE and res.flags[10] == TrackFlag.NONFINITE
    assert res.flags[9] == TrackFlag.BLANK
    assert res.flags[11] & (TrackFlag.EDGE | TrackFlag.XY_FAILED)
    for f in ("x", "y", "z"):
        assert np.isnan(getattr(res, f)[8:]).all()
    ref = track_stack(good, zlut)
    np.testing.assert_allclose(res.x[:8], ref.x, atol=1e-5)
    np.testing.assert_allclose(res.z[:8], ref.z, atol=1e-3)
    assert (res.flags[:8] == 0).all()


def test_z_out_of_range_keeps_xy(zlut) -> None:
    stack, truth = simulate_beads(np.array([[20.0, -30.0, 7000.0]]))
    res = track_stack(stack, zlut)
    out = TrackFlag.Z_OUT_OF_RANGE | TrackFlag.Z_LOW_CORRELATION
    assert res.flags[0] & out and not res.flags[0] & ~out and np.isnan(res.z[0])
    assert abs(res.x[0] - truth["x_px"][0]) < 0.05


def test_kinds_integers_batch_shape_and_no_lut(beads_noisy) -> None:
    stack, truth, _ = beads_noisy
    counts = np.round(stack[:12] * 1000).astype(np.uint16).reshape(3, 4, 64, 64)
    res = track_stack(counts)
    assert res.x.shape == (3, 4) and np.isnan(res.z).all() and res.profiles.shape == (3, 4, 32)
    assert np.abs(res.x.reshape(-1) - truth["x_px"][:12]).max() < 0.05
    t = torch.from_numpy(counts)
    res_t = track_stack(t, dtype="float64")
    assert isinstance(res_t.x, torch.Tensor) and res_t.x.dtype == torch.float64
    np.testing.assert_allclose(res_t.x.numpy(), res.x, atol=1e-4)
    threads = torch.get_num_threads()
    res_1 = track_stack(counts, cpu_threads=1)
    assert torch.get_num_threads() == threads
    np.testing.assert_allclose(res_1.x, res.x, atol=1e-5)
    df = res.to_dataframe()
    assert list(df.columns) == ["index", "x", "y", "z", "flags", "r"] and len(df) == 12


def test_build_zlut_from_jittered_noisy_sweep_tracks_held_out_beads() -> None:
    """Sweep with 0.3-px lateral jitter, 3 noisy frames per plane, profiles at the tracked
    centres: held-out noisy beads z <= 6 nm RMS."""
    z = np.arange(-2000.0, 2001.0, 100.0)
    sweep, _ = simulate_focus_sweep(z, xy_jitter_px=0.3, frames_per_plane=3, photons=1000.0, seed=8)
    lut = build_zlut(sweep, np.repeat(z, 3))
    assert lut.n_ref == z.shape[0]
    np.testing.assert_allclose(lut.z, z)
    xyz = planted(80, seed=41, z_nm=1500.0)
    stack, _ = simulate_beads(xyz, photons=1000.0, seed=9)
    res = track_stack(stack, lut)
    assert (res.flags == 0).all()
    assert rms(res.z - xyz[:, 2]) < 6.0
    # z_step grouping of stage positions with jitter gives the same planes
    stage = np.repeat(z, 3) + np.tile([-3.0, 0.0, 3.0], z.shape[0])
    lut2 = build_zlut(sweep, stage, z_step=100.0)
    np.testing.assert_allclose(lut2.z, z, atol=1e-9)


def test_per_bead_zlut_in_track_stack(zlut) -> None:
    sweep, _ = simulate_focus_sweep(Z_LUT[20:61])
    pair = np.stack([sweep, sweep[:, ::-1, :]], axis=1)  # bead 2 is mirrored: its own table
    lut = build_zlut(pair, Z_LUT[20:61])  # mirrored bead sits on row 31: use tracked centres
    assert lut.profiles.shape == (2, 41, 32)
    xyz = planted(6, seed=5, xy_nm=0.0, z_nm=1500.0)
    a, _ = simulate_beads(xyz)
    res = track_stack(np.stack([a, a[:, ::-1, :]], axis=1), lut)
    assert res.z.shape == (6, 2)
    assert rms(res.z - xyz[:, 2:3]) < 5.0
    with pytest.raises(InputError):
        track_stack(a, lut)


def test_crop_rois_matches_slicing(rng: np.random.Generator) -> None:
    frames = rng.random((3, 50, 60))
    rois = np.array([[0, 10, 5, 15], [30, 40, 48, 58]])
    out = crop_rois(frames, rois)
    assert out.shape == (3, 2, 10, 10)
    np.testing.assert_array_equal(out[:, 0], frames[:, 0:10, 5:15])
    np.testing.assert_array_equal(out[:, 1], frames[:, 30:40, 48:58])
    np.testing.assert_array_equal(crop_rois(frames, rois[:, [0, 2]], size=10), out)
    with pytest.raises(InputError):
        crop_rois(frames, np.array([[0, 10, 0, 12]]))
    with pytest.raises(InputError):
        crop_rois(frames, np.array([[45, 55, 0, 10]]))


def test_config_yaml_and_overrides(tmp_path) -> None:
    p = tmp_path / "track.yaml"
    p.write_text("n_iterations: 2\nedge_margin_px: 6\n")
    cfg = TrackConfig.from_yaml(p)
    assert cfg.n_iterations == 2 and cfg.edge_margin_px == 6
    p.write_text("n_iteration: 2\n")
    with pytest.raises(ConfigError):
        TrackConfig.from_yaml(p)
    with pytest.raises(ConfigError):
        track_stack(np.zeros((1, 16, 16)), n_iterations=0)


def test_cpu_threads_set_for_the_call_and_restored(zlut, beads_clean, monkeypatch) -> None:
    """Default ``cpu_threads=1`` holds inside every pipeline entry point (native, Z-LUT builder,
    MagTrack compat) and the caller's thread count is restored, also after an error."""
    import corrscan.track.pipeline as pipeline
    from corrscan.track import magtrack_api as mt

    stack, _truth, _ = beads_clean
    seen: list[int] = []
    kernel = pipeline.track_kernel

    def spy(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return kernel(*args, **kwargs)

    monkeypatch.setattr(pipeline, "track_kernel", spy)
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        track_stack(stack[:4], zlut)
        build_zlut(stack[:6], np.arange(6.0))
        mt.stack_to_xyzp(np.moveaxis(stack[:4], 0, -1), zlut.to_magtrack())
        assert seen == [1, 1, 1] and torch.get_num_threads() == 2
        track_stack(stack[:2], zlut, cpu_threads=None)
        assert seen[-1] == 2 and torch.get_num_threads() == 2
        with pytest.raises(InputError):  # error inside the call: threads still restored
            track_stack(stack[:4], zlut, n_bins=20)
        assert seen[-1] == 1 and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(old)
    assert TrackConfig().cpu_threads == 1


def test_far_off_centre_beads_tracked_then_flagged(zlut) -> None:
    """64-px ROI, bead radius 15 px: centres up to 20 px off the ROI centre are found (x within
    0.05 px, z within 3 nm); at 24 px (bead half outside the ROI) the image is not radially
    symmetric about any centre: XY_FAILED with NaN x, y, z, never a wrong number."""
    offs = np.array([0.0, 1200.0, 1800.0, 2000.0, 2400.0])
    stack, truth = simulate_beads(np.c_[offs, np.zeros(5), np.full(5, 1200.0)])
    res = track_stack(stack, zlut)
    assert (res.flags[:4] == 0).all()
    assert np.abs(res.x[:4] - truth["x_px"][:4]).max() < 0.05
    assert np.abs(res.z[:4] - 1200.0).max() < 3.0
    assert res.flags[4] == TrackFlag.XY_FAILED
    assert np.isnan([res.x[4], res.y[4], res.z[4]]).all()

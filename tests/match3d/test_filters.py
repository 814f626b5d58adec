"""Wedge, tilt weighting, CTF, band-pass and whitening filters against known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from corrscan.core.ctf import ctf_1d
from corrscan.errors import ConfigError, FileFormatError, InputError
from corrscan.match3d.filters import (
    FilterConfig,
    apply_filter,
    continuous_wedge,
    target_filter,
    template_filter,
    tilt_wedge,
)

SHAPE = (32, 32, 32)


def _at(filt, kz, ky, kx):
    """Value of an rfft-grid filter at integer frequency indices (kx >= 0)."""
    return float(filt[kz % SHAPE[0], ky % SHAPE[1], kx])


def test_continuous_wedge_geometry():
    w = continuous_wedge(SHAPE, -60.0, 60.0)
    assert _at(w, 0, 0, 5) == 1.0  # untilted plane (kz = 0)
    assert _at(w, 5, 0, 0) == 0.0  # beam direction: never measured
    assert _at(w, 0, 7, 0) == 1.0  # tilt axis: always measured
    # plane angle atan2(-kz, kx): 45 degrees measured, 70 degrees missing
    assert _at(w, -4, 0, 4) == 1.0 and _at(w, 4, 0, 4) == 1.0
    assert _at(w, -11, 0, 4) == 0.0
    asym = continuous_wedge(SHAPE, -30.0, 60.0)
    assert _at(asym, -4, 0, 4) == 1.0  # +45 measured
    assert _at(asym, 4, 0, 4) == 0.0  # -45 missing
    wx = continuous_wedge(SHAPE, -60.0, 60.0, tilt_axis="x")
    assert _at(wx, 0, 5, 0) == 1.0 and _at(wx, 0, 0, 7) == 1.0 and _at(wx, 5, 0, 0) == 0.0
    with pytest.raises(InputError):
        continuous_wedge(SHAPE, 60.0, -60.0)


def test_tilt_series_wedge_approaches_continuous_wedge():
    cfg = FilterConfig(tilt_angles=list(np.arange(-60.0, 60.1, 2.0)))
    w = tilt_wedge(SHAPE, 1.0, cfg)
    c = continuous_wedge(SHAPE, -60.0, 60.0)
    k = torch.linalg.vector_norm(
        torch.stack(
            torch.meshgrid(
                torch.fft.fftfreq(32), torch.fft.fftfreq(32), torch.fft.rfftfreq(32), indexing="ij"
            ),
            -1,
        ),
        dim=-1,
    )
    # one-voxel slabs blur the wedge edge at low |k|; above 0.25 cycles/px they agree
    band = (k > 0.25) & (k < 0.45)
    agree = ((w > 0.5) == (c > 0.5))[band].float().mean()
    assert agree > 0.93
    assert float(w.max()) <= 1.0 + 1e-6


def test_tilt_weighting_angle_and_dose():
    # a single tilt: the measured slab carries cos(theta)
    cfg = FilterConfig(tilt_angles=[30.0], tilt_weighting="angle")
    w = tilt_wedge(SHAPE, 1.0, cfg)
    # frequency in the 30-degree plane: k = (kx, 0, kz) with kz = -kx tan 30 -> kx=7, kz=-4.04
    assert float(w.max()) == pytest.approx(math.cos(math.radians(30.0)), rel=1e-6)
    assert _at(w, 0, 5, 0) == pytest.approx(math.cos(math.radians(30.0)), rel=1e-6)
    # relion dose weighting decays with frequency and with accumulated dose
    cfg = FilterConfig(tilt_angles=[0.0, 30.0], tilt_weighting="relion", dose_per_tilt=[10.0, 40.0])
    w = tilt_wedge(SHAPE, 2.0, cfg)
    k = 5 / 32 / 2.0  # cycles/Å at index 5 along y (both tilts measure the tilt axis)
    expect = (math.exp(-10.0 * k * k) + math.exp(-40.0 * k * k) * math.cos(math.radians(30))) / 2
    assert _at(w, 0, 5, 0) == pytest.approx(expect, rel=1e-5)
    cfg = FilterConfig(tilt_angles=[0.0], tilt_weighting="grigorieff", dose_per_tilt=[20.0])
    w = tilt_wedge(SHAPE, 2.0, cfg)
    ne = 0.245 * k**-1.665 + 2.81
    assert _at(w, 0, 5, 0) == pytest.approx(math.exp(-20.0 / (2 * ne)), rel=1e-5)
    with pytest.raises(InputError, match="one per tilt"):
        tilt_wedge(
            SHAPE,
            1.0,
            FilterConfig(tilt_angles=[0.0, 3.0], tilt_weighting="relion", dose_per_tilt=[1.0]),
        )


def test_ctf_matches_core_and_corrections():
    cfg = FilterConfig(defocus=20000.0, ctf_correction="raw")
    raw = template_filter(SHAPE, 2.0, cfg)
    k = torch.tensor([i / 32 for i in range(17)], dtype=torch.float64)  # cycles/px along x
    ref = ctf_1d(k, pixel_size=2.0, defocus=20000.0)
    np.testing.assert_allclose(raw[0, 0, :].numpy(), np.asarray(ref, dtype=np.float32), atol=2e-4)
    flip = template_filter(SHAPE, 2.0, FilterConfig(defocus=20000.0))
    np.testing.assert_allclose(flip.numpy(), np.abs(raw.numpy()), atol=1e-6)
    wien = template_filter(SHAPE, 2.0, FilterConfig(defocus=20000.0, ctf_correction="wiener"))
    assert float(wien.abs().max()) == pytest.approx(1.0, rel=1e-6)
    assert np.all(
        np.sign(wien.numpy()[np.abs(raw.numpy()) > 1e-3])
        == np.sign(raw.numpy()[np.abs(raw.numpy()) > 1e-3])
    )
    # per-tilt CTF with one untilted tilt equals the 3D CTF on the kz = 0 plane
    pt = template_filter(
        SHAPE,
        2.0,
        FilterConfig(defocus=20000.0, ctf_correction="raw", tilt_angles=[0.0], ctf_mode="per-tilt"),
    )
    np.testing.assert_allclose(pt[0].numpy(), raw[0].numpy(), atol=1e-5)
    assert float(pt[8].abs().max()) == 0.0  # off the slab


def test_bandpass_half_at_cutoffs_and_target_filter():
    f = template_filter(SHAPE, 2.0, FilterConfig(lowpass_angstrom=8.0))
    # |k| = 8/32 cycles/px = 1/8 cycles/Å at 2 Å/px -> the low-pass cut-off
    assert _at(f, 0, 0, 8) == pytest.approx(0.5, rel=1e-5)
    g = template_filter(SHAPE, 2.0, FilterConfig(highpass_angstrom=16.0))
    assert _at(g, 0, 4, 0) == pytest.approx(0.5, rel=1e-5) and _at(g, 0, 0, 0) == 0.0
    assert target_filter(SHAPE, 2.0, FilterConfig()) is None
    assert (
        target_filter(SHAPE, 2.0, FilterConfig(lowpass_angstrom=8.0, filter_target=False)) is None
    )
    assert template_filter(SHAPE, 2.0, FilterConfig()) is None


def test_whitening_flattens_coloured_noise(rng):
    white = torch.from_numpy(rng.normal(size=SHAPE))
    k = torch.linalg.vector_norm(
        torch.stack(
            torch.meshgrid(
                torch.fft.fftfreq(32), torch.fft.fftfreq(32), torch.fft.rfftfreq(32), indexing="ij"
            ),
            -1,
        ),
        dim=-1,
    )
    colour = 1.0 / (0.02 + k)  # strong low-frequency excess
    noisy = torch.fft.irfftn(torch.fft.rfftn(white) * colour, s=SHAPE)
    cfg = FilterConfig(whiten=True)
    filt = target_filter(SHAPE, 1.0, cfg, tomogram=noisy)
    flat = apply_filter(noisy, filt)
    p = torch.fft.rfftn(flat).abs() ** 2
    band = lambda lo, hi: float(p[(k > lo) & (k < hi)].mean())  # noqa: E731
    raw = torch.fft.rfftn(noisy).abs() ** 2
    rband = lambda lo, hi: float(raw[(k > lo) & (k < hi)].mean())  # noqa: E731
    assert rband(0.05, 0.1) / rband(0.35, 0.45) > 10
    assert 0.5 < band(0.05, 0.1) / band(0.35, 0.45) < 2.0


# --------------------------------------------------------------------- tilt metadata files
_WARP_XML = """<?xml version="1.0" encoding="utf-8"?>
<TiltSeries AreAnglesInverted="False">
  <Angles>-6
-3
0
3</Angles>
  <Dose>7.5
5
0
2.5</Dose>
  <UseTilt>True
False
True
True</UseTilt>
  <CTF>
    <Param Name="PixelSize" Value="2" />
    <Param Name="Voltage" Value="200" />
    <Param Name="Cs" Value="2.1" />
    <Param Name="Amplitude" Value="0.1" />
    <Param Name="Defocus" Value="3.2" />
  </CTF>
  <GridCTF Width="1" Height="1" Depth="4">
    <Node X="0" Y="0" Z="0" Value="3.4" />
    <Node X="0" Y="0" Z="1" Value="3.3" />
    <Node X="0" Y="0" Z="2" Value="3.2" />
    <Node X="0" Y="0" Z="3" Value="3.1" />
  </GridCTF>
</TiltSeries>
"""
_SMALL = (16, 16, 16)


def test_filter_from_warp_xml_equals_filter_from_numbers(tmp_path):
    xml = tmp_path / "TS_01.xml"
    xml.write_text(_WARP_XML)
    common = dict(tilt_weighting="relion", ctf_mode="per-tilt", ctf_correction="raw")
    from_file = FilterConfig(tilt_file=str(xml), **common)
    direct = FilterConfig(
        tilt_angles=[-6.0, 0.0, 3.0],  # UseTilt=False tilt (-3) dropped
        dose_per_tilt=[7.5, 0.0, 2.5],
        defocus=[34000.0, 32000.0, 31000.0],  # GridCTF, µm -> Å
        voltage=200.0,
        spherical_aberration=2.1,
        amplitude_contrast=0.1,
        **common,
    )
    assert from_file.tilt_angles == direct.tilt_angles
    np.testing.assert_allclose(from_file.defocus, direct.defocus)
    a = template_filter(_SMALL, 2.0, from_file)
    b = template_filter(_SMALL, 2.0, direct)
    np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=0, atol=1e-7)
    assert float(a.abs().max()) > 0.1  # a real filter, not all zeros


def test_tilt_file_explicit_fields_win_and_yaml(tmp_path):
    tlt = tmp_path / "TS_01.tlt"
    tlt.write_text("-40\n-20\n0\n20\n40\n")
    cfg = FilterConfig(tilt_file=str(tlt), tilt_weighting="angle")
    assert cfg.tilt_angles == [-40.0, -20.0, 0.0, 20.0, 40.0]
    direct = FilterConfig(tilt_angles=[-40, -20, 0, 20, 40], tilt_weighting="angle")
    assert torch.equal(template_filter(_SMALL, 1.0, cfg), template_filter(_SMALL, 1.0, direct))
    xml = tmp_path / "TS_01.xml"
    xml.write_text(_WARP_XML)
    cfg = FilterConfig(tilt_file=xml, dose_per_tilt=2.0, defocus=None, voltage=300.0)
    assert cfg.dose_per_tilt == 2.0 and cfg.defocus is None and cfg.voltage == 300.0
    assert cfg.tilt_angles == [-6.0, 0.0, 3.0] and cfg.spherical_aberration == 2.1
    # an explicit continuous wedge keeps the file's angles out
    cfg = FilterConfig(tilt_file=xml, wedge=(-60.0, 60.0))
    assert cfg.tilt_angles is None and cfg.defocus == [34000.0, 32000.0, 31000.0]
    # YAML, and a dumped config rebuilds without the file (values are explicit by then)
    y = tmp_path / "filters.yaml"
    y.write_text(f"tilt_file: {xml}\ntilt_weighting: relion\n")
    loaded = FilterConfig.from_yaml(y)
    assert loaded.dose_per_tilt == [7.5, 0.0, 2.5]
    xml.unlink()
    again = FilterConfig.from_dict(loaded.model_dump(mode="json"))
    assert again == loaded


def test_tilt_file_explicit_angles_and_errors(tmp_path):
    xml = tmp_path / "TS_01.xml"
    xml.write_text(_WARP_XML)
    all_four = FilterConfig(tilt_file=str(xml), tilt_angles=[-6, -3, 0, 3])
    assert all_four.dose_per_tilt == [7.5, 5.0, 0.0, 2.5]  # the full list matches
    used = FilterConfig(tilt_file=str(xml), tilt_angles=[-6.5, 0.5, 3.5])
    assert used.dose_per_tilt == [7.5, 0.0, 2.5]
    with pytest.raises(ConfigError, match="do not match the 2 tilt_angles"):
        FilterConfig.from_dict({"tilt_file": str(xml), "tilt_angles": [0.0, 1.0]})
    with pytest.raises(FileFormatError, match="absent.mdoc"):
        FilterConfig(tilt_file=str(tmp_path / "absent.mdoc"))
    with pytest.raises(ValidationError, match="frozen"):
        all_four.tilt_file = "other.tlt"
    ctffind = tmp_path / "diagnostic_output.txt"
    ctffind.write_text(
        "# Output from CTFFind version 4.1.14\n"
        "1 31000 30000 10 0.0 0.03 6.0\n2 30000 29000 10 3.14159265 0.03 6.0\n"
    )
    cfg = FilterConfig(tilt_file=str(ctffind))
    assert cfg.tilt_angles is None and cfg.defocus == [30500.0, 29500.0]
    assert cfg.phase_shift == pytest.approx(90.0, abs=1e-5)
    # 3D CTF from the mean defocus
    ref = FilterConfig(defocus=30000.0, phase_shift=cfg.phase_shift)
    assert torch.equal(template_filter(_SMALL, 2.0, cfg), template_filter(_SMALL, 2.0, ref))

"""Tilt-series metadata readers: known values from small hand-written files, clear errors, fuzz."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from corrscan.core.io.tilt import (
    TiltSeriesMeta,
    read_ctffind,
    read_mdoc,
    read_star_tilts,
    read_tilt_metadata,
    read_tilt_text,
    read_warp_xml,
)
from corrscan.errors import CorrscanError, FileFormatError, InputError

# --------------------------------------------------------------------- sample files (our own)
TLT = "  -3.00\n0.0\n\n# comment\n3.0\n-6.0\n6.0\n"

# acquired dose-symmetrically: 0, +3, -3, -6 (stack is sorted by angle: ZValue 0 = -6 ...)
MDOC = """PixelSpacing = 2.17
Voltage = 300
ImageFile = TS_07.mrc
ImageSize = 4096 4096

[T = SerialEM: Digitized on EMBL Krios                    01-Feb-24  10:00:00    ]

[ZValue = 0]
TiltAngle = -6.01
ExposureDose = 2.5
PixelSpacing = 2.17
Defocus = -3.1
DateTime = 01-Feb-24  10:03:00

[ZValue = 1]
TiltAngle = -2.99
ExposureDose = 2.5
PixelSpacing = 2.17
Defocus = -3.05
DateTime = 01-Feb-24  10:02:00

[ZValue = 2]
TiltAngle = 0.02
ExposureDose = 2.0
PixelSpacing = 2.17
Defocus = -3.0
DateTime = 01-Feb-24  10:00:30

[ZValue = 3]
TiltAngle = 3.01
ExposureDose = 2.5
PixelSpacing = 2.17
Defocus = -2.95
DateTime = 01-Feb-24  10:01:10
"""

WARP_XML = """<?xml version="1.0" encoding="utf-8"?>
<TiltSeries DataDirectory="" AreAnglesInverted="False" PlaneNormal="0, 0, 1">
  <Param Name="Bfactor" Value="0" />
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
  <AxisAngle>85
85
85
85</AxisAngle>
  <CTF>
    <Param Name="PixelSize" Value="1.35" />
    <Param Name="Voltage" Value="300" />
    <Param Name="Cs" Value="2.7" />
    <Param Name="Amplitude" Value="0.07" />
    <Param Name="Defocus" Value="3.2" />
    <Param Name="DefocusDelta" Value="0.05" />
    <Param Name="DefocusAngle" Value="30" />
  </CTF>
  <GridCTF Width="1" Height="1" Depth="4" Duration="1">
    <Node X="0" Y="0" Z="0" W="0" Value="3.4" />
    <Node X="0" Y="0" Z="1" W="0" Value="3.3" />
    <Node X="0" Y="0" Z="2" W="0" Value="3.2" />
    <Node X="0" Y="0" Z="3" W="0" Value="3.1" />
  </GridCTF>
</TiltSeries>
"""

TOMOSTAR = """
data_

loop_
_wrpMovieName #1
_wrpAngleTilt #2
_wrpAxisAngle #3
_wrpDose #4
../frames/TS_01_000.tif  0.0  85.0  0.0
../frames/TS_01_001.tif  3.0  85.0  3.1
../frames/TS_01_002.tif -3.0  85.0  6.2
"""

RELION5_TS = """
data_TS_01

loop_
_rlnMicrographName #1
_rlnTomoNominalStageTiltAngle #2
_rlnMicrographPreExposure #3
_rlnDefocusU #4
_rlnDefocusV #5
_rlnDefocusAngle #6
_rlnVoltage #7
_rlnSphericalAberration #8
_rlnAmplitudeContrast #9
frames/a.mrc  -3.0  3.0  31000.0  30000.0  12.0  300.0  2.7  0.1
frames/b.mrc   0.0  0.0  30500.0  29500.0  14.0  300.0  2.7  0.1
"""

CTFFIND = "\n".join(
    [
        "# Output from CTFFind version 4.1.14, run on 2024-02-01 11:00:00",
        "# Input file: /data/TS_07.mrc ; Number of micrographs: 3",
        "# Pixel size: 2.170 Angstroms ; acceleration voltage: 300.0 keV ; "
        "spherical aberration: 2.70 mm ; amplitude contrast: 0.07",
        "# Box size: 512 pixels ; min. res.: 30.0 Angstroms ; max. res.: 5.0 Angstroms ; "
        "min. def.: 5000.0 um; max. def. 50000.0 um",
        "# Columns: #1 - micrograph number; #2 - defocus 1 [Angstroms]; #3 - defocus 2; "
        "#4 - azimuth of astigmatism; #5 - additional phase shift [radians]; "
        "#6 - cross correlation; #7 - spacing (in Angstroms) up to which CTF rings were fit "
        "successfully",
        "1.000000 31000.00 30000.00 -40.00 0.000000 0.0321 6.5",
        "2.000000 30600.00 30400.00 10.00 1.570796 0.0290 7.1",
        "3.000000 30000.00 29000.00 80.00 0.000000 0.0301 6.8",
        "",
    ]
)

SAMPLES = {
    "tlt": TLT,
    "mdoc": MDOC,
    "xml": WARP_XML,
    "tomostar": TOMOSTAR,
    "txt": CTFFIND,
}
READERS = {
    "tlt": read_tilt_text,
    "mdoc": read_mdoc,
    "xml": read_warp_xml,
    "tomostar": read_star_tilts,
    "txt": read_ctffind,
}


def _write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return p


# --------------------------------------------------------------------- known answers
def test_text_tilt_file(tmp_path):
    m = read_tilt_text(_write(tmp_path, "a.tlt", TLT))
    np.testing.assert_array_equal(m.tilt_angles, [-3.0, 0.0, 3.0, -6.0, 6.0])
    assert m.use.all() and m.n_tilts == 5 and m.format == "text"
    assert m.accumulated_dose is None and m.defocus is None and m.pixel_size is None


def test_mdoc_dose_in_acquisition_order_and_defocus_sign(tmp_path):
    m = read_mdoc(_write(tmp_path, "TS_07.mdoc", MDOC))
    np.testing.assert_allclose(m.tilt_angles, [-6.01, -2.99, 0.02, 3.01])
    # acquisition order by DateTime: Z2 (2.0), Z3 (2.5), Z1 (2.5), Z0 (2.5); dose before each
    np.testing.assert_allclose(m.accumulated_dose, [7.0, 4.5, 0.0, 2.0])
    # SerialEM Defocus -3.1 µm (underfocus) -> +31000 Å in corrscan's convention
    np.testing.assert_allclose(m.defocus, [31000.0, 30500.0, 30000.0, 29500.0])
    assert m.pixel_size == pytest.approx(2.17) and m.voltage == pytest.approx(300.0)


def test_mdoc_without_dates_accumulates_in_zvalue_order(tmp_path):
    text = "\n".join(ln for ln in MDOC.splitlines() if not ln.startswith("DateTime"))
    m = read_mdoc(_write(tmp_path, "nodate.mdoc", text))
    np.testing.assert_allclose(m.accumulated_dose, [0.0, 2.5, 5.0, 7.0])
    prior = MDOC.replace("ExposureDose = 2.0", "ExposureDose = 2.0\nPriorRecordDose = 0.5")
    prior = prior.replace("ExposureDose = 2.5", "ExposureDose = 2.5\nPriorRecordDose = 9")
    m = read_mdoc(_write(tmp_path, "prior.mdoc", prior))
    np.testing.assert_allclose(m.accumulated_dose, [9.0, 9.0, 0.5, 9.0])  # SerialEM's own


def test_warp_xml(tmp_path):
    m = read_warp_xml(_write(tmp_path, "TS_01.xml", WARP_XML))
    np.testing.assert_array_equal(m.tilt_angles, [-6, -3, 0, 3])
    np.testing.assert_array_equal(m.accumulated_dose, [7.5, 5, 0, 2.5])
    np.testing.assert_array_equal(m.use, [True, False, True, True])
    np.testing.assert_allclose(m.defocus, [34000.0, 33000.0, 32000.0, 31000.0])  # GridCTF
    np.testing.assert_allclose(m.defocus_astigmatism, 500.0)
    np.testing.assert_allclose(m.astigmatism_angle, 30.0)
    np.testing.assert_allclose(m.defocus_u - m.defocus_v, 1000.0)
    assert (m.pixel_size, m.voltage, m.cs, m.amplitude_contrast) == (1.35, 300.0, 2.7, 0.07)
    s = m.selected()
    np.testing.assert_array_equal(s.tilt_angles, [-6, 0, 3])
    np.testing.assert_array_equal(s.defocus, [34000.0, 32000.0, 31000.0])
    assert s.use.all() and s.n_tilts == 3
    # no GridCTF: the <CTF> defocus applies to every tilt
    start, stop = WARP_XML.index("<GridCTF"), WARP_XML.index("</GridCTF>") + len("</GridCTF>")
    m2 = read_warp_xml(_write(tmp_path, "nogrid.xml", WARP_XML[:start] + WARP_XML[stop:]))
    np.testing.assert_allclose(m2.defocus, 32000.0)


def test_tomostar_and_relion5(tmp_path):
    m = read_star_tilts(_write(tmp_path, "TS_01.tomostar", TOMOSTAR))
    np.testing.assert_array_equal(m.tilt_angles, [0.0, 3.0, -3.0])
    np.testing.assert_allclose(m.accumulated_dose, [0.0, 3.1, 6.2])
    r = read_star_tilts(_write(tmp_path, "TS_01.star", RELION5_TS))
    np.testing.assert_array_equal(r.tilt_angles, [-3.0, 0.0])
    np.testing.assert_allclose(r.accumulated_dose, [3.0, 0.0])
    np.testing.assert_allclose(r.defocus, [30500.0, 30000.0])
    np.testing.assert_allclose(r.defocus_astigmatism, [500.0, 500.0])
    np.testing.assert_allclose(r.defocus_u, [31000.0, 30500.0])
    np.testing.assert_allclose(r.astigmatism_angle, [12.0, 14.0])
    assert (r.voltage, r.cs, r.amplitude_contrast) == (300.0, 2.7, 0.1)


def test_ctffind(tmp_path):
    m = read_ctffind(_write(tmp_path, "diagnostic_output.txt", CTFFIND))
    assert m.tilt_angles is None and m.n_tilts == 3
    np.testing.assert_allclose(m.defocus, [30500.0, 30500.0, 29500.0])
    np.testing.assert_allclose(m.defocus_astigmatism, [500.0, 100.0, 500.0])
    np.testing.assert_allclose(m.defocus_u, [31000.0, 30600.0, 30000.0])
    np.testing.assert_allclose(m.astigmatism_angle, [-40.0, 10.0, 80.0])
    np.testing.assert_allclose(m.phase_shift, [0.0, 90.0, 0.0], atol=1e-4)
    assert (m.pixel_size, m.voltage, m.cs, m.amplitude_contrast) == (2.17, 300.0, 2.7, 0.07)


def test_dispatch_by_suffix_and_content(tmp_path):
    expect = {"tlt": "text", "mdoc": "mdoc", "xml": "warp", "tomostar": "star", "txt": "ctffind"}
    for ext, text in SAMPLES.items():
        assert read_tilt_metadata(_write(tmp_path, f"f.{ext}", text)).format == expect[ext]
    # unknown suffixes are sniffed
    for name, text, fmt in [
        ("angles.txt", "10\n-10\n", "text"),
        ("meta", MDOC, "mdoc"),
        ("meta2", WARP_XML, "warp"),
        ("meta3", TOMOSTAR, "star"),
        ("rawtilts", "1.5\n", "text"),
    ]:
        assert read_tilt_metadata(_write(tmp_path, name, text)).format == fmt
    assert read_tilt_metadata(_write(tmp_path, "x.dat", "5\n"), fmt="text").n_tilts == 1
    with pytest.raises(InputError, match="unknown tilt metadata format"):
        read_tilt_metadata(tmp_path / "x.dat", fmt="imod")


# --------------------------------------------------------------------- clear errors
@pytest.mark.parametrize(
    ("name", "text", "match"),
    [
        ("e.tlt", "", "empty"),
        ("c.tlt", "# only a comment\n\n", "no tilt angles"),
        ("n.tlt", "1.0\nabc\n", "line 2: 'abc' is not a number"),
        ("i.tlt", "1.0\nnan\n", "not a finite number"),
        ("w.tlt", "1.0 2.0\n", "one tilt angle per line"),
        ("r.tlt", "1.0\n120\n", r"outside \[-90, 90\]"),
        ("a.mdoc", "PixelSpacing = 1\n", "no \\[ZValue"),
        ("b.mdoc", "[ZValue = 0]\nExposureDose = 1\n", "ZValue 0 has no TiltAngle"),
        ("d.mdoc", "[ZValue = 0]\nTiltAngle = 1\n[ZValue = 0]\nTiltAngle = 2\n", "duplicate"),
        ("f.mdoc", "[ZValue = 0]\nTiltAngle = x\n", "ZValue 0 TiltAngle: 'x'"),
        ("a.xml", "<TiltSeries><Dose>1</Dose></TiltSeries>", "no <Angles>"),
        ("b.xml", "<TiltSeries><Angles>1\n2</Angles><Dose>1</Dose></TiltSeries>", "lengths"),
        ("c.xml", "<TiltSeries><Angles>1", "not a readable Warp XML"),
        ("d.xml", "<TiltSeries><Angles>1</Angles><UseTilt>yes</UseTilt></TiltSeries>", "UseTilt"),
        ("a.star", "data_\n\nloop_\n_rlnFoo #1\n1\n", "no _wrpAngleTilt"),
        ("a.txt", "# CTFFind\n1 2 3\n", "at least 5"),
        ("b.txt", "# CTFFind\n", "no CTFFIND result rows"),
    ],
)
def test_errors_name_the_file_and_the_problem(tmp_path, name, text, match):
    p = _write(tmp_path, name, text)
    with pytest.raises(FileFormatError, match=match) as info:
        read_tilt_metadata(p)
    assert name in str(info.value)


def test_missing_and_binary_files(tmp_path):
    for ext, reader in READERS.items():
        with pytest.raises(FileFormatError, match="not found.*absent"):
            reader(tmp_path / f"absent.{ext}")
    with pytest.raises(FileFormatError, match="absent"):
        read_tilt_metadata(tmp_path / "absent.tlt")
    p = tmp_path / "bin.tlt"
    p.write_bytes(b"\x00\x01\xff\xfe")
    with pytest.raises(FileFormatError, match="bin.tlt"):
        read_tilt_metadata(p)


def test_record_checks_lengths():
    with pytest.raises(InputError, match="defocus has 2 values for 3 tilts"):
        TiltSeriesMeta(tilt_angles=np.zeros(3), defocus=np.zeros(2))
    with pytest.raises(InputError, match="use has 1 values"):
        TiltSeriesMeta(tilt_angles=np.zeros(3), use=np.ones(1, bool))


# --------------------------------------------------------------------- fuzz
FUZZ = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def _read_or_clear_error(reader, path) -> None:
    try:
        reader(path)
    except CorrscanError as exc:
        assert str(exc)


@pytest.mark.parametrize("ext", sorted(READERS))
@FUZZ
@given(data=st.binary(max_size=512))
def test_fuzz_random_bytes(tmp_path, ext, data):
    p = tmp_path / f"fuzz.{ext}"
    p.write_bytes(data)
    _read_or_clear_error(READERS[ext], p)
    _read_or_clear_error(read_tilt_metadata, p)


@pytest.mark.parametrize("ext", sorted(READERS))
@FUZZ
@given(frac=st.floats(0.0, 1.0), pos=st.floats(0.0, 1.0), byte=st.integers(0, 255))
def test_fuzz_truncated_and_mutated(tmp_path, ext, frac, pos, byte):
    valid = SAMPLES[ext].encode()
    p = tmp_path / f"cut.{ext}"
    p.write_bytes(valid[: int(len(valid) * frac)])
    _read_or_clear_error(READERS[ext], p)
    mutated = bytearray(valid)
    mutated[min(int(len(valid) * pos), len(valid) - 1)] = byte
    p.write_bytes(bytes(mutated))
    _read_or_clear_error(READERS[ext], p)
    _read_or_clear_error(read_tilt_metadata, p)


@FUZZ
@given(st.text(alphabet="0123456789.-+eE# \n\t,naif", max_size=200))
def test_fuzz_numeric_text(tmp_path, text):
    p = tmp_path / "t.tlt"
    p.write_text(text)
    _read_or_clear_error(read_tilt_text, p)
    p = tmp_path / "t.txt"
    p.write_text("# CTFFind\n" + text)
    _read_or_clear_error(read_ctffind, p)

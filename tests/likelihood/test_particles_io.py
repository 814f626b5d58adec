"""Particle stacks from RELION STAR + MRC (paired, indexed) and cryoSPARC .cs files."""

from __future__ import annotations

import mrcfile
import numpy as np
import pandas as pd
import pytest
import starfile

from corrscan.errors import FileFormatError
from corrscan.likelihood.particles import read_cryosparc, read_star_indexed, read_star_paired


def _write_stack(path, data, ps):
    with mrcfile.new(path, overwrite=True) as m:
        m.set_data(data.astype(np.float32))
        m.voxel_size = ps


def _particles(n, rng):
    return pd.DataFrame(
        {
            "rlnDefocusU": rng.uniform(8000, 20000, n),
            "rlnDefocusV": rng.uniform(8000, 20000, n),
            "rlnDefocusAngle": rng.uniform(0, 180, n),
            "rlnOriginXAngst": rng.uniform(-3, 3, n),
            "rlnOriginYAngst": rng.uniform(-3, 3, n),
            "rlnAngleRot": rng.uniform(0, 360, n),
            "rlnOpticsGroup": np.ones(n, dtype=int),
        }
    )


def _optics(ps):
    return pd.DataFrame(
        {
            "rlnOpticsGroup": [1],
            "rlnVoltage": [200.0],
            "rlnSphericalAberration": [2.7],
            "rlnAmplitudeContrast": [0.1],
            "rlnImagePixelSize": [ps],
        }
    )


def test_paired_star_and_mrc(tmp_path, rng):
    data = rng.standard_normal((5, 8, 8))
    _write_stack(tmp_path / "s.mrcs", data, 1.5)
    parts = _particles(5, rng)
    starfile.write({"optics": _optics(1.5), "particles": parts}, tmp_path / "s.star")
    st = read_star_paired(tmp_path / "s.star", tmp_path / "s.mrcs")
    np.testing.assert_allclose(st.images, data.astype(np.float32))
    assert st.pixel_size == 1.5
    np.testing.assert_allclose(st.ctf.defocus_u, parts["rlnDefocusU"], rtol=1e-6)
    np.testing.assert_allclose(st.ctf.voltage, 200.0)
    np.testing.assert_allclose(st.table["origin_x"], parts["rlnOriginXAngst"] / 1.5, rtol=1e-5)
    starfile.write({"optics": _optics(1.5), "particles": parts.iloc[:4]}, tmp_path / "bad.star")
    with pytest.raises(FileFormatError, match="5 images but"):
        read_star_paired(tmp_path / "bad.star", tmp_path / "s.mrcs")


def test_indexed_star_across_two_stacks(tmp_path, rng):
    a, b = rng.standard_normal((3, 8, 8)), rng.standard_normal((4, 8, 8))
    (tmp_path / "Extract").mkdir()
    _write_stack(tmp_path / "Extract" / "a.mrcs", a, 2.0)
    _write_stack(tmp_path / "Extract" / "b.mrcs", b, 2.0)
    names = ["2@Extract/b.mrcs", "1@Extract/a.mrcs", "3@Extract/a.mrcs", "4@Extract/b.mrcs"]
    parts = _particles(4, rng)
    parts["rlnImageName"] = names
    (tmp_path / "job").mkdir()
    starfile.write({"optics": _optics(2.0), "particles": parts}, tmp_path / "job" / "p.star")
    st = read_star_indexed(tmp_path / "job" / "p.star")  # paths relative to the project dir
    np.testing.assert_allclose(st.images, np.stack([b[1], a[0], a[2], b[3]]).astype(np.float32))
    assert list(st.table["source_index"]) == [1, 0, 2, 3]
    parts["rlnImageName"] = ["9@Extract/a.mrcs"] * 4
    starfile.write({"optics": _optics(2.0), "particles": parts}, tmp_path / "job" / "q.star")
    with pytest.raises(FileFormatError, match="index 9"):
        read_star_indexed(tmp_path / "job" / "q.star")


def test_cryosparc_cs(tmp_path, rng):
    a = rng.standard_normal((3, 8, 8))
    (tmp_path / "J3").mkdir()
    _write_stack(tmp_path / "J3" / "x.mrc", a, 1.2)
    n = 2
    dt = [
        ("blob/path", "S20"), ("blob/idx", "<u4"), ("blob/psize_A", "<f4"),
        ("ctf/df1_A", "<f4"), ("ctf/df2_A", "<f4"), ("ctf/df_angle_rad", "<f4"),
        ("ctf/cs_mm", "<f4"), ("ctf/accel_kv", "<f4"), ("ctf/amp_contrast", "<f4"),
        ("ctf/phase_shift_rad", "<f4"), ("alignments3D/shift", "<f4", (2,)),
        ("alignments3D/psize_A", "<f4"),
    ]  # fmt: skip
    cs = np.zeros(n, dtype=dt)
    cs["blob/path"] = [b">J3/x.mrc", b"J3/x.mrc"]
    cs["blob/idx"] = [2, 0]
    cs["blob/psize_A"] = 1.2
    cs["ctf/df1_A"] = [10000, 12000]
    cs["ctf/df2_A"] = [9000, 12500]
    cs["ctf/df_angle_rad"] = [0.5, 1.0]
    cs["ctf/cs_mm"] = 2.7
    cs["ctf/accel_kv"] = 300
    cs["ctf/amp_contrast"] = 0.07
    cs["ctf/phase_shift_rad"] = [0.0, np.pi / 2]
    cs["alignments3D/shift"] = [[1.0, -2.0], [0.5, 0.0]]
    cs["alignments3D/psize_A"] = 2.4  # shifts in pixels of a 2x binned alignment
    with open(tmp_path / "J3" / "p.cs", "wb") as fh:
        np.save(fh, cs)
    st = read_cryosparc(tmp_path / "J3" / "p.cs")
    np.testing.assert_allclose(st.images, a[[2, 0]].astype(np.float32))
    np.testing.assert_allclose(st.ctf.astigmatism_angle, np.rad2deg([0.5, 1.0]), rtol=1e-6)
    np.testing.assert_allclose(st.ctf.phase_shift, [0.0, 90.0], atol=1e-4)
    np.testing.assert_allclose(st.table["origin_x"], [2.0, 1.0])
    np.testing.assert_allclose(st.table["origin_y"], [-4.0, 0.0])

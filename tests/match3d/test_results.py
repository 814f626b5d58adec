"""Result bundles: core write_bundle/read_bundle layout, exact round trip, atomic, no clobber."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from corrscan.core.io.bundle import read_bundle
from corrscan.errors import FileFormatError, InputError, ResultExistsError
from corrscan.match3d.results import (
    MatchResult,
    dynamo_euler_to_matrices,
    matrices_to_dynamo_euler,
    read_table,
    write_table,
)
from corrscan.match3d.rotations import relion_euler_to_matrices, super_fibonacci_rotations


def _result(rng, n_rot=7, shape=(5, 6, 7)):
    rots = super_fibonacci_rotations(n_rot).astype(np.float32)
    ri = rng.integers(-1, n_rot, size=shape).astype(np.int32)
    return MatchResult(
        scores=rng.normal(size=shape).astype(np.float32),
        rotation_index=ri,
        rotations=rots,
        pixel_size=2.5,
        score_mean=0.125,
        score_std=0.75,
        score_count=int(np.prod(shape)) * n_rot,
        template_shape=(3, 3, 3),
        metadata={"score": "CC", "n_rotations": n_rot, "angular_step": None},
    )


def _same(a: MatchResult, b: MatchResult) -> None:
    np.testing.assert_array_equal(a.scores, b.scores)
    np.testing.assert_array_equal(a.rotation_index, b.rotation_index)
    np.testing.assert_array_equal(a.rotations, b.rotations)
    assert (a.pixel_size, a.score_mean, a.score_std, a.score_count) == (
        b.pixel_size,
        b.score_mean,
        b.score_std,
        b.score_count,
    )
    assert a.template_shape == b.template_shape and a.metadata == b.metadata


def test_bundle_layout_and_exact_round_trip(rng, tmp_path):
    res = _result(rng)
    extra = pd.DataFrame({"z": [1, 2], "score": [0.5, 0.25]})
    out = res.write(tmp_path / "sub" / "result", tables={"picks": extra})
    names = {p.name for p in out.iterdir()}
    assert names == {"scores.mrc", "rotation_index.mrc", "rotations.csv", "picks.csv",
                     "metadata.json"}  # fmt: skip
    assert not list(tmp_path.glob("sub/*partial*"))
    doc = json.loads((out / "metadata.json").read_text())
    assert doc["complete"] and doc["voxel_size"] == 2.5 and "versions" in doc
    assert doc["metadata"]["search"]["score"] == "CC"
    b = read_bundle(out)  # a core bundle: generic readers see the maps and tables
    np.testing.assert_array_equal(b.maps["scores"], res.scores)
    assert b.maps["rotation_index"].dtype == np.int16  # lossless for < 32768 rotations
    rdf = b.tables["rotations"]
    assert list(rdf["index"]) == list(range(7))
    assert {"rot", "tilt", "psi", "r00", "r22"} <= set(rdf.columns)
    _same(MatchResult.read(out), res)


def test_many_rotations_keep_an_exact_index_map(rng, tmp_path):
    res = _result(rng, n_rot=40000, shape=(3, 4, 5))
    res.rotation_index[0, 0, :2] = (39999, -1)  # fits neither int16 nor uint16
    out = res.write(tmp_path / "big")
    assert (out / "rotation_index.npy").is_file() and not (out / "rotation_index.mrc").exists()
    _same(MatchResult.read(out), res)


def test_existing_bundle_is_not_overwritten_unless_asked(rng, tmp_path):
    a, b = _result(rng), _result(rng)
    out = a.write(tmp_path / "r")
    with pytest.raises(ResultExistsError, match="overwrite"):
        b.write(out)
    _same(MatchResult.read(out), a)
    b.write(out, overwrite=True)
    _same(MatchResult.read(out), b)


def test_unfinished_or_foreign_folders_are_clear_errors(rng, tmp_path):
    out = _result(rng).write(tmp_path / "r")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileFormatError, match="metadata.json"):
        MatchResult.read(tmp_path / "empty")
    doc = json.loads((out / "metadata.json").read_text())
    doc["metadata"]["result_format"] = "something else"
    (out / "metadata.json").write_text(json.dumps(doc))
    with pytest.raises(FileFormatError, match="not a match3d result bundle"):
        MatchResult.read(out)


# --------------------------------------------------------------------- Dynamo tables
def _rz(deg):
    a = np.deg2rad(deg)
    return np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])


def _rx(deg):
    a = np.deg2rad(deg)
    return np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])


def test_dynamo_round_trip_positions_and_matrices(rng, tmp_path):
    res = _result(rng, n_rot=7, shape=(9, 10, 11))
    res.rotation_index[...] = np.arange(res.scores.size).reshape(res.scores.shape) % 7
    coords = np.array([[0, 0, 0], [8, 9, 10], [3, 4, 5], [1, 7, 2]])
    df = res.table(coords)
    out = write_table(df, tmp_path / "particles.tbl", fmt="dynamo", tomo_number=3)
    rows = [ln.split() for ln in out.read_text().splitlines()]
    assert len(rows) == 4 and all(len(r) == 35 for r in rows)
    assert rows[1][0] == "2" and rows[1][19] == "3"  # tag, tomo
    # x, y, z in columns 24-26 (1-based), Dynamo voxels counted from 1
    assert [float(v) for v in rows[1][23:26]] == [11.0, 10.0, 9.0]
    assert float(rows[2][9]) == pytest.approx(df["score"][2], abs=1e-6)  # cc column
    back = read_table(out)
    np.testing.assert_allclose(back[["z", "y", "x"]].to_numpy(), coords, atol=1e-6)
    cols = [f"r{i}{j}" for i in range(3) for j in range(3)]
    np.testing.assert_allclose(back[cols].to_numpy(), df[cols].to_numpy(), atol=1e-5)
    # the RELION angles read back describe the same rotations
    np.testing.assert_allclose(
        relion_euler_to_matrices(back[["rot", "tilt", "psi"]].to_numpy()),
        df[cols].to_numpy().reshape(-1, 3, 3),
        atol=1e-5,
    )
    assert list(back["tag"]) == [1, 2, 3, 4] and set(back["tomo"]) == {3}


def test_dynamo_angle_convention_known_answers():
    # the template turned by +90 degrees about z (x -> y): tilt 0, tdrot + narot = -90
    # (Dynamo turns the particle clockwise for positive angles)
    e = matrices_to_dynamo_euler(_rz(90.0))
    assert e[1] == pytest.approx(0.0, abs=1e-9)
    assert (e[0] + e[2] + 90.0) % 360.0 == pytest.approx(0.0, abs=1e-9)
    np.testing.assert_allclose(dynamo_euler_to_matrices([-90.0, 0.0, 0.0]), _rz(90.0), atol=1e-12)
    np.testing.assert_allclose(dynamo_euler_to_matrices([0.0, 0.0, -90.0]), _rz(90.0), atol=1e-12)
    # tilt turns about x (after tdrot): M = Rz(-tdrot) Rx(-tilt) Rz(-narot)
    m = dynamo_euler_to_matrices([30.0, 50.0, -70.0])
    np.testing.assert_allclose(m, _rz(-30.0) @ _rx(-50.0) @ _rz(70.0), atol=1e-12)
    np.testing.assert_allclose(matrices_to_dynamo_euler(m), [30.0, 50.0, -70.0], atol=1e-9)
    # tdrot is the tilt direction: the particle axis M e_z does not depend on narot
    for narot in (0.0, 45.0, 170.0):
        axis = dynamo_euler_to_matrices([40.0, 60.0, narot]) @ np.array([0.0, 0.0, 1.0])
        s = np.sin(np.deg2rad(60.0))
        expect = [s * np.sin(np.deg2rad(40.0)), s * np.cos(np.deg2rad(40.0)), 0.5]
        np.testing.assert_allclose(axis, expect, atol=1e-12)
    # published correspondence with RELION: (rot, tilt, psi) = (narot - 90, tilt, tdrot + 90)
    rng = np.random.default_rng(5)
    dyn = np.stack(
        [rng.uniform(-180, 180, 50), rng.uniform(1, 179, 50), rng.uniform(-180, 180, 50)], -1
    )
    rel = np.stack([dyn[:, 2] - 90.0, dyn[:, 1], dyn[:, 0] + 90.0], -1)
    np.testing.assert_allclose(
        dynamo_euler_to_matrices(dyn), relion_euler_to_matrices(rel), atol=1e-12
    )
    # gimbal lock (tilt 0 or 180) and random rotations round-trip
    for m in [*super_fibonacci_rotations(200), _rz(33.0), _rx(180.0) @ _rz(20.0), np.eye(3)]:
        np.testing.assert_allclose(
            dynamo_euler_to_matrices(matrices_to_dynamo_euler(m)), m, atol=1e-9
        )


def test_dynamo_table_errors_and_relion_angles_only(tmp_path):
    p = tmp_path / "short.tbl"
    p.write_text("1 1 1 0 0 0 10 20 30 0.5\n")
    with pytest.raises(FileFormatError, match="short.tbl line 1: 10 columns"):
        read_table(p)
    p.write_text(" ".join(["1"] * 25 + ["abc"]) + "\n")
    with pytest.raises(FileFormatError, match="non-numeric"):
        read_table(p)
    with pytest.raises(FileFormatError, match="not found"):
        read_table(tmp_path / "absent.tbl")
    # a table with only RELION angles (e.g. read from STAR) is written through its matrices
    df = pd.DataFrame({"z": [2.0], "y": [3.0], "x": [4.0], "rot": [10.0], "tilt": [20.0],
                       "psi": [30.0], "score": [0.7]})  # fmt: skip
    out = write_table(df, tmp_path / "from_star.tbl", fmt="dynamo")
    back = read_table(out)
    np.testing.assert_allclose(back[["rot", "tilt", "psi"]].to_numpy(), [[10.0, 20.0, 30.0]],
                               atol=1e-4)  # fmt: skip
    assert back["score"][0] == pytest.approx(0.7)
    with pytest.raises(InputError, match="rotation columns"):
        write_table(df.drop(columns=["psi"]), tmp_path / "bad.tbl", fmt="dynamo")
    empty = write_table(df.iloc[:0], tmp_path / "empty.tbl", fmt="dynamo")
    assert len(read_table(empty)) == 0

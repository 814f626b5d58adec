"""Result bundles: core write_bundle/read_bundle layout, exact round trip, atomic, no clobber."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from corrscan.core.io.bundle import read_bundle
from corrscan.errors import FileFormatError, ResultExistsError
from corrscan.match3d.results import MatchResult
from corrscan.match3d.rotations import super_fibonacci_rotations


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

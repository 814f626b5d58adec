"""Fuzzing (hypothesis) of the readers a scaled-out run depends on, with bounded budgets.

Complements ``tests/core/test_io_fuzz.py`` (MRC, TIFF, STAR, YAML, checkpoint bytes): here the
batch input lists (CSV/STAR), checkpoint progress, result bundles of both matching jobs (their
``metadata.json`` and map files), the likelihood stack files and the match3d tables. Random
bytes, truncations and single-byte mutations of valid files may only give a successful read or
a :class:`CorrscanError` (never another exception, never a hang).
"""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from corrscan.core.checkpoint import Checkpoint
from corrscan.distributed.batch import list_inputs
from corrscan.distributed.resume import load_progress
from corrscan.errors import CorrscanError, InputError
from corrscan.likelihood.grid import PolarGrid
from corrscan.likelihood.stacks import PolarImages, PolarTemplates, images_from_real_space
from corrscan.match2d.result import MatchTemplateResult
from corrscan.match3d.results import MatchResult, read_table

FUZZ = settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def _ok_or_clear(reader, path) -> None:
    try:
        reader(path)
    except CorrscanError as exc:
        assert str(exc)


def _mutations(valid: bytes, frac: float, pos: float, byte: int) -> list[bytes]:
    mutated = bytearray(valid)
    mutated[min(int(len(valid) * pos), len(valid) - 1)] = byte
    return [valid[: int(len(valid) * frac)], bytes(mutated)]


# ----------------------------------------------------------------------------- input lists
@pytest.fixture(scope="module")
def lists(tmp_path_factory):
    d = tmp_path_factory.mktemp("lists")
    for i in range(3):
        (d / f"m{i}.mrc").write_bytes(b"x")
    pd.DataFrame({"path": [f"m{i}.mrc" for i in range(3)]}).to_csv(d / "l.csv", index=False)
    (d / "l.star").write_text(
        "data_micrographs\n\nloop_\n_rlnMicrographName #1\n" + "m0.mrc\nm1.mrc\nm2.mrc\n"
    )
    return d


@pytest.mark.parametrize("ext", ["csv", "star"])
@FUZZ
@given(data=st.binary(max_size=512), frac=st.floats(0, 1), pos=st.floats(0, 1),
       byte=st.integers(0, 255))  # fmt: skip
def test_input_lists(lists, tmp_path, ext, data, frac, pos, byte):
    valid = (lists / f"l.{ext}").read_bytes()
    for i, blob in enumerate([data, *_mutations(valid, frac, pos, byte)]):
        p = lists / f"fuzz{i}.{ext}"
        p.write_bytes(blob)
        _ok_or_clear(list_inputs, p)


# ----------------------------------------------------------------------------- checkpoints
@FUZZ
@given(
    state=st.recursive(
        st.none() | st.integers() | st.text(max_size=5),
        lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=4), c, max_size=3),
        max_leaves=6,
    )
)
def test_checkpoint_progress_of_any_shape(tmp_path, state):
    ck = Checkpoint(tmp_path / "c.pt", "fp")
    # any value, and progress-like dicts whose entries are any values
    for payload in (state, {"done": state, "state": None, "chunks": state}):
        ck.save(payload)
        try:
            out = load_progress(ck, required=("chunks",))
        except InputError as exc:
            assert "progress" in str(exc) and str(ck.path) in str(exc)
        else:
            assert isinstance(out, dict) and isinstance(out["done"], set)


# ----------------------------------------------------------------------------- bundles
def _bundle2d(path):
    maps = {n: torch.rand(6, 7) for n in ("mip", "scaled_mip", "phi", "theta", "psi")}
    MatchTemplateResult(maps=maps, metadata={"template_box": 4, "pixel_size": 1.5}).save(path)


def _bundle3d(path):
    MatchResult(
        scores=np.random.default_rng(0).random((5, 6, 7), dtype=np.float32),
        rotation_index=np.zeros((5, 6, 7), np.int32),
        rotations=np.eye(3, dtype=np.float32)[None],
        pixel_size=2.0, score_mean=0.1, score_std=0.2, score_count=210, template_shape=(3, 3, 3),
    ).write(path)  # fmt: skip


BUNDLES = {
    "match2d": (_bundle2d, MatchTemplateResult.load, ("metadata.json", "mip.mrc")),
    "match3d": (_bundle3d, MatchResult.read, ("metadata.json", "scores.mrc", "rotations.csv")),
}


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    d = tmp_path_factory.mktemp("bundles")
    for name, (make, _, _) in BUNDLES.items():
        make(d / name)
    return d


def _bundle_case(bundles, tmp_path, name, member, blobs):
    _make, reader, _members = BUNDLES[name]
    for i, blob in enumerate(blobs):
        b = tmp_path / f"{name}{i}"
        shutil.rmtree(b, ignore_errors=True)
        shutil.copytree(bundles / name, b)
        (b / member).write_bytes(blob)
        _ok_or_clear(reader, b)


@FUZZ
@given(data=st.binary(max_size=256), frac=st.floats(0, 1), pos=st.floats(0, 1),
       byte=st.integers(0, 255), which=st.integers(0, 1))  # fmt: skip
def test_match2d_bundle(bundles, tmp_path, data, frac, pos, byte, which):
    member = BUNDLES["match2d"][2][which]
    valid = (bundles / "match2d" / member).read_bytes()
    _bundle_case(bundles, tmp_path, "match2d", member, [data, *_mutations(valid, frac, pos, byte)])


@FUZZ
@given(data=st.binary(max_size=256), frac=st.floats(0, 1), pos=st.floats(0, 1),
       byte=st.integers(0, 255), which=st.integers(0, 2))  # fmt: skip
def test_match3d_bundle(bundles, tmp_path, data, frac, pos, byte, which):
    member = BUNDLES["match3d"][2][which]
    valid = (bundles / "match3d" / member).read_bytes()
    _bundle_case(bundles, tmp_path, "match3d", member, [data, *_mutations(valid, frac, pos, byte)])


# ----------------------------------------------------------------------------- likelihood files
@pytest.fixture(scope="module")
def stacks(tmp_path_factory):
    d = tmp_path_factory.mktemp("stacks")
    g = PolarGrid.create(8, 2.0, n_shells=4, n_inplanes=8)
    ims = images_from_real_space(torch.randn(2, 8, 8), g)
    ims.save(d / "images.pt")
    PolarTemplates(ims.data, g, np.zeros((2, 3)), np.ones(2)).save(d / "templates.pt")
    return d


@pytest.mark.parametrize("kind", ["images", "templates"])
@FUZZ
@given(data=st.binary(max_size=256), frac=st.floats(0, 1), pos=st.floats(0, 1),
       byte=st.integers(0, 255))  # fmt: skip
def test_likelihood_stack_files(stacks, tmp_path, kind, data, frac, pos, byte):
    reader = PolarImages.load if kind == "images" else PolarTemplates.load
    valid = (stacks / f"{kind}.pt").read_bytes()
    for i, blob in enumerate([data, *_mutations(valid, frac, pos, byte)]):
        p = tmp_path / f"{kind}{i}.pt"
        p.write_bytes(blob)
        _ok_or_clear(reader, p)


# ----------------------------------------------------------------------------- match3d tables
@FUZZ
@given(data=st.binary(max_size=256), frac=st.floats(0, 1), pos=st.floats(0, 1),
       byte=st.integers(0, 255))  # fmt: skip
def test_match3d_tables(tmp_path, data, frac, pos, byte):
    src = tmp_path / "valid.star"
    src.write_text(
        "data_particles\n\nloop_\n_rlnCoordinateX #1\n_rlnCoordinateY #2\n_rlnCoordinateZ #3\n"
        "_rlnAngleRot #4\n_rlnAngleTilt #5\n_rlnAnglePsi #6\n1 2 3 10 20 30\n4 5 6 40 50 60\n"
    )
    valid = src.read_bytes()
    for i, blob in enumerate([data, *_mutations(valid, frac, pos, byte)]):
        p = tmp_path / f"t{i}.star"
        p.write_bytes(blob)
        _ok_or_clear(read_table, p)

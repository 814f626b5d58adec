"""Analyzer semantics: ties, threshold floor, offsets, merge geometry, rotation remapping."""

from __future__ import annotations

import math
from multiprocessing.managers import SharedMemoryManager

import numpy as np
import pytest
import torch

from corrscan.errors import InputError
from corrscan.match3d.analyzers import (
    MaxScoreOverRotations,
    MaxScoreOverRotationsConstrained,
    MaxScoreOverTranslations,
)
from corrscan.match3d.rotations import super_fibonacci_rotations

ROTS = super_fibonacci_rotations(6).astype(np.float32)


def test_max_and_ties_keep_earlier_rotation(rng):
    shape = (3, 4, 5)
    maps = rng.normal(size=(6, *shape)).astype(np.float32)
    maps[3, 0, 0, 0] = maps[1, 0, 0, 0] = 9.0  # tie: rotation 1 came first
    a = MaxScoreOverRotations(shape, score_threshold=-math.inf)
    for m, r in zip(maps, ROTS, strict=True):
        a(m, r)
    scores, offset, rot, mapping = a
    np.testing.assert_array_equal(scores, maps.max(axis=0))
    np.testing.assert_array_equal(rot, maps.argmax(axis=0))  # argmax = first maximum
    assert rot[0, 0, 0] == 1
    np.testing.assert_array_equal(offset, [0, 0, 0])
    for i, r in enumerate(ROTS):
        np.testing.assert_array_equal(mapping[i], r)
    # repeated matrix keeps its first index
    a(maps[0] + 100.0, ROTS[2])
    assert set(np.unique(a.rotations)) == {2}
    assert len(a.rotation_mapping) == 6


def test_batched_update_equals_sequential(rng):
    shape = (4, 4, 4)
    maps = rng.normal(size=(6, *shape)).astype(np.float32)
    maps[4] = maps[2]  # exact tie across batch items
    seq = MaxScoreOverRotations(shape, score_threshold=-math.inf)
    for m, r in zip(maps, ROTS, strict=True):
        seq(m, r)
    bat = MaxScoreOverRotations(shape, score_threshold=-math.inf)
    bat(maps[:4], ROTS[:4])
    bat(maps[4:], ROTS[4:])
    np.testing.assert_array_equal(bat.scores, seq.scores)
    np.testing.assert_array_equal(bat.rotations, seq.rotations)
    assert bat.score_mean == pytest.approx(maps.mean(), rel=1e-6)
    assert bat.score_std == pytest.approx(maps.std(), rel=1e-5)
    assert bat.score_count == maps.size


def test_score_threshold_floor(rng):
    shape = (5, 5, 5)
    m = rng.normal(size=shape).astype(np.float32)
    a = MaxScoreOverRotations(shape, score_threshold=0.5)
    a(m, ROTS[0])
    np.testing.assert_array_equal(a.scores, np.maximum(m, 0.5))
    np.testing.assert_array_equal(a.rotations, np.where(m > 0.5, 0, -1))
    default = MaxScoreOverRotations(shape)
    assert default.score_threshold == 0.0 and np.all(default.scores == 0.0)
    assert np.all(default.rotations == -1)


def test_unknown_arguments_rejected():
    with pytest.raises(TypeError):
        MaxScoreOverRotations((2, 2, 2), this_is_not_a_param=1)
    with pytest.raises(TypeError):
        MaxScoreOverRotations((2, 2, 2), translation_offset=(0, 0, 0))


def test_merge_geometry_offsets_and_remapping(rng):
    full = (6, 7, 8)
    maps = rng.normal(size=(6, *full)).astype(np.float32)
    ref = MaxScoreOverRotations(full, score_threshold=-math.inf)
    for m, r in zip(maps, ROTS, strict=True):
        ref(m, r)
    # split space in two boxes and rotations in two chunks given in reversed order per box
    parts = []
    for sl, off in (
        ((slice(0, 3), slice(None), slice(None)), (0, 0, 0)),
        ((slice(3, 6), slice(None), slice(None)), (3, 0, 0)),
    ):
        for order in ((3, 4, 5), (0, 1, 2)):
            a = MaxScoreOverRotations(maps[0][sl].shape, offset=off, score_threshold=-math.inf)
            for i in order:
                a(maps[i][sl], ROTS[i])
            parts.append(a)
    # the local indices differ (chunk 2 numbers ROTS[3] as 0): merge must remap
    assert parts[0].rotation_mapping[0].tobytes() == ROTS[3].tobytes()
    merged = MaxScoreOverRotations.merge(parts[1::2] + parts[0::2], output_shape=full)
    np.testing.assert_array_equal(merged.scores, ref.scores)
    remapped = np.array([merged.rotation_mapping[i].tobytes() for i in range(6)])
    ref_bytes = np.array([r.tobytes() for r in ROTS])
    got = remapped[merged.rotations]
    np.testing.assert_array_equal(got, ref_bytes[ref.rotations])
    assert merged.score_count == ref.score_count
    assert merged.score_mean == pytest.approx(ref.score_mean, rel=1e-6)
    np.testing.assert_array_equal(merged.offset, [0, 0, 0])
    # tuples work too and the default output shape is max(offset + shape)
    tup = MaxScoreOverRotations.merge([tuple(p) for p in parts])
    assert tup.scores.shape == full
    np.testing.assert_array_equal(tup.scores, ref.scores)


def test_merge_ties_prefer_lower_index_regardless_of_order():
    shape = (2, 2, 2)
    a = MaxScoreOverRotations(shape, score_threshold=-math.inf)
    a(np.ones(shape, np.float32), ROTS[0])
    b = MaxScoreOverRotations(shape, score_threshold=-math.inf)
    b(np.ones(shape, np.float32), ROTS[1])
    m1 = MaxScoreOverRotations.merge([a, b])
    m2 = MaxScoreOverRotations.merge([b, a])
    r1 = m1.rotation_mapping[int(m1.rotations[0, 0, 0])]
    assert r1.tobytes() == ROTS[0].tobytes()
    # in m2 ROTS[1] got index 0 (seen first), so it wins the tie there: order-defined, stable
    assert m2.rotation_mapping[int(m2.rotations[0, 0, 0])].tobytes() == ROTS[1].tobytes()


def test_merge_rejects_out_of_bounds():
    a = MaxScoreOverRotations((2, 2, 2), offset=(5, 0, 0))
    with pytest.raises(ValueError, match="does not fit"):
        MaxScoreOverRotations.merge([a], output_shape=(4, 4, 4))


def test_only_unique_rotations_renumbers(rng):
    shape = (3, 3, 3)
    a = MaxScoreOverRotations(shape, only_unique_rotations=True, score_threshold=-math.inf)
    a(np.zeros(shape, np.float32), ROTS[0])
    a(np.ones(shape, np.float32), ROTS[1])
    a(np.full(shape, 0.5, np.float32), ROTS[2])
    _, _, rot, mapping = a
    assert np.all(rot == 0)
    assert list(mapping) == [0]
    assert mapping[0].tobytes() == ROTS[1].tobytes()


def test_memmap_and_shared_memory_storage(rng):
    m = rng.normal(size=(3, 3, 3)).astype(np.float32)
    mm = MaxScoreOverRotations((3, 3, 3), use_memmap=True, score_threshold=-math.inf)
    mm(m, ROTS[0])
    np.testing.assert_array_equal(mm.scores, m)
    with SharedMemoryManager() as smm:
        sh = MaxScoreOverRotations((3, 3, 3), shared_memory_handler=smm, score_threshold=-math.inf)
        sh(m, ROTS[0])
        np.testing.assert_array_equal(sh.scores, m)
        del sh


def test_max_over_translations(rng):
    maps = rng.normal(size=(4, 3, 4, 5)).astype(np.float32)
    a = MaxScoreOverTranslations((3, 4, 5), n_rotations=4)
    for m, r in zip(maps, ROTS[:4], strict=True):
        a(m, r)
    np.testing.assert_array_equal(a.scores, maps.reshape(4, -1).max(axis=1))
    b = MaxScoreOverTranslations((3, 4, 5), n_rotations=4, aggregate_axis=(0,))
    b.update(torch.from_numpy(maps), torch.arange(4))
    np.testing.assert_array_equal(b.scores, maps.max(axis=1))
    half1 = MaxScoreOverTranslations((2, 4, 5), n_rotations=4)
    half1.update(torch.from_numpy(maps[:, :2].copy()), torch.arange(4))
    half2 = MaxScoreOverTranslations((1, 4, 5), n_rotations=4)
    half2.update(torch.from_numpy(maps[:, 2:].copy()), torch.arange(4))
    merged = MaxScoreOverTranslations.merge([half1, half2])
    np.testing.assert_array_equal(merged.scores, a.scores)


def test_constrained_positions_and_cone(rng):
    shape = (10, 10, 10)
    seeds = np.array([[2, 2, 2], [7, 7, 7]])
    seed_rot = np.stack([np.eye(3), ROTS[3]]).astype(np.float64)
    a = MaxScoreOverRotationsConstrained(
        shape, positions=seeds, rotations=seed_rot, cone_angle=10.0, acceptance_radius=1.0,
        score_threshold=-math.inf,
    )  # fmt: skip
    ones = np.ones(shape, np.float32)
    a(ones, np.eye(3, dtype=np.float32))
    s = a.scores
    assert s[2, 2, 2] == 1.0 and s[2, 2, 3] == 1.0 and s[2, 3, 3] == 0.0  # radius 1
    inside_cone = np.degrees(np.arccos(np.clip(ROTS[3][2, 2], -1, 1))) <= 10.0
    assert not inside_cone  # the identity is outside seed 2's cone ...
    assert s[7, 7, 7] == 0.0  # ... so its score is rejected there
    assert s[0, 9, 0] == 0.0
    a(ones * 2.0, ROTS[3])  # seed 2's own orientation is accepted at seed 2 only
    assert a.scores[7, 7, 7] == 2.0 and a.scores[2, 2, 2] == 1.0


def test_state_dict_round_trip_is_exact_and_merges_like_the_original(rng):
    shape = (4, 5, 3)
    maps = rng.normal(size=(6, *shape)).astype(np.float32)
    a = MaxScoreOverRotations(shape, offset=(1, 0, 2), score_threshold=-1.0)
    a.update(torch.from_numpy(maps[:4]), torch.arange(4, dtype=torch.int32), ROTS[:4])
    a.update(torch.from_numpy(maps[4:]), torch.tensor([5, 4], dtype=torch.int32), ROTS[4:][::-1])
    st = a.state_dict()
    assert st["scores"].dtype == torch.float32 and st["rotations"].dtype == torch.int32
    b = MaxScoreOverRotations.from_state_dict(st, thread_safe=False)
    np.testing.assert_array_equal(b.scores, a.scores)
    np.testing.assert_array_equal(b.rotations, a.rotations)
    np.testing.assert_array_equal(b.offset, [1, 0, 2])
    assert b.score_threshold == -1.0
    assert b.rotation_statistics == a.rotation_statistics  # floats compared exactly
    assert (b.score_mean, b.score_std, b.score_count) == (a.score_mean, a.score_std, a.score_count)
    assert sorted(b.rotation_mapping) == list(range(6))
    for i, m in a.rotation_mapping.items():
        np.testing.assert_array_equal(b.rotation_mapping[i], m)
    # the rebuilt analyzer keeps updating and merging exactly like the original
    more = rng.normal(size=(1, *shape)).astype(np.float32) + 1.0
    for x in (a, b):
        x.update(torch.from_numpy(more.copy()), torch.tensor([2], dtype=torch.int32))
    ma = MaxScoreOverRotations.merge([a], output_shape=(6, 6, 6))
    mb = MaxScoreOverRotations.merge([b], output_shape=(6, 6, 6))
    np.testing.assert_array_equal(mb.scores, ma.scores)
    np.testing.assert_array_equal(mb.rotations, ma.rotations)
    assert mb.rotation_statistics == ma.rotation_statistics
    # constructor arguments override the state's; subclasses get their own arguments
    c = MaxScoreOverRotationsConstrained.from_state_dict(
        st, positions=np.array([[0, 0, 0]]), offset=(0, 0, 0)
    )
    assert isinstance(c, MaxScoreOverRotationsConstrained)
    np.testing.assert_array_equal(c.offset, [0, 0, 0])
    bad = dict(st, rotations=st["rotations"][:1])
    with pytest.raises(InputError, match="differ in shape"):
        MaxScoreOverRotations.from_state_dict(bad)
    with pytest.raises(InputError, match="differ in length"):
        MaxScoreOverRotations.from_state_dict(dict(st, counts=st["counts"][:2]))

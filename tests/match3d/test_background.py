"""correct_background: known arrays, errors, and phase-scrambled correction end to end."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from corrscan.errors import InputError
from corrscan.match3d import MatchResult, match_template
from corrscan.match3d.background import correct_background
from corrscan.match3d.template import phase_scramble
from corrscan.synthetic.tomogram import random_rotations, simulate_tomogram


def _result(scores, *, pixel_size=2.0, n_rot=3, meta=None):
    scores = np.asarray(scores, dtype=np.float32)
    return MatchResult(
        scores=scores,
        rotation_index=(np.arange(scores.size) % n_rot).reshape(scores.shape).astype(np.int32),
        rotations=np.broadcast_to(np.eye(3, dtype=np.float32), (n_rot, 3, 3)).copy(),
        pixel_size=pixel_size,
        score_mean=0.1,
        score_std=0.2,
        score_count=scores.size * n_rot,
        template_shape=(4, 4, 4),
        metadata=dict(meta or {"n_rotations": n_rot, "score": "CC"}),
    )


def test_known_arrays():
    s = np.arange(8, dtype=np.float64).reshape(2, 2, 2)
    bg = np.array([1.0, 3.0, 1.0, 3.0, 1.0, 3.0, 1.0, 3.0]).reshape(2, 2, 2)  # mean 2
    res, back = _result(s), _result(bg, meta={"n_rotations": 5, "seconds": 1.5})
    out = correct_background(res, back, details={"seed": 42})
    np.testing.assert_array_equal(out.scores, s - (bg - 2.0))
    assert out.scores.dtype == np.float32 and out.scores.shape == s.shape
    np.testing.assert_array_equal(out.rotation_index, res.rotation_index)
    np.testing.assert_array_equal(out.rotations, res.rotations)
    assert (out.pixel_size, out.template_shape, out.score_count) == (2.0, (4, 4, 4), 24)
    rec = out.metadata["background_correction"]
    assert rec == {
        "method": "phase-scrambling", "background_mean": 2.0, "background_std": 1.0,
        "background_n_rotations": 5, "background_seconds": 1.5, "seed": 42,
    }  # fmt: skip
    assert out.metadata["score"] == "CC"
    # a new result: the inputs are untouched
    np.testing.assert_array_equal(res.scores, s)
    assert "background_correction" not in res.metadata
    out.rotation_index[0, 0, 0] = 99
    assert res.rotation_index[0, 0, 0] == 0
    # non-finite background voxels leave the score as it is; the mean is over finite voxels
    bg2 = bg.copy()
    bg2[0, 0, 0] = -np.inf
    out2 = correct_background(res, _result(bg2))
    mean2 = bg[bg2 > -np.inf].mean()
    assert out2.scores[0, 0, 0] == 0.0
    np.testing.assert_allclose(out2.scores.ravel()[1:], (s - (bg - mean2)).ravel()[1:], atol=1e-6)


def test_mismatched_inputs_raise():
    a = _result(np.zeros((2, 3, 4)))
    with pytest.raises(InputError, match="shape"):
        correct_background(a, _result(np.zeros((2, 3, 5))))
    with pytest.raises(InputError, match="pixel sizes"):
        correct_background(a, _result(np.zeros((2, 3, 4)), pixel_size=2.5))
    with pytest.raises(InputError, match="finite"):
        correct_background(a, _result(np.full((2, 3, 4), np.nan)))
    with pytest.raises(InputError, match="MatchResult"):
        correct_background(a, np.zeros((2, 3, 4)))


def test_phase_scrambled_correction_on_a_planted_tomogram():
    """Two copies plus a region of smooth, strong texture (not the template) that outscores
    them; the phase-scrambled search scores the texture too, so after correction the copies
    are the top peaks and the region's excess over the rest of the map shrinks."""
    rng = np.random.default_rng(0)
    planted = random_rotations(2, rng)
    pos = np.array([[12, 12, 12], [12, 36, 36]])
    tomo, truth = simulate_tomogram(
        48, template_shape=16, rotations=planted, positions=pos, noise_std=0.2, wedge=None,
        seed=0, n_atoms=30, sigma=1.5,
    )  # fmt: skip
    g = np.meshgrid(*(np.arange(48) for _ in range(3)), indexing="ij")
    r2 = sum((gi - ci) ** 2 for gi, ci in zip(g, (34, 16, 32), strict=True))
    tex = gaussian_filter(rng.standard_normal(tomo.shape), 1.5)
    tomo = tomo + ((r2 <= 64) * tex / tex.std()).astype(np.float32)
    rots = np.concatenate([planted, random_rotations(14, rng)])
    kw = dict(rotations=rots, interpolation_order=1, progress=False)  # FLCSphericalMask
    res = match_template(tomo, truth["template"], **kw)
    bg = match_template(tomo, phase_scramble(truth["template"], seed=42), **kw)
    cor = correct_background(res, bg)

    inner, far = r2 <= 25, r2 > 16**2

    def top_two_are_planted(r):
        pk = r.peaks(num_peaks=2, min_distance=6)[["z", "y", "x"]].to_numpy()
        return all(np.abs(pk - p).max(axis=1).min() <= 1 for p in pos)

    def excess(r):  # region mean over the far mean, in units of the far std
        return (r.scores[inner].mean() - r.scores[far].mean()) / r.scores[far].std()

    # without correction the texture outscores the planted copies (the test can fail)
    assert res.scores[inner].max() > max(res.scores[tuple(p)] for p in pos)
    assert not top_two_are_planted(res)
    # corrected: the copies are on top, the texture region much flatter
    assert top_two_are_planted(cor)
    assert cor.scores[inner].max() < min(cor.scores[tuple(p)] for p in pos)
    assert abs(excess(cor)) < 0.4 * abs(excess(res)), (excess(res), excess(cor))
    # the best rotations at the copies are kept (the planted ones)
    for i, p in enumerate(pos):
        assert cor.rotation_index[tuple(p)] == res.rotation_index[tuple(p)] == i


def test_match_template_option_is_the_two_searches(rng):
    """``match_template(background_correction="phase-scrambling")`` = the real search corrected
    by the same search with the seed-42 phase-scrambled template; bad values are refused."""
    tomo = rng.normal(size=(20, 20, 20)).astype(np.float32)
    tmpl = gaussian_filter(rng.normal(size=(8, 8, 8)), 1.0).astype(np.float32)
    kw = dict(n_rotations=4, interpolation_order=1, progress=False)
    got = match_template(tomo, tmpl, background_correction="phase-scrambling", **kw)
    ref = correct_background(
        match_template(tomo, tmpl, **kw), match_template(tomo, phase_scramble(tmpl, seed=42), **kw)
    )
    np.testing.assert_array_equal(got.scores, ref.scores)
    np.testing.assert_array_equal(got.rotation_index, ref.rotation_index)
    assert got.metadata["background_correction"]["method"] == "phase-scrambling"
    with pytest.raises(InputError, match="background_correction"):
        match_template(tomo, tmpl, background_correction="median", **kw)

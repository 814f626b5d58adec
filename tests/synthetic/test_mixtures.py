"""Synthetic intensity mixtures: planted components, labels and quantiles are what they claim."""

from __future__ import annotations

import numpy as np
import pytest

from corrscan.errors import InputError
from corrscan.synthetic.mixtures import (
    LABEL_BACKGROUND,
    LABEL_GOLD,
    LABEL_OUTLIER,
    LABEL_OUTSIDE,
    LABEL_SIGNAL,
    MixtureComponent,
    gaussian_mixture_volume,
    mixture_cdf,
    mixture_quantile,
    tomogram_mixture,
)


def test_gaussian_mixture_components_match_labels() -> None:
    comps = [MixtureComponent(3, 0.0, 1.0), MixtureComponent(1, -4.0, 0.5)]
    vol, truth = gaussian_mixture_volume((20, 50, 50), comps, seed=3)
    assert vol.shape == (20, 50, 50) and vol.dtype == np.float32
    labels = truth["labels"]
    np.testing.assert_allclose([c.weight for c in truth["components"]], [0.75, 0.25])
    for k, c in enumerate(truth["components"]):
        v = vol[labels == k].astype(np.float64)
        assert abs(v.size / vol.size - c.weight) < 0.01
        assert abs(v.mean() - c.mean) < 0.02
        assert abs(v.std() - c.std) < 0.02


def test_gaussian_mixture_outliers_and_nonfinite() -> None:
    comps = [MixtureComponent(1, 0.0, 1.0)]
    vol, truth = gaussian_mixture_volume(
        (10, 40, 40), comps, outlier_fraction=0.01, nonfinite_fraction=0.002, seed=1
    )
    labels = truth["labels"]
    out = vol[labels == -1]
    assert out.size == round(0.01 * vol.size)
    assert out.min() >= 15 and out.max() <= 40
    bad = labels == -2
    assert bad.sum() == round(0.002 * vol.size)
    assert not np.isfinite(vol[bad]).any() and np.isfinite(vol[~bad]).all()


def test_same_seed_same_volume_other_seed_differs() -> None:
    comps = [MixtureComponent(1, 0.0, 1.0)]
    a, _ = gaussian_mixture_volume((4, 8, 8), comps, seed=5)
    b, _ = gaussian_mixture_volume((4, 8, 8), comps, seed=5)
    c, _ = gaussian_mixture_volume((4, 8, 8), comps, seed=6)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_mixture_quantile_inverts_cdf() -> None:
    comps = [MixtureComponent(0.7, 0.0, 1.0), MixtureComponent(0.3, -3.0, 0.5)]
    for q in (0.01, 0.3, 0.99):
        assert float(mixture_cdf(mixture_quantile(q, comps), comps)) == pytest.approx(q, abs=1e-10)
    # Single Gaussian: the 97.5 % quantile is mean + 1.959964 std.
    one = [MixtureComponent(1, 2.0, 3.0)]
    assert mixture_quantile(0.975, one) == pytest.approx(2.0 + 3.0 * 1.959963985, abs=1e-7)


def test_tomogram_mixture_planted_classes() -> None:
    vol, truth = tomogram_mixture((40, 64, 64), seed=2, n_gold=2, gold_size=4)
    labels = truth["labels"]
    z0, z1 = truth["lamella_z"]
    assert z1 - z0 == 28
    assert (labels[:z0] == LABEL_OUTSIDE).all() or (labels[:z0] == LABEL_OUTLIER).any()
    lam = labels[z0:z1]
    frac_signal = (lam == LABEL_SIGNAL).mean()
    assert 0.07 < frac_signal < 0.13
    assert (labels == LABEL_GOLD).sum() >= 4**3  # two cubes, possibly overlapping
    comps = truth["components"]
    for name, lab in (("background", LABEL_BACKGROUND), ("signal", LABEL_SIGNAL)):
        v = vol[labels == lab].astype(np.float64)
        assert abs(v.mean() - comps[name].mean) < 0.05
        assert abs(v.std() - comps[name].std) < 0.05
    out = vol[labels == LABEL_OUTLIER]
    assert out.size > 0 and out.min() >= 15 and out.max() <= 40


def test_tomogram_mixture_scale_offset() -> None:
    a, ta = tomogram_mixture((20, 32, 32), seed=4)
    b, tb = tomogram_mixture((20, 32, 32), seed=4, scale=1000.0, offset=5000.0)
    np.testing.assert_allclose(b, 1000.0 * a + 5000.0, rtol=1e-6, atol=1e-2)
    assert tb["components"]["signal"].mean == pytest.approx(
        1000 * ta["components"]["signal"].mean + 5000
    )
    assert tb["components"]["signal"].std == pytest.approx(1000 * ta["components"]["signal"].std)


def test_bad_arguments() -> None:
    with pytest.raises(InputError):
        gaussian_mixture_volume((4, 4), [])
    with pytest.raises(InputError):
        gaussian_mixture_volume((4, 4), [MixtureComponent(1, 0, -1)])
    with pytest.raises(InputError):
        tomogram_mixture((4, 4))
    with pytest.raises(InputError):
        tomogram_mixture((10, 10, 10), lamella_fraction=0)

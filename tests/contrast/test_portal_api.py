"""cdpng-compatible names: same results as the native API, clean JSON, peer test cases."""

from __future__ import annotations

import json

import neuroglancer
import numpy as np
import pytest

from corrscan.contrast import compute_contrast_limits as native
from corrscan.contrast.portal_api import (
    CDFContrastLimitCalculator,
    GMMContrastLimitCalculator,
    PercentileContrastLimitCalculator,
    combine_json_layers,
    compute_contrast_limits,
    generate_image_layer,
    generate_oriented_point_layer,
    generate_point_layer,
    generate_segmentation_mask_layer,
)
from corrscan.errors import InputError
from corrscan.synthetic.mixtures import tomogram_mixture


def test_entry_point_matches_native() -> None:
    vol, _ = tomogram_mixture((40, 64, 64), seed=1)
    for method in ("gmm", "cdf", "percentile"):
        assert compute_contrast_limits(vol, method) == tuple(native(vol, method))
        # the peer's z_radius=None is its computed slab (not the whole volume)
        assert compute_contrast_limits(vol, method, None) == tuple(native(vol, method, "computed"))
    with pytest.raises(InputError):
        compute_contrast_limits(vol, "kmeans")  # type: ignore[arg-type]


def test_percentile_calculator_slab_cases() -> None:
    """The peer's test: arange(100) embedded in a 30-slice volume of 500s."""
    vol = np.full((30, 5, 2), 500.0)
    vol[10:20] = np.arange(100.0).reshape(10, 5, 2)
    whole = PercentileContrastLimitCalculator(vol, z_radius="all")
    assert whole.compute_contrast_limit(0.0, 100.0) == (0.0, 500.0)
    slab = PercentileContrastLimitCalculator(vol, z_radius=5)
    assert slab.z_range == (10, 20)
    assert slab.compute_contrast_limit(0.0, 100.0) == (0.0, 99.0)
    assert slab.compute_contrast_limit(5.0, 95.0) == pytest.approx((4.95, 94.05))


def test_gmm_and_cdf_calculators() -> None:
    vol, _ = tomogram_mixture((40, 64, 64), seed=2)
    gmm = GMMContrastLimitCalculator(vol, z_radius=15)
    base = gmm.compute_contrast_limit()
    assert base == pytest.approx(tuple(native(vol, "gmm", downsampling_ratio=None)), abs=0.05)
    wide = gmm.compute_contrast_limit(10.0, 10.0)  # honoured (the peer ignored them)
    assert wide[0] < base[0] and wide[1] > base[1]
    cdf = CDFContrastLimitCalculator(vol, z_radius=5, num_samples=5000)
    assert cdf.volume.size == 5000
    lo, hi = cdf.compute_contrast_limit()
    assert lo < 0 < hi


def test_image_layer_and_combined_state() -> None:
    layer = generate_image_layer(
        "TS_01.zarr",
        scale=1.348e-9,
        size=(400, 200, 150),
        start=(100, 50, 25),
        url="https://files.example.org/10000/TS_01/Reconstructions",
        threedee_contrast_limits=(1.0, -1.0),
        twodee_contrast_limits=(-2.0, 2.0),
    )
    assert layer["name"] == "TS_01" and layer["type"] == "image"
    assert layer["source"][0]["url"] == (
        "zarr://https://files.example.org/10000/TS_01/Reconstructions/TS_01.zarr"
    )
    assert "window=[-5, 5]" in layer["shader"]  # 3D window: limits ± 200 %
    assert "window=[-2.8, 2.8]" in layer["shader"]  # 2D window: limits ± 20 %
    assert layer["volumeRendering"] == "off" and layer["volumeRenderingGain"] == -7.8
    assert not [k for k in layer if k.startswith("_")]
    mean_rms = generate_image_layer("a.zarr", 1e-9, (10, 10, 10), mean=5.0, rms=0.5)
    assert "range=[3.5, 6.5]" in mean_rms["shader"] and "contrast_3d" not in mean_rms["shader"]
    seg = generate_segmentation_mask_layer("seg", url="https://x.org/a", scale=1e-9)
    assert seg["source"][0]["url"] == "precomputed://https://x.org/a/seg"
    pts = generate_point_layer("points", url="https://x.org/a/", scale=1e-9, color="#FF0000")
    ori = generate_oriented_point_layer("oriented", url="https://x.org/a", scale=1e-9)
    state = combine_json_layers([layer, seg, pts, ori], scale=1.348e-9)
    assert state["position"] == [250.0, 125.0, 88.0]  # half-to-even rounding of 87.5
    assert state["crossSectionScale"] == 1.0 and state["projectionScale"] == pytest.approx(440.0)
    assert state["layout"] == "4panel" and state["showSlices"] is True
    assert state["selectedLayer"]["layer"] == "TS_01"
    text = json.dumps(state)
    assert '"_' not in text
    assert neuroglancer.ViewerState(json.loads(text)).to_json() == state
    with pytest.raises(InputError):
        combine_json_layers([], scale=1e-9)

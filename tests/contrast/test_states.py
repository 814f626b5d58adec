"""Neuroglancer states: shaders, layers, combined states, URLs."""

from __future__ import annotations

import json
import re
import urllib.parse

import neuroglancer
import numpy as np
import pytest

from corrscan.contrast.picks import Picks
from corrscan.contrast.shaders import image_shader, padded_window
from corrscan.contrast.states import (
    DEFAULT_PROJECTION_ORIENTATION,
    image_layer,
    join_url,
    oriented_point_layer,
    point_layer,
    segmentation_layer,
    source_url,
    state_json,
    state_url,
    tomogram_state,
    viewer_state,
)
from corrscan.errors import InputError

URL = "zarr://https://files.example.org/10000/TS_01/Tomograms/VoxelSpacing13.48/TS_01.zarr"


def _controls(shader: str) -> dict[str, str]:
    return dict(re.findall(r"#uicontrol \w+ (\w+)(?: \w+)?\((.*)\)", shader))


def test_padded_windows_match_portal() -> None:
    assert padded_window((1.0, -1.0), 2.0) == (-5.0, 5.0)
    assert padded_window((20.0, 10.0), 0.1) == (9.0, 21.0)
    assert padded_window((3.0, 3.0), 0.2) == (2.0, 4.0)


def test_image_shader_controls() -> None:
    s2 = image_shader((-2.0, 1.0))
    c = _controls(s2)
    assert c["contrast"] == "range=[-2, 1], window=[-2.6, 1.6]"
    assert c["invert_contrast"] == "default=false"
    assert "VOLUME_RENDERING" not in s2 and "emitGrayscale" in s2
    s3 = image_shader((-2.0, 1.0), invert=True, volume_rendering_limits=(-3.0, 0.0))
    c = _controls(s3)
    assert c["contrast_3d"] == "range=[-3, 0], window=[-9, 6], clamp=false"
    assert c["invert_contrast_3d"] == "default=true" and c["invert_contrast"] == "default=true"
    assert "emitIntensity" in s3 and "if (VOLUME_RENDERING)" in s3
    # #uicontrol lines come first.
    lines = s3.splitlines()
    n_ctrl = sum(line.startswith("#uicontrol") for line in lines)
    assert all(line.startswith("#uicontrol") for line in lines[:n_ctrl])
    with pytest.raises(InputError):
        image_shader((0.0, float("nan")))


def test_image_layer_json_clean_and_volume_rendering() -> None:
    layer = image_layer(URL, (-2.0, 1.0), volume_rendering=True, volume_rendering_gain=-7.8)
    js = layer.to_json()
    assert js["type"] == "image" and js["source"][0]["url"] == URL
    assert js["volumeRendering"] == "on" and js["volumeRenderingGain"] == -7.8
    assert js["volumeRenderingDepthSamples"] == 128
    assert js["blend"] == "additive" and js["opacity"] == 1.0
    assert not [k for k in js if k.startswith("_")]
    plain = image_layer(URL, (-2.0, 1.0)).to_json()
    assert "volumeRendering" not in plain
    with pytest.raises(InputError):
        image_layer("just/a/path.zarr", (0, 1))


def test_segmentation_layer() -> None:
    js = segmentation_layer(
        "precomputed://https://x.org/seg", segments=[3, 1], color={1: "#ff0000", 3: "#00ff00"}
    ).to_json()
    assert js["type"] == "segmentation"
    assert js["segments"] == ["1", "3"]
    assert js["segmentColors"] == {"1": "#ff0000", "3": "#00ff00"}
    src = js["source"][0]
    assert src["subsources"] == {"default": True, "mesh": True}
    assert src["enableDefaultSubsources"] is False
    with pytest.raises(InputError):
        segmentation_layer("precomputed://x", color="red")
    with pytest.raises(InputError):
        segmentation_layer(np.zeros((2, 3, 3), np.float32))


def test_point_layer_positions_and_scores() -> None:
    pts = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])  # z, y, x
    js = point_layer(pts, voxel_size=(20.0, 10.0, 5.0), scores=[2.0, 4.0]).to_json()
    assert [a["point"] for a in js["annotations"]] == [[3.0, 2.0, 1.0], [6.0, 5.0, 4.0]]
    assert [a["props"] for a in js["annotations"]] == [[0.0, 2.0], [1.0, 4.0]]
    dims = js["source"][0]["transform"]["outputDimensions"]
    assert dims == {"x": [5e-10, "m"], "y": [1e-09, "m"], "z": [2e-09, "m"]}
    with pytest.raises(InputError):
        point_layer(np.zeros((2, 2)))


def test_oriented_point_lines_follow_particle_axes() -> None:
    from scipy.spatial.transform import Rotation

    pts = np.array([[10.0, 20.0, 30.0]])
    ang = np.array([[30.0, 60.0, -45.0]])
    js = oriented_point_layer(pts, ang, voxel_size=4.0, line_length=5.0).to_json()
    lines = js["annotations"]
    assert [a["props"] for a in lines] == [[0.0], [1.0], [2.0]]
    r = Rotation.from_euler("ZYZ", ang[0], degrees=True).as_matrix()
    for k, a in enumerate(lines):
        assert a["pointA"] == [30.0, 20.0, 10.0]
        d = np.array(a["pointB"]) - np.array(a["pointA"])
        np.testing.assert_allclose(d, 5.0 * r[k], atol=1e-5)  # row k of R = R^T e_k


def test_viewer_state_combined_and_roundtrip() -> None:
    picks = Picks(np.array([[10.0, 20.0, 30.0]]), np.zeros((1, 3)), np.array([1.0]))
    state = tomogram_state(
        URL,
        (-2.0, 1.0),
        voxel_size=13.48,
        shape=(200, 630, 630),
        volume_rendering=True,
        picks=picks,
    )
    js = state_json(state)
    assert [layer["name"] for layer in js["layers"]] == ["tomogram", "picks", "picks-axes"]
    assert js["position"] == [315.0, 315.0, 100.0]
    assert js["projectionScale"] == pytest.approx(1.1 * 630)
    assert js["projectionOrientation"] == pytest.approx(list(DEFAULT_PROJECTION_ORIENTATION))
    assert js["showSlices"] is False  # volume rendering on
    assert js["layout"] == "4panel" and js["gpuMemoryLimit"] == 1_500_000_000
    assert js["selectedLayer"]["layer"] == "tomogram"
    assert js["dimensions"]["x"] == pytest.approx([1.348e-9, "m"])
    # The neuroglancer package accepts its own JSON back unchanged.
    assert neuroglancer.ViewerState(json.loads(json.dumps(js))).to_json() == js
    with pytest.raises(InputError):
        viewer_state({})
    with pytest.raises(InputError):
        viewer_state({"a": image_layer(URL, (0, 1))}, layout="5panel")


def test_state_url_and_joining() -> None:
    state = viewer_state(
        {"tomo": image_layer(URL, (0.0, 1.0))}, voxel_size=10.0, shape=(10, 20, 20)
    )
    url = state_url(state, prefix="https://neuroglancer-demo.appspot.com")
    prefix, frag = url.split("#!", 1)
    assert prefix == "https://neuroglancer-demo.appspot.com/"
    back = json.loads(urllib.parse.unquote(frag))
    assert back == state_json(state)
    local = viewer_state({"tomo": image_layer(np.zeros((4, 8, 8), np.float32), (0.0, 1.0))})
    with pytest.raises(InputError, match="local arrays"):
        state_url(local)
    # The portal's urljoin dropped the last base segment without a trailing slash.
    assert (
        join_url("https://x.org/data/10000", "TS_01.zarr") == "https://x.org/data/10000/TS_01.zarr"
    )
    assert join_url("https://x.org/data/10000/", "/a/", "b") == "https://x.org/data/10000/a/b"
    assert source_url("https://x.org/t.zarr") == "zarr://https://x.org/t.zarr"
    assert source_url("precomputed://https://x.org/seg") == "precomputed://https://x.org/seg"
    with pytest.raises(InputError):
        source_url("https://x.org/t", kind="tiff")

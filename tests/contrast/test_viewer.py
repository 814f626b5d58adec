"""Local Neuroglancer viewer: loopback only, bundled client, computed limits; headless render."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator

import numpy as np
import pytest

from corrscan.contrast.picks import Picks
from corrscan.contrast.viewer import (
    LocalViewer,
    bundled_client_available,
    chromium_screenshot,
    find_chromium,
    serve_viewer,
)
from corrscan.errors import InputError
from corrscan.synthetic.mixtures import tomogram_mixture


@pytest.fixture
def stop_server() -> Iterator[None]:
    import neuroglancer

    yield
    neuroglancer.stop()


def test_bundled_client_present() -> None:
    assert bundled_client_available()


@pytest.mark.parametrize("address", ["0.0.0.0", "192.168.1.10", "::", "example.org"])
def test_refuses_non_loopback(address: str) -> None:
    with pytest.raises(InputError):
        serve_viewer(np.zeros((2, 4, 4), np.float32), limits=(0, 1), bind_address=address)


def test_serves_state_with_limits_on_loopback(stop_server: None) -> None:
    vol, _ = tomogram_mixture((24, 48, 48), seed=3, n_gold=0)
    picks = Picks(np.array([[12.0, 24.0, 24.0]]), np.array([[10.0, 20.0, 30.0]]), None)
    v = serve_viewer(vol, limits=(-1.5, 2.5), voxel_size=(12.0, 10.0, 10.0), picks=picks)
    assert isinstance(v, LocalViewer) and v.limits == (-1.5, 2.5)
    assert v.url.startswith("http://127.0.0.1:")
    state = v.viewer.state.to_json()
    names = [layer["name"] for layer in state["layers"]]
    assert names == ["tomogram", "picks", "picks-axes"]
    assert "range=[-1.5, 2.5]" in state["layers"][0]["shader"]
    assert state["dimensions"]["z"] == pytest.approx([1.2e-9, "m"])
    # The page and the bundled client are served from the loopback address.
    with urllib.request.urlopen(v.url, timeout=10) as r:
        page = r.read().decode()
    assert r.status == 200 and "<script" in page
    # Limits computed by a method when not given; a label mask becomes a segmentation layer.
    labels = np.zeros(vol.shape, np.uint8)
    labels[5:10, 10:20, 10:20] = 2
    labels[15:18, 30:40, 5:9] = 7
    v2 = serve_viewer(vol, limits="percentile", segmentation=labels)
    assert v2.limits[0] < 0 < v2.limits[1]
    seg = v2.viewer.state.to_json()["layers"][1]
    assert seg["type"] == "segmentation" and seg["segments"] == ["2", "7"]
    with pytest.raises(InputError):
        serve_viewer(vol, limits=(0, 1), segmentation=labels[:-1])


def _grey(image: np.ndarray) -> np.ndarray:
    return image[..., :3].astype(np.float64).mean(axis=-1)


@pytest.mark.e2e
def test_headless_chromium_renders_tomogram(stop_server: None) -> None:
    if find_chromium() is None:
        pytest.skip("Chromium is not installed (Debian package 'chromium'); e2e render not checked")
    vol, truth = tomogram_mixture((32, 96, 96), seed=5, n_gold=1)
    picks = Picks(np.array([[16.0, 48.0, 48.0]]), np.array([[0.0, 45.0, 0.0]]), np.array([1.0]))
    v = serve_viewer(vol, voxel_size=10.0, picks=picks, layout="xy")
    image = chromium_screenshot(v, size=(640, 480), timeout=60)
    assert image.ndim == 3 and image.shape[2] == 4 and image.shape[0] > 100
    grey = _grey(image)
    # Non-blank: a slice rendered with the GMM window is mostly mid-to-bright noise with dark
    # blobs; the panel background is black.
    assert grey.std() > 20
    assert len(np.unique(grey.round())) > 50
    bright = (grey > 150).mean()
    assert 0.05 < bright < 0.95
    # Volume rendering also draws something.
    v3 = serve_viewer(vol, voxel_size=10.0, layout="3d", volume_rendering=True)
    img3 = _grey(chromium_screenshot(v3, size=(480, 360), timeout=60))
    assert img3.std() > 5 and len(np.unique(img3.round())) > 20
    del truth

"""Local Neuroglancer viewer: serve a tomogram (and picks) on a loopback address.

The ``neuroglancer`` wheel bundles the compiled web client, so the viewer works with no
internet access: :func:`serve_viewer` starts Neuroglancer's Python web server on a loopback
address only (``127.0.0.1`` by default; other addresses are refused), serves the volume lazily
chunk by chunk from memory, a memory-mapped MRC or an OME-Zarr level, and sets the image
layer's contrast to the computed limits.

:func:`chromium_screenshot` renders the viewer in a headless Chromium (Debian package
``chromium``) and returns the canvas, for end-to-end checks and ``corrscan view --screenshot``.
"""

from __future__ import annotations

import importlib.resources
import io
import ipaddress
import os
import shutil
import subprocess
import tempfile
import threading
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import neuroglancer
import neuroglancer.server
import neuroglancer.static
import numpy as np

from corrscan.contrast.limits import ContrastLimits, compute_contrast_limits
from corrscan.contrast.picks import Picks, read_picks
from corrscan.contrast.states import (
    image_layer,
    local_volume,
    picks_layers,
    segmentation_layer,
    viewer_state,
)
from corrscan.contrast.volumes import VolumeSource, open_volume
from corrscan.errors import InputError

__all__ = [
    "CHROMIUM_FLAGS",
    "LocalViewer",
    "bundled_client_available",
    "chromium_screenshot",
    "find_chromium",
    "serve_viewer",
]

#: Flags for a headless, offline, sandbox-free Chromium with software WebGL (SwiftShader).
CHROMIUM_FLAGS: tuple[str, ...] = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--use-angle=swiftshader",
    "--enable-unsafe-swiftshader",
)


def bundled_client_available() -> bool:
    """Whether the installed ``neuroglancer`` ships its compiled client (``static/client``)."""
    try:
        return (
            importlib.resources.files("neuroglancer.static")
            .joinpath("client", "index.html")
            .is_file()
        )
    except (ModuleNotFoundError, FileNotFoundError):
        return False


def _check_loopback(bind_address: str) -> str:
    if bind_address == "localhost":
        return "127.0.0.1"
    try:
        ip = ipaddress.ip_address(bind_address)
    except ValueError:
        raise InputError(
            f"bind address {bind_address!r} is not an IP address: use 127.0.0.1"
        ) from None
    if not ip.is_loopback:
        raise InputError(
            f"bind address {bind_address} is not a loopback address: the viewer serves local "
            "data without authentication, so only 127.0.0.1 / ::1 are allowed"
        )
    return str(ip)


class _ArrayView:
    """NumPy view of a lazily read `(z, y, x)` volume for ``neuroglancer.LocalVolume``."""

    def __init__(self, source: VolumeSource, dtype: Any = None):
        self._source = source
        self.shape = source.shape
        dt = source.dtype  # native byte order
        if dtype is not None:
            self.dtype = np.dtype(dtype)
        else:
            self.dtype = np.dtype(np.float32) if dt.kind == "f" and dt.itemsize != 4 else dt

    def __getitem__(self, item: Any) -> np.ndarray:
        if not isinstance(item, tuple) or not item or not isinstance(item[0], slice):
            raise IndexError("only (z-slice, ...) indexing is supported")
        z0, z1, _ = item[0].indices(self.shape[0])
        block = self._source.read(z0, max(z1, z0 + 1))[(slice(None), *item[1:])]
        return np.asarray(block, dtype=self.dtype)


@dataclass
class LocalViewer:
    """A running local viewer.

    Attributes
    ----------
    viewer
        The ``neuroglancer.Viewer``.
    url
        Loopback URL of the viewer page.
    limits
        Contrast limits of the image layer.
    state
        The state that was set (layers, dimensions, layout).
    """

    viewer: neuroglancer.Viewer
    url: str
    limits: ContrastLimits
    state: neuroglancer.ViewerState = field(repr=False)

    def screenshot(self, *, size: Sequence[int] | None = None, timeout: float = 60.0) -> np.ndarray:
        """`(H, W, 4)` uint8 RGBA of the rendered canvas from a connected browser client.

        Neuroglancer's client sends the screenshot once every visible chunk is loaded. Raises
        ``TimeoutError`` when no client answers within ``timeout`` seconds.
        """
        if size is not None:
            with self.viewer.config_state.txn() as s:
                s.show_ui_controls = False
                s.show_panel_borders = False
                s.viewer_size = [int(size[0]), int(size[1])]
        done = threading.Event()
        result: list[Any] = []

        def handler(reply: Any) -> None:
            result.append(reply)
            done.set()

        self.viewer.async_screenshot(handler)
        if not done.wait(timeout):
            raise TimeoutError(f"no screenshot from a browser client within {timeout:.0f} s")
        from PIL import Image

        png = result[0].screenshot.image
        return np.asarray(Image.open(io.BytesIO(png)).convert("RGBA"))

    def stop(self) -> None:
        """Stop the local web server (invalidates the URL)."""
        neuroglancer.stop()


def _resolve_limits(
    source: VolumeSource, limits: str | Sequence[float] | None, seed: int | None
) -> ContrastLimits:
    if limits is None:
        limits = "gmm"
    if isinstance(limits, str):
        return compute_contrast_limits(source, method=limits, seed=seed)  # type: ignore[arg-type]
    vals = [float(v) for v in limits]
    if len(vals) != 2 or not np.all(np.isfinite(vals)):
        raise InputError(f"limits must be a method name or (low, high), got {limits!r}")
    return ContrastLimits(vals[0], vals[1])


def serve_viewer(
    volume: Any,
    *,
    limits: str | Sequence[float] | None = "gmm",
    voxel_size: float | Sequence[float] | None = None,
    picks: Picks | str | os.PathLike[str] | None = None,
    segmentation: Any = None,
    volume_rendering: bool = False,
    bind_address: str = "127.0.0.1",
    port: int = 0,
    layout: str = "4panel",
    level: int = 0,
    seed: int | None = 42,
    name: str = "tomogram",
) -> LocalViewer:
    """Serve ``volume`` in a local Neuroglancer viewer with computed contrast limits.

    Parameters
    ----------
    volume
        `(z, y, x)` array or MRC / OME-Zarr / ``.npy`` path (read lazily, slab by slab).
    limits
        Method name (``"gmm"``, ``"cdf"``, ``"percentile"``) or explicit ``(low, high)``.
    voxel_size
        Å (``(z, y, x)`` or scalar); default: from the file, else 1.
    picks
        :class:`~corrscan.contrast.picks.Picks` or a STAR/CSV path: point (and, with angles,
        oriented) annotation layers.
    segmentation
        Integer label volume (array or path, same shape as ``volume``): a segmentation layer
        showing every non-zero label.
    volume_rendering
        Start with volume rendering on (GMM-limit transfer function, inverted).
    bind_address, port
        Loopback address and port (0 = any free port).
    layout
        Neuroglancer layout.
    """
    if not bundled_client_available():
        raise InputError(
            "the installed neuroglancer package has no bundled web client "
            "(neuroglancer/static/client); reinstall it from a PyPI wheel"
        )
    bind = _check_loopback(bind_address)
    if not 0 <= int(port) < 65536:
        raise InputError(f"port must be in 0..65535, got {port}")
    source = open_volume(volume, level=level)
    vs = voxel_size if voxel_size is not None else source.voxel_size
    lim = _resolve_limits(source, limits, seed)
    if picks is not None and not isinstance(picks, Picks):
        picks = read_picks(picks, voxel_size=vs, shape=source.shape)

    if neuroglancer.server.is_server_running():
        host = urllib.parse.urlparse(neuroglancer.server.get_server_url()).hostname or ""
        if not ipaddress.ip_address(host).is_loopback:  # pragma: no cover - someone else's server
            neuroglancer.stop()
    neuroglancer.set_server_bind_address(bind, int(port))
    neuroglancer.set_static_content_source(
        source=neuroglancer.static.get_default_static_content_source()
    )

    data = _ArrayView(source)
    layers: dict[str, Any] = {
        name: image_layer(
            local_volume(data, vs),
            lim,
            volume_rendering=volume_rendering,
            volume_rendering_limits=lim,
        )
    }
    if segmentation is not None:
        seg = open_volume(segmentation, level=level, name="segmentation")
        if seg.shape != source.shape:
            raise InputError(
                f"segmentation shape {seg.shape} differs from the volume's {source.shape}"
            )
        if seg.dtype.kind not in "iub":
            raise InputError(f"segmentation must hold integer labels, got {seg.dtype}")
        step = max(1, (1 << 24) // (seg.shape[1] * seg.shape[2]))
        labels: set[int] = set()
        for z in range(0, seg.shape[0], step):  # streamed: one chunk of slices at a time
            labels.update(int(v) for v in np.unique(seg.read(z, min(seg.shape[0], z + step))))
        layers["segmentation"] = segmentation_layer(
            local_volume(_ArrayView(seg, np.uint32), vs, segmentation=True),
            segments=sorted(labels - {0}),
        )
    if picks is not None:
        layers.update(picks_layers(picks, voxel_size=vs))
    state = viewer_state(layers, voxel_size=vs, shape=source.shape, layout=layout)
    viewer = neuroglancer.Viewer()
    viewer.set_state(state)
    url = viewer.get_viewer_url()
    host = urllib.parse.urlparse(url).hostname or ""
    if not ipaddress.ip_address(host).is_loopback:  # pragma: no cover - defensive
        neuroglancer.stop()
        raise InputError(f"viewer server is not on a loopback address: {url}")
    return LocalViewer(viewer=viewer, url=url, limits=lim, state=state)


def find_chromium() -> str | None:
    """Path of a Chromium executable (``chromium``, ``chromium-browser``), or ``None``."""
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    return None


def chromium_screenshot(
    viewer: LocalViewer,
    *,
    size: Sequence[int] = (800, 600),
    timeout: float = 60.0,
    chromium: str | None = None,
) -> np.ndarray:
    """Open ``viewer`` in a headless Chromium and return the rendered canvas `(H, W, 4)` uint8.

    Chromium runs with :data:`CHROMIUM_FLAGS`, a fresh temporary profile and only the
    viewer's loopback URL; it is terminated afterwards.
    """
    exe = chromium or find_chromium()
    if exe is None:
        raise InputError("Chromium not found: install Debian's 'chromium' package")
    host = urllib.parse.urlparse(viewer.url).hostname or ""
    if not ipaddress.ip_address(host).is_loopback:
        raise InputError(f"refusing to open a non-loopback URL: {viewer.url}")
    with tempfile.TemporaryDirectory(prefix="corrscan-chromium-") as profile:
        cmd = [
            exe,
            *CHROMIUM_FLAGS,
            f"--user-data-dir={profile}",
            f"--window-size={int(size[0])},{int(size[1])}",
            viewer.url,
        ]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            image = viewer.screenshot(timeout=timeout)
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:  # pragma: no cover
                proc.kill()
                proc.wait(5)
    return image

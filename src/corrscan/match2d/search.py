"""The 2D template-matching search: every orientation x defocus against one micrograph.

Maths (Leopard-EM conventions, peer spec §5-6)
----------------------------------------------
``X`` is the whitened, normalised micrograph spectrum (:func:`whiten_micrograph`). For an
orientation ``o`` (ZYZ Euler angles, projection ``p_o(y, x) = sum_z V(R_o @ (x, y, z))``) and a
relative defocus ``Δf_d`` the template spectrum is ``T = G_d · P_o`` with

``G_d(k) = -CTF(k; Δf_mean + Δf_d) · exp(-B k²/4) · Φ(k)``

(the ``-1`` models particles that are dark at low frequency for a positive-density map; the
CTF is torch-ctf's ``-sin γ``). The correlation map is the circular cross-correlation

``c(s) = sum_r x(r + s) t(r) / σ_{o,d}``,  ``σ²_{o,d} = sum_{k≠0} |T_k|² / N²``

(sum over the full Hermitian spectrum of the ``N = H·W`` grid) — exactly the noise standard
deviation of ``c`` for a micrograph whose filtered spectrum is white with unit power, so noise
gives mean 0 and variance 1 (Leopard-EM intends the same normalisation; peer quirk Q3).
The template box's top-left corner sits at ``s``: the particle centre is ``s + box // 2``.

Two orders of the same maths (``ComputeConfig.ctf_placement``):

* ``"micrograph"`` (default): ``X_d = X · G_d`` is computed once per defocus on the micrograph
  grid; each orientation needs one zero-padded forward FFT of the raw projection, shared by
  all defocus planes, and the CTF of the template is not truncated by the box. ``σ`` comes from
  a small matrix product ``(Σ_k w_k G_d²(k) |P_o(k)|²)``.
* ``"template_box"``: Leopard-EM's order — the projection is filtered by ``G_d`` on the box
  grid, back-transformed, edge-mean subtracted, normalised and zero-padded: one forward FFT per
  correlation. Use it to reproduce Leopard-EM's maps exactly (up to its quirk Q3).

Execution: orientations are projected in batches (size planned from free memory); each batch
is correlated in small chunks (``chunk_orientations`` x all defocus planes) so a chunk's
spectra and maps stay in cache on CPU; every chunk is reduced over its items (max, sum, sum of
squares) before the per-pixel state is touched; the sums go into the exact, mergeable
:class:`corrscan.core.stats.MomentAccumulator` once per batch. Statistics are only accumulated
over the valid region when ``valid_crop`` (Leopard-EM accumulates the full map, quirk Q9).
"""

from __future__ import annotations

import math
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from corrscan.core.arrays import (
    check_finite,
    free_memory_bytes,
    plan_batch_size,
    resolve_device,
    to_tensor,
)
from corrscan.core.ctf import ctf_2d
from corrscan.core.progress import track
from corrscan.core.rotations import euler_to_matrix
from corrscan.core.stats import MomentAccumulator
from corrscan.errors import InputError
from corrscan.match2d._templates import (
    PreparedTemplate,
    central_slices,
    prepare_template,
    slices_to_images,
    subtract_edge_mean,
)
from corrscan.match2d.config import (
    ComputeConfig,
    DefocusSearchConfig,
    OpticsGroup,
    OrientationSearchConfig,
    PreprocessingFilters,
)
from corrscan.match2d.preprocess import (
    combined_filter,
    noise_power_grid,
    rfft_weights,
    whiten_micrograph,
)
from corrscan.match2d.result import MatchTemplateResult

__all__ = ["SearchPlan", "match_template", "template_filters"]


# --------------------------------------------------------------------------------------------
# filters
# --------------------------------------------------------------------------------------------


def template_filters(
    shape: tuple[int, int],
    optics: OpticsGroup,
    defocus_offsets: torch.Tensor,
    phi: torch.Tensor,
    *,
    pixel_size: float,
    spherical_aberration: torch.Tensor | float | None = None,
) -> torch.Tensor:
    """``G = -CTF · B-envelope · Φ`` on the rfft grid of ``shape``: `(n_defocus, h, w//2+1)`.

    Parameters
    ----------
    shape
        Real-space grid `(h, w)` (micrograph or template box).
    optics
        CTF parameters; defocus U/V are shifted by each offset (signed astigmatism kept).
    defocus_offsets
        `(n_defocus,)` Å relative to the mean defocus.
    phi
        `(h, w//2+1)` combined preprocessing filter on the same grid.
    pixel_size
        Å/pixel of the grid.
    spherical_aberration
        Optional `(n_defocus,)` or scalar C_s override (mm; pixel-size search).
    """
    off = defocus_offsets.to(torch.float64)
    cs = optics.spherical_aberration if spherical_aberration is None else spherical_aberration
    ctf = ctf_2d(
        shape,
        pixel_size=pixel_size,
        defocus=optics.defocus_u + off,
        defocus_v=optics.defocus_v + off,
        astigmatism_angle=optics.astigmatism_angle,
        voltage=optics.voltage,
        spherical_aberration=cs,
        amplitude_contrast=optics.amplitude_contrast_ratio,
        phase_shift=optics.phase_shift,
        b_factor=optics.ctf_B_factor,
        device=phi.device,
        dtype=torch.float64,
    )
    return (-ctf * phi.to(torch.float64)).to(torch.float32)


# --------------------------------------------------------------------------------------------
# fused statistics state
# --------------------------------------------------------------------------------------------


class _FusedState:
    """Per-pixel search state of one worker: MIP + winning index, batch sums, exact moments.

    :meth:`update` takes a chunk of full correlation maps `(n, H, W)` (contiguous), scales
    them, reduces the chunk over its items (max; sum and sum of squares as matrix-vector
    products, which read each map once), and only then folds the chunk maxima into the
    valid-region MIP (ties keep the earlier item) and the batch sums; :meth:`flush` moves the
    batch sums of the valid region into the exact :class:`MomentAccumulator`.
    """

    def __init__(
        self, image_shape: tuple[int, int], valid_shape: tuple[int, int], device: torch.device
    ) -> None:
        self.image_shape = image_shape
        self.shape = valid_shape
        self.device = device
        n_pix = image_shape[0] * image_shape[1]
        self.mip = torch.full(valid_shape, -math.inf, device=device)
        self.index = torch.full(valid_shape, -1, dtype=torch.int64, device=device)
        self.s1 = torch.zeros(1, n_pix, device=device)
        self.s2 = torch.zeros(1, n_pix, device=device)
        self._ones = torch.ones(1, 1, device=device)
        self.pending = 0
        self.moments = MomentAccumulator(valid_shape, device=device)
        self._sync_free = device.type == "cuda"

    def update(
        self, maps: torch.Tensor, item_index: torch.Tensor, scale: torch.Tensor | None = None
    ) -> None:
        """Fold a chunk into the state (``maps`` is modified in place).

        Parameters
        ----------
        maps
            `(n, H, W)` contiguous correlation maps.
        item_index
            `(n,)` int64 global search index of each map.
        scale
            Optional `(n,)` factors applied to the maps first (noise normalisation).
        """
        n = maps.shape[0]
        h, w = self.image_shape
        hv, wv = self.shape
        flat = maps.view(n, h * w)
        if scale is not None:
            flat.mul_(scale[:, None])
        if self._ones.shape[1] != n:
            self._ones = torch.ones(1, n, device=self.device)
        m = flat.amax(0).view(h, w)[:hv, :wv]
        better = m > self.mip
        if self._sync_free:
            arg = flat.argmax(0).view(h, w)[:hv, :wv]
            self.index = torch.where(better, item_index[arg], self.index)
            torch.maximum(self.mip, m, out=self.mip)
        else:
            sel = better.view(-1).nonzero().squeeze(1) if (hv, wv) == (h, w) else None
            if sel is None:
                iy, ix = better.nonzero(as_tuple=True)
                if iy.numel():
                    arg = flat[:, iy * w + ix].argmax(0)
                    self.index[iy, ix] = item_index[arg]
                    self.mip[iy, ix] = m[iy, ix]
            elif sel.numel():
                arg = flat[:, sel].argmax(0)
                self.index.view(-1)[sel] = item_index[arg]
                self.mip.view(-1)[sel] = m.reshape(-1)[sel]
        self.s1.addmm_(self._ones, flat)
        flat.square_()
        self.s2.addmm_(self._ones, flat)
        self.pending += int(n)

    def flush(self) -> None:
        """Move the batch sums (valid region) into the exact moment accumulator."""
        if self.pending:
            h, w = self.image_shape
            hv, wv = self.shape
            s1 = self.s1.view(h, w)[:hv, :wv]
            s2 = self.s2.view(h, w)[:hv, :wv]
            self.moments.update_from_sums(s1, s2, self.pending)
            self.s1.zero_()
            self.s2.zero_()
            self.pending = 0

    def merge(self, other: _FusedState) -> _FusedState:
        """Fold another worker's state into this one (max with smaller-index ties; exact sums)."""
        self.flush()
        other.flush()
        omip = other.mip.to(self.device)
        oidx = other.index.to(self.device)
        better = (omip > self.mip) | ((omip == self.mip) & (oidx < self.index) & (oidx >= 0))
        self.mip = torch.where(better, omip, self.mip)
        self.index = torch.where(better, oidx, self.index)
        if other.moments.count:
            om = other.moments
            if om.device != self.device:
                om = MomentAccumulator.from_state_dict(om.state_dict(), device=self.device)
            self.moments.merge(om)
        return self


# --------------------------------------------------------------------------------------------
# the search plan (everything precomputed once) and its worker
# --------------------------------------------------------------------------------------------


@dataclass
class SearchPlan:
    """Precomputed inputs of one search (all tensors on ``device``).

    Attributes
    ----------
    spectrum
        `(H, W//2+1)` whitened micrograph spectrum (see :func:`whiten_micrograph`).
    image_shape
        `(H, W)` of the correlation grid.
    template
        The prepared template (box ``h``).
    filters
        ``micrograph`` placement: `(n_def, H, W//2+1)` ``X · G_d``;
        ``template_box``: `(n_def, h, h//2+1)` ``G_d`` on the box grid.
    noise_weights
        ``micrograph`` placement: `(n_def, H·(W//2+1))` ``w_k G_d²`` (DC 0) for ``σ``.
    angles
        `(n_orient, 3)` float64 degrees.
    n_defocus
        Number of defocus planes (items per orientation).
    valid_shape
        Shape of the accumulated region (top-left corner of the full maps).
    """

    spectrum: torch.Tensor
    image_shape: tuple[int, int]
    template: PreparedTemplate
    filters: torch.Tensor
    noise_weights: torch.Tensor | None
    angles: torch.Tensor
    n_defocus: int
    valid_shape: tuple[int, int]
    placement: str
    chunk: int
    device: torch.device
    extras: dict[str, Any] = field(default_factory=dict)

    def to(self, device: torch.device) -> SearchPlan:
        """A copy of the plan on another device."""
        if device == self.device:
            return self
        tpl = self.template.to(device)
        nw = None if self.noise_weights is None else self.noise_weights.to(device)
        return SearchPlan(
            spectrum=self.spectrum.to(device),
            image_shape=self.image_shape,
            template=tpl,
            filters=self.filters.to(device),
            noise_weights=nw,
            angles=self.angles,
            n_defocus=self.n_defocus,
            valid_shape=self.valid_shape,
            placement=self.placement,
            chunk=self.chunk,
            device=device,
            extras={
                k: (v.to(device) if isinstance(v, torch.Tensor) else v)
                for k, v in self.extras.items()
            },
        )


def _correlate_batch(plan: SearchPlan, state: _FusedState, start: int, stop: int) -> None:
    """Correlate orientations ``[start, stop)`` with every defocus plane into ``state``."""
    h_img, w_img = plan.image_shape
    n_def = plan.n_defocus
    dev = plan.device
    n_pix = h_img * w_img
    rot = euler_to_matrix(plan.angles[start:stop].to(torch.float64)).to(dev, torch.float32)
    slices = central_slices(plan.template, rot)  # (B, Dp, Dp//2+1)
    d_idx = torch.arange(n_def, device=dev, dtype=torch.int64)
    if plan.placement == "micrograph":
        proj = subtract_edge_mean(slices_to_images(plan.template, slices))  # (B, h, h)
        for c0 in range(0, stop - start, plan.chunk):
            c1 = min(c0 + plan.chunk, stop - start)
            pc = proj[c0:c1]
            # zero-padded forward FFT, pruned: x-transform of the D non-zero rows only
            pft = torch.fft.fft(torch.fft.rfft(pc, n=w_img, dim=-1), n=h_img, dim=-2)
            var = _noise_variance(plan, pc, pft)  # (n_def, c)
            inv = torch.rsqrt(var.clamp_min(1e-30))
            spec = plan.filters[:, None] * pft.conj()[None]  # (n_def, c, H, Wr)
            cc = torch.fft.irfft2(spec, s=(h_img, w_img))
            o_idx = torch.arange(start + c0, start + c1, device=dev, dtype=torch.int64)
            item = (o_idx[None, :] * n_def + d_idx[:, None]).reshape(-1)
            state.update(cc.view(-1, h_img, w_img), item, inv.reshape(-1))
    else:
        for c0 in range(0, stop - start, plan.chunk):
            c1 = min(c0 + plan.chunk, stop - start)
            filt = plan.filters[:, None] * slices[None, c0:c1]  # (n_def, c, Dp, Dp//2+1)
            img = subtract_edge_mean(slices_to_images(plan.template, filt))  # (n_def, c, h, h)
            s = img.sum((-2, -1))
            ss = img.square().sum((-2, -1))
            var = (ss - s * s / n_pix) / n_pix  # = sum_{k≠0}|T_k|² / N² of the padded box
            img = img * torch.rsqrt(var.clamp_min(1e-30))[..., None, None]
            tft = torch.fft.rfft2(img, s=(h_img, w_img))
            spec = plan.spectrum * tft.conj()
            cc = torch.fft.irfft2(spec, s=(h_img, w_img))
            o_idx = torch.arange(start + c0, start + c1, device=dev, dtype=torch.int64)
            item = (o_idx[None, :] * n_def + d_idx[:, None]).reshape(-1)
            state.update(cc.view(-1, h_img, w_img), item)


def _lag_indices(shape: tuple[int, int], box: int, device: torch.device) -> torch.Tensor:
    """Flat indices, in an array of ``shape``, of the lags ``|dy|, |dx| <= box - 1`` (wrapped)."""
    lags = torch.arange(-(box - 1), box, device=device)
    iy = lags % shape[0]
    ix = lags % shape[1]
    return (iy[:, None] * shape[1] + ix[None, :]).reshape(-1)


def _noise_variance(plan: SearchPlan, proj: torch.Tensor, pft: torch.Tensor) -> torch.Tensor:
    """``σ²[d, c] = Σ_{k≠0} S(k) G_d(k)² |P_c(k)|² / N²`` for a chunk of projections.

    Computed exactly in real space when the grid allows it: ``σ² = Σ_r a_d(r) ρ_c(r) / N`` with
    ``a_d = irfft2(S G_d²)`` (precomputed, restricted to lags ``|r| < D``) and ``ρ_c`` the
    projection's autocorrelation (small FFTs of size ``2D``), which avoids a pass over the
    large spectrum; otherwise from ``|P|²`` on the large grid.
    """
    if plan.extras.get("noise_kernel") is not None:
        box = proj.shape[-1]
        m = 2 * box
        q = torch.fft.rfft2(proj, s=(m, m))
        rho = torch.fft.irfft2(q.real.square() + q.imag.square(), s=(m, m))
        rho = rho.reshape(proj.shape[0], -1)[:, plan.extras["small_lags"]]
        return plan.extras["noise_kernel"] @ rho.T
    pw = (pft.real.square() + pft.imag.square()).reshape(pft.shape[0], -1)
    n_pix = plan.image_shape[0] * plan.image_shape[1]
    return plan.noise_weights @ pw.T / (n_pix * n_pix)


def _bytes_per_orientation(plan_shape: tuple[int, int], box: int, n_def: int, chunk: int) -> int:
    """Working memory of one orientation in a batch (projection, slice) plus the chunk buffers
    amortised (they do not grow with the batch)."""
    _h, _w = plan_shape
    return 4 * box * box * 4 + 8 * box * (box // 2 + 1) * 2


def _chunk_bytes(plan_shape: tuple[int, int], n_def: int, chunk: int) -> int:
    h, w = plan_shape
    wr = w // 2 + 1
    per_item = 8 * h * wr * 2 + 4 * h * w * 2  # spectrum, product, map (+ temporaries)
    return chunk * (n_def + 1) * per_item


# --------------------------------------------------------------------------------------------
# public entry point
# --------------------------------------------------------------------------------------------


def _as_model(value: Any, cls: type, name: str) -> Any:
    if value is None:
        return cls()
    if isinstance(value, cls):
        return value
    if isinstance(value, dict):
        return cls.from_dict(value, source=name)
    raise InputError(f"{name} must be a {cls.__name__} or a dict, got {type(value).__name__}")


def _cropped_sizes(box: int, shape: tuple[int, int], factor: float) -> tuple[int, tuple[int, int]]:
    """Template box and micrograph shape after Fourier cropping by about ``factor`` (< 1).

    The box ``k`` is chosen near ``box · factor`` (at most 3 % below it, so the
    requested resolution is kept) such that both micrograph sides scale by exactly ``k / box``
    to integers with small prime factors (fast FFTs); if no such ``k`` exists the sides are
    rounded (pixel-size mismatch below ``0.5 / side``).
    """
    from corrscan.core.fourier import next_fast_len

    k0 = max(8, round(box * factor))
    lo, hi = max(8, int(k0 * 0.97)), min(box, k0 + max(4, k0 // 4))
    for k in sorted(range(lo, hi + 1), key=lambda k: (abs(k - k0), -k)):
        hs = [n * k / box for n in shape]
        if all(abs(x - round(x)) < 1e-9 and next_fast_len(round(x)) == round(x) for x in hs):
            return k, (round(hs[0]), round(hs[1]))
    f = k0 / box
    return k0, (max(k0, round(shape[0] * f)), max(k0, round(shape[1] * f)))


def match_template(
    micrograph: Any,
    template: Any,
    *,
    optics: OpticsGroup | dict,
    defocus_search: DefocusSearchConfig | dict | None = None,
    orientation_search: OrientationSearchConfig | dict | None = None,
    orientations: Any = None,
    preprocessing: PreprocessingFilters | dict | None = None,
    compute: ComputeConfig | dict | None = None,
    valid_crop: bool = True,
    resolution_limit: float | None = None,
    progress: bool | None = None,
    config: dict | None = None,
) -> MatchTemplateResult:
    """Search a micrograph for every orientation x defocus of a 3D template.

    Parameters
    ----------
    micrograph
        `(H, W)` image (NumPy/CuPy/torch), pixel size ``optics.pixel_size``.
    template
        `(D, D, D)` map at the same pixel size; positive density (protein bright). Its centre
        is voxel ``D // 2``.
    optics
        :class:`OpticsGroup` (pixel size Å, kV, C_s mm, amplitude contrast, phase shift,
        defocus U/V Å, astigmatism angle °, B-factor Å²).
    defocus_search
        :class:`DefocusSearchConfig`: offsets relative to ``(U + V) / 2`` (0 always included).
    orientation_search
        :class:`OrientationSearchConfig` (psi/theta steps, base grid, symmetry or ranges).
    orientations
        Explicit `(n, 3)` ``(phi, theta, psi)`` degrees; overrides ``orientation_search``.
    preprocessing
        :class:`PreprocessingFilters` (whitening from the micrograph, band-pass, any curve).
    compute
        :class:`ComputeConfig` (devices, batch sizes, threads, CTF placement, oversampling).
    valid_crop
        Keep only positions where the whole box fits: maps are `(H - D + 1, W - D + 1)` and
        statistics are accumulated only there. Else maps are the full circular `(H, W)`.
    resolution_limit
        Å. Fourier-crop micrograph and template so that Nyquist is ``1 / resolution_limit``
        before searching (faster; maps come at the coarser pixel size ``result.pixel_size``).
    progress
        Show a progress bar (CCG/s); ``None`` decides from the terminal.
    config
        Stored in the result's metadata as given (the CLI passes the YAML config).

    Returns
    -------
    MatchTemplateResult
        Maps ``mip``, ``scaled_mip``, ``correlation_mean``, ``correlation_variance``,
        ``correlation_std``, ``phi``, ``theta``, ``psi``, ``relative_defocus`` `(H', W')`
        plus totals, the configuration and timings.
    """
    t_start = time.perf_counter()
    optics = _as_model(optics, OpticsGroup, "optics")
    defocus_search = _as_model(defocus_search, DefocusSearchConfig, "defocus_search")
    orientation_search = _as_model(
        orientation_search, OrientationSearchConfig, "orientation_search"
    )
    preprocessing = _as_model(preprocessing, PreprocessingFilters, "preprocessing")
    compute = _as_model(compute, ComputeConfig, "compute")

    devices = [resolve_device(d) for d in compute.devices()]
    dev0 = devices[0]
    img = to_tensor(micrograph, name="micrograph").to(torch.float32)
    vol = to_tensor(template, name="template").to(torch.float32)
    if img.ndim != 2:
        raise InputError(f"micrograph must be 2D (H, W), got shape {tuple(img.shape)}")
    if vol.ndim != 3 or len(set(vol.shape)) != 1:
        raise InputError(f"template must be a cubic 3D map (D, D, D), got {tuple(vol.shape)}")
    check_finite(img, "micrograph")
    check_finite(vol, "template")
    box = int(vol.shape[-1])
    if box > min(img.shape):
        raise InputError(
            f"template box {box} is larger than the micrograph {tuple(img.shape)}: crop the "
            "template or use a larger micrograph"
        )
    if float(img.std()) == 0:
        raise InputError("micrograph is constant: nothing to search")

    pixel_size = float(optics.pixel_size)
    scale = 1.0
    if resolution_limit is not None:
        if resolution_limit <= 2 * pixel_size:
            raise InputError(
                f"resolution_limit {resolution_limit} Å must be coarser than Nyquist "
                f"({2 * pixel_size} Å) to crop anything"
            )
        new_box, new_img = _cropped_sizes(
            box, (int(img.shape[0]), int(img.shape[1])), 2 * pixel_size / resolution_limit
        )
        from corrscan.core.fourier import fourier_crop

        img = fourier_crop(img, new_img).to(torch.float32)
        vol = fourier_crop(vol, (new_box,) * 3).to(torch.float32)
        scale = box / new_box
        box = new_box
        pixel_size = pixel_size * scale

    h_img, w_img = (int(s) for s in img.shape)
    valid_shape = (h_img - box + 1, w_img - box + 1) if valid_crop else (h_img, w_img)

    if orientations is not None:
        angles = to_tensor(orientations, name="orientations").to(torch.float64).reshape(-1, 3)
        if angles.shape[0] == 0:
            raise InputError("orientations is empty")
    else:
        angles = orientation_search.angles().to(torch.float64)
    defocus = defocus_search.values()
    n_def = int(defocus.numel())
    n_orient = int(angles.shape[0])

    # --- preprocessing (once) ---
    img_d = img.to(dev0)
    spectrum, phi_img = whiten_micrograph(img_d, preprocessing, pixel_size=pixel_size)
    tpl = prepare_template(vol.to(dev0), compute.template_oversampling)
    if compute.ctf_placement == "micrograph":
        g = template_filters(
            (h_img, w_img), optics, defocus.to(dev0), phi_img, pixel_size=pixel_size
        )
        filters = spectrum[None] * g
        wts = rfft_weights((h_img, w_img), device=dev0).clone()
        wts[0, 0] = 0
        s_grid = noise_power_grid(spectrum)
        wts = wts * s_grid
        noise_weights = (wts[None] * g.square()).reshape(n_def, -1).contiguous()
        extras: dict[str, Any] = {}
        if h_img >= 2 * box - 1 and w_img >= 2 * box - 1:
            a_half = s_grid.double()[None] * g.double().square()
            a_half[:, 0, 0] = 0
            kern = torch.fft.irfft2(a_half, s=(h_img, w_img)).reshape(n_def, -1)
            big = _lag_indices((h_img, w_img), box, dev0)
            extras["noise_kernel"] = (kern[:, big] / (h_img * w_img)).to(torch.float32)
            extras["small_lags"] = _lag_indices((2 * box, 2 * box), box, dev0)
            noise_weights = None  # the real-space kernel replaces the large-grid weights
        del g
    else:
        phi_box = combined_filter(img_d, (box, box), preprocessing, pixel_size=pixel_size)
        filters = template_filters(
            (box, box), optics, defocus.to(dev0), phi_box, pixel_size=pixel_size
        )
        noise_weights = None
        extras = {}

    # --- batch planning ---
    cpu = dev0.type == "cpu"
    if compute.chunk_orientations:
        chunk = compute.chunk_orientations
    elif cpu:
        # a chunk's maps and spectra (~16 bytes per pixel and item) should stay in cache
        chunk = max(1, min(32, (8 << 20) // (16 * h_img * w_img * n_def)))
    else:
        # GPU: as many orientations per fused step as a third of the free memory allows
        per = _chunk_bytes((h_img, w_img), n_def, 1)
        chunk = max(1, min(16, int(0.3 * free_memory_bytes(dev0)) // per))
    n_workers = 1
    if cpu:
        # CPU: independent worker threads with single-threaded torch ops (no intra-op
        # synchronisation per operation), partial states merged exactly at the end
        n_workers = compute.num_threads or max(1, torch.get_num_threads())
    workers: list[torch.device] = []
    for d in devices:
        workers += [d] * (n_workers if d.type == "cpu" else 1)
    fixed = _chunk_bytes((h_img, w_img), n_def, chunk) * len(workers)
    per_orient = _bytes_per_orientation((h_img, w_img), tpl.padded_size, n_def, chunk)
    if compute.orientation_batch_size:
        batch = compute.orientation_batch_size
    else:
        batch = plan_batch_size(
            per_orient, device=dev0, fixed_bytes=fixed, fraction=0.4, max_batch=256, min_batch=1
        )
    if cpu:
        batch = max(chunk, min(batch, 64))
    batch = max(1, min(batch, n_orient))
    chunk = min(chunk, batch)

    plan = SearchPlan(
        spectrum=spectrum,
        image_shape=(h_img, w_img),
        template=tpl,
        filters=filters,
        noise_weights=noise_weights,
        angles=angles,
        n_defocus=n_def,
        valid_shape=valid_shape,
        placement=compute.ctf_placement,
        chunk=chunk,
        device=dev0,
        extras=extras,
    )
    t_prep = time.perf_counter()

    bounds = [(s, min(s + batch, n_orient)) for s in range(0, n_orient, batch)]
    states = _run_workers(plan, workers, bounds, n_def, progress)
    state = states[0]
    for other in states[1:]:
        state.merge(other)
    state.flush()
    t_search = time.perf_counter()

    result = _finish(
        state,
        angles=angles,
        defocus=defocus,
        n_orient=n_orient,
        optics=optics,
        pixel_size=pixel_size,
        box=box,
        valid_crop=valid_crop,
        image_shape=(h_img, w_img),
    )
    result.metadata.update(
        {
            "resolution_limit": resolution_limit,
            "scale_to_input": scale,
            "input_pixel_size": float(optics.pixel_size),
            "orientation_batch_size": batch,
            "chunk_orientations": chunk,
            "workers": [str(w) for w in workers],
            "ctf_placement": compute.ctf_placement,
            "template_oversampling": compute.template_oversampling,
            "config": config
            if config is not None
            else {
                "optics_group": optics.model_dump(mode="json"),
                "defocus_search_config": defocus_search.model_dump(mode="json"),
                "orientation_search_config": orientation_search.model_dump(mode="json")
                if orientations is None
                else {"explicit_orientations": n_orient},
                "preprocessing_filters": preprocessing.model_dump(mode="json"),
                "computational_config": compute.model_dump(mode="json"),
                "valid_crop": valid_crop,
            },
        }
    )
    n_ccg = n_orient * n_def
    t_end = time.perf_counter()
    result.metadata["timings"] = {
        "preprocess_s": t_prep - t_start,
        "search_s": t_search - t_prep,
        "total_s": t_end - t_start,
        "ccg_per_s": n_ccg / max(t_search - t_prep, 1e-9),
    }
    return result


def _run_workers(
    plan: SearchPlan,
    workers: list[torch.device],
    bounds: list[tuple[int, int]],
    n_def: int,
    progress: bool | None,
) -> list[_FusedState]:
    """Run the batches on the workers (threads; dynamic queue) and return their states."""
    n_items = sum(b - a for a, b in bounds) * n_def
    if len(workers) == 1:
        state = _FusedState(plan.image_shape, plan.valid_shape, plan.device)
        per_batch = (bounds[0][1] - bounds[0][0]) * n_def
        for a, b in track(
            bounds,
            total=n_items,
            description="match2d search",
            unit="CCG",
            scale=per_batch,
            enabled=progress,
        ):
            _correlate_batch(plan, state, a, b)
            state.flush()
        return [state]

    work: queue.Queue[tuple[int, int] | None] = queue.Queue()
    for bd in bounds:
        work.put(bd)
    for _ in workers:
        work.put(None)
    done: queue.Queue[tuple[int, BaseException | None]] = queue.Queue()
    plans = {d: plan.to(d) for d in set(workers)}
    states = [_FusedState(plan.image_shape, plan.valid_shape, d) for d in workers]
    cpu_workers = sum(1 for d in workers if d.type == "cpu")
    old_threads = torch.get_num_threads()
    if cpu_workers > 1:
        torch.set_num_threads(1)

    def loop(i: int) -> None:
        dev = workers[i]
        p = plans[dev]
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        try:
            while True:
                bd = work.get()
                if bd is None:
                    break
                _correlate_batch(p, states[i], *bd)
                states[i].flush()
                done.put(((bd[1] - bd[0]) * n_def, None))
        except BaseException as exc:  # pragma: no cover - reported below
            done.put((0, exc))

    threads = [threading.Thread(target=loop, args=(i,), daemon=True) for i in range(len(workers))]
    try:
        for t in threads:
            t.start()

        def events():
            remaining = len(bounds)
            while remaining:
                n, exc = done.get()
                if exc is not None:
                    raise exc
                remaining -= 1
                yield n

        per_batch = (bounds[0][1] - bounds[0][0]) * n_def
        for _ in track(
            events(),
            total=n_items,
            description="match2d search",
            unit="CCG",
            scale=per_batch,
            enabled=progress,
        ):
            pass
        for t in threads:
            t.join()
    finally:
        if cpu_workers > 1:
            torch.set_num_threads(old_threads)
    return states


def _finish(
    state: _FusedState,
    *,
    angles: torch.Tensor,
    defocus: torch.Tensor,
    n_orient: int,
    optics: OpticsGroup,
    pixel_size: float,
    box: int,
    valid_crop: bool,
    image_shape: tuple[int, int],
) -> MatchTemplateResult:
    """Decode the winning indices and build the result maps (float32, CPU)."""
    n_def = int(defocus.numel())
    mip = state.mip.cpu()
    idx = state.index.cpu().clamp_min(0)
    o = idx // n_def
    d = idx % n_def
    ang = angles.cpu().to(torch.float32)
    mean = state.moments.mean.cpu()
    var = state.moments.variance.cpu()
    std = var.sqrt()
    z = torch.where(std > 0, (mip.double() - mean) / std.clamp_min(1e-300), torch.zeros_like(mean))
    maps = {
        "mip": mip.to(torch.float32),
        "scaled_mip": z.to(torch.float32),
        "correlation_mean": mean.to(torch.float32),
        "correlation_variance": var.to(torch.float32),
        "correlation_std": std.to(torch.float32),
        "phi": ang[o, 0],
        "theta": ang[o, 1],
        "psi": ang[o, 2],
        "relative_defocus": defocus.to(torch.float32)[d],
    }
    meta = {
        "total_orientations": n_orient,
        "total_defocus": n_def,
        "total_projections": n_orient * n_def,
        "total_correlations": n_orient * n_def,
        "defocus_values": [float(v) for v in defocus],
        "pixel_size": pixel_size,
        "template_box": box,
        "valid_crop": valid_crop,
        "image_shape": list(image_shape),
        "map_shape": list(mip.shape),
        "position_convention": "map pixel (i, j) = top-left corner of the template box; "
        "particle centre = (i, j) + box // 2",
        "mean_defocus": optics.mean_defocus,
        "optics_group": optics.model_dump(mode="json"),
    }
    return MatchTemplateResult(maps=maps, metadata=meta)

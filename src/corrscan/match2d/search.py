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

Structure: :func:`match_template` = :func:`prepare_search` (checks, cropping, whitening,
filters, batch planning) + :func:`search_chunk` over all orientations + :func:`finish`. The
distributed driver runs the same three functions on orientation ranges and merges the partial
states with :func:`merge_states` (exact), so a chunked search equals the one-shot search bit
for bit with the same orientation batch size. On the CPU the preparation and the workers run
torch single-threaded (:func:`corrscan.core.threads.torch_threads`), so the bits do not depend
on thread or worker counts either.

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
from corrscan.core.stats import MaxAccumulator, MomentAccumulator
from corrscan.core.threads import torch_threads
from corrscan.errors import InputError
from corrscan.match2d import kernels
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

__all__ = [
    "STATE_FORMAT",
    "PreparedSearch",
    "SearchPlan",
    "empty_state",
    "finish",
    "match_template",
    "merge_states",
    "orientation_chunks",
    "prepare_search",
    "search_chunk",
    "template_filters",
]

STATE_FORMAT = "corrscan.match2d.partial/2"


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
    valid-region :class:`~corrscan.core.stats.MaxAccumulator` (payload ``index``, the global
    item; ties keep the smaller index) and the batch sums; :meth:`flush` moves the batch sums
    of the valid region into the exact :class:`MomentAccumulator`.
    """

    def __init__(
        self, image_shape: tuple[int, int], valid_shape: tuple[int, int], device: torch.device
    ) -> None:
        self.image_shape = image_shape
        self.shape = valid_shape
        self.device = device
        n_pix = image_shape[0] * image_shape[1]
        self.best = MaxAccumulator(valid_shape, ("index",), device=device)
        # winning item of the chunk; only read where the chunk reaches the stored maximum
        self._arg_buf = torch.zeros(valid_shape, dtype=torch.int64, device=device)
        # flat index in the full map of each valid-region pixel (None: the same grid)
        self._pix = None
        if valid_shape != image_shape:
            iy = torch.arange(valid_shape[0], device=device)[:, None] * image_shape[1]
            self._pix = (iy + torch.arange(valid_shape[1], device=device)).reshape(-1)
        self.s1 = torch.zeros(1, n_pix, device=device)
        self.s2 = torch.zeros(1, n_pix, device=device)
        self._ones = torch.ones(1, 1, device=device)
        self.pending = 0
        self.moments = MomentAccumulator(valid_shape, device=device)
        self._sync_free = device.type == "cuda"
        # CPU: one compiled pass per chunk (numba) instead of ~6 torch passes
        self._compiled = device.type == "cpu" and kernels.AVAILABLE
        self._spec_buf = torch.empty(0, dtype=torch.complex64, device=device)

    def spectrum_buffer(self, shape: tuple[int, ...]) -> torch.Tensor:
        """A reused complex64 work buffer of ``shape`` (contiguous view of storage kept by
        the worker, grown on demand)."""
        n = math.prod(shape)
        if self._spec_buf.numel() < n:
            self._spec_buf = torch.empty(n, dtype=torch.complex64, device=self.device)
        return self._spec_buf[:n].view(shape)

    def update(
        self,
        maps: torch.Tensor,
        item_index: torch.Tensor,
        scale: torch.Tensor | None = None,
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
        if self.compiled and maps.is_contiguous():
            self.update_maps(list(maps.unbind(0)), item_index, scale)
            return
        flat = maps.view(n, h * w)
        if scale is not None:
            flat.mul_(scale[:, None])
        if self._ones.shape[1] != n:
            self._ones = torch.ones(1, n, device=self.device)
        # maximum over the chunk of the valid region only (contiguous `(hv, wv)`)
        m = maps[:, :hv, :wv].amax(0) if (hv, wv) != (h, w) else flat.amax(0).view(h, w)
        cand = None
        if self._sync_free:
            # GPUs: no host synchronisation and no reordering copy of the chunk; exact ties
            # between defocus planes inside one chunk keep the earlier plane
            arg = flat.argmax(0).view(h, w)[:hv, :wv]
            self._arg_buf = item_index[arg]
        else:
            # the winning item is only needed where the chunk reaches the stored maximum
            # (ties included): the smallest global index among the maps equal to the chunk
            # maximum (a vectorised min over items; no argmax along the strided item axis and
            # no reordering copy of the chunk)
            cand = (m >= self.best.max).view(-1).nonzero().squeeze(1)
            if cand.numel() * 3 > m.numel():  # dense (the first chunks): every pixel
                self._arg_buf.copy_(_first_item(maps[:, :hv, :wv], m, item_index))
            elif cand.numel():
                pix = cand if self._pix is None else self._pix[cand]
                best_c = m.view(-1).index_select(0, cand)
                self._arg_buf.view(-1)[cand] = _first_item(
                    flat.index_select(1, pix), best_c, item_index
                )
        self.best.update_reduced(m, {"index": self._arg_buf}, candidates=cand)
        self.s1.addmm_(self._ones, flat)
        flat.square_()
        self.s2.addmm_(self._ones, flat)
        self.pending += int(n)

    @property
    def compiled(self) -> bool:
        """Whether updates run the compiled CPU kernel (:meth:`update_maps` available)."""
        return self._compiled and self.best.max.dtype == torch.float32

    def update_maps(
        self, maps: list[torch.Tensor], item_index: torch.Tensor, scale: torch.Tensor | None
    ) -> None:
        """CPU (:attr:`compiled`): :meth:`update` in one compiled pass over separate `(H, W)`
        contiguous float32 maps (not modified), folded straight into the accumulator (see
        :mod:`corrscan.match2d.kernels`); ``item_index`` and ``scale`` `(n,)` as there."""
        n = len(maps)
        sc = torch.ones(n) if scale is None else scale.to(torch.float32).contiguous()
        mip, pl = self.best.fused_buffers({"index": torch.int64})
        kernels.chunk_reduce(
            [m.numpy() for m in maps], sc.numpy(),
            item_index.to(torch.int64).contiguous().numpy(),
            self.s1.view(-1).numpy(), self.s2.view(-1).numpy(), mip.numpy(), pl["index"].numpy(),
        )  # fmt: skip
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

    def state(self) -> dict[str, Any]:
        """Plain-data partial state on the CPU (see :func:`search_chunk`)."""
        self.flush()
        return {
            "format": STATE_FORMAT,
            "max": self.best.state_dict(),
            "moments": self.moments.state_dict(),
        }


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
    if plan.placement == "micrograph" and state.compiled:
        proj = subtract_edge_mean(slices_to_images(plan.template, slices))  # (B, h, h)
        filters = plan.filters
        for c0 in range(0, stop - start, plan.chunk):
            c1 = min(c0 + plan.chunk, stop - start)
            pc = proj[c0:c1]
            # zero-padded forward FFT (MKL's padded rfft2: a pruned row/column pair through torch
            # was slower at 336², 512², 4096² and mixed at 1024²)
            pft = torch.fft.rfft2(pc, s=(h_img, w_img))
            var = _noise_variance(plan, pc, pft)  # (n_def, c)
            inv = torch.rsqrt(var.clamp_min(1e-30)).T.reshape(-1)  # orientation-major
            pft = pft.conj_physical()
            # one inverse FFT per correlation: a single spectrum and its map stay in L2
            # (batched CPU irfft2s beyond the L2 ran 2-2.7x slower per map at 336²-1024²)
            spec = state.spectrum_buffer(pft.shape[-2:])
            maps = []
            for o in range(c1 - c0):
                for d in range(n_def):
                    torch.mul(filters[d], pft[o], out=spec)
                    maps.append(torch.fft.irfft2(spec, s=(h_img, w_img)))
            o_idx = torch.arange(start + c0, start + c1, dtype=torch.int64)
            item = (o_idx[:, None] * n_def + d_idx.cpu()[None, :]).reshape(-1)
            state.update_maps(maps, item, inv)
    elif plan.placement == "micrograph":
        proj = subtract_edge_mean(slices_to_images(plan.template, slices))  # (B, h, h)
        for c0 in range(0, stop - start, plan.chunk):
            c1 = min(c0 + plan.chunk, stop - start)
            pc = proj[c0:c1]
            # zero-padded forward FFT, pruned: x-transform of the D non-zero rows only
            pft = torch.fft.fft(torch.fft.rfft(pc, n=w_img, dim=-1), n=h_img, dim=-2)
            # the transform along dim -2 returns column-major planes: the products below
            # read them row by row (several times faster from a row-major copy)
            pft = pft.contiguous()
            var = _noise_variance(plan, pc, pft)  # (n_def, c)
            inv = torch.rsqrt(var.clamp_min(1e-30))
            # a per-worker buffer: a fresh multi-MB tensor would be page-faulted at every step
            spec = state.spectrum_buffer((n_def, c1 - c0, *pft.shape[-2:]))
            torch.mul(plan.filters[:, None], pft.conj()[None], out=spec)  # (n_def, c, H, Wr)
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
            state.update(cc.view(-1, h_img, w_img), item, None)


def _first_item(values: torch.Tensor, best: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
    """Per pixel, the smallest of ``items`` `(n,)` (int64) whose value in ``values``
    `(n, *shape)` equals ``best`` `(*shape)` (the first maximum in ascending global index);
    int64 `(*shape)`.

    The minimum runs in int32 when the items fit (CPU reductions over the leading axis are
    vectorised for int32, about 50x slower for int64)."""
    small = items.numel() == 0 or int(items.max()) < torch.iinfo(torch.int32).max
    it = items.to(torch.int32) if small else items
    hit = values == best.unsqueeze(0)
    pick = torch.where(hit, it.view((-1,) + (1,) * best.ndim), torch.iinfo(it.dtype).max)
    return pick.amin(0).to(torch.int64)


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


@dataclass
class PreparedSearch:
    """A prepared 2D search: everything :func:`search_chunk` and :func:`finish` need.

    Attributes
    ----------
    plan
        Precomputed inputs (whitened spectrum, filters, prepared template, angles).
    batch
        Orientations per batch: the unit of the float32 batch sums, so chunks start at
        multiples of it (:func:`orientation_chunks`).
    workers
        Devices of the in-process workers (one entry per CPU worker thread or GPU).
    n_orient, n_defocus
        Sizes of the search space; ``angles`` `(n_orient, 3)` float64 degrees, ``defocus``
        `(n_defocus,)` Å offsets.
    meta
        Values for the result metadata (pixel size scale, batch, chunk, ...).
    """

    plan: SearchPlan
    batch: int
    workers: list[torch.device]
    n_orient: int
    n_defocus: int
    angles: torch.Tensor
    defocus: torch.Tensor
    optics: OpticsGroup
    pixel_size: float
    box: int
    valid_crop: bool
    image_shape: tuple[int, int]
    meta: dict[str, Any] = field(default_factory=dict)
    configs: dict[str, Any] = field(default_factory=dict)

    @property
    def n_correlations(self) -> int:
        """Number of correlation maps of the whole search."""
        return self.n_orient * self.n_defocus


def prepare_search(
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
) -> PreparedSearch:
    """Check the inputs and precompute everything the search needs (the first step of
    :func:`match_template`; same arguments, see there).

    Returns a :class:`PreparedSearch`; run orientation ranges with :func:`search_chunk`,
    merge their states with :func:`merge_states` and build the result with :func:`finish`.
    The orientation batch is ``compute.orientation_batch_size`` when given, else planned from
    free memory (and the number of workers): pass it explicitly to get the same batches, hence
    the same bits, in another process.
    """
    optics = _as_model(optics, OpticsGroup, "optics")
    defocus_search = _as_model(defocus_search, DefocusSearchConfig, "defocus_search")
    orientation_search = _as_model(
        orientation_search, OrientationSearchConfig, "orientation_search"
    )
    preprocessing = _as_model(preprocessing, PreprocessingFilters, "preprocessing")
    compute = _as_model(compute, ComputeConfig, "compute")

    devices = [resolve_device(d) for d in compute.devices()]
    # the preparation's FFTs and GEMMs round differently with other thread counts: on the
    # CPU they run single-threaded like the search, so every process gets the same bits
    caller_threads = torch.get_num_threads()  # default number of CPU worker threads
    with torch_threads(1 if devices[0].type == "cpu" else None):
        return _prepare(
            micrograph, template, caller_threads=caller_threads, optics=optics,
            defocus_search=defocus_search,
            orientation_search=orientation_search, orientations=orientations,
            preprocessing=preprocessing, compute=compute, devices=devices,
            valid_crop=valid_crop, resolution_limit=resolution_limit,
        )  # fmt: skip


def _prepare(
    micrograph: Any,
    template: Any,
    *,
    optics: OpticsGroup,
    defocus_search: DefocusSearchConfig,
    orientation_search: OrientationSearchConfig,
    orientations: Any,
    preprocessing: PreprocessingFilters,
    compute: ComputeConfig,
    devices: list[torch.device],
    caller_threads: int,
    valid_crop: bool,
    resolution_limit: float | None,
) -> PreparedSearch:
    """Body of :func:`prepare_search` (validated config models; thread count fixed)."""
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
            raise InputError("orientations is empty: give at least one (phi, theta, psi) row")
    else:
        step_scale = 1.0
        if resolution_limit is not None and orientation_search.match_resolution_limit:
            step_scale = resolution_limit / (2 * float(optics.pixel_size))
        angles = orientation_search.angles(step_scale).to(torch.float64)
        if angles.shape[0] == 0:
            raise InputError(
                "orientation_search gives no orientations: widen the angle ranges or the steps"
            )
    defocus = defocus_search.values()
    n_def = int(defocus.numel())
    n_orient = int(angles.shape[0])
    if n_def == 0:
        raise InputError("defocus_search gives no defocus values: check defocus_min/max/step")

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
    elif cpu and kernels.AVAILABLE:
        # compiled update: one kernel call per chunk (up to kernels.GROUP maps in one pass
        # amortise the per-pixel state traffic); the chunk's maps take <= ~32 MB
        chunk = max(1, min(kernels.GROUP // n_def, (32 << 20) // (4 * h_img * w_img * n_def)))
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
        n_workers = compute.num_threads or max(1, caller_threads)
    workers: list[torch.device] = []
    for d in devices:
        workers += [d] * (n_workers if d.type == "cpu" else 1)
    fixed = _chunk_bytes((h_img, w_img), n_def, chunk) * len(workers)
    per_orient = _bytes_per_orientation((h_img, w_img), tpl.padded_size, n_def, chunk)
    if compute.orientation_batch_size:
        batch = compute.orientation_batch_size  # an explicit batch is kept (chunk <= batch)
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
    meta = {
        "resolution_limit": resolution_limit,
        "scale_to_input": scale,
        "angular_step_scale": 1.0 if orientations is not None else step_scale,
        "input_pixel_size": float(optics.pixel_size),
        "orientation_batch_size": batch,
        "chunk_orientations": chunk,
        # maps per inverse FFT call (the compiled CPU path transforms one map at a time)
        "inverse_fft_batch": 1
        if cpu and kernels.AVAILABLE and compute.ctf_placement == "micrograph"
        else chunk * n_def,
        "workers": [str(w) for w in workers],
        "ctf_placement": compute.ctf_placement,
        "template_oversampling": compute.template_oversampling,
    }
    configs = {
        "optics_group": optics.model_dump(mode="json"),
        "defocus_search_config": defocus_search.model_dump(mode="json"),
        "orientation_search_config": orientation_search.model_dump(mode="json")
        if orientations is None
        else {"explicit_orientations": n_orient},
        "preprocessing_filters": preprocessing.model_dump(mode="json"),
        "computational_config": compute.model_dump(mode="json"),
        "valid_crop": valid_crop,
    }
    return PreparedSearch(
        plan=plan,
        batch=batch,
        workers=workers,
        n_orient=n_orient,
        n_defocus=n_def,
        angles=angles,
        defocus=defocus,
        optics=optics,
        pixel_size=pixel_size,
        box=box,
        valid_crop=valid_crop,
        image_shape=(h_img, w_img),
        meta=meta,
        configs=configs,
    )


def orientation_chunks(
    n_orient: int, batch: int, chunk_size: int | None = None, n_chunks: int | None = None
) -> list[tuple[int, int]]:
    """Orientation index ranges ``[(start, stop), ...]`` aligned to ``batch``.

    ``chunk_size`` (orientations per chunk) is rounded up to a multiple of ``batch``; with
    ``n_chunks`` instead, the chunk size is ``ceil(n_orient / n_chunks)`` rounded the same way
    (so there may be fewer chunks). Default: one batch per chunk.
    """
    if n_orient < 1:
        raise InputError("the orientation search space is empty: nothing to search")
    if batch < 1:
        raise InputError(f"batch must be >= 1, got {batch}")
    if chunk_size is not None and n_chunks is not None:
        raise InputError("give chunk_size or n_chunks, not both")
    if n_chunks is not None:
        if n_chunks < 1:
            raise InputError(f"n_chunks must be >= 1, got {n_chunks}")
        chunk_size = math.ceil(n_orient / n_chunks)
    size = batch if chunk_size is None else int(chunk_size)
    if size < 1:
        raise InputError(f"chunk_size must be >= 1, got {chunk_size}")
    size = math.ceil(size / batch) * batch
    return [(s, min(s + size, n_orient)) for s in range(0, n_orient, size)]


def search_chunk(
    prepared: PreparedSearch, start: int, stop: int, *, progress: bool | None = False
) -> dict[str, Any]:
    """Search orientations ``[start, stop)`` x every defocus; return the partial state.

    The batches of the range run on the prepared workers (CPU worker threads with
    single-threaded torch ops, or GPUs), each worker folding into its own state, and the
    workers' states are merged exactly. ``start`` must be a multiple of ``prepared.batch``
    (:func:`orientation_chunks`): the range then runs exactly the batches of the one-shot
    search, and the batch sums fold into the exact moment accumulator once per batch, so the
    merged states of any split equal the one-shot state bit for bit, whatever the number of
    workers or processes (on the CPU every worker runs torch single-threaded).

    Returns
    -------
    dict
        ``{"format", "max": MaxAccumulator state (MIP and payload ``index`` = global item
        ``orientation * n_defocus + defocus``), "moments": MomentAccumulator state}``, on
        the CPU.
    """
    if not (0 <= start < stop <= prepared.n_orient):
        raise InputError(f"orientation range [{start}, {stop}) outside [0, {prepared.n_orient})")
    if start % prepared.batch:
        raise InputError(
            f"chunk start {start} is not a multiple of the batch size {prepared.batch}: use "
            "orientation_chunks() so that chunks run exactly the one-shot batches"
        )
    bounds = [(a, min(a + prepared.batch, stop)) for a in range(start, stop, prepared.batch)]
    cpu = any(d.type == "cpu" for d in prepared.workers)
    with torch_threads(1 if cpu else None):  # small ops: no intra-op threads (see threads)
        states = _run_workers(prepared, bounds, progress)
        merged = states[0].state()
        for other in states[1:]:
            merged = merge_states(merged, other.state())
    return merged


def empty_state(prepared: PreparedSearch) -> dict[str, Any]:
    """State of a search that has seen nothing yet (neutral element of :func:`merge_states`)."""
    return _FusedState(prepared.image_shape, prepared.plan.valid_shape, torch.device("cpu")).state()


def _check_state(state: Any) -> None:
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise InputError(
            "not a match2d partial state (format mismatch): it must come from search_chunk"
        )


def merge_states(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Exact merge of two partial states (new dict; inputs are not modified).

    The maximum keeps the smaller global index on ties (so the order of merges does not
    matter); moments add exactly (:meth:`MomentAccumulator.merge`).
    """
    _check_state(a)
    _check_state(b)
    ma = MaxAccumulator.from_state_dict(a["max"], device="cpu")
    mb = MaxAccumulator.from_state_dict(b["max"], device="cpu")
    if ma.shape != mb.shape:
        raise InputError(f"cannot merge match2d states of shapes {ma.shape} and {mb.shape}")
    mo = MomentAccumulator.from_state_dict(a["moments"], device="cpu")
    mo.merge(MomentAccumulator.from_state_dict(b["moments"], device="cpu"))
    return {"format": STATE_FORMAT, "max": ma.merge(mb).state_dict(), "moments": mo.state_dict()}


def finish(prepared: PreparedSearch, state: dict[str, Any]) -> MatchTemplateResult:
    """Decode a complete merged state (every orientation searched once) into the result maps
    (float32, CPU) with totals and the preparation's metadata."""
    _check_state(state)
    best = MaxAccumulator.from_state_dict(state["max"], device="cpu")
    moments = MomentAccumulator.from_state_dict(state["moments"], device="cpu")
    if moments.count != prepared.n_correlations:
        raise InputError(
            f"the merged state covers {moments.count} of {prepared.n_correlations} "
            "correlations: some chunks are missing"
        )
    defocus = prepared.defocus
    n_def = prepared.n_defocus
    mip = best.max
    idx = best.payloads["index"]
    o = idx // n_def
    d = idx % n_def
    ang = prepared.angles.cpu().to(torch.float32)
    mean = moments.mean.cpu()
    var = moments.variance.cpu()
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
    optics = prepared.optics
    meta = {
        "total_orientations": prepared.n_orient,
        "total_defocus": n_def,
        "total_projections": prepared.n_correlations,
        "total_correlations": prepared.n_correlations,
        "defocus_values": [float(v) for v in defocus],
        "pixel_size": prepared.pixel_size,
        "template_box": prepared.box,
        "valid_crop": prepared.valid_crop,
        "image_shape": list(prepared.image_shape),
        "map_shape": list(mip.shape),
        "position_convention": "map pixel (i, j) = top-left corner of the template box; "
        "particle centre = (i, j) + box // 2",
        "mean_defocus": optics.mean_defocus,
        "optics_group": optics.model_dump(mode="json"),
    }
    meta.update(prepared.meta)
    return MatchTemplateResult(maps=maps, metadata=meta)


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

    ``prepare_search`` + ``search_chunk`` over all orientations + ``finish``.

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
    prepared = prepare_search(
        micrograph, template, optics=optics, defocus_search=defocus_search,
        orientation_search=orientation_search, orientations=orientations,
        preprocessing=preprocessing, compute=compute, valid_crop=valid_crop,
        resolution_limit=resolution_limit,
    )  # fmt: skip
    t_prep = time.perf_counter()
    state = search_chunk(prepared, 0, prepared.n_orient, progress=progress)
    t_search = time.perf_counter()
    result = finish(prepared, state)
    result.metadata["config"] = config if config is not None else prepared.configs
    t_end = time.perf_counter()
    result.metadata["timings"] = {
        "preprocess_s": t_prep - t_start,
        "search_s": t_search - t_prep,
        "total_s": t_end - t_start,
        "ccg_per_s": prepared.n_correlations / max(t_search - t_prep, 1e-9),
    }
    return result


def _run_workers(
    prepared: PreparedSearch, bounds: list[tuple[int, int]], progress: bool | None
) -> list[_FusedState]:
    """Run the batches on the workers and return their states (flushed after every batch).

    One worker: in this thread. Several: threads pulling batches from a queue. On the CPU the
    torch ops run single-threaded (:func:`corrscan.core.threads.torch_threads`) in any case,
    so the bits do not depend on the number of workers or on the caller's thread count.
    """
    plan = prepared.plan
    n_def = prepared.n_defocus
    workers = prepared.workers[: max(1, len(bounds))]
    n_items = sum(b - a for a, b in bounds) * n_def
    any_cpu = any(d.type == "cpu" for d in workers)
    bar = dict(
        total=n_items, description="match2d search", unit="CCG", enabled=progress,
        advance=lambda n: n,
    )  # fmt: skip
    with torch_threads(1 if any_cpu else None):
        if len(workers) == 1:
            dev = workers[0]
            p = plan.to(dev)
            state = _FusedState(plan.image_shape, plan.valid_shape, dev)

            def batches():
                for a, b in bounds:
                    _correlate_batch(p, state, a, b)
                    state.flush()
                    yield (b - a) * n_def

            for _ in track(batches(), **bar):
                pass
            return [state]

        work: queue.Queue[tuple[int, int] | None] = queue.Queue()
        for bd in bounds:
            work.put(bd)
        for _ in workers:
            work.put(None)
        done: queue.Queue[tuple[int, BaseException | None]] = queue.Queue()
        plans = {d: plan.to(d) for d in set(workers)}
        states = [_FusedState(plan.image_shape, plan.valid_shape, d) for d in workers]
        stop = threading.Event()

        def loop(i: int) -> None:
            dev = workers[i]
            p = plans[dev]
            if dev.type == "cuda":
                torch.cuda.set_device(dev)
            try:
                while not stop.is_set():
                    bd = work.get()
                    if bd is None:
                        break
                    _correlate_batch(p, states[i], *bd)
                    states[i].flush()
                    done.put(((bd[1] - bd[0]) * n_def, None))
            except BaseException as exc:  # reported by the main thread
                done.put((0, exc))

        threads = [
            threading.Thread(target=loop, args=(i,), daemon=True) for i in range(len(workers))
        ]
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

        try:
            for _ in track(events(), **bar):
                pass
        finally:
            stop.set()
            for t in threads:
                t.join()
        return states

"""Cross-correlation of images with templates over displacements and in-plane rotations, and
the marginal (BioEM-form) likelihoods. CPU or GPU, batched, no Python loops over images,
templates, displacements or rotations.

Image model (per image ``m``, template ``s``, displacement ``d``, in-plane rotation ``ψ``)::

    I_m(k) ≈ α · CTF_m(k) · exp(-2πi k·d) · T_s(Rz(ψ) k) + β · 𝟙̂(k) + noise

``k`` in cycles/pixel, ``d = (x, y)`` the **image-frame** shift of the rotated template (pixels
internally, Å at the interface; +x towards higher column index), ``Rz(ψ)`` the active rotation
by ``ψ`` from +x towards +y, so that together with the template's ``(phi, theta)`` the pose is
the core/RELION Euler triple ``(phi, theta, psi = ψ)`` (core convention: the projection of the
map sampled at ``R r``). ``𝟙̂`` is the transform of the all-ones box (the offset term).

Inner products are polar-grid quadratures ``⟨a, b⟩ = Σ_{n,j} ω_n conj(a) b`` (real for the
Hermitian data of real images). With ``x = CTF · shift_d · rot_ψ T`` and ``s = 𝟙̂``:

* ``I_xy = ⟨I, x⟩``, ``I_xx = ⟨x, x⟩``, ``I_yy = ⟨I, I⟩``, ``I_sx = ⟨s, x⟩``, ``I_sy = ⟨s, I⟩``,
  ``I_ss = ⟨s, s⟩``.
* ``CC = I_xy / sqrt(I_xx · I_yy)`` (normalised cross-correlation with the CTF-filtered template;
  templates keep their DC, so a noise-free image scores ``sqrt(1 − I_sx²/(I_ss I_xx))`` at its
  true pose, just below 1; the offset is projected out exactly only in the likelihood).
* log-likelihood with ``α, β`` flat on ℝ and ``λ²`` (noise variance) flat on ℝ⁺::

      A = I_xx I_ss − I_sx²,   B = I_xy I_ss − I_sx I_sy,   D = I_yy I_ss − I_sy² − B²/A
      log L = −p ln D − ½ ln A + p ln(2 I_ss) + ln Γ(p) + (1 − N/2) ln 2π − 2p ln c,
      p = N/2 − 2,   N = number of real-space pixels,   c = the image's stored norm.

  (``D / I_ss`` is the least-squares residual ``min_{α,β} ‖I − αx − βs‖²``; all terms are exact,
  including ``I_sx`` for every displacement and rotation; constants that depend only on the
  grid are dropped.)

Algorithm: per shell, the angular DFT turns the correlation over all ``W`` rotations into a
product per angular mode ``q``; only ``q = 0 … W/2`` are computed (the result is real) and the
shell sum is a batched complex GEMM ``[q, (image, displacement), shell] × [q, shell, template]``
followed by one inverse real FFT of length ``W``. ``I_xx`` (which does not depend on ``d``) is the
angular correlation of ``|T|²`` with ``|CTF|²``; both are π-periodic, so it uses ``W/4 + 1``
modes and one GEMM per (image, template) pair, never a per-pair ``[shell, mode]`` tensor.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch

from corrscan.core.arrays import DeviceLike, free_memory_bytes, resolve_device
from corrscan.errors import InputError
from corrscan.likelihood.ctf import ctf_polar
from corrscan.likelihood.grid import PolarGrid
from corrscan.likelihood.stacks import PolarImages, PolarTemplates
from corrscan.likelihood.transform import box_mask_polar

__all__ = [
    "Level",
    "OptimalPose",
    "SearchResult",
    "log_likelihood_constant",
    "log_likelihood_from_inner_products",
    "pose_inner_products",
    "search",
]

Level = Literal["full", "displacement", "rotation", "displacement_rotation", "pose"]
_LEVELS = ("full", "displacement", "rotation", "displacement_rotation", "pose")

# log-sum-exp floor: exp(-87) ~ 1.6e-38 is the smallest normal float32 (exp(-700) for float64)
_EXP_FLOOR = {torch.float32: -87.0, torch.float64: -700.0}

_OOM = getattr(torch, "OutOfMemoryError", None) or getattr(
    torch.cuda, "OutOfMemoryError", MemoryError
)


# ----------------------------------------------------------------------------- likelihood math
def log_likelihood_constant(n_pixels_real: int, iss: float) -> float:
    """Pose-independent part ``p ln(2 I_ss) + ln Γ(p) + (1 − N/2) ln 2π`` (see module doc)."""
    n = float(n_pixels_real)
    p = n / 2.0 - 2.0
    if p <= 0:
        raise InputError(f"the likelihood needs more than 4 pixels, got {n_pixels_real}")
    return p * math.log(2.0 * iss) + math.lgamma(p) + (1.0 - n / 2.0) * math.log(2.0 * math.pi)


def log_likelihood_from_inner_products(
    ixy: torch.Tensor,
    ixx: torch.Tensor,
    isx: torch.Tensor,
    iyy: torch.Tensor,
    isy: torch.Tensor,
    iss: float,
    n_pixels_real: int,
    *,
    include_constant: bool = True,
) -> torch.Tensor:
    """Marginal log-likelihood of the module docstring from broadcastable inner products.

    The image-norm term ``−2p ln c`` is *not* included (callers add it per image).
    """
    p = n_pixels_real / 2.0 - 2.0
    a = (ixx * iss - isx * isx).clamp_min(torch.finfo(ixx.dtype).tiny)
    b = ixy * iss - isx * isy
    d = (iyy * iss - isy * isy) - b * b / a
    d = d.clamp_min(torch.finfo(d.dtype).tiny)
    ll = -p * torch.log(d) - 0.5 * torch.log(a)
    if include_constant:
        ll = ll + log_likelihood_constant(n_pixels_real, iss)
    return ll


# ----------------------------------------------------------------------------- results
@dataclass
class OptimalPose:
    """Best pose per image (CryoLike's ``OptimalPoseReturn`` names), tensors `(M,)` on CPU.

    ``optimal_displacement_x_M/_y_M`` are image-frame shifts in Å (the rotated template is
    moved by them); ``optimal_displacement_template_x_M/_y_M`` the same shift in the template
    frame (CryoLike's frame: displace the template, then rotate); ``optimal_inplane_rotation_M``
    is ψ in degrees, [0, 360).
    """

    cross_correlation_M: torch.Tensor
    optimal_template_M: torch.Tensor
    optimal_displacement_x_M: torch.Tensor
    optimal_displacement_y_M: torch.Tensor
    optimal_inplane_rotation_M: torch.Tensor

    @property
    def optimal_displacement_template_x_M(self) -> torch.Tensor:
        return self._template_frame()[0]

    @property
    def optimal_displacement_template_y_M(self) -> torch.Tensor:
        return self._template_frame()[1]

    def _template_frame(self) -> tuple[torch.Tensor, torch.Tensor]:
        psi = torch.deg2rad(self.optimal_inplane_rotation_M.to(torch.float64))
        x = self.optimal_displacement_x_M.to(torch.float64)
        y = self.optimal_displacement_y_M.to(torch.float64)
        # d_template = Rz(psi) d_image
        return torch.cos(psi) * x - torch.sin(psi) * y, torch.sin(psi) * x + torch.cos(psi) * y


@dataclass
class SearchResult:
    """Output of :func:`search`. Shapes by ``level`` (M images, S templates, D displacements,
    W rotations); angles in degrees, displacements in Å (image frame).

    ===========================  ===========================  ====================================
    level                        ``cross_correlation``        pose fields
    ===========================  ===========================  ====================================
    ``full``                     `(M, S, D, W)`               —
    ``displacement``             `(M, S, W)` best over d      ``displacement_x/_y`` `(M, S, W)`
    ``rotation``                 `(M, S, D)` best over ψ      ``inplane_rotation`` `(M, S, D)`
    ``displacement_rotation``    `(M, S)` best over both      ``displacement_x/_y``, rotation
    ``pose``                     `(M,)` best over all         ``template`` + the above `(M,)`
    ===========================  ===========================  ====================================

    With ``likelihood=True``: ``log_likelihood_ms`` `(M, S)` = ``logsumexp_{d,ψ} log L − ln D −
    ln W`` (the image–template integrated likelihood), ``integrated_log_likelihood`` `(M,)` =
    ``logsumexp_s(log_likelihood_ms + ln(w_s / Σ w))``; ``log_likelihood_full`` `(M, S, D, W)`
    at level ``full``. ``log_likelihood_optimal`` `(M,)` is log L at the optimal pose (level
    ``pose``, when requested).
    """

    level: str
    cross_correlation: torch.Tensor
    displacements: np.ndarray
    rotations: np.ndarray
    template: torch.Tensor | None = None
    displacement_x: torch.Tensor | None = None
    displacement_y: torch.Tensor | None = None
    inplane_rotation: torch.Tensor | None = None
    log_likelihood_ms: torch.Tensor | None = None
    integrated_log_likelihood: torch.Tensor | None = None
    log_likelihood_full: torch.Tensor | None = None
    log_likelihood_optimal: torch.Tensor | None = None
    timings: dict = field(default_factory=dict)
    batch_sizes: dict = field(default_factory=dict)

    def optimal_pose(self) -> OptimalPose:
        if self.level != "pose":
            raise InputError(f"optimal_pose() needs level='pose', this result is {self.level!r}")
        return OptimalPose(
            self.cross_correlation,
            self.template,
            self.displacement_x,
            self.displacement_y,
            self.inplane_rotation,
        )


# ----------------------------------------------------------------------------- kernel pieces
@dataclass
class _Prepared:
    """Device tensors shared by all batches."""

    w_n: torch.Tensor  # (N,) point weights
    phases_c: torch.Tensor  # (D, N, W) exp(-2πi k·d) (conjugated image-side phase)
    s: torch.Tensor  # (N, W) box transform
    iss: float
    n_modes: int  # Q = W/2 + 1
    half: int  # H = W/2
    w: int


def _prepare(
    grid: PolarGrid, disp_px: np.ndarray, dev: torch.device, cdt: torch.dtype
) -> _Prepared:
    rdt = torch.float64 if cdt == torch.complex128 else torch.float32
    kx, ky = grid.points()
    ph = 2.0 * np.pi * (disp_px[:, 0, None, None] * kx[None] + disp_px[:, 1, None, None] * ky[None])
    phases = torch.from_numpy(np.exp(1j * ph)).to(device=dev, dtype=cdt)
    s = box_mask_polar(grid, dtype=torch.complex128, device=dev)
    w_n = torch.as_tensor(grid.point_weights, device=dev, dtype=torch.float64)
    iss = float((w_n[:, None] * s.abs() ** 2).sum())
    return _Prepared(
        w_n=w_n.to(rdt),
        phases_c=phases.conj().resolve_conj(),
        s=s.to(cdt),
        iss=iss,
        n_modes=grid.n_inplanes // 2 + 1,
        half=grid.n_inplanes // 2,
        w=grid.n_inplanes,
    )


def _template_side(t: torch.Tensor, pr: _Prepared) -> tuple[torch.Tensor, torch.Tensor]:
    """`(Sb, N, W)` -> ``Bt`` `(Q, N, Sb)` (ω-weighted angular DFT) and ``Bc`` `(P, N, Sb)`."""
    b = torch.fft.fft(t, dim=-1)[..., : pr.n_modes] * pr.w_n[:, None]
    bt = b.permute(2, 1, 0).contiguous()
    th = torch.view_as_real(t[..., : pr.half])
    t2 = th.square().sum(dim=-1)
    bc = torch.fft.rfft(t2, dim=-1) * (2.0 * pr.w_n)[:, None]
    return bt, bc.permute(2, 1, 0).contiguous()


def _image_side(
    img: torch.Tensor, ctf: torch.Tensor, pr: _Prepared, with_mask: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Image rows ``A`` `(Q, K·Mb·D, N)` (rows ordered (kind, image, displacement); kind 1 =
    the box mask scaled by ``1/sqrt(I_ss)``), ``Ac`` `(P, Mb, N)`, ``I_yy`` and
    ``u = I_sy / sqrt(I_ss)`` `(Mb,)`."""
    mb, n, w = img.shape
    d = pr.phases_c.shape[0]
    k = 2 if with_mask else 1
    # conj(Ã_q) = Σ_j conj(a_j) e^{+2πiqj/W}: an unnormalised inverse DFT of conj(a).
    buf = torch.empty((k, mb, d, n, w), dtype=img.dtype, device=img.device)
    torch.mul((ctf * img.conj())[:, None], pr.phases_c[None], out=buf[0])
    s_n = pr.s / math.sqrt(pr.iss)
    if with_mask:
        torch.mul((ctf * s_n.conj())[:, None], pr.phases_c[None], out=buf[1])
    rows = torch.fft.ifft(buf, dim=-1, norm="forward")[..., : pr.n_modes]
    del buf
    rows = _to_mode_major(rows.reshape(-1, n, pr.n_modes))  # (Q, K·Mb·D, N)
    c2 = ctf[..., : pr.half] ** 2
    ac = torch.fft.rfft(c2, dim=-1).conj().permute(2, 0, 1).contiguous()
    wn = pr.w_n[:, None]
    iyy = (wn * img.abs() ** 2).sum(dim=(-2, -1))
    u = (wn * (s_n.conj() * img).real).sum(dim=(-2, -1))
    return rows, ac, iyy, u


def _to_mode_major(x: torch.Tensor) -> torch.Tensor:
    """`(R, N, Q)` -> contiguous `(Q, R, N)`; complex64 moved as float64 words (faster copy)."""
    if x.dtype == torch.complex64 and x.is_contiguous():
        return x.view(torch.float64).permute(2, 0, 1).contiguous().view(torch.complex64)
    return x.permute(2, 0, 1).contiguous()


def _loglik(
    xy: torch.Tensor, xx: torch.Tensor, t: torch.Tensor, u: torch.Tensor, c: torch.Tensor, p: float
) -> torch.Tensor:
    """``−p ln D' − ½ ln A'`` with ``A' = xx − t²``, ``B' = xy − t u``, ``D' = c − B'²/A'``
    (``t = I_sx/√I_ss``, ``u = I_sy/√I_ss``, ``c = I_yy − u²``; broadcastable), written as
    ``−p ln(c A' − B'²) + (p − ½) ln A'``: two new tensors, few elementwise passes."""
    tiny = torch.finfo(xy.dtype).tiny
    b = torch.addcmul(xy, t, u, value=-1.0)
    a = torch.addcmul(xx, t, t, value=-1.0).clamp_min_(tiny)
    ad = b.mul_(b).neg_().addcmul_(a, c).clamp_min_(tiny)  # A' D' = c A' - B'^2
    return ad.log_().mul_(-p).add_(a.log_(), alpha=p - 0.5)


# ----------------------------------------------------------------------------- the search
def _default_batches(
    dev: torch.device, n_img: int, n_tpl: int, d: int, w: int, with_mask: bool, full: bool
) -> tuple[int, int]:
    k = 2 if with_mask else 1
    q = w // 2 + 1
    per_pair = d * k * (q * 8 + w * 4) + w * d * 4 * (8 if with_mask else 3)
    if full:
        per_pair += w * d * 4 * (2 if with_mask else 1)
    if dev.type == "cpu":
        cap_i, cap_t = 32, 64
    else:
        cap_i, cap_t = 1024, 256
    n_t = min(n_tpl, cap_t)
    budget = int(free_memory_bytes(dev) * (0.25 if dev.type == "cpu" else 0.6))
    n_i = max(1, min(n_img, cap_i, budget // max(1, per_pair * n_t)))
    return n_i, n_t


def search(
    images: PolarImages,
    templates: PolarTemplates,
    displacements: np.ndarray | None = None,
    *,
    level: Level = "pose",
    likelihood: bool = False,
    optimal_likelihood: bool = False,
    n_images_per_batch: int | None = None,
    n_templates_per_batch: int | None = None,
    device: DeviceLike = "auto",
    precision: Literal["single", "double"] = "single",
) -> SearchResult:
    """Correlate every image with every template, displacement and in-plane rotation.

    Parameters
    ----------
    images, templates
        Stacks on the same polar grid (:class:`PolarImages`, :class:`PolarTemplates`).
    displacements
        `(D, 2)` image-frame shifts ``(x, y)`` in Å (:func:`~corrscan.likelihood.grid.
        displacement_grid`); default a single zero shift.
    level
        Aggregation (see :class:`SearchResult`).
    likelihood
        Also compute the per-pose log-likelihood and the integrated log-likelihoods.
    optimal_likelihood
        Also compute log L at the optimal pose (level ``pose`` only).
    n_images_per_batch, n_templates_per_batch
        Batch sizes; ``None`` plans them from free memory. On a CUDA out-of-memory error the
        image batch is halved and the batch retried.
    device
        ``"auto"``, ``"cpu"`` or ``"cuda:N"``. Results come back on the CPU.
    precision
        ``"single"`` (complex64) or ``"double"`` (complex128).
    """
    if level not in _LEVELS:
        raise InputError(f"unknown level {level!r}: use one of {', '.join(_LEVELS)}")
    grid = images.grid
    if not grid.compatible(templates.grid):
        raise InputError(
            "images and templates are on different polar grids "
            f"({grid.to_dict()} vs {templates.grid.to_dict()}): rebuild one of them"
        )
    if optimal_likelihood and level != "pose":
        raise InputError("optimal_likelihood needs level='pose'")
    dev = resolve_device(device)
    cdt = torch.complex128 if precision == "double" else torch.complex64
    rdt = torch.float64 if precision == "double" else torch.float32
    disp = np.zeros((1, 2)) if displacements is None else np.asarray(displacements, np.float64)
    if disp.ndim != 2 or disp.shape[1] != 2 or disp.shape[0] < 1:
        raise InputError(f"displacements must be (D, 2) (x, y) in Å, got {disp.shape}")
    disp_px = disp / grid.pixel_size
    m_tot, s_tot, d_n, w = len(images), len(templates), disp.shape[0], grid.n_inplanes
    h = w // 2
    pr = _prepare(grid, disp_px, dev, cdt)
    full = level == "full"
    bi, bt = _default_batches(dev, m_tot, s_tot, d_n, w, likelihood, full)
    bi = n_images_per_batch or bi
    bt = n_templates_per_batch or bt
    rotations = np.rad2deg(grid.angles)
    n_real = grid.n_pixels**2
    t0 = time.perf_counter()

    # outputs (CPU)
    out: dict[str, torch.Tensor] = {}
    f32 = rdt
    if level == "full":
        out["cc"] = torch.empty((m_tot, s_tot, d_n, w), dtype=f32)
        if likelihood:
            out["llf"] = torch.empty((m_tot, s_tot, d_n, w), dtype=f32)
    elif level == "displacement":
        out["cc"] = torch.empty((m_tot, s_tot, w), dtype=f32)
        out["di"] = torch.empty((m_tot, s_tot, w), dtype=torch.long)
    elif level == "rotation":
        out["cc"] = torch.empty((m_tot, s_tot, d_n), dtype=f32)
        out["wi"] = torch.empty((m_tot, s_tot, d_n), dtype=torch.long)
    elif level == "displacement_rotation":
        out["cc"] = torch.empty((m_tot, s_tot), dtype=f32)
        out["di"] = torch.empty((m_tot, s_tot), dtype=torch.long)
        out["wi"] = torch.empty((m_tot, s_tot), dtype=torch.long)
    else:
        out["cc"] = torch.full((m_tot,), -torch.inf, dtype=f32)
        out["si"] = torch.zeros(m_tot, dtype=torch.long)
        out["di"] = torch.zeros(m_tot, dtype=torch.long)
        out["wi"] = torch.zeros(m_tot, dtype=torch.long)
    if likelihood:
        out["llms"] = torch.empty((m_tot, s_tot), dtype=torch.float64)

    # template side, once
    tsides = []
    for s0 in range(0, s_tot, bt):
        tb = templates.data[s0 : s0 + bt].to(device=dev, dtype=cdt)
        tsides.append((s0, tb.shape[0], *_template_side(tb, pr)))
    t_tpl = time.perf_counter() - t0

    m0 = 0
    while m0 < m_tot:
        mb = min(bi, m_tot - m0)
        try:
            _image_batch(
                images, m0, mb, tsides, pr, dev, cdt, likelihood, level, out, d_n, w, h, n_real
            )
        except _OOM:
            if dev.type != "cuda" or bi == 1:
                raise
            torch.cuda.empty_cache()
            bi = max(1, bi // 2)
            continue
        m0 += mb
    elapsed = time.perf_counter() - t0

    res = SearchResult(
        level=level, cross_correlation=out["cc"], displacements=disp, rotations=rotations
    )
    if "di" in out:
        res.displacement_x = torch.from_numpy(disp[:, 0])[out["di"]].to(f32)  # Å
        res.displacement_y = torch.from_numpy(disp[:, 1])[out["di"]].to(f32)
    if "wi" in out:
        res.inplane_rotation = torch.from_numpy(rotations)[out["wi"]].to(f32)
    if level == "pose":
        res.template = out["si"]
    if likelihood:
        c = torch.as_tensor(images.norms, dtype=torch.float64)
        p = n_real / 2.0 - 2.0
        const = log_likelihood_constant(n_real, pr.iss) - (p + 0.5) * math.log(pr.iss)
        llms = out["llms"] + const - math.log(d_n * w) - 2.0 * p * torch.log(c)[:, None]
        res.log_likelihood_ms = llms
        lw = torch.as_tensor(templates.weights, dtype=torch.float64)
        lw = torch.log(lw / lw.sum())
        res.integrated_log_likelihood = torch.logsumexp(llms + lw[None], dim=1)
        if full:
            res.log_likelihood_full = (
                out["llf"] + (const - 2.0 * p * torch.log(c)).to(f32)[:, None, None, None]
            )
    if optimal_likelihood:
        res.log_likelihood_optimal = log_likelihood_at_poses(
            images,
            templates,
            out["si"],
            disp[out["di"].numpy()],
            out["wi"],
            device=dev,
            precision=precision,
        )
    res.timings = {"templates_s": t_tpl, "total_s": elapsed}
    res.batch_sizes = {"n_images_per_batch": bi, "n_templates_per_batch": bt}
    return res


def _image_batch(
    images: PolarImages,
    m0: int,
    mb: int,
    tsides: list,
    pr: _Prepared,
    dev: torch.device,
    cdt: torch.dtype,
    likelihood: bool,
    level: str,
    out: dict,
    d_n: int,
    w: int,
    h: int,
    n_real: int,
) -> None:
    rdt = torch.float64 if cdt == torch.complex128 else torch.float32
    tiny = torch.finfo(rdt).tiny
    sl = slice(m0, m0 + mb)
    img = images.data[sl].to(device=dev, dtype=cdt)
    ctf = ctf_polar(images.ctf, images.grid, index=np.arange(m0, m0 + mb), device=dev, dtype=rdt)
    rows, ac, iyy, u = _image_side(img, ctf, pr, likelihood)
    k = 2 if likelihood else 1
    p_exp = n_real / 2.0 - 2.0
    best = None
    c_img = (iyy - u * u)[None, None, :, None, None]
    u_b = u[None, None, :, None, None]
    for s0, sb, btm, bcm in tsides:
        c = torch.bmm(rows, btm)  # (Q, K*Mb*D, Sb)
        x = torch.fft.irfft(c, n=w, dim=0).view(w, k, mb, d_n, sb)
        del c
        xx = torch.fft.irfft(torch.bmm(ac, bcm), n=h, dim=0)  # (H, Mb, Sb)
        xx = xx.clamp_min(tiny)
        norm = torch.rsqrt(xx * iyy[None, :, None])  # (H, Mb, Sb)
        xy = x[:, 0].unflatten(0, (2, h))  # (2, H, Mb, D, Sb)
        cc = (xy * norm[None, :, :, None, :]).reshape(w, mb, d_n, sb)
        ssl = slice(s0, s0 + sb)
        if likelihood:
            ll = _loglik(
                xy, xx[None, :, :, None, :], x[:, 1].unflatten(0, (2, h)), u_b, c_img, p_exp
            )
            if level == "full":
                out["llf"][sl, ssl] = ll.reshape(w, mb, d_n, sb).permute(1, 3, 2, 0).cpu()
            mx = ll.amax(dim=(0, 1, 3), keepdim=True)
            # Terms below exp(lo) are < 1e-37 of the largest: clamping them changes nothing
            # representable but keeps exp out of subnormals (25x slower on x86).
            lo = _EXP_FLOOR[rdt]
            lse = ll.sub_(mx).clamp_min_(lo).exp_().sum(dim=(0, 1, 3)).log_() + mx[0, 0, :, 0, :]
            out["llms"][sl, ssl] = lse.to(torch.float64).cpu()
            del ll
        del x, xy
        if level == "full":
            out["cc"][sl, ssl] = cc.permute(1, 3, 2, 0).cpu()
            continue
        if level == "displacement":
            v, di = cc.max(dim=2)  # (W, Mb, Sb)
            out["cc"][sl, ssl] = v.permute(1, 2, 0).cpu()
            out["di"][sl, ssl] = di.permute(1, 2, 0).cpu()
            continue
        vw, wi = cc.max(dim=0)  # (Mb, D, Sb)
        if level == "rotation":
            out["cc"][sl, ssl] = vw.permute(0, 2, 1).cpu()
            out["wi"][sl, ssl] = wi.permute(0, 2, 1).cpu()
            continue
        vd, di = vw.max(dim=1)  # (Mb, Sb)
        wsel = wi.gather(1, di[:, None, :])[:, 0]  # (Mb, Sb)
        if level == "displacement_rotation":
            out["cc"][sl, ssl] = vd.cpu()
            out["di"][sl, ssl] = di.cpu()
            out["wi"][sl, ssl] = wsel.cpu()
            continue
        vs, si = vd.max(dim=1)  # (Mb,)
        cand = (vs, si + s0, di.gather(1, si[:, None])[:, 0], wsel.gather(1, si[:, None])[:, 0])
        if best is None:
            best = cand
        else:
            better = cand[0] > best[0]
            best = tuple(torch.where(better, cn, bo) for cn, bo in zip(cand, best, strict=True))
    if level == "pose" and best is not None:
        out["cc"][sl] = best[0].cpu()
        out["si"][sl] = best[1].cpu()
        out["di"][sl] = best[2].cpu()
        out["wi"][sl] = best[3].cpu()


# ----------------------------------------------------------------------------- direct evaluation
def pose_inner_products(
    images: PolarImages,
    templates: PolarTemplates,
    template_index: torch.Tensor,
    displacement: np.ndarray,
    rotation_index: torch.Tensor,
    *,
    device: DeviceLike = "cpu",
    precision: str = "double",
) -> dict[str, torch.Tensor]:
    """Inner products of every image with its own pose, evaluated directly on the polar grid.

    Parameters
    ----------
    template_index
        `(M,)` template per image.
    displacement
        `(M, 2)` image-frame shift ``(x, y)`` in Å.
    rotation_index
        `(M,)` in-plane rotation as an index ``w`` of the grid angles (ψ = 360 w / W degrees).

    Returns
    -------
    dict of `(M,)` float64 tensors ``ixy, ixx, isx, iyy, isy`` and the float ``iss``.
    Cost ``O(M · n_points)``; used for the optimal-pose likelihood and as the test reference.
    """
    dev = resolve_device(device)
    cdt = torch.complex128 if precision == "double" else torch.complex64
    rdt = torch.float64 if precision == "double" else torch.float32
    grid = images.grid
    m = len(images)
    w = grid.n_inplanes
    ti = torch.as_tensor(template_index, dtype=torch.long).cpu()
    wi = torch.as_tensor(rotation_index, dtype=torch.long).cpu()
    t = templates.data[ti].to(device=dev, dtype=cdt)  # (M, N, W)
    j = (torch.arange(w)[None, :] + wi[:, None]) % w  # rotated: T(n, j + w)
    t = torch.gather(t, 2, j[:, None, :].expand(-1, t.shape[1], -1).to(dev))
    kx, ky = grid.points()
    d = np.asarray(displacement, np.float64).reshape(m, 2) / grid.pixel_size
    ph = -2.0 * np.pi * (d[:, 0, None, None] * kx[None] + d[:, 1, None, None] * ky[None])
    ctf = ctf_polar(images.ctf, grid, device=dev, dtype=rdt)
    x = ctf * torch.from_numpy(np.exp(1j * ph)).to(device=dev, dtype=cdt) * t
    y = images.data.to(device=dev, dtype=cdt)
    s = box_mask_polar(grid, dtype=cdt, device=dev)
    wn = torch.as_tensor(grid.point_weights, device=dev, dtype=rdt)[:, None]

    def ip(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return (wn * (a.conj() * b).real).sum(dim=(-2, -1)).to(torch.float64)

    return {
        "ixy": ip(y, x),
        "ixx": ip(x, x),
        "isx": ip(s.expand_as(x), x),
        "iyy": ip(y, y),
        "isy": ip(s.expand_as(y), y),
        "iss": float(ip(s, s)),
    }


def log_likelihood_at_poses(
    images: PolarImages,
    templates: PolarTemplates,
    template_index: torch.Tensor,
    displacement: np.ndarray,
    rotation_index: torch.Tensor,
    *,
    device: DeviceLike = "cpu",
    precision: str = "double",
) -> torch.Tensor:
    """log L (module docstring, image norm included) of each image at one given pose, `(M,)`."""
    ipd = pose_inner_products(
        images,
        templates,
        template_index,
        displacement,
        rotation_index,
        device=device,
        precision=precision,
    )
    n_real = images.grid.n_pixels**2
    ll = log_likelihood_from_inner_products(
        ipd["ixy"], ipd["ixx"], ipd["isx"], ipd["iyy"], ipd["isy"], ipd["iss"], n_real
    )
    p = n_real / 2.0 - 2.0
    return (
        ll - 2.0 * p * torch.log(torch.as_tensor(images.norms, dtype=torch.float64).to(ll.device))
    ).cpu()

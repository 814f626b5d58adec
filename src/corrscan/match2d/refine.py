"""Local refinement of 2D template-matching particles; constrained search; template pixel size.

Refinement scores every local orientation x defocus (x pixel size) offset of a particle at every
position within ``±box_margin`` pixels of its map position, against the **full search's**
per-pixel mean and standard deviation (Leopard-EM's global-filtering refinement), so refined
z-scores are comparable with the search's.

Maths: the whitened micrograph ``x = irfft2(X)`` (same preprocessing as the search) is cut
around the particle; templates ``t = irfft2(G_d · P_o)`` live on an enlarged box of side
``L = D + 2 e`` (``e = D // 4``) so the CTF's delocalised signal is kept; correlations are
small FFT correlations of the cut-out region; each is divided by its exact noise standard
deviation ``σ² = Σ_k S(k) G_d²(k) |P_o(k)|² / (N L²)`` (``S`` the micrograph's radial noise
power, ``N`` the micrograph's pixel count), i.e. the search's normalisation evaluated on the
small grid.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
import torch

from corrscan.core.arrays import resolve_device, to_tensor
from corrscan.core.fourier import radial_power_spectrum, radial_profile_to_grid
from corrscan.core.rotations import euler_to_matrix, matrix_to_euler
from corrscan.core.threads import torch_threads
from corrscan.errors import InputError
from corrscan.match2d._templates import (
    central_slices,
    prepare_template,
    slices_to_images,
    subtract_edge_mean,
)
from corrscan.match2d.config import (
    ConstrainedSearchConfig,
    OpticsGroup,
    PreprocessingFilters,
    RefineConfig,
)
from corrscan.match2d.preprocess import (
    combined_filter,
    leopard_num_bins,
    rfft_weights,
    whiten_micrograph,
)
from corrscan.match2d.search import _as_model, template_filters

__all__ = [
    "constrained_search",
    "local_orientation_offsets",
    "optimize_template_pixel_size",
    "refine_template",
]


def local_orientation_offsets(cfg: Any) -> torch.Tensor:
    """`(m, 3)` Euler offsets around the identity (Leopard-EM / torch-so3 local grid: a cap of
    projection directions within the coarse theta step, sampled at the fine steps, times psi
    offsets within ``±psi_step_coarse``). The identity is always included (first row)."""
    import torch_so3

    if not cfg.enabled:
        return torch.zeros(1, 3, dtype=torch.float64)
    off = torch_so3.get_local_high_resolution_angles(
        coarse_phi_step=cfg.phi_step_coarse,
        coarse_theta_step=cfg.theta_step_coarse,
        coarse_psi_step=cfg.psi_step_coarse,
        fine_phi_step=cfg.phi_step_fine,
        fine_theta_step=cfg.theta_step_fine,
        fine_psi_step=cfg.psi_step_fine,
    ).to(torch.float64)
    return torch.cat([torch.zeros(1, 3, dtype=torch.float64), off])


class _RefineContext:
    """Everything shared by all particles of one micrograph (whitened image, noise model,
    filters on the enlarged template grid)."""

    def __init__(
        self,
        micrograph: torch.Tensor,
        template: torch.Tensor,
        optics: OpticsGroup,
        preprocessing: PreprocessingFilters,
        defocus_offsets: torch.Tensor,
        pixel_offsets: torch.Tensor,
        device: torch.device,
        oversampling: int = 1,
    ) -> None:
        img = micrograph.to(device, torch.float32)
        self.image_shape = tuple(int(s) for s in img.shape)
        h, w = self.image_shape
        px = float(optics.pixel_size)
        spectrum, _ = whiten_micrograph(img, preprocessing, pixel_size=px)
        self.whitened = torch.fft.irfft2(spectrum, s=(h, w))
        self.box = int(template.shape[-1])
        # enlarge the template box by the CTF's delocalisation radius at Nyquist,
        # lambda * defocus * k_max (Å), so the filtered template does not wrap around
        from corrscan.core.ctf import electron_wavelength

        lam = float(electron_wavelength(optics.voltage))
        dfmax = max(abs(optics.defocus_u), abs(optics.defocus_v)) + float(
            defocus_offsets.abs().max()
        )
        deloc = lam * dfmax * (0.5 / px) / px
        self.ext = int(min(max(self.box // 4, math.ceil(deloc) + 2), max(h, w)))
        L = self.box + 2 * self.ext
        self.L = L
        self.tpl = prepare_template(template.to(device), oversampling)
        phi = combined_filter(img, (L, L), preprocessing, pixel_size=px)
        n_def, n_pix = len(defocus_offsets), len(pixel_offsets)
        # pixel-size offsets emulated through C_s (Leopard-EM): Cs_i = Cs / ((p + dp) / p)^4
        cs = optics.spherical_aberration / ((px + pixel_offsets) / px) ** 4
        d_grid = defocus_offsets.repeat(n_pix)
        cs_grid = cs.repeat_interleave(n_def)
        self.g = template_filters(
            (L, L),
            optics,
            d_grid.to(device),
            phi,
            pixel_size=px,
            spherical_aberration=cs_grid.to(device),
        )  # (n_pix * n_def, L, L//2+1)
        self.defocus_items = d_grid
        self.pixel_items = pixel_offsets.repeat_interleave(n_def)
        nb = leopard_num_bins((h, w))
        freq, power = radial_power_spectrum(self.whitened.to(torch.float64), n_bins=nb)
        s_grid = radial_profile_to_grid(freq, power * (h * w), (L, L)).to(torch.float32)
        wts = rfft_weights((L, L), device=device).clone()
        wts[0, 0] = 0
        self.noise_w = (wts * s_grid).to(device)[None] * self.g.square()  # (n_items, L, Lr)
        self.n_pix = h * w
        self.device = device

    def score_particle(
        self,
        angles: torch.Tensor,
        corner: tuple[int, int],
        margin: int,
        mean_map: torch.Tensor,
        std_map: torch.Tensor,
        batch: int = 64,
    ) -> dict[str, Any]:
        """Best z-score over ``angles`` `(m, 3)` x filter items x shifts within ``±margin`` of
        the map position ``corner`` (top-left of the box)."""
        h, w = self.image_shape
        L, e, box = self.L, self.ext, self.box
        y0, x0 = corner
        m_reg = L + 2 * margin
        ry, rx = y0 - e - margin, x0 - e - margin
        # region with zero padding outside the micrograph
        region = torch.zeros(m_reg, m_reg, device=self.device)
        ys, ye = max(ry, 0), min(ry + m_reg, h)
        xs, xe = max(rx, 0), min(rx + m_reg, w)
        if ye <= ys or xe <= xs:
            raise InputError(f"particle at {corner} lies outside the micrograph")
        region[ys - ry : ye - ry, xs - rx : xe - rx] = self.whitened[ys:ye, xs:xe]
        reg_ft = torch.fft.rfft2(region)
        # valid map positions for the shifts
        hv, wv = mean_map.shape
        sy = torch.arange(2 * margin + 1, device=self.device) + y0 - margin
        sx = torch.arange(2 * margin + 1, device=self.device) + x0 - margin
        oky = (sy >= 0) & (sy < hv)
        okx = (sx >= 0) & (sx < wv)
        ok = oky[:, None] & okx[None, :]
        mean_w = torch.zeros(2 * margin + 1, 2 * margin + 1, device=self.device)
        std_w = torch.ones_like(mean_w)
        cy, cx = sy.clamp(0, hv - 1), sx.clamp(0, wv - 1)
        mean_w = torch.where(ok, mean_map[cy][:, cx], mean_w)
        std_w = torch.where(ok, std_map[cy][:, cx].clamp_min(1e-12), std_w)
        self.g.shape[0]
        best = (-math.inf, 0, 0, 0, 0, 0.0)
        pad = (L - box) // 2
        for a0 in range(0, angles.shape[0], batch):
            ang = angles[a0 : a0 + batch]
            rot = euler_to_matrix(ang).to(self.device, torch.float32)
            proj = subtract_edge_mean(slices_to_images(self.tpl, central_slices(self.tpl, rot)))
            proj = torch.nn.functional.pad(proj, (pad, L - box - pad, pad, L - box - pad))
            pft = torch.fft.rfft2(proj)  # box at [e, e + D): corner convention
            pw = pft.real.square() + pft.imag.square()  # (b, L, Lr)
            var = torch.einsum("ikl,bkl->ib", self.noise_w, pw) / (self.n_pix * L * L)
            t_ft = self.g[:, None] * pft[None]  # (items, b, L, Lr)
            t = torch.fft.irfft2(t_ft, s=(L, L))
            t_big = torch.fft.rfft2(t, s=(m_reg, m_reg))
            cc = torch.fft.irfft2(reg_ft * t_big.conj(), s=(m_reg, m_reg))
            cc = cc[..., : 2 * margin + 1, : 2 * margin + 1]
            cc = cc * torch.rsqrt(var.clamp_min(1e-30))[..., None, None]
            z = (cc - mean_w) / std_w
            z = torch.where(ok, z, torch.full_like(z, -math.inf))
            flat = z.reshape(-1)
            k = int(flat.argmax())
            val = float(flat[k])
            if val > best[0]:
                item, rem = divmod(k, z.shape[1] * z.shape[2] * z.shape[3])
                b_i, rem = divmod(rem, z.shape[2] * z.shape[3])
                dy, dx = divmod(rem, z.shape[3])
                best = (val, item, a0 + b_i, dy, dx, float(cc.reshape(-1)[k]))
        val, item, a_i, dy, dx, mip = best
        return {
            "refined_scaled_mip": val,
            "refined_mip": mip,
            "refined_pos_y": y0 - margin + dy,
            "refined_pos_x": x0 - margin + dx,
            "refined_phi": float(angles[a_i, 0]),
            "refined_theta": float(angles[a_i, 1]),
            "refined_psi": float(angles[a_i, 2]),
            "refined_relative_defocus": float(self.defocus_items[item]),
            "refined_pixel_size_offset": float(self.pixel_items[item]),
        }


def _small_ops_threads(device: torch.device):
    """Run small tensor operations single-threaded on CPU (intra-op thread hand-offs cost
    more than they save on refinement-sized arrays); restores the thread count."""
    return torch_threads(1 if device.type == "cpu" else None)


def _compose(base: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """Euler angles of ``R(base) @ R(offset)`` for every offset: `(m, 3)` degrees."""
    r = euler_to_matrix(base.to(torch.float64))[None] @ euler_to_matrix(offsets.to(torch.float64))
    return matrix_to_euler(r)


def refine_template(
    micrograph: Any,
    template: Any,
    particles: pd.DataFrame,
    result: Any,
    *,
    optics: OpticsGroup | dict | None = None,
    config: RefineConfig | dict | None = None,
    preprocessing: PreprocessingFilters | dict | None = None,
    device: str = "auto",
    oversampling: int = 1,
) -> pd.DataFrame:
    """Refine angles, defocus (and pixel size) of each particle locally.

    Parameters
    ----------
    micrograph, template
        The searched `(H, W)` micrograph and `(D, D, D)` template (input pixel size; a
        resolution-limited search is refined at full resolution).
    particles
        Table from :func:`corrscan.match2d.peaks.peaks_to_dataframe` (``pos_y, pos_x`` map
        pixels, ``phi, theta, psi``, ``relative_defocus``).
    result
        The search's :class:`~corrscan.match2d.result.MatchTemplateResult` (its
        ``correlation_mean`` / ``correlation_std`` maps score the refined correlations).
    optics
        Default: the optics stored in the result.
    config
        :class:`RefineConfig`: local orientation grid, defocus offsets (relative to each
        particle's defocus), pixel-size offsets, positional margin.
    preprocessing
        Must match the search (default: the result's stored preprocessing or Leopard-EM's).

    Returns
    -------
    DataFrame
        ``particles`` plus ``refined_mip, refined_scaled_mip, refined_pos_y, refined_pos_x,
        refined_pos_y_img, refined_pos_x_img, refined_pos_*_img_angstrom, refined_phi,
        refined_theta, refined_psi, refined_relative_defocus, refined_pixel_size``.
    """
    meta = result.metadata
    if float(meta.get("scale_to_input", 1.0)) != 1.0:
        raise InputError(
            "refine_template needs a full-resolution search result (this one used "
            "resolution_limit); rerun the search without it or refine on its grid"
        )
    optics = _as_model(
        optics if optics is not None else meta["optics_group"], OpticsGroup, "optics"
    )
    config = _as_model(config, RefineConfig, "config")
    if preprocessing is None:
        stored = (meta.get("config") or {}).get("preprocessing_filters")
        preprocessing = PreprocessingFilters.from_dict(stored) if stored else None
    preprocessing = _as_model(preprocessing, PreprocessingFilters, "preprocessing")
    dev = resolve_device(device)
    img = to_tensor(micrograph, name="micrograph").to(torch.float32)
    vol = to_tensor(template, name="template").to(torch.float32)
    box = int(vol.shape[-1])
    if box != int(meta["template_box"]):
        raise InputError(f"template box {box} differs from the search's {meta['template_box']}")
    d_off = config.defocus_refinement.values()
    p_off = config.pixel_size_refinement.values()
    offsets = local_orientation_offsets(config.orientation_refinement)
    ctx = _RefineContext(img, vol, optics, preprocessing, d_off, p_off, dev, oversampling)
    mean_map = result.maps["correlation_mean"].to(dev)
    std_map = result.maps.get("correlation_std", result.maps["correlation_variance"].sqrt()).to(dev)
    rows = []
    with _small_ops_threads(dev):
        for _, p in particles.iterrows():
            rows.append(_refine_one(ctx, p, offsets, optics, preprocessing, img, d_off, p_off,
                                    config, mean_map, std_map))  # fmt: skip
    return _refined_table(particles, rows, optics, box)


def _refine_one(ctx, p, offsets, optics, preprocessing, img, d_off, p_off, config, mean_map,
                std_map) -> dict[str, Any]:  # fmt: skip
    if True:
        base = torch.tensor([p["phi"], p["theta"], p["psi"]], dtype=torch.float64)
        angles = _compose(base, offsets)
        ctx_defocus = float(p.get("relative_defocus", 0.0))
        ctx.defocus_items_base = ctx_defocus
        # per-particle defocus: shift the filters by the particle's own relative defocus
        g_saved = ctx.g
        if ctx_defocus != 0.0:
            ctx.g = _shifted_filters(ctx, optics, preprocessing, img, d_off + ctx_defocus, p_off)
            ctx.noise_w = ctx.noise_w / g_saved.square().clamp_min(1e-30) * ctx.g.square()
        r = ctx.score_particle(
            angles, (int(p["pos_y"]), int(p["pos_x"])), config.box_margin, mean_map, std_map
        )
        if ctx_defocus != 0.0:
            ctx.noise_w = ctx.noise_w / ctx.g.square().clamp_min(1e-30) * g_saved.square()
            ctx.g = g_saved
        r["refined_relative_defocus"] += ctx_defocus
        return r


def _refined_table(particles, rows, optics, box) -> pd.DataFrame:
    out = particles.copy().reset_index(drop=True)
    ref = pd.DataFrame(rows)
    for c in ref.columns:
        out[c] = ref[c].to_numpy() if len(ref) else []
    px = float(optics.pixel_size)
    if len(out):
        out["refined_pos_y_img"] = out["refined_pos_y"] + box // 2
        out["refined_pos_x_img"] = out["refined_pos_x"] + box // 2
        out["refined_pos_y_img_angstrom"] = out["refined_pos_y_img"] * px
        out["refined_pos_x_img_angstrom"] = out["refined_pos_x_img"] * px
        out["refined_pixel_size"] = px + out.pop("refined_pixel_size_offset")
    return out


def _shifted_filters(
    ctx: _RefineContext,
    optics: OpticsGroup,
    preprocessing: PreprocessingFilters,
    img: torch.Tensor,
    d_off: torch.Tensor,
    p_off: torch.Tensor,
) -> torch.Tensor:
    px = float(optics.pixel_size)
    phi = combined_filter(img.to(ctx.device), (ctx.L, ctx.L), preprocessing, pixel_size=px)
    cs = optics.spherical_aberration / ((px + p_off) / px) ** 4
    return template_filters(
        (ctx.L, ctx.L),
        optics,
        d_off.repeat(len(p_off)).to(ctx.device),
        phi,
        pixel_size=px,
        spherical_aberration=cs.repeat_interleave(len(d_off)).to(ctx.device),
    )


def constrained_search(
    micrograph: Any,
    template: Any,
    reference_particles: pd.DataFrame,
    result: Any,
    *,
    config: ConstrainedSearchConfig | dict | None = None,
    optics: OpticsGroup | dict | None = None,
    preprocessing: PreprocessingFilters | dict | None = None,
    box_margin: int = 4,
    device: str = "auto",
) -> pd.DataFrame:
    """Search a second particle rigidly linked to each reference particle.

    For a reference at angles ``R_ref`` the candidate orientations are ``R_ref @ Rot(a, α)``
    (rotation by ``α`` in ``±axis_range`` about the axis ``a`` given in the reference map's
    frame; optionally with tilts of the axis up to ``tilt_range``). The constrained
    particle's centre is the reference centre plus the sample-frame image of
    ``center_vector`` (Å): ``R_refᵀ c`` (its x, y in pixels shift the position, its z shifts
    the defocus: ``relative_defocus += (R_refᵀ c)_z``).

    ``result`` must be a search of ``template`` (the constrained particle) over the same
    micrograph: its mean/std maps score the correlations. The z-score cut-off uses
    ``N = orientations x valid box pixels`` and ``false_positives`` per particle.

    Returns
    -------
    DataFrame
        One row per reference particle: ``refined_*`` columns of the constrained particle,
        ``original_offset_phi/theta/psi`` (the winning offset, degrees), ``axis_angle``,
        ``z_score_cutoff`` and ``passes_cutoff``.
    """
    from corrscan.match2d.peaks import gaussian_noise_zscore_cutoff

    meta = result.metadata
    config = _as_model(config, ConstrainedSearchConfig, "config")
    optics = _as_model(
        optics if optics is not None else meta["optics_group"], OpticsGroup, "optics"
    )
    preprocessing = _as_model(preprocessing, PreprocessingFilters, "preprocessing")
    dev = resolve_device(device)
    img = to_tensor(micrograph, name="micrograph").to(torch.float32)
    vol = to_tensor(template, name="template").to(torch.float32)
    box = int(vol.shape[-1])
    px = float(optics.pixel_size)
    axis = torch.tensor(config.rotation_axis, dtype=torch.float64)
    if float(axis.norm()) == 0:
        raise InputError("rotation_axis must be a non-zero vector")
    axis = axis / axis.norm()
    n_a = math.floor(config.axis_range / config.axis_step + 1e-9)
    alphas = torch.arange(-n_a, n_a + 1, dtype=torch.float64) * config.axis_step
    offs = [_axis_rotation(axis, a) for a in alphas]
    if config.tilt_range > 0:
        perp = torch.linalg.cross(axis, torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64))
        if float(perp.norm()) < 1e-6:
            perp = torch.linalg.cross(axis, torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64))
        perp = perp / perp.norm()
        n_t = math.floor(config.tilt_range / config.tilt_step + 1e-9)
        tilts = [_axis_rotation(perp, t * config.tilt_step) for t in range(-n_t, n_t + 1) if t]
        offs = offs + [t @ o for t in tilts for o in offs]
    off_r = torch.stack(offs)
    d_off = torch.zeros(1, dtype=torch.float64)
    ctx = _RefineContext(
        img, vol, optics, preprocessing, d_off, torch.zeros(1, dtype=torch.float64), dev
    )
    mean_map = result.maps["correlation_mean"].to(dev)
    std_map = result.maps.get("correlation_std", result.maps["correlation_variance"].sqrt()).to(dev)
    n_ccg = off_r.shape[0] * (2 * box_margin + 1) ** 2
    cut = gaussian_noise_zscore_cutoff(n_ccg, config.false_positives)
    c_vec = torch.tensor(config.center_vector, dtype=torch.float64)
    rows = []
    with _small_ops_threads(dev):  # restored on errors too
        for _, p in reference_particles.iterrows():
            base = torch.tensor([p["phi"], p["theta"], p["psi"]], dtype=torch.float64)
            r_ref = euler_to_matrix(base)
            shift = r_ref.T @ c_vec / px  # sample-frame offset, pixels (x, y, z)
            rel = float(p.get("relative_defocus", 0.0)) + float(shift[2]) * px
            centre_y = float(p["pos_y"]) + box // 2 + float(shift[1])
            centre_x = float(p["pos_x"]) + box // 2 + float(shift[0])
            corner = (round(centre_y) - box // 2, round(centre_x) - box // 2)
            angles = matrix_to_euler(r_ref[None] @ off_r)
            ctx.g = _shifted_filters(
                ctx, optics, preprocessing, img, torch.tensor([rel]), torch.zeros(1)
            )
            res = ctx.score_particle(angles, corner, box_margin, mean_map, std_map)
            k = int(
                torch.argmin(
                    (
                        angles
                        - torch.tensor(
                            [res["refined_phi"], res["refined_theta"], res["refined_psi"]],
                            dtype=torch.float64,
                        )
                    )
                    .abs()
                    .sum(-1)
                )
            )
            oe = matrix_to_euler(off_r[k])
            res["refined_relative_defocus"] = rel
            res.pop("refined_pixel_size_offset", None)
            res.update(
                {
                    "original_offset_phi": float(oe[0]),
                    "original_offset_theta": float(oe[1]),
                    "original_offset_psi": float(oe[2]),
                    "axis_angle": float(alphas[k % len(alphas)]),
                    "z_score_cutoff": cut,
                    "passes_cutoff": res["refined_scaled_mip"] > cut,
                }
            )
            rows.append(res)
    out = reference_particles.copy().reset_index(drop=True)
    for c, v in pd.DataFrame(rows).items():
        out[c] = v.to_numpy()
    return out


def _axis_rotation(axis: torch.Tensor, degrees: float) -> torch.Tensor:
    """Rotation matrix about a unit ``axis`` (x, y, z) by ``degrees`` (right-handed)."""
    a = math.radians(float(degrees))
    x, y, z = (float(v) for v in axis)
    k = torch.tensor([[0, -z, y], [z, 0, -x], [-y, x, 0]], dtype=torch.float64)
    return torch.eye(3, dtype=torch.float64) + math.sin(a) * k + (1 - math.cos(a)) * (k @ k)


def optimize_template_pixel_size(
    micrograph: Any,
    atoms: Any,
    particles: pd.DataFrame,
    result: Any,
    *,
    box: int,
    atom_sigma: float = 1.0,
    coarse_range: float = 0.05,
    coarse_step: float = 0.01,
    fine_step: float = 0.002,
    min_zscore: float | None = None,
    device: str = "auto",
) -> tuple[float, pd.DataFrame]:
    """Best template pixel size for an atom model (coarse then fine scan, early stop).

    For each trial pixel size ``p`` the atoms (`(n, 3)` ``(z, y, x)`` Å about the map centre)
    are rendered as Gaussians of width ``atom_sigma`` Å on a `(box,)³` grid of voxel ``p``
    (:func:`corrscan.synthetic.density.render_gaussians`); each particle is scored at its
    position and pose (±1 px), and the score is the mean z-score of the particles above
    ``min_zscore`` (all if ``None``). Coarse scan: ``p0 · (1 ± coarse_range)`` in relative
    steps ``coarse_step``, walking outwards from ``p0`` and stopping a direction after two
    consecutive decreases (Leopard-EM's early stop); fine scan ``± coarse_step`` around the
    coarse best at ``fine_step``.

    Returns
    -------
    best_pixel_size, log
        Å, and a table ``pixel_size, score`` of every trial.
    """
    from corrscan.synthetic.density import render_gaussians

    meta = result.metadata
    p0 = float(meta["optics_group"]["pixel_size"])
    xyz = to_tensor(atoms, name="atoms").to(torch.float64)
    cfg = RefineConfig(
        orientation_refinement={"enabled": False},
        defocus_refinement={"enabled": False},
        box_margin=1,
    )
    cache: dict[float, float] = {}

    def score(p: float) -> float:
        key = round(p, 6)
        if key in cache:
            return cache[key]
        vox = xyz / p + box // 2
        vol = render_gaussians(vox, box, sigma=atom_sigma / p)
        ref = refine_template(micrograph, vol, particles, result, config=cfg, device=device)
        z = ref["refined_scaled_mip"].to_numpy()
        if min_zscore is not None:
            z = z[z >= min_zscore]
        cache[key] = float(np.mean(z)) if z.size else -math.inf
        return cache[key]

    def scan(center: float, step: float, half: float) -> None:
        n = round(half / step)
        score(center)
        for sign in (1, -1):
            drops, prev = 0, score(center)
            for i in range(1, n + 1):
                s = score(center * (1 + sign * i * step) if step < 1 else center + sign * i * step)
                drops = drops + 1 if s < prev else 0
                prev = s
                if drops >= 2:
                    break

    scan(p0, coarse_step, coarse_range)
    best = max(cache, key=cache.get)
    n_f = round(coarse_step * best / (fine_step * p0))
    for i in range(-n_f, n_f + 1):
        score(best + i * fine_step * p0)
    best = max(cache, key=cache.get)
    log = pd.DataFrame(sorted(cache.items()), columns=["pixel_size", "score"])
    return float(best), log

"""The 2D search: planted particles, noise statistics, exactness, splits, modes, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from corrscan.core.rotations import angular_distance, euler_to_matrix
from corrscan.errors import InputError
from corrscan.match2d import match_template
from corrscan.match2d.config import OrientationSearchConfig
from corrscan.match2d.peaks import extract_peaks, find_peaks_from_zscore, peaks_to_dataframe
from corrscan.match2d.result import MatchTemplateResult
from corrscan.synthetic.micrograph import example_template, simulate_micrograph
from tests.conftest import requires_cuda

PX = 1.5
DEFOCUS = 8000.0
STEP = 20.0
DF_SEARCH = {"defocus_min": -400.0, "defocus_max": 400.0, "defocus_step": 400.0}
OPTICS = {"pixel_size": PX, "defocus_u": DEFOCUS, "defocus_v": DEFOCUS}
# high-pass: removes the low-resolution "blob" that all views of a small synthetic particle
# share (see docs/match2d.md, symmetric/smooth templates)
PRE = {"bandpass_filter": {"enabled": True, "low_freq_cutoff": 0.15}}


@pytest.fixture(scope="module")
def template():
    return example_template(32, n_atoms=800, atom_sigma=0.7, seed=0)


@pytest.fixture(scope="module")
def grid():
    return OrientationSearchConfig(psi_step=STEP, theta_step=STEP)


@pytest.fixture(scope="module")
def planted(template, grid):
    """Three particles at grid orientations, three heights, in a 128² micrograph."""
    angles = grid.angles()
    rng = np.random.default_rng(1)
    pick = angles[rng.choice(len(angles), 3, replace=False)].numpy()
    img, truth = simulate_micrograph(
        template, shape=(128, 128), pixel_size=PX, n_particles=3, orientations=pick,
        defocus_u=DEFOCUS, relative_defocus=[0.0, 400.0, -400.0], signal_scale=8.0,
        noise_std=1.0, colored_noise_std=2.0, seed=3,
    )  # fmt: skip
    res = match_template(
        img, template, optics=OPTICS, defocus_search=DF_SEARCH, orientation_search=grid,
        preprocessing=PRE, progress=False,
    )  # fmt: skip
    return img, truth, res


def _angle_err(a, b) -> np.ndarray:
    ra = euler_to_matrix(torch.as_tensor(np.asarray(a, dtype=np.float64)).reshape(-1, 3))
    rb = euler_to_matrix(torch.as_tensor(np.asarray(b, dtype=np.float64)).reshape(-1, 3))
    return np.asarray(angular_distance(ra, rb))


def test_planted_particles_found(planted):
    _, truth, res = planted
    assert res.maps["mip"].shape == (128 - 32 + 1, 128 - 32 + 1)
    assert res.metadata["total_defocus"] == 3
    assert res.total_correlations == res.metadata["total_orientations"] * 3
    table = peaks_to_dataframe(extract_peaks(res, false_positives=1.0), res)
    assert len(table) <= len(truth) + 2
    for _, t in truth.iterrows():
        d = np.hypot(table["pos_y"] - t["y_corner"], table["pos_x"] - t["x_corner"])
        assert d.min() <= 2.0, f"planted particle at {(t['y'], t['x'])} not found"
        f = table.iloc[int(np.argmin(d))]
        assert abs(f["pos_y_img"] - t["y"]) <= 2 and abs(f["pos_x_img"] - t["x"]) <= 2
        err = _angle_err([f["phi"], f["theta"], f["psi"]], [t["phi"], t["theta"], t["psi"]])
        assert err[0] <= STEP + 1e-6
        assert abs(f["relative_defocus"] - t["relative_defocus"]) <= DF_SEARCH["defocus_step"]
        assert f["scaled_mip"] > 5.0


def test_noise_only_gives_about_false_positives(template, grid):
    img, _ = simulate_micrograph(
        template, shape=(128, 128), pixel_size=PX, n_particles=0, colored_noise_std=2.0, seed=7
    )
    res = match_template(
        img, template, optics=OPTICS, defocus_search=DF_SEARCH, orientation_search=grid,
        preprocessing=PRE, progress=False,
    )  # fmt: skip
    picks = extract_peaks(res, false_positives=1.0)
    assert len(picks.pos_y) <= 3
    # per-pixel statistics over the search: mean ~0, variance ~1 (templates nearly orthogonal)
    assert abs(float(res.maps["correlation_mean"].mean())) < 0.05
    assert 0.8 < float(res.maps["correlation_variance"].mean()) < 1.1


@pytest.mark.parametrize("placement", ["micrograph", "template_box"])
def test_single_template_noise_is_standard_normal(template, placement):
    """A noise micrograph correlated with one template: mean 0, variance 1 per pixel."""
    rng = np.random.default_rng(0)
    img = rng.normal(size=(192, 192)).astype(np.float32)
    vals = []
    for k in range(3):
        ang = torch.tensor([[40.0 * k, 30.0 + 25 * k, 70.0 * k]], dtype=torch.float64)
        r = match_template(
            img, template, optics=OPTICS, defocus_search={"enabled": False}, orientations=ang,
            compute={"ctf_placement": placement}, progress=False,
        )  # fmt: skip
        vals.append(r.maps["mip"].flatten())
    v = torch.cat(vals)
    assert abs(float(v.mean())) < 0.03
    if placement == "micrograph":  # exact normalisation
        assert 0.95 < float(v.var()) < 1.05
    else:  # Leopard-EM's white-noise normalisation
        assert 0.75 < float(v.var()) < 1.05


def _float64_reference(img, template, angles, defocus):
    """Independent float64 evaluation of every correlation map of the search (no chunking,
    no fused statistics): returns mip, argmax index, mean, variance over the valid region."""
    from corrscan.match2d._templates import (
        central_slices,
        prepare_template,
        slices_to_images,
        subtract_edge_mean,
    )
    from corrscan.match2d.config import OpticsGroup, PreprocessingFilters
    from corrscan.match2d.preprocess import noise_power_grid, rfft_weights, whiten_micrograph
    from corrscan.match2d.search import template_filters

    x = torch.from_numpy(img)
    h, w = x.shape
    box = template.shape[-1]
    spec, phi = whiten_micrograph(x, PreprocessingFilters(), pixel_size=PX)
    spec = spec.to(torch.complex128)
    s_grid = noise_power_grid(spec.to(torch.complex64)).double()
    g = template_filters((h, w), OpticsGroup(**OPTICS), defocus, phi, pixel_size=PX).double()
    wts = rfft_weights((h, w)).double().clone()
    wts[0, 0] = 0
    tpl = prepare_template(torch.from_numpy(template))
    proj = subtract_edge_mean(
        slices_to_images(tpl, central_slices(tpl, euler_to_matrix(angles).float()))
    ).double()
    p_ft = torch.fft.rfft2(proj, s=(h, w))  # (n_o, H, Wr)
    t = g[None] * p_ft[:, None]  # (n_o, n_d, H, Wr)
    var = (wts * s_grid * (t.real**2 + t.imag**2)).sum((-2, -1)) / (h * w) ** 2
    cc = torch.fft.irfft2(spec * t.conj(), s=(h, w)) / var.sqrt()[..., None, None]
    cc = cc[..., : h - box + 1, : w - box + 1].reshape(-1, h - box + 1, w - box + 1)
    mip, idx = cc.max(0)
    return mip, idx, cc.mean(0), cc.var(0, unbiased=False)


def test_statistics_exact_against_float64(template):
    rng = np.random.default_rng(5)
    img = rng.normal(size=(80, 72)).astype(np.float32)
    angles = torch.rand(150, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    angles = angles * torch.tensor([360.0, 180.0, 360.0], dtype=torch.float64)
    res = match_template(
        img, template, optics=OPTICS, defocus_search=DF_SEARCH, orientations=angles,
        compute={"orientation_batch_size": 7, "chunk_orientations": 3}, progress=False,
    )  # fmt: skip
    defocus = torch.tensor([-400.0, 0.0, 400.0], dtype=torch.float64)
    mip, idx, mean, var = _float64_reference(img, template, angles, defocus)
    np.testing.assert_allclose(res.maps["mip"].numpy(), mip.numpy(), rtol=2e-5, atol=2e-5)
    np.testing.assert_allclose(res.maps["correlation_mean"].numpy(), mean.numpy(), atol=2e-6)
    np.testing.assert_allclose(
        res.maps["correlation_variance"].numpy(), var.numpy(), rtol=2e-5, atol=2e-6
    )
    # winning orientation/defocus (reference index = o * n_def + d)
    o, d = idx // 3, idx % 3
    same = (res.maps["phi"] == angles[o, 0].float()) & (
        res.maps["relative_defocus"] == defocus[d].float()
    )
    assert float(same.float().mean()) > 0.995


def test_split_searches_merge_bit_identically(template, planted):
    """Workers (threads, device lists) split the batches; exact merges give the same bits as
    one worker. A different batch size changes only the float32 batch sums (~1e-7)."""
    img, _, _ = planted
    angles = OrientationSearchConfig(psi_step=40, theta_step=40).angles()
    kw = {"optics": OPTICS, "defocus_search": DF_SEARCH, "orientations": angles, "progress": False}
    c = {"orientation_batch_size": 5}
    one = match_template(img, template, compute={"num_threads": 1, **c}, **kw)
    two = match_template(img, template, compute={"num_threads": 2, **c}, **kw)
    lst = match_template(
        img, template, compute={"device": ["cpu", "cpu"], "num_threads": 1, **c}, **kw
    )
    names = ("mip", "phi", "theta", "psi", "relative_defocus", "correlation_mean",
             "correlation_variance")  # fmt: skip
    for other in (two, lst):
        for name in names:
            assert torch.equal(one.maps[name], other.maps[name]), name
    big = match_template(img, template, compute={"orientation_batch_size": 64}, **kw)
    for name in names:
        np.testing.assert_allclose(big.maps[name], one.maps[name], rtol=1e-5, atol=1e-6)


def test_ctf_placements_agree(template, planted):
    img, truth, _ = planted
    angles = torch.tensor(truth[["phi", "theta", "psi"]].to_numpy())
    extra = torch.rand(20, 3, dtype=torch.float64) * torch.tensor([360.0, 180.0, 360.0])
    angles = torch.cat([angles, extra.double()])
    maps = {}
    for placement in ("micrograph", "template_box"):
        r = match_template(
            img, template, optics=OPTICS, defocus_search=DF_SEARCH, orientations=angles,
            preprocessing=PRE, compute={"ctf_placement": placement}, progress=False,
        )  # fmt: skip
        maps[placement] = r.maps["mip"].flatten()
        # the planted particles are the strongest peaks, at the same places in both orders
        py, px = find_peaks_from_zscore(r.maps["mip"], 0.0, mask_radius=10)
        top = {(int(y), int(x)) for y, x in zip(py[:3], px[:3], strict=True)}
        for _, t in truth.iterrows():
            assert any(
                abs(y - int(t["y_corner"])) <= 1 and abs(x - int(t["x_corner"])) <= 1
                for y, x in top
            )
    # the box order truncates the CTF-delocalised template: same peaks, lower heights
    for _, t in truth.iterrows():
        i = int(t["y_corner"]) * (128 - 32 + 1) + int(t["x_corner"])
        ratio = float(maps["template_box"][i] / maps["micrograph"][i])
        assert 0.3 < ratio < 1.05  # truncation loses signal (here ~45% of the peak)


def test_valid_crop_off_and_resolution_limit(template, planted):
    img, truth, _ = planted
    angles = torch.tensor(truth[["phi", "theta", "psi"]].to_numpy())
    full = match_template(
        img, template, optics=OPTICS, defocus_search=DF_SEARCH, orientations=angles,
        preprocessing=PRE, valid_crop=False, progress=False,
    )  # fmt: skip
    assert full.maps["mip"].shape == (128, 128)
    # resolution-limited: Fourier crop to Nyquist = 1 / (3 px) -> 2/3 of the pixels per axis
    fast = match_template(
        img, template, optics=OPTICS, defocus_search=DF_SEARCH, orientations=angles,
        preprocessing=PRE, resolution_limit=3 * PX, progress=False,
    )  # fmt: skip
    box = fast.box
    assert box == round(32 * 2 / 3)
    scale = fast.metadata["scale_to_input"]
    assert abs(fast.pixel_size - PX * scale) < 1e-9
    # (three orientations only: pick on the MIP, not on z-scores)
    py, px = find_peaks_from_zscore(fast.maps["mip"], 0.0, mask_radius=8)
    cy = (py[:3].double() + box // 2) * scale
    cx = (px[:3].double() + box // 2) * scale
    for _, t in truth.iterrows():
        d = torch.hypot(cy - float(t["y"]), cx - float(t["x"]))
        assert float(d.min()) <= 2.0 * scale + 1


def test_resolution_matched_angular_steps(template, planted, grid):
    """At 2/3 Nyquist the steps scale by 1.5: a 13.3° grid becomes the 20° planting grid."""
    img, truth, _ = planted
    fine = OrientationSearchConfig(
        psi_step=STEP / 1.5, theta_step=STEP / 1.5, match_resolution_limit=True
    )
    res = match_template(
        img, template, optics=OPTICS, defocus_search=DF_SEARCH, orientation_search=fine,
        preprocessing=PRE, resolution_limit=3 * PX, progress=False,
    )  # fmt: skip
    assert res.metadata["angular_step_scale"] == pytest.approx(1.5)
    n = res.metadata["total_orientations"]
    assert n == len(grid.angles())
    assert n * 2.5 < len(fine.angles())  # the unmatched fine grid: ~1.5³ more orientations
    # every planted particle stands out at its position (z 4.8-6.3 at this resolution on a
    # 128² micrograph, against noise maxima ~5 over the whole map), and the two strongest
    # peaks of the map are planted particles. (Orientations are not checked: at 4.5 Å this
    # small synthetic template has pseudo-symmetric views, one particle's best grid
    # orientation is 100° from the planted one; refine at full resolution for angles.)
    z = res.maps["scaled_mip"]
    scale = res.metadata["scale_to_input"]
    for _, t in truth.iterrows():
        y0 = round(t["y"] / scale) - res.box // 2
        x0 = round(t["x"] / scale) - res.box // 2
        assert float(z[y0 - 2 : y0 + 3, x0 - 2 : x0 + 3].max()) > 4.5
    py, px = find_peaks_from_zscore(z, 4.0, mask_radius=8)
    for y, x in zip(py[:2].tolist(), px[:2].tolist(), strict=True):
        d = np.hypot(
            (y + res.box // 2) * scale - truth["y"], (x + res.box // 2) * scale - truth["x"]
        )
        assert d.min() <= 2.0 * scale + 1
    # without a resolution limit the option changes nothing
    assert len(fine.angles()) == len(
        OrientationSearchConfig(psi_step=STEP / 1.5, theta_step=STEP / 1.5).angles()
    )


def test_bundle_roundtrip(planted, tmp_path):
    import mrcfile

    _, _, res = planted
    table = peaks_to_dataframe(extract_peaks(res), res)
    res.tables["particles"] = table
    path = res.save(tmp_path / "bundle")
    with mrcfile.open(path / "mip.mrc") as f:
        assert abs(float(f.voxel_size.x) - PX) < 1e-6
    back = MatchTemplateResult.load(path)
    assert torch.equal(back.maps["scaled_mip"], res.maps["scaled_mip"])
    assert back.total_correlations == res.total_correlations
    assert len(back.tables["particles"]) == len(table)
    assert (path / "particles.star").is_file()
    from corrscan.errors import ResultExistsError

    with pytest.raises(ResultExistsError):
        res.save(path)


def test_input_errors(template):
    img = np.zeros((64, 64), np.float32)
    img[0, 0] = 1
    with pytest.raises(InputError, match="larger"):
        match_template(img[:20, :20], template, optics=OPTICS, progress=False)
    with pytest.raises(InputError, match="cubic"):
        match_template(img, template[:, :, :16], optics=OPTICS, progress=False)
    bad = img.copy()
    bad[3, 3] = np.nan
    with pytest.raises(InputError, match="NaN"):
        match_template(bad, template, optics=OPTICS, progress=False)
    with pytest.raises(InputError, match="constant"):
        match_template(np.ones((64, 64), np.float32), template, optics=OPTICS, progress=False)


@requires_cuda
def test_gpu_matches_cpu(template, planted):
    img, truth, _ = planted
    angles = torch.tensor(truth[["phi", "theta", "psi"]].to_numpy())
    kw = {"optics": OPTICS, "defocus_search": DF_SEARCH, "orientations": angles,
          "preprocessing": PRE, "progress": False}  # fmt: skip
    cpu = match_template(img, template, compute={"device": "cpu"}, **kw)
    gpu = match_template(img, template, compute={"device": "cuda:0"}, **kw)
    np.testing.assert_allclose(gpu.maps["mip"].numpy(), cpu.maps["mip"].numpy(), atol=1e-4)
    np.testing.assert_allclose(
        gpu.maps["correlation_variance"].numpy(),
        cpu.maps["correlation_variance"].numpy(),
        atol=1e-4,
    )

"""build_template and phase_scramble: spectra, determinism, box and centring known answers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from corrscan.core.atoms import atoms_to_volume
from corrscan.core.fourier import next_fast_len
from corrscan.errors import InputError
from corrscan.match3d.template import build_template, default_box_size, phase_scramble

# x, y, z in Å, element: a tiny asymmetric "molecule" 12 Å across in x
MODEL = [
    (0.0, 0.0, 0.0, "C"),
    (12.0, 1.0, 2.0, "N"),
    (4.0, 6.0, 1.0, "O"),
    (6.0, 2.0, 7.0, "S"),
    (3.0, 3.0, 3.0, "C"),
]


def _write_pdb(path, atoms):
    lines = []
    for i, (x, y, z, el) in enumerate(atoms):
        xyz = f"{x:8.3f}{y:8.3f}{z:8.3f}"
        lines.append(
            f"ATOM  {i + 1:5d}  {el:<3s} ALA A{i + 1:4d}    {xyz}  1.00 20.00          {el:>2s}"
        )
    path.write_text("\n".join([*lines, "END"]) + "\n")


def _amplitude(v):
    return np.abs(np.fft.rfftn(np.asarray(v, dtype=np.float64)))


def test_phase_scramble_keeps_amplitudes_and_is_seeded(rng):
    vol = atoms_to_volume(rng.uniform(4, 12, (30, 3)), "C", 1.0, (16, 18, 20), b_factor=60.0)
    assert vol.dtype == np.float32
    out = phase_scramble(vol)
    assert out.shape == vol.shape and out.dtype == np.float32 and np.isrealobj(out)
    a_in, a_out = _amplitude(vol), _amplitude(out)
    assert np.abs(a_out - a_in).max() <= 1e-5 * a_in.max()
    assert out.sum() == pytest.approx(vol.sum(), rel=1e-5)  # DC kept
    # structure destroyed: the scrambled map barely correlates with the original
    c = np.corrcoef(vol.ravel(), out.ravel())[0, 1]
    assert abs(c) < 0.3 and np.abs(out - vol).max() > 0.1 * vol.max()
    # deterministic per seed, different across seeds; torch in -> torch out, same values
    np.testing.assert_array_equal(phase_scramble(vol, seed=42), out)
    other = phase_scramble(vol, seed=7)
    assert np.abs(other - out).max() > 0.1 * vol.max()
    t = phase_scramble(torch.from_numpy(vol))
    assert isinstance(t, torch.Tensor)
    np.testing.assert_allclose(t.numpy(), out, atol=1e-6 * vol.max())
    # float64 in 2D: amplitudes to rounding
    img = rng.normal(size=(15, 16))
    assert np.abs(_amplitude(phase_scramble(img, seed=3)) - _amplitude(img)).max() < 1e-10
    with pytest.raises(InputError):
        phase_scramble(np.array([1.0, np.nan]))


def test_template_from_pdb_matches_atoms_to_volume(tmp_path):
    _write_pdb(tmp_path / "m.pdb", MODEL)
    xyz = np.array([a[:3] for a in MODEL])
    els = [a[3] for a in MODEL]
    b = 8 * np.pi**2 * 1.5**2  # sigma 1.5 Å = 1 voxel: the voxel sums keep the centroid
    vol, mask = build_template(tmp_path / "m.pdb", 1.5, box=20, b_factor=b)
    ref = atoms_to_volume(xyz, els, 1.5, 20, center="mass", b_factor=b, dtype=torch.float64)
    assert vol.shape == (20, 20, 20) and vol.dtype == np.float32
    np.testing.assert_allclose(vol, ref, rtol=0, atol=1e-6 * ref.max())
    # the same from a DataFrame-free tuple, and the Z-weighted centre of mass at voxel 10
    vol2, _ = build_template((xyz, els), 1.5, box=20, b_factor=b)
    np.testing.assert_array_equal(vol, vol2)
    grids = np.meshgrid(*(np.arange(20) for _ in range(3)), indexing="ij")
    com = [float((g * vol).sum() / vol.sum()) for g in grids]
    np.testing.assert_allclose(com, [10.0, 10.0, 10.0], atol=1e-4)
    # the mask is a sphere at the centre covering every atom
    assert mask.dtype == np.float32 and set(np.unique(mask)) == {0.0, 1.0}
    assert mask[10, 10, 10] == 1.0 and mask[0, 0, 0] == 0.0
    assert vol[mask == 0].sum() < 1e-3 * vol.sum()


def test_default_box_is_twice_the_extent_even_and_fast(tmp_path):
    xyz = np.array([a[:3] for a in MODEL])
    # extent 12 Å in x; at 1 Å/voxel: 2 x 12 = 24 (even, 2^3 * 3)
    assert default_box_size(xyz, 1.0) == 24
    # at 0.55 Å/voxel: ceil(2 * 21.8) = 44 -> 11 is not smooth -> 48
    assert default_box_size(xyz, 0.55) == 48
    # 2 x 10.5 = 21 (odd, smooth) -> 22 (not smooth) -> 24
    assert default_box_size(xyz * 10.5 / 12.0, 1.0) == 24
    # tiny models get at least 8
    assert default_box_size(xyz[:1], 1.0) == 8
    for ps in (0.3, 0.7, 1.1, 2.3):
        n = default_box_size(xyz, ps)
        assert n % 2 == 0 and next_fast_len(n) == n and n >= 2 * 12.0 / ps
    vol, mask = build_template((xyz, [a[3] for a in MODEL]), 1.0)
    assert vol.shape == mask.shape == (24, 24, 24)
    # every atom's weight is inside the default box
    assert vol.sum() == pytest.approx(6 + 7 + 8 + 16 + 6, rel=1e-5)


def test_lowpass_invert_scramble_and_centre_options():
    xyz = np.array([a[:3] for a in MODEL])
    els = [a[3] for a in MODEL]
    base, _ = build_template((xyz, els), 1.0, box=24)
    lp, _ = build_template((xyz, els), 1.0, box=24, lowpass_angstrom=6.0)
    # Gaussian low-pass: 0.5 at 1/6 cycles/Å, DC (the sum) unchanged
    assert lp.sum() == pytest.approx(base.sum(), rel=1e-5)
    assert lp.max() < 0.5 * base.max()
    k = np.fft.rfftn(lp) / np.fft.rfftn(base)
    assert abs(k[0, 0, 4]) == pytest.approx(np.exp(-np.log(2) * (4 / 24) ** 2 * 36), rel=1e-4)
    inv, _ = build_template((xyz, els), 1.0, box=24, invert_contrast=True)
    np.testing.assert_array_equal(inv, -base)
    scr, _ = build_template((xyz, els), 1.0, box=24, scramble_phases=True, seed=42)
    np.testing.assert_allclose(scr, phase_scramble(base, seed=42), atol=1e-6 * base.max())
    # centre at a given point: the S atom (the heaviest) at voxel 12
    pt, _ = build_template((xyz, els), 1.0, box=24, center=tuple(xyz[3]))
    assert np.unravel_index(pt.argmax(), pt.shape) == (12, 12, 12)
    with pytest.raises(InputError, match="pixel_size"):
        build_template((xyz, els), 0.0)
    with pytest.raises(InputError, match="path_or_atoms"):
        build_template(xyz, 1.0)

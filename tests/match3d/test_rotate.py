"""Template rotation: both backends equal a float64 SciPy reference of g(R^T (p - c) + c)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from corrscan.errors import InputError
from corrscan.match3d.rotate import TemplateRotator, rotate_volume_reference
from corrscan.match3d.rotations import super_fibonacci_rotations


@pytest.mark.parametrize("order", [1, 3])
@pytest.mark.parametrize("backend", ["torch", "scipy", "numba"])
def test_rotation_matches_reference(rng, order, backend):
    v = np.pad(ndimage.gaussian_filter(rng.normal(size=(12, 13, 14)), 2), 5)
    mats = super_fibonacci_rotations(5)
    rot = TemplateRotator(torch.from_numpy(v).float(), order=order, backend=backend)
    out = rot(torch.from_numpy(mats).float()).numpy()
    ref = np.stack([rotate_volume_reference(v, m, order) for m in mats])
    # order 3: the spline prefilter sees zero padding here, mirror edges in the reference
    tol = 1e-5 if order == 1 else 1e-3
    assert np.abs(out - ref).max() <= tol * np.abs(ref).max()
    np.testing.assert_allclose(rot(torch.eye(3))[0].numpy(), v, atol=1e-5 * np.abs(v).max())


def test_rotation_direction():
    v = np.zeros((9, 9, 9), dtype=np.float32)
    v[4, 4, 6] = 1.0  # +2 along x from the centre voxel
    rz90 = torch.tensor([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    for backend in ("torch", "scipy", "numba"):
        out = TemplateRotator(torch.from_numpy(v), order=1, backend=backend)(rz90)[0]
        assert out[4, 6, 4] == pytest.approx(1.0, abs=1e-5)  # x -> y
    with pytest.raises(InputError):
        TemplateRotator(torch.from_numpy(v), order=2)


def test_cpu_cubic_rotation_is_core_rotate_volume(rng):
    """CPU order 3 = ``core.projection.rotate_volume(g, M^T, order=3)`` (core's convention
    ``V(R r)`` with ``R = M^T``), edges included."""
    from corrscan.core.projection import rotate_volume

    v = rng.normal(size=(9, 10, 11))  # not 0 at the box edge
    mats = super_fibonacci_rotations(4)
    rot = TemplateRotator(torch.from_numpy(v).float(), order=3, backend="scipy")
    out = rot(torch.from_numpy(mats).float())
    core = rotate_volume(v, np.swapaxes(mats, 1, 2), order=3)
    np.testing.assert_allclose(out.numpy(), core, atol=2e-5 * np.abs(v).max())
    # and the same rotation direction as the trilinear path
    lin = TemplateRotator(torch.from_numpy(v).float(), order=1, backend="scipy")(
        torch.from_numpy(mats).float()
    )
    inner = (slice(None), slice(3, 6), slice(3, 7), slice(3, 8))
    assert np.corrcoef(out.numpy()[inner].ravel(), lin.numpy()[inner].ravel())[0, 1] > 0.9


@pytest.mark.parametrize("order", [1, 3])
def test_numba_backend_is_the_torch_backend_edges_included(rng, order):
    """The CPU default (compiled loops) computes exactly the GPU path's maths, also where the
    template is not 0 at its box edge (taps outside the padded coefficients count as 0)."""
    v = torch.from_numpy(rng.normal(size=(9, 10, 11))).float()
    mats = torch.from_numpy(super_fibonacci_rotations(6)).float()
    fast = TemplateRotator(v, order=order, backend="numba")
    assert TemplateRotator(v, order=order).backend == "numba"  # the CPU default
    ref = TemplateRotator(v, order=order, backend="torch")(mats)
    np.testing.assert_allclose(fast(mats).numpy(), ref.numpy(), atol=2e-5 * float(v.abs().max()))

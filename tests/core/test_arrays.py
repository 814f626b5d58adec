"""Array interop, device resolution, validation and batch planning."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from corrscan.core import arrays
from corrscan.errors import InputError
from tests.conftest import requires_cuda


def test_numpy_roundtrip_is_zero_copy():
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    t, restore = arrays.unwrap(a)
    assert t.data_ptr() == a.ctypes.data  # shares memory
    out = restore(t * 2)
    assert isinstance(out, np.ndarray)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, a * 2)


def test_torch_in_torch_out_same_dtype_and_device():
    x = torch.randn(5, 6, dtype=torch.float64)
    t, restore = arrays.unwrap(x)
    assert t is x
    out = restore({"a": t + 1, "b": (t, 3)})
    assert isinstance(out["a"], torch.Tensor) and out["a"].dtype == torch.float64
    assert out["b"][1] == 3


def test_integer_frames_become_float32():
    frames = np.arange(16, dtype=np.uint16).reshape(4, 4)
    t = arrays.to_tensor(frames)
    assert t.dtype == torch.float32
    np.testing.assert_array_equal(t.numpy(), frames.astype(np.float32))


def test_big_endian_and_readonly_input():
    a = np.arange(6, dtype=">f4").reshape(2, 3)
    a.flags.writeable = False
    t = arrays.to_tensor(a)
    np.testing.assert_array_equal(t.numpy(), np.arange(6, dtype=np.float32).reshape(2, 3))


def test_negative_strides_and_keep_integer():
    # flipped views (negative strides) cannot be shared with torch: copied, same values
    a = np.arange(12, dtype=np.float64).reshape(3, 4)[::-1, ::-2]
    t, restore = arrays.unwrap(a)
    np.testing.assert_array_equal(t.numpy(), a)
    out = restore(t + 1)
    assert isinstance(out, np.ndarray) and out.dtype == np.float64
    np.testing.assert_array_equal(out, a + 1)
    # integer data: float32 by default, kept on request (indices beyond 2**24 stay exact)
    idx = np.array([2**24 + 1, 3], dtype=np.int64)
    assert arrays.to_tensor(idx).dtype == torch.float32
    kept = arrays.to_tensor(idx, keep_integer=True)
    assert kept.dtype == torch.int64 and int(kept[0]) == 2**24 + 1
    assert arrays.to_tensor(np.array([True]), keep_integer=True).dtype == torch.bool


def test_unsupported_kind_and_dtype_raise():
    with pytest.raises(InputError, match="NumPy, CuPy or torch"):
        arrays.array_kind({"a": 1})
    with pytest.raises(InputError, match="unsupported dtype"):
        arrays.to_tensor(np.array(["a", "b"]))


def test_resolve_device():
    assert arrays.resolve_device("cpu") == torch.device("cpu")
    assert arrays.resolve_device("auto").type in ("cpu", "cuda")
    with pytest.raises(InputError, match="unknown device|unsupported device"):
        arrays.resolve_device("tpu:0")
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="CUDA is not available"):
            arrays.resolve_device("cuda:0")


def test_check_ndim_and_finite():
    arrays.check_ndim(np.zeros((2, 3)), 2, "image")
    with pytest.raises(InputError, match="image must have 2 dimensions"):
        arrays.check_ndim(np.zeros((2, 3, 4)), 2, "image")
    with pytest.raises(InputError, match="empty"):
        arrays.check_ndim(np.zeros((0, 3)), 2, "image")
    bad = np.ones((3, 3))
    bad[0, 0] = np.nan
    bad[1, 1] = np.inf
    with pytest.raises(InputError, match="1 NaN and 1 infinite"):
        arrays.check_finite(bad, "micrograph")
    arrays.check_finite(np.arange(4), "ints")  # integers are always finite


def test_plan_batch_size_respects_budget(monkeypatch):
    monkeypatch.setattr(arrays, "free_memory_bytes", lambda device="cpu": 1000)
    assert arrays.plan_batch_size(100, fraction=0.5) == 5
    assert arrays.plan_batch_size(100, fraction=0.5, fixed_bytes=200) == 3
    assert arrays.plan_batch_size(100, fraction=1.0, max_batch=4) == 4
    with pytest.raises(InputError, match="not enough memory"):
        arrays.plan_batch_size(2000)


def test_free_memory_positive():
    assert arrays.free_memory_bytes("cpu") > 0


@requires_cuda
def test_cuda_roundtrip_keeps_device():
    x = torch.randn(4, 4, device="cuda")
    t, restore = arrays.unwrap(x)
    assert restore(t * 2).device == x.device

"""Array interop, device choice, dtype policy and batch-size planning.

NumPy, CuPy and torch arrays come in; kernels run on torch tensors; results go back as the
same kind on the same device. Conversions are zero-copy where the memory allows it (NumPy <->
CPU torch through the buffer protocol, CuPy <-> CUDA torch through DLPack).

Typical use inside a public function::

    t, restore = unwrap(image, dtype=torch.float32, name="micrograph")
    out = kernel(t)
    return restore(out)
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from typing import Any, Literal

import numpy as np
import torch

from corrscan.errors import InputError

ArrayKind = Literal["numpy", "cupy", "torch"]
DeviceLike = str | torch.device | None

__all__ = [
    "ArrayKind",
    "array_kind",
    "as_numpy",
    "check_finite",
    "check_ndim",
    "free_memory_bytes",
    "plan_batch_size",
    "resolve_device",
    "to_like",
    "to_tensor",
    "unwrap",
]


def array_kind(x: Any) -> ArrayKind:
    """Return ``"numpy"``, ``"cupy"`` or ``"torch"`` for an array; anything else is an error."""
    if isinstance(x, torch.Tensor):
        return "torch"
    if isinstance(x, np.ndarray):
        return "numpy"
    mod = type(x).__module__
    if mod.startswith("cupy"):
        return "cupy"
    if isinstance(x, (list, tuple, float, int, np.generic)):
        return "numpy"
    raise InputError(
        f"expected a NumPy, CuPy or torch array, got {type(x).__module__}.{type(x).__name__}"
    )


def resolve_device(device: DeviceLike = "auto") -> torch.device:
    """Turn ``"auto" | "cpu" | "cuda" | "cuda:N" | torch.device | None`` into a ``torch.device``.

    ``"auto"`` and ``None`` pick ``cuda:0`` when CUDA is available, else the CPU. Asking for a
    CUDA device that is not there raises :class:`InputError`.
    """
    if device is None or (isinstance(device, str) and device == "auto"):
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise InputError(f"unknown device {device!r}: use 'auto', 'cpu' or 'cuda:N'") from exc
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"device {device!r} requested but CUDA is not available here")
        index = dev.index or 0
        if index >= torch.cuda.device_count():
            raise InputError(
                f"device {device!r} requested but only {torch.cuda.device_count()} CUDA device(s)"
            )
        dev = torch.device("cuda", index)
    elif dev.type != "cpu":
        raise InputError(f"unsupported device {device!r}: use 'auto', 'cpu' or 'cuda:N'")
    return dev


def to_tensor(
    x: Any,
    *,
    device: DeviceLike = None,
    dtype: torch.dtype | None = None,
    name: str = "array",
    keep_integer: bool = False,
) -> torch.Tensor:
    """Convert a NumPy/CuPy/torch array to a tensor without copying where possible.

    NumPy arrays are shared with the tensor (zero copy) unless they have a non-native byte
    order or negative strides (e.g. ``a[::-1]``, ``np.flip``), which torch cannot view: those
    are copied.

    Parameters
    ----------
    x
        Input array (any shape). Python scalars and sequences are accepted too.
    device
        Target device; ``None`` keeps the array's own device (NumPy -> CPU).
    dtype
        Target dtype; ``None`` keeps floating dtypes and turns integer/bool data into float32
        (unless ``keep_integer``).
    name
        Name used in error messages.
    keep_integer
        With ``dtype=None``, keep integer and bool dtypes as they are (indices, labels).
    """
    kind = array_kind(x)
    if kind == "torch":
        t = x
    elif kind == "cupy":
        t = torch.from_dlpack(x)
    else:
        a = np.asarray(x)
        if a.dtype.kind not in "fciub":
            raise InputError(f"{name}: unsupported dtype {a.dtype}")
        if not a.dtype.isnative:
            a = a.astype(a.dtype.newbyteorder("="))
        if any(s < 0 for s in a.strides):
            a = a.copy()
        if not a.flags.writeable:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                t = torch.from_numpy(a)
        else:
            t = torch.from_numpy(a)
    if dtype is None and not (keep_integer or t.is_floating_point() or t.is_complex()):
        dtype = torch.float32
    if device is not None:
        dev = resolve_device(device)
        t = t.to(device=dev, dtype=dtype) if dtype is not None else t.to(device=dev)
    elif dtype is not None:
        t = t.to(dtype=dtype)
    return t


def to_like(t: torch.Tensor, like: Any) -> Any:
    """Return tensor ``t`` as the same kind of array as ``like``, on ``like``'s device.

    NumPy: a CPU ``ndarray`` (zero copy for CPU tensors); CuPy: through DLPack on ``like``'s
    device; torch: moved to ``like.device``.
    """
    kind = array_kind(like)
    if kind == "torch":
        return t.to(like.device) if t.device != like.device else t
    if kind == "cupy":
        import cupy

        with cupy.cuda.Device(like.device.id):
            target = t if t.device.type == "cuda" else t.to(f"cuda:{like.device.id}")
            return cupy.from_dlpack(target.contiguous())
    return t.detach().cpu().numpy()


def as_numpy(x: Any) -> np.ndarray:
    """Host NumPy copy/view of any supported array (for I/O and plotting)."""
    kind = array_kind(x)
    if kind == "torch":
        return x.detach().cpu().numpy()
    if kind == "cupy":
        return x.get()
    return np.asarray(x)


def unwrap(
    x: Any,
    *,
    device: DeviceLike = None,
    dtype: torch.dtype | None = None,
    name: str = "array",
) -> tuple[torch.Tensor, Callable[[Any], Any]]:
    """``(tensor, restore)``: the tensor to compute on and a function mapping results back.

    Parameters
    ----------
    x
        NumPy/CuPy/torch array (or Python scalar/sequence, treated as NumPy).
    device, dtype, name
        As :func:`to_tensor`.

    Returns
    -------
    tensor
        ``x`` as a tensor (zero copy where possible).
    restore
        Accepts a tensor, or a dict/tuple/list of tensors (other values pass through), and
        converts every tensor to the kind and device of ``x`` (NumPy -> host ``ndarray``,
        CuPy -> CuPy on ``x``'s GPU, torch -> ``x.device``); dtypes are kept.
    """
    t = to_tensor(x, device=device, dtype=dtype, name=name)

    def restore(result: Any) -> Any:
        if isinstance(result, torch.Tensor):
            return to_like(result, x)
        if isinstance(result, dict):
            return {k: restore(v) for k, v in result.items()}
        if isinstance(result, (tuple, list)):
            return type(result)(restore(v) for v in result)
        return result

    return t, restore


def check_ndim(t: Any, ndims: int | Sequence[int], name: str, *, layout: str = "") -> None:
    """Raise :class:`InputError` unless ``t.ndim`` is one of ``ndims`` and no axis is empty."""
    allowed = (ndims,) if isinstance(ndims, int) else tuple(ndims)
    if t.ndim not in allowed:
        want = " or ".join(str(n) for n in allowed)
        hint = f" ({layout})" if layout else ""
        raise InputError(f"{name} must have {want} dimensions{hint}, got shape {tuple(t.shape)}")
    if any(s == 0 for s in t.shape):
        raise InputError(f"{name} is empty: shape {tuple(t.shape)}")


def check_finite(t: torch.Tensor | np.ndarray, name: str) -> None:
    """Raise :class:`InputError` if ``t`` contains NaN or Inf, saying how many."""
    tt = to_tensor(t)
    if not (tt.is_floating_point() or tt.is_complex()):
        return
    bad = ~torch.isfinite(tt)
    n_bad = int(bad.sum())
    if n_bad:
        n_nan = int(torch.isnan(tt).sum())
        raise InputError(
            f"{name} contains {n_nan} NaN and {n_bad - n_nan} infinite value(s) out of "
            f"{tt.numel()}: clean or mask the data first"
        )


def free_memory_bytes(device: DeviceLike = "cpu") -> int:
    """Free memory on ``device`` in bytes (CUDA: ``mem_get_info``; CPU: available RAM)."""
    dev = resolve_device(device)
    if dev.type == "cuda":
        free, _total = torch.cuda.mem_get_info(dev)
        return int(free)
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES"))


def plan_batch_size(
    bytes_per_item: int,
    *,
    device: DeviceLike = "cpu",
    fixed_bytes: int = 0,
    fraction: float = 0.5,
    max_batch: int | None = None,
    min_batch: int = 1,
) -> int:
    """Largest batch whose working set fits in ``fraction`` of the free memory.

    Parameters
    ----------
    bytes_per_item
        Memory one batch item needs (all temporaries included), in bytes.
    device
        Where the batch will live.
    fixed_bytes
        Memory needed regardless of batch size (accumulators, inputs), in bytes.
    fraction
        Share of the free memory the batch may use.
    max_batch, min_batch
        Clamp the result. If even ``min_batch`` items do not fit, :class:`InputError` says how
        much memory is missing.
    """
    if bytes_per_item <= 0:
        raise InputError(f"bytes_per_item must be positive, got {bytes_per_item}")
    budget = int(free_memory_bytes(device) * fraction) - fixed_bytes
    n = budget // bytes_per_item
    if n < min_batch:
        need = fixed_bytes + min_batch * bytes_per_item
        raise InputError(
            f"not enough memory on {resolve_device(device)}: need {need / 2**30:.2f} GiB, "
            f"{free_memory_bytes(device) * fraction / 2**30:.2f} GiB usable; "
            "reduce the image, template or batch size"
        )
    if max_batch is not None:
        n = min(n, max_batch)
    return int(max(n, min_batch))

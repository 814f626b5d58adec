"""Mergeable search statistics: per-pixel maximum with payloads, mean and variance.

A correlation search produces, for every orientation (and defocus, pixel size, ...), a score
map of shape ``shape``. The accumulators here consume those maps in batches
``(B, *shape)`` and keep

* :class:`MaxAccumulator`: the per-pixel maximum over everything seen and, for each pixel, the
  payloads (search index, angles, defocus, ...) of the batch item that won;
* :class:`MomentAccumulator`: the per-pixel count, mean and (population) variance;
* :class:`SearchStatistics`: both, updated together.

Every update first reduces over the batch axis in the scores' floating dtype (``float32`` for
the jobs): max/argmax, sum and sum of squares. The batch sums are then folded into an **exact,
order-independent** state, so that :meth:`merge` of partial accumulators built from any split of
the update sequence is bit-for-bit identical to a single pass (a split happens between updates,
each update being one batch).

Exactness scheme (MomentAccumulator)
------------------------------------
Each per-update batch sum ``x`` (a float32 or float64 number per pixel, converted exactly to
float64) is written as a two-limb fixed-point integer::

    x = hi + lo * 2**-52,   hi = trunc(x)  (int64),   lo = round((x - hi) * 2**52)  (int64)

``x - trunc(x)`` is exact in float64, and the rounding of ``lo`` is exact whenever
``|x| >= 1`` (the float64 ulp of ``x`` is then a multiple of ``2**-52``). So for sums of
magnitude >= 1 the accumulator holds the *exact* sum of the batch sums; below that, each update
is rounded to the nearest ``2**-52`` (about ``2.2e-16``, absolute). Integer additions are
associative, so any grouping of updates gives the same integers. ``lo`` is carried into ``hi``
lazily (every 1024 updates and before any read, merge or ``state_dict``), leaving ``lo`` in
``[0, 2**52)``: the normalised state is unique.

* Resolution: ``2**-52`` per update (absolute), exact for batch sums with ``|x| >= 1``.
* Capacity: ``|total| < 2**62`` (about ``4.6e18``) per pixel for the sum and the sum of
  squares; a single batch sum must be below ``2**62`` too. Both are checked with a
  conservative running bound and raise :class:`InputError` before any overflow on the CPU (on
  GPUs, at the next carry/read/merge, to avoid host synchronisation).
* Batch reduction: pairwise (tree) sums made only of element-wise IEEE additions and
  products in a fixed order (:func:`batch_sum`, :func:`batch_sum_of_squares`), so a batch
  reduces to the same bits on every device, thread count and slab size; torch's native
  ``sum(0)`` was measured to change bits with the tensor layout, and is not used. The float32
  rounding of a batch sum (relative ``~log2(B) * 6e-8``) is the only approximation with
  respect to an exact float64 reference; it is independent from update to update, so it does
  not grow with the number of updates.
* Capacity checks cost no extra pass: ``max s2`` bounds the squares and ``sqrt(B * max s2)``
  bounds ``|s1|`` (Cauchy-Schwarz); NaN/Inf propagate into the bound and are reported.
* Variance = ``S2/n - (S1/n)**2`` evaluated in float64 from the exact sums (clamped at 0):
  relative accuracy about ``1e-7 * (mean/std)**2``; scores with ``|mean| >> std`` (not the case for
  normalised correlation maps) should be centred first (``shift=``).

Ties (MaxAccumulator)
---------------------
Within a batch and across updates and merges, a tie keeps the payloads of the item with the
smaller ``index`` payload (or, when there is no ``index`` payload, the first payload name). With
unique index values (a global search index) the result is therefore independent of the update
order and of how the search was split. Scores must be finite; NaN makes the result undefined.

State dicts
-----------
``state_dict()`` returns a plain ``dict`` of tensors, ``str``, ``int``, ``float`` and lists of
``str`` (safe for ``torch.save(..., weights_only=True)``, Dask transfer and checkpoints);
``from_state_dict(d, device=None)`` rebuilds the accumulator.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from corrscan.core.arrays import DeviceLike, resolve_device, to_tensor
from corrscan.errors import InputError

__all__ = [
    "FRAC_BITS",
    "MaxAccumulator",
    "MomentAccumulator",
    "SearchStatistics",
    "batch_argmax",
    "batch_sum",
    "batch_sum_of_squares",
    "first_argmax",
    "reduce_batch",
]

FRAC_BITS = 52
"""Fractional bits of the fixed-point moment accumulators (resolution ``2**-52``)."""

_LO_ONE = 1 << FRAC_BITS
_LO_SCALE = float(2.0**FRAC_BITS)
_INV_LO_SCALE = float(2.0**-FRAC_BITS)
_CARRY_EVERY = 1024  # |lo| grows by <= 2**52 per update: < 2**62.01 after 1024 updates
_CAPACITY = float(2.0**62)
_STATE_VERSION = 1


# ----------------------------------------------------------------------------- helpers


def _as_shape(shape: Sequence[int] | int | torch.Size) -> tuple[int, ...]:
    if isinstance(shape, int):
        shape = (shape,)
    try:
        out = tuple(int(s) for s in shape)
    except TypeError as exc:
        raise InputError(f"shape must be a sequence of ints, got {shape!r}") from exc
    if any(s <= 0 for s in out):
        raise InputError(f"shape must have positive sizes, got {out}")
    return out


def _as_batch(scores: Any, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """``scores`` as a ``(B, *shape)`` floating tensor on ``device`` (a single map gets B=1)."""
    t = to_tensor(scores, device=device, name="scores")
    if t.is_complex():
        raise InputError("scores must be real, got a complex array")
    if t.dtype not in (torch.float32, torch.float64):
        t = t.to(torch.float32)
    if tuple(t.shape) == shape:
        t = t.unsqueeze(0)
    if t.ndim != len(shape) + 1 or tuple(t.shape[1:]) != shape:
        raise InputError(
            f"scores must have shape (B, {', '.join(map(str, shape))}) or "
            f"{shape}, got {tuple(t.shape)}"
        )
    if t.shape[0] == 0:
        raise InputError("scores batch is empty (B = 0)")
    return t


def _tree_sum_(t: torch.Tensor) -> torch.Tensor:
    """Pairwise sum over axis 0 of a scratch tensor ``t`` (modified in place); returns ``t[0]``.

    Level by level, ``t[:L-m] += t[m:L]`` with ``m = ceil(L/2)``: a fixed sequence of
    element-wise IEEE additions, identical on every device and thread count.
    """
    n = t.shape[0]
    while n > 1:
        m = (n + 1) // 2
        t[: n - m] += t[m:n]
        n = m
    return t[0]


def batch_sum(x: torch.Tensor) -> torch.Tensor:
    """Deterministic pairwise sum over axis 0 of ``x`` `(B, ...)` -> `(...)`, in ``x.dtype``.

    The first level writes into a new ``(ceil(B/2), ...)`` buffer (``x`` is not modified); the
    result is the same on any device and thread count.
    """
    n = x.shape[0]
    if n == 1:
        return x[0].clone()
    m = (n + 1) // 2
    t = torch.empty((m, *x.shape[1:]), dtype=x.dtype, device=x.device)
    torch.add(x[: n - m], x[m:n], out=t[: n - m])
    if m > n - m:
        t[n - m :].copy_(x[n - m : m])
    return _tree_sum_(t)


def batch_sum_of_squares(x: torch.Tensor) -> torch.Tensor:
    """Deterministic pairwise sum of ``x**2`` over axis 0 `(B, ...)` -> `(...)`, in ``x.dtype``.

    Products and additions are separate element-wise operations (no fused multiply-add), so the
    result is the same on any device and thread count.
    """
    n = x.shape[0]
    if n == 1:
        return x[0] * x[0]
    m = (n + 1) // 2
    t = x[:m] * x[:m]
    t[: n - m] += x[m:n] * x[m:n]
    return _tree_sum_(t)


def batch_argmax(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Max and argmax over axis 0 of ``x`` `(B, ...)`: ``(values (...), int64 indices (...))``.

    Ties keep the first (lowest) batch position (see :func:`first_argmax`).
    """
    m = x.amax(0)
    return m, first_argmax(x, m)


REDUCE_CHUNK_BYTES = 512 << 20
"""Batch sums run over slabs of the first map axis of at most this many input bytes (bounds
the temporaries). Results do not depend on it: every operation is element-wise across
pixels."""


def first_argmax(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """First batch position where ``x`` `(B, ...)` equals its maximum ``m`` `(...)`.

    Vectorised as ``B - amax(where(x == m, B - b, 0))`` (a native, fast reduction; torch's
    ``argmax(dim=0)`` is very slow on the CPU). Positions of NaN maxima are clamped to
    ``B - 1``. Returns int64 `(...)`.
    """
    b = x.shape[0]
    wdt = torch.uint8 if b < 256 else (torch.int16 if b < 2**15 else torch.int64)
    w = torch.arange(b, 0, -1, dtype=wdt, device=x.device).reshape((b,) + (1,) * (x.ndim - 1))
    hit = torch.where(x == m, w, torch.zeros((), dtype=wdt, device=x.device))
    return (b - hit.amax(0).to(torch.int64)).clamp_(max=b - 1)


def reduce_batch(x: torch.Tensor, *, maxima: bool = True, sums: bool = True) -> dict[str, Any]:
    """Batch reductions of `(B, *shape)` scores in their own dtype.

    Returns ``max`` `(*shape)` (``amax`` over the batch) and/or ``s1``, ``s2`` `(*shape)`
    (:func:`batch_sum`, :func:`batch_sum_of_squares`: pairwise, element-wise operations only,
    so the bits do not depend on the device's reduction kernels, the thread count or the
    slab size :data:`REDUCE_CHUNK_BYTES`).
    """
    out: dict[str, Any] = {}
    if maxima:
        out["max"] = x.amax(0)
    if sums:
        shape = tuple(x.shape[1:])
        per_row = x.shape[0] * x.element_size() * max(1, math.prod(shape[1:]))
        rows = max(1, REDUCE_CHUNK_BYTES // per_row)
        if rows >= shape[0]:
            out["s1"], out["s2"] = batch_sum(x), batch_sum_of_squares(x)
            return out
        s1 = torch.empty(shape, dtype=x.dtype, device=x.device)
        s2 = torch.empty(shape, dtype=x.dtype, device=x.device)
        for r0 in range(0, shape[0], rows):
            sl = slice(r0, min(shape[0], r0 + rows))
            xc = x[:, sl]
            s1[sl] = batch_sum(xc)
            s2[sl] = batch_sum_of_squares(xc)
        out["s1"], out["s2"] = s1, s2
    return out


def _fixed_point_split(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Split a float tensor into int64 limbs ``hi + lo * 2**-52`` (exactly when |x| >= 1).

    ``hi = trunc(x)`` (float -> int64 conversion truncates), ``x - hi`` is exact, the
    power-of-two scaling is exact, then round-half-even: the limbs equal those of the
    float64 value, whatever the input dtype.
    """
    hi = x.to(torch.int64)
    t = x - hi.to(x.dtype)
    lo = t.mul_(_LO_SCALE).round_().to(torch.int64)
    return hi, lo


def _state_tensor(d: Mapping[str, Any], key: str, owner: str) -> torch.Tensor:
    try:
        v = d[key]
    except KeyError:
        raise InputError(f"{owner} state dict is missing {key!r}") from None
    if not isinstance(v, torch.Tensor):
        raise InputError(f"{owner} state dict entry {key!r} must be a tensor, got {type(v)}")
    return v


def _check_format(d: Mapping[str, Any], fmt: str) -> None:
    if not isinstance(d, Mapping) or d.get("format") != fmt:
        got = d.get("format") if isinstance(d, Mapping) else type(d).__name__
        raise InputError(f"not a {fmt} state dict (format={got!r})")
    if int(d.get("version", -1)) != _STATE_VERSION:
        raise InputError(
            f"{fmt} state dict version {d.get('version')!r} is not supported "
            f"(this corrscan reads version {_STATE_VERSION})"
        )


# ----------------------------------------------------------------------------- max


class MaxAccumulator:
    """Per-pixel maximum over a search, with the payloads of the winning item.

    Parameters
    ----------
    shape
        Shape of one score map, e.g. `(H, W)` or `(D, H, W)`.
    payload_names
        Names of the per-item payloads kept at the winning item (e.g. ``("index", "defocus")``).
        ``"index"`` (or, without it, the first name) breaks ties: the smaller value wins.
    device
        Device of the state (``"auto"``, ``"cpu"``, ``"cuda:N"``; ``None`` = auto).
    dtype
        Floating dtype of the stored maximum.

    Notes
    -----
    State: ``max`` `(*shape)` starts at ``-inf``; payload maps `(*shape)` are created at the
    first update with each payload's dtype, integers kept exact (the tie-break payload starts
    at its dtype's maximum / ``inf``, others at -1 / NaN). Pixels keep those fill values only
    if never updated. Scores of another floating dtype than ``dtype`` are rounded to ``dtype``
    before they are compared, so ties (and the merge invariance) are decided in the stored
    precision.
    """

    def __init__(
        self,
        shape: Sequence[int] | int,
        payload_names: Sequence[str] = ("index",),
        device: DeviceLike = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        self.shape = _as_shape(shape)
        if isinstance(payload_names, str):
            payload_names = (payload_names,)
        names = tuple(str(n) for n in payload_names)
        if len(set(names)) != len(names):
            raise InputError(f"payload_names must be unique, got {names}")
        self.payload_names = names
        self.tie_break: str | None = "index" if "index" in names else (names[0] if names else None)
        if not dtype.is_floating_point:
            raise InputError(f"dtype must be floating, got {dtype}")
        self.device = resolve_device(device)
        self.dtype = dtype
        self._max = torch.full(self.shape, -math.inf, dtype=dtype, device=self.device)
        self._payloads: dict[str, torch.Tensor] = {}
        self.n_updates = 0

    # -- properties
    @property
    def max(self) -> torch.Tensor:
        """Per-pixel maximum `(*shape)`."""
        return self._max

    @property
    def payloads(self) -> dict[str, torch.Tensor]:
        """Payload maps `(*shape)` of the winning items, by name (empty before any update)."""
        return dict(self._payloads)

    # -- internals
    def _fill_payload(self, name: str, dtype: torch.dtype) -> torch.Tensor:
        if dtype.is_floating_point:
            fill: float | int = math.inf if name == self.tie_break else math.nan
        elif dtype == torch.bool:
            raise InputError(f"payload {name!r} must be numeric, got bool")
        else:
            info = torch.iinfo(dtype)
            fill = info.max if name == self.tie_break or info.min == 0 else -1
        return torch.full(self.shape, fill, dtype=dtype, device=self.device)

    def _ensure_payloads(self, dtypes: Mapping[str, torch.dtype]) -> None:
        for name in self.payload_names:
            if name not in self._payloads:
                self._payloads[name] = self._fill_payload(name, dtypes[name])

    def _fold(self, new_max: torch.Tensor, new_payloads: Mapping[str, torch.Tensor]) -> None:
        """Fold per-pixel candidates (already reduced) into the state with the tie rule."""
        cur = self._max
        new_max = new_max.to(cur.dtype)
        better = new_max > cur
        if self.tie_break is not None:
            ties = new_max == cur
            if cur.device.type != "cpu" or bool(ties.any()):  # no host sync on GPUs
                tb_new = new_payloads[self.tie_break]
                tb_cur = self._payloads[self.tie_break]
                better |= ties & (tb_new < tb_cur)
        torch.maximum(cur, new_max, out=cur)
        for name in self.payload_names:
            old = self._payloads[name]
            torch.where(better, new_payloads[name].to(old.dtype), old, out=old)

    # -- public API
    def update(self, scores: Any, payloads: Mapping[str, Any] | None = None) -> MaxAccumulator:
        """Add a batch of score maps.

        Parameters
        ----------
        scores
            `(B, *shape)` scores (NumPy/CuPy/torch; a single `(*shape)` map is taken as B=1).
        payloads
            ``{name: (B,) values}`` for every name in ``payload_names`` (the search index,
            angles in degrees, defocus in Å, ...).

        Returns
        -------
        self
        """
        x = _as_batch(scores, self.shape, self.device)
        pl, perm = self._prepare_payloads(payloads, x.shape[0])
        xm = x if perm is None else x.index_select(0, perm)
        self._fold_batch(xm, xm.amax(0), pl)
        return self

    def fused_buffers(
        self, payload_dtypes: Mapping[str, torch.dtype]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The stored maximum and payload maps, for a fused kernel that folds its own
        candidates in place (created at their fill values if needed; counts as one update).

        The caller must apply this class's rule exactly: a larger score wins; on a tie the
        smaller tie-break payload wins (:meth:`update` and :meth:`update_reduced` are the
        reference implementations); a NaN score must not be stored (scores are meant to be
        finite, see the module notes).

        Parameters
        ----------
        payload_dtypes
            ``{name: dtype}`` for every name in ``payload_names``.

        Returns
        -------
        tuple
            ``(max, {name: payload})``: the accumulator's own `(*shape)` contiguous tensors.
        """
        missing = [n for n in self.payload_names if n not in payload_dtypes]
        if missing:
            raise InputError(f"payload_dtypes is missing {missing}")
        self._ensure_payloads(payload_dtypes)
        self.n_updates += 1
        return self._max, {n: self._payloads[n] for n in self.payload_names}

    def update_reduced(
        self,
        max_map: torch.Tensor,
        payload_maps: Mapping[str, torch.Tensor],
        *,
        candidates: torch.Tensor | None = None,
    ) -> MaxAccumulator:
        """Fold candidates that the caller already reduced over its batch.

        For callers with a fused hot loop (they compute the batch maximum and the winning
        item's payloads themselves). Same rule as :meth:`update`: a larger score wins; on a
        tie the smaller tie-break payload (``"index"``) wins, so the result does not depend
        on the order of updates and merges.

        Parameters
        ----------
        max_map
            `(*shape)` candidate maximum per pixel (cast to the stored dtype).
        payload_maps
            ``{name: (*shape) tensor}`` for every name in ``payload_names``: the payloads of
            the item that reached ``max_map``. Values only matter where ``max_map`` is ``>=``
            the stored maximum (elsewhere they may hold anything, e.g. a reused buffer).
        candidates
            Optional `(n,)` int64 flat indices (row-major over ``shape``) of the pixels where
            ``max_map >= max`` (ties included), when the caller already computed them; other
            pixels are not looked at. ``None``: computed here.

        Returns
        -------
        self

        Notes
        -----
        On the CPU only the candidate pixels are written when they are a small fraction (the
        usual case after the first updates); GPUs update every pixel (no host sync).
        """
        new_max = self._as_map(max_map, "max_map", floating=True)
        missing = [n for n in self.payload_names if n not in payload_maps]
        extra = [n for n in payload_maps if n not in self.payload_names]
        if missing or extra:
            raise InputError(
                f"payload_maps must have exactly the keys {list(self.payload_names)}; "
                f"missing {missing}, unexpected {extra}"
            )
        pl = {n: self._as_map(payload_maps[n], f"payload map {n!r}") for n in self.payload_names}
        self._ensure_payloads({n: p.dtype for n, p in pl.items()})
        new_max = new_max.to(self.dtype)
        self.n_updates += 1
        cur = self._max
        if cur.device.type == "cpu":
            if candidates is None:
                cand = (new_max >= cur) if self.tie_break is not None else (new_max > cur)
                idx = cand.view(-1).nonzero().squeeze(1)
            else:
                idx = candidates.to(device=cur.device, dtype=torch.int64).reshape(-1)
            if idx.numel() * 3 <= cur.numel():
                if idx.numel() == 0:
                    return self
                # few torch calls: callers run this from several threads at once
                flat_cur = cur.view(-1)
                ms = new_max.reshape(-1).index_select(0, idx)
                cur_c = flat_cur.index_select(0, idx)
                better = ms > cur_c
                if self.tie_break is not None:
                    eq = ms == cur_c
                    if bool(eq.any()):
                        tb_new = pl[self.tie_break].reshape(-1).index_select(0, idx)
                        tb_cur = self._payloads[self.tie_break].view(-1).index_select(0, idx)
                        better |= eq & (tb_new < tb_cur)
                sel = idx[better]
                flat_cur[sel] = ms[better]
                for name in self.payload_names:
                    old = self._payloads[name].view(-1)
                    new = pl[name].reshape(-1)[sel]
                    old[sel] = new if new.dtype == old.dtype else new.to(old.dtype)
                return self
        self._fold(new_max, pl)
        return self

    def _as_map(self, x: Any, name: str, floating: bool = False) -> torch.Tensor:
        """A `(*shape)` real tensor on the accumulator's device (no copy when it is one)."""
        if not (isinstance(x, torch.Tensor) and x.device == self.device):
            x = to_tensor(x, device=self.device, name=name, keep_integer=not floating)
        if tuple(x.shape) != self.shape or x.dtype == torch.bool or x.is_complex():
            raise InputError(
                f"{name} must be real numbers of the accumulator's shape {self.shape}, got "
                f"{x.dtype} {tuple(x.shape)}"
            )
        return x

    def _prepare_payloads(
        self, payloads: Mapping[str, Any] | None, b: int
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
        """Validated `(B,)` payload tensors, and the batch order that sorts the tie payload
        (``None`` when it is already strictly increasing, the usual case)."""
        payloads = dict(payloads or {})
        missing = [n for n in self.payload_names if n not in payloads]
        extra = [n for n in payloads if n not in self.payload_names]
        if missing or extra:
            raise InputError(
                f"payloads must have exactly the keys {list(self.payload_names)}; "
                f"missing {missing}, unexpected {extra}"
            )
        pl: dict[str, torch.Tensor] = {}
        for name in self.payload_names:
            p = to_tensor(
                payloads[name], device=self.device, name=f"payload {name!r}", keep_integer=True
            )
            if p.dtype == torch.bool or p.is_complex():
                raise InputError(f"payload {name!r} must be real numbers, got {p.dtype}")
            p = p.reshape(-1)
            if p.numel() != b:
                raise InputError(
                    f"payload {name!r} must have one value per batch item ({b}), got {p.numel()}"
                )
            pl[name] = p
        self._ensure_payloads({n: p.dtype for n, p in pl.items()})
        perm = None
        if b > 1 and self.tie_break is not None:
            tb = pl[self.tie_break]
            if not bool((tb[1:] > tb[:-1]).all()):
                # the batch argmax keeps the first position: order by the tie payload
                perm = torch.sort(tb, stable=True).indices
                pl = {n: p.index_select(0, perm) for n, p in pl.items()}
        return pl, perm

    def _fold_batch(
        self, x: torch.Tensor, bmax: torch.Tensor, pl: Mapping[str, torch.Tensor]
    ) -> None:
        """Fold a batch ``x`` `(B, *shape)` with its maximum ``bmax`` and payloads ``pl``.

        On the CPU, the argmax is only evaluated at the pixels where the batch reaches the
        stored maximum (after the first updates, a small fraction); on GPUs everywhere
        (no host synchronisation).
        """
        cur = self._max
        # compare, find the argmax and break ties in the stored precision (rounding is
        # monotone, so the cast batch maximum is the maximum of the cast batch)
        x = x.to(cur.dtype)
        bmax = bmax.to(cur.dtype)
        self.n_updates += 1
        if cur.device.type == "cpu":
            cand = (bmax >= cur) if self.tie_break is not None else (bmax > cur)
            nb = int(cand.sum())
            if nb == 0:
                return
            if nb * 3 <= cand.numel():
                coords = cand.nonzero(as_tuple=True)
                xs = x[(slice(None), *coords)]  # (B, nb) gather
                ms = bmax[coords]
                arg = first_argmax(xs, ms)
                new_pl = {n: p.take(arg) for n, p in pl.items()}
                cur_c = cur[coords]
                better = ms > cur_c
                if self.tie_break is not None:
                    tb_cur = self._payloads[self.tie_break][coords]
                    better |= (ms == cur_c) & (new_pl[self.tie_break] < tb_cur)
                sel = tuple(c[better] for c in coords)
                cur[sel] = ms[better]
                for name in self.payload_names:
                    old = self._payloads[name]
                    old[sel] = new_pl[name][better].to(old.dtype)
                return
        arg = first_argmax(x, bmax).reshape(-1)
        gathered = {n: p.take(arg).reshape(self.shape) for n, p in pl.items()}
        self._fold(bmax, gathered)

    def merge(self, other: MaxAccumulator) -> MaxAccumulator:
        """Fold another accumulator (same shape and payloads) into this one; returns ``self``."""
        if not isinstance(other, MaxAccumulator):
            raise InputError(f"can only merge a MaxAccumulator, got {type(other).__name__}")
        if other.shape != self.shape or other.payload_names != self.payload_names:
            raise InputError(
                f"cannot merge MaxAccumulator(shape={other.shape}, payloads="
                f"{other.payload_names}) into shape={self.shape}, payloads={self.payload_names}"
            )
        if other.n_updates == 0 and not other._payloads:
            return self
        o_pl = {n: p.to(self.device) for n, p in other._payloads.items()}
        self._ensure_payloads({n: p.dtype for n, p in o_pl.items()})
        self._fold(other._max.to(self.device), o_pl)
        self.n_updates += other.n_updates
        return self

    def state_dict(self) -> dict[str, Any]:
        """Plain-data state: tensors (on the CPU) and strings/ints."""
        return {
            "format": "corrscan.MaxAccumulator",
            "version": _STATE_VERSION,
            "shape": list(self.shape),
            "payload_names": list(self.payload_names),
            "n_updates": int(self.n_updates),
            "max": self._max.detach().cpu().clone(),
            "payloads": {n: p.detach().cpu().clone() for n, p in self._payloads.items()},
        }

    @classmethod
    def from_state_dict(cls, d: Mapping[str, Any], device: DeviceLike = None) -> MaxAccumulator:
        """Rebuild from :meth:`state_dict` output on ``device`` (``None`` = auto)."""
        _check_format(d, "corrscan.MaxAccumulator")
        mx = _state_tensor(d, "max", "MaxAccumulator")
        acc = cls(d["shape"], tuple(d["payload_names"]), device=device, dtype=mx.dtype)
        if tuple(mx.shape) != acc.shape:
            raise InputError(f"MaxAccumulator state: max has shape {tuple(mx.shape)}")
        acc._max = mx.to(acc.device).clone()
        for name, p in dict(d.get("payloads", {})).items():
            if name not in acc.payload_names or tuple(p.shape) != acc.shape:
                raise InputError(f"MaxAccumulator state: bad payload {name!r}")
            acc._payloads[name] = p.to(acc.device).clone()
        acc.n_updates = int(d.get("n_updates", 0))
        return acc

    def __repr__(self) -> str:
        return (
            f"MaxAccumulator(shape={self.shape}, payload_names={self.payload_names}, "
            f"device={self.device}, n_updates={self.n_updates})"
        )


# ----------------------------------------------------------------------------- moments


class MomentAccumulator:
    """Per-pixel count, mean and population variance, exact and mergeable bit for bit.

    Parameters
    ----------
    shape
        Shape of one score map, `(H, W)` or `(D, H, W)`.
    device
        Device of the state (``None`` = auto).
    shift
        Constant subtracted from every score before accumulation (the reported mean adds it
        back). Use a value near the expected mean when ``|mean| >> std``. Partial
        accumulators must share it to be merged.

    Notes
    -----
    See the module docstring for the fixed-point scheme (resolution ``2**-52`` per update,
    capacity ``2**62`` per pixel). ``count`` is the number of score maps added.
    """

    def __init__(
        self,
        shape: Sequence[int] | int,
        device: DeviceLike = None,
        *,
        shift: float = 0.0,
    ) -> None:
        self.shape = _as_shape(shape)
        self.device = resolve_device(device)
        self.shift = float(shift)
        if not math.isfinite(self.shift):
            raise InputError(f"shift must be finite, got {shift}")
        z = dict(dtype=torch.int64, device=self.device)
        self._s1_hi = torch.zeros(self.shape, **z)
        self._s1_lo = torch.zeros(self.shape, **z)
        self._s2_hi = torch.zeros(self.shape, **z)
        self._s2_lo = torch.zeros(self.shape, **z)
        self._count = 0
        self.n_updates = 0
        self._pending = 0  # updates since the last carry
        # running bounds on |sum| and on the sum of squares (float64, on the device: checked
        # at once on the CPU, at the next carry/read/merge on GPUs to avoid host syncs)
        self._bounds = torch.zeros(2, dtype=torch.float64, device=self.device)

    # -- internals
    def _check_bounds(self) -> None:
        b1, b2 = (float(v) for v in self._bounds.cpu())
        if not (math.isfinite(b1) and math.isfinite(b2)):
            raise InputError("scores contain NaN or Inf: clean or mask the score maps first")
        if b1 >= _CAPACITY or b2 >= _CAPACITY:
            raise InputError(
                "MomentAccumulator capacity exceeded: per-pixel sums could reach "
                f"{max(b1, b2):.3g} >= 2**62; normalise or rescale the scores"
            )

    def _carry(self) -> None:
        if self._pending == 0:
            return
        self._check_bounds()
        for hi, lo in ((self._s1_hi, self._s1_lo), (self._s2_hi, self._s2_lo)):
            c = torch.bitwise_right_shift(lo, FRAC_BITS)  # floor(lo / 2**52)
            hi.add_(c)
            lo.bitwise_and_(_LO_ONE - 1)
        self._pending = 0

    def _add_limbs(self, s1: torch.Tensor, s2: torch.Tensor, count: int) -> None:
        # bounds without host sync: max s2 (NaN/Inf propagate), and |s1| <= sqrt(count * s2)
        b2 = s2.amax().to(torch.float64)
        b1 = torch.sqrt(b2 * count)
        new_bounds = self._bounds + torch.stack((b1, b2))
        if self.device.type == "cpu":
            old, self._bounds = self._bounds, new_bounds
            try:
                self._check_bounds()
            except InputError:
                self._bounds = old  # the state is untouched: the update is refused
                raise
        else:
            self._bounds = new_bounds
        hi1, lo1 = _fixed_point_split(s1)
        hi2, lo2 = _fixed_point_split(s2)
        if self._pending >= _CARRY_EVERY:
            self._carry()
        self._s1_hi += hi1
        self._s1_lo += lo1
        self._s2_hi += hi2
        self._s2_lo += lo2
        self._pending += 1

    @staticmethod
    def _limbs_to_float(hi: torch.Tensor, lo: torch.Tensor) -> torch.Tensor:
        return hi.to(torch.float64) + lo.to(torch.float64) * _INV_LO_SCALE

    # -- public API
    def update(self, scores: Any) -> MomentAccumulator:
        """Add a batch of score maps `(B, *shape)` (a single `(*shape)` map is B=1)."""
        x = _as_batch(scores, self.shape, self.device)
        if self.shift != 0.0:
            x = x - self.shift
        red = reduce_batch(x, maxima=False)
        self._add_limbs(red["s1"], red["s2"], int(x.shape[0]))
        self._count += int(x.shape[0])
        self.n_updates += 1
        return self

    def update_from_sums(self, s1: Any, s2: Any, count: int) -> MomentAccumulator:
        """Add precomputed batch sums (for fused kernels): ``s1 = Σ (x - shift)``,
        ``s2 = Σ (x - shift)**2`` over ``count`` maps, each `(*shape)`.

        To keep merges exact, a given batch must always be reduced the same way
        (e.g. with :func:`batch_sum` / :func:`batch_sum_of_squares`).
        """
        t1 = to_tensor(s1, device=self.device, name="s1")
        t2 = to_tensor(s2, device=self.device, name="s2")
        if tuple(t1.shape) != self.shape or tuple(t2.shape) != self.shape:
            raise InputError(
                f"s1 and s2 must have shape {self.shape}, got {tuple(t1.shape)}, {tuple(t2.shape)}"
            )
        if int(count) <= 0:
            raise InputError(f"count must be positive, got {count}")
        self._add_limbs(t1, t2, int(count))
        self._count += int(count)
        self.n_updates += 1
        return self

    def merge(self, other: MomentAccumulator) -> MomentAccumulator:
        """Add another accumulator's sums (same shape and shift); returns ``self``."""
        if not isinstance(other, MomentAccumulator):
            raise InputError(f"can only merge a MomentAccumulator, got {type(other).__name__}")
        if other.shape != self.shape or other.shift != self.shift:
            raise InputError(
                f"cannot merge MomentAccumulator(shape={other.shape}, shift={other.shift}) into "
                f"shape={self.shape}, shift={self.shift}"
            )
        self._bounds = self._bounds + other._bounds.to(self.device)
        self._check_bounds()
        self._carry()
        other._carry()
        self._s1_hi += other._s1_hi.to(self.device)
        self._s1_lo += other._s1_lo.to(self.device)
        self._s2_hi += other._s2_hi.to(self.device)
        self._s2_lo += other._s2_lo.to(self.device)
        self._pending = 1
        self._carry()
        self._count += other._count
        self.n_updates += other.n_updates
        return self

    @property
    def count(self) -> int:
        """Number of score maps added."""
        return self._count

    @property
    def sum(self) -> torch.Tensor:
        """Per-pixel ``Σ (x - shift)`` `(*shape)` as float64 (one rounding of the exact sum)."""
        self._carry()
        return self._limbs_to_float(self._s1_hi, self._s1_lo)

    @property
    def sum_of_squares(self) -> torch.Tensor:
        """Per-pixel ``Σ (x - shift)**2`` `(*shape)` as float64."""
        self._carry()
        return self._limbs_to_float(self._s2_hi, self._s2_lo)

    def _need_data(self) -> None:
        if self._count == 0:
            raise InputError("no scores have been accumulated yet (count = 0)")

    @property
    def mean(self) -> torch.Tensor:
        """Per-pixel mean `(*shape)`, float64."""
        self._need_data()
        return self.sum / self._count + self.shift

    @property
    def variance(self) -> torch.Tensor:
        """Per-pixel population variance `(*shape)` (divides by ``count``), float64, >= 0."""
        self._need_data()
        m = self.sum / self._count
        return (self.sum_of_squares / self._count - m * m).clamp_(min=0.0)

    @property
    def std(self) -> torch.Tensor:
        """Per-pixel population standard deviation `(*shape)`, float64."""
        return self.variance.sqrt_()

    def state_dict(self) -> dict[str, Any]:
        """Plain-data state (normalised limbs on the CPU)."""
        self._carry()
        return {
            "format": "corrscan.MomentAccumulator",
            "version": _STATE_VERSION,
            "shape": list(self.shape),
            "frac_bits": FRAC_BITS,
            "shift": self.shift,
            "count": int(self._count),
            "n_updates": int(self.n_updates),
            "bounds": self._bounds.cpu().clone(),
            "sum_hi": self._s1_hi.cpu().clone(),
            "sum_lo": self._s1_lo.cpu().clone(),
            "sumsq_hi": self._s2_hi.cpu().clone(),
            "sumsq_lo": self._s2_lo.cpu().clone(),
        }

    @classmethod
    def from_state_dict(cls, d: Mapping[str, Any], device: DeviceLike = None) -> MomentAccumulator:
        """Rebuild from :meth:`state_dict` output on ``device`` (``None`` = auto)."""
        _check_format(d, "corrscan.MomentAccumulator")
        if int(d.get("frac_bits", -1)) != FRAC_BITS:
            raise InputError(f"MomentAccumulator state has frac_bits={d.get('frac_bits')}")
        acc = cls(d["shape"], device=device, shift=float(d.get("shift", 0.0)))
        for key, attr in (
            ("sum_hi", "_s1_hi"),
            ("sum_lo", "_s1_lo"),
            ("sumsq_hi", "_s2_hi"),
            ("sumsq_lo", "_s2_lo"),
        ):
            t = _state_tensor(d, key, "MomentAccumulator")
            if tuple(t.shape) != acc.shape or t.dtype != torch.int64:
                raise InputError(f"MomentAccumulator state: {key} must be int64 {acc.shape}")
            setattr(acc, attr, t.to(acc.device).clone())
        acc._count = int(d["count"])
        acc.n_updates = int(d.get("n_updates", 0))
        bounds = d.get("bounds")
        if bounds is not None:
            acc._bounds = torch.as_tensor(bounds, dtype=torch.float64).to(acc.device).clone()
        return acc

    def __repr__(self) -> str:
        return f"MomentAccumulator(shape={self.shape}, device={self.device}, count={self._count})"


# ----------------------------------------------------------------------------- both


class SearchStatistics:
    """Maximum with payloads plus mean/variance, updated together.

    Parameters
    ----------
    shape
        Shape of one score map.
    payload_names
        Payloads kept at the maximum (see :class:`MaxAccumulator`).
    device
        Device of the state (``None`` = auto).
    dtype
        Dtype of the stored maximum.
    shift
        See :class:`MomentAccumulator`.
    """

    def __init__(
        self,
        shape: Sequence[int] | int,
        payload_names: Sequence[str] = ("index",),
        device: DeviceLike = None,
        *,
        dtype: torch.dtype = torch.float32,
        shift: float = 0.0,
    ) -> None:
        dev = resolve_device(device)
        self.max_acc = MaxAccumulator(shape, payload_names, device=dev, dtype=dtype)
        self.moments = MomentAccumulator(shape, device=dev, shift=shift)

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of one score map."""
        return self.max_acc.shape

    @property
    def device(self) -> torch.device:
        """Device of the state."""
        return self.max_acc.device

    def update(self, scores: Any, payloads: Mapping[str, Any] | None = None) -> SearchStatistics:
        """Add a batch `(B, *shape)` with its payloads ``{name: (B,)}``; returns ``self``."""
        x = _as_batch(scores, self.shape, self.device)
        pl, perm = self.max_acc._prepare_payloads(payloads, x.shape[0])
        shift = self.moments.shift
        red = reduce_batch(x - shift if shift != 0.0 else x, maxima=False)
        xm = x if perm is None else x.index_select(0, perm)
        self.max_acc._fold_batch(xm, xm.amax(0), pl)
        m = self.moments
        m._add_limbs(red["s1"], red["s2"], int(x.shape[0]))
        m._count += int(x.shape[0])
        m.n_updates += 1
        return self

    def merge(self, other: SearchStatistics) -> SearchStatistics:
        """Merge another partial result exactly; returns ``self``."""
        if not isinstance(other, SearchStatistics):
            raise InputError(f"can only merge a SearchStatistics, got {type(other).__name__}")
        self.max_acc.merge(other.max_acc)
        self.moments.merge(other.moments)
        return self

    @property
    def max(self) -> torch.Tensor:
        """Per-pixel maximum `(*shape)` (the MIP)."""
        return self.max_acc.max

    @property
    def payloads(self) -> dict[str, torch.Tensor]:
        """Payload maps of the winning items."""
        return self.max_acc.payloads

    @property
    def count(self) -> int:
        """Number of score maps added."""
        return self.moments.count

    @property
    def mean(self) -> torch.Tensor:
        """Per-pixel mean `(*shape)`, float64."""
        return self.moments.mean

    @property
    def variance(self) -> torch.Tensor:
        """Per-pixel population variance `(*shape)`, float64."""
        return self.moments.variance

    @property
    def std(self) -> torch.Tensor:
        """Per-pixel population standard deviation `(*shape)`, float64."""
        return self.moments.std

    def zscore(self) -> torch.Tensor:
        """``(max - mean) / std`` `(*shape)`, float64; 0 where ``std == 0``."""
        std = self.std
        z = (self.max.to(torch.float64) - self.mean) / torch.where(std > 0, std, 1.0)
        return torch.where(std > 0, z, 0.0)

    def state_dict(self) -> dict[str, Any]:
        """Plain-data state of both accumulators."""
        return {
            "format": "corrscan.SearchStatistics",
            "version": _STATE_VERSION,
            "max": self.max_acc.state_dict(),
            "moments": self.moments.state_dict(),
        }

    @classmethod
    def from_state_dict(cls, d: Mapping[str, Any], device: DeviceLike = None) -> SearchStatistics:
        """Rebuild from :meth:`state_dict` output on ``device`` (``None`` = auto)."""
        _check_format(d, "corrscan.SearchStatistics")
        mx = MaxAccumulator.from_state_dict(d["max"], device=device)
        mo = MomentAccumulator.from_state_dict(d["moments"], device=device)
        obj = cls.__new__(cls)
        obj.max_acc, obj.moments = mx, mo
        return obj

    def __repr__(self) -> str:
        return (
            f"SearchStatistics(shape={self.shape}, payload_names={self.max_acc.payload_names}, "
            f"device={self.device}, count={self.count})"
        )

"""Benchmark of the 2D template search (corrscan.match2d) against Leopard-EM 1.2 and the FFT floor.

Usage::

    python benchmarks/match2d.py            # 512², 1024² (64³, 128³), 4096² (512³) if memory allows
    python benchmarks/match2d.py --quick    # 512² with a 64³ template only (< 1 minute)
    python benchmarks/match2d.py --sizes 1024 --boxes 64     # one case
    python benchmarks/match2d.py --sizes 512 1024 --device cuda:0

Same inputs and search for both tools: simulated micrograph, 5 defocus planes, whitening on,
random orientations, orientation batch 16 unless ``--batch`` (4 at 4096² on the CPU).

Method
------
* **Steady-state CCG/s, measured inside one run** (not by differencing runs: the peer's
  start-up varies by seconds between identical runs, which made differences useless). Each
  tool's per-batch function is wrapped so that every completed orientation batch leaves a
  timestamp ``(worker, time, CCGs)``:

  - corrscan: ``corrscan.match2d.search._correlate_batch`` (called by every CPU worker thread
    or GPU worker once per batch), patched in this process for the duration of the run;
  - Leopard-EM: ``leopard_em.backend.core_match_template.do_iteration_statistics_updates_compiled``
    (called once per orientation batch after the correlations, in the spawned worker
    process). The wrapper is installed when this file is imported with the environment
    variable ``CORRSCAN_BENCH_PEER_CLOCK`` set: the main process sets it around the peer call
    and the spawned worker re-imports this file (as ``__mp_main__``), which installs it
    there; the worker writes its timestamps to that file when its search loop returns.

  Times are ``time.monotonic()`` (system-wide on Linux, so comparable across processes).
  On a GPU each timestamp is a CUDA event recorded after the batch (no host synchronisation
  per batch), converted to host time against one synchronised reference event per device.

  Per worker, the first completed batch is warm-up (allocation, first-call paths, and for the
  peer ``torch.compile``); the worker's steady rate is the CCGs of its later batches divided
  by the time from its first to its last completion. The run's steady rate is the sum over
  workers (corrscan's CPU workers run concurrently; the peer runs one worker process on the
  CPU). A robust cross-check (median batch / median interval, summed over workers) is
  printed in the comment line, with a warning when the two differ by more than 20 %.
* **start-up**: ``total wall time of the call - CCGs / steady rate``, i.e. everything the
  steady rate does not explain (preprocessing, planning, first-batch warm-up, result
  assembly; for the peer also worker-process spawn, imports, ``torch.compile`` and shipping
  the maps back). The time to the first completed batch is printed in the comment line.
  For corrscan a small warm-up call runs first (imports), as for a user's second search in a
  session; the peer pays its spawn and compilation on every call.
* **Fallback for the peer** (only if no in-run timestamps come back, e.g. when this file is
  not the ``__main__`` module so the spawned worker never imports it): the old differencing
  ``(n2 - n1) · n_def / (T2 - T1)`` with ``n2`` chosen so that the differenced part lasts
  about 30 s at the first run's rate, 3 repetitions, median; the comment line says so. Not
  in ``--quick`` (peer=none there).
* **floor**: the rate of ``torch.fft.irfft2`` alone at the micrograph size (the one
  transform per CCG neither tool can avoid), measured in three parallel layouts:

  A. corrscan's own layout at that size, read from the run's metadata: ``W`` worker threads
     (``len(workers)``) with torch single-threaded (:func:`corrscan.core.threads.torch_threads`
     ``(1)`` around them, as the search does), each transforming its own batch of
     ``inverse_fft_batch`` maps (1 on the CPU's compiled path: one map per transform);
  B. one thread with torch's default intra-op threads (the caller's count), batch
     ``n_defocus`` (the defocus planes of one orientation);
  C. one thread with torch's default intra-op threads, batch ``n_defocus x orientation
     batch`` (capped by memory): **the issue's floor**, "one batched irfft2 at the image size
     per CCG" at the batching both tools run with (``--batch``, 16 by default); the issue
     quotes ~830/s at 512² and ~110/s at 1024² for it on the 2-core CI machine.

  Each layout is timed with a fresh output per call and with ``out=``, best of 5. The
  ``ccg_per_s`` line's ``floor_pct`` is relative to C; a second line
  ``ccg_per_s_<case>_vs_fastest_irfft2`` gives ``floor_pct`` relative to the fastest of A-C
  (a cache-resident single transform per core, 1.4-6x faster per map than C on the CPU), the
  strict bound: a search also multiplies spectra and reads every map, so it cannot reach it.
  On a GPU: one worker, B = A.
* **resolution-limited search** (corrscan only): the same search with
  ``resolution_limit = 3 · pixel size`` (2/3 of Nyquist), steady rate measured the same way;
  ``reslimit_speedup`` is its rate over the full search's, and its ``floor_pct`` is relative
  to the full-size issue floor C (so above 100 % is the point: it beats what full-size FFTs
  allow). ``reslimit_matched_grid_time_speedup`` is the time-to-result gain of a whole
  default search (Leopard-EM's grid: psi 1.5°, theta 2.5°, C1) when the resolution-limited
  search also coarsens the angular steps by the same factor 1.5
  (``OrientationSearchConfig.match_resolution_limit``): ``reslimit_speedup`` times the exact
  ratio of the two grids' orientation counts (time = orientations x defocus / rate; the
  count ratio is computed, the rates are measured).
* **peer**: Leopard-EM 1.2's ``core_match_template`` (streamed backend, 1 stream) fed by its
  own ``MatchTemplateManager`` preprocessing (not timed), when it is installed. Leopard-EM
  1.2 creates CUDA streams and synchronises unconditionally (peer quirk Q1), so on a CPU-only
  torch this script installs a no-op shim for ``torch.cuda.Stream/stream/default_stream/
  synchronize/empty_cache/ipc_collect`` and ``Tensor.record_stream``. The shim is applied at
  import time so that Leopard-EM's spawned worker processes (which re-import this file) get
  it too; it does nothing when CUDA is available.

Orientation counts give every worker at least 4 batches (3 steady intervals). The machine's
load matters: run on a quiet machine for figures to quote.

Output ends with lines
``RESULT job=match2d metric=<name> corrscan=<value> peer=<value|none> ratio=<x> floor_pct=<y>``.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import math
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

# ------------------------------------------------------------------------------------------
# CPU shim for Leopard-EM 1.2 (its worker calls CUDA stream APIs unconditionally)
# ------------------------------------------------------------------------------------------


def _install_cuda_shim() -> None:
    if torch.cuda.is_available():
        return

    class _Stream:
        def __init__(self, *args, **kwargs) -> None:
            pass

        def synchronize(self) -> None:
            pass

        def wait_stream(self, other) -> None:
            pass

    @contextlib.contextmanager
    def _stream(_s=None):
        yield

    torch.cuda.Stream = _Stream  # type: ignore[misc,assignment]
    torch.cuda.stream = _stream  # type: ignore[assignment]
    torch.cuda.default_stream = lambda *a, **k: _Stream()  # type: ignore[assignment]
    torch.cuda.current_stream = lambda *a, **k: _Stream()  # type: ignore[assignment]
    torch.cuda.synchronize = lambda *a, **k: None  # type: ignore[assignment]
    torch.cuda.empty_cache = lambda *a, **k: None  # type: ignore[assignment]
    torch.cuda.ipc_collect = lambda *a, **k: None  # type: ignore[assignment]
    torch.Tensor.record_stream = lambda self, *a, **k: None  # type: ignore[method-assign]


_install_cuda_shim()

N_DEFOCUS = 5
DEFOCUS = {"defocus_min": -400.0, "defocus_max": 400.0, "defocus_step": 200.0}
PIXEL_SIZE = 1.0
PEER_CLOCK_ENV = "CORRSCAN_BENCH_PEER_CLOCK"
Event = tuple[object, float, int]  # (worker, host time s, CCGs of the batch)

# ------------------------------------------------------------------------------------------
# per-batch clock (CPU: host time; GPU: CUDA events, resolved after the run)
# ------------------------------------------------------------------------------------------


class BatchClock:
    """Collects one timestamp per completed batch: ``(worker, time.monotonic(), n_ccg)``.

    On a CUDA device :meth:`mark` records an event on the current stream (no host
    synchronisation); the first mark on each device synchronises once to pair a reference
    event with the host clock. :meth:`events` resolves them (call after the work is done).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._host: list[Event] = []
        self._cuda: list[tuple[object, torch.device, object, int]] = []
        self._ref: dict[torch.device, tuple[object, float]] = {}

    def mark(self, worker: object, n: int, device: torch.device) -> None:
        if device.type == "cuda":
            with self._lock:
                if device not in self._ref:
                    ref = torch.cuda.Event(enable_timing=True)
                    ref.record(torch.cuda.current_stream(device))
                    ref.synchronize()
                    self._ref[device] = (ref, time.monotonic())
            ev = torch.cuda.Event(enable_timing=True)
            ev.record(torch.cuda.current_stream(device))
            with self._lock:
                self._cuda.append((worker, device, ev, n))
        else:
            t = time.monotonic()
            with self._lock:
                self._host.append((worker, t, n))

    def events(self) -> list[Event]:
        out = list(self._host)
        for worker, dev, ev, n in self._cuda:
            ref, t0 = self._ref[dev]
            ev.synchronize()  # type: ignore[attr-defined]
            out.append((worker, t0 + ref.elapsed_time(ev) / 1000.0, n))  # type: ignore[attr-defined]
        return sorted(out, key=lambda e: e[1])


def steady_from_events(events: list[Event], skip: int = 1) -> dict[str, float] | None:
    """Steady CCG/s from per-batch timestamps (see the module docstring).

    Per worker: its first ``skip`` (>= 1) completions are warm-up; rate = CCGs of the
    completions after completion ``skip`` / time from completion ``skip`` to its last one.
    Summed over workers; ``median_rate`` uses the median batch and the median interval
    instead. ``None`` if some worker has fewer than ``skip + 2`` completions.
    """
    by_worker: dict[object, list[tuple[float, int]]] = {}
    for w, t, n in events:
        by_worker.setdefault(w, []).append((t, n))
    if not by_worker or skip < 1:
        return None
    rate = median_rate = 0.0
    n_batches = []
    for ev in by_worker.values():
        ev.sort()
        if len(ev) < skip + 2:
            return None
        times = [t for t, _ in ev[skip - 1 :]]  # reference completion, then the window
        window = [n for _, n in ev[skip:]]
        rate += sum(window) / max(times[-1] - times[0], 1e-9)
        gaps = [b - a for a, b in itertools.pairwise(times)]
        median_rate += statistics.median(window) / max(statistics.median(gaps), 1e-9)
        n_batches.append(len(ev))
    return {
        "rate": rate,
        "median_rate": median_rate,
        "workers": len(by_worker),
        "min_batches": min(n_batches),
        "first_t": min(t for _, t, _ in events),
    }


# ------------------------------------------------------------------------------------------
# Leopard-EM worker clock (installed in the spawned worker process at import time)
# ------------------------------------------------------------------------------------------


def _install_peer_clock(path: str) -> None:
    """Wrap Leopard-EM's per-batch statistics update (and its worker's search loop, which
    writes the timestamps to ``path`` when it returns) in this process."""
    try:
        import importlib

        # (the package re-exports a function of the same name as the module)
        cmt = importlib.import_module("leopard_em.backend.core_match_template")
    except Exception:  # pragma: no cover - peer missing: nothing to time
        return
    clock = BatchClock()
    update = cmt.do_iteration_statistics_updates_compiled
    loop = cmt._core_match_template_single_gpu

    def timed_update(*args, **kwargs):
        out = update(*args, **kwargs)
        cc = kwargs["cross_correlation"] if "cross_correlation" in kwargs else args[0]
        n = cc.numel() // (cc.shape[-1] * cc.shape[-2])
        clock.mark(os.getpid(), int(n), cc.device)
        return out

    def timed_loop(*args, **kwargs):
        out = loop(*args, **kwargs)
        with open(path, "a") as f:
            for w, t, n in clock.events():
                f.write(f"{w} {t!r} {n}\n")
        return out

    cmt.do_iteration_statistics_updates_compiled = timed_update
    cmt._core_match_template_single_gpu = timed_loop


if os.environ.get(PEER_CLOCK_ENV) and __name__ != "__main__":
    _install_peer_clock(os.environ[PEER_CLOCK_ENV])


# ------------------------------------------------------------------------------------------
# inputs
# ------------------------------------------------------------------------------------------


def _inputs(size: int, box: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A simulated micrograph `(size, size)` with a few particles and a `(box,)³` template."""
    from corrscan.synthetic.micrograph import example_template, simulate_micrograph

    n_atoms = int(min(4000, 400 * (box / 32) ** 2))
    vol = example_template(box, n_atoms=n_atoms, atom_sigma=1.0, seed=seed)
    n_part = max(1, min(8, (size // (2 * box)) ** 2))
    img, _ = simulate_micrograph(
        vol,
        shape=(size, size),
        pixel_size=PIXEL_SIZE,
        n_particles=n_part,
        defocus_u=10000.0,
        noise_std=1.0,
        seed=seed,
        projection_pad=2.0 if box < 256 else 1.0,  # keep the 512³ simulation small
    )
    return img, vol


def _angles(n: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, generator=g, dtype=torch.float64) * torch.tensor(
        [360.0, 180.0, 360.0], dtype=torch.float64
    )


# ------------------------------------------------------------------------------------------
# corrscan
# ------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _corrscan_clock(clock: BatchClock):
    """Patch corrscan's per-batch function so that every completed batch is timestamped."""
    from corrscan.match2d import search

    inner = search._correlate_batch

    def timed(plan, state, start, stop):
        inner(plan, state, start, stop)
        clock.mark(threading.get_ident(), (stop - start) * plan.n_defocus, plan.device)

    search._correlate_batch = timed
    try:
        yield
    finally:
        search._correlate_batch = inner


def corrscan_run(
    img: np.ndarray,
    vol: np.ndarray,
    n: int,
    *,
    batch: int,
    device: str,
    resolution_limit: float | None = None,
    threads: int | None = None,
) -> dict:
    """One timed search with per-batch timestamps (after a tiny warm-up call)."""
    from corrscan.match2d import match_template

    def call(n_orient: int, clock: BatchClock | None):
        kw = dict(
            optics={"pixel_size": PIXEL_SIZE, "defocus_u": 10000.0, "defocus_v": 10000.0},
            defocus_search=DEFOCUS,
            orientations=_angles(n_orient),
            compute={"device": device, "orientation_batch_size": batch, "num_threads": threads},
            resolution_limit=resolution_limit,
            progress=False,
        )
        with _corrscan_clock(clock) if clock is not None else contextlib.nullcontext():
            t0 = time.monotonic()
            res = match_template(img, vol, **kw)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            return res, t0, time.monotonic()

    call(min(n, 2), None)  # warm-up (imports, first-call paths)
    clock = BatchClock()
    res, t0, t1 = call(n, clock)
    events = clock.events()
    st = steady_from_events(events)
    n_ccg = n * N_DEFOCUS
    total = t1 - t0
    if st is None:  # too few batches per worker: whole-call rate (start-up then unknown)
        print(f"# corrscan: too few batches per worker for a steady rate (n={n})")
        st = {"rate": n_ccg / total, "median_rate": math.nan, "workers": 0, "min_batches": 0,
              "first_t": t0}  # fmt: skip
    meta = res.metadata
    return {
        "rate": st["rate"],
        "median_rate": st["median_rate"],
        "startup": max(total - n_ccg / st["rate"], 0.0),
        "first_batch_s": st["first_t"] - t0,
        "total_s": total,
        "batches": len(events),
        "preprocess_s": float(meta.get("timings", {}).get("preprocess_s", math.nan)),
        "workers": meta.get("workers", []),
        "chunk": int(meta.get("chunk_orientations", 1)),
        "inverse_fft_batch": int(
            meta.get("inverse_fft_batch", N_DEFOCUS * meta.get("chunk_orientations", 1))
        ),
        "batch": int(meta.get("orientation_batch_size", batch)),
    }


# ------------------------------------------------------------------------------------------
# floor: irfft2 alone, in the search's parallel layout and the alternatives
# ------------------------------------------------------------------------------------------


def _irfft2_rate(
    size: int, batch: int, device: str, n_workers: int, torch_threads_n: int | None,
    seconds: float = 0.2, repeats: int = 5,
) -> float:  # fmt: skip
    """Best transforms/s of ``n_workers`` threads each running ``irfft2`` on its own
    `(batch, size, size//2+1)` complex64 input, with torch's intra-op threads set to
    ``torch_threads_n`` around them (as the search does). Fresh output and ``out=`` tried."""
    from corrscan.core.threads import torch_threads

    dev = torch.device(device if device != "auto" else "cpu")
    cuda = dev.type == "cuda"
    s = (size, size)
    with torch_threads(torch_threads_n if not cuda else None):
        xs = [
            torch.randn(batch, size, size // 2 + 1, dtype=torch.complex64, device=dev)
            for _ in range(n_workers)
        ]
        outs = [torch.empty(batch, size, size, device=dev) for _ in range(n_workers)]
        sync = torch.cuda.synchronize if cuda else (lambda: None)
        variants = {
            "fresh": lambda i: torch.fft.irfft2(xs[i], s=s),
            "out": lambda i: torch.fft.irfft2(xs[i], s=s, out=outs[i]),
        }
        best = 0.0
        for f in variants.values():
            f(0)
            sync()
            t = time.perf_counter()
            f(0)
            sync()
            reps = max(2, math.ceil(seconds / max(time.perf_counter() - t, 1e-6)))
            for _ in range(repeats):
                if n_workers == 1:
                    t = time.perf_counter()
                    for _ in range(reps):
                        f(0)
                    sync()
                    el = time.perf_counter() - t
                else:
                    gate = threading.Barrier(n_workers + 1)

                    def work(i: int, f=f, gate=gate, reps=reps) -> None:
                        gate.wait()
                        for _ in range(reps):
                            f(i)
                        sync()

                    ths = [threading.Thread(target=work, args=(i,)) for i in range(n_workers)]
                    for th in ths:
                        th.start()
                    gate.wait()
                    t = time.perf_counter()
                    for th in ths:
                        th.join()
                    el = time.perf_counter() - t
                best = max(best, n_workers * reps * batch / el)
        return best


def floor_rates(size: int, run: dict, device: str, caller_threads: int) -> dict[str, float]:
    """irfft2-only rates in layouts A (corrscan's), B and C (see the module docstring)."""
    cuda = device.startswith("cuda")
    n_cpu_workers = sum(1 for w in run["workers"] if str(w).startswith("cpu")) or 1
    item_batch = run["inverse_fft_batch"]
    big = min(N_DEFOCUS * run["batch"], max(4, 2**28 // (8 * size * size)))
    out: dict[str, float] = {}
    if cuda:
        out[f"A: 1 GPU worker, batch {item_batch}"] = _irfft2_rate(
            size, item_batch, device, 1, None
        )
    else:
        out[f"A: {n_cpu_workers} worker threads x 1 torch thread, batch {item_batch}"] = (
            _irfft2_rate(size, item_batch, device, n_cpu_workers, 1)
        )
        out[f"B: 1 thread x {caller_threads} torch threads, batch {N_DEFOCUS}"] = _irfft2_rate(
            size, N_DEFOCUS, device, 1, caller_threads
        )
    tn = None if cuda else caller_threads
    where = "1 GPU worker" if cuda else f"1 thread x {caller_threads} torch threads"
    out[f"C: {where}, batch {big}"] = _irfft2_rate(size, big, device, 1, tn)
    return out


# ------------------------------------------------------------------------------------------
# Leopard-EM
# ------------------------------------------------------------------------------------------


def _peer_setup(img: np.ndarray, vol: np.ndarray, device: str):
    """``(core_match_template, kwargs)`` from Leopard-EM's own manager, or None."""
    try:
        from leopard_em.backend.core_match_template import core_match_template
        from leopard_em.pydantic_models.managers import MatchTemplateManager
    except Exception as exc:  # pragma: no cover - depends on the environment
        print(f"# peer: leopard-em not importable ({type(exc).__name__}: {exc})")
        return None
    import mrcfile

    tmp = Path(tempfile.mkdtemp(prefix="bench-leopard-"))
    with mrcfile.new(tmp / "img.mrc") as f:
        f.set_data(img.astype(np.float32))
        f.voxel_size = PIXEL_SIZE
    with mrcfile.new(tmp / "tpl.mrc") as f:
        f.set_data(vol.astype(np.float32))
        f.voxel_size = PIXEL_SIZE
    res = {k: str(tmp / f"{k}.mrc") for k in ("mip", "smip", "avg", "var", "psi", "th", "ph", "df")}
    cfg = {
        "micrograph_path": str(tmp / "img.mrc"),
        "template_volume_path": str(tmp / "tpl.mrc"),
        "optics_group": {
            "label": "bench",
            "pixel_size": PIXEL_SIZE,
            "voltage": 300.0,
            "defocus_u": 10000.0,
            "defocus_v": 10000.0,
            "astigmatism_angle": 0.0,
        },
        "defocus_search_config": dict(DEFOCUS, enabled=True),
        "orientation_search_config": {"psi_step": 30.0, "theta_step": 30.0},
        "preprocessing_filters": {},
        "match_template_result": {
            "allow_file_overwrite": True,
            "mip_path": res["mip"],
            "scaled_mip_path": res["smip"],
            "correlation_average_path": res["avg"],
            "correlation_variance_path": res["var"],
            "orientation_psi_path": res["psi"],
            "orientation_theta_path": res["th"],
            "orientation_phi_path": res["ph"],
            "relative_defocus_path": res["df"],
        },
        "computational_config": {"gpu_ids": "cpu" if device in ("cpu", "auto") else [0]},
    }
    try:
        mgr = MatchTemplateManager.model_validate(cfg)
        kw = mgr.make_backend_core_function_kwargs()
    except Exception as exc:  # pragma: no cover
        print(f"# peer: leopard-em set-up failed ({type(exc).__name__}: {exc})")
        return None
    dev = torch.device("cpu") if device in ("cpu", "auto") else torch.device(device)
    kw["device"] = [dev]
    kw.pop("mag_matrix", None)
    return core_match_template, kw


def _peer_call(fn, kw: dict, n: int, batch: int) -> tuple[float, float, list[Event]]:
    """One Leopard-EM call: ``(t0, t1, per-batch events from its worker)``."""
    fd, path = tempfile.mkstemp(prefix="bench-leopard-clock-", suffix=".txt")
    os.close(fd)
    old = os.environ.get(PEER_CLOCK_ENV)
    os.environ[PEER_CLOCK_ENV] = path
    try:
        k = dict(kw, euler_angles=_angles(n).to(torch.float32))
        t0 = time.monotonic()
        with contextlib.redirect_stderr(open(os.devnull, "w")):  # its tqdm bars
            fn(**k, orientation_batch_size=batch, num_cuda_streams=1)
        t1 = time.monotonic()
    finally:
        if old is None:
            os.environ.pop(PEER_CLOCK_ENV, None)
        else:
            os.environ[PEER_CLOCK_ENV] = old
    events: list[Event] = []
    with open(path) as f:
        for line in f:
            w, t, c = line.split()
            events.append((w, float(t), int(c)))
    os.unlink(path)
    return t0, t1, sorted(events, key=lambda e: e[1])


def peer_run(
    img: np.ndarray, vol: np.ndarray, n: int, *, batch: int, device: str, fallback: bool
) -> dict | None:
    """Leopard-EM 1.2 steady-state CCG/s and start-up, or None when unavailable."""
    setup = _peer_setup(img, vol, device)
    if setup is None:
        return None
    fn, kw = setup
    try:
        t0, t1, events = _peer_call(fn, kw, n, batch)
    except Exception as exc:  # pragma: no cover
        print(f"# peer: leopard-em run failed ({type(exc).__name__}: {exc})")
        return None
    n_ccg = n * N_DEFOCUS
    st = steady_from_events(events)
    if st is not None:
        return {
            "rate": st["rate"],
            "median_rate": st["median_rate"],
            "startup": max((t1 - t0) - n_ccg / st["rate"], 0.0),
            "first_batch_s": st["first_t"] - t0,
            "total_s": t1 - t0,
            "batches": len(events),
            "method": "in-run timestamps",
        }
    print(f"# peer: no in-run timestamps ({len(events)} events)", end="")
    if not fallback:
        print("; no differencing fallback in --quick: peer=none")
        return None
    # fallback: differencing, n2 so that the differenced part lasts ~30 s, median of 3
    est = n_ccg / (t1 - t0)
    n2 = n + batch * max(1, math.ceil(30.0 * est / N_DEFOCUS / batch))
    print(f"; fallback: differencing n1={n}, n2={n2}, median of 3")
    rates, starts = [], []
    for _ in range(3):
        a0, a1, _e = _peer_call(fn, kw, n, batch)
        b0, b1, _e = _peer_call(fn, kw, n2, batch)
        r = (n2 - n) * N_DEFOCUS / max((b1 - b0) - (a1 - a0), 1e-9)
        rates.append(r)
        starts.append(max((a1 - a0) - n_ccg / r, 0.0))
    return {
        "rate": statistics.median(rates),
        "median_rate": math.nan,
        "startup": statistics.median(starts),
        "first_batch_s": math.nan,
        "total_s": t1 - t0,
        "batches": 0,
        "method": "differencing (fallback)",
    }


# ------------------------------------------------------------------------------------------
# driver
# ------------------------------------------------------------------------------------------


def _fits_in_memory(size: int, box: int, batch: int) -> bool:
    """Rough working set of the 4096²/512³ case (both tools) against available memory."""
    from corrscan.core.arrays import free_memory_bytes

    need = (
        8 * box**2 * (box // 2 + 1)  # template rfft
        + 8 * size * (size // 2 + 1) * (N_DEFOCUS + 2)  # spectra
        + 4 * size * size * (batch * N_DEFOCUS + 8)  # peer's batch of maps
    )
    return need < 0.6 * free_memory_bytes("cpu")


def _n_orient(batches_per_worker: int, batch: int, workers: int) -> int:
    """Orientations giving each worker ``batches_per_worker`` full batches."""
    return batches_per_worker * batch * max(1, workers)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="512² / 64³ only, short runs")
    ap.add_argument("--sizes", type=int, nargs="*", default=None, help="micrograph sizes")
    ap.add_argument("--boxes", type=int, nargs="*", default=None, help="template boxes")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--threads", type=int, default=None, help="corrscan CPU worker threads")
    ap.add_argument("--no-peer", action="store_true")
    args = ap.parse_args(argv)

    cuda = args.device.startswith("cuda")
    caller_threads = torch.get_num_threads()
    n_workers = 1 if cuda else (args.threads or caller_threads)
    # (size, box, batches per corrscan worker, orientation batch)
    if args.quick:
        cases = [(512, 64, 10, args.batch)]
    else:
        cases = [
            (512, 64, 20, args.batch),
            (1024, 64, 8, args.batch),
            (1024, 128, 8, args.batch),
            (4096, 512, 4, args.batch if cuda else min(args.batch, 4)),
        ]
    if args.sizes:
        cases = [c for c in cases if c[0] in args.sizes]
    if args.boxes:
        cases = [c for c in cases if c[1] in args.boxes]
    print(
        f"# torch {torch.__version__}, threads {caller_threads}, device {args.device}, "
        f"corrscan workers {n_workers}; steady rates from in-run per-batch timestamps"
    )
    results = []
    for size, box, per_worker, batch in cases:
        if size >= 4096 and not cuda and not _fits_in_memory(size, box, batch):
            print(f"# skip {size}²/{box}³: not enough memory")
            continue
        n = _n_orient(per_worker * (4 if cuda else 1), batch, n_workers)
        img, vol = _inputs(size, box)
        ours = corrscan_run(img, vol, n, batch=batch, device=args.device, threads=args.threads)
        floors = floor_rates(size, ours, args.device, caller_threads)
        fl_issue = next(v for k, v in floors.items() if k.startswith("C:"))
        fl = max(floors.values())
        fast = corrscan_run(
            img, vol, n, batch=batch, device=args.device, resolution_limit=3 * PIXEL_SIZE,
            threads=args.threads,
        )  # fmt: skip
        peer = None
        if not args.no_peer and not (size >= 4096 and not cuda):
            # the peer runs one worker process: the same orientations give it per_worker x
            # n_workers batches
            peer = peer_run(img, vol, n, batch=batch, device=args.device, fallback=not args.quick)
        print(
            f"# {size}² x {box}³, {n} orientations x {N_DEFOCUS} defocus, batch {batch}: "
            f"corrscan {ours['rate']:,.1f} CCG/s (median-interval {ours['median_rate']:,.1f}; "
            f"{ours['batches']} batches on {len(ours['workers'])} workers, chunk "
            f"{ours['chunk']}; call {ours['total_s']:.2f} s, preparation "
            f"{ours['preprocess_s']:.2f} s, first batch at "
            f"{ours['first_batch_s']:.2f} s, start-up {ours['startup']:.2f} s)"
        )
        print(
            f"# {size}² floor (irfft2 alone, best of): "
            + "; ".join(f"{k}: {v:,.1f}/s" for k, v in floors.items())
            + f" -> issue floor (C) {fl_issue:,.1f}/s, fastest {fl:,.1f}/s"
        )
        print(
            f"# {size}² x {box}³ resolution-limited: {fast['rate']:,.1f} CCG/s "
            f"(x{fast['rate'] / ours['rate']:.2f}; median-interval {fast['median_rate']:,.1f})"
        )
        if peer is None:
            print(f"# {size}² x {box}³ peer: none")
        else:
            print(
                f"# {size}² x {box}³ peer ({peer['method']}): {peer['rate']:,.1f} CCG/s "
                f"(median-interval {peer['median_rate']:,.1f}; {peer['batches']} batches; call "
                f"{peer['total_s']:.2f} s, first batch at {peer['first_batch_s']:.2f} s, "
                f"start-up {peer['startup']:.2f} s)"
            )
        for who, r in (("corrscan", ours), ("resolution-limited", fast), ("peer", peer)):
            if r is not None and abs(r["rate"] / r["median_rate"] - 1) > 0.2:  # nan: False
                print(
                    f"# warning: {who} window rate and median-interval rate differ by > 20 %: "
                    "the machine's load changed during the run, do not quote this figure"
                )
        results.append((size, box, ours, fl_issue, fl, fast, peer))

    grid_ratio = None
    if results:
        from corrscan.match2d.config import OrientationSearchConfig

        grid = OrientationSearchConfig()  # Leopard-EM's default grid
        grid_ratio = len(grid.angles()) / len(grid.angles(1.5))  # 3 px limit: steps x 1.5
        print(
            f"# default grid {len(grid.angles())} orientations, x1.5 steps: ratio {grid_ratio:.3f}"
        )
    for size, box, ours, fl_issue, fl, fast, peer in results:
        tag = f"{size}px_t{box}"
        rate, start = ours["rate"], ours["startup"]
        p = "none" if peer is None else f"{peer['rate']:.2f}"
        ratio = "none" if peer is None else f"{rate / peer['rate']:.3f}"
        print(
            f"RESULT job=match2d metric=ccg_per_s_{tag} corrscan={rate:.2f} peer={p} "
            f"ratio={ratio} floor_pct={100 * rate / fl_issue:.1f}"
        )
        print(
            f"RESULT job=match2d metric=ccg_per_s_{tag}_vs_fastest_irfft2 corrscan={rate:.2f} "
            f"peer=none ratio=none floor_pct={100 * rate / fl:.1f}"
        )
        ps = "none" if peer is None else f"{peer['startup']:.2f}"
        pr = "none" if peer is None else f"{start / max(peer['startup'], 1e-9):.3f}"
        print(
            f"RESULT job=match2d metric=startup_s_{tag} corrscan={start:.2f} peer={ps} "
            f"ratio={pr} floor_pct=none"
        )
        print(
            f"RESULT job=match2d metric=reslimit_speedup_{tag} "
            f"corrscan={fast['rate'] / rate:.3f} peer=none ratio=none "
            f"floor_pct={100 * fast['rate'] / fl_issue:.1f}"
        )
        print(
            f"RESULT job=match2d metric=reslimit_matched_grid_time_speedup_{tag} "
            f"corrscan={fast['rate'] / rate * grid_ratio:.3f} peer=none ratio=none "
            "floor_pct=none"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

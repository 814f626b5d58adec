"""Benchmark of the 2D template search (corrscan.match2d) against Leopard-EM 1.2 and the FFT floor.

Usage::

    python benchmarks/match2d.py            # 512², 1024² (64³, 128³), 4096² (512³) if memory allows
    python benchmarks/match2d.py --quick    # 512² with a 64³ template only (< 1 minute)
    python benchmarks/match2d.py --sizes 512 1024 --device cuda:0

What is measured (same inputs and search for both tools: simulated micrograph, 5 defocus
planes, whitening on, random orientations, orientation batch 16 unless ``--batch``):

* **steady-state CCG/s**: two runs with ``n1`` and ``n2`` orientations;
  ``rate = (n2 - n1) · n_defocus / (T2 - T1)`` removes the fixed per-call cost;
* **start-up**: ``T1 - n1 · n_defocus / rate`` (preprocessing, planning; for the peer also
  worker-process spawn and torch.compile);
* **floor**: one batched ``irfft2`` at the micrograph size per CCG (batch 80 = 16 x 5; fewer
  at large sizes), the transform neither tool can avoid; ``floor_pct = 100 · rate / floor``;
* **resolution-limited search** (corrscan only): the same search with
  ``resolution_limit = 3 · pixel size`` (2/3 of Nyquist), speed-up reported;
* **peer**: Leopard-EM 1.2's ``core_match_template`` (streamed backend, 1 stream) fed by its
  own ``MatchTemplateManager`` preprocessing, when it is installed. Leopard-EM 1.2 creates
  CUDA streams and synchronises unconditionally (peer quirk Q1), so on a CPU-only torch this
  script installs a no-op shim for ``torch.cuda.Stream/stream/default_stream/synchronize/
  empty_cache/ipc_collect`` and ``Tensor.record_stream``. The shim is applied at import time
  so that Leopard-EM's spawned worker processes (which re-import this file) get it too; it
  does nothing when CUDA is available.

Output ends with lines
``RESULT job=match2d metric=<name> corrscan=<value> peer=<value|none> ratio=<x> floor_pct=<y>``.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import sys
import tempfile
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


def _steady(run, n1: int, n2: int) -> tuple[float, float]:
    """``(steady CCG/s, start-up s)`` from timed runs with n1 and n2 orientations."""
    t1 = run(n1)
    t2 = run(n2)
    rate = (n2 - n1) * N_DEFOCUS / max(t2 - t1, 1e-9)
    startup = max(t1 - n1 * N_DEFOCUS / rate, 0.0)
    return rate, startup


def corrscan_rate(
    img: np.ndarray,
    vol: np.ndarray,
    n1: int,
    n2: int,
    *,
    batch: int,
    device: str,
    resolution_limit: float | None = None,
    threads: int | None = None,
) -> tuple[float, float]:
    from corrscan.match2d import match_template

    def run(n: int) -> float:
        t = time.perf_counter()
        match_template(
            img,
            vol,
            optics={"pixel_size": PIXEL_SIZE, "defocus_u": 10000.0, "defocus_v": 10000.0},
            defocus_search=DEFOCUS,
            orientations=_angles(n),
            compute={
                "device": device,
                "orientation_batch_size": batch,
                "num_threads": threads,
            },
            resolution_limit=resolution_limit,
            progress=False,
        )
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - t

    run(min(n1, 8))  # warm-up (imports, allocator)
    return _steady(run, n1, n2)


def floor_rate(size: int, batch: int, device: str) -> float:
    """Batched irfft2 at the micrograph size: transforms per second."""
    dev = torch.device(device if device != "auto" else "cpu")
    x = torch.randn(batch, size, size // 2 + 1, dtype=torch.complex64, device=dev)
    out = torch.empty(batch, size, size, device=dev)
    torch.fft.irfft2(x, s=(size, size), out=out)
    reps = max(2, int(200_000_000 / (batch * size * size)))
    best = math.inf
    for _ in range(3):
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(reps):
            torch.fft.irfft2(x, s=(size, size), out=out)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, (time.perf_counter() - t) / reps)
    return batch / best


def peer_rate(
    img: np.ndarray, vol: np.ndarray, n1: int, n2: int, *, batch: int, device: str
) -> tuple[float, float] | None:
    """Leopard-EM 1.2 steady-state CCG/s, or None when it is not installed / fails."""
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

    def run(n: int) -> float:
        k = dict(kw, euler_angles=_angles(n).to(torch.float32))
        t = time.perf_counter()
        core_match_template(**k, orientation_batch_size=batch, num_cuda_streams=1)
        return time.perf_counter() - t

    try:
        return _steady(run, n1, n2)
    except Exception as exc:  # pragma: no cover
        print(f"# peer: leopard-em run failed ({type(exc).__name__}: {exc})")
        return None


def _fits_in_memory(size: int, box: int, batch: int) -> bool:
    """Rough working set of the 4096²/512³ case (both tools) against available memory."""
    from corrscan.core.arrays import free_memory_bytes

    need = (
        8 * box**2 * (box // 2 + 1)  # template rfft
        + 8 * size * (size // 2 + 1) * (N_DEFOCUS + 2)  # spectra
        + 4 * size * size * (batch * N_DEFOCUS + 8)  # peer's batch of maps
    )
    return need < 0.6 * free_memory_bytes("cpu")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="512² / 64³ only, short runs")
    ap.add_argument("--sizes", type=int, nargs="*", default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--threads", type=int, default=None, help="corrscan CPU worker threads")
    ap.add_argument("--no-peer", action="store_true")
    args = ap.parse_args(argv)

    if args.quick:
        cases = [(512, 64, 32, 192)]
    else:
        cases = [(512, 64, 64, 256), (1024, 64, 32, 96), (1024, 128, 32, 96), (4096, 512, 8, 24)]
    if args.sizes:
        cases = [c for c in cases if c[0] in args.sizes]
    cuda = args.device.startswith("cuda")
    if cuda:
        cases = [(s, b, n1 * 8, n2 * 8) for s, b, n1, n2 in cases]
    print(f"# torch {torch.__version__}, threads {torch.get_num_threads()}, device {args.device}")
    results = []
    for size, box, n1, n2 in cases:
        if size >= 4096 and not cuda and not _fits_in_memory(size, box, args.batch):
            print(f"# skip {size}²/{box}³: not enough memory")
            continue
        img, vol = _inputs(size, box)
        ours, ours_start = corrscan_rate(
            img, vol, n1, n2, batch=args.batch, device=args.device, threads=args.threads
        )
        fl = floor_rate(size, min(args.batch * N_DEFOCUS, max(4, 2**28 // (8 * size * size))),
                        args.device)  # fmt: skip
        fast, _ = corrscan_rate(
            img,
            vol,
            n1,
            n2,
            batch=args.batch,
            device=args.device,
            resolution_limit=3 * PIXEL_SIZE,
            threads=args.threads,
        )
        peer = None
        if not args.no_peer and not (size >= 4096 and not cuda):
            peer = peer_rate(img, vol, n1, n2, batch=args.batch, device=args.device)
        print(
            f"# {size}² x {box}³: corrscan {ours:,.1f} CCG/s (start-up {ours_start:.2f} s), "
            f"floor {fl:,.1f}/s, resolution-limited {fast:,.1f} CCG/s "
            f"(x{fast / ours:.2f}), peer "
            + ("none" if peer is None else f"{peer[0]:,.1f} CCG/s (start-up {peer[1]:.2f} s)")
        )
        results.append((size, box, ours, ours_start, fl, fast, peer))

    for size, box, ours, start, fl, fast, peer in results:
        tag = f"{size}px_t{box}"
        p = "none" if peer is None else f"{peer[0]:.2f}"
        ratio = "none" if peer is None else f"{ours / peer[0]:.3f}"
        print(
            f"RESULT job=match2d metric=ccg_per_s_{tag} corrscan={ours:.2f} peer={p} "
            f"ratio={ratio} floor_pct={100 * ours / fl:.1f}"
        )
        ps = "none" if peer is None else f"{peer[1]:.2f}"
        pr = "none" if peer is None else f"{start / max(peer[1], 1e-9):.3f}"
        print(
            f"RESULT job=match2d metric=startup_s_{tag} corrscan={start:.2f} peer={ps} "
            f"ratio={pr} floor_pct=none"
        )
        print(
            f"RESULT job=match2d metric=reslimit_speedup_{tag} corrscan={fast / ours:.3f} "
            f"peer=none ratio=none floor_pct={100 * fast / fl:.1f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

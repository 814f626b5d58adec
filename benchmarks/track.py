"""Benchmark: magnetic-tweezers bead tracking (x, y, z with a Z-LUT) against MagTrack 1.0.0.

Data (identical for both tools): ``corrscan.synthetic.beads.simulate_beads`` — the same optics
model and defaults as MagTrack's own simulator (verified equal to 1e-14): 64 x 64 ROIs,
100 nm/px, bead radius 1.5 um, saturating camera; lateral offsets uniform in +-1.5 px,
z uniform in +-4 um; "noisy" adds Poisson noise with 1,000 photons at I = 1 (~400 per
background pixel). Z-LUT: 201 planes from -10 to +10 um (100 nm apart), bead on the centre
pixel, each tool's own radial profile (MagTrack: ``radial_profile`` at (32, 32) stacked under
the z row; corrscan: ``build_zlut(..., center="roi")``). 1,000 ROIs (``--quick``: 300).

Measured:

- corrscan native ``track_stack(stack (n, 64, 64), zlut)`` (float32 compute) with the default
  ``TrackConfig.cpu_threads=1`` (one torch thread for the call; MagTrack is effectively
  single-threaded NumPy) and with torch's own thread count (``cpu_threads=None``), and the
  compatibility call ``magtrack_api.stack_to_xyzp(stack (64, 64, n), zlut)`` (one thread);
- MagTrack ``stack_to_xyzp(stack (64, 64, n), zlut)`` (float64, as its docs ask), when
  ``import magtrack`` works (``peer=none`` otherwise);
- images/s: median over ``--repeats`` timed calls after one warm-up; RMS x, y, z error in nm
  against the planted truth, clean and noisy;
- floor: one read pass over the float32 images (``stack.sum()``), the data access no tracker
  avoids; ``floor_pct`` = floor time / corrscan time.

Ends with ``RESULT job=track metric=... corrscan=... peer=... ratio=... floor_pct=...`` lines;
ratio > 1 means corrscan is better (images/s: corrscan / peer; RMS: peer / corrscan).
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from corrscan.synthetic.beads import simulate_beads
from corrscan.track import build_zlut, track_stack
from corrscan.track import magtrack_api as compat


def timed(fn: Callable[[], Any], repeats: int) -> tuple[Any, float]:
    """``(result, median wall seconds)`` over ``repeats`` calls after one warm-up call."""
    out = fn()
    times = []
    for _ in range(max(repeats, 1)):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return out, statistics.median(times)


def rms(a: Any) -> float:
    a = np.asarray(a, dtype=np.float64)
    return float(np.sqrt(np.nanmean(a**2)))


def errors(x: Any, y: Any, z: Any, truth: dict, z_true: np.ndarray) -> dict[str, float]:
    nm = truth["nm_per_px"]
    x, y, z = (np.asarray(v, dtype=np.float64).reshape(-1) for v in (x, y, z))
    return {
        "x": rms((x - truth["x_px"]) * nm),
        "y": rms((y - truth["y_px"]) * nm),
        "z": rms(z - z_true),
        "nan": int(np.isnan(x).sum() + np.isnan(z).sum()),
        "zmax": float(np.nanmax(np.abs(z - z_true))),
    }


def load_magtrack() -> Any | None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import magtrack  # noqa: F401
            import magtrack.core as mt_core
    except Exception:  # not installed, or its CuPy shim fails: benchmark without the peer
        return None
    return mt_core


def result(metric: str, ours: float, peer: float | None, *, higher_better: bool, floor=None) -> str:
    p = "none" if peer is None else f"{peer:.4g}"
    if peer is None or ours <= 0 or peer <= 0:
        ratio = "none"
    else:
        ratio = f"{(ours / peer) if higher_better else (peer / ours):.3g}"
    floor_pct = "none" if floor is None else f"{floor:.3g}"
    return (
        f"RESULT job=track metric={metric} corrscan={ours:.4g} peer={p} ratio={ratio} "
        f"floor_pct={floor_pct}"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="300 ROIs, 3 repeats (< 1 minute)")
    ap.add_argument("--n", type=int, default=None, help="number of ROIs (default 1000)")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads for cpu_threads=None runs"
    )
    ap.add_argument("--no-peer", action="store_true", help="skip MagTrack")
    args = ap.parse_args(argv)
    n = args.n or (300 if args.quick else 1000)
    repeats = args.repeats or (3 if args.quick else 7)
    if args.threads:
        torch.set_num_threads(args.threads)
    rng = np.random.default_rng(2026)
    xyz = np.c_[rng.uniform(-150.0, 150.0, (n, 2)), rng.uniform(-4000.0, 4000.0, n)]
    z_ref = np.linspace(-10000.0, 10000.0, 201)
    t0 = time.perf_counter()
    ref, _ = simulate_beads(np.c_[np.zeros((z_ref.size, 2)), z_ref])
    data = {
        "clean": simulate_beads(xyz),
        "noisy": simulate_beads(xyz, photons=1000.0, seed=1),
    }
    print(
        f"INFO data: {n} ROIs 64x64, LUT {z_ref.size} planes, simulated in "
        f"{time.perf_counter() - t0:.1f} s; torch threads {torch.get_num_threads()}"
    )
    lut = build_zlut(ref, z_ref, center="roi")
    lut_mt_layout = lut.to_magtrack()
    mt = None if args.no_peer else load_magtrack()
    lut_peer = None
    if mt is not None:
        c = np.full(z_ref.size, 32.0)
        lut_peer = np.vstack([z_ref, mt.radial_profile(np.moveaxis(ref, 0, -1).copy(), c, c)])

    rates: dict[str, dict[str, float]] = {}
    acc: dict[str, dict[str, dict[str, float]]] = {}
    floor_s = 0.0
    for name, (stack, truth) in data.items():
        s32 = torch.from_numpy(stack.astype(np.float32))
        _, floor_s = timed(lambda s32=s32: s32.sum(), repeats)
        # default TrackConfig: one torch thread for the call (cpu_threads=1)
        res, t_native = timed(lambda stack=stack: track_stack(stack, lut), repeats)
        # torch's own thread count (cpu_threads=None), for comparison
        _, t_all = timed(lambda stack=stack: track_stack(stack, lut, cpu_threads=None), repeats)
        st_t = np.ascontiguousarray(np.moveaxis(stack, 0, -1))
        out_c, t_compat = timed(
            lambda st_t=st_t: compat.stack_to_xyzp(st_t, lut_mt_layout), repeats
        )
        rates[name] = {
            "native": n / t_native,
            "native_all": n / t_all,
            "compat": n / t_compat,
            "floor": floor_s / t_native,
        }
        acc[name] = {
            "native": errors(res.x, res.y, res.z, truth, xyz[:, 2]),
            "compat": errors(*out_c[:3], truth, xyz[:, 2]),
        }
        if mt is not None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                out_p, t_peer = timed(lambda st_t=st_t: mt.stack_to_xyzp(st_t, lut_peer), repeats)
            rates[name]["peer"] = n / t_peer
            acc[name]["peer"] = errors(*out_p[:3], truth, xyz[:, 2])
        print(
            f"INFO {name:5s} native {n / t_all:9.0f} images/s with torch's "
            f"{torch.get_num_threads()} threads (cpu_threads=None)"
        )
        for who, e in acc[name].items():
            rate = rates[name].get(who, float("nan"))
            print(
                f"INFO {name:5s} {who:6s} {rate:9.0f} images/s  x {e['x']:.2f}  y {e['y']:.2f}  "
                f"z {e['z']:.2f} nm RMS (max |z err| {e['zmax']:.0f} nm, NaN {e['nan']})"
            )
    if mt is None:
        print("NOTE peer=none: magtrack 1.0.0 not importable (pip install magtrack==1.0.0)")

    for name in data:
        peer_rate = rates[name].get("peer")
        print(
            result(
                f"images_per_s_{name}",
                rates[name]["native"],
                peer_rate,
                higher_better=True,
                floor=100.0 * rates[name]["floor"],
            )
        )
        print(
            result(
                f"images_per_s_all_threads_{name}",
                rates[name]["native_all"],
                peer_rate,
                higher_better=True,
            )
        )
        print(
            result(
                f"images_per_s_compat_{name}", rates[name]["compat"], peer_rate, higher_better=True
            )
        )
        for axis in ("x", "y", "z"):
            peer_e = acc[name]["peer"][axis] if "peer" in acc[name] else None
            print(
                result(
                    f"rms_{axis}_nm_{name}",
                    acc[name]["native"][axis],
                    peer_e,
                    higher_better=False,
                )
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

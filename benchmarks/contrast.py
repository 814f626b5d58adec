"""Benchmark: tomogram contrast limits (GMM and CDF) against the portal's scikit-learn GMM.

Volume: ``corrscan.synthetic.mixtures.tomogram_mixture`` (the peer spec's recipe: N(0, 1)
lamella background, 10 % dark blobs N(-2.5, 0.8), gold cubes N(-12, 1), 0.01 % outliers
U(15, 40), outside noise sigma 0.6), float32, 200 x 512 x 512 (``--quick``: 60 x 192 x 192).

Measured (each the best of ``--repeats`` runs; peak memory = largest traced allocation above
the baseline during one run, ``tracemalloc``, which sees NumPy and scikit-learn arrays):

- corrscan ``compute_contrast_limits(vol, "gmm")`` and ``"cdf"`` with defaults;
- corrscan GMM on every voxel of the slab (``downsampling_ratio=None``): the same voxels the
  peer fits;
- the peer's method: slab of +-15 slices around the centre, ``int(0.3 * volume size)`` voxels
  (which is the whole slab for volumes of more than 100 slices), scikit-learn
  ``GaussianMixture(n, covariance_type="full", max_iter=100, random_state=42,
  init_params="k-means++")`` for n = 1..3, lowest BIC refitted with ``max_iter=300``, component
  nearest the sample mean, multipliers (2, 0.5), (2.2, 0.65), (3, 0.8); needs scikit-learn
  (``peer=none`` without it);
- peer peak memory: measured on a random subset (1e6 voxels; 2e5 with ``--quick``) and scaled
  linearly to the full voxel count;
- stability: spread of the GMM limits over sampling seeds and sample counts, in % of the data
  range (peer: over sample counts 100k, 500k and all, as in the peer spec);
- floor: drawing the sampled voxels (random gather) of each method's slab (GMM +-15
  slices, CDF +-5), the data access no method avoids.

Ends with ``RESULT job=contrast metric=... corrscan=... peer=... ratio=... floor_pct=...`` lines
(ratio = peer / corrscan: > 1 means corrscan is faster / smaller).
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

import numpy as np

from corrscan.contrast import compute_contrast_limits
from corrscan.contrast.gmm import DEFAULT_MULTIPLIERS
from corrscan.contrast.sampling import central_slice, fixed_slab
from corrscan.synthetic.mixtures import tomogram_mixture


def timed(fn: Callable[[], Any], repeats: int) -> tuple[Any, float, float]:
    """``(result, best wall s, best CPU s)`` over ``repeats`` runs."""
    best_wall = best_cpu = float("inf")
    out = None
    for _ in range(repeats):
        gc.collect()
        w0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        best_wall = min(best_wall, time.perf_counter() - w0)
        best_cpu = min(best_cpu, time.process_time() - c0)
    return out, best_wall, best_cpu


def peak_mib(fn: Callable[[], Any]) -> float:
    """Peak traced allocation (MiB) above the baseline during ``fn()``."""
    gc.collect()
    tracemalloc.start()
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    fn()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return (peak - base) / 2**20


def peer_sample(vol: np.ndarray, n_samples: int | None = None) -> np.ndarray:
    """The peer's voxel set: +-15 slices; int(0.3 * volume size) voxels drawn from the slab
    without replacement (seed 42) unless that is at least the slab (then all of it)."""
    z0, z1 = fixed_slab(vol.shape[0], 15, central_slice(vol.shape[0], None))
    slab = vol[z0:z1].reshape(-1)
    n = int(vol.size * 0.3) if n_samples is None else n_samples
    if n >= slab.size:
        return np.array(slab, dtype=np.float32)
    idx = np.random.default_rng(42).choice(slab.size, n, replace=False)
    return slab[idx]


def peer_gmm_limits(x: np.ndarray) -> tuple[float, float]:
    """The portal's GMM limits with scikit-learn (see the module docstring)."""
    from sklearn.mixture import GaussianMixture

    data = x.reshape(-1, 1)
    bics = []
    for n in (1, 2, 3):
        try:
            gm = GaussianMixture(
                n, covariance_type="full", max_iter=100, random_state=42, init_params="k-means++"
            ).fit(data)
            bics.append(gm.bic(data))
        except ValueError:
            bics.append(np.inf)
    best = int(np.argmin(bics)) + 1
    gm = GaussianMixture(
        best, covariance_type="full", max_iter=300, random_state=42, init_params="k-means++"
    ).fit(data)
    means = gm.means_[:, 0]
    stds = np.sqrt(gm.covariances_[:, 0, 0])
    j = int(np.argmin(np.abs(means - x.mean())))
    a, b = DEFAULT_MULTIPLIERS[best]
    lo = float(np.clip(means[j] - a * stds[j], x.min(), x.max()))
    hi = float(np.clip(means[j] + b * stds[j], x.min(), x.max()))
    return lo, hi


def have_sklearn() -> bool:
    try:
        import sklearn  # noqa: F401
    except ImportError:
        return False
    return True


def result(metric: str, ours: float, peer: float | None, floor: float | None = None) -> str:
    ratio = "none" if peer is None or ours <= 0 else f"{peer / ours:.3g}"
    floor_pct = "none" if floor is None or ours <= 0 else f"{100 * floor / ours:.3g}"
    p = "none" if peer is None else f"{peer:.4g}"
    return (
        f"RESULT job=contrast metric={metric} corrscan={ours:.4g} peer={p} ratio={ratio} "
        f"floor_pct={floor_pct}"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small volume, < 1 minute")
    ap.add_argument("--shape", type=int, nargs=3, default=None, metavar=("Z", "Y", "X"))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-peer", action="store_true", help="skip the scikit-learn peer")
    args = ap.parse_args(argv)
    shape = tuple(args.shape) if args.shape else ((60, 192, 192) if args.quick else (200, 512, 512))
    t0 = time.perf_counter()
    vol, _ = tomogram_mixture(shape, seed=0)
    made = time.perf_counter() - t0
    data_range = float(vol.max() - vol.min())
    z0, z1 = fixed_slab(shape[0], 15, central_slice(shape[0], None))
    slab_mib = vol[z0:z1].nbytes / 2**20
    print(f"volume {shape} float32 ({vol.nbytes / 2**20:.0f} MiB, made in {made:.1f} s)")
    print(f"GMM slab: slices {z0}..{z1 - 1} ({slab_mib:.1f} MiB, {vol[z0:z1].size} voxels)")

    def row(label: str, lim: Any, wall: float, cpu: float, mem: float | None) -> None:
        m = "" if mem is None else f"{mem:7.1f} MiB"
        print(
            f"{label:<26}{wall:8.3f} s wall {cpu:8.3f} CPU-s {m} limits {lim[0]:+.4f} {lim[1]:+.4f}"
        )

    lines = []
    # corrscan GMM and CDF with defaults; GMM on every slab voxel (the peer's voxel set).
    gmm, gmm_wall, gmm_cpu = timed(lambda: compute_contrast_limits(vol, "gmm"), args.repeats)
    gmm_mem = peak_mib(lambda: compute_contrast_limits(vol, "gmm"))
    cdf, cdf_wall, cdf_cpu = timed(lambda: compute_contrast_limits(vol, "cdf"), args.repeats)
    cdf_mem = peak_mib(lambda: compute_contrast_limits(vol, "cdf"))
    allv, all_wall, all_cpu = timed(
        lambda: compute_contrast_limits(vol, "gmm", downsampling_ratio=None), 1
    )
    all_mem = peak_mib(lambda: compute_contrast_limits(vol, "gmm", downsampling_ratio=None))
    row("corrscan gmm (defaults)", gmm, gmm_wall, gmm_cpu, gmm_mem)
    row("corrscan gmm (all voxels)", allv, all_wall, all_cpu, all_mem)
    row("corrscan cdf (defaults)", cdf, cdf_wall, cdf_cpu, cdf_mem)

    # Floor: drawing the default sample (random voxels of the slab).
    slab = vol[z0:z1].reshape(-1)
    n_draw = min(int(np.ceil(0.3 * slab.size)), 1_000_000)
    rng = np.random.default_rng(0)
    _, floor_wall, _ = timed(lambda: slab[rng.integers(0, slab.size, n_draw)], args.repeats)
    # CDF's own floor: its +-5-slice slab and sample count.
    c0, c1 = fixed_slab(shape[0], 5, central_slice(shape[0], None))
    cslab = vol[c0:c1].reshape(-1)
    n_cdf = min(int(np.ceil(0.3 * cslab.size)), 1_000_000)
    _, cdf_floor, _ = timed(lambda: cslab[rng.integers(0, cslab.size, n_cdf)], args.repeats)

    # Stability over seeds and sample counts (corrscan).
    runs = [compute_contrast_limits(vol, "gmm", seed=s) for s in range(5)]
    runs += [compute_contrast_limits(vol, "gmm", downsampling_ratio=r, seed=1) for r in (0.05, 1.0)]
    runs.append(allv)
    ours_spread = float(np.max(np.ptp(np.array(runs), axis=0)) / data_range * 100)
    print(f"corrscan gmm spread (5 seeds, 4 sample counts): {ours_spread:.3f} % of the data range")

    peer_wall = peer_cpu = peer_mem = peer_spread = None
    if not args.no_peer and have_sklearn():
        x = peer_sample(vol)
        print(f"peer: scikit-learn GaussianMixture on {x.size} voxels ...", flush=True)
        peer, peer_wall, peer_cpu = timed(lambda: peer_gmm_limits(x), 1)
        # Memory measured on a subset, scaled linearly (the peer's cost is ~170 B/voxel).
        sub = peer_sample(vol, min(x.size, 200_000 if args.quick else 1_000_000))
        peer_mem = peak_mib(lambda: peer_gmm_limits(sub)) * x.size / sub.size
        row("peer gmm (scikit-learn)", peer, peer_wall, peer_cpu, peer_mem)
        peer_runs = [peer]
        counts = [
            n for n in ((100_000,) if args.quick else (100_000, 500_000, 2_000_000)) if n < x.size
        ]
        for n in counts:
            peer_runs.append(peer_gmm_limits(peer_sample(vol, n)))
        peer_spread = float(np.max(np.ptp(np.array(peer_runs), axis=0)) / data_range * 100)
        shown = [tuple(round(v, 3) for v in r) for r in peer_runs]
        print(f"peer gmm limits ({x.size} voxels, then {counts}): {shown}")
        print(f"peer gmm spread: {peer_spread:.3f} % of the data range")
    elif not args.no_peer:
        print("peer: scikit-learn not installed (pip install scikit-learn); peer=none")

    verdict = "yes" if gmm_mem <= slab_mib else "NO"
    print(f"GMM peak extra memory {gmm_mem:.1f} MiB <= slab {slab_mib:.1f} MiB: {verdict}")
    if peer_cpu is not None:
        print(f"GMM speed-up in CPU seconds: {peer_cpu / gmm_cpu:.0f}x (target >= 100x)")
    lines.append(result("gmm_seconds", gmm_wall, peer_wall, floor_wall))
    lines.append(result("gmm_cpu_seconds", gmm_cpu, peer_cpu))
    lines.append(result("gmm_all_voxels_seconds", all_wall, peer_wall))
    lines.append(result("gmm_peak_mib", gmm_mem, peer_mem))
    lines.append(result("cdf_seconds", cdf_wall, None, cdf_floor))
    lines.append(result("cdf_peak_mib", cdf_mem, None))
    lines.append(result("gmm_spread_pct_of_range", ours_spread, peer_spread))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())

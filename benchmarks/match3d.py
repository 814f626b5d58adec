"""Benchmark of corrscan.match3d against pyTME 0.3.6 on the same synthetic data.

Data (pyTME spec §12.2): 128^3 float32 tomogram, 32^3 asymmetric pseudo-atom template (peak
1), spherical mask r = 14, 6 rotated copies, Gaussian noise sigma = 0.5 (easy) or 1.5 (recall),
no missing wedge; 360 rotations (30 degree step; corrscan's set, given to both programs, to
pyTME in its own matrix convention, see ``to_pytme``); even template size: pyTME rotates about
``(S - 1) / 2``, corrscan about ``S // 2``, so pyTME's peaks may sit one voxel off;
circular correlation over the 128^3 box (``pad_edges=False`` / ``pad_target_edges=False``).

Figures (printed as ``RESULT`` lines):

* ``rot_per_s_1thread_<score>_order<k>``: rotations per CPU-second of one single-threaded
  process (``torch.set_num_threads(1)``; pyTME one worker), process CPU time, so the number
  does not depend on the machine's load as much as wall time. ``floor_pct`` is corrscan's rate
  over the floor rate (measured right before that run): one ``rfftn`` of the zero-padded
  128^3 box plus one ``irfftn`` per rotation (MKL through torch, single-threaded), what one
  real-FFT implementation cannot avoid (corrscan pairs rotations in complex transforms, so it
  can exceed 100 %).
* ``wall_s_2cores_<score>``: wall seconds for the whole search using 2 cores (corrscan: 2
  rotation-parallel threads in one process, ``workers=2``; pyTME: 2 rotation worker
  processes), setup included.
* ``recall_sigma1.5_<score>``: copies found (top-6 peaks within 2 voxels and rotation error below
  the step) out of 6.

corrscan runs with its defaults (paired complex transforms, compiled rotation and one-pass
analyzer update, see docs/match3d.md "Performance"); numba's one-time compilation (cached on
disk) runs in a 2-rotation warm-up outside the timed region. pyTME's timings include its FFTW
planning and, for 2 workers, its process start-up, as a user would see them.

Every figure is the median of ``--repeat`` (default 3) runs, corrscan and pyTME alternating;
``floor_pct`` is the median of each run's ratio to the floor measured just before it.

``--quick`` (< 1 minute): 36 rotations, order 3 only, one run, no 2-core run, no recall run.
Without pyTME installed the peer columns read ``none``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import time
import warnings

import numpy as np
import torch

from corrscan.match3d import match_template, rotation_set
from corrscan.match3d.rotations import rotation_angle_deg
from corrscan.match3d.search import spherical_mask
from corrscan.synthetic.tomogram import simulate_tomogram

N, S, STEP, N_COPIES = 128, 32, 30.0, 6


def make_data(noise: float, seed: int = 7):
    tomo, truth = simulate_tomogram(
        N,
        template_shape=S,
        n_particles=N_COPIES,
        noise_std=noise,
        wedge=None,
        n_atoms=60,
        sigma=1.6,
        seed=seed,
    )
    return tomo, truth["template"], spherical_mask((S, S, S), 14), truth


@contextlib.contextmanager
def threads(n: int):
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def floor_rate() -> float:
    """Rotations/s of one zero-padded rfftn + one irfftn of the 128^3 box (1 thread)."""
    with threads(1):
        pad = torch.zeros((1, N, N, N))
        spec = torch.empty((1, N, N, N // 2 + 1), dtype=torch.complex64)
        out = torch.empty((1, N, N, N))
        t = torch.randn(1, S, S, S)
        times = []
        for _ in range(24):
            t0 = time.process_time()
            pad[:, :S, :S, :S] = t
            torch.fft.rfftn(pad, dim=(-3, -2, -1), out=spec)
            torch.fft.irfftn(spec, s=(N, N, N), dim=(-3, -2, -1), out=out)
            times.append(time.process_time() - t0)
        return 1.0 / float(np.median(times[4:]))


def run_corrscan(tomo, tmpl, mask, rots, score, order, n_threads):
    kw = dict(
        workers=n_threads,
        template_mask=mask,
        score=score,
        interpolation_order=order,
        pad_edges=False,
        num_threads=n_threads,
        progress=False,
    )
    with threads(n_threads):
        # numba's one-time compilation (cached on disk) outside the timed region
        match_template(tomo, tmpl, rotations=rots[:2], **kw)
        t_cpu, t_wall = time.process_time(), time.perf_counter()
        res = match_template(tomo, tmpl, rotations=rots, **kw)
        return time.process_time() - t_cpu, time.perf_counter() - t_wall, res


def have_pytme() -> bool:
    try:
        import tme  # noqa: F401
    except ImportError:
        return False
    return True


_P = np.eye(3)[::-1]


def to_pytme(rots: np.ndarray) -> np.ndarray:
    """pyTME's matrices act on (z, y, x) index vectors and rotate by the inverse (measured on
    planted copies): our R corresponds to its P R^T P (P reverses the axes), an involution."""
    return np.ascontiguousarray(_P @ np.swapaxes(np.asarray(rots, np.float64), -1, -2) @ _P)


def run_pytme(tomo, tmpl, mask, rots, score, order, workers):
    """pyTME 0.3.6 ``match_exhaustive`` with MaxScoreOverRotations (numpyfftw backend)."""
    from tme.analyzer import MaxScoreOverRotations
    from tme.matching_data import MatchingData
    from tme.matching_exhaustive import match_exhaustive
    from tme.matching_scores import MATCHING_EXHAUSTIVE_REGISTER

    setup, scoring = MATCHING_EXHAUSTIVE_REGISTER[score]
    rots = to_pytme(rots)
    md = MatchingData(
        tomo.copy(),
        tmpl.copy(),
        template_mask=mask.copy(),
        rotations=np.ascontiguousarray(rots, dtype=np.float32),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t_cpu, t_wall = time.process_time(), time.perf_counter()
        out = match_exhaustive(
            md,
            scoring,
            setup,
            MaxScoreOverRotations,
            job_schedule=(1, workers),
            pad_target_edges=False,
            interpolation_order=order,
        )
        return time.process_time() - t_cpu, time.perf_counter() - t_wall, out


def recall_corrscan(res, truth) -> int:
    pk = res.peaks(num_peaks=N_COPIES, min_distance=S // 2)
    pos = pk[["z", "y", "x"]].to_numpy()
    n = 0
    for p, r in zip(truth["positions"], truth["rotations"], strict=True):
        d = np.abs(pos - p).max(axis=1)
        j = int(d.argmin())
        if d[j] <= 2 and rotation_angle_deg(res.rotations[pk.rotation_index.iloc[j]], r) < STEP:
            n += 1
    return n


def recall_pytme(out, truth) -> int:
    from corrscan.match3d.peaks import call_peaks

    scores, _, rot_map, mapping = out[:4]
    coords, _ = call_peaks(np.asarray(scores), num_peaks=N_COPIES, min_distance=S // 2)
    n = 0
    for p, r in zip(truth["positions"], truth["rotations"], strict=True):
        d = np.abs(coords - p).max(axis=1)
        j = int(d.argmin())
        m = to_pytme(np.asarray(mapping[int(rot_map[tuple(coords[j])])]))  # back to ours
        if d[j] <= 2 and rotation_angle_deg(m, r) < STEP:
            n += 1
    return n


def result(
    metric: str,
    ours: float,
    peer: float | None,
    floor: float | None = None,
    higher_is_better: bool = True,
) -> None:
    peer_s = "none" if peer is None else f"{peer:.4g}"
    if peer is None or peer == 0:
        ratio = "none"
    else:
        ratio = f"{(ours / peer) if higher_is_better else (peer / ours):.3g}"
    fl = "none" if floor is None else f"{100.0 * ours / floor:.1f}"
    print(
        f"RESULT job=match3d metric={metric} corrscan={ours:.4g} peer={peer_s} "
        f"ratio={ratio} floor_pct={fl}",
        flush=True,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="< 1 minute: 36 rotations, order 3")
    ap.add_argument("--no-peer", action="store_true", help="skip pyTME even if installed")
    ap.add_argument("--repeat", type=int, default=3, help="runs per figure (medians)")
    args = ap.parse_args()
    os.environ.setdefault("CORRSCAN_PROGRESS", "0")
    peer = have_pytme() and not args.no_peer

    rots_all = rotation_set(angular_step=STEP).numpy()
    rots = rots_all[:36] if args.quick else rots_all
    tomo, tmpl, mask, truth = make_data(0.5)
    floor = floor_rate()
    print(
        f"# {len(rots)} rotations, tomogram {N}^3, template {S}^3, "
        f"torch {torch.__version__}, pytme {'yes' if peer else 'no'}"
    )
    print(f"# floor (rfftn + irfftn of {N}^3, 1 thread): {floor:.1f} rotations/s")

    orders = (3,) if args.quick else (1, 3)
    reps = 1 if args.quick else max(1, args.repeat)
    for score in ("FLCSphericalMask", "CC"):
        for order in orders:
            ours_r, pct_r, theirs_r = [], [], []
            for _ in range(reps):
                # the floor right before each run (the machine's speed drifts by ~20 %)
                floor = floor_rate()
                cpu, wall, _ = run_corrscan(tomo, tmpl, mask, rots, score, order, 1)
                ours_r.append(len(rots) / cpu)
                pct_r.append(ours_r[-1] / floor)
                line = f"# {score} order {order}: corrscan {cpu:.2f} CPU-s ({wall:.2f} s wall)"
                if peer:
                    pcpu, pwall, _ = run_pytme(tomo, tmpl, mask, rots, score, order, 1)
                    theirs_r.append(len(rots) / pcpu)
                    line += f", pytme {pcpu:.2f} CPU-s ({pwall:.2f} s wall)"
                print(f"{line}, floor {floor:.1f} rot/s")
            ours = float(np.median(ours_r))
            theirs = float(np.median(theirs_r)) if theirs_r else None
            # floor_pct: the median of the per-run ratios to the floor measured just before
            result(
                f"rot_per_s_1thread_{score}_order{order}", ours, theirs,
                ours / float(np.median(pct_r)),
            )  # fmt: skip

    if args.quick:
        return
    for score in ("FLCSphericalMask", "CC"):
        walls, pwalls = [], []
        for _ in range(reps):  # alternating runs, medians
            walls.append(run_corrscan(tomo, tmpl, mask, rots, score, 3, 2)[1])
            if peer:
                pwalls.append(run_pytme(tomo, tmpl, mask, rots, score, 3, 2)[1])
        print(
            f"# {score} 2 cores: corrscan {', '.join(f'{w:.2f}' for w in walls)} s; "
            f"pytme {', '.join(f'{w:.2f}' for w in pwalls) or 'none'} s"
        )
        pwall = float(np.median(pwalls)) if pwalls else None
        result(f"wall_s_2cores_{score}", float(np.median(walls)), pwall, higher_is_better=False)

    tomo_h, tmpl_h, mask_h, truth_h = make_data(1.5)
    for score in ("FLCSphericalMask", "CC"):
        _, _, res = run_corrscan(tomo_h, tmpl_h, mask_h, rots, score, 3, 2)
        ours = recall_corrscan(res, truth_h)
        theirs = None
        if peer:
            out = run_pytme(tomo_h, tmpl_h, mask_h, rots, score, 3, 1)[2]
            theirs = recall_pytme(out, truth_h)
        result(f"recall_sigma1.5_{score}", ours, theirs)
    del truth


if __name__ == "__main__":
    main()

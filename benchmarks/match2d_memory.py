"""Peak host memory of a 4096² search with a 512³ template on the CPU (issue #3: <= 16 GiB).

A 4096² Gaussian-noise micrograph and a smooth 512³ template (two Gaussian blobs), 5 defocus
planes, a few orientations (memory does not grow with their number: the search streams them).
Peak resident memory of the whole process (``resource.getrusage``), inputs included.

Usage::

    python benchmarks/match2d_memory.py            # 4096² x 512³, 4 orientations
    python benchmarks/match2d_memory.py --quick    # 1024² x 128³
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np
import torch

from corrscan.match2d import match_template


def _template(n: int) -> np.ndarray:
    z = torch.linspace(-1, 1, n)
    r2 = z[:, None, None] ** 2 + z[None, :, None] ** 2 + z[None, None, :] ** 2
    t = torch.exp(-r2 / 0.05)
    r2.copy_((z[:, None, None] - 0.2) ** 2 + z[None, :, None] ** 2 + (z[None, None, :] + 0.1) ** 2)
    t += 0.5 * torch.exp(-r2 / 0.01)
    return t.numpy()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="1024² x 128³ instead of 4096² x 512³")
    args = ap.parse_args()
    size, box = (1024, 128) if args.quick else (4096, 512)
    mic = np.random.default_rng(0).standard_normal((size, size)).astype(np.float32)
    tmpl = _template(box)
    ori = np.array([[0, 0, 0], [10, 20, 30], [40, 50, 60], [70, 80, 90]], dtype=np.float32)
    t0 = time.perf_counter()
    res = match_template(
        mic, tmpl,
        optics={"pixel_size": 1.0, "defocus_u": 10000, "defocus_v": 10000},
        defocus_search={"defocus_min": -400, "defocus_max": 400, "defocus_step": 200},
        orientations=ori, progress=False,
    )  # fmt: skip
    seconds = time.perf_counter() - t0
    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # kB -> GiB
    print(
        f"# {size}² x {box}³: {seconds:.1f} s, maps {tuple(res.mip.shape)}, peak {peak_gib:.2f} GiB"
    )
    print(
        f"RESULT job=match2d metric=peak_rss_gib_{size}px_t{box} corrscan={peak_gib:.2f} "
        f"peer=none ratio={16 / peak_gib:.2f} floor_pct=none"
    )


if __name__ == "__main__":
    main()

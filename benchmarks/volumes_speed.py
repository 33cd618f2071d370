"""Time per voxel of the volume call against the 2-D call's time per pixel times the ratio of
filter taps (3 x 7 x 7 = 147 against 7 x 7 = 49: 3x).

    python benchmarks/volumes_speed.py [--repeat 5] [--threads=1]

One thread (OMP, OpenBLAS and Numba threads set to 1; ``--threads=N``: N), float64 input in [0, 1], sigma 0.1,
the default calls: ``denoise_trd(image, 0.1)`` on 512 x 512 and 1024 x 1024 images and
``denoise_trd(volume, 0.1, axes="ZYX")`` on 32 x 192 x 192 and 64 x 256 x 256 volumes (the
shipped 5-stage models: 48 filters of 7 x 7, and of 3 x 7 x 7). Median of ``--repeat`` runs
after a warm-up. The last column: the volume's time per voxel over (the 2-D time per pixel at
512 x 512 times 3); 1 means the volume kernel is as close to the hardware as the 2-D one.
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
import time
from pathlib import Path

THREADS = next((a.split("=", 1)[1] for a in sys.argv if a.startswith("--threads=")), "1")
for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ[var] = THREADS

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _data import cpu_name  # noqa: E402

from skimage_trd import denoise_trd  # noqa: E402

TAPS_RATIO = 3.0


def median_time(fn, repeat):
    fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--threads", default="1", help="threads (give it as --threads=N)")
    args = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    rows = []
    for shape in ((512, 512), (1024, 1024)):
        x = rng.random(shape)
        t = median_time(lambda x=x: denoise_trd(x, 0.1), args.repeat)
        rows.append(("2-D " + "x".join(map(str, shape)), t, t / x.size))
    base = rows[0][2]
    for shape in ((32, 192, 192), (64, 256, 256)):
        x = rng.random(shape)
        t = median_time(lambda x=x: denoise_trd(x, 0.1, axes="ZYX"), args.repeat)
        rows.append(("3-D " + "x".join(map(str, shape)), t, t / x.size))
    print(f"{cpu_name()}, {THREADS} thread(s), {datetime.date.today().isoformat()}, median of "
          f"{args.repeat}\ncommand: python benchmarks/volumes_speed.py "
          + " ".join(argv or sys.argv[1:]))
    print("| call | seconds | ns per pixel/voxel | per voxel / (3 x 2-D per pixel at 512^2) |")
    print("|---|---|---|---|")
    for name, t, per in rows:
        ratio = f"{per / (TAPS_RATIO * base):.2f}" if name.startswith("3-D") else "-"
        print(f"| {name} | {t:.3f} | {per * 1e9:.0f} | {ratio} |")


if __name__ == "__main__":
    main()

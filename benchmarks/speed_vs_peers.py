"""TRD against BM3D and scikit-image's non-local means, speed and PSNR in the same run.

    python benchmarks/speed_vs_peers.py [--sizes 256,512,1024,2048] [--repeat 5] [--threads 1]

Image: skimage.data.camera tiled to size, Gaussian noise sigma 25 (0..255 scale, seed 0), the
same noisy image for every method. TRD: shipped 5-stage models (5x5 and 7x7, sigma 25), Numba,
float32, after a warm-up. BM3D: `bm3d.bm3d(noisy / 255, sigma_psd=25 / 255)`. NLM: fast mode,
patch 5, distance 6, h = 0.6 sigma. Seconds are the median of --repeat runs (BM3D: of
min(--repeat, 3) runs, one run from 1024^2 up); all single-threaded unless --threads says
otherwise for TRD. The paper's Table 2 (MATLAB, one Xeon thread) is printed beside.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import time

for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(var, "1")  # peers single-threaded, before numpy/bm3d load

import numpy as np  # noqa: E402

from skimage_trd import denoise_trd  # noqa: E402
from skimage_trd._metrics import psnr  # noqa: E402
from skimage_trd.kernels.numba_cpu import set_threads  # noqa: E402

PAPER_1T = {256: 1.21, 512: 3.72, 1024: 14.0, 2048: 62.2, 3072: 135.9}


def timed(fn, repeat):
    times, out = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times)), out


def main(argv=None):
    from skimage import data
    from skimage.restoration import denoise_nl_means

    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="256,512,1024,2048")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-bm3d", action="store_true")
    args = ap.parse_args(argv)
    set_threads(args.threads)
    try:
        import bm3d
    except ImportError:
        bm3d = None
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo")
                if ln.startswith("model name")), platform.machine())
    print(f"# {cpu}, {os.cpu_count()} logical CPUs; TRD threads={args.threads}, peers 1 thread")
    print(f"# date {datetime.date.today()}; command: python {' '.join(sys.argv)}")
    print("| size | TRD 5x5 s (dB) | TRD 7x7 s (dB) | BM3D s (dB) | NLM s (dB) | BM3D / TRD 7x7 "
          "| paper TRD 7x7, MATLAB 1 thr |")
    print("|---|---|---|---|---|---|---|")
    cam = data.camera().astype(np.float64)
    for n in (int(s) for s in args.sizes.split(",")):
        clean = np.tile(cam, (-(-n // 512), -(-n // 512)))[:n, :n]
        noisy = clean + 25 * np.random.default_rng(0).standard_normal(clean.shape)
        noisy32 = noisy.astype(np.float32)
        cells = []
        trd7 = None
        for name in ("trd-gauss-s25-5x5-5st", "trd-gauss-s25-7x7-5st"):
            denoise_trd(noisy32[:64, :64], 25.0, model=name)  # warm-up
            t, out = timed(lambda name=name: denoise_trd(noisy32, 25.0, model=name), args.repeat)
            cells.append(f"{t:.3f} ({psnr(out, clean):.2f})")
            trd7 = t
        if bm3d is not None and not args.no_bm3d:
            reps = 1 if n >= 1024 else min(args.repeat, 3)
            t, out = timed(lambda: bm3d.bm3d(noisy / 255.0, sigma_psd=25 / 255.0) * 255.0, reps)
            cells.append(f"{t:.2f} ({psnr(out, clean):.2f})")
            ratio = f"{t / trd7:.0f}x"
        else:
            cells.append("-")
            ratio = "-"
        t, out = timed(lambda: denoise_nl_means(noisy, patch_size=5, patch_distance=6,
                                                h=0.6 * 25, sigma=25, fast_mode=True),
                       min(args.repeat, 3))
        cells.append(f"{t:.2f} ({psnr(out, clean):.2f})")
        print(f"| {n}^2 | {' | '.join(cells)} | {ratio} | {PAPER_1T.get(n, '-')} |")
        sys.stdout.flush()


if __name__ == "__main__":
    main()

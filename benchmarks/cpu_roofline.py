"""The default ``denoise_trd`` call on the CPU beside a hand-written AVX-512 C++ kernel and the
machine's measured FMA rate (a roofline statement), per image size and thread count.

    python benchmarks/cpu_roofline.py [--sizes 512,2048,4096] [--threads 1,2] [--repeat 3]
                                      [--kernel-kinds]

Ours: ``denoise_trd(noisy, sigma=25 / 255)`` exactly as a user calls it (float64 image in
[0, 1]: ``skimage.data.camera`` tiled to size / 255 + Gaussian noise 25/255, seed 0; default
bank, which picks the 7x7, 5-stage, 48-filter sigma-25 model), the whole call. Peer: the C++
kernel of ``../shared/perf`` (``FusedTRD(make_params(T=5, nk=48, ks=7))``, the same stage map,
random weights, register-resident polynomial influence functions) on the same image in
float32, built with ``g++ -O3 -march=native -fopenmp`` on first use (never shipped). Each
cell: median of --repeat runs after a warm-up, ours and the peer interleaved
(``_data.median_times``).

FLOP per pixel: 5 stages x 48 filters x 2 correlations x 49 taps x 2 (a multiply-add is two
FLOP) = 47,040 (the influence functions and the update are not counted). The FMA rate is
measured here: a loop of independent 16-lane float32 multiply-adds (``_simd.vfma``, 12
accumulators) on 1 and on 2 threads.

``--kernel-kinds`` adds the stage map alone (``run_model`` on the float32 plane) with each kind
of influence-function evaluation: ``p`` (polynomials, AVX-512) and ``l`` (linear tables by
gathers: the kind of AVX2-only processors).
"""

from __future__ import annotations

import argparse
import datetime
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(var, "1")

import numpy as np  # noqa: E402
from _data import cpu_name, median_times  # noqa: E402  (benchmarks/ is the script's folder)
from numba import njit  # noqa: E402

from skimage_trd import denoise_trd, load_model  # noqa: E402
from skimage_trd.kernels import numba_cpu as nk  # noqa: E402
from skimage_trd.kernels._simd import vfma, vload, vsplat, vstore  # noqa: E402
from skimage_trd.kernels.engine import _run_numba  # noqa: E402

FLOP_PER_PIXEL = 5 * 48 * 2 * 49 * 2
SHARED_PERF = Path(__file__).resolve().parents[2] / "shared" / "perf"


@njit(nogil=True, fastmath=True)
def _fma_loop(buf, n):
    # 12 independent accumulators: enough to cover the multiply-add latency on two units
    a0 = vload(buf, 0)
    a1 = vload(buf, 16)
    a2 = vload(buf, 32)
    a3 = vload(buf, 48)
    a4 = vload(buf, 64)
    a5 = vload(buf, 80)
    a6 = vload(buf, 96)
    a7 = vload(buf, 112)
    a8 = vload(buf, 128)
    a9 = vload(buf, 144)
    a10 = vload(buf, 160)
    a11 = vload(buf, 176)
    m = vsplat(np.float32(0.999999))
    c = vsplat(np.float32(1e-7))
    for _ in range(n):
        a0 = vfma(a0, m, c)
        a1 = vfma(a1, m, c)
        a2 = vfma(a2, m, c)
        a3 = vfma(a3, m, c)
        a4 = vfma(a4, m, c)
        a5 = vfma(a5, m, c)
        a6 = vfma(a6, m, c)
        a7 = vfma(a7, m, c)
        a8 = vfma(a8, m, c)
        a9 = vfma(a9, m, c)
        a10 = vfma(a10, m, c)
        a11 = vfma(a11, m, c)
    for i, a in enumerate((a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11)):
        vstore(buf, 16 * i, a)


def fma_rate(n_threads, n=20_000_000):
    """Measured float32 FMA throughput in GFLOP/s on ``n_threads`` threads (best of 3)."""
    bufs = [np.ones(192, np.float32) for _ in range(n_threads)]
    _fma_loop(bufs[0], 10)
    best = np.inf
    with ThreadPoolExecutor(n_threads) as pool:
        for _ in range(3):
            t0 = time.perf_counter()
            list(pool.map(lambda b: _fma_loop(b, n), bufs))
            best = min(best, time.perf_counter() - t0)
    return n_threads * n * 12 * 16 * 2 / best / 1e9


def image(n):
    from skimage import data

    cam = data.camera() / 255.0
    tiled = np.tile(cam, (-(-n // 512), -(-n // 512)))[:n, :n]
    return tiled + 25 / 255 * np.random.default_rng(0).standard_normal((n, n))


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="512,2048,4096")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--kernel-kinds", action="store_true")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(SHARED_PERF))
    try:
        from impl_c import FusedTRD
        from trd_common import make_params
    except (ImportError, OSError, subprocess.CalledProcessError) as err:
        sys.exit(f"the C++ yardstick in {SHARED_PERF} is needed ({err})")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, cwd=Path(__file__).parent).stdout.strip()
    print(f"# machine: {cpu_name()}, {os.cpu_count()} logical CPUs")
    print(f"# date: {datetime.date.today()}  commit: {commit}  command: python "
          f"{' '.join(sys.argv)}")
    print(f"# ours: denoise_trd(float64 image, sigma=25/255), whole call; C++: FusedTRD (float32, "
          f"same stage map); median of {args.repeat}; FLOP/pixel {FLOP_PER_PIXEL}")
    threads = [int(t) for t in args.threads.split(",")]
    peak = {t: fma_rate(t) for t in threads}
    print("# measured FMA rate (float32, 16-lane multiply-adds): "
          + ", ".join(f"{peak[t]:.0f} GFLOP/s on {t} thread{'s' * (t > 1)}" for t in threads))
    print()
    print("| size | threads | ours (s) | ours ns/pixel | ours GFLOP/s | % of FMA rate | C++ (s) "
          "| C++ GFLOP/s | ours / C++ | ns/pixel / that at the first size |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    first = {}
    rows = []
    for n in (int(s) for s in args.sizes.split(",")):
        noisy = image(n)
        f32 = (255 * noisy).astype(np.float32)
        for t in threads:
            cpp = FusedTRD(make_params(T=5, nk=48, ks=7), nthreads=t)
            with nk.numba_threads(t):
                ours, theirs = median_times(
                    [lambda: denoise_trd(noisy, sigma=25 / 255), lambda: cpp(f32)], args.repeat)
            ns = ours / n / n * 1e9
            first.setdefault(t, ns)
            gflops = FLOP_PER_PIXEL * n * n / ours / 1e9
            row = (f"| {n}^2 | {t} | {ours:.3f} | {ns:.0f} | {gflops:.1f} | "
                   f"{100 * gflops / peak[t]:.0f} % | {theirs:.3f} | "
                   f"{FLOP_PER_PIXEL * n * n / theirs / 1e9:.1f} | {ours / theirs:.2f} | "
                   f"{ns / first[t]:.2f} |")
            rows.append((n, t, ours))
            print(row, flush=True)
    by = {(n, t): s for n, t, s in rows}
    for n in sorted({n for n, _, _ in rows}):
        if (n, 1) in by and (n, 2) in by:
            print(f"\n{n}^2: two threads {by[(n, 1)] / by[(n, 2)]:.2f}x one thread")
    if args.kernel_kinds:
        model = load_model("trd-gauss-s25-7x7-5st")
        print("\n| size | stage map, kind p (s) | kind l (s) | l / p |")
        print("|---|---|---|---|")
        for n in (int(s) for s in args.sizes.split(",")):
            f32 = (255 * image(n)).astype(np.float32)
            with nk.numba_threads(1):
                runs = median_times(
                    [lambda k=kind: _run_numba(f32, model, 5, False, None, None, kind=k)
                     for kind in ("p", "l")], args.repeat)
                times = dict(zip(("p", "l"), runs))
            print(f"| {n}^2 | {times['p']:.3f} | {times['l']:.3f} | "
                  f"{times['l'] / times['p']:.2f} |", flush=True)


if __name__ == "__main__":
    main()

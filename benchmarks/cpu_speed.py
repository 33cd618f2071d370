"""CPU (Numba) speed of the 5-stage TRD stage map and the cost of a new process's first call.

    python benchmarks/cpu_speed.py [--sizes 256,512,1024,2048] [--threads 1,2] [--repeat 5]

Times ``run_model`` (the model-scale engine under ``denoise_trd``) on float32 images
after a warm-up, median of --repeat runs, for 5x5 (24 filters) and 7x7 (48 filters)
five-stage models; then starts fresh Python processes to show that the first call
of a new process loads the compiled kernels from Numba's cache instead of compiling.
The paper's Table 2 (single-thread Xeon E5-2680 v2, MATLAB) is printed beside.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import subprocess
import sys
import time

import numpy as np

PAPER_1T = {256: 1.21, 512: 3.72, 1024: 14.0, 2048: 62.2, 3072: 135.9}


from _data import cpu_name  # noqa: E402  (benchmarks/ is the script's folder)


def synthetic_model(kernel_size, seed=0):
    from skimage_trd import TRDModel, dct_filter_basis

    rng = np.random.default_rng(seed)
    basis = dct_filter_basis(kernel_size)
    m = basis.shape[0]
    filt = np.tensordot(rng.standard_normal((5, m, m)), basis, axes=([-1], [0]))
    filt /= np.sqrt((filt**2).sum(axis=(-2, -1), keepdims=True))
    centers = np.arange(-310.0, 310.1, 10.0)
    return TRDModel(filt, 0.1 * rng.standard_normal((5, m, 63)), centers, 0.01,
                    lambdas=np.full(5, 0.1), sigma=25.0, name=f"synthetic-{kernel_size}")


COLD = """
import time; t0 = time.perf_counter()
import numpy as np
from skimage_trd.kernels.engine import run_model
import benchmarks.cpu_speed as b
m = b.synthetic_model(7)
t1 = time.perf_counter()
run_model(np.zeros((64, 64), np.float32), m)
t2 = time.perf_counter()
print(f"{t1 - t0:.3f} {t2 - t1:.3f}")
"""


def main(argv=None):
    from skimage_trd.kernels.engine import run_model
    from skimage_trd.kernels.numba_cpu import set_threads

    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="256,512,1024,2048")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args(argv)
    print(f"# machine: {cpu_name()}, {os.cpu_count()} logical CPUs, {platform.platform()}")
    print(f"# date: {datetime.date.today()}  command: python {' '.join(sys.argv)}")
    print(f"# median of {args.repeat} runs after warm-up, float32, seconds per image")
    threads = [int(t) for t in args.threads.split(",")]
    models = {k: synthetic_model(k) for k in (5, 7)}
    head = " | ".join(f"{k}x{k} {t} thr" for k in (5, 7) for t in threads)
    print(f"| size | {head} | paper 7x7 1 thr (MATLAB) |")
    print("|---" * (2 + 2 * len(threads)) + "|")
    for n in (int(s) for s in args.sizes.split(",")):
        img = np.random.default_rng(0).uniform(0, 255, (n, n)).astype(np.float32)
        cells = []
        for k in (5, 7):
            for t in threads:
                set_threads(t)
                run_model(img, models[k])
                times = []
                for _ in range(args.repeat):
                    t0 = time.perf_counter()
                    run_model(img, models[k])
                    times.append(time.perf_counter() - t0)
                cells.append(f"{np.median(times):.3f}")
        print(f"| {n}^2 | {' | '.join(cells)} | {PAPER_1T.get(n, '-')} |")
        sys.stdout.flush()
    # cold start: new processes, the second certainly finds the cache
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    print()
    print("| new process | import + model (s) | first call, 64^2 (s) |")
    print("|---|---|---|")
    for i in range(2):
        res = subprocess.run([sys.executable, "-c", COLD], capture_output=True, text=True, cwd=root,
                             env={**os.environ, "NUMBA_NUM_THREADS": "1"}, check=True)
        a, b = res.stdout.split()
        print(f"| {i + 1} | {a} | {b} |")


if __name__ == "__main__":
    main()

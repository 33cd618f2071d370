"""GPU (CuPy) speed of the 5-stage TRD stage map, float32, against the paper's Table 2 (GPU row).

    python benchmarks/gpu_speed.py [--repeat 5]

Prints the device, date and command, then the median of --repeat runs per size
(kernel time only: the image is on the GPU, as in the paper's GTX 780 Ti column).
"""

from __future__ import annotations

import argparse
import datetime
import sys

import numpy as np
from cpu_speed import synthetic_model  # the same random models as the CPU benchmark

PAPER_GPU = {256: 0.01, 512: 0.032, 1024: 0.116, 2048: 0.40, 3072: 0.87}


def main(argv=None):
    import cupy as cp

    from skimage_trd._engine import run_model

    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--sizes", default="256,512,1024,2048,3072")
    args = ap.parse_args(argv)
    props = cp.cuda.runtime.getDeviceProperties(0)
    print(f"# device: {props['name'].decode()}  date: {datetime.date.today()}")
    print(f"# command: python {' '.join(sys.argv)}")
    print("| size | TRD 5x5 (s) | TRD 7x7 (s) | paper GTX 780 Ti 7x7 (s) | speed-up vs paper |")
    print("|---|---|---|---|---|")
    models = {k: synthetic_model(k) for k in (5, 7)}
    for n in (int(s) for s in args.sizes.split(",")):
        img = cp.asarray(np.random.default_rng(0).uniform(0, 255, (n, n)), dtype=cp.float32)
        row = []
        for k in (5, 7):
            run_model(img, models[k], backend="cupy")  # warm-up, compile
            cp.cuda.Device().synchronize()
            times = []
            for _ in range(args.repeat):
                start, stop = cp.cuda.Event(), cp.cuda.Event()
                start.record()
                run_model(img, models[k], backend="cupy")
                stop.record()
                stop.synchronize()
                times.append(cp.cuda.get_elapsed_time(start, stop) / 1000)
            row.append(float(np.median(times)))
        paper = PAPER_GPU.get(n)
        ratio = f"{paper / row[1]:.1f}x" if paper else "-"
        print(f"| {n}^2 | {row[0]:.4f} | {row[1]:.4f} | {paper if paper else '-'} | {ratio} |")


if __name__ == "__main__":
    main()

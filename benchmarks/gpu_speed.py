"""GPU (CuPy) speed of the 5-stage TRD stage map, float32, against the paper's Table 2 (GPU row).

    python benchmarks/gpu_speed.py [--repeat 5] [--kernels default,tiles,strips:4x16]

Prints the device, date and command, then the median of --repeat runs per size
(kernel time only: the image is on the GPU, as in the paper's GTX 780 Ti column).
``--kernels`` compares float32 kernels of ``skimage_trd.kernels.cuda`` in the same run: ``default`` (as
shipped: ``FLOAT32_KERNEL`` and ``STRIP_CONFIG``), ``tiles``, or
``strips:ROWSxPER_THREAD`` (threads down a block x pixels per thread), with ``:r`` appended for
the filter taps held in registers; with more than one,
the table has a 7x7 column per kernel and the 5x5 column of the first.
"""

from __future__ import annotations

import argparse
import datetime
import sys

import numpy as np
from cpu_speed import synthetic_model  # the same random models as the CPU benchmark

PAPER_GPU = {256: 0.01, 512: 0.032, 1024: 0.116, 2048: 0.40, 3072: 0.87}


def _shipped():
    from skimage_trd.kernels import cuda as cuda_kernels

    return cuda_kernels.FLOAT32_KERNEL, dict(cuda_kernels.STRIP_CONFIG)


SHIPPED = _shipped()


def _select(kernel):
    from skimage_trd.kernels import cuda as cuda_kernels

    if kernel == "default":  # as shipped
        cuda_kernels.FLOAT32_KERNEL, cuda_kernels.STRIP_CONFIG = SHIPPED
        return
    name, _, rest = kernel.partition(":")
    shape, _, flags = rest.partition(":")
    if name not in ("tiles", "strips") or flags not in ("", "r"):
        raise SystemExit(f"unknown kernel {kernel!r}")
    cuda_kernels.FLOAT32_KERNEL = name
    rows, per_thread = (int(v) for v in (shape or "8x8").split("x"))
    cuda_kernels.STRIP_CONFIG = {"rows": rows, "per_thread": per_thread,
                                  "taps_in_registers": flags == "r"}


def main(argv=None):
    import cupy as cp

    from skimage_trd.kernels.engine import run_model

    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--sizes", default="256,512,1024,2048,3072")
    ap.add_argument("--kernels", default="default,tiles")
    args = ap.parse_args(argv)
    kernels = args.kernels.split(",")
    props = cp.cuda.runtime.getDeviceProperties(0)
    print(f"# device: {props['name'].decode()}  date: {datetime.date.today()}")
    print(f"# command: python {' '.join(sys.argv)}")
    print(f"| size | TRD 5x5 {kernels[0]} (s) | "
          + " | ".join(f"TRD 7x7 {k} (s)" for k in kernels)
          + f" | paper GTX 780 Ti 7x7 (s) | speed-up vs paper, 7x7 {kernels[0]} |")
    print("|---|---|" + "---|" * len(kernels) + "---|---|")
    models = {k: synthetic_model(k) for k in (5, 7)}
    for n in (int(s) for s in args.sizes.split(",")):
        img = cp.asarray(np.random.default_rng(0).uniform(0, 255, (n, n)), dtype=cp.float32)
        row = []
        for kernel, size in [(kernels[0], 5)] + [(k, 7) for k in kernels]:
            _select(kernel)
            run_model(img, models[size], backend="cupy")  # warm-up, compile
            cp.cuda.Device().synchronize()
            times = []
            for _ in range(args.repeat):
                start, stop = cp.cuda.Event(), cp.cuda.Event()
                start.record()
                run_model(img, models[size], backend="cupy")
                stop.record()
                stop.synchronize()
                times.append(cp.cuda.get_elapsed_time(start, stop) / 1000)
            row.append(float(np.median(times)))
        paper = PAPER_GPU.get(n)
        ratio = f"{paper / row[1]:.1f}x" if paper else "-"
        print(f"| {n}^2 | " + " | ".join(f"{t:.4f}" for t in row)
              + f" | {paper if paper else '-'} | {ratio} |")


if __name__ == "__main__":
    main()

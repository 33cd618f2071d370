"""``denoise_trd`` on the GPU as a user calls it, against the stage kernels alone.

    python benchmarks/gpu_end_to_end.py

Times (median of 5, after a warm-up) for a float32 image with noise sigma = 0.1: the plane's
settings (mean, extremes and the robust range that picks the model of the default bank)
computed on the GPU and, as before 2026-11-26, on the host after a copy; ``denoise_trd``
on a CuPy image with the default bank and with one named model; and on a NumPy image with
``backend='cupy'`` (both copies included).
"""

from __future__ import annotations

import datetime
import sys
import time

import numpy as np


def main():
    import cupy as cp

    from skimage_trd import denoise_trd
    from skimage_trd._planes import PlaneOptions, plane_settings
    from skimage_trd._registry import resolve_models

    def median_time(fn):
        fn()
        cp.cuda.Device().synchronize()
        times = []
        for _ in range(5):
            start = time.perf_counter()
            fn()
            cp.cuda.Device().synchronize()
            times.append(time.perf_counter() - start)
        return float(np.median(times))

    bank = resolve_models(None, "denoise")
    props = cp.cuda.runtime.getDeviceProperties(0)
    print(f"# device: {props['name'].decode()}  date: {datetime.date.today()}")
    print(f"# command: python {' '.join(sys.argv)}")
    print("| size | settings on the GPU (s) | settings on the host (s) | denoise_trd CuPy, "
          "default bank (s) | denoise_trd CuPy, one model (s) | denoise_trd NumPy in, "
          "backend='cupy' (s) |")
    print("|---|---|---|---|---|---|")
    for n in (512, 2048):
        x = np.random.default_rng(0).uniform(0.2, 0.8, (n, n)).astype(np.float32)
        g = cp.asarray(x)
        opts = PlaneOptions(bank=tuple(bank), in_dtype=x.dtype)
        row = [median_time(lambda: plane_settings(g, 0.1, opts)),
               median_time(lambda: plane_settings(g.get(), 0.1, opts)),
               median_time(lambda: denoise_trd(g, 0.1)),
               median_time(lambda: denoise_trd(g, 0.1, model="trd-gauss-s25-7x7-5st")),
               median_time(lambda: denoise_trd(x, 0.1, backend="cupy"))]
        print(f"| {n}^2 | " + " | ".join(f"{t:.4f}" for t in row) + " |")


if __name__ == "__main__":
    main()

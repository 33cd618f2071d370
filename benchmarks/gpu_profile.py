"""One 5-stage 7x7 float32 run at 2048^2 with a chosen CuPy kernel, for a profiler to watch.

    ncu --clock-control none --kernel-name regex:trd_stage --launch-skip 5 --launch-count 1 \
        python benchmarks/gpu_profile.py strips:8x8

The first run compiles and warms up (5 stage launches), the second is the one to profile.
"""

from __future__ import annotations

import sys

import numpy as np
from cpu_speed import synthetic_model
from gpu_speed import _select


def main(argv=None):
    import cupy as cp

    from skimage_trd.kernels.engine import run_model

    argv = sys.argv[1:] if argv is None else argv
    kernel = argv[0] if argv else "strips:8x8"
    size = int(argv[1]) if len(argv) > 1 else 2048
    _select(kernel)
    model = synthetic_model(7)
    img = cp.asarray(np.random.default_rng(0).uniform(0, 255, (size, size)), dtype=cp.float32)
    for _ in range(2):
        run_model(img, model, backend="cupy")
    cp.cuda.Device().synchronize()


if __name__ == "__main__":
    main()

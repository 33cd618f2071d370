"""Peak memory of denoising one image, in image-sized float32 buffers beyond the input.

    python benchmarks/memory.py [--size 4096]

Run in a fresh process per mode (the peak resident set size only grows): `engine` is the stage
map alone (`run_model`), `api` is `denoise_trd` with sigma given. The input is made in float32
without temporaries before the baseline is read; the output is counted.
"""

import argparse
import os
import subprocess
import sys

CHILD = """
import resource, sys
import numpy as np
from skimage_trd import denoise_trd, load_model
from skimage_trd.kernels.engine import run_model
m = load_model("trd-gauss-s25-7x7-5st")
run_model(np.zeros((64, 64), np.float32), m)
n = int(sys.argv[2])
x = np.random.default_rng(0).random((n, n), dtype=np.float32)
x *= 255
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
out = run_model(x, m) if sys.argv[1] == "engine" else denoise_trd(x, 25.0, model=m)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print((peak - base) / (x.nbytes / 1024))
"""


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=4096)
    args = ap.parse_args(argv)
    print(f"# {args.size}^2 float32, 5-stage 7x7, one thread; python {' '.join(sys.argv)}")
    print("| path | extra peak, image-sized float32 buffers (output included) |")
    print("|---|---|")
    for mode in ("engine", "api"):
        res = subprocess.run([sys.executable, "-c", CHILD, mode, str(args.size)], check=True,
                             capture_output=True, text=True,
                             env={**os.environ, "NUMBA_NUM_THREADS": "1"})
        print(f"| {mode} | {float(res.stdout.split()[-1]):.2f} |")


if __name__ == "__main__":
    main()

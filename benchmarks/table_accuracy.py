"""What the influence-function tables cost in accuracy: table path against exact evaluation.

    python benchmarks/table_accuracy.py [--images 12] [--threads 2]

For every shipped denoising model and the first --images BSD68 images (sorted names; noise at the
model's sigma, ``default_rng(0)``), runs the stage map three ways on the [0, 255] scale: float32
as the default call runs it (on AVX-512 processors the piecewise polynomials of the block
kernels, elsewhere the linear tables), float64 with the linear tables, and float64 with the
exact RBF sums (``exact=True``). Prints the largest absolute difference to the exact result
over the images and the mean PSNR difference (outputs clipped to [0, 255]). Also prints each
model's table sizes and their tolerance (``skimage_trd.kernels.prepare.LINEAR_TABLE_TOLERANCE``). Needs
``../shared/data/bsd68``.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import sys
from pathlib import Path

import numpy as np

from skimage_trd._metrics import psnr  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _data import DATA, require_images  # noqa: E402


def main(argv=None):
    import imageio.v3 as iio

    from skimage_trd._registry import list_models, load_model
    from skimage_trd.kernels.engine import LINEAR_TABLE_TOLERANCE, prepare, run_model
    from skimage_trd.kernels.numba_cpu import set_threads

    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=12)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--data", default=str(DATA / "bsd68"), help="the BSD68 images")
    args = ap.parse_args(argv)
    set_threads(args.threads)
    files = require_images(args.data, "bsd68")[: args.images]
    print(f"# {platform.platform()}; {datetime.date.today()}; "
          f"command: python benchmarks/table_accuracy.py {' '.join(argv or sys.argv[1:])}")
    print(f"# linear tables within {LINEAR_TABLE_TOLERANCE:g} of phi (absolute, [0, 255] scale); "
          f"{len(files)} BSD68 images")
    print("| model | intervals per stage | max abs diff, float32 | max abs diff, float64 tables "
          "| mean PSNR diff (dB), float32 |")
    print("|---|---|---|---|---|")
    for name in list_models("denoise"):
        m = load_model(name)
        sizes = [st.linear.n_intervals for st in prepare(m, np.float32).stages]
        rng = np.random.default_rng(0)
        d32 = d64 = 0.0
        dpsnr = []
        for path in files:
            clean = iio.imread(path).astype(np.float64)
            noisy = clean + m.sigma * rng.standard_normal(clean.shape)
            exact = run_model(noisy, m, exact=True)
            out32 = run_model(noisy.astype(np.float32), m)
            out64 = run_model(noisy, m, exact=False)
            d32 = max(d32, float(np.abs(out32 - exact).max()))
            d64 = max(d64, float(np.abs(out64 - exact).max()))
            dpsnr.append(psnr(out32, clean) - psnr(exact, clean))
        print(f"| {name} | {', '.join(map(str, sizes))} | {d32:.4f} | {d64:.4f} "
              f"| {np.mean(dpsnr):+.6f} |", flush=True)


if __name__ == "__main__":
    main()

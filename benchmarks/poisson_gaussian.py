"""Poisson-Gaussian denoising (photons plus read noise) on simulated low-light images.

    python benchmarks/poisson_gaussian.py [--threads 2]

Clean: skimage.data camera, cell, coins and moon (central 256x256 crops) scaled to `peak`
expected photons (+0.5); camera gain 2
units/photon, offset 100, read noise 3 units; seed 0. PSNR against the expected signal, peak =
gain * peak photons. Compared: the GAT route with known parameters, with estimated parameters,
and the Gaussian route alone (denoise_trd with estimated sigma); and BM3D with the same
transform (same generalised Anscombe transform with the known parameters, `bm3d.bm3d` at
sigma_psd = 1, same exact unbiased inverse) and BM3D alone (sigma from
`skimage.restoration.estimate_sigma`), on the same noisy images. Seconds: TRD (GAT route,
known parameters, after a warm-up call) and BM3D (GAT route, single-threaded), mean per image.
"""

import argparse
import datetime
import os
import platform
import sys
import time

for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(var, "1")

import numpy as np  # noqa: E402
from skimage import data  # noqa: E402
from skimage.restoration import estimate_sigma  # noqa: E402

from skimage_trd import (  # noqa: E402
    denoise_trd,
    denoise_trd_poisson,
    estimate_poisson_gaussian,
    generalized_anscombe,
    inverse_generalized_anscombe,
)
from skimage_trd._metrics import psnr as _psnr  # noqa: E402
from skimage_trd.kernels.numba_cpu import set_threads  # noqa: E402

IMAGES = ("camera", "cell", "coins", "moon")  # skimage.data, central 256x256 crops


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    set_threads(args.threads)
    import bm3d

    gain, read, offset = 2.0, 3.0, 100.0
    denoise_trd_poisson(np.full((64, 64), 120.0) + np.arange(64), gain, read, offset=offset)  # warm-up
    rng = np.random.default_rng(0)
    columns = ["noisy", "TRD: GAT, known parameters", "TRD: GAT, estimated parameters",
               "TRD: Gaussian only", "BM3D: GAT, known parameters", "BM3D: Gaussian only"]
    print(f"# {platform.platform()}, TRD threads={args.threads}; {datetime.date.today()}; "
          f"python {' '.join(sys.argv)}")
    print(f"# images: {', '.join(IMAGES)} (skimage.data, central 256x256 crops); mean PSNR (dB)")
    print("| peak photons | " + " | ".join(columns) + " | seconds TRD / BM3D (GAT) |")
    print("|---|" + "---|" * (len(columns) + 1))
    for peak in (5, 20, 100):
        scores = {c: [] for c in columns}
        t_trd, t_bm3d, estimates = [], [], []
        for name in IMAGES:
            img = getattr(data, name)()
            r0, c0 = (img.shape[0] - 256) // 2, (img.shape[1] - 256) // 2
            clean = img[r0 : r0 + 256, c0 : c0 + 256] / 255.0
            y = clean * peak + 0.5
            z = gain * rng.poisson(y) + offset + read * rng.standard_normal(y.shape)
            truth = gain * y + offset

            def psnr(a, truth=truth, peak=peak):
                return _psnr(a, truth, gain * peak, clip=False)

            def bm3d_gat(z=z):
                d = generalized_anscombe(z, gain, read, offset=offset)
                return inverse_generalized_anscombe(bm3d.bm3d(d, sigma_psd=1.0), gain, read,
                                                    offset=offset)

            trd, t = timed(lambda z=z: denoise_trd_poisson(z, gain, read, offset=offset))
            t_trd.append(t)
            bm, t = timed(bm3d_gat)
            t_bm3d.append(t)
            estimates.append(estimate_poisson_gaussian(z, offset=offset))
            outs = [z, trd, denoise_trd_poisson(z, offset=offset), denoise_trd(z), bm,
                    bm3d.bm3d(z, sigma_psd=float(estimate_sigma(z)))]
            for c, out in zip(columns, outs):
                scores[c].append(psnr(out))
        print(f"| {peak} | " + " | ".join(f"{np.mean(scores[c]):.2f}" for c in columns)
              + f" | {np.mean(t_trd):.3f} / {np.mean(t_bm3d):.2f} |", flush=True)
        g = ", ".join(f"({a:.2f}, {b:.2f})" for a, b in estimates)
        print(f"<!-- peak {peak}: estimated (gain, read noise) per image: {g} -->")


if __name__ == "__main__":
    main()

"""LIVE1 colour denoising at sigma 25: TRD channel by channel, TRD in the opponent colour
space (the default), and CBM3D, on the same noisy images.

    python benchmarks/colour_live1.py [--threads 2] [--no-cbm3d] [--data FOLDER]

LIVE1 is read from ../shared/data/live1 or --data (docs/protocols.md says where to get it);
CBM3D needs the ``benchmarks`` extra (``pip install ".[benchmarks]"``) or ``--no-cbm3d``.

Noise: default_rng(0), sigma 25 on the 0..255 scale, image after image in name order; PSNR over
the three channels of the output clipped to [0, 255]; shipped models, default settings otherwise.
CBM3D: ``bm3d.bm3d_rgb(noisy / 255, sigma_psd=sigma / 255)`` (its default opponent colour
space and profile), single-threaded. Seconds per image are the mean over the data set.
"""

import argparse
import datetime
import os
import platform
import sys
import time
from pathlib import Path

for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(var, "1")

import numpy as np  # noqa: E402
from skimage.io import imread  # noqa: E402

from skimage_trd import denoise_trd  # noqa: E402
from skimage_trd._metrics import psnr as _psnr  # noqa: E402
from skimage_trd.kernels.numba_cpu import set_threads  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _data import DATA, require_images  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--sigma", type=float, default=25.0)
    ap.add_argument("--no-cbm3d", action="store_true", help="leave out CBM3D (package bm3d)")
    ap.add_argument("--data", default=str(DATA / "live1"), help="the LIVE1 colour images (PNG)")
    args = ap.parse_args(argv)
    files = require_images(args.data, "live1")
    set_threads(args.threads)
    rng = np.random.default_rng(0)
    methods = {
        "TRD, channel by channel": lambda n: denoise_trd(n, args.sigma, channel_axis=-1,
                                                         color_transform="none"),
        "TRD, opponent colour space (default)": lambda n: denoise_trd(n, args.sigma,
                                                                      channel_axis=-1),
    }
    if not args.no_cbm3d:
        try:
            import bm3d
        except ImportError:
            sys.exit("CBM3D needs the package bm3d: pip install \".[benchmarks]\" (or pass --no-cbm3d)")

        methods["CBM3D (`bm3d.bm3d_rgb`)"] = lambda n: 255.0 * bm3d.bm3d_rgb(
            n / 255.0, sigma_psd=args.sigma / 255.0)
    scores = {"noisy": [], **{name: [] for name in methods}}
    seconds = {name: [] for name in methods}
    for path in files:
        clean = imread(path)[..., :3].astype(np.float64)
        noisy = clean + args.sigma * rng.standard_normal(clean.shape)

        def psnr(out, clean=clean):
            return _psnr(out, clean)

        scores["noisy"].append(psnr(noisy))
        for name, method in methods.items():
            t0 = time.perf_counter()
            out = method(noisy)
            seconds[name].append(time.perf_counter() - t0)
            scores[name].append(psnr(out))
        print(path.name, " ".join(f"{v[-1]:.2f}" for v in scores.values()), flush=True)
    print(f"\n# LIVE1 colour, {len(files)} images, sigma {args.sigma:g}; {platform.platform()}, "
          f"TRD threads={args.threads}; {datetime.date.today()}; python {' '.join(sys.argv)}")
    print("| method | PSNR (dB) | seconds / image |")
    print("|---|---|---|")
    for name, values in scores.items():
        t = f"{np.mean(seconds[name]):.2f}" if name in seconds else "-"
        print(f"| {name} | {np.mean(values):.2f} | {t} |")


if __name__ == "__main__":
    main()

"""LIVE1 colour denoising at sigma 25: channel by channel vs the opponent colour space.

    python benchmarks/colour_live1.py [--threads 2]

Noise: default_rng(0), sigma 25 on the 0..255 scale, image after image in name order; PSNR over
the three channels of the output clipped to [0, 255]; shipped models, default settings otherwise.
"""

import argparse
import datetime
import platform
import sys
from pathlib import Path

import numpy as np
from skimage.io import imread

from skimage_trd import denoise_trd
from skimage_trd._numba_kernels import set_threads

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--sigma", type=float, default=25.0)
    args = ap.parse_args(argv)
    set_threads(args.threads)
    files = sorted((SHARED / "data" / "live1").glob("*.png"))
    rng = np.random.default_rng(0)
    scores = {"noisy": [], "channel by channel": [], "opponent": []}
    for path in files:
        clean = imread(path)[..., :3].astype(np.float64)
        noisy = clean + args.sigma * rng.standard_normal(clean.shape)

        def psnr(out, clean=clean):
            return 10 * np.log10(255**2 / np.mean((np.clip(out, 0, 255) - clean) ** 2))

        scores["noisy"].append(psnr(noisy))
        scores["channel by channel"].append(
            psnr(denoise_trd(noisy, args.sigma, channel_axis=-1, color_transform="none")))
        scores["opponent"].append(psnr(denoise_trd(noisy, args.sigma, channel_axis=-1)))
    print(f"# LIVE1 colour, {len(files)} images, sigma {args.sigma:g}; {platform.platform()}, "
          f"threads={args.threads}; {datetime.date.today()}; python {' '.join(sys.argv)}")
    print("| method | PSNR (dB) |")
    print("|---|---|")
    for name, values in scores.items():
        print(f"| {name} | {np.mean(values):.2f} |")


if __name__ == "__main__":
    main()

"""Adapting a shipped model to one noisy image without its clean version (SURE fine-tuning).

    python benchmarks/adapt_sure.py [--image cell] [--sigma 25] [--iterations 10] [--chunk 2]
        [--threads 1]

The image (a scikit-image sample, no download) gets Gaussian noise of ``--sigma`` (0..255
scale, ``default_rng(0)``). The shipped 7x7 model nearest that sigma is fine-tuned on the noisy
image alone with the SURE loss (``TrainingConfig(loss="sure")``, joint L-BFGS, a new probe
every ``--chunk`` iterations), then both models denoise the image with the noise level given;
the true PSNR (against the clean image, which training never sees) and SURE's own estimate are
printed, with the time the fine-tuning took.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import sys
import time

import numpy as np


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--image", default="cell", help="a skimage.data image (gray or RGB)")
    ap.add_argument("--sigma", type=float, default=25.0)
    ap.add_argument("--iterations", type=int, default=10)
    ap.add_argument("--chunk", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    from skimage import color, data

    from skimage_trd import denoise_trd, list_models, load_model
    from skimage_trd._metrics import psnr
    from skimage_trd.kernels.numba_cpu import set_threads
    from skimage_trd.train import TrainingConfig, train_model

    set_threads(args.threads)
    img = getattr(data, args.image)()
    if img.ndim == 3:
        img = color.rgb2gray(img[..., :3]) * 255.0
    clean = img.astype(np.float64)
    noisy = clean + args.sigma * np.random.default_rng(0).standard_normal(clean.shape)
    names = [n for n in list_models("denoise") if "7x7" in n]
    base = min((load_model(n) for n in names), key=lambda m: abs(np.log(m.sigma / args.sigma)))
    config = TrainingConfig.for_model(base, sigma=args.sigma, greedy_iterations=0,
                                      joint_iterations=args.iterations, chunk=args.chunk,
                                      crop=None, loss="sure")
    t0 = time.perf_counter()
    tuned = train_model(None, config, noisy=[noisy], init_model=base, log=lambda s: None)
    seconds = time.perf_counter() - t0
    rows = []
    for label, model in (("shipped " + base.name, base), ("fine-tuned by SURE", tuned)):
        out = denoise_trd(noisy, args.sigma, model=model, data_range=255.0)
        rows.append((label, psnr(out, clean)))
    print(f"# {platform.platform()}; threads={args.threads}; {datetime.date.today()}; "
          f"python {' '.join(sys.argv)}")
    print(f"# {args.image} {clean.shape[0]}x{clean.shape[1]}, sigma {args.sigma:g}; fine-tuning: "
          f"{args.iterations} joint iterations, {seconds:.0f} s")
    print("| model | true PSNR (dB) |")
    print("|---|---|")
    for label, value in rows:
        print(f"| {label} | {value:.2f} |")
    est = tuned.metadata["provenance"]["final_train_psnr"]
    print(f"| (SURE's estimate for the fine-tuned model, without the clean image) | {est:.2f} |")


if __name__ == "__main__":
    main()

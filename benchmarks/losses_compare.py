"""Training without clean images against training with them, at the same (small) budget.

    python benchmarks/losses_compare.py [--images 100] [--crop 64] [--sigma 25]
        [--greedy 30] [--joint 30] [--kernel-size 5] [--stages 3] [--threads 1]
        [--losses mse,sure,n2n] [--optimizer lbfgs|adam] [--learning-rate 1e-3]
        [--test set12|bsd68]

The first ``--images`` images of train400 (../shared/data/train400), their central ``--crop``
squares, Gaussian noise of ``--sigma`` (0..255 scale) drawn with seed 0 (and a second,
independent draw with seed 1 for Noise2Noise). Three models of the same size and iterations,
from the paper's plain initialisation: ``loss='mse'`` (clean targets), ``'sure'`` (the noisy
images alone), ``'n2n'`` (the two noisy draws, each the target of the other). Each denoises
the ``--test`` set (Set12 or BSD68 from ../shared/data) with the noise level given
(``default_rng(0)`` noise, model forced, ``data_range=255``); mean PSNR and training seconds
are printed. ``--optimizer adam`` trains
with Adam (``--greedy`` and ``--joint`` then count steps; SURE draws a new probe every step)
instead of the paper's L-BFGS; ``--losses`` picks the runs.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _data import DATA, require_images  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=100)
    ap.add_argument("--crop", type=int, default=64)
    ap.add_argument("--sigma", type=float, default=25.0)
    ap.add_argument("--greedy", type=int, default=30)
    ap.add_argument("--joint", type=int, default=30)
    ap.add_argument("--kernel-size", type=int, default=5)
    ap.add_argument("--stages", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--losses", default="mse,sure,n2n")
    ap.add_argument("--optimizer", default="lbfgs", choices=["lbfgs", "adam"])
    ap.add_argument("--learning-rate", type=float, default=1e-3)
    ap.add_argument("--test", default="set12", choices=["set12", "bsd68"],
                    help="the images the trained models denoise")
    args = ap.parse_args(argv)
    from skimage.io import imread

    from skimage_trd import denoise_trd
    from skimage_trd._metrics import psnr
    from skimage_trd.kernels.numba_cpu import set_threads
    from skimage_trd.train import TrainingConfig, add_noise, train_model

    set_threads(args.threads)
    files = require_images(DATA / "train400", "train400")[: args.images]
    half = args.crop // 2
    clean = []
    for f in files:
        img = imread(f).astype(np.float64)
        r, c = img.shape[0] // 2, img.shape[1] // 2
        clean.append(img[r - half : r + half, c - half : c + half])
    first, second = add_noise(clean, args.sigma, 0), add_noise(clean, args.sigma, 1)
    common = dict(sigma=args.sigma, kernel_size=args.kernel_size, n_stages=args.stages,
                  greedy_iterations=args.greedy, joint_iterations=args.joint, crop=None,
                  chunk=10, optimizer=args.optimizer, learning_rate=args.learning_rate)
    runs = {"mse (clean targets)": (clean, dict(noisy=first), "mse"),
            "sure (noisy images alone)": (None, dict(noisy=first), "sure"),
            "n2n (two noisy draws)": (second, dict(noisy=first), "n2n")}
    wanted = args.losses.split(",")
    runs = {k: v for k, v in runs.items() if v[2] in wanted}
    test = require_images(DATA / args.test, args.test)
    test_name = {"set12": "Set12", "bsd68": "BSD68"}[args.test]
    rng = np.random.default_rng(0)
    test_pairs = []
    for f in test:
        x = imread(f).astype(np.float64)
        test_pairs.append((x, x + args.sigma * rng.standard_normal(x.shape)))
    rows = []
    for label, (targets, kw, loss) in runs.items():
        t0 = time.perf_counter()
        model = train_model(targets, TrainingConfig(loss=loss, **common), log=lambda s: None,
                            **kw)
        seconds = time.perf_counter() - t0
        score = np.mean([psnr(denoise_trd(y, args.sigma, model=model, data_range=255.0), x)
                         for x, y in test_pairs])
        rows.append((label, score, seconds))
        print(f"{label}: {test_name} {score:.3f} dB, {seconds:.0f} s", flush=True)
    print(f"\n# {platform.platform()}; threads={args.threads}; {datetime.date.today()}; "
          f"python {' '.join(sys.argv)}")
    print(f"# train400: {len(clean)} images, {args.crop}x{args.crop} centre crops, sigma "
          f"{args.sigma:g}; {args.kernel_size}x{args.kernel_size}, {args.stages} stages, "
          f"{args.greedy} greedy iterations per stage, {args.joint} joint; {args.optimizer}"
          + (f" (learning rate {args.learning_rate:g})" if args.optimizer == "adam" else ""))
    print(f"| training loss | {test_name} PSNR (dB) | training seconds |")
    print("|---|---|---|")
    for label, score, seconds in rows:
        print(f"| {label} | {score:.3f} | {seconds:.0f} |")


if __name__ == "__main__":
    main()

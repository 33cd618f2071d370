"""Rank denoisers of one noisy image without its clean version, with Stein's unbiased risk
estimate (``skimage_trd.sure_mse``), and compare the ranking with the true errors.

    python examples/rank_denoisers_sure.py [--image camera] [--sigma 25] [--probes 1]

The image is one of scikit-image's bundled gray examples on [0, 1], with Gaussian noise of
``--sigma`` grey levels (seed 0). Each denoiser is run on the noisy image (and once more per
probe); SURE estimates its MSE from the noisy image and sigma alone, printed as an estimated
PSNR beside the true PSNR (which needs the clean image, as a check).
"""

import argparse
import time

import numpy as np
from skimage import data, img_as_float
from skimage.restoration import denoise_nl_means, denoise_tv_chambolle, denoise_wavelet

from skimage_trd import denoise_trd, sure_mse


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--image", default="camera", help="a gray skimage.data image (default: %(default)s)")
    ap.add_argument("--sigma", type=float, default=25.0, help="noise, grey levels (default: %(default)s)")
    ap.add_argument("--probes", type=int, default=1, help="SURE probes (default: %(default)s)")
    args = ap.parse_args(argv)
    clean = img_as_float(getattr(data, args.image)())
    if clean.ndim != 2:
        raise SystemExit(f"skimage.data.{args.image} is not a gray image")
    sigma = args.sigma / 255
    noisy = clean + sigma * np.random.default_rng(0).standard_normal(clean.shape)
    denoisers = {
        "TV (Chambolle, weight sigma)": lambda y: denoise_tv_chambolle(y, weight=sigma),
        "TV (Chambolle, weight 2 sigma)": lambda y: denoise_tv_chambolle(y, weight=2 * sigma),
        "wavelet (BayesShrink)": lambda y: denoise_wavelet(y, sigma=sigma, rescale_sigma=True),
        "non-local means (fast)": lambda y: denoise_nl_means(y, h=0.6 * sigma, sigma=sigma,
                                                             fast_mode=True, patch_size=5,
                                                             patch_distance=6),
        "TRD (denoise_trd)": lambda y: denoise_trd(y, sigma=sigma),
    }
    rows = []
    for name, f in denoisers.items():
        t0 = time.perf_counter()
        est = sure_mse(f, noisy, sigma, n_probes=args.probes)
        seconds = time.perf_counter() - t0
        true = float(np.mean((f(noisy) - clean) ** 2))
        rows.append((name, 10 * np.log10(1 / est), 10 * np.log10(1 / true), seconds))
    print(f"{args.image} {clean.shape[0]}x{clean.shape[1]}, sigma {args.sigma:g} grey levels, "
          f"{args.probes} probe(s)\n")
    print("| denoiser | PSNR estimated by SURE (dB) | true PSNR (dB) | SURE seconds |")
    print("|---|---|---|---|")
    for name, est, true, seconds in sorted(rows, key=lambda r: -r[1]):
        print(f"| {name} | {est:.2f} | {true:.2f} | {seconds:.2f} |")
    by_est = [r[0] for r in sorted(rows, key=lambda r: -r[1])]
    by_true = [r[0] for r in sorted(rows, key=lambda r: -r[2])]
    print(f"\nranking by SURE {'equals' if by_est == by_true else 'differs from'} the true ranking")


if __name__ == "__main__":
    main()

"""Why ``select='sure'`` evaluates whole planes (up to 2**19 pixels): SURE on a sample of tiles
picks the wrong model too often.

    python benchmarks/sure_sample_study.py [--sigma 25] [--tile 64] [--tiles 6] [--draws 30]

On the ``outside`` images of benchmarks/sure_select.py (central crops of at most 512x512, float
in [0, 1], noise
``default_rng(1)``), each of three of the bank's 7x7 models (sigma 15, 25, 50) runs on the whole image
and on the image plus a Monte-Carlo probe (random signs, ``default_rng(99)``), which gives every
pixel's SURE term ``(f - y)^2 - s^2 + 2 s^2 b (f(y + eps b) - f(y)) / eps``. Choosing by the
sum over the whole image is compared with choosing by the sum over ``--tiles`` random tiles of
``--tile`` pixels (stratified on a grid, ``--draws`` draws per image; a tile's sum equals what
a tile run with its halo gives, so no tile is run): the mean and the worst loss against the
truly best model, per image. Also printed: the per-pixel spread of the SURE difference between
the sigma-25 and sigma-50 models against the mean difference, which sets how many pixels a
reliable choice needs.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _data import cpu_name  # noqa: E402
from sure_select import outside_images  # noqa: E402

MODELS = ["trd-gauss-s15-7x7-5st", "trd-gauss-s25-7x7-5st", "trd-gauss-s50-7x7-5st"]


def pixel_maps(clean, sigma):
    """Per model: its result and every pixel's SURE term."""
    from skimage_trd import denoise_trd
    from skimage_trd._sure import divergence_epsilon

    y = clean + sigma * np.random.default_rng(1).standard_normal(clean.shape)
    b = np.random.default_rng(99).integers(0, 2, clean.shape) * 2.0 - 1.0
    eps = divergence_epsilon(sigma, y.size)
    out = {}
    for m in MODELS:
        f = denoise_trd(y, sigma, model=m)
        fb = denoise_trd(y + eps * b, sigma, model=m)
        out[m] = (f, (f - y) ** 2 - sigma**2 + 2 * sigma**2 * b * (fb - f) / eps)
    return out


def tile_choice(terms, shape, tile, n_tiles, rng):
    H, W = shape
    g = int(np.ceil(np.sqrt(n_tiles)))
    cells = [(i, j) for i in range(g) for j in range(g)]
    rng.shuffle(cells)
    sums = dict.fromkeys(MODELS, 0.0)
    for i, j in cells[:n_tiles]:
        y0 = int(i * H / g + rng.integers(0, max(1, int(H / g) - tile)))
        x0 = int(j * W / g + rng.integers(0, max(1, int(W / g) - tile)))
        for m in MODELS:
            sums[m] += terms[m][y0:y0 + tile, x0:x0 + tile].sum()
    return min(MODELS, key=sums.get)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sigma", type=float, default=25.0)
    ap.add_argument("--tile", type=int, default=64)
    ap.add_argument("--tiles", type=int, default=6)
    ap.add_argument("--draws", type=int, default=30)
    args = ap.parse_args(argv)
    sigma = args.sigma / 255
    print(f"# {cpu_name()}; {platform.platform()}; {datetime.date.today()}; "
          f"python {' '.join(sys.argv)}")
    print(f"# sample: {args.tiles} tiles of {args.tile}x{args.tile} = "
          f"{100 * args.tiles * args.tile**2 / 512**2:.1f} % of a 512x512 image "
          "(more of the smaller ones)")
    print("| image | PSNR s15 / s25 / s50 | loss, whole-image SURE | loss, sample (mean / worst "
          "draw) | per-pixel spread / mean difference (s25 - s50) |")
    print("|---|---|---|---|---|")
    losses_whole, losses_mean, losses_worst = [], [], []
    for name, clean in outside_images():
        if name.endswith("-whole"):
            continue
        maps = pixel_maps(clean, sigma)
        true = {m: 10 * np.log10(1 / np.mean((maps[m][0] - clean) ** 2)) for m in MODELS}
        best = max(true.values())
        terms = {m: maps[m][1] for m in MODELS}
        whole = min(MODELS, key=lambda m: terms[m].sum())
        rng = np.random.default_rng(0)
        picks = [tile_choice(terms, clean.shape, args.tile, args.tiles, rng)
                 for _ in range(args.draws)]
        vals = np.array([true[p] for p in picks])
        d = (terms[MODELS[1]] - terms[MODELS[2]]) / sigma**2
        losses_whole.append(best - true[whole])
        losses_mean.append(best - vals.mean())
        losses_worst.append(best - vals.min())
        print(f"| {name} | {' / '.join(f'{true[m]:.2f}' for m in MODELS)} | "
              f"{best - true[whole]:.3f} | {best - vals.mean():.3f} / {best - vals.min():.3f} | "
              f"{d.std():.3f} / {abs(d.mean()):.4f} |", flush=True)
    print(f"| mean | | {np.mean(losses_whole):.3f} | {np.mean(losses_mean):.3f} / "
          f"{np.mean(losses_worst):.3f} | |")


if __name__ == "__main__":
    main()

"""Denoise an example image with the shipped models and write a before/after picture.

    python -m skimage_trd.demo [--image camera] [--sigma 25] [--out trd_demo.png] [--estimate]

The image is one of scikit-image's bundled examples (no download), on the
[0, 255] scale; Gaussian noise of ``--sigma`` grey levels is added with seed 0.
The picture shows the noisy and the denoised image (and the clean one), each
with its PSNR.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from ._denoise import denoise_trd


def _psnr(a, ref):
    return 10 * np.log10(1.0 / np.mean((np.clip(a, 0, 1) - ref) ** 2))


def before_after_picture(panels, path):
    """Write grey images in [0, 1] side by side with a caption above each (``[(title, img)]``)."""
    from PIL import Image, ImageDraw, ImageFont

    h = max(img.shape[0] for _, img in panels)
    gap, top = 8, 28
    width = sum(img.shape[1] for _, img in panels) + gap * (len(panels) - 1)
    canvas = Image.new("L", (width, h + top), color=255)
    draw = ImageDraw.Draw(canvas)
    try:
        font = ImageFont.load_default(size=18)
    except TypeError:  # Pillow < 10.1
        font = ImageFont.load_default()
    x = 0
    for title, img in panels:
        tile = Image.fromarray(np.round(np.clip(img, 0, 1) * 255).astype(np.uint8))
        canvas.paste(tile, (x, top))
        draw.text((x + 4, 4), title, fill=0, font=font)
        x += img.shape[1] + gap
    canvas.save(path)
    return path


def main(argv=None):
    from skimage import data

    ap = argparse.ArgumentParser(prog="python -m skimage_trd.demo", description=__doc__.split("\n\n")[0])
    ap.add_argument("--image", default="camera", help="a gray skimage.data image (camera, moon, coins, cell)")
    ap.add_argument("--sigma", type=float, default=25.0, help="noise level in grey levels (0..255)")
    ap.add_argument("--estimate", action="store_true", help="do not tell denoise_trd the noise level")
    ap.add_argument("--model", default=None, help="model name or file (default: the shipped bank)")
    ap.add_argument("--out", default="trd_demo.png")
    args = ap.parse_args(argv)
    clean = getattr(data, args.image)()
    if clean.ndim != 2:
        raise SystemExit(f"skimage.data.{args.image} is not a gray image")
    clean = clean / 255.0
    rng = np.random.default_rng(0)
    noisy = clean + args.sigma / 255.0 * rng.standard_normal(clean.shape)
    sigma = None if args.estimate else args.sigma / 255.0
    denoise_trd(noisy[:32, :32], sigma, model=args.model)  # load models, warm kernels
    t0 = time.perf_counter()
    out = denoise_trd(noisy, sigma, model=args.model)
    seconds = time.perf_counter() - t0
    p_noisy, p_out = _psnr(noisy, clean), _psnr(out, clean)
    before_after_picture(
        [(f"noisy, sigma {args.sigma:g}: {p_noisy:.2f} dB", noisy),
         (f"TRD: {p_out:.2f} dB ({seconds:.2f} s)", out),
         ("clean", clean)],
        args.out,
    )
    print(f"{args.image} {clean.shape[0]}x{clean.shape[1]}, sigma {args.sigma:g}: noisy {p_noisy:.2f} dB "
          f"-> TRD {p_out:.2f} dB in {seconds:.2f} s; wrote {args.out}")


if __name__ == "__main__":
    main()

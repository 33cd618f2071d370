"""Denoise (or deblock) an example image with the shipped models and write a before/after picture.

    python -m skimage_trd.demo [--image camera] [--sigma 25] [--out trd_demo.png] [--estimate]
    python -m skimage_trd.demo --jpeg 10 [--crop Y,X,H,W] [--zoom 2] [--out trd_deblock.png]
    python -m skimage_trd.demo --photons 20 --image cell [--out trd_photons.png]

The image is one of scikit-image's bundled examples (no download), on the
[0, 255] scale; Gaussian noise of ``--sigma`` grey levels is added with seed 0,
or with ``--jpeg Q`` the image is JPEG-compressed at quality Q (Pillow) and
deblocked, or with ``--photons P`` it becomes a low-light camera image (P
photons for white, gain 2 units per photon, offset 100, read noise 3 units) restored by
``denoise_trd_poisson`` with estimated camera parameters. The picture shows the
degraded and the restored image (and the clean one), each with its PSNR over the
whole image; ``--crop`` and ``--zoom`` show a detail.

The first call of an installation compiles the Numba kernels (some seconds; cached on disk,
later runs skip it): both the first call's time and a second call's are printed.
"""

from __future__ import annotations

import argparse
import contextlib
import time

import numpy as np
from numba.core import event

from ._deblock import deblock_trd
from ._denoise import denoise_trd
from ._jpeg import jpeg_roundtrip
from ._metrics import psnr
from ._poisson import denoise_trd_poisson


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


def main(argv=None, prog="python -m skimage_trd.demo"):
    """The command line; ``prog``: the name its usage lines give (``skimage-trd demo``)."""
    from skimage import data

    ap = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    ap.add_argument("--image", default="camera", help="a gray skimage.data image (camera, moon, coins, cell)")
    ap.add_argument("--sigma", type=float, default=None,
                    help="noise level in grey levels (0..255; default 25)")
    ap.add_argument("--estimate", action="store_true", help="do not tell denoise_trd the noise level")
    ap.add_argument("--model", default=None, help="model name or file (default: the shipped bank)")
    ap.add_argument("--jpeg", type=int, default=None, metavar="Q",
                    help="JPEG-compress at quality Q (1..100) and deblock, instead of noise")
    ap.add_argument("--photons", type=float, default=None, metavar="P",
                    help="a low-light camera image with P photons for white, instead of "
                         "Gaussian noise; the camera parameters are estimated from the image, "
                         "which works in low light (up to about 100 photons)")
    ap.add_argument("--crop", default=None, metavar="Y,X,H,W",
                    help="show this detail (rows Y..Y+H, columns X..X+W) in the picture")
    ap.add_argument("--zoom", type=int, default=1, help="enlarge the shown pixels N times")
    ap.add_argument("--out", default=None,
                    help="the picture to write (default: trd_demo.png, with --jpeg trd_deblock.png, "
                         "with --photons trd_photons.png)")
    args = ap.parse_args(argv)
    clean = getattr(data, args.image)()
    if clean.ndim != 2:
        raise SystemExit(f"skimage.data.{args.image} is not a gray image")
    window = (slice(None), slice(None))
    if args.crop:
        try:
            y, x, h, w = (int(v) for v in args.crop.split(","))
        except ValueError:
            raise SystemExit(f"--crop takes Y,X,H,W (four integers), got {args.crop!r}") from None
        window = (slice(y, y + h), slice(x, x + w))
        if clean[window].size == 0:
            raise SystemExit(f"--crop {args.crop} lies outside the {clean.shape} image")
    if args.zoom < 1:
        raise SystemExit("--zoom must be at least 1")
    if args.jpeg is not None and args.photons is not None:
        raise SystemExit("choose --jpeg or --photons, not both")
    if (args.jpeg is not None or args.photons is not None) and (args.sigma is not None
                                                                or args.estimate):
        raise SystemExit("--sigma and --estimate are for Gaussian noise, not --jpeg or --photons")
    args.sigma = 25.0 if args.sigma is None else args.sigma
    if args.out is None:
        args.out = ("trd_deblock.png" if args.jpeg is not None else
                    "trd_photons.png" if args.photons is not None else "trd_demo.png")
    if args.jpeg is not None:
        degraded, restore, label = _jpeg_case(clean, args)
    elif args.photons is not None:
        degraded, restore, label = _photon_case(clean / 255.0, args)
    else:
        degraded, restore, label = _noise_case(clean / 255.0, args)
    clean = clean / 255.0
    first, why = _first_call(restore, degraded)
    t0 = time.perf_counter()
    out = restore(degraded)
    seconds = time.perf_counter() - t0
    p_in, p_out = psnr(degraded, clean, 1.0), psnr(out, clean, 1.0)

    def shown(img):
        return np.kron(img[window], np.ones((args.zoom, args.zoom)))

    before_after_picture(
        [(f"{label}: {p_in:.2f} dB", shown(degraded)),
         (f"TRD: {p_out:.2f} dB ({seconds:.2f} s)", shown(out)),
         ("clean", shown(clean))],
        args.out,
    )
    print(f"{args.image} {clean.shape[0]}x{clean.shape[1]}, {label}: {p_in:.2f} dB "
          f"-> TRD {p_out:.2f} dB; first call {first:.1f} s ({why}), then {seconds:.2f} s; "
          f"wrote {args.out}")


def _first_call(restore, degraded):
    """Seconds of the first call, and what it spent them on besides restoring: it loads the
    models and compiles the Numba kernels, or loads them from Numba's cache on disk."""
    try:
        recorder = event.install_recorder("numba:compile")  # fired for compilations, not cache hits
    except (ImportError, AttributeError):
        recorder = contextlib.nullcontext()
    t0 = time.perf_counter()
    with recorder as record:
        restore(degraded)
    seconds = time.perf_counter() - t0
    if record is None:
        return seconds, "loading models; compiling kernels if this is the first run"
    if record.buffer:
        return seconds, "compiling kernels, once per installation"
    return seconds, "loading models and compiled kernels"


def _noise_case(clean, args):
    rng = np.random.default_rng(0)
    noisy = clean + args.sigma / 255.0 * rng.standard_normal(clean.shape)
    sigma = None if args.estimate else args.sigma / 255.0
    return noisy, lambda x: denoise_trd(x, sigma, model=args.model), f"noisy, sigma {args.sigma:g}"


def _photon_case(clean, args, gain=2.0, offset=100.0, read_noise=3.0):
    """Camera units shown and scored on the clean image's [0, 1] scale."""
    if not 0 < args.photons < 1e9:
        raise SystemExit(f"--photons must be a positive number of photons, got {args.photons:g}")
    rng = np.random.default_rng(0)
    raw = (gain * rng.poisson(clean * args.photons) + offset
           + read_noise * rng.standard_normal(clean.shape))
    unit = gain * args.photons

    def restore(x):  # x on the [0, 1] scale; the camera's units inside
        return (denoise_trd_poisson(x * unit + offset, offset=offset, model=args.model)
                - offset) / unit

    return (raw - offset) / unit, restore, f"{args.photons:g} photons for white"


def _jpeg_case(clean_u8, args):

    if not 1 <= args.jpeg <= 100:
        raise SystemExit(f"--jpeg takes a quality in 1..100, got {args.jpeg}")
    decoded, table = jpeg_roundtrip(clean_u8, args.jpeg)

    def restore(x):
        return deblock_trd(x * 255.0, qtable=table, model=args.model, preserve_range=True) / 255

    return decoded / 255.0, restore, f"JPEG q{args.jpeg}"


if __name__ == "__main__":
    main()

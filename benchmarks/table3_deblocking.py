"""JPEG deblocking PSNR (paper Table 3) under the three protocols of docs/protocols.md.

    python benchmarks/table3_deblocking.py [--models authors|ours|PATHS...] [--threads 2]
        [--protocols live1-half,classic5,live1-y] [--qualities 10,20,30] [--data FOLDER]

LIVE1 and classic5 are read from FOLDER/live1 and FOLDER/classic5 (default ../shared/data;
docs/protocols.md says where to get them).

For every protocol and quality: the JPEG decoder's PSNR and the restored image's, measured in the
same run, and the gain. Coefficients are recovered from the decoded image and Pillow's tables
(as `deblock_jpeg` does for any file).
"""

from __future__ import annotations

import argparse
import datetime
import platform
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from skimage_trd import deblock_trd, import_matlab_model, list_models, load_model
from skimage_trd._jpeg import jpeg_roundtrip
from skimage_trd._metrics import psnr as _psnr  # noqa: E402
from skimage_trd.kernels.numba_cpu import set_threads

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _data import AUTHORS as AUTHORS_ROOT  # noqa: E402
from _data import DATA, missing, require_images  # noqa: E402

AUTHORS = AUTHORS_ROOT / "jpeg_deblocking"
FOLDERS = {"live1-half": "live1", "classic5": "classic5", "live1-y": "live1"}
AUTHOR_FILES = {10: "JointTraining_7x7_400_176X176_stage=4.mat",
                20: "JointTraining_7x7_400_176X176_stage=4_Q=20.mat",
                30: "JointTraining_7x7_400_176X176_stage=4_Q=30.mat"}
# docs/protocols.md: the authors' models under each protocol, and the paper's TRD gains
REFERENCE = {("live1-half", 10): 27.85, ("live1-half", 20): 30.04, ("live1-half", 30): 31.39,
             ("classic5", 10): 29.29, ("classic5", 20): 31.48, ("classic5", 30): 32.79,
             ("live1-y", 10): 29.15, ("live1-y", 20): 31.47, ("live1-y", 30): 32.85}
PAPER_GAIN = {10: 1.26, 20: 1.29, 30: 1.36}


def rgb2ycbcr_y(rgb):
    """Y of MATLAB's rgb2ycbcr (ITU-R BT.601, 16..235) for uint8 RGB."""
    rgb = rgb.astype(np.float64)
    y = 16 + (65.481 * rgb[..., 0] + 128.553 * rgb[..., 1] + 24.966 * rgb[..., 2]) / 255
    return np.round(y)


def protocol_files(name, data=DATA):
    if name not in FOLDERS:
        raise SystemExit(f"unknown protocol {name} (one of {', '.join(FOLDERS)})")
    pattern = "*" if name == "classic5" else "*.png"
    return require_images(Path(data) / FOLDERS[name], FOLDERS[name], pattern)


def load_protocol(name, data=DATA):
    files = protocol_files(name, data)
    if name == "live1-half":
        out = []
        for p in files:
            im = Image.open(p).convert("L")
            out.append(np.asarray(im.resize((im.width // 2, im.height // 2), Image.BICUBIC)))
        return out
    if name == "classic5":
        return [np.asarray(Image.open(p).convert("L")) for p in files]
    return [rgb2ycbcr_y(np.asarray(Image.open(p).convert("RGB"))).astype(np.uint8)
            for p in files]


def psnr(a, ref):
    return _psnr(a, ref, clip=False)  # the deblocking protocol scores the output unclipped


def models_for(spec, quality):
    if spec == "authors":
        return import_matlab_model(AUTHORS / AUTHOR_FILES[quality])
    if spec == "ours":
        names = [n for n in list_models("deblock") if f"-q{quality}-" in n]
        if not names:
            raise SystemExit(f"no shipped deblocking model for quality {quality}")
        return load_model(names[0])
    return load_model(spec.format(q=quality))


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="authors",
                    help="'authors', 'ours', or a file pattern with {q} for the quality")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--protocols", default="live1-half,classic5,live1-y")
    ap.add_argument("--qualities", default="10,20,30")
    ap.add_argument("--data", default=str(DATA), help="folder holding live1/ and classic5/")
    args = ap.parse_args(argv)
    for proto in args.protocols.split(","):  # all data present before the first row
        protocol_files(proto, args.data)
    if args.models == "authors" and not AUTHORS.is_dir():
        missing("tnrd-authors", AUTHORS.parent, option="--models ours")
    set_threads(args.threads)
    print(f"# JPEG deblocking, models: {args.models}; docs/protocols.md")
    print(f"# machine: {platform.platform()}, threads={args.threads}; date {datetime.date.today()}")
    print(f"# command: python {' '.join(sys.argv)}")
    print("| protocol | q | decoder (dB) | TRD (dB) | gain | authors' models (docs/protocols.md) "
          "| paper TRD gain | seconds |")
    print("|---|---|---|---|---|---|---|---|")
    for proto in args.protocols.split(","):
        images = load_protocol(proto, args.data)
        for q in (int(s) for s in args.qualities.split(",")):
            model = models_for(args.models, q)
            t0 = time.perf_counter()
            dec_scores, out_scores = [], []
            for img in images:
                dec, table = jpeg_roundtrip(img, q)
                out = deblock_trd(dec, qtable=table, model=model, preserve_range=False) * 255.0
                ref = img.astype(np.float64)
                dec_scores.append(psnr(dec, ref))
                out_scores.append(psnr(out, ref))
            d, o = np.mean(dec_scores), np.mean(out_scores)
            print(f"| {proto} ({len(images)}) | {q} | {d:.2f} | {o:.2f} | {o - d:+.2f} | "
                  f"{REFERENCE[(proto, q)]:.2f} | {PAPER_GAIN[q] if proto == 'live1-half' else '-'} "
                  f"| {time.perf_counter() - t0:.0f} |")
            sys.stdout.flush()


if __name__ == "__main__":
    main()

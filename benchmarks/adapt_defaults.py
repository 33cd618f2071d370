"""Adapting the shipped sigma-25 model to one noisy image through each front door, with its
defaults (issue 33's floors).

    python benchmarks/adapt_defaults.py --door cli      [--images brick,coins,cell]
    python benchmarks/adapt_defaults.py --door fit      [--set set12]
    python benchmarks/adapt_defaults.py --door napari   [--set set12]
    python benchmarks/adapt_defaults.py --door overfit  [--images camera,brick,coins]
    python benchmarks/adapt_defaults.py --door adapt    [--images brick,coins,cell]
        [--threads 1] [--results FILE] [--table-only]

``cli``: each image (a 256x256 centre crop of ``skimage.data``'s image, Gaussian noise of 25
grey levels, ``default_rng(0)`` per image, rounded and clipped to 8 bits and saved as PNG) is
adapted by the command line exactly as a user types it, in a fresh process with one thread:
``python -m skimage_trd.train --loss sure --data DIR --sigma 25 --init trd-gauss-s25-7x7-5st
--out RUN --export M.npz`` (no optimiser, iteration count or crop given); timed as the
process's wall time (the first call's compilation included). ``fit``: Set12 as
docs/protocols.md adds noise (float, sigma 25, one ``default_rng(0)`` for the set, images in
sorted order), ``skimage_trd.train.fit([noisy], sigma=25, loss="sure",
init="trd-gauss-s25-7x7-5st")``. ``napari``: the same noisy images as layers on the [0, 1]
scale through the Train widget's job with its defaults (``napari_trd._jobs.train(noisy / 255,
sigma=25 / 255, loss="sure", start_from="trd-gauss-s25-7x7-5st")``). ``overfit``: a 128x128
crop, overfitting made easy: ``fit(..., optimizer="lbfgs", iterations=30)`` (float noisy
images, not clipped, so that no image is refused for clipping). ``adapt``:
``denoise_trd(noisy_uint8, 25, adapt=True)`` against the default call
``denoise_trd(noisy_uint8, 25)`` (the bank's choice; the 8-bit images of ``cli``).

Every result is judged by the true PSNR against the clean image (never seen by the
adaptation): the shipped model's ``denoise_trd(noisy, 25, model=...)`` against the adapted
one's, same call. Rows are appended to ``--results`` (JSON lines) and reused on a rerun.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _data import DATA, cpu_name, gain_table, load_jsonl  # noqa: E402

BASE = "trd-gauss-s25-7x7-5st"
SIGMA = 25.0


def crop(img, size):
    H, W = img.shape
    r, c = (H - size) // 2, (W - size) // 2
    return img[r:r + size, c:c + size].astype(np.float64)


def eight_bit_images(names, size):
    """(name, clean 0..255 float, noisy uint8) per ``skimage.data`` image."""
    from skimage import color, data

    out = []
    for name in names:
        img = getattr(data, name)()
        if img.ndim == 3:
            img = color.rgb2gray(img[..., :3]) * 255.0
        clean = crop(img, size)
        rng = np.random.default_rng(0)
        noisy = np.clip(np.round(clean + SIGMA * rng.standard_normal(clean.shape)), 0, 255)
        out.append((name, clean, noisy.astype(np.uint8)))
    return out


def set_images(name):
    """(name, clean, noisy float) of a set, noise as docs/protocols.md adds it."""
    from skimage.io import imread

    files = sorted((DATA / name).glob("*.png"))
    if not files:
        sys.exit(f"{name} not found under {DATA}")
    rng = np.random.default_rng(0)
    out = []
    for p in files:
        clean = imread(p).astype(np.float64)
        out.append((p.name, clean, clean + SIGMA * rng.standard_normal(clean.shape)))
    return out


def psnr_of(model, noisy, clean):
    from skimage_trd import denoise_trd
    from skimage_trd._metrics import psnr

    if noisy.dtype == np.uint8:  # the user's call on the 8-bit file: a [0, 1] result
        return psnr(denoise_trd(noisy, SIGMA, model=model), clean / 255.0, 1.0)
    return psnr(denoise_trd(noisy, SIGMA, model=model, data_range=255.0), clean)


def run_cli(name, noisy, work, threads):
    folder = work / name
    folder.mkdir(parents=True, exist_ok=True)
    from skimage.io import imsave

    imsave(folder / f"{name}.png", noisy, check_contrast=False)
    env = dict(os.environ, NUMBA_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads))
    cmd = [sys.executable, "-m", "skimage_trd.train", "--loss", "sure", "--data", str(folder),
           "--sigma", "25", "--init", BASE, "--out", str(work / f"run-{name}"),
           "--export", str(work / f"{name}.npz")]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-2000:]}")
    from skimage_trd import load_model

    return load_model(work / f"{name}.npz"), seconds, proc.stdout


def adapt_one(door, name, clean, noisy, work, threads):
    """(adapted model or None, seconds, extra fields)."""
    from skimage_trd import load_model

    if door == "cli":
        model, seconds, stdout = run_cli(name, noisy, work, threads)
        return model, seconds, {"log_tail": stdout.strip().splitlines()[-3:]}
    from skimage_trd.train import fit

    t0 = time.perf_counter()
    if door == "fit":
        model = fit([noisy], sigma=SIGMA, loss="sure", init=BASE)
    elif door == "napari":
        from napari_trd import _jobs

        os.environ[_jobs.USER_MODELS_ENV] = str(work / "napari-models")
        path = _jobs.train(noisy / 255.0, sigma=SIGMA / 255.0, loss="sure", start_from=BASE,
                           name=f"adapted-{Path(name).stem}")
        model = load_model(path)
    elif door == "overfit":
        model = fit([noisy.astype(np.float64)], sigma=SIGMA, loss="sure", init=BASE,
                    optimizer="lbfgs", iterations=30)
    else:
        raise ValueError(door)
    return model, time.perf_counter() - t0, {}


def measure(args):
    from skimage_trd import denoise_trd, load_model
    from skimage_trd._metrics import psnr

    base = load_model(BASE)
    if args.door in ("fit", "napari"):
        images = set_images(args.set)
        set_name = args.set
    else:
        size = 128 if args.door == "overfit" else 256
        images = eight_bit_images(args.images.split(","), size)
        set_name = f"skimage.data {size}x{size} 8-bit"
        if args.door == "overfit":  # unclipped noise: nothing refused, the optimiser runs
            images = [(n, c, c + SIGMA * np.random.default_rng(0).standard_normal(c.shape))
                      for n, c, _ in images]
            set_name = f"skimage.data {size}x{size} float"
    done = load_jsonl(args.results, lambda r: (r["door"], r["set"], r["image"]))
    if args.only:
        images = [im for im in images if im[0] in args.only.split(",")]
    with tempfile.TemporaryDirectory() as tmp, args.results.open("a") as out:
        for name, clean, noisy in images:
            key = (args.door, set_name, name)
            if key in done:
                continue
            before = psnr_of(base, noisy, clean)
            if args.door == "adapt":  # against the default call (the bank's choice)
                before = psnr(denoise_trd(noisy, SIGMA), clean / 255.0, 1.0)
                t0 = time.perf_counter()
                result, choices = denoise_trd(noisy, SIGMA, adapt=True, return_choices=True)
                seconds = time.perf_counter() - t0
                after = psnr(result, clean / 255.0, 1.0)
                extra = {"model": choices[0]["model"]}
            else:
                model, seconds, extra = adapt_one(args.door, name, clean, noisy, Path(tmp),
                                                  args.threads)
                after = psnr_of(model, noisy, clean)
                res = model.metadata.get("provenance", {}).get("result", {})
                extra.update(model=model.name, held_out=res)
            row = {"door": args.door, "set": set_name, "image": name,
                   "shape": list(clean.shape), "before": before, "after": after,
                   "seconds": seconds, "cpu": cpu_name(), "threads": args.threads,
                   "date": str(datetime.date.today()), **extra}
            done[key] = row
            out.write(json.dumps(row) + "\n")
            out.flush()
            print(f"{args.door} {name}: {before:.3f} -> {after:.3f} ({after - before:+.3f} dB) "
                  f"in {seconds:.1f} s  [{row.get('model', '')}]", flush=True)
    return [r for k, r in done.items() if k[0] == args.door and k[1] == set_name
            and (not args.only or k[2] in args.only.split(","))]


def table(rows):
    return gain_table(sorted(rows, key=lambda r: r["image"]))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--door", required=True,
                    choices=["cli", "fit", "napari", "overfit", "adapt"])
    ap.add_argument("--images", default=None, help="skimage.data names (cli, overfit, adapt)")
    ap.add_argument("--set", default="set12", help="fit, napari: a set of ../shared/data")
    ap.add_argument("--only", default=None, help="these images of the set (comma-separated)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--results", type=Path,
                    default=Path(__file__).resolve().parent / "results" / "adapt_defaults.jsonl")
    ap.add_argument("--table-only", action="store_true")
    args = ap.parse_args(argv)
    if args.images is None:
        args.images = "camera,brick,coins" if args.door == "overfit" else "brick,coins,cell"
    from skimage_trd.kernels.numba_cpu import set_threads

    set_threads(args.threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    print(f"# {cpu_name()}; {platform.platform()}; threads={args.threads}; "
          f"{datetime.date.today()}; python {' '.join(sys.argv)}")
    if args.table_only:
        rows = [r for r in load_jsonl(args.results, lambda r: (r["door"], r["set"], r["image"]))
                .values() if r["door"] == args.door]
    else:
        rows = measure(args)
    print(table(rows))


if __name__ == "__main__":
    main()

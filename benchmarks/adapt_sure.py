"""Adapting the shipped model to one noisy image without its clean version (SURE fine-tuning).

    python benchmarks/adapt_sure.py [--set set12|microscopy|NAME] [--sigma 25] [--steps 20]
        [--learning-rate 1e-3] [--optimizer adam|lbfgs] [--chunk N] [--patch N --patches K]
        [--threads 1]
        [--results FILE] [--table-only]

Every image of the set gets Gaussian noise of ``--sigma`` (0..255 scale; a fresh
``default_rng(0)`` per set, images in sorted order, as docs/protocols.md does). The shipped
7x7 model nearest that sigma is fine-tuned on that noisy image alone with
``skimage_trd.train.fit(noisy, sigma=..., loss="sure", init=base, optimizer="adam",
iterations=--steps)`` (a new Monte-Carlo probe every step; with ``--patch``, every step on
``--patches`` random windows of the image), timed, and both models denoise the
image (``denoise_trd(noisy, sigma, model=..., data_range=255)``); the true PSNR against the clean
image (which fine-tuning never sees) is printed per image with the gain and the seconds.

Sets: ``set12`` (../shared/data/set12), ``microscopy`` (skimage.data's cell and
immunohistochemistry, 512x512 centre crops, and blurred binary blobs, as benchmarks/low_light.py
has them), or a single ``skimage.data`` image by name. Results are appended to ``--results``
(JSON lines, keyed by set, image, sigma and the fine-tuning settings) and reused on a rerun.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _data import DATA, cpu_name, gain_table, load_jsonl  # noqa: E402


def load_set(name):
    """(image name, clean image on the 0..255 scale) of a set."""
    from skimage import color, data
    from skimage.io import imread

    if name == "set12":
        files = sorted((DATA / "set12").glob("*.png"))
        if not files:
            sys.exit(f"set12 not found under {DATA}")
        return [(p.name, imread(p).astype(np.float64)) for p in files]
    if name == "microscopy":
        from low_light import microscopy_images

        return [(k, 255.0 * v) for k, v in microscopy_images().items()]
    img = getattr(data, name)()
    if img.ndim == 3:
        img = color.rgb2gray(img[..., :3]) * 255.0
    return [(name, img.astype(np.float64))]


def measure(args, results_path):
    from skimage_trd import denoise_trd, list_models, load_model
    from skimage_trd._metrics import psnr
    from skimage_trd.train import fit

    names = [n for n in list_models("denoise") if "7x7" in n]
    base = min((load_model(n) for n in names), key=lambda m: abs(np.log(m.sigma / args.sigma)))
    setting = _setting(args)
    done = load_jsonl(results_path, lambda r: (r["set"], r["image"], r["sigma"], r["setting"]))
    rng = np.random.default_rng(0)
    with results_path.open("a") as log:
        for name, clean in load_set(args.set):
            noisy = clean + args.sigma * rng.standard_normal(clean.shape)  # drawn even if cached
            key = (args.set, name, args.sigma, setting)
            if key in done:
                continue
            t0 = time.perf_counter()
            tuned = fit([noisy], sigma=args.sigma, loss="sure", init=base, iterations=args.steps,
                        chunk=args.chunk or args.steps, optimizer=args.optimizer,
                        learning_rate=args.learning_rate, patch=args.patch,
                        patches=args.patches, holdout=args.holdout,
                        twin=args.twin and args.optimizer == "adam" and not args.holdout,
                        patience=0)
            seconds = time.perf_counter() - t0
            before = psnr(denoise_trd(noisy, args.sigma, model=base, data_range=255.0), clean)
            after = psnr(denoise_trd(noisy, args.sigma, model=tuned, data_range=255.0), clean)
            row = {"set": args.set, "image": name, "sigma": args.sigma, "setting": setting,
                   "shape": list(clean.shape), "base_model": base.name, "before": before,
                   "after": after, "seconds": seconds,
                   # (the held-out estimate; None where nothing was held out)
                   "sure_estimate": tuned.metadata["provenance"].get("result", {}).get(
                       "best_score")}
            done[key] = row
            log.write(json.dumps(row) + "\n")
            log.flush()
            print(f"{name} {clean.shape[0]}x{clean.shape[1]}: {before:.3f} -> {after:.3f} "
                  f"({after - before:+.3f} dB) in {seconds:.1f} s", flush=True)
    return done, setting


def _setting(args):
    text = f"{args.optimizer} steps={args.steps} lr={args.learning_rate:g} chunk={args.chunk}"
    text += f" patch={args.patch}x{args.patches}" if args.patch else ""
    text += " twin" if args.twin else ""
    return text + (f" holdout={args.holdout:g}" if args.holdout else "")


def table(done, set_name, sigma, setting):
    rows = [r for k, r in sorted(done.items()) if k[0] == set_name and k[2] == sigma
            and k[3] == setting]
    return gain_table(rows, "fine-tuned by SURE")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--set", default="set12")
    ap.add_argument("--sigma", type=float, default=25.0)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--learning-rate", type=float, default=1e-3)
    ap.add_argument("--optimizer", default="adam", choices=["adam", "lbfgs"])
    ap.add_argument("--chunk", type=int, default=0, help="default: --steps (no checkpoints)")
    ap.add_argument("--patch", type=int, default=None)
    ap.add_argument("--patches", type=int, default=4)
    ap.add_argument("--holdout", type=float, default=0.0,
                    help="pixels held out to pick the best step (fit's default for fine-tuning "
                         "judges by a twin run instead; 0 without --twin reproduces the runs "
                         "of docs/models.md's explicit settings)")
    ap.add_argument("--twin", action="store_true",
                    help="judge by a twin run (fit's default for fine-tuning with Adam; the "
                         "best step by it is the result)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--results", type=Path,
                    default=Path(__file__).resolve().parent / "results" / "adapt_sure.jsonl")
    ap.add_argument("--table-only", action="store_true")
    args = ap.parse_args(argv)
    from skimage_trd.kernels.numba_cpu import set_threads

    set_threads(args.threads)
    print(f"# {cpu_name()}; {platform.platform()}; threads={args.threads}; "
          f"{datetime.date.today()}; python {' '.join(sys.argv)}")
    if args.table_only:
        setting = _setting(args)
        done = load_jsonl(args.results, lambda r: (r["set"], r["image"], r["sigma"], r["setting"]))
    else:
        done, setting = measure(args, args.results)
    print(table(done, args.set, args.sigma, setting))


if __name__ == "__main__":
    main()

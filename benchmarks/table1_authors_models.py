"""Reproduce the paper's Table 1 (BSD68 denoising PSNR) with the authors' released models.

Protocol: docs/protocols.md, "Gaussian denoising". The authors' MATLAB files are read
from ../shared/reference-models/tnrd-authors/ by our importer and run by our engine.

    python benchmarks/table1_authors_models.py [--threads N] [--backend numba] [--dtype float64]
"""

from __future__ import annotations

import argparse
import datetime
import platform
import sys
import time
from pathlib import Path

import numpy as np

from skimage_trd import import_matlab_model
from skimage_trd._metrics import psnr  # noqa: E402
from skimage_trd.kernels.engine import run_model
from skimage_trd.kernels.numba_cpu import set_threads

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _data import AUTHORS, SHARED, missing, require_images  # noqa: E402

MODELS = AUTHORS / "denoising"

# (kernel, sigma) -> figure of docs/protocols.md (the authors' models under this protocol)
EXPECTED = {
    ("7x7", 15): 31.43,
    ("7x7", 25): 28.92,
    ("7x7", 50): 25.96,
    ("5x5", 15): 31.31,
    ("5x5", 25): 28.79,
}


def load_gray_set(folder, what="bsd68"):
    from skimage.io import imread

    files = require_images(folder, what)
    return [(p.name, imread(p).astype(np.float64)) for p in files]


def evaluate(model, images, sigma, backend="numba", dtype=np.float64):
    rng = np.random.default_rng(0)
    scores = []
    for _, clean in images:
        noisy = clean + sigma * rng.standard_normal(clean.shape)
        out = run_model(noisy.astype(dtype), model, backend=backend)
        scores.append(psnr(out.astype(np.float64), clean))
    return float(np.mean(scores)), scores


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--backend", default="numba")
    ap.add_argument("--dtype", default="float64", choices=["float32", "float64"])
    ap.add_argument("--data", default=str(SHARED / "data" / "bsd68"), help="the BSD68 images")
    args = ap.parse_args(argv)
    set_threads(args.threads)
    if not MODELS.is_dir():
        missing("tnrd-authors", MODELS.parent, option=None)
    images = load_gray_set(args.data)
    print(f"# Table 1 with the authors' models: {len(images)} images from {args.data}")
    print(f"# machine: {platform.machine()} {platform.processor() or ''} ({platform.platform()}),"
          f" threads={args.threads}, backend={args.backend}, dtype={args.dtype}")
    print(f"# date: {datetime.date.today()}  command: python {' '.join(sys.argv)}")
    print()
    print("| model | sigma | PSNR (ours) | docs/protocols.md | difference | seconds |")
    print("|---|---|---|---|---|---|")
    worst = 0.0
    for (kernel, sigma), expected in EXPECTED.items():
        path = MODELS / f"JointTraining_{kernel}_400_180x180_stage=5_sigma={sigma}.mat"
        model = import_matlab_model(path)
        t0 = time.perf_counter()
        mean, _ = evaluate(model, images, sigma, args.backend, np.dtype(args.dtype))
        dt = time.perf_counter() - t0
        diff = mean - expected
        worst = max(worst, abs(diff))
        print(f"| TRD 5 stages {kernel} | {sigma} | {mean:.3f} | {expected:.2f} | {diff:+.3f} | {dt:.1f} |")
        sys.stdout.flush()
    print()
    print(f"largest deviation from the reference figures: {worst:.3f} dB "
          f"({'within' if worst <= 0.01 else 'OUTSIDE'} 0.01 dB, figures rounded to 0.01)")


if __name__ == "__main__":
    main()

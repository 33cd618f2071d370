"""Time of one full-data stage gradient on the 400 training images (paper: 75 s, 8 threads, 7x7).

    python benchmarks/train_gradient_speed.py [--data ../shared/data/train400] [--backend numba]
        [--threads 1] [--repeat 3] [--images 400]

Greedy training evaluates this gradient (one stage, 400 crops of 180x180, 48 filters of 7x7,
63 RBFs) once or twice per L-BFGS iteration.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import sys
import time
from pathlib import Path

import numpy as np

from skimage_trd.train import add_noise, load_image_folder, plain_initial_stage
from skimage_trd.train.gradients import TrainingSpec, pack_params
from skimage_trd.train.objectives import _batch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _data import DATA, require_images  # noqa: E402

PAPER = {5: 35.0, 7: 75.0, 9: 165.0}


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(DATA / "train400"),
                    help="the training images (train400)")
    ap.add_argument("--backend", default="numba", choices=["numba", "cupy"])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--images", type=int, default=400)
    ap.add_argument("--kernel-sizes", default="5,7")
    args = ap.parse_args(argv)
    if args.backend == "numba":
        from skimage_trd.kernels.numba_cpu import set_threads

        set_threads(args.threads)
        device = f"{platform.processor() or platform.machine()}, {args.threads} thread(s)"
    else:
        import cupy

        device = cupy.cuda.runtime.getDeviceProperties(0)["name"].decode()
    require_images(args.data, "train400")
    clean, _ = load_image_folder(args.data)
    clean = np.stack(clean[: args.images]).astype(np.float32)
    noisy = np.stack(add_noise(list(clean), 25.0, 0)).astype(np.float32)
    n, h, w = clean.shape
    print(f"# one-stage training gradient, {n} images of {h}x{w}, float32")
    print(f"# device: {device}; date {datetime.date.today()}; command: python {' '.join(sys.argv)}")
    print(f"| filters | backend | seconds (median of {args.repeat}) | paper, 8 Xeon threads (s) |")
    print("|---|---|---|---|")
    for k in (int(s) for s in args.kernel_sizes.split(",")):
        spec = TrainingSpec(k, np.arange(-310.0, 310.1, 10.0), 0.01)
        batch = _batch(noisy, clean, spec, args.backend)
        params = pack_params([plain_initial_stage(spec)])
        batch.loss_and_grad(params, stages="last")  # warm-up (compilation)
        times = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            loss, grad = batch.loss_and_grad(params, stages="last")
            times.append(time.perf_counter() - t0)
        scale = 400 / clean.shape[0]
        note = "" if scale == 1 else f" (x{scale:g}: measured on {clean.shape[0]} images)"
        print(f"| {k * k - 1} of {k}x{k} | {args.backend} | {np.median(times) * scale:.2f}{note} "
              f"| {PAPER[k]:.0f} |")
        sys.stdout.flush()


if __name__ == "__main__":
    main()

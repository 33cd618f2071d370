"""Adapting the shipped volume model to one noisy volume unlike its training volumes, by SURE
(no clean volume): ``denoise_trd(noisy, sigma, axes="ZYX", adapt=True)`` against the default
call ``denoise_trd(noisy, sigma, axes="ZYX")``.

    python benchmarks/volumes_adapt.py [--volumes blobs,brick] [--sigma 0.1]
        [--results benchmarks/results/volumes_adapt.jsonl]

Volumes not drawn by our generator (``skimage_trd._volumes``), 32 x 128 x 128:

- ``blobs``: scikit-image's ``binary_blobs(128, blob_size_fraction=0.08, n_dim=3,
  volume_fraction=0.25, rng=0)``, sampled every 4th plane after a Gaussian blur of (2.5, 1, 1)
  pixels (z, y, x), scaled to [0.05, 0.8]: large irregular objects with sharp surfaces;
- ``brick``: scikit-image's ``brick`` texture (a photograph, 512 x 512, central 128 x 128
  crops) stacked into 32 planes each shifted by 1.5 pixels in x and y from the one before and
  blurred along z by a Gaussian of 1 plane: a textured, sheared volume.

Gaussian noise of ``sigma`` ([0, 1] scale, ``default_rng(7)``). PSNR (dB, peak 1) of both calls
and the seconds of each, one thread; rows appended to ``--results``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
from pathlib import Path

for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ[var] = "1"

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _data import cpu_name  # noqa: E402

from skimage_trd import denoise_trd  # noqa: E402
from skimage_trd._metrics import psnr  # noqa: E402


def blobs():
    from scipy.ndimage import gaussian_filter
    from skimage.data import binary_blobs

    b = binary_blobs(128, blob_size_fraction=0.08, n_dim=3, volume_fraction=0.25, rng=0)
    v = gaussian_filter(b.astype(np.float64), (2.5, 1.0, 1.0))[::4]
    return 0.05 + 0.75 * (v - v.min()) / (v.max() - v.min())


def brick():
    from scipy.ndimage import gaussian_filter1d, shift
    from skimage.data import brick as img

    base = img() / 255.0
    planes = [shift(base, (1.5 * k, 1.5 * k), order=1, mode="reflect")[192:320, 192:320]
              for k in range(32)]
    return gaussian_filter1d(np.stack(planes), 1.0, axis=0)


VOLUMES = {"blobs": blobs, "brick": brick}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--volumes", default=",".join(VOLUMES))
    ap.add_argument("--sigma", type=float, default=0.1)
    ap.add_argument("--results", default=str(Path(__file__).parent / "results" /
                                             "volumes_adapt.jsonl"))
    args = ap.parse_args(argv)
    rows = []
    for name in args.volumes.split(","):
        clean = VOLUMES[name]()
        noisy = clean + args.sigma * np.random.default_rng(7).standard_normal(clean.shape)
        t = time.perf_counter()
        default = denoise_trd(noisy, args.sigma, axes="ZYX")
        t_default = time.perf_counter() - t
        t = time.perf_counter()
        adapted = denoise_trd(noisy, args.sigma, axes="ZYX", adapt=True)
        t_adapt = time.perf_counter() - t
        row = {"volume": name, "sigma": args.sigma, "shape": list(clean.shape),
               "noisy": psnr(noisy, clean, 1.0), "default": psnr(default, clean, 1.0),
               "adapted": psnr(adapted, clean, 1.0), "seconds_default": t_default,
               "seconds_adapt": t_adapt, "cpu": cpu_name(),
               "date": datetime.date.today().isoformat()}
        rows.append(row)
        with open(args.results, "a") as fh:
            fh.write(json.dumps(row) + "\n")
        print(f"{name}: noisy {row['noisy']:.2f}, default {row['default']:.2f}, adapted "
              f"{row['adapted']:.2f} dB ({row['adapted'] - row['default']:+.2f}); "
              f"{t_default:.1f} s and {t_adapt:.0f} s", flush=True)
    print(f"\n{cpu_name()}, one thread, {datetime.date.today().isoformat()}\ncommand: python "
          "benchmarks/volumes_adapt.py " + " ".join(argv or sys.argv[1:]))
    print("| volume | noisy | default call | adapt=True | gain | seconds (default, adapt) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['volume']} | {r['noisy']:.2f} | {r['default']:.2f} | {r['adapted']:.2f} | "
              f"{r['adapted'] - r['default']:+.2f} | {r['seconds_default']:.1f}, "
              f"{r['seconds_adapt']:.0f} |")


if __name__ == "__main__":
    main()

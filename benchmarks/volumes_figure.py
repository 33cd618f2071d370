"""The picture of docs/volumes.md: xy and xz slices of a noisy z-stack, denoised plane by plane,
as a volume (3-D filters) and by BM4D.

    python benchmarks/volumes_figure.py [--volume neurons] [--sigma 0.1]
        [--out docs/volumes_xy_xz.png]

The volume is one of benchmarks/volumes_bm4d.py's (32 x 128 x 128, the same noise draw), so
the PSNR in each caption is that table's. The xz slice (through the middle row) is stretched
by the volume's z-step, as a microscopist would display it; the display maps the clean
volume's 99.8th percentile to white (the same for every panel). One thread.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ[var] = "1"

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from volumes_bm4d import VOLUMES, volume  # noqa: E402

from skimage_trd import denoise_trd  # noqa: E402
from skimage_trd._metrics import psnr  # noqa: E402
from skimage_trd.demo import before_after_picture  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--volume", default="mixed", choices=sorted(VOLUMES))
    ap.add_argument("--sigma", type=float, default=0.1)
    ap.add_argument("--out", default="docs/volumes_xy_xz.png")
    ap.add_argument("--zoom", type=int, default=2, help="enlarge the shown pixels N times")
    args = ap.parse_args(argv)
    import bm4d

    names = list(VOLUMES)
    k = names.index(args.volume)
    clean = volume(args.volume, (32, 128, 128))
    rng = np.random.default_rng(round(args.sigma * 1000) + k)
    noisy = clean + args.sigma * rng.standard_normal(clean.shape)
    results = [("clean", clean), ("noisy", noisy)]
    for name, run in (("planes (2-D)", lambda: denoise_trd(noisy, args.sigma)),
                      ("volume (3-D)", lambda: denoise_trd(noisy, args.sigma, axes="ZYX")),
                      ("BM4D", lambda: bm4d.bm4d(noisy, args.sigma))):
        t = time.perf_counter()
        out = run()
        print(f"{name}: {psnr(out, clean, 1.0):.2f} dB, {time.perf_counter() - t:.1f} s")
        results.append((name, out))
    step = int(VOLUMES[args.volume]["z_step"])
    z, y = clean.shape[0] // 2, clean.shape[1] // 2
    panels = []
    top = float(np.percentile(clean, 99.8))  # display: the clean volume's 99.8 % to white
    for title, v in results:
        score = "" if title == "clean" else f" {psnr(v, clean, 1.0):.2f} dB"
        xy = v[z]
        xz = np.repeat(v[:, y, :], step, axis=0)  # z stretched by the z-step
        both = np.concatenate([xy, np.full((4, xy.shape[1]), top), xz], 0) / top
        both = np.repeat(np.repeat(both, args.zoom, axis=0), args.zoom, axis=1)
        panels.append((title + score, both))
    before_after_picture(panels, args.out)
    print(f"wrote {args.out}: xy plane {z} above, xz slice at row {y} below (z x {step})")


if __name__ == "__main__":
    main()

"""Photon-counting volumes: denoise_trd_poisson(..., axes="ZYX") against BM4D with the same
generalised Anscombe transform, and against our plane-by-plane call.

    python benchmarks/volumes_photons.py [--peaks 2,5,20] [--shape 32,128,128]
        [--volumes neurons,nuclei,tissue,mixed] [--model NAME_OR_PATH] [--methods ...]
        [--results benchmarks/results/volumes_photons.jsonl]

Volumes: those of ``volumes_bm4d.py`` (procedural, seeds 3000-3003). Camera: expected photons
``y = peak * clean`` (clean in [0, 1]), ``z = gain * Poisson(y) + offset + N(0, read^2)``,
gain 2, offset 100, read noise 3 camera units, ``default_rng(peak * 100 + index)``. PSNR
(dB) of the estimate of ``gain * y + offset`` against it, peak ``gain * peak`` (no clipping),
as benchmarks/low_light.py measures images. One thread each.

- ``trd-3d``: ``denoise_trd_poisson(z, 2, 3, offset=100, axes="ZYX")`` (the default call for
  volumes with the camera's parameters given);
- ``trd-planes``: ``denoise_trd_poisson(z, 2, 3, offset=100)`` (plane by plane);
- ``bm4d``: ``inverse(bm4d.bm4d(gat(z), 1))`` with the same transform and exact unbiased
  inverse (``skimage_trd.generalized_anscombe``, ``inverse_generalized_anscombe``).
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
from pathlib import Path

for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ[var] = "1"

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _data import cpu_name, load_jsonl, measured_row  # noqa: E402
from volumes_bm4d import VOLUMES, volume  # noqa: E402

from skimage_trd import (  # noqa: E402
    denoise_trd_poisson,
    generalized_anscombe,
    inverse_generalized_anscombe,
)
from skimage_trd._metrics import psnr  # noqa: E402

GAIN, OFFSET, READ = 2.0, 100.0, 3.0


def run(method, raw, model):
    if method == "trd-3d":
        return denoise_trd_poisson(raw, GAIN, READ, offset=OFFSET, axes="ZYX", model=model)
    if method == "trd-planes":
        return denoise_trd_poisson(raw, GAIN, READ, offset=OFFSET)
    import bm4d

    t = generalized_anscombe(raw, GAIN, READ, OFFSET)
    return inverse_generalized_anscombe(bm4d.bm4d(t, 1.0), GAIN, READ, OFFSET)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--peaks", default="2,5,20")
    ap.add_argument("--shape", default="32,128,128")
    ap.add_argument("--volumes", default=",".join(VOLUMES))
    ap.add_argument("--model", default=None)
    ap.add_argument("--methods", default="trd-3d,trd-planes,bm4d")
    ap.add_argument("--results", default=str(Path(__file__).parent / "results" /
                                             "volumes_photons.jsonl"))
    args = ap.parse_args(argv)
    shape = tuple(int(n) for n in args.shape.split(","))
    peaks = [float(p) for p in args.peaks.split(",")]
    names = args.volumes.split(",")
    methods = args.methods.split(",")
    results = Path(args.results)
    results.parent.mkdir(parents=True, exist_ok=True)
    done = load_jsonl(results, lambda r: (r["method"], r["model"], r["volume"], r["peak"],
                                          tuple(r["shape"])))
    rows = []
    for peak in peaks:
        for k, name in enumerate(names):
            clean = volume(name, shape)
            rng = np.random.default_rng(int(peak * 100) + k)
            photons = peak * clean
            raw = GAIN * rng.poisson(photons) + OFFSET + READ * rng.standard_normal(shape)
            target = GAIN * photons + OFFSET
            for method in methods:
                model = args.model if method == "trd-3d" else None
                key = (method, model, name, peak, shape)
                r, new = measured_row(
                    done, results, key, {"method": method, "model": model, "volume": name,
                                         "peak": peak, "shape": list(shape)},
                    lambda: run(method, raw, args.model),
                    lambda out: {"psnr": psnr(out - OFFSET, target - OFFSET, GAIN * peak,
                                              clip=False)})
                if new:
                    print(f"  {method:10s} {name:8s} peak {peak:g}: {r['psnr']:.2f} dB "
                          f"{r['seconds']:.1f} s", flush=True)
                rows.append(done[key])
    print(f"\n{cpu_name()}, one thread, {datetime.date.today().isoformat()}, volumes of "
          f"{shape}, gain {GAIN:g}, offset {OFFSET:g}, read noise {READ:g}\n"
          "command: python benchmarks/volumes_photons.py " + " ".join(argv or sys.argv[1:]))
    head = "| photons | " + " | ".join(methods) + " |"
    print(head)
    print("|" + "---|" * (len(methods) + 1))
    for peak in peaks:
        cells = []
        for m in methods:
            r = [x for x in rows if x["method"] == m and x["peak"] == peak]
            cells.append(f"{np.mean([x['psnr'] for x in r]):.2f} "
                         f"({np.mean([x['seconds'] for x in r]):.0f} s)")
        print(f"| {peak:g} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()

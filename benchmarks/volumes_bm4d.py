"""Volumes: the 3-D default call against BM4D and against our plane-by-plane call.

    python benchmarks/volumes_bm4d.py [--sigmas 0.05,0.1,0.2] [--shape 32,128,128]
        [--volumes neurons,nuclei,tissue,mixed] [--model NAME_OR_PATH] [--no-bm4d]
        [--results benchmarks/results/volumes_bm4d.jsonl]

Volumes (``skimage_trd._volumes.fluorescence_volume``, seeds 3000+, none of them a training
seed; each unlike the others):

- ``neurons``: filaments and vesicles, confocal point-spread function, z-step 2 pixels;
- ``nuclei``: nuclei and membranes, widefield (long in z, with out-of-focus haze), z-step 3;
- ``tissue``: membranes and vesicles, light-sheet, z-step 1 (isotropic);
- ``mixed``: all four structures, confocal, z-step 4.

Noise: Gaussian of ``sigma`` (of the [0, 1] range), ``default_rng(round(sigma * 1000) +
index)``; the noisy volume is float64 and not clipped. PSNR (dB) over the whole volume, peak
1. Methods on the same noisy volume, one thread each (OMP/OpenBLAS/Numba threads set to 1):

- ``trd-3d``: ``denoise_trd(noisy, sigma, axes="ZYX")`` (the default call for volumes; with
  ``--model``, that volume model);
- ``trd-planes``: ``denoise_trd(noisy, sigma)`` (today's default: plane by plane);
- ``bm4d``: ``bm4d.bm4d(noisy, sigma)`` (pip ``bm4d``, a benchmark-only peer with a
  non-commercial licence; its default profile).

Seconds: wall time of each call (TRD after a warm-up call on a small volume). Rows are appended
to ``--results`` (JSON lines keyed by method, model, volume, sigma, shape) and reused.
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

from skimage_trd import denoise_trd  # noqa: E402
from skimage_trd._metrics import psnr  # noqa: E402
from skimage_trd._volumes import fluorescence_volume  # noqa: E402

VOLUMES = {
    "neurons": dict(structures=("filaments", "vesicles"), psf="confocal", z_step=2.0, seed=3000),
    "nuclei": dict(structures=("nuclei", "membranes"), psf="widefield", z_step=3.0, seed=3001),
    "tissue": dict(structures=("membranes", "vesicles"), psf="lightsheet", z_step=1.0, seed=3002),
    "mixed": dict(structures=("filaments", "vesicles", "membranes", "nuclei"), psf="confocal",
                  z_step=4.0, seed=3003),
}


def volume(name, shape):
    return fluorescence_volume(shape, **VOLUMES[name])


def noisy_volume(clean, sigma, index):
    """The benchmark's noisy volume: Gaussian noise of ``sigma``, ``default_rng(round(sigma *
    1000) + index)``."""
    rng = np.random.default_rng(round(sigma * 1000) + index)
    return clean + sigma * rng.standard_normal(clean.shape)


def run(method, noisy, sigma, model):
    if method == "trd-3d":
        return denoise_trd(noisy, sigma, axes="ZYX", model=model)
    if method == "trd-planes":
        return denoise_trd(noisy, sigma)
    import bm4d

    return bm4d.bm4d(noisy, sigma)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sigmas", default="0.05,0.1,0.2")
    ap.add_argument("--shape", default="32,128,128")
    ap.add_argument("--volumes", default=",".join(VOLUMES))
    ap.add_argument("--model", default=None)
    ap.add_argument("--no-bm4d", action="store_true")
    ap.add_argument("--methods", default=None, help="only these (comma-separated), e.g. "
                    "trd-planes,bm4d to measure the peers before a volume model exists")
    ap.add_argument("--results", default=str(Path(__file__).parent / "results" /
                                             "volumes_bm4d.jsonl"))
    args = ap.parse_args(argv)
    shape = tuple(int(n) for n in args.shape.split(","))
    sigmas = [float(s) for s in args.sigmas.split(",")]
    names = args.volumes.split(",")
    methods = ["trd-3d", "trd-planes"] + ([] if args.no_bm4d else ["bm4d"])
    measure = methods if args.methods is None else args.methods.split(",")
    results = Path(args.results)
    results.parent.mkdir(parents=True, exist_ok=True)
    done = load_jsonl(results, lambda r: (r["method"], r["model"], r["volume"], r["sigma"],
                                          tuple(r["shape"])))
    if "trd-3d" in measure:
        denoise_trd(np.random.default_rng(0).random((8, 32, 32)), 0.1, axes="ZYX",
                    model=args.model)
    denoise_trd(np.random.default_rng(0).random((8, 32, 32)), 0.1)  # (warm-up: compile)
    rows = []
    for sigma in sigmas:
        for k, name in enumerate(names):
            clean = volume(name, shape)
            noisy = noisy_volume(clean, sigma, k)
            for method in measure:
                model = args.model if method == "trd-3d" else None
                key = (method, model, name, sigma, shape)
                r, new = measured_row(
                    done, results, key, {"method": method, "model": model, "volume": name,
                                         "sigma": sigma, "shape": list(shape)},
                    lambda: run(method, noisy, sigma, args.model),
                    lambda out: {"psnr": psnr(out, clean, 1.0),
                                 "noisy_psnr": psnr(noisy, clean, 1.0)})
                if new:
                    print(f"  {method:10s} {name:8s} sigma {sigma:g}: {r['psnr']:.2f} dB "
                          f"{r['seconds']:.1f} s", flush=True)
                rows.append(done[key])
    if measure != methods:
        return
    print(f"\n{cpu_name()}, one thread, {datetime.date.today().isoformat()}, volumes of "
          f"{shape}\ncommand: python benchmarks/volumes_bm4d.py " + " ".join(argv or sys.argv[1:]))
    head = "| sigma | volume | noisy | " + " | ".join(methods) + " | 3-D - planes | 3-D - BM4D |"
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for sigma in sigmas:
        means = {m: [] for m in methods}
        for name in names:
            r = {m: next(x for x in rows if x["method"] == m and x["volume"] == name and
                         x["sigma"] == sigma) for m in methods}
            for m in methods:
                means[m].append(r[m]["psnr"])
            cells = [f"{r[m]['psnr']:.2f} ({r[m]['seconds']:.0f} s)" for m in methods]
            d_b = f"{r['trd-3d']['psnr'] - r['bm4d']['psnr']:+.2f}" if "bm4d" in r else "-"
            print(f"| {sigma:g} | {name} | {r['trd-3d']['noisy_psnr']:.2f} | " + " | ".join(cells)
                  + f" | {r['trd-3d']['psnr'] - r['trd-planes']['psnr']:+.2f} | {d_b} |")
        mean = {m: float(np.mean(v)) for m, v in means.items()}
        d_b = f"{mean['trd-3d'] - mean['bm4d']:+.2f}" if "bm4d" in mean else "-"
        print(f"| {sigma:g} | **mean** | | " + " | ".join(f"{mean[m]:.2f}" for m in methods)
              + f" | {mean['trd-3d'] - mean['trd-planes']:+.2f} | {d_b} |")


if __name__ == "__main__":
    main()

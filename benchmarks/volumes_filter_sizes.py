"""Volume models of several filter sizes side by side: PSNR and time of the default call.

    python benchmarks/volumes_filter_sizes.py MODEL [MODEL ...] [--repeat 3]
        [--sigmas 0.05,0.1,0.2] [--shape 32,128,128]

Each MODEL (a name or a ``.npz`` path; e.g. the runs of ``training/train_volume.py`` with
``--depth`` and ``--init``) denoises, through ``denoise_trd(noisy, sigma, axes="ZYX",
model=MODEL)``, the same noisy volumes: the four procedural volumes of
``volumes_bm4d.py`` (seeds 3000+, none a training seed) at each sigma, and the two volumes not
drawn by our generator of ``volumes_adapt.py`` (``blobs``, ``brick``) at sigma 0.1. PSNR (dB,
peak 1) over the whole volume; seconds: median of ``--repeat`` calls on the 32 x 128 x 128
``mixed`` volume, the models interleaved, one thread (OMP/OpenBLAS/Numba threads 1).
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
from _data import cpu_name, median_times  # noqa: E402
from volumes_adapt import VOLUMES as FOREIGN  # noqa: E402
from volumes_bm4d import VOLUMES, noisy_volume, volume  # noqa: E402

from skimage_trd import denoise_trd, load_model  # noqa: E402
from skimage_trd._metrics import psnr  # noqa: E402


def noisy_cases(sigmas, shape):
    """(label, clean, noisy, sigma): the procedural volumes at each sigma (the noise of
    volumes_bm4d.py, draw for draw), then the foreign volumes at 0.1."""
    cases = []
    for sigma in sigmas:
        for index, name in enumerate(VOLUMES):
            clean = volume(name, shape)
            cases.append((f"{name} {sigma:g}", clean, noisy_volume(clean, sigma, index), sigma))
    for index, (name, make) in enumerate(FOREIGN.items()):
        clean = make()
        rng = np.random.default_rng(100 + index)
        cases.append((f"{name} 0.1", clean, clean + 0.1 * rng.standard_normal(clean.shape), 0.1))
    return cases


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="+")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--sigmas", default="0.05,0.1,0.2")
    ap.add_argument("--shape", default="32,128,128")
    args = ap.parse_args(argv)
    models = [load_model(m) for m in args.models]
    shape = tuple(int(s) for s in args.shape.split(","))
    cases = noisy_cases([float(s) for s in args.sigmas.split(",")], shape)
    table = {}
    for label, clean, noisy, sigma in cases:
        table[label] = [psnr(denoise_trd(noisy, sigma, axes="ZYX", model=m), clean, 1.0)
                        for m in models]
        print(label, " ".join(f"{v:.2f}" for v in table[label]), flush=True)
    mixed = next(noisy for label, _, noisy, _ in cases if label.startswith("mixed"))
    times = median_times([lambda m=m: denoise_trd(mixed, 0.1, axes="ZYX", model=m)
                          for m in models], args.repeat)
    print(f"\n{cpu_name()}, 1 thread, {datetime.date.today().isoformat()}\ncommand: python "
          "benchmarks/volumes_filter_sizes.py " + " ".join(argv or sys.argv[1:]))
    head = " | ".join(f"{m.name} ({'x'.join(map(str, m.filter_shape))}, {m.n_filters} filters)"
                      for m in models)
    print(f"| volume, sigma | {head} |\n|---|" + "---|" * len(models))
    for label, values in table.items():
        best = max(values)
        cells = [f"**{v:.2f}**" if v == best else f"{v:.2f}" for v in values]
        print(f"| {label} | " + " | ".join(cells) + " |")
    for sigma in args.sigmas.split(","):
        rows = [v for label, v in table.items()
                if label.endswith(f" {float(sigma):g}") and label.split()[0] in VOLUMES]
        print(f"| mean of the four, {float(sigma):g} | "
              + " | ".join(f"{np.mean(col):.2f}" for col in zip(*rows, strict=True)) + " |")
    print(f"| seconds ({'x'.join(map(str, shape))} mixed, median of {args.repeat}) | "
          + " | ".join(f"{t:.2f}" for t in times) + " |")


if __name__ == "__main__":
    main()

"""Time per voxel of the volume call against the 2-D call's time per pixel times the ratio of
the models' work (filters x taps: 48 x 3 x 7 x 7 against 48 x 7 x 7, 3x, for the shipped models).

    python benchmarks/volumes_speed.py [--repeat 5] [--threads=1]

One thread (OMP, OpenBLAS and Numba threads set to 1; ``--threads=N``: N), float64 input in [0, 1], sigma 0.1,
the default calls: ``denoise_trd(image, 0.1)`` on 512 x 512 and 1024 x 1024 images and
``denoise_trd(volume, 0.1, axes="ZYX")`` on 32 x 192 x 192 and 64 x 256 x 256 volumes (the
models the bank picks for this noise). Median of ``--repeat`` runs after a warm-up, the calls
interleaved. The ratio column: the volume's time per voxel over (the 2-D time per pixel at
512 x 512 times the ratio of work per voxel and per pixel); 1 means the volume kernel is as
close to the hardware as the 2-D one. GFLOP/s: the stages' multiply-adds (2 FLOP each; both
correlations of every filter of every stage) per second of the whole call.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
from pathlib import Path

THREADS = next((a.split("=", 1)[1] for a in sys.argv if a.startswith("--threads=")), "1")
for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ[var] = THREADS

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _data import cpu_name, median_times  # noqa: E402

from skimage_trd import denoise_trd  # noqa: E402
from skimage_trd._planes import select_model  # noqa: E402
from skimage_trd._registry import resolve_models  # noqa: E402


def flop_per_site(model):
    """FLOP per pixel (voxel) of all stages: two correlations of every filter, 2 FLOP a tap."""
    return 4 * model.n_stages * model.n_filters * int(np.prod(model.filter_shape))


def bank_model(ndim):
    """The model the default call uses at sigma 0.1 (the bank's one nearest 25.5 / 255)."""
    return select_model(resolve_models(None, "denoise", ndim=ndim), 25.5)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--threads", default="1", help="threads (give it as --threads=N)")
    args = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    m2, m3 = bank_model(2), bank_model(3)
    work = flop_per_site(m3) / flop_per_site(m2)
    cases = [("2-D", rng.random(shape), {}) for shape in ((512, 512), (1024, 1024))]
    cases += [("3-D", rng.random(shape), {"axes": "ZYX"})
              for shape in ((32, 192, 192), (64, 256, 256))]
    times = median_times([lambda x=x, kw=kw: denoise_trd(x, 0.1, **kw) for _, x, kw in cases],
                         args.repeat)
    print(f"{cpu_name()}, {THREADS} thread(s), {datetime.date.today().isoformat()}, median of "
          f"{args.repeat}\ncommand: python benchmarks/volumes_speed.py "
          + " ".join(argv or sys.argv[1:]))
    print(f"models: {m2.name} ({flop_per_site(m2)} FLOP per pixel), {m3.name} "
          f"({flop_per_site(m3)} FLOP per voxel): work ratio {work:.2f}")
    print(f"| call | seconds | ns per pixel/voxel | GFLOP/s | per voxel / ({work:.2f} x 2-D per "
          "pixel at 512^2) |")
    print("|---|---|---|---|---|")
    base = times[0] / cases[0][1].size
    for (kind, x, _), t in zip(cases, times, strict=True):
        per = t / x.size
        flop = flop_per_site(m3 if kind == "3-D" else m2)
        ratio = f"{per / (work * base):.2f}" if kind == "3-D" else "-"
        print(f"| {kind} {'x'.join(map(str, x.shape))} | {t:.3f} | {per * 1e9:.0f} | "
              f"{flop / per * 1e-9:.1f} | {ratio} |")


if __name__ == "__main__":
    main()

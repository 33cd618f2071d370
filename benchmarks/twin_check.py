"""How well the twin run's estimate follows the true gain of an adaptation (issue 33).

    python benchmarks/twin_check.py [--image 02.png] [--steps 20] [--eps-factors 0.25,1]
        [--probes 1]

One Set12 image (noise 25 as ``adapt_defaults.py --door fit`` adds it) adapted through ``fit``
with its defaults but no early stop (``patience=0``). At every checkpoint (every 5 steps) three
figures of the gain over the shipped model, in squared grey levels per pixel over the whole
image: the truth (against the clean image, never seen by the run), the twin run's estimate
(``objectives.TwinEstimate``: SURE of the whole adaptation) and SURE through the adapted model
with the twin's probe but the parameters taken as fixed (what the estimate would be without
the twin run). ``--eps-factors``: the twin's step relative to SURE's step for the image
(``objectives.TWIN_EPS_FACTOR``, 0.25 in the product); ``--probes``: twin probes tried per
factor (seeds of the run, each with its own probe). One thread.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("NUMBA_NUM_THREADS", "1")

sys.path.insert(0, str(Path(__file__).resolve().parent))
import numpy as np  # noqa: E402
from _data import cpu_name  # noqa: E402
from adapt_defaults import BASE, SIGMA, set_images  # noqa: E402

from skimage_trd import load_model  # noqa: E402
from skimage_trd.kernels.engine import run_model  # noqa: E402
from skimage_trd.train import fit, loop, objectives  # noqa: E402


def check(clean, noisy, steps, factor, seed):
    objectives.TWIN_EPS_FACTOR = factor
    rows = []
    original = loop._TrainingRun._consider

    def mse(model):
        return float(np.mean((run_model(noisy, model, exact=False) - clean) ** 2))

    start_mse = mse(load_model(BASE))

    def consider(self, stages, score, iteration):
        original(self, stages, score, iteration)
        model = loop._to_model(stages, self.spec, self.config)
        start = self.start_maps[0]  # (the judge's maps of the starting model, run and twin)
        gain = float((start - self.twin.last_maps[0]).mean())
        fixed = float((start - self.twin.maps(model, model)[0]).mean())
        rows.append((iteration, start_mse - mse(model), gain, fixed,
                     self.state.history[-1].get("gain_z")))

    loop._TrainingRun._consider = consider
    try:
        fit([noisy], sigma=SIGMA, loss="sure", init=BASE, patience=0, iterations=steps, seed=seed)
    finally:
        loop._TrainingRun._consider = original
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--image", default="02.png")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--eps-factors", default="0.25,1")
    ap.add_argument("--probes", type=int, default=1)
    args = ap.parse_args(argv)
    _, clean, noisy = next(im for im in set_images("set12") if im[0] == args.image)
    command = " ".join(sys.argv[1:] if argv is None else argv)
    print(f"# {cpu_name()}; one thread; python benchmarks/twin_check.py {command}")
    print("| twin step / SURE's step | seed | steps | true gain | twin run's estimate | "
          "fixed-parameter SURE | gain_z |\n|---|---|---|---|---|---|---|")
    for factor in (float(f) for f in args.eps_factors.split(",")):
        for seed in range(args.probes):
            for it, true, gain, fixed, z in check(clean, noisy, args.steps, factor, seed):
                if it:
                    print(f"| {factor:g} | {seed} | {it} | {true:.3f} | {gain:.3f} | {fixed:.3f} "
                          f"| {z:+.2f} |", flush=True)


if __name__ == "__main__":
    main()

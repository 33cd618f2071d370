"""Train a volume model (3-D filters) on procedural fluorescence volumes, through train.fit.

    python training/train_volume.py --sigma 25 --out training/runs/volume-s25-3x7x7
        [--iterations 150] [--volumes 10] [--shape 20,64,64] [--depth 3] [--seed 0]

The clean volumes are ``skimage_trd._volumes.fluorescence_volume`` draws (seeds 1000 + i;
point-spread function and z-step cycling over widefield/confocal/light-sheet and 1-4
pixels, a random subset of the structures), scaled to [0, 255]; Gaussian noise of
``--sigma`` is added by fit (seed ``--seed``). The start is the shipped 2-D model of that
noise level lifted to ``depth x 7 x 7`` filters (exactly plane-by-plane denoising), trained
jointly by L-BFGS. Two further volumes (seeds 2000, 2001) are scored after every chunk. The
run is resumable: run the same command again. The model is written to ``<out>/model.npz``.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import numpy as np

from skimage_trd._volumes import PSFS, STRUCTURES, fluorescence_volume
from skimage_trd.train import fit

PSF_CYCLE = sorted(PSFS)


def training_volume(seed, shape):
    """One clean training volume ([0, 255]) with its recipe."""
    rng = np.random.default_rng(seed)
    k = int(rng.integers(1, len(STRUCTURES) + 1))
    structures = tuple(sorted(rng.choice(STRUCTURES, size=k, replace=False)))
    psf = PSF_CYCLE[seed % len(PSF_CYCLE)]
    z_step = float(1 + seed % 4)
    vol = fluorescence_volume(shape, structures=structures, psf=psf, z_step=z_step, seed=seed)
    return vol * 255.0, {"seed": seed, "structures": structures, "psf": psf, "z_step": z_step}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sigma", type=float, default=25.0)
    ap.add_argument("--out", required=True)
    ap.add_argument("--iterations", type=int, default=150)
    ap.add_argument("--volumes", type=int, default=10)
    ap.add_argument("--shape", default="20,64,64")
    ap.add_argument("--depth", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--init", default=None, help="starting model (default: the shipped 2-D "
                    "model nearest to --sigma, lifted)")
    args = ap.parse_args(argv)
    shape = tuple(int(n) for n in args.shape.split(","))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    clean, recipes = zip(*(training_volume(1000 + i, shape) for i in range(args.volumes)))
    val = [training_volume(2000 + i, shape)[0] for i in range(2)]
    rng = np.random.default_rng(12345)
    val_noisy = [v + args.sigma * rng.standard_normal(v.shape) for v in val]
    init = args.init or ("trd-gauss-s25-7x7-5st" if args.sigma < 37.5 else
                         "trd-gauss-s50-7x7-5st")
    log_file = open(out / "log.txt", "a")

    def log(line):
        print(line, flush=True)
        log_file.write(line + "\n")
        log_file.flush()

    command = "python training/train_volume.py " + " ".join(shlex.quote(a) for a in
                                                           (argv or sys.argv[1:]))
    model = fit(list(clean), sigma=args.sigma, loss="mse", init=init, depth=args.depth,
                iterations=args.iterations, seed=args.seed, checkpoint_dir=out / "checkpoints",
                validation=(val, val_noisy), log=log, names=[f"vol{r['seed']}" for r in recipes],
                data_source="skimage_trd._volumes.fluorescence_volume: " + "; ".join(
                    f"seed {r['seed']} {r['psf']} z_step {r['z_step']:g} "
                    f"{'+'.join(r['structures'])}" for r in recipes)
                + f"; shape {shape}", command=command)
    model.save(out / "model.npz")
    log(f"wrote {out / 'model.npz'}: {model}")


if __name__ == "__main__":
    main()

"""The command line of training (``skimage-trd train``, ``skimage-trd-train``, ``python -m
skimage_trd.train``): it reads the files and calls :func:`skimage_trd.train.fit`, whose
defaults it shows."""

from __future__ import annotations

import argparse
import datetime
import shlex
import sys
from pathlib import Path

from .._registry import load_model
from ..kernels.numba_cpu import set_threads
from .config import LOSSES, OPTIMIZERS
from .data import _jpeg_decoded, add_noise, load_image_folder, photon_training_images
from .fitting import DEFAULTS, fit

__all__ = ["main", "command"]


class _HelpWithDefaults(argparse.HelpFormatter):
    """Shows each option's default, unless it is None (its help then says what happens)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if not any(action.default is v for v in (None, False, argparse.SUPPRESS)) and "(default" not in text:
            text += " (default: %(default)s)"
        return text


def _parser(prog="python -m skimage_trd.train"):
    package_doc = sys.modules[__package__].__doc__  # the procedure, in skimage_trd.train
    new, tune = DEFAULTS["new"], DEFAULTS["adapt"]
    ap = argparse.ArgumentParser(prog=prog, description=package_doc.split("\n\n")[0],
                                 formatter_class=_HelpWithDefaults)
    ap.add_argument("--data", required=True,
                    help="training images (a folder of images, stacks and zarr arrays, or one "
                         "stack file or zarr array): clean ones (--loss mse), noisy ones "
                         "(--loss sure), or the first noisy acquisitions (--loss n2n)")
    ap.add_argument("--noisy", help="noisy images matching --data by file name (and plane): with "
                                    "--loss mse the noisy versions of the clean images (default: "
                                    "Gaussian noise of --sigma added with --seed); with --loss "
                                    "n2n the second acquisitions of the same scenes")
    ap.add_argument("--photons", action="store_true",
                    help="with --loss sure: --data holds raw photon-counting images (camera "
                         "units), stabilised by the generalised Anscombe transform; the model "
                         "is for denoise_trd_poisson(..., model=)")
    ap.add_argument("--gain", type=float,
                    help="--photons: camera units per photon (default: estimated per image)")
    ap.add_argument("--read-noise", type=float,
                    help="--photons: read noise, camera units (default: estimated per image)")
    ap.add_argument("--offset", type=float, default=0.0,
                    help="--photons: camera units of no light (dark level)")
    ap.add_argument("--loss", choices=list(LOSSES), default="mse",
                    help="mse: clean targets; sure: noisy images alone, Gaussian noise of --sigma "
                         "(Stein's unbiased risk estimate); n2n: pairs of noisy acquisitions, "
                         "each the target of the other (Noise2Noise)")
    ap.add_argument("--task", choices=["denoise", "deblock"],
                    help="what the model restores (default: the task of --init, else denoise)")
    ap.add_argument("--sigma", type=float,
                    help="denoising: noise level on the [0, 255] scale (default: that of --init; "
                         "for noisy images alone, estimated from them)")
    ap.add_argument("--quality", type=int,
                    help="deblocking: JPEG quality (1..100) (default: that of --init)")
    ap.add_argument("--out", required=True, help="run folder (checkpoints; rerun to resume)")
    ap.add_argument("--kernel-size", type=int,
                    help=f"filter size (odd) (default: {new['kernel_size']}); ignored with --init")
    ap.add_argument("--stages", type=int,
                    help=f"number of stages (default: {new['n_stages']}); ignored with --init")
    ap.add_argument("--greedy-iterations", type=int,
                    help="L-BFGS iterations per stage in the greedy phase (default: "
                         f"{new['greedy_iterations']}; skipped with --init)")
    ap.add_argument("--joint-iterations", type=int,
                    help=f"iterations (Adam: steps) of the joint phase (default: "
                         f"{new['iterations']}; --loss sure with --init {tune['iterations']})")
    ap.add_argument("--seed", type=int, default=0, help="seed of the added noise and the probes")
    ap.add_argument("--crop", type=int,
                    help="centre crop size, 0: no crop (default: 180 (deblocking 176) for clean "
                         "images at least that large, none for noisy images alone)")
    ap.add_argument("--chunk", type=int,
                    help="iterations per checkpoint and estimate (L-BFGS restarts "
                         f"there) (default: {new['chunk']}; --loss sure with --init "
                         f"{tune['chunk']})")
    ap.add_argument("--optimizer", choices=list(OPTIMIZERS),
                    help="lbfgs (the paper's), or adam (with --loss sure: a new probe every "
                         "step) (default: adam for --loss sure with --init, else lbfgs)")
    ap.add_argument("--learning-rate", type=float,
                    help=f"Adam's step size (default: {DEFAULTS['learning_rate']:g})")
    ap.add_argument("--patch", type=int, metavar="N",
                    help="--loss sure: train every step on --patches random NxN windows of the "
                         f"images (default: {DEFAULTS['patch']}; smaller images whole)")
    ap.add_argument("--patches", type=int,
                    help=f"windows per step (default: {DEFAULTS['patches']})")
    ap.add_argument("--holdout", type=float,
                    help="fraction of the pixels held out to judge progress; the result is the "
                         "best by that estimate, never worse than the --init model (default: "
                         "0; --loss sure with --init is judged by a twin run of the same "
                         "adaptation instead, SURE of the whole procedure on every pixel, "
                         f"and with --optimizer lbfgs, volume models or --validation by "
                         f"{tune['holdout']})")
    ap.add_argument("--twin", action=argparse.BooleanOptionalAction, default=None,
                    help="--loss sure with --init and Adam: judge by a twin run (default: yes "
                         "for images, unless --holdout or --validation); --no-twin: held-out "
                         "pixels instead (with --holdout 0: no judge, the last parameters)")
    ap.add_argument("--patience", type=int,
                    help="stop after this many checkpoints without a better estimate, 0: "
                         f"never (default: {tune['patience']} for --loss sure with --init, "
                         "else 0)")
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"],
                    help="precision of the training computations")
    ap.add_argument("--threads", type=int, default=None,
                    help="Numba threads (default: Numba's, i.e. all cores or NUMBA_NUM_THREADS)")
    ap.add_argument("--backend", default="numba", choices=["numba", "cupy", "numpy"],
                    help="gradient kernels: Numba (CPU), CuPy (GPU) or NumPy (slow reference)")
    ap.add_argument("--validation",
                    help="folder of images scored after every chunk: clean ones (noise added), "
                         "or with --loss sure/n2n noisy ones, scored by SURE's estimate "
                         "(default: none)")
    ap.add_argument("--export",
                    help="write the trained model here (.npz; default: <out>/<model name>.npz)")
    ap.add_argument("--init", metavar="MODEL",
                    help="fine-tune this model (a registered name or a .npz file): its filter "
                         "size, stages and RBF grid are kept, the greedy phase is skipped (default: "
                         "train from the paper's plain initialisation)")
    return ap


def _check_flags(args):
    if args.loss == "sure" and args.noisy:
        raise ValueError("--loss sure trains on the noisy images of --data alone; drop --noisy")
    if not args.photons and (args.gain is not None or args.read_noise is not None
                             or args.offset != 0.0):
        raise ValueError("--gain, --read-noise and --offset describe photon-counting data: "
                         "add --photons (with --loss sure)")
    if args.photons and args.loss != "sure":
        raise ValueError("--photons trains with --loss sure (noisy photon-counting images "
                         "alone)")
    if args.loss == "n2n" and not args.noisy:
        raise ValueError("--loss n2n needs --noisy: the second noisy acquisitions of the "
                         "scenes in --data, with the same file names")


def _read(args):
    """(images, their names, the matching --noisy images or None, validation pair or None)."""
    images, names = load_image_folder(args.data, raw=args.photons)
    noisy = None
    if args.noisy:
        noisy_imgs, noisy_names = load_image_folder(args.noisy)
        lookup = dict(zip(noisy_names, noisy_imgs))
        missing = [n for n in names if n not in lookup]
        if missing:
            raise ValueError(f"no noisy image for {', '.join(missing[:5])} in {args.noisy}")
        noisy = [lookup[n] for n in names]
    validation = None
    if args.validation:
        vc = load_image_folder(args.validation, raw=args.photons)[0]
        if args.task == "deblock":
            validation = (vc, [_jpeg_decoded(c, args.quality) for c in vc])
        elif args.loss != "mse":  # noisy validation images: scored by SURE's estimate
            if args.photons:
                vc = photon_training_images(vc, sigma=args.sigma or 25.0, gain=args.gain,
                                            read_noise=args.read_noise, offset=args.offset)[0]
            validation = (None, vc)
        elif args.sigma is not None:
            validation = (vc, add_noise(vc, args.sigma, args.seed + 1))
        else:
            raise ValueError("--validation with clean images needs --sigma (the noise added "
                             "to them)")
    return images, names, noisy, validation


def command(argv=None, prog="python -m skimage_trd.train"):
    """Run the command line on ``argv`` and return the trained model (errors: SystemExit with
    a one-line message)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = _parser(prog).parse_args(argv)
    if args.threads:
        set_threads(args.threads)
    out = Path(args.out)

    def log(line):  # (the run folder is made by the first line: refused input leaves none)
        stamp = datetime.datetime.now().strftime("%H:%M:%S")
        print(f"[{stamp}] {line}", flush=True)
        out.mkdir(parents=True, exist_ok=True)
        with open(out / "train.log", "a") as logfile:  # closed at once: survives a kill
            logfile.write(f"[{stamp}] {line}\n")

    try:
        _check_flags(args)
        init = args.init
        if init is not None:
            init = load_model(init)
            args.task = args.task or init.task
            if args.quality is None and init.task == "deblock":
                args.quality = init.quality
            if args.sigma is None and init.task == "denoise":
                args.sigma = init.sigma
        args.task = args.task or "denoise"
        images, names, noisy, validation = _read(args)
    except (ValueError, OSError, ImportError) as exc:
        raise SystemExit(f"error: {exc}") from None
    photons = (dict(gain=args.gain, read_noise=args.read_noise, offset=args.offset)
               if args.photons else None)
    crop = "auto" if args.crop is None else args.crop
    try:
        model = fit(images, sigma=args.sigma, loss=args.loss, targets=noisy, init=init,
                    task=args.task, quality=args.quality, kernel_size=args.kernel_size,
                    n_stages=args.stages, greedy_iterations=args.greedy_iterations,
                    iterations=args.joint_iterations, optimizer=args.optimizer,
                    learning_rate=args.learning_rate, patch=args.patch, patches=args.patches,
                    holdout=args.holdout, twin=args.twin, patience=args.patience, crop=crop,
                    chunk=args.chunk, seed=args.seed,
                    dtype=args.dtype, photons=photons, validation=validation,
                    backend=args.backend, checkpoint_dir=out, log=log, names=names,
                    data_source=str(args.data) + (f" and {args.noisy}" if args.noisy else ""),
                    command=shlex.join(["python", "-m", "skimage_trd.train", *argv]))
    except ValueError as exc:  # the data refused (NaN, too small, identical pairs, ...)
        hint = ""
        if "smaller than" in str(exc) and args.crop:
            hint = (f" (training uses {args.crop}x{args.crop} centre crops: pass a smaller "
                    "--crop, or --crop 0 for whole images)")
        if out.exists():  # (a run that started: its log says why it stopped)
            log(f"error: {exc}{hint}")
        raise SystemExit(f"error: {exc}{hint}") from None
    target = Path(args.export) if args.export else out / f"{model.name}.npz"
    model.save(target)
    log(f"saved {target} as model {model.name!r}")
    return model


def main(argv=None, prog="python -m skimage_trd.train"):
    """The console script: exit status 0 on success, 1 with a message on failure (2 for a
    wrong command line)."""
    command(argv, prog)
    return 0

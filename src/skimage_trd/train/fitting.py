"""The one front door of training and fine-tuning (:func:`fit`): the command line, the napari
plugin, ``denoise_trd(..., adapt=True)`` and scripts all call it. It alone maps a loss to the
roles of the data, rescales a starting model to the noise, chooses the defaults
(:data:`DEFAULTS`) and checks the input; :func:`skimage_trd.train.train_model` runs what it
configured."""

from __future__ import annotations

import math
from dataclasses import asdict

import numpy as np

from .._model import TRDModel
from .._planes import estimate_plane_sigma
from .._registry import load_model
from .config import LOSSES, TrainingConfig
from .data import (
    CLIP_MARGIN,
    MIN_UNCLIPPED,
    _check_one_size,
    photon_training_images,
    unclipped_weights,
)
from .loop import replace_model, train_model
from .models import _at_noise, lift_to_volume

__all__ = ["fit", "DEFAULTS", "fine_tuning_defaults"]

# The defaults of every front door. Training a new model: the paper's (7x7 filters, 5 stages,
# 200 L-BFGS iterations per greedy stage and 200 joint, 180x180 centre crops of clean images
# of several sizes); fine-tuning with targets (``init``, clean images or Noise2Noise pairs)
# the same, less the greedy phase. Adapting a model to noisy images alone (``init`` with SURE):
# the settings benchmarks/adapt_sure.py found best on one noisy image (docs/models.md, issue
# 33); progress is judged by a twin run (SURE of the whole adaptation on every pixel,
# objectives.TwinEstimate; with L-BFGS, which couples the parameters, by a fifth of the pixels
# held out); the run returns the parameters that score best, or the starting model unchanged
# if nothing beats it.
DEFAULTS = {
    "new": {"kernel_size": 7, "n_stages": 5, "greedy_iterations": 200, "iterations": 200,
            "chunk": 20, "holdout": 0.0, "patience": 0},
    "adapt": {"iterations": 40, "chunk": 5, "twin": True, "holdout": 0.2, "patience": 4},
    # adapting a volume model: fewer, smaller windows (each step is a volume's: 4 windows of
    # 16 x 64 x 64 voxels), and judged by held-out voxels (a 32 x 128 x 128 volume holds about
    # 25,000 of them, five times a 256 x 256 image's; a twin run would double runs of about
    # 15 minutes: docs/volumes.md)
    "adapt_volume": {"iterations": 40, "patch": 64, "twin": False},
    "optimizer": {"adapt": "adam"},  # else "lbfgs"
    "learning_rate": 1e-3,
    # SURE: random windows per step (drawn with each probe); a batch no larger is used whole
    "patch": 128, "patches": 4,
    # centre crops for clean targets (the paper's 180x180; deblocking 176 = 22 JPEG blocks)
    "crop": {"denoise": 180, "deblock": 176},
}


def fine_tuning_defaults(loss="sure"):
    """The settings :func:`fit` uses to fine-tune a model by ``loss`` when none are given (a
    dict: optimizer, learning_rate, iterations, chunk, twin, holdout, patience, patch,
    patches; ``twin``: judged by a twin run, ``holdout``: by held-out pixels). For 2-D
    models; adapting a volume model, ``DEFAULTS["adapt_volume"]`` replaces some of them."""
    d = DEFAULTS["adapt" if loss == "sure" else "new"]
    twin = d.get("twin", False)
    return {"optimizer": DEFAULTS["optimizer"].get("adapt" if loss == "sure" else "new", "lbfgs"),
            "learning_rate": DEFAULTS["learning_rate"], "iterations": d["iterations"],
            "chunk": d["chunk"], "twin": twin, "holdout": 0.0 if twin else d["holdout"],
            "patience": d["patience"],
            "patch": DEFAULTS["patch"] if loss == "sure" else None,
            "patches": DEFAULTS["patches"]}


def _planes(data, what):
    """A list of 2-D float64 planes from a list of 2-D images (any sizes) or an array."""
    if data is None:
        return None
    if isinstance(data, (list, tuple)):
        planes = [np.asarray(d, dtype=np.float64) for d in data]
        if not planes or any(p.ndim != 2 for p in planes):
            raise ValueError(f"{what}: a list of 2-D images, or an array of 2-D planes")
        return planes
    arr = np.asarray(data, dtype=np.float64)  # one array: its 2-D planes
    if arr.ndim < 2:
        raise ValueError(f"{what}: 2-D images needed, got an array of shape {arr.shape}")
    return list(arr.reshape(-1, *arr.shape[-2:]))


def _volumes(data, what):
    """A list of 3-D float64 volumes (z, y, x) from a list of volumes or an array of them."""
    if data is None:
        return None
    if isinstance(data, (list, tuple)):
        vols = [np.asarray(d, dtype=np.float64) for d in data]
    else:
        arr = np.asarray(data, dtype=np.float64)
        vols = list(arr.reshape(-1, *arr.shape[-3:])) if arr.ndim >= 3 else [arr]
    if not vols or any(v.ndim != 3 for v in vols):
        raise ValueError(f"{what}: a volume model trains on volumes (z, y, x): a list of 3-D "
                         "arrays, or an array of them")
    return vols


def estimate_training_sigma(images):
    """(sigma, what to log) for noisy training images given without ``sigma``: the median
    over the images of scikit-image's wavelet noise estimate, on the [0, 255] scale."""
    estimates = [estimate_plane_sigma(img) for img in images]
    sigma = round(float(np.median(estimates)), 1)  # (it names the model: s24.4)
    if not sigma > 0:
        raise ValueError("sigma not given and no noise could be estimated in the images: give "
                         "sigma (the images' Gaussian noise level on the [0, 255] scale)")
    lo, hi = min(estimates), max(estimates)
    return sigma, (f"sigma not given: {sigma:.3g} estimated from the noisy images (median of "
                   f"scikit-image's wavelet estimate over {len(images)} images, which range "
                   f"{lo:.3g} to {hi:.3g})")


def _square_tiles(planes, size):
    """Non-overlapping ``size`` x ``size`` tiles of every plane (images of several sizes
    stacked for training)."""
    out = []
    for p in planes:
        for y in range(0, p.shape[0] - size + 1, size):
            for x in range(0, p.shape[1] - size + 1, size):
                out.append(p[y:y + size, x:x + size])
    return out


def fit(images, *, sigma=None, loss="mse", targets=None, init=None, task="denoise",
        quality=None, kernel_size=None, n_stages=None, greedy_iterations=None, iterations=None,
        optimizer=None, learning_rate=None, patch=None, patches=None, holdout=None, twin=None,
        patience=None, crop="auto", chunk=None, seed=0, dtype="float32", photons=None, validation=None,
        backend="numba", checkpoint_dir=None, callback=None, log=None, names=None,
        data_source=None, command=None, depth=None) -> TRDModel:
    """Train a model, or adapt one to your data: the one front door of training.

    Parameters
    ----------
    images : sequence of 2-D arrays, or an array of 2-D planes (..., H, W)
        On the [0, 255] scale. Volume models (``init`` a 3-D model, or ``depth``): volumes
        (z, y, x), a list or an array of them. ``loss='mse'``: clean images (Gaussian noise of ``sigma`` is
        added with ``seed``, unless ``targets`` holds noisy versions); ``'sure'``: noisy images
        with Gaussian noise of ``sigma`` (with ``photons``: raw photon-counting images in
        camera units); ``'n2n'``: first noisy acquisitions, ``targets`` the second ones.
        Deblocking (``task='deblock'``): clean images, JPEG-compressed at ``quality``.
    sigma : float, optional
        The noise level on the [0, 255] scale. Default: that of ``init``; for noisy images
        alone (``'sure'``, ``'n2n'``), estimated from them (logged). With ``photons``: the
        model's noise level (the stabilised images are scaled to it; default 25).
    loss : {'mse', 'sure', 'n2n'}
    targets : like ``images``, optional
        ``'n2n'``: the second acquisitions of the same scenes; ``'mse'``: noisy versions of
        ``images`` to train on instead of added noise.
    init : str, path or TRDModel, optional
        Fine-tune this model (a shipped name, a file, or a model; rescaled to ``sigma`` if it
        was trained for another level): joint training from it, its filter size, stages and
        RBF grid kept. The result is named ``<init>-<loss>-<data digest>``; if no iteration
        beats the starting model by the run's estimate (``twin``, ``holdout``), the starting model comes
        back unchanged (said in the log and in ``metadata['provenance']['result']``).
    task, quality : optional
        ``'deblock'`` with a JPEG ``quality`` trains a deblocking model (``loss='mse'``).
    kernel_size, n_stages, greedy_iterations : int, optional
        A new model's filter size and stages, and L-BFGS iterations per greedy stage
        (:data:`DEFAULTS`: the paper's 7, 5 and 200). Ignored with ``init``.
    iterations : int, optional
        Joint iterations (Adam steps with Adam). Default: 200; 40 adapting a model by SURE
        (with early stopping, ``patience``).
    optimizer, learning_rate : optional
        ``'lbfgs'`` (the paper's, restarted every ``chunk``) or ``'adam'`` with its step size.
        Default: Adam adapting a model by SURE (a new probe every step), L-BFGS otherwise (SURE
        from scratch: Adam trained closer to clean targets at 60 + 60 iterations,
        docs/models.md, but L-BFGS learns more in the few iterations of a quick model).
    patch, patches : int, optional
        SURE: every step on ``patches`` random ``patch`` x ``patch`` windows of the images
        (default 4 of 128; images no larger than the windows are used whole; images of several
        sizes are fine). Not used by the other losses.
    holdout : float, optional
        The fraction of pixels held out of the loss (64x64 blocks spread over each image,
        scored a receptive field's reach inside) to judge progress after every ``chunk``: the
        run returns the best parameters by that estimate (SURE's on those pixels, without
        clean images), never a model worse than its start by it. Default 0. Adapting a model
        by SURE with Adam (the default) is judged without holding pixels out, by a twin run:
        the same adaptation of the images plus a small known probe, run beside it (twice the
        work per step), gives SURE of the whole procedure, training included, on every pixel
        (:class:`~skimage_trd.train.objectives.TwinEstimate`); with ``optimizer='lbfgs'``
        and for volume models by 0.2 held out. Fine-tuning with clean targets or Noise2Noise
        pairs can be judged by held-out pixels too: give it.
    twin : bool, optional
        Judge an adaptation by SURE with Adam by a twin run (above). Default: yes where
        nothing is held out and no ``validation`` images are given (2-D models). ``False``:
        held-out pixels judge instead (``holdout``, 0.2 unless given; with ``holdout=0`` no
        judge: the last parameters are the result).
    patience : int, optional
        Stop the joint phase after this many checkpoints in a row without a better estimate
        (held-out, twin run or validation) (0: run every iteration). Default: 4 adapting a
        model by SURE, else 0.
    crop : int, None or 'auto', optional
        Centre crops of this size (None or 0: whole images, all of one size). 'auto': whole
        images if they are of one size; else 180x180 centre crops (deblocking 176) of clean
        images at least that large (the paper's train400 convention), and otherwise squares
        of the smallest side cut from every image (SURE's random windows need neither);
        deblocking: 176x176 (whole JPEG blocks), or the most whole blocks that fit.
    chunk : int, optional
        Iterations between checkpoints (and the judge's estimates; L-BFGS restarts there).
    seed, dtype, backend, checkpoint_dir
        As in :func:`train_model` (``checkpoint_dir``: a resumable run).
    photons : dict, optional
        ``loss='sure'`` on raw photon-counting images: ``gain``, ``read_noise`` (None:
        estimated per image) and ``offset``; the images are stabilised by the generalised
        Anscombe transform times ``sigma``; the model is for
        :func:`skimage_trd.denoise_trd_poisson` (``model=``).
    validation : (list of clean, list of noisy) or (None, list of noisy), optional
        Images scored after every chunk (SURE's estimate without clean images): monitoring,
        and the judge of the result when nothing is held out.
    depth : int, optional
        Train a volume model with ``depth x F x F`` filters, starting from ``init``: a 2-D
        model is lifted (its filters in the centre plane: the start gives exactly its
        plane-by-plane result, :func:`~skimage_trd.train.lift_to_volume`), a volume model must
        have this depth. Default: that of ``init`` (2-D for a 2-D model).
    callback : callable(TrainingStep) -> bool or None, optional
        After every iteration; returning False cancels (:class:`TrainingCancelled`).
    log : callable(str), optional
        Progress lines (as the command line prints them).
    names, data_source, command : optional
        Recorded in the provenance (image names, where the data came from, the command that
        reproduces the run).

    Returns
    -------
    TRDModel
        With its provenance in ``metadata['provenance']`` (configuration, data digest, seeds,
        iterations, the judge's scores, the starting model, the git commit).

    Examples
    --------
    Adapt the shipped sigma-25 model to one noisy image, without its clean version:

    >>> tuned = fit([noisy], sigma=25, loss="sure", init="trd-gauss-s25-7x7-5st")  # doctest: +SKIP
    >>> denoise_trd(noisy, 25, model=tuned, data_range=255)                        # doctest: +SKIP
    """
    log = log or (lambda line: None)
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {', '.join(LOSSES)}, got {loss!r}")
    if task not in ("denoise", "deblock"):
        raise ValueError(f"task must be 'denoise' or 'deblock', got {task!r}")
    init_model = None
    if init is not None:
        init_model = init if isinstance(init, TRDModel) else load_model(init)
        if init_model.task != task:
            raise ValueError(f"init {init_model.name!r} is a {init_model.task} model; a "
                             f"{task} run fine-tunes a {task} model")
    if depth is not None:
        if init_model is None:
            raise ValueError("a volume model (depth) starts from a model: give init (a 2-D "
                             "model is lifted to depth x F x F filters)")
        if init_model.ndim == 2:
            init_model = lift_to_volume(init_model, int(depth))
        elif init_model.depth != int(depth):
            raise ValueError(f"init {init_model.name!r} has filters of depth "
                             f"{init_model.depth}, not {depth}")
    volumes = init_model is not None and init_model.ndim == 3
    if volumes and (task != "denoise" or photons is not None):
        raise ValueError("volume models are trained for Gaussian denoising (photon counting: "
                         "stabilise the volumes first)")
    split = _volumes if volumes else _planes
    first, second = split(images, "images"), split(targets, "targets")
    if not first:
        raise ValueError("fit needs at least one image")
    if loss == "sure" and second is not None:
        raise ValueError("loss 'sure' trains on the noisy images alone: pass no targets")
    if loss == "n2n" and second is None:
        raise ValueError("loss 'n2n' needs targets=: the second noisy acquisitions of the "
                         "scenes of images")
    if photons is not None and loss != "sure":
        raise ValueError("photon-counting images are trained with loss 'sure' (noisy images "
                         "alone)")
    if task == "deblock" and loss != "mse":
        raise ValueError(f"loss {loss!r} is for denoising; deblocking trains with 'mse'")
    if second is not None and len(second) != len(first):
        raise ValueError(f"{len(first)} images and {len(second)} targets")

    if photons is not None:
        sigma = 25.0 if sigma is None else float(sigma)
        first, used = photon_training_images(first, sigma=sigma, **photons)
        log("photon counting: generalised Anscombe transform times sigma; (gain, read noise) "
            "per image: " + ", ".join(f"({g:.3g}, {r:.3g})" for g, r in used[:8])
            + (" ..." if len(used) > 8 else ""))
    if task == "denoise" and sigma is None:
        if loss in ("sure", "n2n"):
            sigma, note = estimate_training_sigma(first)
            log(note + "; give sigma to set it")
        elif init_model is not None:
            sigma = init_model.sigma
        else:
            raise ValueError("sigma is needed: the Gaussian noise level (0..255 scale) "
                             + ("of the noisy targets" if second is not None else
                                "added to the clean images"))
    if task == "denoise":
        sigma = float(sigma)
        if not (math.isfinite(sigma) and sigma > 0):
            raise ValueError(f"sigma must be a positive number, got {sigma!r}")
    if task == "deblock" and quality is None:
        if init_model is None:
            raise ValueError("deblocking needs the JPEG quality")
        quality = init_model.quality

    # the defaults, in one place
    # adapting a model to noisy images alone (SURE) has its own defaults; training a new model
    # and fine-tuning with targets (clean images, Noise2Noise pairs) keep the paper's
    kind = "adapt" if init_model is not None and loss == "sure" else "new"
    d = DEFAULTS[kind]
    if kind == "adapt" and volumes:
        d = d | DEFAULTS["adapt_volume"]
    if optimizer is None:
        optimizer = DEFAULTS["optimizer"].get(kind, "lbfgs")
    if iterations is None:
        iterations = d["iterations"]
    if chunk is None:
        chunk = d["chunk"]
    # the judge of an adaptation: a twin run (Adam), else held-out pixels (L-BFGS couples the
    # parameters of a run and its twin: they cannot share one optimiser)
    if twin is None:
        twin = bool(d.get("twin")) and optimizer == "adam" and not holdout and validation is None
    elif twin and not (kind == "adapt" and optimizer == "adam" and not holdout
                       and validation is None):
        raise ValueError("twin=True judges adapting a model (init) by SURE with Adam, nothing "
                         "held out and no validation images")
    twin = bool(twin)
    if holdout is None:
        holdout = d["holdout"] if task == "denoise" and not twin else 0.0
    if patience is None:
        patience = d["patience"] if holdout or twin or validation is not None else 0
    if learning_rate is None:
        learning_rate = DEFAULTS["learning_rate"]
    if loss == "sure":
        patch = d.get("patch", DEFAULTS["patch"]) if patch is None else patch
    elif patch is not None:
        raise ValueError("patch (random windows per step) is for loss 'sure'")
    patches = DEFAULTS["patches"] if patches is None else patches
    clean_targets = loss == "mse"
    if volumes:
        if crop not in ("auto", None, 0):
            raise ValueError("volume models train on whole volumes (crop='auto' or None)")
        crop = None
        if len({p.shape for p in first}) > 1 and not (loss == "sure" and patch):
            raise ValueError("volumes of several shapes: cut them to one shape (z, y, x)")
    if crop == "auto" and task == "deblock":  # whole JPEG blocks: 176, or what fits
        crop = min(DEFAULTS["crop"]["deblock"], 8 * (min(min(p.shape) for p in first) // 8))
    elif crop == "auto":  # whole images of one size; else crops, squares or SURE's windows
        crop = None
        if len({p.shape for p in first}) > 1 and not (loss == "sure" and patch):
            size = DEFAULTS["crop"][task]
            crop = size if clean_targets and all(min(p.shape) >= size for p in first) else "tiles"
    if crop == "tiles":
        crop = None
        side = min(min(p.shape) for p in first)
        first = _square_tiles(first, side)
        second = None if second is None else _square_tiles(second, side)
        log(f"images of several sizes: cut into {len(first)} squares of {side} pixels")
        names = None
    crop = crop or None
    if crop is None and not (loss == "sure" and patch):
        _check_one_size(first)
    for i, p in enumerate(first if crop else []):
        if min(p.shape) < crop:
            name = names[i] if names else f"image{i}"
            raise ValueError(f"training image {name} is {p.shape[0]}x{p.shape[1]}, smaller "
                             f"than the crop size {crop}")

    common = dict(joint_iterations=int(iterations), seed=seed, crop=crop, chunk=int(chunk),
                  loss=loss, optimizer=optimizer, learning_rate=float(learning_rate),
                  patch=patch, patches=int(patches), holdout=float(holdout), twin=twin,
                  patience=int(patience),
                  dtype=dtype)
    if task == "deblock":
        common.update(task="deblock", quality=int(quality))
    if init_model is not None:
        init_model = _at_noise(init_model, sigma if task == "denoise" else None)
        config = TrainingConfig.for_model(init_model, sigma=sigma if task == "denoise" else None,
                                          greedy_iterations=0, **common)
    else:
        config = TrainingConfig(
            sigma=sigma if task == "denoise" else None,
            kernel_size=int(kernel_size or DEFAULTS["new"]["kernel_size"]),
            n_stages=int(n_stages or DEFAULTS["new"]["n_stages"]),
            greedy_iterations=int(DEFAULTS["new"]["greedy_iterations"]
                                  if greedy_iterations is None else greedy_iterations),
            **common)

    if loss == "sure" and init_model is not None and photons is None:
        usable = sum(float(unclipped_weights(p, sigma).sum()) for p in first) / sum(
            p.size for p in first)
        if usable < MIN_UNCLIPPED:
            log(f"the images are clipped (8-bit limits or saturation) and only {usable:.0%} of "
                f"their pixels lie {CLIP_MARGIN:g} sigmas or more from the clipping bound, where "
                "SURE's estimate holds: nothing to fine-tune on safely; the starting model "
                f"{init_model.name} is the result, unchanged")
            meta = dict(init_model.metadata)
            meta["provenance"] = {"result": {"unchanged": True, "reason": "clipped",
                                             "usable_fraction": usable},
                                  "initial_model": {"name": init_model.name},
                                  "config": asdict(config), "data": data_source}
            return replace_model(init_model, metadata=meta)
    log(f"training on {len(first)} images from {data_source or 'memory'}: {config}")
    if loss == "sure":
        clean, noisy = None, first
    elif loss == "n2n":
        clean, noisy = second, first
    else:
        clean, noisy = first, second
    return train_model(clean, config, noisy=noisy, checkpoint_dir=checkpoint_dir,
                       validation=validation, log=log, backend=backend, init_model=init_model,
                       callback=callback, names=names,
                       data_source=data_source or "(in memory, skimage_trd.train.fit)",
                       command=command)


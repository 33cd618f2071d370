"""A training run: data preparation, the configuration, greedy and joint L-BFGS with
checkpoints, export with provenance, and the command line (``python -m skimage_trd.train``).

The procedure and the command line are described in :mod:`skimage_trd.train`.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import io
import json
import math
import os
import platform
import shlex
import subprocess
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import NamedTuple

import numpy as np

from .._batch import is_zarr_dir, open_zarr_array
from .._deblock import deblock_trd
from .._jpeg import QuantizationConstraint, jpeg_roundtrip, quantized_coefficients
from .._metrics import psnr
from .._model import TRDModel, atomic_write_bytes
from .._planes import estimate_plane_sigma
from .._poisson import estimate_poisson_gaussian, generalized_anscombe
from .._registry import load_model
from .._sure import sure_mse
from ..kernels.cuda import cupy_module
from ..kernels.engine import model_fingerprint, run_model
from ..kernels.numba_cpu import set_threads
from .gradients import (
    KernelStages,
    StageParams,
    TrainingSpec,
    forward_batch,
    loss_and_grad,
    model_to_params,
    pack_params,
    params_to_model,
    sure_backprop,
    unpack_params,
)
from .gradients_cupy import BatchProjection, GemmTrainer

__all__ = [
    "TrainingCancelled",
    "TrainingConfig",
    "TrainingStep",
    "fit",
    "load_image_folder",
    "photon_training_images",
    "add_noise",
    "plain_initial_stage",
    "rescale_model",
    "train_model",
    "jpeg_pairs",
    "main",
]

IMAGE_SUFFIXES = {".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp", ".pgm", ".npy"}


# ------------------------------------------------------------------------------------- data
def _training_sources(path):
    """The image files and zarr arrays that ``path`` (a folder, one file or one zarr array)
    holds, sorted by name."""
    def is_zarr(p):
        return p.is_dir() and (is_zarr_dir(p) or p.suffix.lower() == ".zarr")

    if is_zarr(path) or (path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES):
        return [path]
    if not path.is_dir():
        raise ValueError(f"training data {str(path)!r} does not exist (a folder of images, one "
                         "image or stack file, or a zarr array)")
    sources = sorted(p for p in path.iterdir()
                     if is_zarr(p) or (p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES))
    if not sources:
        raise ValueError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}, or zarr arrays) in "
                         f"{path}")
    return sources


def load_image_folder(folder, *, min_size=None, raw=False) -> tuple[list[np.ndarray], list[str]]:
    """Read every image of ``folder`` (sorted by name) as gray float64 on the [0, 255] scale.

    ``folder`` may also be one image or stack file, or one zarr array. Colour images are
    converted with ITU-R 601 luma weights; 16-bit images divided by 257; float images (TIFF,
    NumPy ``.npy``, zarr) taken as they are; with ``raw`` every value as stored (camera units,
    for photon-counting data). Stacks (multi-page TIFF, 3-D ``.npy`` whose last axis is not 3
    or 4 colours, zarr arrays of any number of axes: the last two are rows and columns) give
    one image per plane, named ``file:plane``. Unreadable files and images smaller than
    ``min_size`` (rows and columns) raise ``ValueError`` naming the file.
    """
    from skimage.color import rgb2gray
    from skimage.io import imread

    images, names = [], []
    for path in _training_sources(Path(folder)):
        zarr_array = path.is_dir()
        try:
            if zarr_array:
                img = open_zarr_array(path)[...]
            elif path.suffix.lower() == ".npy":
                img = np.load(path, allow_pickle=False)
            else:
                img = imread(path)
        except (ImportError, ValueError) as exc:
            if zarr_array:  # zarr missing, or a group refused with the path to give
                raise
            raise ValueError(f"cannot read training image {path}: {exc}") from exc
        except Exception as exc:
            raise ValueError(f"cannot read training image {path}: {exc}") from exc
        if img.dtype == np.uint16 and not raw:
            img = img / 257.0
        stack_file = zarr_array or path.suffix.lower() in (".tif", ".tiff", ".npy")
        if raw and img.ndim == 3 and img.shape[-1] in (2, 3, 4) and not stack_file:
            raise ValueError(f"{path}: a colour image; photon-counting training needs the "
                             "camera's gray values (one channel per file)")
        if zarr_array and img.ndim >= 2:
            planes = list(img.reshape(-1, *img.shape[-2:]))
        elif img.ndim == 3 and img.shape[-1] in (3, 4):
            planes = [rgb2gray(img[..., :3]) * (255.0 if img.dtype.kind in "ui" else 1.0)]
        elif img.ndim == 3 and img.shape[-1] == 2 and not stack_file:
            planes = [img[..., 0]]  # gray and alpha
        elif img.ndim == 3 and stack_file:
            planes = list(img)
        elif img.ndim == 2:
            planes = [img]
        else:
            raise ValueError(f"training image {path} has shape {img.shape}; expected 2-D, RGB "
                             "or a stack of 2-D planes")
        for k, plane in enumerate(planes):
            plane = np.asarray(plane, dtype=np.float64)
            name = path.name if len(planes) == 1 else f"{path.name}:{k}"
            if min_size is not None and min(plane.shape) < min_size:
                raise ValueError(
                    f"training image {name} is {plane.shape[0]}x{plane.shape[1]}, smaller than "
                    f"{min_size} pixels on a side"
                )
            images.append(plane)
            names.append(name)
    return images, names


def _check_one_size(images):
    """Without cropping, training stacks the images: they must be of one size."""
    shapes = sorted({np.shape(c) for c in images})
    if len(shapes) > 1:
        side = min(min(s) for s in shapes)
        raise ValueError(f"without cropping (crop=None, --crop 0) the training images must be of "
                         f"one size; got {len(shapes)} sizes ({shapes[0]}, {shapes[1]}, ...): "
                         f"crop them to one size (--crop N, N at most {side} here)")


def add_noise(clean, sigma, seed):
    """``clean + sigma * N(0, 1)`` with ``numpy.random.default_rng(seed)``, image by image."""
    rng = np.random.default_rng(seed)
    return [c + sigma * rng.standard_normal(c.shape) for c in clean]


def jpeg_pairs(clean, quality, scale=0.8):
    """JPEG-compress clean images (Pillow, baseline) and recover their quantisation constraints.

    Returns the starting images (inverse DCT of the dequantised coefficients),
    and the lower and upper coefficient bounds ``(d -/+ scale/2) q`` of each
    image, as :func:`skimage_trd.deblock_trd` computes them from a decoded file.
    """
    starts, lowers, uppers = [], [], []
    for img in clean:
        decoded, table = jpeg_roundtrip(img, quality)
        c = QuantizationConstraint(quantized_coefficients(decoded, table), table, scale)
        starts.append(c.start)
        lowers.append(c.lower)
        uppers.append(c.upper)
    return starts, np.stack(lowers), np.stack(uppers)


def _crop_batch(images, names, size):
    """Equal-sized centre crops (the paper trains on 180x180 crops), as one array."""
    out = []
    for img, name in zip(images, names):
        if min(img.shape) < size:
            raise ValueError(f"training image {name} is smaller than the crop size {size}")
        y0 = (img.shape[0] - size) // 2
        x0 = (img.shape[1] - size) // 2
        out.append(img[y0 : y0 + size, x0 : x0 + size])
    return np.stack(out)


# ------------------------------------------------------------------------------ initialisation
def default_rbf_grid(sigma):
    """RBF centres and precision: the authors' grid, wider for strong noise (sigma >= 50)."""
    if sigma >= 50:
        return np.arange(-387.5, 387.5 + 1e-9, 12.5), 0.0064
    return np.arange(-310.0, 310.0 + 1e-9, 10.0), 0.01


def plain_initial_stage(spec: TrainingSpec, *, width=10.0, strength=0.05, log_lambda=0.0):
    """The paper's plain start for one stage.

    Filters: the ``kernel_size**2 - 1`` zero-mean DCT atoms (coefficients =
    identity). Influence functions: ``phi(z) = strength * 2 s / (1 + s**2)``
    with ``s = z / width``, the derivative of the Lorentzian penalty
    ``log(1 + s**2)`` of the paper on the [0, 255] intensity scale, fitted by
    the RBFs by least squares. ``strength`` keeps the first step stable (the
    48 unit filters sum to ~48 times the identity on high frequencies).
    """
    m = spec.n_coefficients
    n = spec.n_filters
    coefficients = np.eye(n, m)
    lo = spec.centers[0] - 3 * (spec.centers[1] - spec.centers[0])
    hi = spec.centers[-1] + 3 * (spec.centers[1] - spec.centers[0])
    z = np.linspace(lo, hi, 4001)
    s = z / width
    target = strength * 2 * s / (1 + s * s)
    basis = np.exp(-0.5 * spec.precision * (z[:, None] - spec.centers[None, :]) ** 2)
    ridge = 1e-6 * np.eye(spec.n_rbf)
    w = np.linalg.solve(basis.T @ basis + ridge, basis.T @ target)
    weights = np.tile(w, (n, 1))
    return StageParams(coefficients, weights, float(log_lambda))


# ---------------------------------------------------------------------------------- training
@dataclass
class TrainingConfig:
    """Everything that determines a training run (recorded in checkpoints and models)."""

    sigma: float | None = None
    kernel_size: int = 7
    n_stages: int = 5
    greedy_iterations: int = 200
    joint_iterations: int = 200
    seed: int = 0
    crop: int | None = 180
    dtype: str = "float32"
    chunk: int = 20
    n_filters: int | None = None
    init_strength: float = 0.05
    centers: list = field(default_factory=list)
    precision: float = 0.0
    task: str = "denoise"
    quality: int | None = None
    constraint_scale: float = 0.8
    loss: str = "mse"  # 'mse' (clean targets), 'sure' (noisy images only), 'n2n' (noisy pairs)
    # 'lbfgs' (the paper's: L-BFGS restarted every chunk) or 'adam' (with SURE: a new probe
    # every step), and Adam's step size
    optimizer: str = "lbfgs"
    learning_rate: float = 1e-3
    # SURE: every probe comes with `patches` random `patch` x `patch` windows of the images to
    # train on (None: the whole batch every time)
    patch: int | None = None
    patches: int = 4

    def __post_init__(self):
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {', '.join(LOSSES)}, got {self.loss!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got "
                             f"{self.optimizer!r}")
        if self.patch is not None and (self.loss != "sure" or self.patch < 8 or self.patches < 1):
            raise ValueError("patch (random windows per probe) is for loss 'sure', at least "
                             f"8 pixels wide and with patches >= 1; got patch={self.patch!r}, "
                             f"patches={self.patches!r}, loss={self.loss!r}")
        if not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise ValueError(f"learning_rate must be a positive number, got "
                             f"{self.learning_rate!r}")
        if self.loss != "mse" and self.task != "denoise":
            raise ValueError(f"loss {self.loss!r} is for denoising; deblocking trains with 'mse'")
        if self.task == "denoise":
            if self.sigma is None or not self.sigma > 0:
                raise ValueError(f"denoising needs a positive sigma, got {self.sigma!r}")
        elif self.task == "deblock":
            if self.quality is None or not 1 <= int(self.quality) <= 100:
                raise ValueError(f"deblocking needs a JPEG quality in 1..100, got {self.quality!r}")
            if self.crop is not None and self.crop % 8:
                raise ValueError(f"deblocking crops must be whole 8x8 blocks, got {self.crop}")
        else:
            raise ValueError(f"task must be 'denoise' or 'deblock', got {self.task!r}")
        if not self.centers:
            c, p = default_rbf_grid(self.sigma or 0)
            self.centers, self.precision = [float(x) for x in c], float(p)

    @classmethod
    def for_model(cls, model, *, sigma=None, **kw):
        """A configuration that fine-tunes ``model`` (same filters, stages and RBF grid; for a
        deblocking model also its task, quality and constraint scale unless given)."""
        if model.task == "deblock":
            kw.setdefault("task", "deblock")
            kw.setdefault("quality", model.quality)
            kw.setdefault("constraint_scale", model.constraint_scale)
        return cls(sigma=model.sigma if sigma is None else sigma, kernel_size=model.kernel_size,
                   n_stages=model.n_stages, n_filters=model.n_filters,
                   centers=[float(c) for c in model.centers], precision=model.precision, **kw)

    def spec(self) -> TrainingSpec:
        return TrainingSpec(self.kernel_size, np.array(self.centers), self.precision,
                            self.n_filters)

    def digest(self) -> str:
        fields = asdict(self)
        if self.task == "denoise":  # digests of denoising runs predate the deblocking fields
            for key in ("task", "quality", "constraint_scale"):
                fields.pop(key)
        if self.loss == "mse":  # ... and the losses without clean images
            fields.pop("loss")
        if self.optimizer == "lbfgs":  # ... and Adam
            fields.pop("optimizer")
            fields.pop("learning_rate")
        if self.patch is None:  # ... and SURE's random windows
            fields.pop("patch")
            fields.pop("patches")
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class RunState:
    """Where a run stands, saved as JSON in its checkpoints (with the configuration and data
    digests :class:`Checkpoint` adds): the phase, the stage being trained (greedy), the
    iterations done in that stage or in the joint phase, the history of validation scores,
    every (re)start of the run, and the model a fine-tuning run started from."""

    phase: str = "greedy"  # 'greedy' or 'joint'
    stage: int = 0  # greedy: the stage being trained (0-based); joint: n_stages - 1
    done: int = 0  # iterations done in this stage (greedy) or in the joint phase
    history: list = field(default_factory=list)
    sessions: list = field(default_factory=list)
    init_model: str | None = None

    @classmethod
    def from_json(cls, data: dict) -> RunState:
        """The state of a checkpoint's JSON (other keys, such as the digests, ignored)."""
        known = {f.name for f in fields(cls)}
        state = cls(**{k: v for k, v in data.items() if k in known})
        if state.phase not in ("greedy", "joint"):
            raise ValueError(f"checkpoint state with an unknown phase {state.phase!r}")
        return state

    def to_json(self) -> dict:
        data = asdict(self)
        if data["init_model"] is None:  # (as checkpoints have always been written)
            data.pop("init_model")
        return data

    def iterations_done(self, config: TrainingConfig) -> int:
        """Iterations of the whole run done (greedy stages, then joint)."""
        if self.phase == "greedy":
            return self.stage * config.greedy_iterations + self.done
        return config.n_stages * config.greedy_iterations + self.done


class Checkpoint:
    """The state of a run: its :class:`RunState` and parameters; written atomically."""

    def __init__(self, directory, config: TrainingConfig, data_digest: str):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / "checkpoint.npz"
        self.config = config
        self.data_digest = data_digest

    def load(self) -> tuple[RunState, np.ndarray, tuple | None] | None:
        if not self.path.exists():
            return None
        with np.load(self.path, allow_pickle=False) as z:
            state = json.loads(str(z["state"]))
            params = z["params"].copy()
            moments = (z["adam_m"].copy(), z["adam_v"].copy()) if "adam_m" in z else None
        if state.get("config_digest") != self.config.digest():
            # the same run with another number of joint iterations: continue it (or refuse to
            # cut it shorter than it already is)
            earlier = (state.get("config") or {}).get("joint_iterations")
            same_run = (isinstance(earlier, int) and state.get("config_digest")
                        == replace(self.config, joint_iterations=earlier).digest())
            if not same_run:
                raise ValueError(
                    f"checkpoint {self.path} belongs to a different configuration "
                    f"({state.get('config')}); use another --out or delete it"
                )
            if state["phase"] == "joint" and state["done"] > self.config.joint_iterations:
                raise ValueError(
                    f"checkpoint {self.path} has done {state['done']} joint iterations, more than "
                    f"the {self.config.joint_iterations} asked for"
                )
        if state.get("data_digest") != self.data_digest:
            raise ValueError(f"checkpoint {self.path} was made with different training data")
        return RunState.from_json(state), params, moments

    def save(self, state: RunState, params: np.ndarray, moments=None):
        """Write the state and parameters (and Adam's moments mid-phase, for an exact
        resume)."""
        data = {**state.to_json(), "config_digest": self.config.digest(),
                "config": asdict(self.config), "data_digest": self.data_digest}
        extra = {} if moments is None else {"adam_m": moments[0], "adam_v": moments[1]}
        buf = io.BytesIO()
        np.savez(buf, params=params, state=np.array(json.dumps(data)), **extra)
        atomic_write_bytes(self.path, buf.getvalue())


LOSSES = ("mse", "sure", "n2n")
OPTIMIZERS = ("lbfgs", "adam")
# below this many training pixels the optimiser fits SURE's probe even within a chunk
# (tests/test_train.py: 4 images of 40^2 gave an estimate of 3000 dB with one probe per run)
SURE_MIN_PIXELS = 50_000
FINAL_PROBE = 2**31 - 1  # the key of the probe of the final SURE evaluation


class TrainingCancelled(Exception):
    """Raised by :func:`train_model` when its ``callback`` returns False; the run's last
    checkpoint (if a ``checkpoint_dir`` was given) resumes it."""


class TrainingStep(NamedTuple):
    """What ``train_model``'s ``callback`` receives after every L-BFGS iteration."""

    phase: str  # 'greedy stage 2/5' or 'joint 5 stages'
    iteration: int  # iterations done in the whole run (greedy and joint)
    total: int  # iterations of the whole run
    loss: float  # loss per pixel (the SURE estimate with loss='sure')
    psnr: float  # the PSNR that loss stands for


class _Reporter:
    def __init__(self, log, total_iterations, done_iterations, callback=None):
        self.callback = callback
        self.log = log
        self.total = total_iterations
        self.done = done_iterations
        self.t0 = time.perf_counter()
        self.done_at_start = done_iterations

    def step(self, label, fun):
        """Tell the callback where the run is; raise TrainingCancelled if it says stop."""
        if self.callback is not None and self.callback(TrainingStep(
                label, self.done, self.total, fun.last_loss_per_px, fun.last_psnr)) is False:
            raise TrainingCancelled(f"cancelled at iteration {self.done} of {self.total} "
                                    f"({label})")

    def iteration(self, label, word, done, total, fun):
        """One iteration (L-BFGS) or step (Adam) done: count it, log its line, tell the
        callback (which may cancel)."""
        self.done += 1
        self.log(
            f"{label} {word} {done:4d}/{total}  loss/px {fun.last_loss_per_px:.4f}  "
            f"{fun.psnr_name} {fun.last_psnr:.3f}  grad {fun.last_time:.2f} s  "
            f"ETA {self.eta() / 60:.1f} min"
        )
        self.step(label, fun)

    def eta(self):
        run = self.done - self.done_at_start
        if run <= 0:
            return float("nan")
        return (time.perf_counter() - self.t0) / run * (self.total - self.done)


def _git_commit():
    try:
        here = Path(__file__).resolve().parent
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True,
                                text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, check=True).stdout.strip()
        return commit + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        # a copy of the tree without .git (e.g. on a GPU machine): the caller says the commit
        return os.environ.get("SKIMAGE_TRD_COMMIT", "unknown")


def _lbfgs_chunks(fun, x, done, total, *, chunk, on_chunk, reporter, label):
    """Run L-BFGS-B from ``x`` until ``total`` iterations, restarting every ``chunk``."""
    from scipy.optimize import minimize

    while done < total:
        n = min(chunk, total - done)
        iters = [0]
        fun.start_chunk(done)

        def callback(intermediate_result):
            iters[0] += 1
            reporter.iteration(label, "iter", done + iters[0], total, fun)

        res = minimize(fun, x, jac=True, method="L-BFGS-B", callback=callback,
                       options={"maxiter": n, "maxcor": 10, "gtol": 0, "ftol": 0})
        x = res.x
        # A chunk that stops early (converged, or the line search gave up) still counts as
        # spent, so that a resumed run takes the same path as an uninterrupted one.
        if n > iters[0]:
            reporter.done += n - iters[0]
            reporter.step(label, fun)  # (the callback sees every count, cancels here too)
        done += n
        on_chunk(x, done)
    return x


ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-12


def _adam_chunks(fun, x, done, total, *, chunk, on_chunk, reporter, label, learning_rate,
                 moments=None):
    """Run Adam from ``x`` until ``total`` steps, ``on_chunk(x, done, moments)`` every ``chunk``
    steps. Each step starts with ``fun.start_chunk(done)``: a SURE batch draws a new probe
    for every step (seeded by the step: a resumed run draws the same), as stochastic SURE
    training does (Soltanayev & Chun, NeurIPS 2018). ``moments``: Adam's running moments of
    a resumed phase. Adam's step is invariant to the gradient's scale, so the summed loss
    needs no normalisation."""
    b1, b2 = ADAM_BETAS
    m, v = moments if moments is not None else (np.zeros_like(x), np.zeros_like(x))
    while done < total:
        for _ in range(min(chunk, total - done)):
            fun.start_chunk(done)
            _, g = fun(x)
            done += 1
            m = b1 * m + (1 - b1) * g
            v = b2 * v + (1 - b2) * g * g
            x = x - learning_rate * (m / (1 - b1**done)) / (np.sqrt(v / (1 - b2**done))
                                                             + ADAM_EPS)
            reporter.iteration(label, "step", done, total, fun)
        on_chunk(x, done, (m, v))
    return x


class _KernelBatch:
    """The training batch with the Numba (or NumPy reference) gradient kernels; with a
    ``projection``, deblocking (Eq. 9)."""

    def __init__(self, noisy, clean, spec, backend, projection=None):
        self.f, self.x, self.spec, self.backend = noisy, clean, spec, backend
        self.projection = projection

    def forward(self, stages, u=None):
        if not stages:
            return self.f if u is None else u
        return forward_batch(self.f, stages, self.spec, backend=self.backend,
                             projection=self.projection)

    def loss_and_grad(self, params, *, stages, u_start=None):
        return loss_and_grad(params, self.f, self.x, self.spec, stages=stages,
                             backend=self.backend, u_start=u_start, projection=self.projection)


class _KernelDeblockBatch(_KernelBatch):
    """Deblocking with the Numba stage kernels: the projection's adjoint is applied between
    the kernels' backward passes (:func:`skimage_trd.train.gradients.loss_and_grad`)."""

    def __init__(self, start, clean, spec, constraint):
        super().__init__(start, clean, spec, "numba",
                         BatchProjection(*constraint, start.shape, np, start.dtype))


class _SureBatch:
    """The training batch of noisy images alone, with the Monte-Carlo SURE loss
    (:func:`skimage_trd.train.gradients.sure_backprop`), both passes (``y`` and ``y + eps b``)
    on any backend. A new probe is drawn for every chunk of L-BFGS iterations, or every Adam
    step (:meth:`draw_probe`, seeded by the run's seed and the key, so that a resumed run
    draws the same): with one probe for the whole run the optimiser learns to fit the probe,
    and the estimate runs away from the true error.

    With ``patch``: every draw also picks ``patches`` random ``patch`` x ``patch`` windows of
    the images, and the loss is that of the windows (a stochastic estimate of the whole
    batch's, for Adam: fine-tuning on a large image at a fraction of a full step's cost); a
    batch no larger than the windows is used whole."""

    def __init__(self, noisy, spec, backend, sigma, seed, *, patch=None, patches=4):
        self.spec, self.sigma, self.seed, self.backend = spec, float(sigma), seed, backend
        self.noisy = noisy
        if patch is not None:
            patch = min(int(patch), noisy.shape[1], noisy.shape[2])
            if int(patches) * patch * patch >= noisy.size:
                patch = None  # (windows as large as the batch: the batch itself)
        self.patch, self.patches = patch, int(patches)
        side = (patch, patch) if patch else noisy.shape[1:]
        self.eps = 2.0 * self.sigma / float(side[0] * side[1]) ** 0.3
        self.xp = cupy_module() if backend == "cupy" else np
        self.plain = None if patch else self._backend(noisy)
        self.draw_probe(())

    @property
    def n_px(self):
        """Pixels the loss is summed over (a draw's windows, or the whole batch)."""
        if self.patch:
            return self.patches * self.patch * self.patch
        return self.noisy.size

    def _backend(self, data):
        if self.backend == "cupy":
            return GemmTrainer(data, data, self.spec, xp=self.xp, dtype=data.dtype)
        return KernelStages(data, self.spec, backend=self.backend)

    def draw_probe(self, key):
        """Draw the probe ``b`` of the key (a tuple of ints), and the windows with ``patch``,
        and move ``y + eps b`` in."""
        # (the key's length in the seed: [s, 1, 1, 0] and [s, 1, 2, 0, 0] differ)
        rng = np.random.default_rng([self.seed, 1, len(key), *key])
        y, plain = self.noisy, self.plain
        if self.patch:
            n, H, W = y.shape
            k, P = self.patches, self.patch
            which = rng.integers(0, n, k)
            rows, cols = rng.integers(0, H - P + 1, k), rng.integers(0, W - P + 1, k)
            y = np.stack([y[i, r:r + P, c:c + P] for i, r, c in zip(which, rows, cols)])
            plain = self._backend(np.ascontiguousarray(y))
        probe = rng.standard_normal(y.shape).astype(y.dtype)
        probed = self._backend((y + y.dtype.type(self.eps) * probe).astype(y.dtype))
        self.backends = [plain, probed]
        self.probe = self.xp.asarray(probe)
        self.data = (plain.f, probed.f)  # (on the backend's device)

    def forward(self, stages, u=None):
        """The fixed stages' outputs on ``y`` and on ``y + eps b`` (a pair)."""
        return tuple(_run_stages(b, stages, d) for b, d in zip(self.backends, self.data))

    def loss_and_grad(self, params, *, stages, u_start=None):
        return sure_backprop(self.backends, params, self.spec, self.data[0],
                             u_start or self.data, sigma=self.sigma, probe=self.probe,
                             eps=self.eps, stages=stages)


def _run_stages(backend, stages, u):
    for p in stages:
        u = backend.stage_forward(backend.stage(p), u)[0]
    return u


def _batch(noisy, clean, spec, backend, constraint=None):
    if backend not in ("numba", "numpy", "cupy"):
        raise ValueError(f"unknown training backend {backend!r}; choose 'numba', 'cupy' or 'numpy'")
    if constraint is not None and backend == "numba":
        return _KernelDeblockBatch(noisy, clean, spec, constraint)
    if backend == "cupy" or constraint is not None:
        # matrix-form trainer: the GPU, or the NumPy reference of the deblocking gradient
        if backend == "cupy":
            xp = cupy_module()
        else:
            xp = np
        return GemmTrainer(noisy, clean, spec, xp=xp, dtype=noisy.dtype, constraint=constraint)
    return _KernelBatch(noisy, clean, spec, backend)


class _Objective:
    """loss_and_grad with bookkeeping (timing, loss per pixel, training PSNR)."""

    # what the PSNR computed from the loss means, per loss
    PSNR_NAMES = {"mse": "train PSNR", "sure": "train PSNR (SURE)",
                  "n2n": "PSNR to the noisy targets"}

    def __init__(self, batch, n_px, stages, fixed=None, loss="mse", key=()):
        self.batch, self.stages, self.fixed, self.key = batch, stages, fixed, tuple(key)
        self.fixed_u = None  # the fixed stages' output: computed by the first start_chunk
        self.n_px = n_px
        self.psnr_name = self.PSNR_NAMES[loss]
        self.last_loss_per_px = float("nan")
        self.last_psnr = float("nan")
        self.last_time = float("nan")

    def start_chunk(self, done):
        """Before each chunk of L-BFGS iterations: the fixed stages' output, once (a SURE
        batch draws the chunk's probe, and the fixed stages run again on the new
        ``y + eps b``)."""
        new_probe = hasattr(self.batch, "draw_probe")
        if new_probe:
            self.batch.draw_probe(self.key + (done,))
        if self.fixed is not None and (new_probe or self.fixed_u is None):
            self.fixed_u = self.batch.forward(self.fixed)

    def __call__(self, x):
        t0 = time.perf_counter()
        loss, grad = self.batch.loss_and_grad(x, stages=self.stages, u_start=self.fixed_u)
        self.last_time = time.perf_counter() - t0
        self.last_loss_per_px = loss / self.n_px
        self.last_psnr = 10 * math.log10(255.0**2 / max(2 * loss / self.n_px, 1e-300))
        return loss, grad


def train_model(
    clean,
    config: TrainingConfig,
    *,
    noisy=None,
    checkpoint_dir=None,
    validation=None,
    log=print,
    backend="numba",
    names=None,
    data_source="(in memory)",
    command=None,
    init_model=None,
    callback=None,
) -> TRDModel:
    """Train a TRD model (greedy, then joint) for ``config.task`` and return it.

    Parameters
    ----------
    clean : sequence of 2-D arrays on the [0, 255] scale, or None
        Clean training images (cropped to ``config.crop`` squares if set;
        otherwise they must all have the same shape). With ``config.loss``
        ``'n2n'``: second noisy acquisitions of the scenes of ``noisy`` (each
        acquisition is then the target of the other); ``'sure'``: None (the
        noisy images alone, with Gaussian noise of ``config.sigma``).
    config : TrainingConfig
    noisy : sequence of 2-D arrays, optional
        Denoising: noisy versions of ``clean`` (same shapes). Default:
        Gaussian noise of ``config.sigma`` drawn with ``config.seed``.
        Deblocking: not used; the clean crops are JPEG-compressed with Pillow
        at ``config.quality``.
    checkpoint_dir : path, optional
        Where the run is checkpointed after every chunk of iterations; an
        existing checkpoint of the same configuration and data is resumed.
    validation : (list of clean, list of noisy), optional
        Images of any size scored (PSNR) after every chunk, for monitoring; ``(None, list of
        noisy)``: scored by SURE's estimate (Gaussian noise of ``config.sigma``), without
        clean images.
    log : callable(str)
        Progress lines (iteration, loss, PSNR, time per gradient, ETA).
    command : str, optional
        The command that reproduces this run, recorded in the provenance.
    callback : callable(TrainingStep) -> bool or None, optional
        Called after every L-BFGS iteration with the phase, the iterations done and in all,
        the loss per pixel and its PSNR; returning False cancels the run
        (:class:`TrainingCancelled` is raised; the last checkpoint resumes it).
    init_model : TRDModel, optional
        Fine-tuning: start the joint phase from this denoising model (its
        kernel size, stages and RBF grid must be those of ``config``; see
        :meth:`TrainingConfig.for_model`) and skip the greedy phase. Deblocking
        runs fine-tune deblocking models.

    Returns
    -------
    TRDModel
        With ``metadata['provenance']`` recording configuration, data, seeds,
        iterations, final loss and the git commit of the code.
    """
    data = _prepare_data(clean, noisy, config, names, init_model)
    batch = _make_batch(data, config, backend, init_model, log)
    run = _TrainingRun(config, data, batch, checkpoint_dir=checkpoint_dir, validation=validation,
                       log=log, callback=callback, backend=backend, init_model=init_model)
    run.greedy_phase()
    run.joint_phase()
    provenance = run.provenance(data_source=data_source, command=command, init_model=init_model)
    return _to_model(run.trained, run.spec, config,
                     metadata={"provenance": provenance, "source": "skimage_trd.train"})


@dataclass
class _TrainingData:
    """A run's batch: inputs and targets (N, H, W) in the training dtype, the quantisation
    constraint of deblocking runs, and the digest that ties checkpoints to the data."""

    inputs: np.ndarray
    targets: np.ndarray
    constraint: tuple | None
    digest: str
    n_images: int


def _prepare_data(clean, noisy, config, names, init_model) -> _TrainingData:
    """The batch of a run from the images given to :func:`train_model`."""
    deblock = config.task == "deblock"
    if config.loss == "sure":  # noisy images only: they stand in for the targets below
        if noisy is None or clean is not None:
            raise ValueError("loss 'sure' trains on noisy images alone: pass clean=None and "
                             "noisy=[...] (Gaussian noise of config.sigma)")
        clean = noisy
    if config.loss == "n2n" and noisy is None:
        raise ValueError("loss 'n2n' trains on pairs of noisy acquisitions: pass noisy=[first] "
                         "and clean=[second acquisition of the same scenes]")
    names = names or [f"image{i}" for i in range(len(clean))]
    if noisy is None:
        noisy = clean if deblock else add_noise(clean, config.sigma, config.seed)
    if len(noisy) != len(clean):
        raise ValueError(f"{len(noisy)} noisy images for {len(clean)} clean ones")
    for c, n, name in zip(clean, noisy, names):
        if np.shape(c) != np.shape(n):
            raise ValueError(f"training pair {name}: clean {np.shape(c)} and noisy {np.shape(n)} differ")
        for img in (c, n) if n is not c else (c,):
            if not np.isfinite(img).all():
                raise ValueError(f"training image {name} has NaN or infinite pixels: mask or "
                                 "repair them, or leave the image out")
        if config.loss == "n2n" and np.array_equal(c, n):
            raise ValueError(f"training pair {name}: the two acquisitions are identical (the "
                             "same noise); Noise2Noise needs two independent acquisitions of "
                             "each scene")
    field = config.n_stages * (config.kernel_size - 1) + 1
    for c, name in zip(clean, names):
        side = min(np.shape(c)[-2:]) if not config.crop else min(config.crop, *np.shape(c)[-2:])
        if side < field:
            raise ValueError(
                f"training image {name} is {np.shape(c)[-2]}x{np.shape(c)[-1]}"
                + (f" (cropped to {config.crop})" if config.crop else "")
                + f", smaller than the receptive field of {config.n_stages} stages of "
                f"{config.kernel_size}x{config.kernel_size} filters ({field} pixels): every "
                "pixel's result would depend on the mirrored border; use larger images, or "
                "fewer stages or smaller filters")
    if config.patch and config.patch < field:
        raise ValueError(f"training windows of {config.patch} pixels (patch) are smaller than "
                         f"the receptive field ({field} pixels): use a patch of at least {field}")
    dtype = np.dtype(config.dtype)
    if config.crop:
        x = _crop_batch(clean, names, config.crop)
        f = _crop_batch(noisy, names, config.crop)
    else:
        _check_one_size(clean)
        x, f = np.stack(clean), np.stack(noisy)
    constraint = None
    if deblock:
        starts, lower, upper = jpeg_pairs(list(x), config.quality, config.constraint_scale)
        f, constraint = np.stack(starts), (lower, upper)
    if config.loss == "n2n":  # each acquisition the target of the other
        f, x = np.concatenate([f, x]), np.concatenate([x, f])
    x = x.astype(dtype)
    f = f.astype(dtype)
    digest = hashlib.sha256(np.ascontiguousarray(x).tobytes()).hexdigest()[:16]
    if init_model is not None:  # a fine-tuning checkpoint belongs to its starting model
        digest += "-from-" + model_fingerprint(init_model)[:12]
    return _TrainingData(f, x, constraint, digest, len(clean))


def _make_batch(data, config, backend, init_model, log):
    """The object that evaluates the loss and its gradient on the batch, for the backend."""
    spec = config.spec()
    if config.loss != "sure":
        return _batch(data.inputs, data.targets, spec, backend, data.constraint)
    if init_model is None:
        if config.optimizer == "adam":
            log("note: SURE from the plain initialisation with Adam trained 0.3 dB below clean "
                "targets in docs/models.md's small comparison")
        else:
            log("note: SURE from the plain initialisation with L-BFGS trained 1.5 dB below "
                "clean targets in docs/models.md's comparison; use --optimizer adam (0.3 dB "
                "below), or adapt a trained model (--init)")
    if data.inputs.size < SURE_MIN_PIXELS:
        message = (f"few pixels for SURE ({data.inputs.size}, below {SURE_MIN_PIXELS}): the "
                   "optimiser can fit the probe instead of the noise, and the SURE estimate "
                   "then runs far above the true PSNR; train on more or larger images")
        log("warning: " + message)
        warnings.warn(message, UserWarning, stacklevel=3)
    return _SureBatch(data.inputs, spec, backend, config.sigma, config.seed,
                      patch=config.patch, patches=config.patches)


class _TrainingRun:
    """One run of :func:`train_model`: its state (resumed from the checkpoint if there is
    one), the greedy and joint phases, checkpoints, validation and provenance."""

    def __init__(self, config, data, batch, *, checkpoint_dir, validation, log, callback,
                 backend, init_model):
        self.config, self.spec, self.data, self.batch = config, config.spec(), data, batch
        self.validation, self.log = validation, log
        self.ckpt = Checkpoint(checkpoint_dir, config, data.digest) if checkpoint_dir else None
        self.state = RunState()
        self.trained: list = []  # the stages trained so far (all of them in the joint phase)
        self.current = None  # greedy: the stage being trained, when resumed mid-stage
        self.moments = None  # Adam's moments in the phase (or stage) under way
        self._resume()
        T = config.n_stages
        if init_model is not None and not self.trained and self.current is None:
            self.trained = _initial_stages(init_model, self.spec, config)
            self.state.phase, self.state.stage, self.state.done = "joint", T - 1, 0
            self.state.init_model = init_model.name
            log(f"fine-tuning {init_model.name}: joint training from its parameters")
        total = T * config.greedy_iterations + config.joint_iterations
        self.reporter = _Reporter(log, total, self.state.iterations_done(config), callback)
        # every (re)start of the run is recorded: a resumed run may continue on newer code
        self.state.sessions.append({
            "git_commit": _git_commit(), "started_at_iteration": self.reporter.done,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "backend": backend, "machine": f"{platform.machine()} {platform.node()}",
        })
        self.t_start = time.perf_counter()
        # pixels a loss is summed over (SURE with random windows: a draw's)
        self.n_px = getattr(batch, "n_px", data.targets.size)
        self.val_kind = " (SURE)" if validation is not None and validation[0] is None else ""

    def _resume(self):
        loaded = self.ckpt.load() if self.ckpt is not None else None
        if loaded is None:
            return
        self.state, params, self.moments = loaded
        stages = unpack_params(params, self.spec) if params.size else []
        if self.state.phase == "greedy":
            # a checkpoint taken right after a stage finished holds no next stage yet
            self.trained = stages[: self.state.stage]
            self.current = stages[self.state.stage] if len(stages) > self.state.stage else None
        else:
            self.trained = stages
        self.log(f"resuming from {self.ckpt.path}: phase {self.state.phase}, stage "
                 f"{self.state.stage + 1}, {self.state.done} iterations done")

    def save(self, stages):
        if self.ckpt is not None:
            self.ckpt.save(self.state, pack_params(stages) if stages else np.zeros(0),
                           self.moments)

    def _optimize(self, obj, x, total, label, on_chunk):
        """Run the configured optimiser on ``obj`` from ``x`` (``self.state.done`` of ``total``
        iterations done), calling ``on_chunk(x, done)`` after every chunk."""
        config = self.config
        if config.optimizer == "lbfgs":
            return _lbfgs_chunks(obj, x, self.state.done, total, chunk=config.chunk,
                                 on_chunk=on_chunk, reporter=self.reporter, label=label)

        def on_adam_chunk(xv, done, moments):
            self.moments = moments
            on_chunk(xv, done)

        x = _adam_chunks(obj, x, self.state.done, total, chunk=config.chunk,
                         on_chunk=on_adam_chunk, reporter=self.reporter, label=label,
                         learning_rate=config.learning_rate, moments=self.moments)
        self.moments = None  # (the phase or stage is over: the next starts afresh)
        return x

    def score(self, stages):
        """The validation images' mean PSNR for these stages (SURE's estimate without clean
        images), or None without validation images."""
        if self.validation is None:
            return None
        config, dtype = self.config, np.dtype(self.config.dtype)
        model = _to_model(stages, self.spec, config)
        if config.task == "deblock":
            vals = [psnr(deblock_trd(n, config.quality, model=model, preserve_range=True), c)
                    for c, n in zip(*self.validation)]
        elif self.validation[0] is None:  # noisy validation images alone: SURE's estimate
            def denoiser(y):
                return run_model(np.asarray(y, dtype), model).astype(np.float64)

            vals = [10 * math.log10(255.0**2 / max(sure_mse(denoiser, n, config.sigma), 1e-12))
                    for n in self.validation[1]]
        else:
            vals = [psnr(run_model(np.asarray(n, dtype), model), c)
                    for c, n in zip(*self.validation)]
        return float(np.mean(vals))

    def _chunk_done(self, label, stages, loss_per_px, **where):
        """After a chunk of iterations: score, record, checkpoint, say so."""
        val = self.score(stages)
        self.state.history.append({**where, "iteration": self.state.done,
                                   "loss_per_px": loss_per_px, "val_psnr": val})
        self.save(stages)
        self.log(f"{label}: checkpoint at {self.state.done} iterations" +
                 (f", validation PSNR {val:.3f}{self.val_kind}" if val is not None else ""))

    def greedy_phase(self):
        """Train the stages one after the other (each on the output of those before)."""
        config, spec, state, T = self.config, self.spec, self.state, self.config.n_stages
        while state.phase == "greedy" and state.stage < T:
            t = state.stage
            if self.current is None:
                self.current = plain_initial_stage(spec, strength=config.init_strength,
                                                   log_lambda=0.0 if t == 0 else math.log(0.1))
                state.done = 0
            obj = _Objective(self.batch, self.n_px, "last", fixed=self.trained,
                             loss=config.loss, key=(t + 1,))
            label = f"greedy stage {t + 1}/{T}"

            def on_chunk(xv, done, t=t, obj=obj, label=label):
                state.done = done
                self._chunk_done(label, self.trained + unpack_params(xv, spec),
                                 obj.last_loss_per_px, phase="greedy", stage=t + 1)

            xv = self._optimize(obj, pack_params([self.current]), config.greedy_iterations,
                                label, on_chunk)
            self.trained = self.trained + unpack_params(xv, spec)
            self.current = None
            state.stage, state.done = t + 1, 0
            if state.stage == T:
                state.phase, state.stage = "joint", T - 1  # joint: all stages, index unused
            self.save(self.trained)

    def joint_phase(self):
        """Train all stages together."""
        config, spec, state = self.config, self.spec, self.state
        if config.joint_iterations <= 0 or state.done >= config.joint_iterations:
            return
        obj = _Objective(self.batch, self.n_px, "all", loss=config.loss, key=(0,))

        def on_chunk(xv, done):
            state.done = done
            self._chunk_done("joint", unpack_params(xv, spec), obj.last_loss_per_px,
                             phase="joint")

        xv = self._optimize(obj, pack_params(self.trained), config.joint_iterations,
                            f"joint {config.n_stages} stages", on_chunk)
        self.trained = unpack_params(xv, spec)

    def final_loss(self):
        """The loss of the trained stages (SURE: on a probe no chunk was fitted to) and the
        mean squared error it stands for (NaN where it cannot be told)."""
        if hasattr(self.batch, "draw_probe"):
            self.batch.draw_probe((FINAL_PROBE,))
        n_px = self.n_px
        obj = _Objective(self.batch, n_px, "all", loss=self.config.loss, key=(0,))
        loss, _ = obj(pack_params(self.trained))
        mse = 2 * loss / n_px
        if self.config.loss == "n2n":  # against noisy targets: less their noise, the truth's
            mse -= self.config.sigma**2
            if mse <= 0:
                self.log(f"warning: the loss against the noisy targets is below their noise "
                         f"(sigma {self.config.sigma:g} looks too high); no training PSNR "
                         "recorded")
                mse = float("nan")
        return loss, mse

    def provenance(self, *, data_source, command, init_model):
        config, state = self.config, self.state
        final_loss, final_mse = self.final_loss()
        return {
            "config": asdict(config),
            "data": data_source,
            "n_images": self.data.n_images,
            "data_sha256_16": self.data.digest,
            "noise_seed": config.seed,
            "iterations": {"greedy_per_stage": config.greedy_iterations,
                           "joint": config.joint_iterations},
            "final_loss_per_pixel": final_loss / self.n_px,
            "final_train_psnr": (float("nan") if math.isnan(final_mse)
                                 else 10 * math.log10(255.0**2 / max(final_mse, 1e-300))),
            "loss": config.loss,
            "history": state.history[-50:],
            "initialised_from": state.init_model or "plain initialisation (DCT filters, "
                                                    "phi(z) = 2z/(1+z^2))",
            "git_commit": _git_commit(),
            "sessions": state.sessions,
            **({} if init_model is None else {"initial_model": {
                "name": init_model.name, "sha1_of_parameters": model_fingerprint(init_model),
                "provenance": init_model.metadata.get("provenance")}}),
            "command": command,
            "machine": f"{platform.machine()} {platform.platform()}",
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "seconds_this_session": time.perf_counter() - self.t_start,
        }


def photon_training_images(raw_images, *, sigma, gain=None, read_noise=None, offset=0.0):
    """Photon-counting data (camera units) made fit for SURE training: the generalised
    Anscombe transform (noise of variance 1, :func:`skimage_trd.generalized_anscombe`) times
    ``sigma``, so that the model's noise level is ``sigma`` on the [0, 255] scale. A model
    trained on them is used by :func:`skimage_trd.denoise_trd_poisson` (``model=``), which maps
    its stabilised planes by the same factor. ``gain`` or ``read_noise`` None: estimated per
    image (:func:`skimage_trd.estimate_poisson_gaussian`). Returns the images and the
    ``(gain, read_noise)`` used for each."""
    out, used = [], []
    for z in raw_images:
        z = np.asarray(z, dtype=np.float64)
        g, r = gain, read_noise
        if g is None or r is None:
            eg, er = estimate_poisson_gaussian(z, offset=offset)
            g, r = (eg if g is None else g), (er if r is None else r)
        out.append(generalized_anscombe(z, g, r, offset) * float(sigma))
        used.append((float(g), float(r)))
    return out, used


def fit(images, *, sigma, loss="mse", targets=None, init=None, kernel_size=5, n_stages=3,
        greedy_iterations=30, iterations=30, crop=None, seed=0, backend="numba",
        checkpoint_dir=None, chunk=10, callback=None, log=None, optimizer="lbfgs",
        learning_rate=1e-3, patch=None, patches=4) -> TRDModel:
    """Train or fine-tune a denoising model from Python (scripts, the napari plugin).

    Parameters
    ----------
    images : sequence of 2-D arrays, or an array of 2-D planes (..., H, W)
        On the [0, 255] scale. ``loss='mse'``: clean images (Gaussian noise of ``sigma`` is
        added with ``seed``); ``'sure'``: noisy images with Gaussian noise of ``sigma``;
        ``'n2n'``: first noisy acquisitions, ``targets`` the second ones.
    sigma : float
        The noise level on the [0, 255] scale.
    loss : {'mse', 'sure', 'n2n'}
    targets : like ``images``, optional
        ``'n2n'``: the second acquisitions of the same scenes; ``'mse'``: noisy versions of
        ``images`` to train on instead of added noise.
    init : str, path or TRDModel, optional
        Fine-tune this denoising model (joint training from it for ``iterations``; its filter
        size and stages are kept, ``kernel_size``, ``n_stages`` and ``greedy_iterations``
        ignored).
    kernel_size, n_stages, greedy_iterations, iterations : int
        A new model's filter size and stages, L-BFGS iterations per greedy stage and of the
        joint phase.
    crop : int, optional
        Train on centre crops of this size (images of different sizes need it).
    seed, backend, checkpoint_dir, chunk
        As in :func:`train_model` and :class:`TrainingConfig` (``checkpoint_dir``: a
        resumable run, checkpointed every ``chunk`` iterations).
    optimizer : {'lbfgs', 'adam'}, optional
        L-BFGS (the paper's), or Adam with ``learning_rate`` (with ``loss='sure'``: a new
        probe every step; what fine-tuning one image by SURE wants, docs/models.md).
    patch, patches : int, optional
        ``loss='sure'``: train every step on ``patches`` random ``patch`` x ``patch`` windows
        of the images (a new draw with every probe) instead of on all of them: steps cost a
        fraction of a full one on large images.
    callback : callable(TrainingStep) -> bool or None, optional
        After every iteration; returning False cancels (:class:`TrainingCancelled`).
    log : callable(str), optional
        The progress lines of the command line.

    Returns
    -------
    TRDModel
        With its provenance in ``metadata['provenance']``.
    """
    def planes(data):
        if data is None:
            return None
        if isinstance(data, (list, tuple)) and all(np.ndim(d) == 2 for d in data):
            return [np.asarray(d, dtype=np.float64) for d in data]  # images of any sizes
        arr = np.asarray(data, dtype=np.float64)  # one array: its 2-D planes
        if arr.ndim < 2:
            raise ValueError(f"fit needs 2-D images, got an array of shape {arr.shape}")
        return list(arr.reshape(-1, *arr.shape[-2:]))

    first, second = planes(images), planes(targets)
    if not first:
        raise ValueError("fit needs at least one image")
    common = dict(joint_iterations=iterations, seed=seed, crop=crop, chunk=chunk, loss=loss,
                  optimizer=optimizer, learning_rate=learning_rate, patch=patch, patches=patches)
    init_model = None
    if init is not None:
        init_model = _at_noise(init if isinstance(init, TRDModel) else load_model(init), sigma)
        config = TrainingConfig.for_model(init_model, sigma=sigma, greedy_iterations=0, **common)
    else:
        config = TrainingConfig(sigma=sigma, kernel_size=kernel_size, n_stages=n_stages,
                                greedy_iterations=greedy_iterations, **common)
    if loss == "sure":
        clean, noisy = None, first
    elif loss == "n2n":
        if second is None:
            raise ValueError("loss 'n2n' needs targets=: the second noisy acquisitions")
        clean, noisy = second, first
    else:
        clean, noisy = first, second
    return train_model(clean, config, noisy=noisy, checkpoint_dir=checkpoint_dir,
                       log=log or (lambda line: None), backend=backend, init_model=init_model,
                       callback=callback, data_source="(in memory, skimage_trd.train.fit)")


def rescale_model(model: TRDModel, sigma: float) -> TRDModel:
    """A denoising model trained for noise ``model.sigma``, re-expressed for noise ``sigma``.

    Running ``model`` on an image whose intensities are multiplied by ``s = model.sigma /
    sigma`` (so that its noise matches the model's) and dividing the result by ``s`` is what
    :func:`~skimage_trd.denoise_trd` does with a model trained for another noise level. That
    is a TRD model itself, exactly: the same filters and reaction weights, and influence
    functions ``phi(s z) / s``, i.e. RBF centres ``mu / s``, precision ``beta s**2`` and
    weights ``w / s``. Fine-tuning for a new noise level (``python -m skimage_trd.train
    --init MODEL --sigma S``) starts from it, that is from what the bank already does at
    that level, rather than from an under- or over-smoothing model.

    Parameters
    ----------
    model : TRDModel
        A denoising model with ``sigma`` set.
    sigma : float
        The new noise level, [0, 255] scale.

    Returns
    -------
    TRDModel
        With ``sigma``, the name ``<model.name>-as-s<sigma>`` and ``metadata['rescaled_from']``
        (the original's name and sigma, and the contrast ``s``).
    """
    if model.task != "denoise" or model.sigma is None:
        raise ValueError(f"rescaling needs a denoising model with its sigma, got {model.name!r}")
    if not (math.isfinite(sigma) and sigma > 0):
        raise ValueError(f"sigma must be a positive number, got {sigma}")
    s = float(model.sigma) / float(sigma)
    meta = dict(model.metadata)
    meta["rescaled_from"] = {"name": model.name, "sigma": float(model.sigma), "contrast": s}
    return TRDModel(filters=model.filters.copy(), weights=model.weights / s,
                    centers=np.asarray(model.centers, dtype=np.float64) / s,
                    precision=float(model.precision) * s * s, lambdas=model.lambdas.copy(),
                    task="denoise", sigma=float(sigma),
                    name=f"{model.name}-as-s{float(sigma):g}", metadata=meta)


def _at_noise(model, sigma):
    """``model`` to fine-tune for noise ``sigma``: :func:`rescaled <rescale_model>` if it was
    trained for another level."""
    if (model.task == "denoise" and sigma is not None and model.sigma is not None
            and not math.isclose(model.sigma, sigma, rel_tol=1e-9)):
        return rescale_model(model, sigma)
    return model


def _initial_stages(model, spec, config):
    """The parameters of ``model`` for fine-tuning, after checking it fits ``config``."""
    if model.task != config.task:
        raise ValueError(f"fine-tuning a {config.task} run starts from a {config.task} model, "
                         f"got a {model.task} model ({model.name!r})")
    params, mspec = model_to_params(model)
    same_grid = (mspec.centers.shape == spec.centers.shape
                 and np.allclose(mspec.centers, spec.centers) and mspec.precision == spec.precision)
    if (mspec.kernel_size, mspec.n_filters, model.n_stages) != (
            spec.kernel_size, spec.n_filters, config.n_stages) or not same_grid:
        raise ValueError(
            f"model {model.name!r} ({model.n_stages} stages of {model.n_filters} "
            f"{model.kernel_size}x{model.kernel_size} filters) does not fit this run's "
            "configuration; build it with TrainingConfig.for_model(model, ...)")
    return unpack_params(params, spec)


def _to_model(stages, spec, config, metadata=None):
    """The TRDModel of a parameter set, named after the task and its level."""
    f, T = config.kernel_size, len(stages)
    if config.task == "denoise":
        return params_to_model(stages, spec, sigma=config.sigma,
                               name=f"trd-gauss-s{config.sigma:g}-{f}x{f}-{T}st",
                               metadata=metadata)
    m = params_to_model(stages, spec, sigma=1.0)
    meta = dict(metadata or {})
    meta["constraint_scale"] = config.constraint_scale
    return TRDModel(filters=m.filters, weights=m.weights, centers=m.centers,
                    precision=m.precision, lambdas=None, task="deblock",
                    quality=int(config.quality), name=f"trd-jpeg-q{config.quality}-{f}x{f}-{T}st",
                    metadata=meta)


def _jpeg_decoded(img, quality):
    return jpeg_roundtrip(img, quality)[0].astype(np.float64)


# ---------------------------------------------------------------------------------------- CLI
class _HelpWithDefaults(argparse.HelpFormatter):
    """Shows each option's default, unless it is None (its help then says what happens)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if not any(action.default is v for v in (None, False, argparse.SUPPRESS)) and "(default" not in text:
            text += " (default: %(default)s)"
        return text


def _parser(prog="python -m skimage_trd.train"):
    package_doc = sys.modules[__package__].__doc__  # the procedure, in skimage_trd.train
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
                    help="denoising: noise level on the [0, 255] scale (default: that of --init)")
    ap.add_argument("--quality", type=int,
                    help="deblocking: JPEG quality (1..100) (default: that of --init)")
    ap.add_argument("--out", required=True, help="run folder (checkpoints; rerun to resume)")
    ap.add_argument("--kernel-size", type=int, default=7,
                    help="filter size (odd); ignored with --init")
    ap.add_argument("--stages", type=int, default=5, help="number of stages; ignored with --init")
    ap.add_argument("--greedy-iterations", type=int, default=200,
                    help="L-BFGS iterations per stage in the greedy phase (skipped with --init)")
    ap.add_argument("--joint-iterations", type=int, default=200,
                    help="L-BFGS iterations of the joint phase (all stages together)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the added noise")
    ap.add_argument("--crop", type=int, default=None,
                    help="centre crop size, 0: no crop (default: 180 for denoising, 176 = 22 "
                         "JPEG blocks for deblocking)")
    ap.add_argument("--chunk", type=int, default=20,
                    help="iterations per checkpoint (L-BFGS restarts there; SURE: a new probe)")
    ap.add_argument("--optimizer", choices=list(OPTIMIZERS), default="lbfgs",
                    help="lbfgs (the paper's), or adam (with --loss sure: a new probe every "
                         "step; the better choice for fine-tuning by SURE, docs/models.md)")
    ap.add_argument("--learning-rate", type=float, default=1e-3,
                    help="Adam's step size (with --optimizer adam)")
    ap.add_argument("--patch", type=int, default=None, metavar="N",
                    help="--loss sure: train every step on --patches random NxN windows of the "
                         "images (drawn with each probe) instead of on all of them")
    ap.add_argument("--patches", type=int, default=4, help="windows per step with --patch")
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
                    help="write the trained model here (.npz; default: only the run folder's files)")
    ap.add_argument("--init", metavar="MODEL",
                    help="fine-tune this model (a registered name or a .npz file): its filter "
                         "size, stages and RBF grid are kept, the greedy phase is skipped (default: "
                         "train from the paper's plain initialisation)")
    return ap


def _photon_images_or_exit(images, config, args):
    try:
        return photon_training_images(images, sigma=config.sigma, gain=args.gain,
                                      read_noise=args.read_noise, offset=args.offset)
    except ValueError as exc:  # e.g. a gain that cannot be estimated: one line, no traceback
        raise SystemExit(f"error: {exc}") from None


def _estimate_training_sigma(data):
    """(sigma, what to log) for noisy training images given without ``--sigma``: the median
    over the images of scikit-image's wavelet noise estimate, on the [0, 255] scale."""
    images, _ = load_image_folder(data)
    estimates = [estimate_plane_sigma(img) for img in images]
    sigma = round(float(np.median(estimates)), 1)  # (it names the model: s24.4)
    if not sigma > 0:
        raise ValueError(f"--sigma not given and no noise could be estimated in {data}: pass "
                         "--sigma (the images' Gaussian noise level on the [0, 255] scale)")
    lo, hi = min(estimates), max(estimates)
    return sigma, (f"--sigma not given: {sigma:.3g} estimated from the noisy images (median of "
                   f"scikit-image's wavelet estimate over {len(images)} images, which range "
                   f"{lo:.3g} to {hi:.3g}); pass --sigma to set it")


def main(argv=None, prog="python -m skimage_trd.train"):
    """The command line; ``prog``: the name its usage lines give (``skimage-trd train``)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = _parser(prog).parse_args(argv)
    if args.threads:
        set_threads(args.threads)
    init_model = None
    try:
        common = dict(joint_iterations=args.joint_iterations, seed=args.seed,
                      dtype=args.dtype, chunk=args.chunk, loss=args.loss,
                      optimizer=args.optimizer, learning_rate=args.learning_rate,
                      patch=args.patch, patches=args.patches)
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
        if args.quality is not None:
            common["quality"] = args.quality
        estimated_note = None
        if (args.sigma is None and args.loss in ("sure", "n2n") and not args.photons
                and args.task != "deblock"):
            args.sigma, estimated_note = _estimate_training_sigma(args.data)
        if (args.sigma is None and args.loss == "mse" and not args.init
                and args.task != "deblock"):
            raise ValueError("--sigma is needed: the Gaussian noise level (0..255 scale) "
                             + ("of the noisy images of --noisy" if args.noisy else
                                "added to the clean images of --data"))
        if args.init:
            init_model = load_model(args.init)
            args.task = args.task or init_model.task
        args.task = args.task or "denoise"
        if args.crop is None:
            args.crop = 176 if args.task == "deblock" else 180
        common["crop"] = args.crop or None
        if init_model is not None:
            if init_model.task != args.task:
                raise ValueError(f"--init {args.init} is a {init_model.task} model; a --task "
                                 f"{args.task} run fine-tunes a {args.task} model")
            sigma = args.sigma if args.task == "denoise" else None
            init_model = _at_noise(init_model, sigma)
            config = TrainingConfig.for_model(init_model, sigma=sigma, greedy_iterations=0,
                                              task=args.task, **common)
        else:
            common.update(task=args.task, quality=args.quality)
            config = TrainingConfig(sigma=args.sigma, kernel_size=args.kernel_size,
                                    n_stages=args.stages, greedy_iterations=args.greedy_iterations,
                                    **common)
    except (ValueError, OSError) as exc:
        raise SystemExit(f"error: {exc}") from None
    try:
        clean, names = load_image_folder(args.data, min_size=args.crop or None, raw=args.photons)
        if not args.crop:
            _check_one_size(clean)
        noisy = None
        if args.noisy:
            noisy_imgs, noisy_names = load_image_folder(args.noisy)
            lookup = dict(zip(noisy_names, noisy_imgs))
            missing = [n for n in names if n not in lookup]
            if missing:
                raise ValueError(f"no noisy image for {', '.join(missing[:5])} in {args.noisy}")
            noisy = [lookup[n] for n in names]
        vc = load_image_folder(args.validation, raw=args.photons)[0] if args.validation else None
    except (ValueError, OSError, ImportError) as exc:
        hint = ""
        if args.crop and "smaller than" in str(exc):
            hint = (f" (training uses {args.crop}x{args.crop} centre crops: pass a smaller "
                    "--crop, or --crop 0 for whole images, all of one size)")
        raise SystemExit(f"error: {exc}{hint}") from None
    validation = None
    if args.validation:
        if config.task == "deblock":
            validation = (vc, [_jpeg_decoded(c, config.quality) for c in vc])
        elif config.loss != "mse":  # noisy validation images: scored by SURE's estimate
            if args.photons:
                vc = _photon_images_or_exit(vc, config, args)[0]
            validation = (None, vc)
        else:
            validation = (vc, add_noise(vc, config.sigma, args.seed + 1))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    def log(line):
        stamp = datetime.datetime.now().strftime("%H:%M:%S")
        print(f"[{stamp}] {line}", flush=True)
        with open(out / "train.log", "a") as logfile:  # closed at once: survives a kill
            logfile.write(f"[{stamp}] {line}\n")

    log(f"training {config} on {len(clean)} images from {args.data}"
        + (f" and {args.noisy}" if args.noisy else ""))
    if estimated_note:
        log(estimated_note)
    if config.loss == "sure":  # the images of --data are the noisy ones
        clean, noisy = None, clean
        if args.photons:
            noisy, used = _photon_images_or_exit(noisy, config, args)
            log("photon counting: generalised Anscombe transform times sigma; (gain, read "
                "noise) per image: " + ", ".join(f"({g:.3g}, {r:.3g})" for g, r in used[:8])
                + (" ..." if len(used) > 8 else ""))
    try:
        model = train_model(clean, config, noisy=noisy, checkpoint_dir=out,
                            validation=validation, backend=args.backend, init_model=init_model,
                            log=log, names=names, data_source=str(args.data),
                            command=shlex.join(["python", "-m", "skimage_trd.train", *argv]))
    except ValueError as exc:  # the data refused (NaN, too small, identical pairs, ...)
        log(f"error: {exc}")
        raise SystemExit(f"error: {exc}") from None
    target = Path(args.export) if args.export else out / f"{model.name}.npz"
    model.save(target)
    log(f"saved {target} (final training PSNR {model.metadata['provenance']['final_train_psnr']:.3f})")
    return model


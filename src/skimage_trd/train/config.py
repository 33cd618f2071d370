"""What determines a training run (:class:`TrainingConfig`), where it stands
(:class:`RunState`) and its checkpoints (:class:`Checkpoint`)."""

from __future__ import annotations

import hashlib
import io
import json
import math
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import numpy as np

from .._model import atomic_write_bytes
from .gradients import TrainingSpec
from .models import default_rbf_grid

__all__ = ["TrainingConfig", "RunState", "Checkpoint", "LOSSES", "OPTIMIZERS"]

LOSSES = ("mse", "sure", "n2n")
OPTIMIZERS = ("lbfgs", "adam")


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
    # the fraction of the pixels held out of the loss (blocks of HOLDOUT_BLOCK pixels spread
    # over every image) to judge progress on: the run keeps the parameters that score best
    # there, and a fine-tuning run that never beats its starting model returns that model
    holdout: float = 0.0
    # SURE adaptation with Adam: judge progress by a twin run, the same adaptation of the images
    # plus a small known perturbation run beside it (objectives.TwinEstimate: SURE of the whole
    # procedure, training included, on every pixel; no pixel held out)
    twin: bool = False
    # the joint phase stops after this many checkpoints in a row without a better score by
    # the judge (held-out pixels, twin run, validation images; 0: it runs its iterations)
    patience: int = 0
    # volume models: filter taps along z (filters depth x kernel_size x kernel_size); None: 2-D
    depth: int | None = None

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
        if not 0.0 <= self.holdout <= 0.5:
            raise ValueError(f"holdout must be a fraction in [0, 0.5], got {self.holdout!r}")
        if self.holdout and self.task != "denoise":
            raise ValueError("holdout (validation pixels) is for denoising runs")
        if self.twin and (self.loss != "sure" or self.optimizer != "adam" or self.holdout
                          or self.greedy_iterations):
            raise ValueError("twin (judging by a twin run) is for adapting a model by SURE "
                             f"with Adam, nothing held out; got loss={self.loss!r}, optimizer="
                             f"{self.optimizer!r}, holdout={self.holdout!r}, greedy_iterations="
                             f"{self.greedy_iterations!r}")
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
        if self.depth is not None and (self.task != "denoise" or self.depth < 1 or
                                       self.depth % 2 == 0):
            raise ValueError(f"depth (volume models) must be odd and positive and the task "
                             f"'denoise', got depth={self.depth!r}, task={self.task!r}")
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
        if model.ndim == 3:
            kw.setdefault("depth", model.depth)
        return cls(sigma=model.sigma if sigma is None else sigma, kernel_size=model.kernel_size,
                   n_stages=model.n_stages, n_filters=model.n_filters,
                   centers=[float(c) for c in model.centers], precision=model.precision, **kw)

    def spec(self) -> TrainingSpec:
        return TrainingSpec(self.kernel_size, np.array(self.centers), self.precision,
                            self.n_filters, self.depth)

    @property
    def filter_shape(self) -> tuple:
        f = self.kernel_size
        return (f, f) if self.depth is None else (self.depth, f, f)

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
        if not self.holdout:  # ... and held-out pixels
            fields.pop("holdout")
        if not self.twin:  # ... and the twin run
            fields.pop("twin")
        if not self.patience:  # ... and early stopping
            fields.pop("patience")
        if self.depth is None:  # ... and volume models
            fields.pop("depth")
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
    # the best score by the run's judge so far: {"score": PSNR, "iteration": joint
    # iterations done, or 0 for the starting point} (its parameters in the checkpoint)
    best: dict | None = None
    stopped_early: bool = False  # the joint phase stopped (patience ran out)

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
        for key in ("init_model", "best", "stopped_early"):  # (as checkpoints have always
            if not data[key]:                                 #  been written)
                data.pop(key)
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
        self.best_params = None  # the best parameters of the loaded checkpoint, if it has them
        self.start_params = None  # ... and those of the joint phase's starting point
        self.twin_params = None  # ... and those of the twin run (TrainingConfig.twin)

    def load(self) -> tuple[RunState, np.ndarray, tuple | None] | None:
        if not self.path.exists():
            return None
        with np.load(self.path, allow_pickle=False) as z:
            state = json.loads(str(z["state"]))
            params = z["params"].copy()
            moments = (z["adam_m"].copy(), z["adam_v"].copy()) if "adam_m" in z else None
            self.best_params = z["best_params"].copy() if "best_params" in z else None
            self.start_params = z["start_params"].copy() if "start_params" in z else None
            self.twin_params = z["twin_params"].copy() if "twin_params" in z else None
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

    def save(self, state: RunState, params: np.ndarray, moments=None, best_params=None,
             start_params=None, *, twin_params=None):
        """Write the state and parameters (and Adam's moments mid-phase, for an exact
        resume, the best parameters by the run's judge, the starting point's, and the twin
        run's parameters)."""
        data = {**state.to_json(), "config_digest": self.config.digest(),
                "config": asdict(self.config), "data_digest": self.data_digest}
        extra = {} if moments is None else {"adam_m": moments[0], "adam_v": moments[1]}
        if best_params is not None:
            extra["best_params"] = best_params
        if start_params is not None:
            extra["start_params"] = start_params
        if twin_params is not None:
            extra["twin_params"] = twin_params
        buf = io.BytesIO()
        np.savez(buf, params=params, state=np.array(json.dumps(data)), **extra)
        atomic_write_bytes(self.path, buf.getvalue())



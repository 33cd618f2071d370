"""The training loop: greedy stages, then the joint phase, with checkpoints after every chunk
of iterations, the estimate that picks the parameters a run returns (held-out pixels or a
twin run), and the
provenance of the model (:func:`train_model`)."""

from __future__ import annotations

import dataclasses
import datetime
import math
import os
import platform
import subprocess
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from .._deblock import deblock_trd
from .._metrics import psnr
from .._model import TRDModel
from .._sure import sure_mse
from ..kernels.engine import model_fingerprint, run_model
from .config import Checkpoint, RunState, TrainingConfig
from .data import _prepare_data
from .gradients import pack_params, unpack_params
from .models import _initial_stages, _to_model, plain_initial_stage
from .objectives import (
    FINAL_PROBE,
    SIGNIFICANCE,
    HeldOut,
    TwinEstimate,
    _make_batch,
    _Objective,
    _TwinObjective,
)
from .optimizers import _adam_chunks, _lbfgs_chunks, _Reporter

__all__ = ["train_model"]


def replace_model(model, *, metadata):
    """``model``'s parameters and name with other metadata (a run that changed nothing)."""
    return TRDModel(filters=model.filters, weights=model.weights, centers=model.centers,
                    precision=model.precision, lambdas=model.lambdas, task=model.task,
                    sigma=model.sigma, quality=model.quality, name=model.name,
                    metadata=metadata)


class _StopEarly(Exception):
    """The joint phase's patience ran out (raised after the checkpoint is written)."""


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
    if config.twin and validation is not None:
        raise ValueError("a run judged by a twin run (config.twin) takes no validation images")
    data = _prepare_data(clean, noisy, config, names, init_model)
    batch = _make_batch(data, config, backend, init_model, log)
    twin = None
    if config.twin:  # the twin run: the same adaptation of the images plus a known probe
        estimate = TwinEstimate(data.inputs, data.weights, config)
        inputs = estimate.twin_inputs
        if isinstance(data.inputs, np.ndarray):  # (as the run's batch has them)
            inputs = np.stack(inputs)
        twin = (estimate, _make_batch(dataclasses.replace(data, inputs=inputs), config, backend,
                                      init_model, lambda line: None))
    run = _TrainingRun(config, data, batch, checkpoint_dir=checkpoint_dir, validation=validation,
                       log=log, callback=callback, backend=backend, init_model=init_model,
                       twin=twin)
    run.greedy_phase()
    run.joint_phase()
    provenance = run.provenance(data_source=data_source, command=command, init_model=init_model)
    metadata = {"provenance": provenance, "source": "skimage_trd.train"}
    if init_model is not None and run.unchanged:
        # nothing beat the starting model by the run's estimate: it is handed back as it was
        meta = dict(init_model.metadata)  # (its own provenance is in provenance's
        meta.update(metadata)                #  initial_model)
        return replace_model(init_model, metadata=meta)
    name = None
    if init_model is not None:  # its own name: the start's, the loss and the data
        name = f"{init_model.name}-{config.loss}-{data.digest[:6]}"
    return _to_model(run.trained, run.spec, config, metadata=metadata, name=name)


class _TrainingRun:
    """One run of :func:`train_model`: its state (resumed from the checkpoint if there is
    one), the greedy and joint phases, checkpoints, validation and provenance."""

    def __init__(self, config, data, batch, *, checkpoint_dir, validation, log, callback,
                 backend, init_model, twin=None):
        self.config, self.spec, self.data, self.batch = config, config.spec(), data, batch
        # the twin run's estimate and batch (config.twin), and its stages at the last chunk
        self.twin, self.twin_batch = twin or (None, None)
        self.twin_stages = None
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
        self.n_px = getattr(batch, "n_px", None) or np.size(data.targets)
        self.val_kind = " (SURE)" if validation is not None and validation[0] is None else ""
        self.held_out = None
        if data.held is not None:  # the estimate that judges progress and picks the result
            targets = None if config.loss == "sure" else data.targets
            self.held_out = HeldOut(data.inputs, targets, data.held, config, loss=config.loss)
            self.val_kind = " on the held-out pixels" + (" (SURE)" if config.loss == "sure"
                                                          else "")
        if self.twin is not None:
            self.val_kind = " (SURE, twin run)"
        # what judges a fine-tuning run's checkpoints against its start, per pixel
        self.judge = self.twin if self.twin is not None else self.held_out
        self.reporter.validation_name = "validation PSNR" + self.val_kind
        self.best_params = self.ckpt.best_params if self.ckpt is not None else None
        self.start_params = self.ckpt.start_params if self.ckpt is not None else None
        self.start_maps = None  # the starting point's estimates by the judge, per pixel
        self.unchanged = False  # the result is the starting point (nothing beat it)

    def _resume(self):
        loaded = self.ckpt.load() if self.ckpt is not None else None
        if loaded is None:
            return
        self.state, params, self.moments = loaded
        stages = unpack_params(params, self.spec) if params.size else []
        if self.twin is not None and self.ckpt.twin_params is not None:
            self.twin_stages = unpack_params(self.ckpt.twin_params, self.spec)
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
                           self.moments, self.best_params, self.start_params,
                           twin_params=None if self.twin_stages is None
                           else pack_params(self.twin_stages))

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
        """The PSNR the twin run's SURE or the held-out pixels estimate for these stages, or
        the validation images' mean PSNR (SURE's estimate without clean images), or None."""
        if self.twin is not None:
            return self.twin.psnr(stages, self._twin_stages(), self.spec, self.config)
        if self.held_out is not None:
            return self.held_out.psnr(stages, self.spec)
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
        stop = False
        if val is not None:
            self.reporter.validation = val
            if where.get("phase") == "joint":
                self._consider(stages, val, self.state.done)
                patience = self.config.patience
                since = self.state.done - self.state.best["iteration"]
                if patience and since >= patience * self.config.chunk:
                    self.state.stopped_early = stop = True
        self.save(stages)
        self.log(f"{label}: checkpoint at {self.state.done} iterations" +
                 (f", validation PSNR {val:.3f}{self.val_kind}" if val is not None else ""))
        if stop:
            self.log(f"{label}: stopped early: no better validation PSNR in the last "
                     f"{self.state.done - self.state.best['iteration']} iterations")
            raise _StopEarly

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

    def _consider(self, stages, score, iteration):
        """Keep ``stages`` as the best so far if they score higher than the best (judged per
        pixel, by held-out pixels or a twin run: and beat the starting point by
        :data:`SIGNIFICANCE` standard errors)."""
        best = self.state.best
        if iteration and self.judge is not None:
            if self.start_maps is None:  # (a resumed run: the starting point's, again)
                start = _to_model(unpack_params(self.start_params, self.spec), self.spec,
                                  self.config)
                self.start_maps = (self.judge.maps(start, start) if self.twin is not None
                                   else self.judge.maps(start))
            z = self.judge.gain_z(self.start_maps, self.judge.last_maps)
            self.state.history[-1]["gain_z"] = z
            if z < SIGNIFICANCE:
                return
        if best is None or score > best["score"]:
            self.state.best = {"score": float(score), "iteration": int(iteration)}
            self.best_params = pack_params(stages)

    def joint_phase(self):
        """Train all stages together; with a judge (or validation images), the run's
        result is the best of the starting point and every checkpoint by their estimate."""
        config, spec, state = self.config, self.spec, self.state
        judged = self.judge is not None or self.validation is not None
        if judged and state.best is None and self.trained:
            if self.twin is not None:
                self.twin_stages = self.trained  # (the twin starts where the run does)
            start = self.score(self.trained)
            self.reporter.validation = start
            self.log(f"starting point: validation PSNR{self.val_kind} {start:.3f}")
            state.history.append({"phase": "joint-start", "iteration": 0, "val_psnr": start})
            self.start_params = pack_params(self.trained)
            if self.judge is not None:
                self.start_maps = self.judge.last_maps
            self._consider(self.trained, start, 0)
            self.save(self.trained)
        if (config.joint_iterations > 0 and state.done < config.joint_iterations
                and not state.stopped_early):
            try:
                self._joint_iterations()
            except _StopEarly:
                self.trained = unpack_params(self.best_params, spec)
        if judged and self.best_params is not None:
            best = state.best
            self.trained = unpack_params(self.best_params, spec)
            if best["iteration"] == 0:
                self.unchanged = True
                self.log(f"no iteration beat the starting point on the validation estimate "
                         f"({best['score']:.3f}{self.val_kind}): the starting point is the "
                         "result, unchanged")
            else:
                self.log(f"result: the parameters of joint iteration {best['iteration']}, "
                         f"validation PSNR{self.val_kind} {best['score']:.3f} (starting point "
                         f"{self._start_score():.3f})")

    def _twin_stages(self):
        """The twin run's stages (never stand-ins: the run's own would make the estimate
        SURE with the parameters taken as fixed, which the adaptation fools)."""
        if self.twin_stages is None:
            raise RuntimeError("the twin run's parameters are missing (a checkpoint written "
                               "without them?): delete the run's checkpoint and start again")
        return self.twin_stages

    def _start_score(self):
        for h in self.state.history:
            if h.get("phase") == "joint-start":
                return h["val_psnr"]
        return float("nan")

    def _joint_iterations(self):
        config, spec, state = self.config, self.spec, self.state
        obj = _Objective(self.batch, self.n_px, "all", loss=config.loss, key=(0,))
        x = pack_params(self.trained)
        if self.twin is not None:  # the run's parameters, then its twin's (Adam: as if apart)
            obj = _TwinObjective(obj, _Objective(self.twin_batch, self.n_px, "all",
                                                 loss=config.loss, key=(0,)))
            x = np.concatenate([x, pack_params(self._twin_stages())])
        n = pack_params(self.trained).size

        def on_chunk(xv, done):
            state.done = done
            if self.twin is not None:
                self.twin_stages = unpack_params(xv[n:], spec)
            self._chunk_done("joint", unpack_params(xv[:n], spec), obj.last_loss_per_px,
                             phase="joint")

        xv = self._optimize(obj, x, config.joint_iterations, f"joint {config.n_stages} stages",
                            on_chunk)
        self.trained = unpack_params(xv[:n], spec)

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
            # (SURE: not recorded; on the pixels it was fitted to, it runs above the truth)
            "final_train_psnr": (float("nan") if math.isnan(final_mse) or config.loss == "sure"
                                 else 10 * math.log10(255.0**2 / max(final_mse, 1e-300))),
            "loss": config.loss,
            **({} if state.best is None else {"result": {
                "judged_by": "validation PSNR" + self.val_kind,
                "held_out_fraction": config.holdout,
                **({} if self.twin is None else {"twin_probe_step": self.twin.eps}),
                "start_score": self._start_score(),
                "best_score": state.best["score"],
                "best_joint_iteration": state.best["iteration"],
                "unchanged": self.unchanged}}),
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

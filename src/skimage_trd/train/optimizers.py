"""The optimisers of a run, in chunks between checkpoints: L-BFGS-B as the paper trains
(restarted every chunk) and Adam; and the progress they report (log lines, the callback)."""

from __future__ import annotations

import time
from typing import NamedTuple

import numpy as np

__all__ = ["TrainingCancelled", "TrainingStep"]


class TrainingCancelled(Exception):
    """Raised by :func:`train_model` when its ``callback`` returns False; the run's last
    checkpoint (if a ``checkpoint_dir`` was given) resumes it."""


class TrainingStep(NamedTuple):
    """What ``train_model``'s ``callback`` receives after every iteration (or Adam step)."""

    phase: str  # 'greedy stage 2/5' or 'joint 5 stages'
    iteration: int  # iterations done in the whole run (greedy and joint)
    total: int  # iterations of the whole run
    loss: float  # loss per pixel (the SURE estimate with loss='sure')
    psnr: float  # the PSNR that loss stands for (NaN for SURE: the optimiser fits that figure)
    # the PSNR the run's judge estimated at the last checkpoint (held-out pixels, the twin
    # run's SURE, or validation images; NaN before the first, or without a judge)
    validation: float = float("nan")


class _Reporter:
    def __init__(self, log, total_iterations, done_iterations, callback=None):
        self.callback = callback
        self.log = log
        self.total = total_iterations
        self.done = done_iterations
        self.t0 = time.perf_counter()
        self.done_at_start = done_iterations
        self.validation = float("nan")  # the judge's last estimate (set by the run)
        self.validation_name = "validation PSNR"

    def step(self, label, fun):
        """Tell the callback where the run is; raise TrainingCancelled if it says stop."""
        if self.callback is not None and self.callback(TrainingStep(
                label, self.done, self.total, fun.last_loss_per_px, fun.last_psnr,
                self.validation)) is False:
            raise TrainingCancelled(f"cancelled at iteration {self.done} of {self.total} "
                                    f"({label})")

    def iteration(self, label, word, done, total, fun):
        """One iteration (L-BFGS) or step (Adam) done: count it, log its line, tell the
        callback (which may cancel)."""
        self.done += 1
        figures = [f"loss/px {fun.last_loss_per_px:.4f}"]
        if fun.psnr_name:  # (SURE's own figure is fitted by the optimiser: not shown)
            figures.append(f"{fun.psnr_name} {fun.last_psnr:.3f}")
        if self.validation == self.validation:
            figures.append(f"{self.validation_name} {self.validation:.3f}")
        self.log(f"{label} {word} {done:4d}/{total}  " + "  ".join(figures)
                 + f"  grad {fun.last_time:.2f} s  ETA {self.eta() / 60:.1f} min")
        self.step(label, fun)

    def eta(self):
        run = self.done - self.done_at_start
        if run <= 0:
            return float("nan")
        return (time.perf_counter() - self.t0) / run * (self.total - self.done)


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


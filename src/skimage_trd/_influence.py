"""Influence functions phi as fast piecewise-cubic tables, and the exact RBF sum.

Kernels evaluate ``phi`` in one of two ways:

* exactly: the Gaussian RBF sum over the centres within ``RBF_REACH`` RBF
  widths of ``z``, with a two-exponential recurrence between equidistant
  centres (float64 accuracy; used in float64 and for training);
* by table: a cubic Hermite interpolant of ``phi`` on a uniform grid, built
  from exact values and derivatives (four coefficients per interval, one
  gather per evaluation). The grid spacing is refined until the table is
  within ``tolerance`` of the exact function; beyond the grid ``phi`` is 0 to
  within ``exp(-RBF_REACH**2 / 2)`` of the largest weight.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["InfluenceTable", "build_table", "rbf_reach_terms", "influence_and_derivative"]

# Centres further than RBF_REACH widths (1/sqrt(precision)) from z are ignored:
# their terms are below exp(-RBF_REACH**2 / 2) ~ 1.9e-22 of their weight.
RBF_REACH = 10.0


def rbf_reach_terms(centers, precision) -> int:
    """Number of centres on each side of the nearest one that the exact sum visits."""
    delta = float(centers[1] - centers[0])
    width = 1.0 / math.sqrt(precision)
    return int(math.ceil(RBF_REACH * width / delta))


def influence_and_derivative(z, weights, centers, precision):
    """Exact ``phi(z)`` and ``phi'(z)`` for each row of ``weights`` (shape (N, J)); z is 1-D.

    Returns arrays of shape ``(N, z.size)``, float64.
    """
    z = np.asarray(z, dtype=np.float64)
    d = z[None, :] - np.asarray(centers, dtype=np.float64)[:, None]  # (J, Z)
    g = np.exp(-0.5 * precision * d * d)
    phi = weights @ g
    dphi = weights @ (-precision * d * g)
    return phi, dphi


@dataclass(frozen=True)
class InfluenceTable:
    """Cubic Hermite table of every influence function of one stage.

    ``coef[i, n]`` holds (c0, c1, c2, c3) of ``phi_i`` on interval ``n``:
    ``phi_i(x0 + (n + t) h) = ((c3 t + c2) t + c1) t + c0`` for t in [0, 1].
    """

    coef: np.ndarray  # (N, n_intervals, 4)
    x0: float
    inv_h: float
    max_error: float

    @property
    def n_intervals(self) -> int:
        return self.coef.shape[1]


def _hermite(y, dy, h):
    y0, y1 = y[:, :-1], y[:, 1:]
    d0, d1 = dy[:, :-1] * h, dy[:, 1:] * h
    c0 = y0
    c1 = d0
    c2 = 3.0 * (y1 - y0) - 2.0 * d0 - d1
    c3 = 2.0 * (y0 - y1) + d0 + d1
    return np.stack([c0, c1, c2, c3], axis=-1)


def _eval_hermite(coef, t):
    return ((coef[..., 3] * t + coef[..., 2]) * t + coef[..., 1]) * t + coef[..., 0]


def build_table(weights, centers, precision, tolerance=1e-5, dtype=np.float64) -> InfluenceTable:
    """Tabulate ``phi_i`` for all rows ``i`` of ``weights`` to within ``tolerance`` (absolute)."""
    weights = np.asarray(weights, dtype=np.float64)
    centers = np.asarray(centers, dtype=np.float64)
    delta = float(centers[1] - centers[0])
    reach = rbf_reach_terms(centers, precision) * delta
    lo, hi = float(centers[0]) - reach, float(centers[-1]) + reach
    width = 1.0 / math.sqrt(precision)
    h = width / 4.0
    while True:
        n = int(math.ceil((hi - lo) / h))
        x = lo + h * np.arange(n + 1)
        y, dy = influence_and_derivative(x, weights, centers, precision)
        coef = _hermite(y, dy, h)
        # Hermite interpolation error peaks near interval midpoints.
        ts = np.array([0.21, 0.5, 0.79])
        xm = (x[:-1, None] + h * ts[None, :]).ravel()
        ym, _ = influence_and_derivative(xm, weights, centers, precision)
        approx = _eval_hermite(np.repeat(coef, ts.size, axis=1), np.tile(ts, n)[None, :])
        err = float(np.max(np.abs(approx - ym)))
        if err <= tolerance or h < width / 256:
            break
        h /= 2.0
    return InfluenceTable(
        coef=np.ascontiguousarray(coef, dtype=dtype), x0=lo, inv_h=1.0 / h, max_error=err
    )

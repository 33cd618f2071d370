"""Influence functions phi as fast tables (cubic and linear), and the exact RBF sum.

Kernels evaluate ``phi`` in one of three ways:

* exactly: the Gaussian RBF sum over the centres within ``RBF_REACH`` RBF
  widths of ``z``, with a two-exponential recurrence between equidistant
  centres (float64 accuracy; used in float64 and for training);
* by cubic table (the GPU kernels): a cubic Hermite interpolant of ``phi`` on
  a uniform grid, built from exact values and derivatives (four coefficients
  per interval);
* by linear table (the CPU kernels): linear interpolation between exact values
  on a finer uniform grid, each node's value and the step to the next stored
  as one complex number, so that an evaluation is a single 8-byte read (on
  the CPU the reads are scalar: one read instead of the cubic's four, measured
  in docs/performance.md).

Imported authors' models (``TRDModel.influence_lut``) define ``phi`` by their own
lookup table instead (samples on a fixed grid, linear between them, constant beyond):
:func:`lookup_tables` turns it into both kinds of table, which then hold it exactly.

Grid spacings are refined until the table is within ``tolerance`` of the
exact function; beyond the grid ``phi`` is 0 to within
``exp(-RBF_REACH**2 / 2)`` of the largest weight.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["InfluenceTable", "LinearTable", "build_table", "build_linear_table", "linear_from_cubic",
           "rbf_reach_terms", "influence_and_derivative", "lookup_tables", "lut_nodes"]

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


# Linear tables split a cubic interval into at most 2**MAX_SUBDIVISION parts (the shipped models
# need 2**2 to 2**4 of the 1e-5 cubic tables' intervals at the default tolerance).
MAX_SUBDIVISION = 6


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


def _refine(weights, centers, precision, tolerance, fit):
    """Halve the grid spacing from a quarter of the RBF width until ``fit(x, h, y, dy)`` (y, dy:
    phi and phi' at the nodes x) returns a table within ``tolerance`` at the points it checks,
    or the spacing reaches 1/256 of the width. Returns (x0, h, table, max error)."""
    centers = np.asarray(centers, dtype=np.float64)
    weights = np.asarray(weights, dtype=np.float64)
    reach = rbf_reach_terms(centers, precision) * float(centers[1] - centers[0])
    lo, hi = float(centers[0]) - reach, float(centers[-1]) + reach
    width = 1.0 / math.sqrt(precision)
    h = width / 4.0
    while True:
        x = lo + h * np.arange(int(math.ceil((hi - lo) / h)) + 1)
        y, dy = influence_and_derivative(x, weights, centers, precision)
        table, approx, xm = fit(x, h, y, dy)
        ym, _ = influence_and_derivative(xm, weights, centers, precision)
        err = float(np.max(np.abs(approx - ym)))
        if err <= tolerance or h < width / 256:
            return lo, h, table, err
        h /= 2.0


def _check_points(x, h, ts):
    return (x[:-1, None] + h * ts[None, :]).ravel()


def build_table(weights, centers, precision, tolerance=1e-5, dtype=np.float64) -> InfluenceTable:
    """Tabulate ``phi_i`` for all rows ``i`` of ``weights`` to within ``tolerance`` (absolute)."""

    def fit(x, h, y, dy):
        coef = _hermite(y, dy, h)
        ts = np.array([0.21, 0.5, 0.79])  # Hermite interpolation error peaks near these
        approx = _eval_hermite(np.repeat(coef, ts.size, axis=1), np.tile(ts, len(x) - 1)[None, :])
        return coef, approx, _check_points(x, h, ts)

    x0, h, coef, err = _refine(weights, centers, precision, tolerance, fit)
    return InfluenceTable(
        coef=np.ascontiguousarray(coef, dtype=dtype), x0=x0, inv_h=1.0 / h, max_error=err
    )


@dataclass(frozen=True)
class LinearTable:
    """Linear interpolation table of every influence function of one stage.

    ``pairs[i, n] = phi_i(x_n) + 1j * (phi_i(x_{n+1}) - phi_i(x_n))`` with ``x_n = x0 + n h``,
    so that ``phi_i(x0 + (n + t) h) = pairs.real + t * pairs.imag`` for t in [0, 1]. The complex
    dtype matches the compute dtype (complex64 for float32).
    """

    pairs: np.ndarray  # (N, n_intervals), complex
    x0: float
    inv_h: float
    max_error: float

    @property
    def n_intervals(self) -> int:
        return self.pairs.shape[1]

    def __call__(self, z, row=None):
        """phi_i(z) for every i (shape (N,) + z.shape), or for i = ``row`` (the shape of z), in
        NumPy, float64; z is clamped to the grid as the kernels do."""
        t = np.clip((np.asarray(z, np.float64) - self.x0) * self.inv_h, 0,
                    np.nextafter(self.n_intervals, 0))
        n = t.astype(np.int64)
        p = (self.pairs if row is None else self.pairs[row]).astype(np.complex128)[..., n]
        return p.real + (t - n) * p.imag


def linear_from_cubic(cubic: InfluenceTable, tolerance=2e-4, dtype=np.float64) -> LinearTable:
    """A linear table sampled from a cubic one: each cubic interval split into 2**k equal
    parts, with k from an estimate of the linear interpolant's error (which falls about 4x per
    halving) raised until the interpolant is within ``tolerance`` of the cubic at the middle
    of every part (where the error of linear interpolation of a smooth function peaks; an
    estimate, not a bound), plus the cubic's own error. ``dtype`` is the compute dtype.

    Raises ValueError if the cubic table is not accurate enough, or if more than
    ``2**MAX_SUBDIVISION`` parts per cubic interval would be needed (a table too large to be
    fast)."""
    coef = np.asarray(cubic.coef, dtype=np.float64)
    budget = tolerance - cubic.max_error
    if budget <= 0:
        raise ValueError(f"the cubic table's error {cubic.max_error:.2g} exceeds {tolerance:.2g}")

    def sample(k):
        # the cubic at the parts' ends (even points) and middles (odd points)
        y = _eval_hermite(coef[:, :, None, :], np.arange(2**(k + 1) + 1) / 2**(k + 1))
        ends, middles = y[..., ::2], y[..., 1::2]
        return ends, float(np.max(np.abs(0.5 * (ends[..., :-1] + ends[..., 1:]) - middles)))

    y, err = sample(0)
    k = 0 if err <= budget else math.ceil(math.log(err / budget, 4))
    while k:
        if k > MAX_SUBDIVISION:
            raise ValueError(f"a linear table within {tolerance:.2g} would need more than "
                             f"{2**MAX_SUBDIVISION} parts per cubic interval")
        y, err = sample(k)
        if err <= budget:
            break
        k += 1
    nodes = np.concatenate([y[:, :, :-1].reshape(len(y), -1), y[:, -1:, -1]], axis=1)
    complex_dtype = np.result_type(np.dtype(dtype), np.complex64)
    pairs = (nodes[:, :-1] + 1j * np.diff(nodes, axis=1)).astype(complex_dtype)
    return LinearTable(pairs=np.ascontiguousarray(pairs), x0=cubic.x0, inv_h=cubic.inv_h * 2**k,
                       max_error=err + cubic.max_error)


def build_linear_table(weights, centers, precision, tolerance=2e-4,
                       dtype=np.float64) -> LinearTable:
    """Tabulate ``phi_i`` for linear interpolation to within ``tolerance`` (absolute), sampled
    (:func:`linear_from_cubic`) from a cubic table accurate to a tenth of it or 1e-6,
    whichever is smaller."""
    cubic = build_table(weights, centers, precision, min(1e-6, tolerance / 10))
    return linear_from_cubic(cubic, tolerance, dtype)


def lut_nodes(lut):
    """The sample points ``x0 + k step`` (k = 0..n-1) of a lookup-table grid ``(x0, step, n)``."""
    x0, step, n = lut
    return x0 + step * np.arange(n, dtype=np.float64)


def lookup_tables(weights, centers, precision, lut, dtype=np.float64):
    """The authors' lookup table of every influence function of one stage as the kernels'
    tables: ``phi_i`` sampled exactly on the grid ``lut = (x0, step, n)``, linear between the
    samples and constant beyond the ends (their ``lut_eval``).

    Returns ``(cubic, linear)``: an :class:`InfluenceTable` whose cubic pieces are these
    straight lines (c2 = c3 = 0; for the GPU kernels) and a :class:`LinearTable` (for the CPU
    kernels). Both end in one extra interval of slope 0, so that the kernels' clamping of
    ``z`` into the table gives the last sample beyond the grid's upper end, and the first
    below its lower end."""
    x0, step, _ = lut
    y, _ = influence_and_derivative(lut_nodes(lut), weights, centers, precision)
    y = np.concatenate([y, y[:, -1:]], axis=1)  # the flat interval beyond the end
    dy = np.diff(y, axis=1)
    coef = np.zeros(dy.shape + (4,))
    coef[..., 0], coef[..., 1] = y[:, :-1], dy
    complex_dtype = np.result_type(np.dtype(dtype), np.complex64)
    pairs = (y[:, :-1] + 1j * dy).astype(complex_dtype)
    cubic = InfluenceTable(coef=np.ascontiguousarray(coef, dtype=dtype), x0=x0, inv_h=1.0 / step,
                           max_error=0.0)
    linear = LinearTable(pairs=np.ascontiguousarray(pairs), x0=x0, inv_h=1.0 / step, max_error=0.0)
    return cubic, linear


# Piecewise polynomials held in two vector registers per coefficient (the AVX-512 CPU kernels).
POLY_SEGMENTS = 32
POLY_DEGREE = 9


@dataclass(frozen=True)
class PolyTable:
    """Piecewise polynomials of every influence function of one stage: ``POLY_SEGMENTS`` equal
    segments of ``[x0, x0 + POLY_SEGMENTS / inv_h]``, each a polynomial of degree
    ``POLY_DEGREE`` in the local coordinate ``t`` in [-0.5, 0.5] (``x = (z - x0) * inv_h``
    clamped into the segments, segment ``s = int(x)``, ``t = x - s - 0.5``).

    ``coef[i, k * POLY_SEGMENTS + s]`` is the coefficient of ``t**k`` of ``phi_i`` on segment s:
    for one filter and power, the 32 segments' coefficients fill two 16-lane vectors, from which
    the kernel picks each lane's segment with one two-register permute."""

    coef: np.ndarray  # (N, (POLY_DEGREE + 1) * POLY_SEGMENTS), compute dtype
    x0: float
    inv_h: float
    max_error: float

    def __call__(self, z, row):
        """phi_row(z) in NumPy (float64), clamped as the kernels clamp."""
        top = np.nextafter(POLY_SEGMENTS, 0)
        x = np.clip((np.asarray(z, np.float64) - self.x0) * self.inv_h, 0, top)
        s = x.astype(np.int64)
        t = x - s - 0.5
        c = self.coef[row].astype(np.float64).reshape(POLY_DEGREE + 1, POLY_SEGMENTS)
        p = np.zeros_like(t)
        for k in range(POLY_DEGREE, -1, -1):
            p = p * t + c[k, s]
        return p


def poly_from_cubic(cubic: InfluenceTable, lo, hi, dtype=np.float32) -> PolyTable:
    """Least-squares polynomials on Chebyshev nodes of each segment of ``[lo, hi]``, fitted to
    the cubic table (whose own error is added to the reported one); the error is measured, after
    rounding the coefficients to ``dtype``, at 64 points of every segment and its ends."""
    coef = np.asarray(cubic.coef, dtype=np.float64)

    def cubic_at(z):
        x = np.clip((z - cubic.x0) * cubic.inv_h, 0, np.nextafter(cubic.n_intervals, 0))
        n = x.astype(np.int64)
        return _eval_hermite(coef[:, n], x - n)  # (N,) + z.shape

    h = (hi - lo) / POLY_SEGMENTS
    n_nodes = 4 * (POLY_DEGREE + 1)
    nodes = 0.5 * np.cos(np.pi * (np.arange(n_nodes) + 0.5) / n_nodes)
    fit = np.linalg.pinv(np.vander(nodes, POLY_DEGREE + 1, increasing=True))  # (deg + 1, nodes)
    z = lo + (np.arange(POLY_SEGMENTS)[:, None] + 0.5 + nodes[None, :]) * h
    c = np.einsum("kn,isn->iks", fit, cubic_at(z))  # (N, deg + 1, segments)
    table = PolyTable(coef=np.ascontiguousarray(c.reshape(len(c), -1), dtype=dtype), x0=float(lo),
                      inv_h=1.0 / h, max_error=0.0)
    check = lo + h * np.linspace(0, POLY_SEGMENTS, 64 * POLY_SEGMENTS + 1)
    exact = cubic_at(check)
    err = max(float(np.max(np.abs(table(check, i) - exact[i]))) for i in range(len(c)))
    return PolyTable(coef=table.coef, x0=table.x0, inv_h=table.inv_h,
                     max_error=err + cubic.max_error)

"""A model prepared for the kernels: its stages in the compute dtype and its influence
functions as tables, built once per model content and dtype and cached.

The CPU kernels read linear tables (one read per evaluation), the GPU kernels cubic ones;
models imported from the authors' files carry their own lookup table, which both kinds hold
exactly (:func:`.influence.lookup_tables`).
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass

import numpy as np

from .influence import (
    POLY_SEGMENTS,
    LinearTable,
    PolyTable,
    build_table,
    linear_from_cubic,
    lookup_tables,
    poly_from_cubic,
    rbf_reach_terms,
)

__all__ = ["Prepared", "PreparedStage", "prepare", "model_fingerprint", "TABLE_TOLERANCE",
           "LINEAR_TABLE_TOLERANCE"]

# Influence-function table accuracy (absolute, on the [0, 255] scale): the cubic tables of the GPU
# kernels, and the linear tables of the CPU kernels (sampled from the cubic ones; coarser, as the
# CPU kernel is faster with one table read per evaluation than with the cubic's four; the
# difference this makes to a restored image is measured in docs/performance.md).
TABLE_TOLERANCE = 1e-5
LINEAR_TABLE_TOLERANCE = 2e-4


@dataclass(frozen=True)
class PreparedStage:
    filters: np.ndarray  # (N, F, F) or (N, Fz, F, F), compute dtype
    flipped: np.ndarray  # filters rotated by 180 degrees (flipped along every axis)
    weights: np.ndarray  # (N, J), compute dtype
    coef: np.ndarray  # (N, n_intervals, 4) cubic table (GPU kernels), compute dtype
    x0: float  # start and 1 / spacing of the cubic table's grid (the linear one's: ``grid``)
    inv_h: float
    lam: float
    linear: LinearTable  # pairs (N, n_intervals) in the complex compute dtype (CPU kernels)
    # piecewise polynomials (float32 CPU kernels on AVX-512), None where they are not within
    # LINEAR_TABLE_TOLERANCE of phi (e.g. the kinks of the authors' lookup tables)
    poly: PolyTable | None = None

    @property
    def grid(self) -> np.ndarray:
        """(x0, 1/h, top) of the linear table in the compute dtype, for the Numba kernel:
        t = (z - x0) / h is clamped into [0, top], top just below the number of intervals in
        that dtype (beyond the grid, phi is flat at ~0), so that int(t) always indexes the
        table."""
        n, dt = self.linear.n_intervals, self.linear.pairs.real.dtype.type
        top = min(dt(n - 1e-3), np.nextafter(dt(n), dt(0)))
        return np.array([self.linear.x0, self.linear.inv_h, top], dtype=dt)

    @property
    def poly_grid(self) -> np.ndarray:
        """(x0, 1/h, top) of the polynomial segments in float32 (``top`` just below 32)."""
        top = np.nextafter(np.float32(POLY_SEGMENTS), np.float32(0))
        return np.array([self.poly.x0, self.poly.inv_h, top], dtype=np.float32)


@dataclass(frozen=True)
class Prepared:
    stages: tuple
    mu0: float
    delta: float
    beta: float
    reach: int


_prepared_cache: dict = {}
_prepared_lock = threading.Lock()

def model_fingerprint(model) -> str:
    h = hashlib.sha1()
    for arr in (model.filters, model.weights, model.centers, model.lambdas):
        if arr is not None:
            h.update(np.ascontiguousarray(arr).tobytes())
    h.update(repr(model.precision).encode())
    if model.influence_lut is not None:
        h.update(repr(model.influence_lut).encode())
    return h.hexdigest()


def prepare(model, dtype) -> Prepared:
    """Per-stage arrays in ``dtype`` and influence tables, cached per model content."""
    dtype = np.dtype(dtype)
    key = (model_fingerprint(model), dtype.str)
    with _prepared_lock:
        hit = _prepared_cache.get(key)
    if hit is not None:
        return hit
    stages = []
    for t in range(model.n_stages):
        if model.influence_lut is None:
            table = build_table(model.weights[t], model.centers, model.precision, TABLE_TOLERANCE)
            linear = linear_from_cubic(table, LINEAR_TABLE_TOLERANCE, dtype)
        else:  # the authors' table defines phi: held exactly by both kinds of table
            table, linear = lookup_tables(model.weights[t], model.centers, model.precision,
                                          model.influence_lut, dtype)
        lam = 0.0 if model.lambdas is None else float(model.lambdas[t])
        poly = None
        if dtype == np.float32:
            hi = linear.x0 + linear.n_intervals / linear.inv_h
            poly = poly_from_cubic(table, linear.x0, hi, dtype)
            if poly.max_error > LINEAR_TABLE_TOLERANCE:
                poly = None
        stages.append(
            PreparedStage(
                filters=np.ascontiguousarray(model.filters[t], dtype=dtype),
                flipped=np.ascontiguousarray(np.flip(model.filters[t], axis=tuple(range(1, model.ndim + 1))),
                                             dtype=dtype),
                weights=np.ascontiguousarray(model.weights[t], dtype=dtype),
                coef=table.coef.astype(dtype),
                x0=table.x0,
                inv_h=table.inv_h,
                lam=lam,
                linear=linear,
                poly=poly,
            )
        )
    prepared = Prepared(
        stages=tuple(stages),
        mu0=float(model.centers[0]),
        delta=float(model.centers[1] - model.centers[0]),
        beta=float(model.precision),
        reach=rbf_reach_terms(model.centers, model.precision),
    )
    with _prepared_lock:
        if len(_prepared_cache) > 32:
            _prepared_cache.clear()
        _prepared_cache[key] = prepared
    return prepared

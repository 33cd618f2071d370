"""Run a TRD model over a 2-D image on one of the backends, whole or in tiles.

Backends
--------
``'numpy'``
    The readable reference of ``_reference.py`` (slow; for checking).
``'numba'``
    Fused parallel CPU kernels (``_numba_kernels.py``).
``'cupy'``
    GPU kernels (``_cupy_kernels.py``), for CuPy arrays.

All work on the model's [0, 255] intensity scale; the public functions map
the user's intensities onto it.

Tiling
------
Stage ``t`` of an image pixel depends on the pixels within ``2 r`` of it at
stage ``t - 1``, so the output at a pixel depends only on the input within
``halo = n_stages * 2 r``. A tile grown by ``halo`` on each side (clipped at
the image border, where the symmetric boundary rule applies as for the whole
image) therefore gives exactly the whole-image result inside the tile.
"""

from __future__ import annotations

import hashlib
import math
import threading
from dataclasses import dataclass

import numpy as np

from ._arrays import normalize_tile_shape
from ._influence import LinearTable, build_table, linear_from_cubic, lookup_tables, rbf_reach_terms

__all__ = ["run_model", "BACKENDS", "iter_tiles"]

BACKENDS = ("numpy", "numba", "cupy")

# Influence-function table accuracy (absolute, on the [0, 255] scale): the cubic tables of the GPU
# kernels, and the linear tables of the CPU kernels (sampled from the cubic ones; coarser, as the
# CPU kernel is faster with one table read per evaluation than with the cubic's four; the
# difference this makes to a restored image is measured in docs/performance.md).
TABLE_TOLERANCE = 1e-5
LINEAR_TABLE_TOLERANCE = 2e-4


@dataclass(frozen=True)
class PreparedStage:
    filters: np.ndarray  # (N, F, F), compute dtype
    flipped: np.ndarray  # filters rotated by 180 degrees
    weights: np.ndarray  # (N, J), compute dtype
    coef: np.ndarray  # (N, n_intervals, 4) cubic table (GPU kernels), compute dtype
    x0: float  # start and 1 / spacing of the cubic table's grid (the linear one's: ``grid``)
    inv_h: float
    lam: float
    linear: LinearTable  # pairs (N, n_intervals) in the complex compute dtype (CPU kernels)

    @property
    def grid(self) -> np.ndarray:
        """(x0, 1/h, top) of the linear table in the compute dtype, for the Numba kernel:
        t = (z - x0) / h is clamped into [0, top], top just below the number of intervals in
        that dtype (beyond the grid, phi is flat at ~0), so that int(t) always indexes the
        table."""
        n, dt = self.linear.n_intervals, self.linear.pairs.real.dtype.type
        top = min(dt(n - 1e-3), np.nextafter(dt(n), dt(0)))
        return np.array([self.linear.x0, self.linear.inv_h, top], dtype=dt)


@dataclass(frozen=True)
class Prepared:
    stages: tuple
    mu0: float
    delta: float
    beta: float
    reach: int


_prepared_cache: dict = {}
_prepared_lock = threading.Lock()

# Numba's 'workqueue' threading layer (used when neither OpenMP nor TBB is available) aborts the
# process if two threads launch parallel kernels at once; napari and dask call from many threads.
# Kernel launches are serialised until the first launch tells which layer is in use, and
# afterwards only under 'workqueue'.
_launch_lock = threading.Lock()
_serialise_launches = None


def _launch(kernel, *args):
    global _serialise_launches
    if _serialise_launches is False:
        return kernel(*args)
    with _launch_lock:
        result = kernel(*args)
        if _serialise_launches is None:
            import numba

            _serialise_launches = numba.threading_layer() == "workqueue"
        return result


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
        stages.append(
            PreparedStage(
                filters=np.ascontiguousarray(model.filters[t], dtype=dtype),
                flipped=np.ascontiguousarray(model.filters[t, :, ::-1, ::-1], dtype=dtype),
                weights=np.ascontiguousarray(model.weights[t], dtype=dtype),
                coef=table.coef.astype(dtype),
                x0=table.x0,
                inv_h=table.inv_h,
                lam=lam,
                linear=linear,
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


def _run_numba(f, model, n_stages, exact, post_stage, progress):
    from . import _numba_kernels as nk

    prep = prepare(model, f.dtype)
    r = model.radius
    H, W = f.shape
    padded = np.empty((H + 4 * r, W + 4 * r), dtype=f.dtype)
    u = f
    buffers = [np.empty_like(f), np.empty_like(f)]
    strip = nk.strip_height(H, nk.numba.get_num_threads())
    for t in range(n_stages):
        st = prep.stages[t]
        nk.pad_symmetric(u, 2 * r, padded)
        out = buffers[t % 2]
        if exact:
            _launch(nk.trd_stage_exact, padded, f, st.lam, st.filters, st.flipped, st.weights,
                    prep.mu0, prep.delta, prep.beta, prep.reach, strip, out)
        else:
            _launch(nk.table_kernel(st.filters.shape[1]), padded, f, st.lam, st.filters, st.flipped,
                    st.linear.pairs, st.grid, strip, out)
        if post_stage is not None:
            out = post_stage(out, t)
        u = out
        if progress is not None:
            progress(t + 1)
    return u


def _run_numpy(f, model, n_stages, exact, post_stage, progress):
    from ._reference import diffusion_reference, lookup_phi

    phi = lookup_phi(model)
    u = f
    for t in range(n_stages):
        d = diffusion_reference(u, model.filters[t], model.weights[t], model.centers, model.precision,
                                None if phi is None else (lambda i, z, t=t: phi(t, i, z)))
        lam = 0.0 if model.lambdas is None else float(model.lambdas[t])
        u = u - (d + lam * (u - f))
        if post_stage is not None:
            u = post_stage(u, t)
        if progress is not None:
            progress(t + 1)
    return u


def _run_cupy(f, model, n_stages, exact, post_stage, progress):
    from ._cupy_kernels import run_cupy

    return run_cupy(f, model, n_stages, exact, post_stage, progress)


_RUNNERS = {"numpy": _run_numpy, "numba": _run_numba, "cupy": _run_cupy}


def iter_tiles(shape, tile_shape, halo):
    """Yield (inner, outer) slices: the tile and the tile grown by ``halo`` (clipped)."""
    H, W = shape
    th, tw = tile_shape
    for y0 in range(0, H, th):
        y1 = min(H, y0 + th)
        for x0 in range(0, W, tw):
            x1 = min(W, x0 + tw)
            oy0, oy1 = max(0, y0 - halo), min(H, y1 + halo)
            ox0, ox1 = max(0, x0 - halo), min(W, x1 + halo)
            yield (
                (slice(y0, y1), slice(x0, x1)),
                (slice(oy0, oy1), slice(ox0, ox1)),
                (slice(y0 - oy0, y1 - oy0), slice(x0 - ox0, x1 - ox0)),
            )


def run_model(
    f,
    model,
    *,
    backend="numba",
    n_stages=None,
    exact=None,
    tile_shape=None,
    post_stage=None,
    progress=None,
):
    """Run ``model`` on the 2-D image ``f`` (model scale) and return the result.

    Parameters
    ----------
    f : ndarray (2-D, float32 or float64) or cupy.ndarray
    model : TRDModel
    backend : {'numpy', 'numba', 'cupy'}
    n_stages : int, optional
        Run only the first stages.
    exact : bool, optional
        Evaluate influence functions exactly instead of by table. Defaults to
        True in float64 and False in float32. Ignored for models whose
        influence functions are a lookup table (``model.influence_lut``: the
        authors' models), which every backend evaluates exactly as such.
    tile_shape : (int, int), optional
        Process in tiles of this size (plus the model's halo); the result is
        identical to whole-image processing.
    post_stage : callable(u, t) -> u, optional
        Applied after each stage (the deblocking projection).
    progress : callable(done, total), optional
        Called after every stage of every tile.
    """
    if backend not in _RUNNERS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {BACKENDS}")
    xp = __import__("cupy") if backend == "cupy" else np
    # (the public functions check this too; a NaN would index the tables with garbage)
    if not bool(xp.isfinite(f).all()):
        raise ValueError("the image holds NaN or infinite values")
    n_stages = model.n_stages if n_stages is None else int(n_stages)
    if exact is None:
        exact = f.dtype == np.float64
    if model.influence_lut is not None:
        exact = False  # the kernels' tables hold the model's own table exactly
    runner = _RUNNERS[backend]
    tile_shape = normalize_tile_shape(tile_shape)
    if tile_shape is None or (tile_shape[0] >= f.shape[0] and tile_shape[1] >= f.shape[1]):
        cb = None if progress is None else (lambda done: progress(done, n_stages))
        return runner(f, model, n_stages, exact, post_stage, cb)
    if post_stage is not None:
        raise ValueError("tiling is not available with a per-stage projection")
    th, tw = tile_shape
    halo = n_stages * 2 * model.radius
    n_tiles = math.ceil(f.shape[0] / th) * math.ceil(f.shape[1] / tw)
    total = n_tiles * n_stages
    out = xp.empty_like(f)  # every pixel is written by exactly one tile
    for k, (inner, outer, crop) in enumerate(iter_tiles(f.shape, (th, tw), halo)):
        tile = f[outer]
        if backend != "cupy":
            tile = np.ascontiguousarray(tile)
        cb = None if progress is None else (lambda done, k=k: progress(k * n_stages + done, total))
        res = runner(tile, model, n_stages, exact, None, cb)
        out[inner] = res[crop]
    return out

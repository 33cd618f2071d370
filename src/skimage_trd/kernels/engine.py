"""Run a TRD model over a 2-D image on one of the backends, whole or in tiles.

Backends
--------
``'numpy'``
    The readable reference of ``reference.py`` (slow; for checking).
``'numba'``
    Fused parallel CPU kernels (``numba_cpu.py``).
``'cupy'``
    GPU kernels (``cuda.py``), for CuPy arrays.

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

import math
import threading

import numpy as np

from .._arrays import BACKENDS, _xp, normalize_tile_shape
from . import cuda
from . import numba_cpu as nk
from .cuda import run_cupy
from .prepare import LINEAR_TABLE_TOLERANCE, TABLE_TOLERANCE, model_fingerprint, prepare
from .reference import diffusion_reference, lookup_phi, stage_reference
from .volume import run_volume, run_volume_gpu
from .volume_blocks import run_volume_blocks

__all__ = ["run_model", "BACKENDS", "iter_tiles", "prepare", "model_fingerprint",
           "TABLE_TOLERANCE", "LINEAR_TABLE_TOLERANCE"]


# Numba's 'workqueue' threading layer (used when neither OpenMP nor TBB is available) aborts the
# process if two threads launch parallel kernels at once; napari and dask call from many threads.
# Kernel launches are serialised until the first launch tells which layer is in use, and
# afterwards only under 'workqueue'.
_launch_lock = threading.Lock()
_serialize_launches = None


def _launch(kernel, *args):
    global _serialize_launches
    if _serialize_launches is False:
        return kernel(*args)
    with _launch_lock:
        result = kernel(*args)
        if _serialize_launches is None:
            _serialize_launches = nk.numba.threading_layer() == "workqueue"
        return result


def influence_kind(prep, n_stages, kernel_size, dtype, exact):
    """Which CPU kernel runs the stages: ``'p'`` / ``'l'`` the register-blocked float32 kernels
    with piecewise polynomials (every stage's polynomials accurate) or linear tables, on AVX-512
    processors; ``None`` the row kernels (float64, exact RBF sums, other filter sizes, and
    processors without AVX-512: there the 16-lane blocks, two 8-lane registers each, ran 1.25x
    slower than the row kernels; docs/performance.md)."""
    if exact or dtype != np.float32 or kernel_size not in nk.BLOCK_SIZES or not nk.has_avx512():
        return None
    return "p" if all(st.poly is not None for st in prep.stages[:n_stages]) else "l"


def _run_numba(f, model, n_stages, exact, post_stage, progress, *, kind="auto"):
    prep = prepare(model, f.dtype)
    r = model.radius
    H, W = f.shape
    if kind == "auto":
        kind = influence_kind(prep, n_stages, model.kernel_size, f.dtype, exact)
    if kind is None:  # the row kernels
        padded = np.empty((H + 4 * r, W + 4 * r), dtype=f.dtype)
        strip = nk.strip_height(H, nk.numba.get_num_threads())

        def launch(st, out):
            if exact:
                _launch(nk.trd_stage_exact, padded, f, st.lam, st.filters, st.flipped, st.weights,
                        prep.mu0, prep.delta, prep.beta, prep.reach, strip, out)
            else:
                _launch(nk.table_kernel(st.filters.shape[1]), padded, f, st.lam, st.filters,
                        st.flipped, st.linear.pairs, st.grid, strip, out)
    else:  # the register-blocked kernels: PAD_SLACK zero columns beyond the padded image
        padded = nk.padded_buffer((H + 4 * r, W + 4 * r + nk.PAD_SLACK))
        kernel = nk.block_kernel(model.kernel_size, kind)
        tile_w = nk.tile_width(W, r)
        n_tiles = nk.n_tiles(H, W, nk.TILE_ROWS, tile_w)

        def launch(st, out):
            tables, grid = (st.poly.coef, st.poly_grid) if kind == "p" else (st.linear.pairs, st.grid)
            nk.run_tiles(kernel, (padded, f, np.float32(st.lam), st.filters, st.flipped, tables,
                                  grid, nk.TILE_ROWS, tile_w, out), n_tiles)
    u = f
    buffers = [np.empty_like(f), np.empty_like(f)]
    for t in range(n_stages):
        st = prep.stages[t]
        nk.pad_symmetric(u, 2 * r, padded)
        out = buffers[t % 2]
        launch(st, out)
        if post_stage is not None:
            out = post_stage(out, t)
        u = out
        if progress is not None:
            progress(t + 1)
    return u


def _run_numpy(f, model, n_stages, exact, post_stage, progress):
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
    """Run ``model`` on the 2-D image ``f`` (model scale) and return the result; a volume
    model (3-D filters) on the volume ``f`` (z, y, x).

    Parameters
    ----------
    f : ndarray (2-D, or 3-D for a volume model; float32 or float64) or cupy.ndarray
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
    xp = _xp(f)
    # (the public functions check this too; a NaN would index the tables with garbage)
    if not bool(xp.isfinite(f).all()):
        raise ValueError("the image holds NaN or infinite values")
    n_stages = model.n_stages if n_stages is None else int(n_stages)
    if exact is None:
        exact = f.dtype == np.float64
    if model.influence_lut is not None:
        exact = False  # the kernels' tables hold the model's own table exactly
    if model.ndim == 3:
        return _run_volume(f, model, backend, n_stages, exact=exact, tile_shape=tile_shape,
                           post_stage=post_stage, progress=progress)
    if f.ndim != 2:
        raise ValueError(f"a 2-D model runs on 2-D images, got shape {f.shape}")
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


def _run_volume(f, model, backend, n_stages, *, exact, tile_shape, post_stage, progress):
    """:func:`run_model` for a volume model: float32 on AVX-512 processors the register-blocked
    stages of ``volume_blocks.py`` (chosen as for images, :func:`influence_kind`), otherwise the
    matrix-form stages of ``volume.py``; the NumPy reference with ``backend='numpy'``."""
    if f.ndim != 3:
        raise ValueError(f"a volume model (3-D filters) runs on volumes (z, y, x), got shape "
                         f"{f.shape}")
    if post_stage is not None or tile_shape is not None:
        raise ValueError("volume models run on whole volumes here (no tiles, no projection)")
    if backend == "cupy":
        return run_volume_gpu(f, model, cuda.cupy_module(), n_stages=n_stages,
                              progress=progress)
    if backend == "numpy":
        u = f
        for t in range(n_stages):
            u = stage_reference(u, f, model, t)
            if progress is not None:
                progress(t + 1, n_stages)
        return u
    prep = prepare(model, f.dtype)
    kind = influence_kind(prep, n_stages, model.kernel_size, f.dtype, exact)
    if kind is not None:
        return run_volume_blocks(np.ascontiguousarray(f), prep, model.filter_shape, kind, n_stages,
                                 progress=progress)
    return run_volume(f, model, f.dtype, n_stages=n_stages, progress=progress, exact=exact)

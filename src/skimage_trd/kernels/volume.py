"""TRD stages on volumes (3-D filters ``depth x F x F``) as dense matrix products: float64
volumes and processors without AVX-512 on the CPU (float32 volumes on AVX-512 run the
register-blocked stages of ``volume_blocks.py``, 3x faster), and CuPy volumes on the GPU.

The stage map is the one of ``reference.py`` (paper Eq. 7) with 3-D correlation. Write
``P = pad(u)`` (symmetric, ``2 r`` per axis), ``Q`` the response grid (the volume grown by
``r`` per axis) and ``T`` the taps of a filter. The responses of the ``N`` filters on a
slab of response planes are one matrix product ``Z = K U`` with ``U`` (``T x`` slab
positions) the shifted copies of ``P`` ("im2col") and ``K`` (``N x T``) the filters;
``V = phi(Z)`` element by element (the model's linear tables, as the 2-D CPU kernels, or
the exact RBF sum); the adjoint correlation is ``C = Kbar^T V`` (``T x`` positions), whose
rows are added back onto the output at their tap's offset ("col2im").

Slabs of response planes bound the matrices (``U`` is ``T`` times the slab) whatever the
volume's size. The matrix products run in the BLAS NumPy was built with (OpenBLAS: set
``OPENBLAS_NUM_THREADS`` to bound its threads); the influence functions in Numba.
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import threading
from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np
from numba import njit, prange

from .cuda import phi_kernel
from .influence import RBF_REACH, influence_and_derivative, rbf_reach_terms
from .numba_cpu import _phi_exact
from .prepare import prepare

__all__ = ["volume_stage", "run_volume", "phi_rows_exact", "slabs",
           "im2col", "col2im_add", "GridRBF", "phi_rows_hermite", "hist_rows_hermite",
           "run_volume_gpu"]

SLAB_BYTES = 48 << 20  # bound on the im2col matrix of one slab
GRID_PER_RBF_STEP = 20  # volume training's phi grid: the RBF centres' spacing / 20


_BLAS_PREFIXES = ("scipy_openblas_", "openblas_")  # NumPy's own OpenBLAS, a system one
_blas_lock = threading.Lock()


def _openblas_functions():
    """(get, set) of the number of threads of the OpenBLAS NumPy has loaded (Linux: found in
    /proc/self/maps, as threadpoolctl finds it), or None where it cannot be found."""
    try:
        with open("/proc/self/maps") as fh:
            paths = sorted({line.split()[-1] for line in fh if "openblas" in line.lower()
                            and line.split()[-1].startswith("/")})
    except OSError:
        return None
    for path in paths:
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for prefix in _BLAS_PREFIXES:
            for suffix in ("64_", ""):
                get = getattr(lib, f"{prefix}get_num_threads{suffix}", None)
                put = getattr(lib, f"{prefix}set_num_threads{suffix}", None)
                if get is not None and put is not None:
                    return get, put
    return None


@contextlib.contextmanager
def single_threaded_blas():
    """OpenBLAS on one thread for the block (restored after), where it can be found: the volume
    stage runs its slabs on several threads of its own, and OpenBLAS threads inside each would
    oversubscribe the cores (measured: 2 threads 1.62x one thread with this, 1.23x without)."""
    global _blas, _blas_users, _blas_before
    with _blas_lock:
        if _blas is False:
            _blas = _openblas_functions() or None
        if _blas is not None:
            if _blas_users == 0:  # (concurrent calls: the first saves, the last restores)
                _blas_before = _blas[0]()
                _blas[1](1)
            _blas_users += 1
    try:
        yield
    finally:
        if _blas is not None:
            with _blas_lock:
                _blas_users -= 1
                if _blas_users == 0:
                    _blas[1](_blas_before)


_blas = False  # (looked up on first use)
_blas_users = 0
_blas_before = 1


def _concurrent_launches_allowed():
    """Whether Numba's parallel kernels may run from several threads at once: not under its
    'workqueue' layer (used when neither OpenMP nor TBB is available), which aborts the
    process on concurrent launches. The layer is known after a first parallel launch."""
    try:
        return numba.threading_layer() != "workqueue"
    except ValueError:  # (no parallel kernel has run yet: run one)
        _phi_rows_table(np.zeros((1, 1), np.float32), np.zeros((1, 2), np.complex64),
                        np.array([0.0, 1.0, 0.5], np.float32))
        return numba.threading_layer() != "workqueue"


def slabs(n_planes, plane_size, n_taps, itemsize):
    """Ranges of response planes whose im2col matrix stays within ``SLAB_BYTES``."""
    per = max(1, SLAB_BYTES // max(1, n_taps * plane_size * itemsize))
    return [(q, min(n_planes, q + per)) for q in range(0, n_planes, per)]


def im2col(P, fshape, grid, q0, q1, xp=np):
    """Rows: the taps of a ``fshape`` filter; columns: the response positions of planes
    ``q0:q1`` of ``grid`` (the response grid's shape) read from the padded volume ``P``
    (of the array module ``xp``: NumPy, or CuPy on the GPU)."""
    Fz, F, _ = fshape
    _, Hq, Wq = grid
    cols = xp.empty((Fz * F * F, q1 - q0, Hq, Wq), dtype=P.dtype)
    t = 0
    for a in range(Fz):
        for b in range(F):
            for c in range(F):
                cols[t] = P[q0 + a : q1 + a, b : b + Hq, c : c + Wq]
                t += 1
    return cols.reshape(cols.shape[0], -1)


def col2im_add(C, fshape, out, q0, q1, offset, *, z_origin=0):
    """``out[x] += C[tap, x + tap - offset]`` for the response planes ``q0:q1`` held by ``C``
    (rows: taps): the adjoint of :func:`im2col`. ``offset`` (per axis) is 0 where ``out`` is
    the volume (the ``kbar`` correlation of the stage) and ``2 r`` where ``out`` is the padded
    volume (the adjoint of the responses: there every tap lands inside). ``out`` may hold
    only the planes from ``z_origin`` on (of as many as it has; the planes beyond are not
    touched): a thread's share of the volume."""
    Fz, F, _ = fshape
    Zn, Ho, Wo = out.shape
    Zo = z_origin + Zn
    Hq, Wq = C.shape[2], C.shape[3]  # C: (taps, q1 - q0, Hq, Wq)
    oz, oy, ox = offset
    t = 0
    for a in range(Fz):
        # planes q with 0 <= q + oz - a < Zo
        z0, z1 = max(q0, a - oz + z_origin), min(q1, Zo + a - oz)
        for b in range(F):
            for c in range(F):
                if z1 > z0:
                    y0, x0 = oy - b, ox - c  # out row y holds C row y - y0
                    ys, xs = max(0, y0), max(0, x0)
                    ye, xe = min(Ho, y0 + Hq), min(Wo, x0 + Wq)
                    out[z0 + oz - a - z_origin : z1 + oz - a - z_origin, ys:ye, xs:xe] += \
                        C[t, z0 - q0 : z1 - q0, ys - y0 : ye - y0, xs - x0 : xe - x0]
                t += 1


# --------------------------------------------------------------------- influence functions
@njit(cache=True, parallel=True)
def _phi_rows_table(Z, pairs, grid):
    # Z[i, q] <- phi_i(Z[i, q]) from the linear tables (value + 1j * step per node)
    x0, inv_h, top = grid[0], grid[1], grid[2]
    N, M = Z.shape
    for i in prange(N):
        row = Z[i]
        tab = pairs[i]
        for q in range(M):
            t = min(max((row[q] - x0) * inv_h, top - top), top)
            m = np.int64(t)
            p = tab[m]
            row[q] = p.real + (t - m) * p.imag


@njit(cache=True, parallel=True)
def phi_rows_exact(Z, W, mu0, delta, beta, K):
    """``phi_i(Z[i])`` for every row ``i``: the exact Gaussian RBF sum over the ``2K + 1``
    centres nearest to each response (the 2-D CPU kernels' ``numba_cpu._phi_exact``)."""
    N, M = Z.shape
    J = W.shape[1]
    V = np.empty_like(Z)
    for i in prange(N):
        w = W[i]
        for m in range(M):
            V[i, m] = _phi_exact(np.float64(Z[i, m]), w, mu0, delta, beta, J, K)
    return V


@njit(cache=True, parallel=True)
def phi_rows_hermite(Z, values, slopes, x0, inv_h, derivative):
    """``phi_i`` of every response ``Z[i, q]`` as the cubic Hermite interpolant of its values
    ``values[i, n]`` and derivatives ``slopes[i, n]`` at the nodes ``x0 + n / inv_h``
    (clamped to the grid's ends), and the interpolant's derivative if ``derivative``: the
    influence functions volume training uses (:class:`GridRBF`)."""
    N, M = Z.shape
    top = values.shape[1] - 1.000001
    h = 1.0 / inv_h
    V = np.empty_like(Z)
    D = np.empty_like(Z) if derivative else np.empty((0, 0), Z.dtype)
    for i in prange(N):
        y = values[i]
        s = slopes[i]
        for m in range(M):
            t = min(max((np.float64(Z[i, m]) - x0) * inv_h, 0.0), top)
            n = np.int64(t)
            a = t - n
            a2 = a * a
            y0, y1, d0, d1 = y[n], y[n + 1], h * s[n], h * s[n + 1]
            V[i, m] = (y0 + a2 * (3.0 - 2.0 * a) * (y1 - y0) + d0 * a * (1.0 - a) ** 2
                       + d1 * a2 * (a - 1.0))
            if derivative:
                D[i, m] = (6.0 * a * (1.0 - a) * (y1 - y0) + d0 * (1.0 - a) * (1.0 - 3.0 * a)
                           + d1 * a * (3.0 * a - 2.0)) * inv_h
    return V, D


@njit(cache=True, parallel=True)
def hist_rows_hermite(Z, E, n_nodes, x0, inv_h):
    """The adjoint of :func:`phi_rows_hermite` with respect to the node values and
    derivatives: ``(Hv, Hs)`` with ``Hv[i, n] = sum_q E[i, q] dphi(Z[i, q]) / dvalues[i, n]``
    and ``Hs`` likewise for the derivatives (float64 sums)."""
    N, M = Z.shape
    top = n_nodes - 1.000001
    h = 1.0 / inv_h
    Hv = np.zeros((N, n_nodes))
    Hs = np.zeros((N, n_nodes))
    for i in prange(N):
        hv = Hv[i]
        hs = Hs[i]
        for m in range(M):
            t = min(max((np.float64(Z[i, m]) - x0) * inv_h, 0.0), top)
            n = np.int64(t)
            a = t - n
            a2 = a * a
            e = np.float64(E[i, m])
            b = a2 * (3.0 - 2.0 * a)
            hv[n] += e * (1.0 - b)
            hv[n + 1] += e * b
            hs[n] += e * h * a * (1.0 - a) ** 2
            hs[n + 1] += e * h * a2 * (a - 1.0)
    return Hv, Hs


class GridRBF:
    """The influence functions of volume training: ``phi_i`` and ``phi_i'`` sampled exactly
    (the Gaussian RBF sum and its derivative) on a grid ``GRID_PER_RBF_STEP`` times finer than
    the RBF centres, reaching ``RBF_REACH`` widths beyond the outer centres, and interpolated
    by cubic Hermite polynomials in between (continuous with its derivative, so that the loss
    is smooth). Training differentiates that interpolant exactly (the weight gradient goes
    through the node values and derivatives, which are linear in the weights), at a few
    nanoseconds a response instead of the exact sum's sixty. ``max_error(weights)`` measures
    its distance to the exact sum."""

    def __init__(self, centers, precision):
        centers = np.asarray(centers, np.float64)
        delta = float(centers[1] - centers[0])
        width = 1.0 / math.sqrt(precision)
        self.centers, self.precision = centers, float(precision)
        self.h = delta / GRID_PER_RBF_STEP
        lo = centers[0] - RBF_REACH * width
        n = int(math.ceil((centers[-1] + RBF_REACH * width - lo) / self.h)) + 1
        self.x0, self.inv_h = lo, 1.0 / self.h
        self.nodes = lo + self.h * np.arange(n)
        d = self.nodes[None, :] - centers[:, None]
        self.G = np.exp(-0.5 * precision * d**2)  # (J, n_nodes)
        self.dG = -precision * d * self.G

    def tables(self, weights):
        """Values and derivatives of every ``phi_i`` at the nodes, each (N, n_nodes)."""
        w = np.asarray(weights, np.float64)
        return w @ self.G, w @ self.dG

    def phi(self, Z, tables, derivative=False):
        return phi_rows_hermite(Z, *tables, self.x0, self.inv_h, derivative)

    def weight_gradient(self, Z, E):
        """``dL/dw[i, j]`` from ``E = dL/dphi_i`` at the responses ``Z``."""
        Hv, Hs = hist_rows_hermite(Z, E, self.nodes.size, self.x0, self.inv_h)
        return Hv @ self.G.T + Hs @ self.dG.T

    def max_error(self, weights, samples=20001):
        """Largest distance between the interpolant and the exact RBF sum over the grid."""
        z = np.linspace(self.nodes[0], self.nodes[-1], samples)
        exact = influence_and_derivative(z, np.atleast_2d(weights), self.centers,
                                         self.precision)[0]
        approx = self.phi(np.repeat(z[None], exact.shape[0], 0), self.tables(weights))[0]
        return float(np.abs(approx - exact).max())


# ------------------------------------------------------------------------------ the stage
def _pads(fshape):
    return [(2 * (n // 2), 2 * (n // 2)) for n in fshape]


def volume_stage(u, f, stage, fshape, *, exact=None, out=None):
    """One denoising stage on the volume ``u`` (model scale) given the input ``f``.

    ``stage`` is a :class:`~skimage_trd.kernels.prepare.PreparedStage` of a 3-D model;
    ``exact``, if given, is ``(mu0, delta, beta, K)``: the exact RBF sum instead of the
    linear tables (float64 accuracy, used with float64 volumes)."""
    N = stage.filters.shape[0]
    T = int(np.prod(fshape))
    K = stage.filters.reshape(N, T)
    Kbar_T = np.ascontiguousarray(stage.flipped.reshape(N, T).T)
    P = np.pad(u, _pads(fshape), mode="symmetric")
    r = [n // 2 for n in fshape]
    grid = tuple(n + 2 * ri for n, ri in zip(u.shape, r, strict=True))
    def run(part, d, z_origin=0, threads=None):
        if threads is not None:  # (a new thread starts at Numba's default count)
            numba.set_num_threads(threads)
        for q0, q1 in part:
            Z = K @ im2col(P, fshape, grid, q0, q1)
            if exact is None:
                _phi_rows_table(Z, stage.linear.pairs, stage.grid)
                V = Z
            else:
                V = phi_rows_exact(Z, stage.weights, *exact)
            C = (Kbar_T @ V).reshape((T, q1 - q0) + grid[1:])
            col2im_add(C, fshape, d, q0, q1, (0, 0, 0), z_origin=z_origin)
        return d

    todo = slabs(grid[0], grid[1] * grid[2], T, u.itemsize)
    total = numba.get_num_threads()
    n = min(total, len(todo))
    d = np.zeros_like(u)
    if n > 1 and not _concurrent_launches_allowed():
        n = 1
    if n <= 1:
        run(todo, d)
    else:
        # contiguous runs of slabs over threads (NumPy and BLAS release the GIL); each thread
        # adds into its own planes (its response planes' outputs: 2 r_z more than it has),
        # added into d at the end (memory: about one volume more in all)
        per = -(-len(todo) // n)
        parts = [todo[k:k + per] for k in range(0, len(todo), per)]
        fz = fshape[0]

        def share(part):
            z0 = max(0, part[0][0] - (fz - 1))
            z1 = min(u.shape[0], part[-1][1])
            buf = np.zeros((z1 - z0,) + u.shape[1:], u.dtype)
            return z0, run(part, buf, z0, max(1, total // len(parts)))

        with single_threaded_blas(), ThreadPoolExecutor(len(parts)) as pool:
            for z0, buf in pool.map(share, parts):
                d[z0:z0 + buf.shape[0]] += buf
    lam = u.dtype.type(stage.lam)
    if out is None:
        out = np.empty_like(u)
    np.subtract(u, d + lam * (u - f), out=out)
    return out


def run_volume_gpu(f, model, xp, n_stages=None, progress=None):
    """:func:`run_volume` for a CuPy volume ``f`` (``xp`` is ``cupy``): the same matrix form,
    the products in cuBLAS and the influence functions by the exact RBF sum of the CUDA
    stage kernels (:func:`skimage_trd.kernels.cuda.phi_kernel`), in ``f``'s dtype."""
    dtype = np.dtype(f.dtype)
    prep = prepare(model, dtype)
    fshape = model.filter_shape
    T = int(np.prod(fshape))
    K_rbf = rbf_reach_terms(model.centers, model.precision)
    grid = tuple(n + 2 * (k // 2) for n, k in zip(f.shape, fshape, strict=True))
    phi = phi_kernel(dtype)
    u = f
    n = model.n_stages if n_stages is None else n_stages
    for t in range(n):
        st = prep.stages[t]
        N = st.filters.shape[0]
        K = xp.asarray(st.filters.reshape(N, T))
        Kbar_T = xp.asarray(np.ascontiguousarray(st.flipped.reshape(N, T).T))
        w = xp.asarray(st.weights)
        P = xp.pad(u, _pads(fshape), mode="symmetric")
        d = xp.zeros(u.shape, dtype=dtype)
        for q0, q1 in slabs(grid[0], grid[1] * grid[2], T, dtype.itemsize):
            Z = K @ im2col(P, fshape, grid, q0, q1, xp)
            V = phi(Z, w, np.int64(Z.shape[1]), np.int32(model.centers.size),
                    dtype.type(prep.mu0), dtype.type(prep.delta), dtype.type(prep.beta),
                    np.int32(K_rbf))[0]
            C = (Kbar_T @ V).reshape((T, q1 - q0) + grid[1:])
            col2im_add(C, fshape, d, q0, q1, (0, 0, 0))
        u = u - (d + dtype.type(st.lam) * (u - f))
        if progress is not None:
            progress(t + 1, n)
    return u


def run_volume(f, model, dtype=np.float32, n_stages=None, progress=None, exact=None):
    """Run the stages of a 3-D ``model`` on the volume ``f`` (model scale) in ``dtype``:
    influence functions exact (default in float64) or by the linear tables (default in
    float32)."""
    dtype = np.dtype(dtype)
    f = np.ascontiguousarray(f, dtype=dtype)
    prep = prepare(model, dtype)
    if exact is None:
        exact = dtype == np.float64
    if exact:
        exact = (prep.mu0, prep.delta, prep.beta, rbf_reach_terms(model.centers, model.precision))
    else:
        exact = None
    u = f
    n = model.n_stages if n_stages is None else n_stages
    for t in range(n):
        u = volume_stage(u, f, prep.stages[t], model.filter_shape, exact=exact)
        if progress is not None:
            progress(t + 1, n)
    return u

"""Stage forward and backward in matrix form, for CuPy (GPU) training; NumPy for checking.

The same mathematics as ``gradients.py`` (see its module docstring for the
formulas), arranged so that the heavy work is a handful of dense matrix
products over the whole batch. With ``U`` the ``F*F x Q`` matrix of shifted
copies of the padded input (``Q`` = every position of the response grid of
every image) and ``K`` the ``N x F*F`` filter matrix:

* responses ``Z = K U``; ``V = phi(Z)``, ``D = phi'(Z)`` element-wise;
* diffusion ``d = sum_ab shift_ab((Kbar^T V)_ab)``;
* backward: ``E = K Ug`` (``Ug`` the shifted copies of ``-g`` zero-padded),
  ``S = E D``, ``dK = S U^T + V Ug^T``, ``dP = sum_ab shift_ab^T((K^T S)_ab)``,
  ``dW_ij = sum_q E_iq G_j(Z_iq)``.

Array functions take the array module ``xp`` (``numpy`` or ``cupy``). The two
element-wise pieces that would be slow as array expressions (``phi`` with
``phi'``, and the RBF-weight gradient) have CUDA kernels that evaluate only
the RBF centres near each response (the stage kernels' RBF-sum code,
``kernels.cuda.RBF_SUM_SOURCE``), with deterministic reductions, so that GPU
training is reproducible run to run; their NumPy versions are exact sums.
"""

from __future__ import annotations

import math

import numpy as np

from .._arrays import _xp
from .._jpeg import project_to_box, project_to_box_adjoint
from ..kernels.cuda import CUDA_PRELUDE, RBF_SUM_SOURCE, cached_kernel, phi_kernel
from ..kernels.influence import influence_and_derivative, rbf_reach_terms
from .gradients import (
    BatchTrainer,
    StageParams,
    TrainingSpec,
    _filter_grad_to_coefficients,
    _filters_and_norms,
)

__all__ = ["GemmTrainer"]

IMAGES_PER_CHUNK = 100  # bounds the (F*F x Q) matrices: ~1 GB each for 180x180 7x7 float32

_CUDA_RBF_GRAD = r"""
extern "C" __global__ void rbf_grad(const T* __restrict__ Z, const T* __restrict__ E, long long Q,
                                    int J, T mu0, T delta, T beta, int K, int per_thread,
                                    T* __restrict__ partial)
{
    SHARED_ARRAY(unsigned char, smem_raw);
    T* bins = reinterpret_cast<T*>(smem_raw);        // bins[j * nt + tid]: one set per thread
    const int n = blockIdx.y, tid = threadIdx.x, nt = blockDim.x;
    for (int j = 0; j < J; ++j) bins[j * nt + tid] = (T)0;
    const T* z = Z + (long long)n * Q;
    const T* e = E + (long long)n * Q;
    const long long seg0 = (long long)blockIdx.x * nt * per_thread;
    for (int it = 0; it < per_thread; ++it) {
        long long idx = seg0 + (long long)it * nt + tid;
        if (idx >= Q) break;
        const T ee = e[idx];
        rbf_terms(z[idx], mu0, delta, beta, J, K,
                  [&](int j, T g, T) { bins[j * nt + tid] += ee * g; });
    }
    __syncthreads();
    for (int j = tid; j < J; j += nt) {
        T s = (T)0;
        for (int t = 0; t < nt; ++t) s += bins[j * nt + t];   // fixed order: deterministic
        partial[((long long)n * gridDim.x + blockIdx.x) * J + j] = s;
    }
}
"""


def _ctype(dtype):
    return {"float32": "float", "float64": "double"}[np.dtype(dtype).name]


def rbf_grad_source(dtype):
    """The CUDA source of the RBF-weight gradient kernel ``rbf_grad`` for ``dtype``."""
    return f"#define T {_ctype(dtype)}\n" + CUDA_PRELUDE + RBF_SUM_SOURCE + _CUDA_RBF_GRAD


def _cuda_rbf_kernel(dtype):
    def build():
        import cupy

        return cupy.RawModule(code=rbf_grad_source(dtype)).get_function("rbf_grad")

    return cached_kernel(("gemm_rbf_grad", np.dtype(dtype).name), build)


# ------------------------------------------------------------------------------- elementwise
def phi_and_derivative(Z, weights, spec, xp):
    """``phi_i(Z[i])`` and ``phi_i'(Z[i])`` for every row ``i`` of ``Z`` (shape (N, Q))."""
    if xp is np:
        V = np.empty_like(Z)
        D = np.empty_like(Z)
        for i in range(Z.shape[0]):
            v, d = influence_and_derivative(Z[i], weights[i : i + 1], spec.centers, spec.precision)
            V[i], D[i] = v[0], d[0]
        return V, D
    T = Z.dtype.type
    mu, delta = spec.centers[0], spec.centers[1] - spec.centers[0]
    K = rbf_reach_terms(spec.centers, spec.precision)
    w = xp.asarray(weights, dtype=Z.dtype)
    return phi_kernel(Z.dtype)(Z, w, np.int64(Z.shape[1]), np.int32(spec.n_rbf), T(mu),
                                     T(delta), T(spec.precision), np.int32(K))


def rbf_weight_gradient(Z, E, spec, xp):
    """``dW[i, j] = sum_q E[i, q] exp(-beta/2 (Z[i, q] - mu_j)**2)``, float64 (N, J)."""
    if xp is np:
        out = np.empty((Z.shape[0], spec.n_rbf))
        for i in range(Z.shape[0]):
            G = np.exp(-0.5 * spec.precision * (Z[i][None, :] - spec.centers[:, None]) ** 2)
            out[i] = G @ E[i].astype(np.float64)
        return out
    N, Q = Z.shape
    T = Z.dtype.type
    nt = 128 if Z.dtype == np.float32 else 64
    per_thread = 64
    blocks = (Q + nt * per_thread - 1) // (nt * per_thread)
    partial = xp.empty((N, blocks, spec.n_rbf), dtype=Z.dtype)
    K = rbf_reach_terms(spec.centers, spec.precision)
    mu, delta = spec.centers[0], spec.centers[1] - spec.centers[0]
    _cuda_rbf_kernel(Z.dtype)(
        (blocks, N), (nt,),
        (Z, E, np.int64(Q), np.int32(spec.n_rbf), T(mu), T(delta), T(spec.precision),
         np.int32(K), np.int32(per_thread), partial),
        shared_mem=spec.n_rbf * nt * Z.dtype.itemsize,
    )
    return partial.astype(xp.float64).sum(axis=1)


# ---------------------------------------------------------------------------- matrix pieces
def _shifts(F):
    return [(a, b) for a in range(F) for b in range(F)]


def _im2col(P, F, Hz, Wz, xp):
    B = P.shape[0]
    cols = xp.empty((F * F, B, Hz, Wz), dtype=P.dtype)
    for s, (a, b) in enumerate(_shifts(F)):
        cols[s] = P[:, a : a + Hz, b : b + Wz]
    return cols.reshape(F * F, -1)


def _fold_matrix(n, p, xp, dtype):
    """One-hot (n, n + 2p) matrix R with R @ x = adjoint of symmetric padding along an axis."""
    src = np.pad(np.arange(n), p, mode="symmetric")
    R = np.zeros((n, n + 2 * p), dtype=dtype)
    R[src, np.arange(n + 2 * p)] = 1
    return xp.asarray(R)


class _Stage:
    """Per-stage arrays on the device."""

    def __init__(self, params: StageParams, spec: TrainingSpec, xp, dtype, deblock=False):
        k, _ = _filters_and_norms(params.coefficients, spec.kernel_size)
        N, F = k.shape[0], spec.kernel_size
        self.params = params
        self.K = xp.asarray(k.reshape(N, F * F), dtype=dtype)
        self.Kbar = xp.asarray(k[:, ::-1, ::-1].reshape(N, F * F), dtype=dtype)
        self.w = xp.asarray(params.weights, dtype=dtype)
        # deblocking stages have no reaction term: their log_lambda is unused (gradient 0)
        self.lam = 0.0 if deblock else math.exp(params.log_lambda)


class BatchProjection:
    """The projection of Eq. 9 for a training batch, and its adjoint.

    ``u = clip(idct(box(dct(v - 128))) + 128, 0, 255)`` block by block, with per-image
    coefficient bounds ``lower``, ``upper`` of shape (B, H/8, W/8, 8, 8): the one projection
    of the package, :func:`skimage_trd._jpeg.project_to_box`, kept on the device in the
    training dtype.

    Parameters
    ----------
    lower, upper : ndarray, shape (B, H/8, W/8, 8, 8)
    shape : (B, H, W)
        Batch shape (whole 8x8 blocks).
    xp : module
        ``numpy`` or ``cupy``.
    dtype : float32 or float64
    """

    def __init__(self, lower, upper, shape, xp=np, dtype=np.float32):
        B, H, W = shape
        if H % 8 or W % 8 or np.shape(lower) != (B, H // 8, W // 8, 8, 8) or \
                np.shape(upper) != np.shape(lower):
            raise ValueError("deblocking needs images of whole 8x8 blocks and per-image "
                             "coefficient bounds of shape (B, H/8, W/8, 8, 8)")
        self.xp, self.dtype = xp, np.dtype(dtype)
        self.lower = xp.asarray(lower, dtype=self.dtype)
        self.upper = xp.asarray(upper, dtype=self.dtype)

    def project(self, v, sl=slice(None)):
        """The projection of stage outputs ``v`` (images ``sl`` of the batch) and the masks
        (coefficients inside their box, pixels inside [0, 255]) its adjoint needs."""
        return project_to_box(v, self.lower[sl], self.upper[sl], masks=True)

    @staticmethod
    def adjoint(g, inside, unclipped):
        """``dL/dv`` from ``g = dL/du``."""
        return project_to_box_adjoint(g, inside, unclipped)


class GemmTrainer(BatchTrainer):
    """Loss and gradient of a TRD model on a fixed batch kept on the device.

    Parameters
    ----------
    noisy, clean : ndarray, shape (B, H, W)
        Training pairs on the [0, 255] scale (copied to the device once).
    spec : TrainingSpec
    xp : module
        ``cupy`` (training) or ``numpy`` (tests).
    dtype : float32 or float64
    """

    def __init__(self, noisy, clean, spec, xp=np, dtype=np.float32, *, images_per_chunk=None,
                 constraint=None):
        self.xp = xp
        self.dtype = np.dtype(dtype)
        self.spec = spec
        self.f = xp.asarray(noisy, dtype=self.dtype)
        self.x = xp.asarray(clean, dtype=self.dtype)
        if self.f.shape != self.x.shape or self.f.ndim != 3:
            raise ValueError(f"noisy and clean must be equal (B, H, W) batches, got "
                             f"{self.f.shape} and {self.x.shape}")
        B, H, W = self.f.shape
        p = 2 * spec.radius
        self.chunk = images_per_chunk or IMAGES_PER_CHUNK
        self.Rh = _fold_matrix(H, p, xp, self.dtype)
        self.Rw = _fold_matrix(W, p, xp, self.dtype)
        # Deblocking (Eq. 9): every stage ends in the projection onto the quantisation
        # constraint set, u_t = clip(idct(box(dct(v - 128))) + 128, 0, 255), v = u - diffusion.
        self.deblock = constraint is not None
        if self.deblock:
            self.projection = BatchProjection(*constraint, self.f.shape, xp, self.dtype)

    # -------------------------------------------------------------------------- one stage
    def _pad(self, u, mode):
        p = 2 * self.spec.radius
        if mode == "symmetric":
            return self.xp.pad(u, ((0, 0), (p, p), (p, p)), mode="symmetric")
        return self.xp.pad(u, ((0, 0), (p, p), (p, p)))

    def _forward_chunk(self, st: _Stage, u, f, keep):
        xp, F, r = self.xp, self.spec.kernel_size, self.spec.radius
        B, H, W = u.shape
        Hz, Wz = H + 2 * r, W + 2 * r
        U = _im2col(self._pad(u, "symmetric"), F, Hz, Wz, xp)
        Z = st.K @ U
        V, D = phi_and_derivative(Z, st.w, self.spec, xp)
        C = (st.Kbar.T @ V).reshape(F * F, B, Hz, Wz)
        d = xp.zeros_like(u)
        for s, (a, b) in enumerate(_shifts(F)):
            d += C[s][:, a : a + H, b : b + W]
        out = u - (d + self.dtype.type(st.lam) * (u - f))
        return (out, (U, Z, V, D)) if keep else (out, None)

    def stage(self, params):
        return _Stage(params, self.spec, self.xp, self.dtype, self.deblock)

    def stage_forward(self, st, u):
        """The stage's output on the batch (and nothing saved: the backward pass recomputes
        the responses chunk by chunk)."""
        outs = []
        for sl in self._slices(u):
            out = self._forward_chunk(st, u[sl], self.f[sl], False)[0]
            if self.deblock:
                out = self.projection.project(out, sl)[0]
            outs.append(out)
        return (self.xp.concatenate(outs) if len(outs) > 1 else outs[0]), None

    def _slices(self, u):
        B = u.shape[0]
        return [slice(b, min(B, b + self.chunk)) for b in range(0, B, self.chunk)]

    def stage_backward(self, st: _Stage, u, saved, g, need_input_grad):
        """Parameter gradient (dK (N, F*F) float64, dW, dtheta) and dL/du of one stage."""
        xp, F, r = self.xp, self.spec.kernel_size, self.spec.radius
        dK = np.zeros((st.K.shape[0], F * F))
        dW = np.zeros((st.K.shape[0], self.spec.n_rbf))
        du = xp.empty_like(u) if need_input_grad else None
        dtheta = 0.0
        for sl in self._slices(u):
            uc, fc, gc = u[sl], self.f[sl], g[sl]
            B, H, W = uc.shape
            Hz, Wz = H + 2 * r, W + 2 * r
            v, (U, Z, V, D) = self._forward_chunk(st, uc, fc, True)
            if self.deblock:  # back through the projection: gc becomes dL/dv
                gc = self.projection.adjoint(gc, *self.projection.project(v, sl)[1:])
            Ug = _im2col(self._pad(-gc, "zero"), F, Hz, Wz, xp)
            E = st.K @ Ug
            S = E * D
            dW += _to_host(rbf_weight_gradient(Z, E, self.spec, xp))
            dK += _to_host((S @ U.T + V @ Ug.T).astype(xp.float64))
            dtheta += -st.lam * float(xp.sum((gc * (uc - fc)).astype(xp.float64)))
            if need_input_grad:
                C2 = (st.K.T @ S).reshape(F * F, B, Hz, Wz)
                dP = xp.zeros((B, H + 4 * r, W + 4 * r), dtype=self.dtype)
                for s, (a, b) in enumerate(_shifts(F)):
                    dP[:, a : a + Hz, b : b + Wz] += C2[s]
                du[sl] = self.dtype.type(1.0 - st.lam) * gc + (self.Rh @ dP) @ self.Rw.T
        da = _filter_grad_to_coefficients(dK.reshape(-1, F, F), st.params.coefficients, F)
        return StageParams(da, dW, dtheta), du


def _to_host(a):
    return a.get() if _xp(a) is not np else np.asarray(a)

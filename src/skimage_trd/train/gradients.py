"""Gradients of the TRD stage map for training (Chen, Yu & Pock, CVPR 2015, Eqs. 4, 10, 11).

One denoising stage (paper Eq. 7, [0, 255] scale) maps ``u = u_{t-1}`` to::

    u_t = u - ( sum_i kbar_i * phi_i(k_i * pad(u)) + lambda (u - f) )

with ``pad`` the symmetric padding by ``2 r``, ``*`` 'valid' correlation and
``kbar_i = rot180(k_i)``. Training parameterises each stage by

* ``coefficients`` ``a`` of shape ``(N, m)``: filter ``k_i = c_i / ||c_i||``
  with ``c_i = sum_c a_ic B_c`` and ``B`` the zero-mean DCT basis
  (:func:`skimage_trd.dct_filter_basis`, ``m = kernel_size**2 - 1`` atoms);
* ``weights`` ``w`` of shape ``(N, J)``: ``phi_i(z) = sum_j w_ij G_j(z)``,
  ``G_j(z) = exp(-beta / 2 (z - mu_j)**2)``;
* ``log_lambda`` ``theta``: ``lambda = exp(theta)``.

Backward pass of one stage
--------------------------
Write ``P = pad(u)`` (shape ``(H + 4r, W + 4r)``), ``z_i = k_i * P`` and
``v_i = phi_i(z_i)`` (shape ``(H + 2r, W + 2r)``, the "response grid" ``q``),
and let ``g = dL/du_t`` be the incoming adjoint. Then, with ``Gd`` the image
``-g`` padded by ``2 r`` zeros on every side (shape of ``P``)::

    e_i[q]         = sum_ab k_i[a, b] Gd[q + (a, b)]        dL/dv_i   (= kbar_i adjoint)
    s_i[q]         = e_i[q] phi_i'(z_i[q])                   dL/dz_i
    dL/dw_ij       = sum_q e_i[q] G_j(z_i[q])
    dL/dk_i[a, b]  = sum_q s_i[q] P[q + (a, b)]  +  sum_q v_i[q] Gd[q + (a, b)]
    dL/dP[x]       = sum_i sum_ab k_i[a, b] s_i[x - (a, b)]   (full convolution)
    dL/du          = (1 - lambda) g + pad^T(dL/dP)
    dL/dtheta      = -lambda sum_p g[p] (u[p] - f[p])

The second term of ``dL/dk`` is the ``kbar`` term: ``d[p] = sum_ab k[a, b]
v[p + (F-1-a, F-1-b)]``, which re-indexed over the response grid reads
``sum_q v[q] Gd[q + (a, b)]``; ``e_i`` and the forward responses ``z_i`` are
the same correlation applied to ``Gd`` and ``P``. ``pad^T`` (the adjoint of
symmetric padding) adds every padded pixel back onto the pixel it copies,
:func:`pad_symmetric_adjoint`. Through the normalisation ``k = c / ||c||``::

    dL/dc = (dL/dk - k <k, dL/dk>) / ||c||,     dL/da_c = <B_c, dL/dc>.

``f`` is constant data (the noisy input, ``u_0 = f``); no gradient flows into it.

Two implementations are given: :func:`stage_backward_reference` (plain NumPy,
one image, to be read next to the formulas above) and the Numba kernel used by
:func:`stage_gradient` with ``backend='numba'`` (a batch of equal-sized
images, parameter gradients summed over the batch), tested against it.

Numba kernels
-------------
The forward and backward kernels work on rows of the response grid, in
strips of rows processed in parallel over (image, strip) pairs: even strips,
then odd strips, so that the rows each strip scatters into (``dL/dP`` in the
backward pass, the ``kbar`` pass in the forward pass) never overlap. Per row
and filter, the correlations run along the row (contiguous, vectorised);
``phi``, ``phi'`` and ``dL/dw`` use the exact RBF sum over the ``2K + 1``
centres around the nearest centre ``n``: with ``d = z - mu_n``,
``G_{n+k}(z) = exp(-beta/2 d**2) exp(beta delta d)**k c_k`` (two
exponentials per response, as polynomials in a vectorised pre-pass), so that
``phi = sum_k (w_{n+k} c_k) p_k`` with ``p_k = g0 t**k`` and the weight
gradient accumulates the moments ``M[n, k] += e p_k``, turned into
``dL/dw_j = sum_k c_k M[j - k, k]`` at the end. ``K`` covers ``rbf_reach``
RBF widths: 10 in float64 (terms dropped below 2e-22 of a weight), 6 in
float32 (below 2e-8). Parameter gradients are accumulated per thread in
float64.

Training
--------
:func:`loss_and_grad` evaluates ``L = 1/2 sum_b ||u_T(f_b) - u_gt,b||**2`` and
its gradient with respect to a flat float64 parameter vector (the layout of
:func:`pack_params`), for joint training of all stages (Eq. 11, backpropagation
through the stages) or for greedy training of the last stage (Eq. 4), in a
form that ``scipy.optimize.minimize(..., jac=True, method='L-BFGS-B')`` uses
directly. Both trainers run through one driver, :func:`backprop`: stages forward,
the loss (:func:`mse_loss`), stages backward, whatever backend serves the stages
(:class:`KernelStages` here, ``gradients_cupy.GemmTrainer`` on the GPU).
:func:`params_to_model` and :func:`model_to_params` convert between
parameter vectors and :class:`~skimage_trd.TRDModel`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import numba
import numpy as np
from numba import njit, prange

from .._basis import dct_filter_basis, filters_from_coefficients
from .._model import TRDModel
from .._sure import divergence_epsilon, probe_rng
from ..kernels.influence import RBF_REACH, influence_and_derivative
from ..kernels.numba_cpu import _mirror
from ..kernels.reference import correlate_valid, diffusion_reference

__all__ = [
    "TrainingSpec",
    "StageParams",
    "StageGradient",
    "pack_params",
    "unpack_params",
    "params_to_model",
    "model_to_params",
    "pad_symmetric_adjoint",
    "stage_forward_reference",
    "stage_backward_reference",
    "stage_forward",
    "stage_gradient",
    "forward_batch",
    "loss_and_grad",
    "KernelStages",
    "backprop",
    "mse_loss",
    "sure_backprop",
    "sure_loss_and_grad",
]

STRIP = 32  # response rows per parallel work item of the Numba kernels
CHUNK = 64  # images per call of the Numba kernels (bounds the padded buffers)
RBF_REACH_FLOAT32 = 6.0  # RBF widths summed in float32 (dropped terms < 1.6e-8 of a weight)


# ---------------------------------------------------------------------------------- parameters
@dataclass(frozen=True)
class TrainingSpec:
    """Shapes and fixed quantities shared by every stage of a model being trained.

    Parameters
    ----------
    kernel_size : int
        Odd filter size ``F``; each filter has ``m = F**2 - 1`` DCT coefficients.
    centers : array_like, shape (J,)
        Equidistant RBF centres ``mu_j`` on the [0, 255] scale.
    precision : float
        RBF precision ``beta``.
    n_filters : int, optional
        Filters per stage ``N``; defaults to ``m`` (the paper's choice).
    depth : int, optional
        Volume models: filter taps along z (odd); filters are ``depth x F x F`` and have
        ``m = depth F**2 - 1`` coefficients. None (default): 2-D filters.
    """

    kernel_size: int
    centers: np.ndarray
    precision: float
    n_filters: int | None = None
    depth: int | None = None

    def __post_init__(self):
        f = int(self.kernel_size)
        if f < 3 or f % 2 == 0:
            raise ValueError(f"kernel_size must be odd and at least 3, got {self.kernel_size}")
        centers = np.array(self.centers, dtype=np.float64).reshape(-1)
        if centers.size < 2 or not np.allclose(
            np.diff(centers), centers[1] - centers[0], rtol=1e-9, atol=0
        ) or centers[1] <= centers[0]:
            raise ValueError("centers must be at least 2 increasing, equidistant values")
        centers.setflags(write=False)
        if self.depth is not None:
            depth = int(self.depth)
            if depth < 1 or depth % 2 == 0:
                raise ValueError(f"depth must be odd and positive, got {self.depth}")
            object.__setattr__(self, "depth", depth)
        n = f * f * (self.depth or 1) - 1 if self.n_filters is None else int(self.n_filters)
        if n < 1:
            raise ValueError(f"n_filters must be positive, got {self.n_filters}")
        if not (np.isfinite(self.precision) and self.precision > 0):
            raise ValueError(f"precision must be positive, got {self.precision}")
        object.__setattr__(self, "kernel_size", f)
        object.__setattr__(self, "centers", centers)
        object.__setattr__(self, "precision", float(self.precision))
        object.__setattr__(self, "n_filters", n)

    @property
    def filter_shape(self) -> tuple:
        """``(F, F)``, or ``(depth, F, F)`` for volume models."""
        f = self.kernel_size
        return (f, f) if self.depth is None else (self.depth, f, f)

    @property
    def ndim(self) -> int:
        return len(self.filter_shape)

    @property
    def n_coefficients(self) -> int:
        """DCT coefficients per filter, ``kernel_size**2 - 1`` (``depth F**2 - 1`` in 3-D)."""
        return int(np.prod(self.filter_shape)) - 1

    @property
    def n_rbf(self) -> int:
        """Number of RBF centres ``J``."""
        return self.centers.size

    @property
    def radius(self) -> int:
        return self.kernel_size // 2

    @property
    def stage_size(self) -> int:
        """Length of one stage in the flat parameter vector."""
        return self.n_filters * (self.n_coefficients + self.n_rbf) + 1

    @classmethod
    def from_model(cls, model: TRDModel) -> TrainingSpec:
        """The spec of ``model`` (filter shape and count, RBF grid)."""
        return cls(model.kernel_size, model.centers, model.precision, model.n_filters,
                   model.depth if model.ndim == 3 else None)


class StageParams(NamedTuple):
    """Training parameters of one stage."""

    coefficients: np.ndarray  # (N, m) DCT coefficients of the (unnormalised) filters
    weights: np.ndarray  # (N, J) RBF weights
    log_lambda: float  # theta = log(lambda)


class StageGradient(NamedTuple):
    """Gradient of a loss with respect to one stage's parameters and its input ``u_{t-1}``.

    ``u`` is ``None`` when the input gradient was not asked for.
    """

    coefficients: np.ndarray
    weights: np.ndarray
    log_lambda: float
    u: np.ndarray | None


def pack_params(stages) -> np.ndarray:
    """Concatenate stages into one flat float64 vector.

    Parameters
    ----------
    stages : sequence of StageParams (or of (coefficients, weights, log_lambda))

    Returns
    -------
    ndarray, shape (n_stages * spec.stage_size,)
        Per stage: ``coefficients.ravel()``, ``weights.ravel()``, ``log_lambda``.
    """
    parts = []
    for a, w, theta in stages:
        parts += [np.ravel(a), np.ravel(w), [float(theta)]]
    return np.concatenate(parts).astype(np.float64)


def unpack_params(vector, spec: TrainingSpec) -> list:
    """Split a flat vector written by :func:`pack_params` into a list of :class:`StageParams`.

    The arrays are copies. Raises ``ValueError`` if the length is not a
    positive multiple of ``spec.stage_size``.
    """
    vector = np.asarray(vector, dtype=np.float64).reshape(-1)
    size = spec.stage_size
    if vector.size == 0 or vector.size % size:
        raise ValueError(
            f"parameter vector of length {vector.size} is not a positive multiple of the "
            f"stage size {size} (n_filters={spec.n_filters}, m={spec.n_coefficients}, "
            f"J={spec.n_rbf})"
        )
    N, m, J = spec.n_filters, spec.n_coefficients, spec.n_rbf
    stages = []
    for t in range(vector.size // size):
        s = vector[t * size : (t + 1) * size]
        stages.append(
            StageParams(
                s[: N * m].reshape(N, m).copy(),
                s[N * m : N * (m + J)].reshape(N, J).copy(),
                float(s[-1]),
            )
        )
    return stages


def _stage_list(params, spec):
    if isinstance(params, np.ndarray) and params.ndim == 1:
        return unpack_params(params, spec)
    return [StageParams(np.asarray(a, float), np.asarray(w, float), float(t)) for a, w, t in params]


def params_to_model(params, spec: TrainingSpec, *, sigma, name="unnamed", metadata=None):
    """Build the :class:`~skimage_trd.TRDModel` (denoising) that a parameter set defines.

    Parameters
    ----------
    params : ndarray (flat vector) or sequence of StageParams
    spec : TrainingSpec
    sigma : float
        Noise level on the [0, 255] scale the model is trained for.
    name : str, optional
    metadata : dict, optional

    Returns
    -------
    TRDModel
        Filters ``filters_from_coefficients(a)`` (unit norm), the weights, and
        ``lambdas = exp(log_lambda)``.
    """
    stages = _stage_list(params, spec)
    return TRDModel(
        filters=np.stack([filters_from_coefficients(s.coefficients, spec.filter_shape)
                          for s in stages]),
        weights=np.stack([s.weights for s in stages]),
        centers=spec.centers,
        precision=spec.precision,
        lambdas=np.exp([s.log_lambda for s in stages]),
        task="denoise",
        sigma=sigma,
        name=name,
        metadata={} if metadata is None else metadata,
    )


def model_to_params(model: TRDModel, *, atol=1e-8):
    """Parameters of a model: the inverse of :func:`params_to_model`.

    The coefficients are the projections of the (unit-norm) filters onto the DCT
    basis, so ``params_to_model(model_to_params(model))`` reproduces ``model``
    when its filters are zero-mean.

    Parameters
    ----------
    model : TRDModel
        A denoising model with positive ``lambdas``, or a deblocking model
        (no reaction term: its unused ``log_lambda`` parameters are 0).
    atol : float, optional
        Largest allowed residual of a filter outside the span of the basis
        (relative to the filter's norm).

    Returns
    -------
    params : ndarray
        Flat float64 vector (:func:`pack_params` layout).
    spec : TrainingSpec

    Raises
    ------
    ValueError
        If a denoising model's lambda is not positive, or a
        filter has a nonzero mean (it cannot be expressed in the zero-mean basis).
    """
    if model.task not in ("denoise", "deblock"):
        raise ValueError(f"unknown model task {model.task!r}")
    lambdas = np.ones(model.n_stages) if model.task == "deblock" else model.lambdas
    if model.task == "denoise" and (lambdas is None or np.any(lambdas <= 0)):
        raise ValueError(f"lambdas must be positive to take their log, got {model.lambdas}")
    spec = TrainingSpec.from_model(model)
    basis = dct_filter_basis(spec.filter_shape)
    axes = tuple(range(1, spec.ndim + 1))
    stages = []
    for t in range(model.n_stages):
        k = model.filters[t]
        norm = np.sqrt(np.sum(k**2, axis=axes))
        a = np.tensordot(k, basis, axes=(axes, axes))  # (N, m)
        residual = k - np.tensordot(a, basis, axes=([1], [0]))
        bad = np.sqrt(np.sum(residual**2, axis=axes)) > atol * np.maximum(norm, 1e-300)
        if np.any(bad):
            raise ValueError(
                f"stage {t}: filters {np.flatnonzero(bad).tolist()} are not zero-mean, so they "
                "cannot be written in the zero-mean DCT basis"
            )
        stages.append(StageParams(a, model.weights[t].copy(), float(np.log(lambdas[t]))))
    return pack_params(stages), spec


# ------------------------------------------------------------------------- NumPy reference
def pad_symmetric_adjoint(padded_grad, pad, shape):
    """Adjoint of ``np.pad(u, pad, mode='symmetric')``: fold a padded gradient back onto ``u``.

    Every pixel of the padded image is a copy of one pixel of ``u`` (for pad
    widths beyond the image size, NumPy reflects repeatedly); its gradient is
    added onto that pixel.

    Parameters
    ----------
    padded_grad : ndarray, shape (H + 2 pad, W + 2 pad)
    pad : int
    shape : (int, int)
        ``(H, W)``.

    Returns
    -------
    ndarray, shape (H, W)
    """
    H, W = shape
    rows = np.pad(np.arange(H), pad, mode="symmetric")  # source row of each padded row
    cols = np.pad(np.arange(W), pad, mode="symmetric")
    folded_rows = np.zeros((H, padded_grad.shape[1]), dtype=padded_grad.dtype)
    np.add.at(folded_rows, rows, padded_grad)
    out = np.zeros((H, W), dtype=padded_grad.dtype)
    np.add.at(out.T, cols, folded_rows.T)
    return out


def _filters_and_norms(coefficients, kernel_size):
    """Unit-norm filters ``k = c / ||c||`` and the norms; ``kernel_size`` an int (2-D) or the
    filter shape."""
    c = filters_from_coefficients(np.asarray(coefficients, np.float64), kernel_size,
                                  normalize=False)
    axes = tuple(range(1, c.ndim))
    norm = np.sqrt(np.sum(c**2, axis=axes))
    return c / norm.reshape((-1,) + (1,) * len(axes)), norm


def _filter_grad_to_coefficients(filter_grad, coefficients, kernel_size):
    """Chain rule through ``k = c / ||c||``, ``c = sum_c a_c B_c``: dL/dk -> dL/da."""
    k, norm = _filters_and_norms(coefficients, kernel_size)
    dk = np.asarray(filter_grad, dtype=np.float64).reshape(k.shape)
    axes = tuple(range(1, k.ndim))
    expand = (-1,) + (1,) * len(axes)
    proj = np.sum(k * dk, axis=axes)
    dc = (dk - k * proj.reshape(expand)) / norm.reshape(expand)
    return np.tensordot(dc, dct_filter_basis(kernel_size), axes=(axes, axes))


def stage_forward_reference(u, f, params, spec):
    """One stage ``u_t`` from ``u = u_{t-1}`` and the input ``f`` (NumPy, one 2-D image).

    Parameters
    ----------
    u, f : ndarray, shape (H, W)
    params : StageParams
    spec : TrainingSpec

    Returns
    -------
    ndarray, shape (H, W)
        ``u - (sum_i kbar_i * phi_i(k_i * pad(u)) + exp(log_lambda) (u - f))``,
        computed by :func:`skimage_trd.kernels.reference.diffusion_reference`.
    """
    a, w, theta = params
    k, _ = _filters_and_norms(a, spec.kernel_size)
    d = diffusion_reference(u, k, np.asarray(w, np.float64), spec.centers, spec.precision)
    return u - (d + math.exp(theta) * (u - f))


def stage_backward_reference(u, f, grad_out, params, spec):
    """Gradient of one stage (NumPy reference, one 2-D image, float64).

    Parameters
    ----------
    u : ndarray, shape (H, W)
        Stage input ``u_{t-1}``.
    f : ndarray, shape (H, W)
        The noisy input (constant data).
    grad_out : ndarray, shape (H, W)
        ``g = dL/du_t``.
    params : StageParams
        ``(coefficients (N, m), weights (N, J), log_lambda)``.
    spec : TrainingSpec

    Returns
    -------
    StageGradient
        ``dL/dcoefficients`` (N, m), ``dL/dweights`` (N, J),
        ``dL/dlog_lambda`` and ``dL/du_{t-1}`` (H, W).
    """
    u = np.asarray(u, np.float64)
    f = np.asarray(f, np.float64)
    g = np.asarray(grad_out, np.float64)
    a, w, theta = params
    w = np.asarray(w, np.float64)
    F, beta, mu = spec.kernel_size, spec.precision, spec.centers
    p = 2 * (F // 2)
    lam = math.exp(theta)
    filters, _ = _filters_and_norms(a, F)

    P = np.pad(u, p, mode="symmetric")  # pad(u_{t-1})
    Gd = np.pad(-g, p)  # dL/d(diffusion term) = -g, zero-padded
    dP = np.zeros_like(P)  # dL/dP
    dk = np.zeros_like(filters)
    dw = np.zeros_like(w)
    for i, k in enumerate(filters):
        z = correlate_valid(P, k)  # responses z_i = k_i * P
        phi, dphi = influence_and_derivative(z.ravel(), w[i : i + 1], mu, beta)
        v, dphi = phi.reshape(z.shape), dphi.reshape(z.shape)
        e = correlate_valid(Gd, k)  # dL/dv_i: adjoint of the kbar_i correlation
        G = np.exp(-0.5 * beta * (z.ravel()[None, :] - mu[:, None]) ** 2)  # (J, n_q)
        dw[i] = G @ e.ravel()
        s = e * dphi  # dL/dz_i
        dk[i] = correlate_valid(P, s) + correlate_valid(Gd, v)
        dP += correlate_valid(np.pad(s, p), k[::-1, ::-1])  # adjoint of correlation with k_i
    du = (1.0 - lam) * g + pad_symmetric_adjoint(dP, p, u.shape)
    dtheta = -lam * float(np.sum(g * (u - f)))
    return StageGradient(_filter_grad_to_coefficients(dk, a, F), dw, dtheta, du)


# ---------------------------------------------------------------------------- Numba kernels
@njit(cache=True, parallel=True)
def _pad_batch(u, p, P):
    # P[b] = np.pad(u[b], p, mode='symmetric')
    B, H, W = u.shape
    for b in prange(B):
        for y in range(H + 2 * p):
            sy = _mirror(y - p, H)
            for x in range(W + 2 * p):
                P[b, y, x] = u[b, sy, _mirror(x - p, W)]


@njit(cache=True, parallel=True)
def _pad_negated_adjoint(g, p, Gd):
    # Gd[b] = np.pad(-g[b], p) (zeros outside)
    B, H, W = g.shape
    for b in prange(B):
        Gd[b, :p, :] = 0.0
        Gd[b, p + H :, :] = 0.0
        Gd[b, :, :p] = 0.0
        Gd[b, :, p + W :] = 0.0
        for y in range(H):
            for x in range(W):
                Gd[b, y + p, x + p] = -g[b, y, x]


@njit(cache=True, parallel=True)
def _fold_batch(dP, p, g, one_minus_lam, du):
    # du[b] = (1 - lam) g[b] + pad^T(dP[b])
    B, H, W = du.shape
    for b in prange(B):
        for y in range(H):
            for x in range(W):
                du[b, y, x] = one_minus_lam * g[b, y, x]
        for y in range(H + 2 * p):
            sy = _mirror(y - p, H)
            for x in range(W + 2 * p):
                du[b, sy, _mirror(x - p, W)] += dP[b, y, x]


@njit(cache=True, fastmath=True, inline="always")
def _exp_small(a):
    # exp(a) for |a| <= 1/16: Taylor polynomial of degree 9 (remainder < 3e-19 relative)
    p = 1.0 + a * (1.0 / 9)
    p = 1.0 + a * (1.0 / 8) * p
    p = 1.0 + a * (1.0 / 7) * p
    p = 1.0 + a * (1.0 / 6) * p
    p = 1.0 + a * (1.0 / 5) * p
    p = 1.0 + a * (1.0 / 4) * p
    p = 1.0 + a * (1.0 / 3) * p
    p = 1.0 + a * (1.0 / 2) * p
    return 1.0 + a * p


@njit(cache=True, fastmath=True)
def _rbf_prepass(z, mu0, delta, K, J, half_beta, beta_delta, n_squarings, jrow, dd, g0, t, tinv):
    """Per response of one row: nearest-centre row index and the Gaussian factors.

    With ``n`` the centre nearest to ``z`` (virtual centres ``-K .. J-1+K``
    with zero weight allowed) and ``d = z - mu_n``, ``|d| <= delta / 2``::

        G_{n+k}(z) = g0 c_k t**k,  g0 = exp(-beta/2 d**2),  t = exp(beta delta d),
        c_k = exp(-beta/2 (k delta)**2).

    ``jrow = n + K`` indexes the tables of :func:`_rbf_tables`. Responses
    further than ``K + 1/2`` spacings beyond the grid get ``g0 = 0``. The
    exponentials are Taylor polynomials of the argument scaled by
    ``2**-n_squarings`` (at most 1/16 in size), squared back: no calls, so the
    loops vectorise.
    """
    scale = 0.5**n_squarings
    n_lo = -K
    n_hi = J - 1 + K
    inv_delta = 1.0 / delta
    for x in range(z.size):
        zz = np.float64(z[x])
        nf = np.floor((zz - mu0) * inv_delta + 0.5)
        inside = (nf >= n_lo) & (nf <= n_hi)
        nf = min(max(nf, n_lo), n_hi)
        d = zz - (mu0 + nf * delta)
        d = d if inside else 0.0
        jrow[x] = np.int64(nf) + K
        dd[x] = d
        pa = _exp_small(-half_beta * d * d * scale)
        pr = _exp_small(beta_delta * d * scale)
        g0[x] = pa if inside else 0.0
        t[x] = pr
    for _ in range(n_squarings):
        for x in range(z.size):
            g0[x] *= g0[x]
            t[x] *= t[x]
    for x in range(z.size):
        tinv[x] = 1.0 / t[x]


@njit(cache=True, fastmath=True)
def _rbf_powers(z, mu0, delta, K, J, half_beta, beta_delta, n_squarings, jrow, dd, g0, t, tinv,
                pw):
    """Pre-pass plus the powers ``pw[x, k + K] = g0 t**k = G_{n+k}(z_x) / c_k``, k = -K..K."""
    _rbf_prepass(z, mu0, delta, K, J, half_beta, beta_delta, n_squarings, jrow, dd, g0, t, tinv)
    for x in range(z.size):
        pw[x, K] = g0[x]
    for kk in range(1, K + 1):
        for x in range(z.size):
            pw[x, K + kk] = pw[x, K + kk - 1] * t[x]
            pw[x, K - kk] = pw[x, K - kk + 1] * tinv[x]


@njit(cache=True, fastmath=True)
def _correlate_rows(P, b, q, k, z):
    """``z[x] = sum_ab k[a, b] P[b, q + a, x + b]``: one row of 'valid' responses."""
    F = k.shape[0]
    z[:] = 0.0
    for a in range(F):
        prow = P[b, q + a]
        for bb in range(F):
            kab = k[a, bb]
            for x in range(z.size):
                z[x] += kab * prow[x + bb]


@njit(cache=True, parallel=True, fastmath=True)
def _stage_forward_kernel(P, filters, wc_tab, mu0, delta, beta, K, J, n_squarings, strip, phase,
                          D):
    """Diffusion term of one stage over a batch, for the strips of one parity.

    Adds ``k_i[a, b] phi_i(z_i[q])`` to ``D[b, q + (a, b)]`` for every response
    ``q`` of the strips ``s % 2 == phase`` (``D`` has the shape of ``P``; its
    interior ``D[:, F-1:-(F-1), F-1:-(F-1)]`` is ``sum_i kbar_i * v_i``).
    """
    B, Hp, Wp = P.shape
    N, F, _ = filters.shape
    Hz = Hp - F + 1
    Wz = Wp - F + 1
    n_strips = (Hz + strip - 1) // strip
    n_ph = (n_strips - phase + 1) // 2
    half_beta = 0.5 * beta
    beta_delta = beta * delta
    L = 2 * K + 1
    for item in prange(B * n_ph):
        b = item // n_ph
        q0 = (2 * (item % n_ph) + phase) * strip
        hq = min(strip, Hz - q0)
        z = np.empty(Wz, dtype=P.dtype)
        v = np.empty(Wz, dtype=P.dtype)
        jrow = np.empty(Wz, dtype=np.int64)
        dd = np.empty(Wz)
        g0 = np.empty(Wz)
        t = np.empty(Wz)
        tinv = np.empty(Wz)
        pw = np.empty((Wz, L))
        for yy in range(hq):
            q = q0 + yy
            for i in range(N):
                k = filters[i]
                _correlate_rows(P, b, q, k, z)
                _rbf_powers(z, mu0, delta, K, J, half_beta, beta_delta, n_squarings,
                            jrow, dd, g0, t, tinv, pw)
                wci = wc_tab[i]
                for x in range(Wz):
                    wc = wci[jrow[x]]
                    px = pw[x]
                    phi = 0.0
                    for kk in range(L):
                        phi += wc[kk] * px[kk]
                    v[x] = phi
                for a in range(F):
                    drow = D[b, q + a]
                    for bb in range(F):
                        kab = k[a, bb]
                        for x in range(Wz):
                            drow[x + bb] += kab * v[x]


@njit(cache=True, parallel=True)
def _finish_forward(D, p, u, f, lam, out):
    # out = u - (interior of D + lam (u - f))
    B, H, W = u.shape
    for b in prange(B):
        for y in range(H):
            drow = D[b, y + p]
            for x in range(W):
                uv = u[b, y, x]
                out[b, y, x] = uv - (drow[x + p] + lam * (uv - f[b, y, x]))


@njit(cache=True, parallel=True, fastmath=True)
def _stage_grad_kernel(P, Gd, filters, wc_tab, wd_tab, mu0, delta, beta, K, J, n_squarings,
                       strip, phase, need_dP, dP, dk_acc, m_acc):
    """Backward pass of one stage over a batch, for the strips of one parity.

    ``P`` holds the padded stage inputs, ``Gd`` the zero-padded ``-g``. The
    response grid (``Hp - F + 1`` rows) is cut into strips of ``strip >= F - 1``
    rows; this call handles the strips ``s`` with ``s % 2 == phase``, whose
    ``dP`` rows (``F - 1`` beyond the strip) do not overlap. Parameter
    gradients go to per-thread float64 accumulators: ``dk_acc[tid]`` (filters)
    and ``m_acc[tid]``, the moments ``M[i, n + K, k + K] = sum e g0 t**k`` over
    the responses nearest to centre ``n``, from which :func:`_moments_to_weights`
    forms the weight gradient. ``wc_tab``/``wd_tab`` are the tables of
    :func:`_rbf_tables`.
    """
    B, Hp, Wp = P.shape
    N, F, _ = filters.shape
    Hz = Hp - F + 1
    Wz = Wp - F + 1
    n_strips = (Hz + strip - 1) // strip
    n_ph = (n_strips - phase + 1) // 2
    half_beta = 0.5 * beta
    beta_delta = beta * delta
    L = 2 * K + 1
    for item in prange(B * n_ph):
        tid = numba.get_thread_id()
        b = item // n_ph
        q0 = (2 * (item % n_ph) + phase) * strip
        hq = min(strip, Hz - q0)
        z = np.empty(Wz, dtype=P.dtype)
        e = np.empty(Wz, dtype=P.dtype)
        v = np.empty(Wz, dtype=P.dtype)
        s = np.empty(Wz, dtype=P.dtype)
        jrow = np.empty(Wz, dtype=np.int64)
        dd = np.empty(Wz)
        g0 = np.empty(Wz)
        t = np.empty(Wz)
        tinv = np.empty(Wz)
        pw = np.empty((Wz, L))
        for yy in range(hq):
            q = q0 + yy
            for i in range(N):
                k = filters[i]
                # z = k_i * P (responses), e = k_i * Gd (adjoint of the kbar_i pass)
                z[:] = 0.0
                e[:] = 0.0
                for a in range(F):
                    prow = P[b, q + a]
                    grow = Gd[b, q + a]
                    for bb in range(F):
                        kab = k[a, bb]
                        for x in range(Wz):
                            z[x] += kab * prow[x + bb]
                            e[x] += kab * grow[x + bb]
                # v = phi(z), s = e phi'(z) and the moments of dL/dw: exact RBF sums over
                # the 2K + 1 centres around the nearest one
                _rbf_powers(z, mu0, delta, K, J, half_beta, beta_delta, n_squarings,
                            jrow, dd, g0, t, tinv, pw)
                wci = wc_tab[i]
                wdi = wd_tab[i]
                mi = m_acc[tid, i]
                for x in range(Wz):
                    ex = np.float64(e[x])
                    row = jrow[x]
                    wc = wci[row]
                    wd = wdi[row]
                    px = pw[x]
                    phi = 0.0
                    dsum = 0.0
                    for kk in range(L):
                        phi += wc[kk] * px[kk]
                        dsum += wd[kk] * px[kk]
                    mm = mi[row]
                    for kk in range(L):
                        mm[kk] += ex * px[kk]
                    v[x] = phi
                    s[x] = -beta * ex * (dd[x] * phi + dsum)
                # dL/dk_i[a, b] += sum_x s[x] P[q + a, x + b] + v[x] Gd[q + a, x + b]
                # dL/dP[q + a, x + b] += k_i[a, b] s[x]
                dki = dk_acc[tid, i]
                for a in range(F):
                    prow = P[b, q + a]
                    grow = Gd[b, q + a]
                    drow = dP[b, q + a] if need_dP else prow
                    for bb in range(F):
                        acc = P.dtype.type(0.0)
                        if need_dP:
                            kab = k[a, bb]
                            for x in range(Wz):
                                sx = s[x]
                                acc += sx * prow[x + bb] + v[x] * grow[x + bb]
                                drow[x + bb] += kab * sx
                        else:
                            for x in range(Wz):
                                acc += s[x] * prow[x + bb] + v[x] * grow[x + bb]
                        dki[a, bb] += acc


def _rbf_tables(weights, spec, K):
    """Tables ``wc[i, n + K, k + K] = w_i[n + k] c_k`` and ``wd = wc (-k delta)``.

    ``n`` runs over the virtual centres ``-K .. J-1+K`` and ``k`` over
    ``-K .. K``; entries with ``n + k`` outside ``0 .. J-1`` are zero.
    Also returns ``c_k = exp(-beta/2 (k delta)**2)``.
    """
    N, J = weights.shape
    delta = float(spec.centers[1] - spec.centers[0])
    n = np.arange(-K, J + K)
    k = np.arange(-K, K + 1)
    j = n[:, None] + k[None, :]
    valid = (j >= 0) & (j < J)
    c = np.exp(-0.5 * spec.precision * (k * delta) ** 2)
    wc = np.where(valid, weights[:, np.clip(j, 0, J - 1)] * c, 0.0)
    wd = wc * (-k * delta)
    return np.ascontiguousarray(wc), np.ascontiguousarray(wd), c


def _moments_to_weights(moments, c, K):
    """``dL/dw_ij = sum_k c_k M[i, j - k + K, k + K]`` from the kernel's moments."""
    N, n_rows, _ = moments.shape
    J = n_rows - 2 * K
    dw = np.zeros((N, J))
    for kk in range(-K, K + 1):
        # rows n + K with n = j - kk for j in 0 .. J-1
        dw += c[kk + K] * moments[:, K - kk : K - kk + J, kk + K]
    return dw


def _n_squarings(spec):
    # scale the largest exponent, beta delta**2 / 2, to at most 1/16
    bd2 = spec.precision * float(spec.centers[1] - spec.centers[0]) ** 2
    return max(0, int(math.ceil(math.log2(max(bd2 * 8.0, 1e-300)))))


# ------------------------------------------------------------------------------ batch API
def _as_batch(images, name, dtype=None):
    if isinstance(images, np.ndarray):
        arr = images
    else:
        images = list(images)
        if not images:
            raise ValueError(f"{name} is empty")
        shapes = {np.shape(im) for im in images}
        if len(shapes) != 1:
            raise ValueError(f"{name}: all images must have the same shape, got {sorted(shapes)}")
        arr = np.stack([np.asarray(im) for im in images])
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise ValueError(f"{name} must be a 2-D image, a 3-D (image, row, column) array or a "
                         f"list of equal-sized 2-D images; got shape {arr.shape}")
    if dtype is None:
        dtype = arr.dtype if arr.dtype in (np.float32, np.float64) else np.float64
    return np.ascontiguousarray(arr, dtype=dtype)


def _reach_terms(spec, dtype, rbf_reach):
    if rbf_reach is None:
        rbf_reach = RBF_REACH if np.dtype(dtype) == np.float64 else RBF_REACH_FLOAT32
    delta = float(spec.centers[1] - spec.centers[0])
    return int(math.ceil(rbf_reach / math.sqrt(spec.precision) / delta))


def _check_backend(backend):
    if backend not in ("numba", "numpy"):
        raise ValueError(f"unknown backend {backend!r}; choose 'numba' or 'numpy'")


def stage_forward(u, f, params, spec, *, backend="numba", rbf_reach=None, _strip=STRIP,
                  _chunk=CHUNK):
    """One stage applied to a batch.

    Parameters
    ----------
    u, f : ndarray, shape (B, H, W) or (H, W), or list of equal-sized 2-D images
        Stage input ``u_{t-1}`` and noisy input ``f``; float32 or float64
        (the dtype of ``u`` is the compute dtype; other dtypes become float64).
    params : StageParams
    spec : TrainingSpec
    backend : {'numba', 'numpy'}
    rbf_reach : float, optional
        RBF widths summed for ``phi`` (Numba); default 10 in float64, 6 in float32.

    Returns
    -------
    ndarray, shape (B, H, W)
    """
    _check_backend(backend)
    u = _as_batch(u, "u")
    f = _as_batch(f, "f", u.dtype)
    if f.shape != u.shape:
        raise ValueError(f"u and f must have the same shape, got {u.shape} and {f.shape}")
    a, w, theta = params
    if backend == "numpy":
        return np.stack([stage_forward_reference(ub, fb, params, spec) for ub, fb in zip(u, f)])
    dtype = u.dtype
    F = spec.kernel_size
    p = 2 * spec.radius
    k, _ = _filters_and_norms(a, F)
    k = np.ascontiguousarray(k, dtype=dtype)
    K = _reach_terms(spec, dtype, rbf_reach)
    wc_tab, _, _ = _rbf_tables(np.asarray(w, np.float64), spec, K)
    mu0 = float(spec.centers[0])
    delta = float(spec.centers[1] - spec.centers[0])
    n_sq = _n_squarings(spec)
    strip = max(int(_strip), F - 1, 1)
    B, H, W = u.shape
    out = np.empty_like(u)
    lam = dtype.type(math.exp(theta))
    chunk = max(1, int(_chunk))
    P = D = None
    for b0 in range(0, B, chunk):
        b1 = min(B, b0 + chunk)
        if P is None or P.shape[0] != b1 - b0:
            P = np.empty((b1 - b0, H + 2 * p, W + 2 * p), dtype=dtype)
            D = np.empty_like(P)
        _pad_batch(u[b0:b1], p, P)
        D[:] = 0.0
        for phase in (0, 1):
            _stage_forward_kernel(P, k, wc_tab, mu0, delta, spec.precision, K, spec.n_rbf, n_sq,
                                  strip, phase, D)
        _finish_forward(D, p, u[b0:b1], f[b0:b1], lam, out[b0:b1])
    return out


def _projected(params, projection):
    """Deblocking (Eq. 9) stages have no reaction term: lambda = exp(-inf) = 0."""
    if projection is None:
        return params
    return [StageParams(p.coefficients, p.weights, -math.inf) for p in params]


def _step(u, f, params, spec, projection, **kw):
    """One stage, then the projection if any: (u_t, masks its adjoint needs or None)."""
    v = stage_forward(u, f, params, spec, **kw)
    if projection is None:
        return v, None
    u_t, *masks = projection.project(v)
    return u_t, masks


def forward_batch(noisy, params, spec, *, backend="numba", rbf_reach=None,
                  return_all=False, projection=None):
    """Run the stages of ``params`` on a batch of noisy images (``u_0 = f``).

    Parameters
    ----------
    noisy : ndarray, shape (B, H, W) or (H, W), or list of equal-sized 2-D images
    params : ndarray (flat vector) or sequence of StageParams
    spec : TrainingSpec
    backend : {'numba', 'numpy'}
    rbf_reach : float, optional
        See :func:`stage_forward`.
    return_all : bool, optional
        Return the list ``[u_0, u_1, ..., u_T]`` instead of ``u_T``.
    projection : BatchProjection, optional
        Deblocking (Eq. 9): no reaction term, every stage ends in this
        projection (:class:`skimage_trd.train.gradients_cupy.BatchProjection`).

    Returns
    -------
    ndarray, shape (B, H, W), or list of them
    """
    f = _as_batch(noisy, "noisy")
    us = [f]
    for st in _projected(_stage_list(params, spec), projection):
        us.append(_step(us[-1], f, st, spec, projection, backend=backend, rbf_reach=rbf_reach)[0])
    return us if return_all else us[-1]


def stage_gradient(u, f, grad_out, params, spec, *, backend="numba", input_grad=True,
                   rbf_reach=None, _strip=STRIP, _chunk=CHUNK):
    """Gradient of one stage for a batch, parameter gradients summed over the batch.

    Parameters
    ----------
    u : ndarray, shape (B, H, W) or (H, W), or list of equal-sized 2-D images
        Stage inputs ``u_{t-1}``; float32 or float64 sets the compute dtype
        (other dtypes are computed in float64).
    f : same shape as ``u``
        Noisy inputs (constant data).
    grad_out : same shape as ``u``
        ``g = dL/du_t`` for every image.
    params : StageParams
    spec : TrainingSpec
    backend : {'numba', 'numpy'}
        ``'numpy'`` loops :func:`stage_backward_reference` over the images.
    input_grad : bool, optional
        Also return ``dL/du_{t-1}`` (needed to backpropagate to earlier
        stages); skipping it saves about a fifth of the work.
    rbf_reach : float, optional
        RBF widths around ``z`` summed exactly (Numba); default 10 in float64
        (terms dropped are below 2e-22 of a weight), 6 in float32 (below 2e-8).

    Returns
    -------
    StageGradient
        Parameter gradients as float64; ``u`` in the compute dtype, shape
        (B, H, W), or ``None`` if ``input_grad`` is false.

    Notes
    -----
    The Numba kernel runs in parallel over (image, strip of response rows)
    pairs, even strips then odd ones so that their input-gradient rows never
    overlap, with per-thread float64 accumulators for the parameter gradients.
    Images are processed ``_chunk`` at a time to bound the padded buffers.
    """
    _check_backend(backend)
    u = _as_batch(u, "u")
    dtype = u.dtype
    f = _as_batch(f, "f", dtype)
    g = _as_batch(grad_out, "grad_out", dtype)
    if not (u.shape == f.shape == g.shape):
        raise ValueError(f"u, f and grad_out must have the same shape, got {u.shape}, "
                         f"{f.shape} and {g.shape}")
    a, w, theta = params
    a = np.asarray(a, np.float64)
    w = np.asarray(w, np.float64)
    N, m, J = spec.n_filters, spec.n_coefficients, spec.n_rbf
    if a.shape != (N, m) or w.shape != (N, J):
        raise ValueError(f"expected coefficients {(N, m)} and weights {(N, J)}, got "
                         f"{a.shape} and {w.shape}")
    if backend == "numpy":
        da, dw, dth = np.zeros((N, m)), np.zeros((N, J)), 0.0
        du = np.empty_like(u) if input_grad else None
        for b in range(u.shape[0]):
            gr = stage_backward_reference(u[b], f[b], g[b], StageParams(a, w, theta), spec)
            da += gr.coefficients
            dw += gr.weights
            dth += gr.log_lambda
            if input_grad:
                du[b] = gr.u
        return StageGradient(da, dw, dth, du)

    F = spec.kernel_size
    p = 2 * spec.radius
    lam = math.exp(theta)
    k, _ = _filters_and_norms(a, F)
    k_c = np.ascontiguousarray(k, dtype=dtype)
    K = _reach_terms(spec, dtype, rbf_reach)
    mu0 = float(spec.centers[0])
    delta = float(spec.centers[1] - spec.centers[0])
    strip = max(int(_strip), F - 1, 1)
    n_threads = numba.get_num_threads()
    wc_tab, wd_tab, c = _rbf_tables(w, spec, K)
    dk_acc = np.zeros((n_threads, N, F, F))
    m_acc = np.zeros((n_threads, N, J + 2 * K, 2 * K + 1))
    n_sq = _n_squarings(spec)
    B, H, W = u.shape
    du = np.empty_like(u) if input_grad else None
    chunk = max(1, int(_chunk))
    P = Gd = dP = None
    for b0 in range(0, B, chunk):
        b1 = min(B, b0 + chunk)
        n = b1 - b0
        if P is None or P.shape[0] != n:
            P = np.empty((n, H + 2 * p, W + 2 * p), dtype=dtype)
            Gd = np.empty_like(P)
            dP = np.empty_like(P) if input_grad else np.empty((1, 1, 1), dtype=dtype)
        _pad_batch(u[b0:b1], p, P)
        _pad_negated_adjoint(g[b0:b1], p, Gd)
        if input_grad:
            dP[:] = 0.0
        for phase in (0, 1):
            _stage_grad_kernel(P, Gd, k_c, wc_tab, wd_tab, mu0, delta, spec.precision, K, J,
                               n_sq, strip, phase, input_grad, dP, dk_acc, m_acc)
        if input_grad:
            _fold_batch(dP, p, g[b0:b1], dtype.type(1.0 - lam), du[b0:b1])
    dth = -lam * float(np.sum(g * (u - f), dtype=np.float64))
    da = _filter_grad_to_coefficients(dk_acc.sum(axis=0), a, F)
    return StageGradient(da, _moments_to_weights(m_acc.sum(axis=0), c, K), dth, du)


def loss_and_grad(params, noisy, clean, spec, *, stages="all", backend="numba", fixed=None,
                  u_start=None, rbf_reach=None, projection=None, weights=None):
    """Training loss ``1/2 sum_b ||u_T - u_gt||**2`` and its gradient, for scipy's L-BFGS.

    Parameters
    ----------
    params : ndarray, shape (n * spec.stage_size,)
        Flat float64 parameters being trained (:func:`pack_params` layout):
        all ``n`` stages of the model when ``stages='all'``, the single last
        stage when ``stages='last'``.
    noisy, clean : ndarray, shape (B, H, W) or (H, W), or lists of equal-sized 2-D images
        Training pairs on the [0, 255] scale; the dtype of ``noisy`` (float32 or
        float64) is the compute dtype.
    spec : TrainingSpec
    stages : {'all', 'last'}
        ``'all'``: joint training (Eq. 11), gradient through every stage.
        ``'last'``: greedy training (Eq. 4) of one stage appended to the fixed
        stages ``fixed``; only that stage's gradient is returned.
    backend : {'numba', 'numpy'}
    fixed : ndarray or sequence of StageParams, optional
        ``stages='last'`` only: the earlier, fixed stages (none by default).
    u_start : ndarray, optional
        ``stages='last'`` only: the output of the fixed stages on ``noisy``
        (:func:`forward_batch`), to avoid recomputing it at every evaluation;
        overrides ``fixed``.
    rbf_reach : float, optional
        See :func:`stage_gradient`.
    projection : BatchProjection, optional
        Deblocking: see :func:`forward_batch`; its adjoint is applied before
        each stage's backward pass, and the unused ``log_lambda`` gets a zero
        gradient.
    weights : ndarray of 0 and 1, shape of ``noisy``, optional
        The loss of the pixels of weight 1 alone (:func:`mse_loss`).

    Returns
    -------
    loss : float
    grad : ndarray, float64, same shape as ``params``

    Notes
    -----
    Joint training keeps every ``u_t`` of the batch in memory.

    Examples
    --------
    >>> from functools import partial
    >>> from scipy.optimize import minimize
    >>> fun = partial(loss_and_grad, noisy=f, clean=x, spec=spec)   # doctest: +SKIP
    >>> res = minimize(fun, x0, jac=True, method="L-BFGS-B")         # doctest: +SKIP
    """
    if stages not in ("all", "last"):
        raise ValueError(f"stages must be 'all' or 'last', got {stages!r}")
    _check_backend(backend)
    f = _as_batch(noisy, "noisy")
    x = _as_batch(clean, "clean", f.dtype)
    if x.shape != f.shape:
        raise ValueError(f"noisy and clean must have the same shape, got {f.shape} and {x.shape}")
    kernels = KernelStages(f, spec, backend=backend, rbf_reach=rbf_reach, projection=projection)
    u0 = f
    if stages == "last":
        if u_start is not None:
            u0 = _as_batch(u_start, "u_start", f.dtype)
            if u0.shape != f.shape:
                raise ValueError(f"u_start must have the shape of noisy {f.shape}, "
                                 f"got {u0.shape}")
        elif fixed is not None and len(_stage_list(fixed, spec)):
            u0 = forward_batch(f, fixed, spec, backend=backend, rbf_reach=rbf_reach,
                               projection=projection)
    return backprop(kernels, params, spec, x, u0, stages=stages, weights=weights)


def sure_loss_and_grad(params, noisy, spec, *, sigma, stages="all", backend="numba", fixed=None,
                       seed=0, eps=None, rbf_reach=None):
    """Training loss without clean images: Monte-Carlo SURE (:func:`sure_backprop`) of the
    stages on the noisy batch, for Gaussian noise of standard deviation ``sigma`` ([0, 255]
    scale), and its gradient, as :func:`loss_and_grad` gives the clean-target loss.

    One probe ``b ~ N(0, I)`` drawn from ``seed`` (keep it fixed during an L-BFGS run: the loss
    must be a deterministic function of the parameters), step ``eps`` (default
    ``2 sigma / (H W)**0.3``, Deledalle et al. 2014, per image). ``fixed`` (greedy training):
    the earlier, fixed stages, run on ``y`` and on ``y + eps b``.
    """
    _check_backend(backend)
    y = _as_batch(noisy, "noisy")
    if not (np.isfinite(sigma) and sigma > 0):
        raise ValueError(f"sigma must be a positive number (the noise on the [0, 255] scale), "
                         f"got {sigma!r}")
    if eps is None:
        eps = divergence_epsilon(sigma, y.shape[1] * y.shape[2])
    probe = probe_rng(seed).standard_normal(y.shape).astype(y.dtype)
    yb = (y + y.dtype.type(eps) * probe).astype(y.dtype)
    kw = dict(backend=backend, rbf_reach=rbf_reach)
    backends = [KernelStages(d, spec, **kw) for d in (y, yb)]
    u0s = [y, yb]
    if stages == "last" and fixed is not None and len(_stage_list(fixed, spec)):
        u0s = [forward_batch(d, fixed, spec, **kw) for d in (y, yb)]
    return sure_backprop(backends, params, spec, y, u0s, sigma=float(sigma), probe=probe,
                         eps=float(eps), stages=stages)


# --------------------------------------------------------------------------- the one driver
class KernelStages:
    """The stages of a batch ``f`` with the Numba kernels (or the NumPy reference): the
    backend :func:`backprop` drives on the CPU (``gradients_cupy.GemmTrainer`` is the other).

    A backend provides ``xp`` (its array module), ``stage(params)`` (a stage prepared for it),
    ``stage_forward(stage, u) -> (u_t, saved)`` and
    ``stage_backward(stage, u, saved, g, input_grad) -> (StageParams gradient, dL/du or None)``,
    with ``g = dL/du_t``; a deblocking stage applies its projection in both (Eq. 9).
    """

    xp = np

    def __init__(self, f, spec, *, backend="numba", rbf_reach=None, projection=None):
        self.f, self.spec, self.projection = f, spec, projection
        self.kw = dict(backend=backend, rbf_reach=rbf_reach)

    def stage(self, params):
        return _projected([params], self.projection)[0]

    def stage_forward(self, stage, u):
        return _step(u, self.f, stage, self.spec, self.projection, **self.kw)

    def stage_backward(self, stage, u, saved, g, input_grad):
        if self.projection is not None:
            g = self.projection.adjoint(g, *saved)  # dL/du_t -> dL/dv_t
        gr = stage_gradient(u, self.f, g, stage, self.spec, input_grad=input_grad, **self.kw)
        d_log_lambda = 0.0 if self.projection is not None else gr.log_lambda  # unused there
        return StageParams(gr.coefficients, gr.weights, d_log_lambda), gr.u


class BatchTrainer:
    """What the matrix-form trainers (``gradients_cupy.GemmTrainer``, the volumes'
    ``gradients_volume.VolumeTrainer``) add to their stages: ``forward`` and ``loss_and_grad``
    on their batch (``f``, targets ``x``), through :func:`backprop`."""

    def forward(self, stages, u=None):
        """Outputs of the stages (list of StageParams) on the batch, starting from ``u``."""
        u = self.f if u is None else u
        for p in stages:
            u = self.stage_forward(self.stage(p), u)[0]
        return u

    def loss_and_grad(self, params, *, stages="all", u_start=None, weights=None):
        """As :func:`loss_and_grad`, on the trainer's batch (the same driver, :func:`backprop`)."""
        u0 = self.f if stages != "last" or u_start is None else u_start
        if weights is not None:
            weights = self.xp.asarray(weights, dtype=self.dtype)
        return backprop(self, params, self.spec, self.x, u0, stages=stages, weights=weights)


def mse_loss(u, clean, xp=np, weights=None):
    """``1/2 sum ||u - clean||**2`` (accumulated in float64) and its gradient ``u - clean``;
    with ``weights`` (0 or 1 per pixel: the pixels a fine-tuning run holds out for its
    validation get 0), ``1/2 sum weights (u - clean)**2`` and its gradient.

    With a second noisy acquisition of the same scene as ``clean``, this is the Noise2Noise
    loss (Lehtinen et al., ICML 2018): its expectation differs from the clean-target loss by a
    constant, so its gradient is unbiased."""
    residual = u - clean
    if weights is not None:
        residual = residual * weights
    return 0.5 * float(xp.sum(residual.astype(xp.float64) ** 2)), residual


def _run_forward(backend, trained, u0):
    us, saved = [u0], []
    for st in trained:
        u, s = backend.stage_forward(st, us[-1])
        us.append(u)
        saved.append(s)
    return us, saved


def _run_backward(backend, trained, us, saved, g, stages):
    grads = [None] * len(trained)
    for t in range(len(trained) - 1, -1, -1):
        grads[t], g = backend.stage_backward(trained[t], us[t], saved[t], g,
                                             stages == "all" and t > 0)
    return grads


def _trained_stages(backend, params, spec, stages):
    if stages not in ("all", "last"):
        raise ValueError(f"stages must be 'all' or 'last', got {stages!r}")
    trained = [backend.stage(p) for p in unpack_params(params, spec)]
    if stages == "last" and len(trained) != 1:
        raise ValueError(f"stages='last' trains one stage: params must have length "
                         f"{spec.stage_size}, got {np.size(params)}")
    return trained


def backprop(backend, params, spec, clean, u0, *, stages="all", weights=None):
    """Loss and gradient of the stages ``params`` (flat vector) run from ``u0``: every stage
    forward (keeping each ``u_t``), the loss on ``u_T`` (:func:`mse_loss` against ``clean``),
    then backpropagation through the stages, the same for every backend
    (:class:`KernelStages`, ``GemmTrainer``).

    ``stages='last'``: ``params`` is one stage appended to fixed ones whose output is ``u0``
    (greedy training, Eq. 4), ``'all'``: joint training (Eq. 11). ``weights``: see
    :func:`mse_loss`.
    """
    trained = _trained_stages(backend, params, spec, stages)
    us, saved = _run_forward(backend, trained, u0)
    loss, g = mse_loss(us[-1], clean, backend.xp, weights)
    return loss, pack_params(_run_backward(backend, trained, us, saved, g, stages))


def sure_backprop(backends, params, spec, noisy, u0s, *, sigma, probe, eps, stages="all",
                  weights=None):
    """Monte-Carlo SURE of the stages ``params`` on noisy images alone, and its exact gradient.

    ``SURE/2 = 1/2 ||u(y) - y||**2 - N sigma**2 / 2 + sigma**2 b . (u(y + eps b) - u(y)) / eps``
    (Stein 1981; the divergence by one probe ``b``, Ramani, Blu & Unser, IEEE TIP 2008) is an
    unbiased estimate of :func:`mse_loss` against the clean images, up to the probe's error,
    for Gaussian noise of standard deviation ``sigma`` (on the [0, 255] scale). Both passes,
    from ``y`` and from ``y + eps b``, are differentiated exactly: ``backends`` are the two
    backends whose data term is ``y`` and ``y + eps b``, ``u0s`` the two starting points (``y``
    and ``y + eps b`` for joint training; the fixed stages' outputs on them for greedy
    training). Returns ``(loss, gradient)`` as :func:`backprop` does.

    ``weights`` (0 or 1 per pixel): the estimate of the pixels of weight 1 alone (the others
    are held out for validation); the probe must then be zero where the weight is (the
    divergence of those pixels alone), and ``N`` counts the pixels of weight 1.
    """
    plain, probed = backends
    xp = plain.xp
    trained = [_trained_stages(b, params, spec, stages) for b in backends]
    us0, saved0 = _run_forward(plain, trained[0], u0s[0])
    us1, saved1 = _run_forward(probed, trained[1], u0s[1])
    fit, g0 = mse_loss(us0[-1], noisy, xp, weights)
    c = sigma * sigma / eps
    diff = (us1[-1] - us0[-1]).astype(xp.float64)
    divergence = float(xp.sum(probe * diff)) / eps
    n = int(np.prod(noisy.shape)) if weights is None else float(xp.sum(weights))
    loss = fit - 0.5 * n * sigma * sigma + sigma * sigma * divergence
    cb = (c * probe).astype(g0.dtype)
    grads0 = _run_backward(plain, trained[0], us0, saved0, g0 - cb, stages)
    grads1 = _run_backward(probed, trained[1], us1, saved1, cb, stages)
    return loss, pack_params(grads0) + pack_params(grads1)

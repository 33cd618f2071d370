"""Gradients of the TRD stage map on volumes (3-D filters), for training on the CPU.

The formulas are those of ``gradients.py`` (its module docstring) with 3-D correlation,
arranged in matrix form as ``gradients_cupy.py`` arranges them, over slabs of response
planes (``kernels/volume.py``: ``im2col``, ``col2im_add``, the exact RBF sums in Numba)::

    Z = K U,  V = phi(Z),  D = phi'(Z)        (U: shifted copies of pad(u))
    E = K Ug, S = E D                          (Ug: shifted copies of -g, zero-padded)
    dK = S U^T + V Ug^T,  dW_ij = sum_q E_iq G_j(Z_iq)
    dP = col2im(Kbar^T S) (offset 2 r),  dL/du = (1 - lambda) g + pad^T(dP)

:class:`VolumeStages` is a backend of the one driver (``gradients.backprop`` and
``gradients.sure_backprop``): clean targets, Noise2Noise and SURE train volumes as they
train images. :func:`stage_backward_volume_reference` is the plain NumPy check (one volume,
the formulas of ``gradients.stage_backward_reference`` with n-D correlation).
"""

from __future__ import annotations

import math

import numpy as np

from ..kernels.influence import influence_and_derivative
from ..kernels.reference import correlate_valid, diffusion_reference
from ..kernels.volume import GridRBF, col2im_add, im2col, slabs
from .gradients import (
    BatchTrainer,
    StageGradient,
    StageParams,
    TrainingSpec,
    _filter_grad_to_coefficients,
    _filters_and_norms,
)

__all__ = ["VolumeStages", "VolumeTrainer", "pad_symmetric_adjoint_nd", "stage_backward_volume_reference",
           "stage_forward_volume_reference"]


def pad_symmetric_adjoint_nd(padded_grad, pads, shape):
    """Adjoint of ``np.pad(u, [(p, p) for p in pads], mode='symmetric')`` for any number of
    axes: every padded element's gradient is added onto the element it copies."""
    out = np.asarray(padded_grad)
    for axis, (p, n) in enumerate(zip(pads, shape, strict=True)):
        src = np.pad(np.arange(n), p, mode="symmetric")
        folded = np.zeros(out.shape[:axis] + (n,) + out.shape[axis + 1:], dtype=out.dtype)
        np.add.at(np.moveaxis(folded, axis, 0), src, np.moveaxis(out, axis, 0))
        out = folded
    return out


def _pads(spec):
    return [2 * (n // 2) for n in spec.filter_shape]


def stage_forward_volume_reference(u, f, params, spec):
    """One stage on one volume (NumPy reference)."""
    a, w, theta = params
    k, _ = _filters_and_norms(a, spec.filter_shape)
    d = diffusion_reference(u, k, np.asarray(w, np.float64), spec.centers, spec.precision)
    return u - (d + math.exp(theta) * (u - f))


def stage_backward_volume_reference(u, f, grad_out, params, spec):
    """Gradient of one stage on one volume (plain NumPy, float64): the formulas of
    :func:`skimage_trd.train.gradients.stage_backward_reference` with 3-D correlation."""
    u, f, g = (np.asarray(x, np.float64) for x in (u, f, grad_out))
    a, w, theta = params
    w = np.asarray(w, np.float64)
    beta, mu = spec.precision, spec.centers
    pads = _pads(spec)
    lam = math.exp(theta)
    filters, _ = _filters_and_norms(a, spec.filter_shape)
    P = np.pad(u, [(p, p) for p in pads], mode="symmetric")
    Gd = np.pad(-g, [(p, p) for p in pads])
    dP = np.zeros_like(P)
    dk = np.zeros_like(filters)
    dw = np.zeros_like(w)
    flip = (slice(None, None, -1),) * spec.ndim
    for i, k in enumerate(filters):
        z = correlate_valid(P, k)
        phi, dphi = influence_and_derivative(z.ravel(), w[i : i + 1], mu, beta)
        v, dphi = phi.reshape(z.shape), dphi.reshape(z.shape)
        e = correlate_valid(Gd, k)
        G = np.exp(-0.5 * beta * (z.ravel()[None, :] - mu[:, None]) ** 2)
        dw[i] = G @ e.ravel()
        s = e * dphi
        dk[i] = correlate_valid(P, s) + correlate_valid(Gd, v)
        dP += correlate_valid(np.pad(s, [(p, p) for p in pads]), k[flip])
    du = (1.0 - lam) * g + pad_symmetric_adjoint_nd(dP, pads, u.shape)
    dtheta = -lam * float(np.sum(g * (u - f)))
    return StageGradient(_filter_grad_to_coefficients(dk, a, spec.filter_shape), dw, dtheta, du)


class _Stage:
    def __init__(self, params: StageParams, spec: TrainingSpec, dtype, rbf):
        k, _ = _filters_and_norms(params.coefficients, spec.filter_shape)
        N = k.shape[0]
        flip = (slice(None),) + (slice(None, None, -1),) * spec.ndim
        self.params = params
        self.K = np.ascontiguousarray(k.reshape(N, -1), dtype=dtype)
        self.Kbar_T = np.ascontiguousarray(k[flip].reshape(N, -1).T, dtype=dtype)
        self.tables = rbf.tables(params.weights)
        self.lam = math.exp(params.log_lambda)


class VolumeStages:
    """The stages of a batch of volumes ``f`` (shape (B, Z, Y, X), model scale): a backend of
    :func:`skimage_trd.train.gradients.backprop` (see ``gradients.KernelStages``). The
    influence functions are the RBF sums interpolated (cubic Hermite) on a fine grid
    (:class:`skimage_trd.kernels.volume.GridRBF`), differentiated exactly; ``dtype`` (float32
    or float64) is that of the matrices.
    """

    xp = np

    def __init__(self, f, spec: TrainingSpec, dtype=None):
        if spec.ndim != 3:
            raise ValueError("VolumeStages trains models with 3-D filters (spec.depth set)")
        self.dtype = np.dtype(f.dtype if dtype is None else dtype)
        self.f = np.ascontiguousarray(f, dtype=self.dtype)
        if self.f.ndim != 4:
            raise ValueError(f"volumes must be a (B, Z, Y, X) batch, got shape {self.f.shape}")
        self.spec = spec
        self.rbf = GridRBF(spec.centers, spec.precision)

    def stage(self, params):
        return _Stage(params, self.spec, self.dtype, self.rbf)

    def _slabs(self, grid):
        return slabs(grid[0], grid[1] * grid[2], int(np.prod(self.spec.filter_shape)),
                     self.dtype.itemsize)

    def _grid(self, shape):
        return tuple(n + 2 * (k // 2) for n, k in zip(shape, self.spec.filter_shape, strict=True))

    def stage_forward(self, st: _Stage, u):
        fshape, pads = self.spec.filter_shape, _pads(self.spec)
        out = np.empty_like(u)
        for b in range(u.shape[0]):
            P = np.pad(u[b], [(p, p) for p in pads], mode="symmetric")
            grid = self._grid(u.shape[1:])
            d = np.zeros_like(u[b])
            for q0, q1 in self._slabs(grid):
                V = self.rbf.phi(st.K @ im2col(P, fshape, grid, q0, q1), st.tables)[0]
                col2im_add((st.Kbar_T @ V).reshape((-1, q1 - q0) + grid[1:]), fshape, d,
                           q0, q1, (0, 0, 0))
            lam = self.dtype.type(st.lam)
            out[b] = u[b] - (d + lam * (u[b] - self.f[b]))
        return out, None

    def stage_backward(self, st: _Stage, u, saved, g, input_grad):
        fshape, pads = self.spec.filter_shape, _pads(self.spec)
        N, J = st.K.shape[0], self.spec.n_rbf
        dK = np.zeros(st.K.shape)
        dW = np.zeros((N, J))
        dtheta = 0.0
        du = np.empty_like(u) if input_grad else None
        for b in range(u.shape[0]):
            P = np.pad(u[b], [(p, p) for p in pads], mode="symmetric")
            Gd = np.pad(-g[b], [(p, p) for p in pads])
            grid = self._grid(u.shape[1:])
            dP = np.zeros_like(P) if input_grad else None
            for q0, q1 in self._slabs(grid):
                U = im2col(P, fshape, grid, q0, q1)
                Z = st.K @ U
                V, D = self.rbf.phi(Z, st.tables, True)
                Ug = im2col(Gd, fshape, grid, q0, q1)
                E = st.K @ Ug
                dW += self.rbf.weight_gradient(Z, E)
                S = E * D
                dK += (S @ U.T + V @ Ug.T).astype(np.float64)
                if input_grad:
                    col2im_add((st.Kbar_T @ S).reshape((-1, q1 - q0) + grid[1:]), fshape, dP,
                               q0, q1, tuple(pads))
            dtheta += -st.lam * float(np.sum((g[b] * (u[b] - self.f[b])).astype(np.float64)))
            if input_grad:
                du[b] = self.dtype.type(1.0 - st.lam) * g[b] + \
                    pad_symmetric_adjoint_nd(dP, pads, u.shape[1:])
        da = _filter_grad_to_coefficients(dK.reshape((N,) + fshape), st.params.coefficients,
                                          fshape)
        return StageParams(da, dW, dtheta), du


class VolumeTrainer(VolumeStages, BatchTrainer):
    """:class:`VolumeStages` with clean (or Noise2Noise) targets: ``forward`` and
    ``loss_and_grad`` of :class:`~skimage_trd.train.gradients.BatchTrainer`."""

    def __init__(self, noisy, clean, spec, dtype=None):
        super().__init__(noisy, spec, dtype)
        self.x = np.ascontiguousarray(clean, dtype=self.dtype)
        if self.x.shape != self.f.shape:
            raise ValueError(f"noisy and clean volumes differ in shape: {self.f.shape} and "
                             f"{self.x.shape}")

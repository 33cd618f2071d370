"""The TRD stage map written once, in plain NumPy, to be read next to the paper.

Paper Eq. 7 (Chen, Yu & Pock, CVPR 2015), with the boundary rule of the
authors' code::

    u_t = u_{t-1} - ( sum_i  kbar_ti * phi_ti(k_ti * u_{t-1})  +  lambda_t (u_{t-1} - f) )

* ``k * u`` is correlation; ``kbar`` is ``k`` rotated by 180 degrees, so
  ``kbar * v`` is convolution with ``k`` (the adjoint of correlation).
* Volumes (3-D filters, shape ``(depth, F, F)``) follow the same formulas with 3-D
  correlation; the padding is ``2 r`` per axis, ``r`` the radius along that axis.
* Each stage pads ``u_{t-1}`` symmetrically (edge pixel repeated) by ``2 r``,
  correlates 'valid' with ``k`` (giving an image ``2 r`` larger than ``u``
  on every side minus ``r``), applies ``phi`` and correlates 'valid' with
  ``kbar``: the result has the shape of ``u`` again.
* ``phi_ti(z) = sum_j w_tij exp(-beta / 2 (z - mu_j)**2)``, Gaussian RBFs; for the
  authors' imported models, as in their code, that sum sampled on a grid and linearly
  interpolated, constant beyond the grid (``TRDModel.influence_lut``, :func:`lookup_phi`).

JPEG deblocking (paper Eq. 9) replaces the reaction term by a projection::

    u_t = clip( proj_Q( u_{t-1} - sum_i kbar_ti * phi_ti(k_ti * u_{t-1}) ), 0, 255 )

with ``proj_Q`` the projection onto the quantisation-constraint set of the
JPEG file (``_jpeg.QuantizationConstraint``), starting from the inverse DCT
of the dequantised coefficients on the full 8x8-block grid.

Every fast kernel (Numba, CuPy) is tested against these functions.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "influence_reference",
    "lookup_phi",
    "correlate_valid",
    "stage_reference",
    "trd_reference",
    "deblock_reference",
]


def influence_reference(z, weights, centers, precision):
    """phi(z) = sum_j weights[j] exp(-precision / 2 (z - centers[j])**2)."""
    out = np.zeros_like(z)
    for w, mu in zip(weights, centers, strict=False):
        out += float(w) * np.exp(-0.5 * float(precision) * (z - float(mu)) ** 2)
    return out


def lookup_phi(model):
    """``phi(t, i, z)`` of a model whose influence functions are a lookup table (the authors'
    ``lut_eval``: exact samples on the grid, linear interpolation, constant beyond the ends),
    with ``numpy.interp``; None for models defined by the closed-form RBF sum."""
    if model.influence_lut is None:
        return None
    x0, step, n = model.influence_lut
    grid = x0 + step * np.arange(n, dtype=np.float64)
    samples = [[influence_reference(grid, w, model.centers, model.precision) for w in stage]
               for stage in model.weights]

    def phi(t, i, z):
        return np.interp(z, grid, samples[t][i]).astype(z.dtype, copy=False)

    return phi


def correlate_valid(image, kernel):
    """Correlation (2-D or 3-D) keeping only outputs whose window lies inside ``image``."""
    shape = tuple(n - k + 1 for n, k in zip(image.shape, kernel.shape, strict=True))
    out = np.zeros(shape, dtype=np.result_type(image, kernel))
    for tap in np.ndindex(kernel.shape):
        out += kernel[tap] * image[tuple(slice(a, a + n) for a, n in zip(tap, shape, strict=True))]
    return out


def diffusion_reference(u, filters, weights, centers, precision, phi=None):
    """The diffusion term ``sum_i kbar_i * phi_i(k_i * u)`` with the symmetric boundary.

    ``phi(i, z)``, if given, evaluates ``phi_i`` instead of the RBF sum (the kernels' tables,
    in tests)."""
    pads = [2 * (n // 2) for n in filters.shape[1:]]  # per axis: z (volumes), y, x
    padded = np.pad(u, [(p, p) for p in pads], mode="symmetric")
    out = np.zeros_like(u)
    flip = (slice(None, None, -1),) * (filters.ndim - 1)
    for i, (k, w) in enumerate(zip(filters, weights, strict=False)):
        z = correlate_valid(padded, k.astype(u.dtype))
        v = influence_reference(z, w, centers, precision) if phi is None else phi(i, z)
        out += correlate_valid(v, k[flip].astype(u.dtype))
    return out


def stage_reference(u, f, model, t, phi=None):
    """One denoising stage ``t`` (0-based) of ``model`` applied to ``u`` given the input ``f``;
    ``phi(t, i, z)`` as in :func:`diffusion_reference` (default: the model's own, see
    :func:`lookup_phi`)."""
    phi = lookup_phi(model) if phi is None else phi
    stage_phi = None if phi is None else (lambda i, z: phi(t, i, z))
    d = diffusion_reference(u, model.filters[t], model.weights[t], model.centers, model.precision,
                            stage_phi)
    return u - (d + float(model.lambdas[t]) * (u - f))


def trd_reference(f, model, n_stages=None, phi=None):
    """Run the first ``n_stages`` (default all) denoising stages on ``f`` (an image, or a volume
    for a model with 3-D filters; [0, 255] scale);
    ``phi(t, i, z)`` as in :func:`diffusion_reference`."""
    f = np.asarray(f)
    phi = lookup_phi(model) if phi is None else phi
    u = f
    for t in range(model.n_stages if n_stages is None else n_stages):
        u = stage_reference(u, f, model, t, phi)
    return u


def deblock_reference(constraint, model, n_stages=None):
    """Run the deblocking stages of ``model`` (Eq. 9) from ``constraint.start``.

    Returns the image on the full block grid (crop it to the image size).
    """
    u = constraint.start
    phi = lookup_phi(model)
    for t in range(model.n_stages if n_stages is None else n_stages):
        d = diffusion_reference(u, model.filters[t], model.weights[t], model.centers, model.precision,
                                None if phi is None else (lambda i, z, t=t: phi(t, i, z)))
        u = constraint.project(u - d)
    return u

"""The zero-mean DCT filter basis used to parameterise TRD filters (2-D, and 3-D for volumes)."""

from __future__ import annotations

from functools import lru_cache

import numpy as np

__all__ = ["dct_filter_basis"]


def _filter_shape(size) -> tuple:
    """``kernel_size`` (int: square 2-D filters) or a filter shape -> the shape as a tuple."""
    shape = (int(size),) * 2 if np.ndim(size) == 0 else tuple(int(n) for n in size)
    if len(shape) not in (2, 3) or min(shape) < 1 or max(shape) < 2:
        raise ValueError(f"kernel_size must be at least 2 (or a 2-D/3-D filter shape), got {size}")
    return shape


@lru_cache(maxsize=16)
def _basis(shape: tuple) -> np.ndarray:
    from scipy.fft import idctn  # SciPy loads when a basis is first needed, not with the package

    m = int(np.prod(shape)) - 1
    basis = np.empty((m,) + shape)
    # MATLAB column-major linear index c over (y, x) first, then z: the authors' 2-D order
    order = shape[-2:] + shape[:-2]  # (y, x[, z])
    for j in range(m):
        c = j + 1  # c = 0 is the DC atom, excluded so that filters are zero-mean
        idx = np.unravel_index(c, order, order="F")
        impulse = np.zeros(shape)
        impulse[tuple(idx[2:]) + tuple(idx[:2])] = 1.0
        basis[j] = idctn(impulse, norm="ortho")
    basis.setflags(write=False)
    return basis


def dct_filter_basis(kernel_size) -> np.ndarray:
    """Orthonormal DCT atoms without the DC atom.

    ``kernel_size`` is an int (square 2-D filters) or a filter shape: ``(F, F)``, or
    ``(depth, F, F)`` for volumes (z, y, x). Returns an array of shape ``(n - 1,) + shape``
    with ``n`` the number of taps; for 2-D filters atom ``j`` is the inverse orthonormal DCT
    of a unit impulse at ``((j + 1) % F, (j + 1) // F)``, the order of the authors' MATLAB
    code (in 3-D, the same column-major order over (y, x, z)). Every atom has zero mean and
    unit norm, and the atoms are mutually orthogonal.
    """
    return _basis(_filter_shape(kernel_size))


def filters_from_coefficients(coefficients: np.ndarray, kernel_size, normalize=True):
    """Filters ``sum_j c_ij atom_j``, optionally scaled to unit L2 norm.

    ``coefficients`` has shape ``(..., n_filters, n_taps - 1)``; ``kernel_size`` as in
    :func:`dct_filter_basis`.
    """
    basis = dct_filter_basis(kernel_size)
    filt = np.tensordot(coefficients, basis, axes=([-1], [0]))
    if normalize:
        axes = tuple(range(-(basis.ndim - 1), 0))
        norm = np.sqrt(np.sum(filt**2, axis=axes, keepdims=True))
        filt = filt / norm
    return filt

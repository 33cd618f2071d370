"""The zero-mean 2-D DCT filter basis used to parameterise TRD filters."""

from __future__ import annotations

from functools import lru_cache

import numpy as np

__all__ = ["dct_filter_basis"]


@lru_cache(maxsize=8)
def _basis(kernel_size: int) -> np.ndarray:
    from scipy.fft import idctn  # SciPy loads when a basis is first needed, not with the package

    f = kernel_size
    m = f * f - 1
    basis = np.empty((m, f, f))
    for j in range(m):
        c = j + 1  # c = 0 is the DC atom, excluded so that filters are zero-mean
        impulse = np.zeros((f, f))
        impulse[c % f, c // f] = 1.0  # MATLAB column-major linear index c
        basis[j] = idctn(impulse, norm="ortho")
    basis.setflags(write=False)
    return basis


def dct_filter_basis(kernel_size: int) -> np.ndarray:
    """Orthonormal 2-D DCT atoms without the DC atom.

    Returns an array of shape ``(kernel_size**2 - 1, kernel_size, kernel_size)``;
    atom ``j`` is the inverse orthonormal DCT of a unit impulse at
    ``((j + 1) % kernel_size, (j + 1) // kernel_size)``, the order of the
    authors' MATLAB code. Every atom has zero mean and unit norm, and the
    atoms are mutually orthogonal.
    """
    if kernel_size < 2:
        raise ValueError(f"kernel_size must be at least 2, got {kernel_size}")
    return _basis(int(kernel_size))


def filters_from_coefficients(coefficients: np.ndarray, kernel_size: int, normalize=True):
    """Filters ``sum_j c_ij atom_j``, optionally scaled to unit L2 norm.

    ``coefficients`` has shape ``(..., n_filters, kernel_size**2 - 1)``.
    """
    basis = dct_filter_basis(kernel_size)
    filt = np.tensordot(coefficients, basis, axes=([-1], [0]))
    if normalize:
        norm = np.sqrt(np.sum(filt**2, axis=(-2, -1), keepdims=True))
        filt = filt / norm
    return filt

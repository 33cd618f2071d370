"""Stein's unbiased risk estimate (SURE): the mean squared error of a denoiser without the
clean image, for Gaussian noise of known standard deviation.

For ``y = x + n``, ``n ~ N(0, sigma^2 I)`` and a (weakly) differentiable denoiser ``f``::

    SURE(f, y) = ||f(y) - y||^2 / N - sigma^2 + 2 sigma^2 / N * div f(y)

is an unbiased estimate of ``||f(y) - x||^2 / N`` (Stein 1981). The divergence is estimated by
Monte Carlo (Ramani, Blu & Unser, IEEE TIP 2008): ``div f(y) ~ b . (f(y + eps b) - f(y)) /
eps`` with ``b ~ N(0, I)``, averaged over probes; ``eps = 2 sigma / N^0.3`` by default
(Deledalle, Vaiter, Fadili & Peyre, SIAM J. Imaging Sci. 2014).

:func:`sure_mse` gives this estimate for any denoiser: to choose among denoisers, or among
the parameters of one, on the noisy image alone.
"""

from __future__ import annotations

import zlib

import numpy as np

__all__ = ["sure_mse", "divergence_epsilon", "data_seed"]


def divergence_epsilon(sigma, n):
    """The finite-difference step of the Monte-Carlo divergence: ``2 sigma / n^0.3``."""
    return 2.0 * float(sigma) / float(n) ** 0.3


# mixed into every probe seed, so that probes never repeat a user's noise drawn with a small seed
# (a probe equal to the noise itself makes the divergence estimate badly biased)
_PROBE_KEY = 0x5EED7D


def probe_rng(seed, key=()):
    """The random generator of the divergence probes for ``seed`` (and ``key``, a tuple of
    ints: training draws a probe per step, keyed by the phase and the step, so that a resumed
    run draws the same ones). Every probe of the package comes from here."""
    key = tuple(int(k) for k in key)
    # (the key's length in the seed: (1, 1, 0) and (1, 2, 0, 0) differ)
    extra = [len(key), *key] if key else []
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, _PROBE_KEY, *extra])


def sure_mse(denoiser, image, sigma, *, n_probes=1, epsilon=None, seed=None):
    """Estimate the mean squared error of ``denoiser(image)`` without the clean image.

    Stein's unbiased risk estimate for additive white Gaussian noise of known standard
    deviation ``sigma``, with the divergence estimated by Monte Carlo
    (``n_probes`` random probes, i.e. ``n_probes + 1`` calls of ``denoiser``).

    Parameters
    ----------
    denoiser : callable
        ``denoiser(array) -> array`` of the same shape, e.g.
        ``lambda y: denoise_tv_chambolle(y, weight=0.1)``. It must be a fixed function of its
        input (deterministic, with its parameters fixed, not estimated from the input).
    image : ndarray
        The noisy image (any shape), in the units of ``sigma``.
    sigma : float
        Standard deviation of the noise (known or estimated, e.g. with
        :func:`skimage.restoration.estimate_sigma`).
    n_probes : int, optional
        Random probes for the divergence; more reduce the estimate's variance.
    epsilon : float, optional
        Finite-difference step (default ``2 sigma / image.size**0.3``).
    seed : int, optional
        Seed of the probes (default: derived from the image's values, so that the estimate
        is deterministic for a given image). The probes must be independent of the noise:
        never pass the seed the noise itself was drawn with.

    Returns
    -------
    mse : float
        The estimated mean squared error against the clean image, in squared units of
        ``image``; ``10 * log10(data_range**2 / mse)`` estimates the PSNR.

    Notes
    -----
    Unbiased for Gaussian noise that is independent between pixels, and for denoisers
    that are weakly differentiable; the variance falls with the number of pixels. A choice
    the denoiser makes from its input (a model picked from a bank, a parameter estimated
    from the data) must not change between ``image`` and its perturbed copies: fix it
    (for example ``denoise_trd(y, sigma, model=...)``), or the divergence is meaningless. For
    noise that is not Gaussian (Poisson, JPEG), transform it first
    (:func:`skimage_trd.generalized_anscombe`).

    Examples
    --------
    Rank three denoisers of one noisy image without its clean version:

    >>> import numpy as np
    >>> from skimage import data, img_as_float
    >>> from skimage.restoration import denoise_tv_chambolle, denoise_wavelet
    >>> from skimage_trd import denoise_trd, sure_mse
    >>> clean = img_as_float(data.camera()[:256, :256])
    >>> sigma = 0.1
    >>> noisy = clean + sigma * np.random.default_rng(0).standard_normal(clean.shape)
    >>> candidates = {
    ...     "TV": lambda y: denoise_tv_chambolle(y, weight=0.08),
    ...     "wavelet": lambda y: denoise_wavelet(y, sigma=sigma, rescale_sigma=True),
    ...     "TRD": lambda y: denoise_trd(y, sigma=sigma),
    ... }
    >>> estimates = {k: sure_mse(f, noisy, sigma) for k, f in candidates.items()}
    >>> sorted(estimates, key=estimates.get)[0]  # doctest: +SKIP
    'TRD'
    """
    y = np.asarray(image, dtype=np.float64)
    sigma = float(sigma)
    if not (np.isfinite(sigma) and sigma > 0):
        raise ValueError(f"sigma must be a positive number, got {sigma!r}")
    if y.size == 0 or not np.all(np.isfinite(y)):
        raise ValueError("image must be non-empty and hold only finite values")
    n_probes = int(n_probes)
    if n_probes < 1:
        raise ValueError(f"n_probes must be at least 1, got {n_probes}")
    eps = divergence_epsilon(sigma, y.size) if epsilon is None else float(epsilon)
    if not (np.isfinite(eps) and eps > 0):
        raise ValueError(f"epsilon must be a positive number, got {epsilon!r}")
    fy = np.asarray(denoiser(y), dtype=np.float64)
    if fy.shape != y.shape:
        raise ValueError(f"the denoiser returned shape {fy.shape} for an input of shape {y.shape}")
    rng = probe_rng(data_seed(y) if seed is None else seed)
    div = 0.0
    for _ in range(n_probes):
        b = rng.standard_normal(y.shape)
        fb = np.asarray(denoiser(y + eps * b), dtype=np.float64)
        div += float(np.vdot(b, fb - fy)) / eps
    div /= n_probes
    n = y.size
    return float(np.sum((fy - y) ** 2) / n - sigma**2 + 2 * sigma**2 * div / n)


def data_seed(array):
    """A seed from an array's values: the CRC-32 of its bytes and shape."""
    a = np.ascontiguousarray(array)
    return zlib.crc32(a.tobytes()) ^ zlib.crc32(repr((a.shape, a.dtype.str)).encode())

"""PSNR as every figure of this project is measured (docs/protocols.md): the estimate clipped to
the data range, then ``10 log10(peak^2 / MSE)``; written once for the library, the training log
and the benchmarks."""

from __future__ import annotations

import math

import numpy as np

__all__ = ["psnr"]


def psnr(estimate, clean, peak=255.0, *, clip=True):
    """Peak signal-to-noise ratio in dB of ``estimate`` against ``clean``.

    ``clip`` (default): the estimate is clipped to ``[0, peak]`` first, as a display or a saved
    image would be; ``clip=False`` scores it as it is (the deblocking protocol, the photon-count
    benchmark). Unlike ``skimage.metrics.peak_signal_noise_ratio`` the peak is given, never
    taken from the dtype.
    """
    estimate = np.asarray(estimate, dtype=np.float64)
    if clip:
        estimate = np.clip(estimate, 0.0, peak)
    mse = float(np.mean((estimate - np.asarray(clean, dtype=np.float64)) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(float(peak) ** 2 / mse)

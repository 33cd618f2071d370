"""Sample data: noisy and JPEG-compressed versions of images bundled with scikit-image."""

import numpy as np


def _noisy(image, sigma, name):
    rng = np.random.default_rng(0)
    noisy = image / 255.0 + sigma / 255.0 * rng.standard_normal(image.shape)
    return [(noisy, {"name": name, "metadata": {"noise_sigma": sigma / 255.0}}, "image")]


def noisy_camera():
    from skimage import data

    return _noisy(data.camera(), 25, "camera (noisy, sigma 25)")


def noisy_cells():
    """A cell in saline, a quantitative phase image from digital holographic microscopy
    (skimage.data.cell), with Gaussian noise of 15 grey levels."""
    from skimage import data

    return _noisy(data.cell(), 15, "cell, phase image (noisy, sigma 15)")


def jpeg_camera():
    from skimage import data

    from skimage_trd import jpeg_roundtrip

    decoded, _ = jpeg_roundtrip(data.camera(), 10)
    return [(decoded, {"name": "camera (JPEG q10)", "metadata": {"jpeg_quality": 10}}, "image")]

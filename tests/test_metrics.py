import math

import numpy as np
import pytest

from skimage_trd._metrics import psnr


def test_psnr_against_the_definition():
    rng = np.random.default_rng(0)
    clean = rng.uniform(0, 255, (32, 32))
    out = clean + rng.normal(0, 5, clean.shape)
    mse = np.mean((np.clip(out, 0, 255) - clean) ** 2)
    assert psnr(out, clean) == pytest.approx(10 * np.log10(255**2 / mse), rel=1e-12)
    # unclipped, and on the [0, 1] scale
    mse = np.mean((out - clean) ** 2)
    assert psnr(out, clean, clip=False) == pytest.approx(10 * np.log10(255**2 / mse), rel=1e-12)
    assert psnr(out / 255, clean / 255, 1.0, clip=False) == pytest.approx(
        psnr(out, clean, clip=False), rel=1e-12)


def test_psnr_clips_to_the_peak_and_is_infinite_without_error():
    clean = np.full((4, 4), 255.0)
    assert psnr(clean + 10, clean) == math.inf  # clipped back onto the clean values
    assert psnr(clean + 10, clean, clip=False) == pytest.approx(10 * np.log10(255**2 / 100))

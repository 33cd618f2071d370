"""Stein's unbiased risk estimate of any denoiser's MSE (skimage_trd.sure_mse)."""

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter
from skimage import data

from skimage_trd import denoise_trd, sure_mse


@pytest.fixture(scope="module")
def clean():
    return data.camera()[100:228, 150:278] / 255.0


def test_unbiased_over_noise_draws(clean):
    """Averaged over noise draws, SURE equals the true MSE (a smoothing filter, 40 draws)."""
    sigma = 0.08
    f = lambda y: gaussian_filter(y, 1.2)  # noqa: E731
    est, true = [], []
    for k in range(40):
        y = clean + sigma * np.random.default_rng(100 + k).standard_normal(clean.shape)
        est.append(sure_mse(f, y, sigma, seed=k))
        true.append(np.mean((f(y) - clean) ** 2))
    est, true = np.array(est), np.array(true)
    assert abs(est.mean() - true.mean()) < 3 * est.std() / np.sqrt(len(est))
    assert abs(est.mean() / true.mean() - 1) < 0.02


def test_linear_denoiser_divergence_exact_in_expectation(clean):
    # f(y) = a y has divergence a N; with many probes the estimate converges to the exact SURE
    sigma, a = 0.1, 0.6
    y = clean + sigma * np.random.default_rng(0).standard_normal(clean.shape)
    exact = np.mean((a * y - y) ** 2) - sigma**2 + 2 * sigma**2 * a
    assert sure_mse(lambda z: a * z, y, sigma, n_probes=50) == pytest.approx(exact, rel=1e-2)


def test_ranks_denoisers_as_the_clean_image_does(clean):
    from skimage.restoration import denoise_tv_chambolle, denoise_wavelet

    sigma = 0.1
    # the noise drawn with seed 0: the default probes must not repeat it (they are derived
    # from the data and mixed with a key)
    y = clean + sigma * np.random.default_rng(0).standard_normal(clean.shape)
    candidates = {
        "TV": lambda z: denoise_tv_chambolle(z, weight=0.08),
        "wavelet": lambda z: denoise_wavelet(z, sigma=sigma, rescale_sigma=True),
        "TRD": lambda z: denoise_trd(z, sigma=sigma, model="trd-gauss-s25-7x7-5st"),
    }
    est = {k: sure_mse(f, y, sigma) for k, f in candidates.items()}
    true = {k: np.mean((f(y) - clean) ** 2) for k, f in candidates.items()}
    assert sorted(est, key=est.get) == sorted(true, key=true.get)
    for k in est:
        assert est[k] == pytest.approx(true[k], rel=0.1), k


def test_deterministic_and_seeded(clean):
    y = clean + 0.1 * np.random.default_rng(3).standard_normal(clean.shape)
    f = lambda z: gaussian_filter(z, 1.0)  # noqa: E731
    assert sure_mse(f, y, 0.1) == sure_mse(f, y, 0.1)
    values = np.array([sure_mse(f, y, 0.1, seed=k) for k in range(8)])
    assert len(set(values)) == 8  # the seed sets the probes
    assert values.std() < 0.05 * values.mean()  # (2.4 % over 30 seeds, measured)


@pytest.mark.parametrize("sigma", [0, -1, np.nan, np.inf])
def test_bad_sigma_refused(clean, sigma):
    with pytest.raises(ValueError, match="sigma"):
        sure_mse(lambda z: z, clean, sigma)


def test_bad_input_refused(clean):
    bad = clean.copy()
    bad[3, 4] = np.nan
    with pytest.raises(ValueError, match="finite"):
        sure_mse(lambda z: z, bad, 0.1)
    with pytest.raises(ValueError, match="shape"):
        sure_mse(lambda z: z[1:], clean, 0.1)
    with pytest.raises(ValueError, match="n_probes"):
        sure_mse(lambda z: z, clean, 0.1, n_probes=0)
    with pytest.raises(ValueError, match="epsilon"):
        sure_mse(lambda z: z, clean, 0.1, epsilon=0)

from pathlib import Path

import numpy as np
import pytest

from skimage_trd import TRDModel, dct_filter_basis

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
AUTHORS = SHARED / "reference-models" / "tnrd-authors"


def random_model(n_stages=2, kernel_size=5, n_filters=None, seed=0, task="denoise",
                 wide_grid=False):
    """A random but well-behaved model: unit-norm zero-mean filters, smooth phi."""
    rng = np.random.default_rng(seed)
    basis = dct_filter_basis(kernel_size)
    m = basis.shape[0]
    n_filters = m if n_filters is None else n_filters
    coef = rng.standard_normal((n_stages, n_filters, m))
    filters = np.tensordot(coef, basis, axes=([-1], [0]))
    filters /= np.sqrt((filters**2).sum(axis=(-2, -1), keepdims=True))
    if wide_grid:
        centers, precision = np.arange(-387.5, 387.6, 12.5), 0.0064
    else:
        centers, precision = np.arange(-310.0, 310.1, 10.0), 0.01
    # phi ~ a * 2z/(1 + z^2) style shapes plus noise, as RBF weights
    target = 2 * centers / (1 + (centers / 20) ** 2) / 20
    weights = target[None, None, :] * rng.uniform(0.2, 1.0, (n_stages, n_filters, 1))
    weights = weights + 0.05 * rng.standard_normal(weights.shape)
    lambdas = rng.uniform(0.01, 0.2, n_stages) if task == "denoise" else None
    return TRDModel(filters=filters, weights=weights, centers=centers, precision=precision,
                    lambdas=lambdas, task=task, sigma=25.0 if task == "denoise" else None,
                    quality=10 if task == "deblock" else None, name=f"random-{seed}")


@pytest.fixture
def model():
    return random_model(n_stages=2, kernel_size=5, seed=1)


def require_shared(path=SHARED):
    if not Path(path).exists():
        pytest.skip(f"{path} not available (benchmark data live in ../shared)")
    return Path(path)

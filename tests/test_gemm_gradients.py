"""The matrix-form (GPU) training gradients against the NumPy reference gradients."""

import numpy as np
import pytest

from skimage_trd._gemm_gradients import GemmTrainer
from skimage_trd._gradients import StageParams, TrainingSpec, loss_and_grad, pack_params


def _problem(kernel_size=5, shape=(3, 11, 9), seed=0):
    rng = np.random.default_rng(seed)
    spec = TrainingSpec(kernel_size, np.arange(-310.0, 310.1, 10.0), 0.01)
    m = spec.n_coefficients
    stages = [StageParams(rng.standard_normal((m, m)), rng.standard_normal((m, 63)) * 0.3,
                          np.log(rng.uniform(0.05, 0.3))) for _ in range(2)]
    x = rng.uniform(0, 255, shape)
    f = x + 25 * rng.standard_normal(shape)
    return spec, stages, f, x


@pytest.mark.parametrize("shape", [(3, 11, 9), (2, 4, 5)])
def test_gemm_equals_reference_joint(shape):
    spec, stages, f, x = _problem(shape=shape)
    params = pack_params(stages)
    l_ref, g_ref = loss_and_grad(params, f, x, spec, stages="all", backend="numpy")
    l, g = GemmTrainer(f, x, spec, np, np.float64, images_per_chunk=2).loss_and_grad(params)
    assert np.isclose(l, l_ref, rtol=1e-12)
    np.testing.assert_allclose(g, g_ref, rtol=1e-9, atol=1e-9 * np.abs(g_ref).max())


def test_gemm_equals_reference_last_stage():
    spec, stages, f, x = _problem(kernel_size=3)
    tr = GemmTrainer(f, x, spec, np, np.float64)
    u1 = tr.forward(stages[:1])
    p = pack_params(stages[1:])
    l_ref, g_ref = loss_and_grad(p, f, x, spec, stages="last", backend="numpy", fixed=stages[:1])
    l, g = tr.loss_and_grad(p, stages="last", u_start=u1)
    assert np.isclose(l, l_ref, rtol=1e-12)
    np.testing.assert_allclose(g, g_ref, rtol=1e-9, atol=1e-9 * np.abs(g_ref).max())


def test_gemm_rejects_mismatched_batches():
    spec, _, f, x = _problem()
    with pytest.raises(ValueError, match="equal"):
        GemmTrainer(f, x[:2], spec, np)

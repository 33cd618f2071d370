"""The matrix-form (GPU) training gradients against the NumPy reference gradients."""

import numpy as np
import pytest

from skimage_trd.train.gradients import StageParams, TrainingSpec, loss_and_grad, pack_params
from skimage_trd.train.gradients_cupy import GemmTrainer


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


def _deblock_problem(seed=0, B=2, size=16, quality=20):
    from skimage_trd._jpeg import block_dct, block_idct, quality_tables

    rng = np.random.default_rng(seed)
    spec = TrainingSpec(3, np.arange(-310.0, 310.1, 10.0), 0.01)
    m = spec.n_coefficients
    stages = [StageParams(rng.standard_normal((m, m)), rng.standard_normal((m, 63)) * 2.0, 0.0)
              for _ in range(2)]
    q = quality_tables(quality)[0]
    yy, xx = np.mgrid[:size, :size]
    clean = np.stack([100 + 60 * np.sin(xx / (3 + b)) * np.cos(yy / 4) + 5 * rng.standard_normal((size, size))
                      for b in range(B)])
    d = np.stack([np.rint(block_dct(c - 128) / q) for c in clean])
    lower, upper = (d - 0.4) * q, (d + 0.4) * q
    start = np.stack([np.clip(block_idct(di * q) + 128, 0, 255) for di in d])
    return spec, stages, start, clean, (lower, upper)


def test_deblock_gradient_matches_finite_differences():
    spec, stages, start, clean, constraint = _deblock_problem()
    tr = GemmTrainer(start, clean, spec, np, np.float64, constraint=constraint)
    params = pack_params(stages)
    loss, grad = tr.loss_and_grad(params)
    rng = np.random.default_rng(1)
    for _ in range(3):
        direction = rng.standard_normal(params.size)
        direction[spec.stage_size - 1 :: spec.stage_size] = 0  # log_lambda is unused
        eps = 1e-6
        lp, _ = tr.loss_and_grad(params + eps * direction)
        lm, _ = tr.loss_and_grad(params - eps * direction)
        fd = (lp - lm) / (2 * eps)
        assert np.isclose(grad @ direction, fd, rtol=1e-5), (grad @ direction, fd)
    # the unused reaction weight gets no gradient
    assert np.all(grad[spec.stage_size - 1 :: spec.stage_size] == 0)


def test_deblock_forward_projects_onto_the_constraint_set():
    from skimage_trd._jpeg import block_dct

    spec, stages, start, clean, (lower, upper) = _deblock_problem()
    tr = GemmTrainer(start, clean, spec, np, np.float64, constraint=(lower, upper))
    out = tr.forward(stages)
    y = np.stack([block_dct(o - 128) for o in out])
    inside = (y >= lower - 1e-9) & (y <= upper + 1e-9)
    clipped = np.stack([(o <= 0) | (o >= 255) for o in out]).any()
    assert inside.mean() > 0.99 or clipped
    assert out.min() >= 0 and out.max() <= 255


@pytest.mark.parametrize("stages", ["all", "last"])
def test_numba_deblock_batch_matches_matrix_form(stages):
    """The Numba deblocking trainer (stage kernels + projection adjoint) equals the NumPy
    matrix-form trainer, loss and gradient, in float64."""
    from skimage_trd.train.objectives import _KernelDeblockBatch

    spec, params_list, start, clean, constraint = _deblock_problem(B=3, size=24)
    ref = GemmTrainer(start, clean, spec, np, np.float64, constraint=constraint)
    nb = _KernelDeblockBatch(start, clean, spec, constraint)
    if stages == "all":
        params, u_start = pack_params(params_list), None
    else:
        params = pack_params(params_list[1:])
        u_start = ref.forward(params_list[:1])
        np.testing.assert_allclose(nb.forward(params_list[:1]), u_start, atol=1e-9)
    loss_r, grad_r = ref.loss_and_grad(params, stages=stages, u_start=u_start)
    loss_n, grad_n = nb.loss_and_grad(params, stages=stages, u_start=u_start)
    assert np.isclose(loss_n, loss_r, rtol=1e-10)
    np.testing.assert_allclose(grad_n, grad_r, rtol=1e-7, atol=1e-7 * np.abs(grad_r).max())


def test_numba_deblock_gradient_matches_finite_differences():
    from skimage_trd.train.objectives import _KernelDeblockBatch

    spec, stages, start, clean, constraint = _deblock_problem(seed=3)
    nb = _KernelDeblockBatch(start, clean, spec, constraint)
    params = pack_params(stages)
    loss, grad = nb.loss_and_grad(params, stages="all")
    rng = np.random.default_rng(2)
    for _ in range(3):
        direction = rng.standard_normal(params.size)
        eps = 1e-6
        fd = (nb.loss_and_grad(params + eps * direction, stages="all")[0]
              - nb.loss_and_grad(params - eps * direction, stages="all")[0]) / (2 * eps)
        assert np.isclose(grad @ direction, fd, rtol=1e-5), (grad @ direction, fd)
    assert np.all(grad[spec.stage_size - 1 :: spec.stage_size] == 0)  # lambda is not used

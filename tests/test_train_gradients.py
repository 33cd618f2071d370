"""Gradients of the TRD stage map: finite differences, Numba against NumPy, parameter bridge."""

import numpy as np
import pytest

from skimage_trd import TRDModel
from skimage_trd.kernels.reference import correlate_valid, stage_reference
from skimage_trd.train.gradients import (
    StageParams,
    TrainingSpec,
    _fold_batch,
    _pad_batch,
    forward_batch,
    loss_and_grad,
    model_to_params,
    pack_params,
    pad_symmetric_adjoint,
    params_to_model,
    stage_backward_reference,
    stage_forward,
    stage_forward_reference,
    stage_gradient,
    sure_loss_and_grad,
    unpack_params,
)

CENTERS = np.arange(-310.0, 311.0, 10.0)
PRECISION = 0.01


def make_spec(kernel_size, n_filters=3, centers=CENTERS, precision=PRECISION):
    return TrainingSpec(kernel_size, centers, precision, n_filters=n_filters)


def random_stage(rng, spec, weight_scale=10.0):
    return StageParams(
        rng.normal(size=(spec.n_filters, spec.n_coefficients)),
        weight_scale * rng.normal(size=(spec.n_filters, spec.n_rbf)),
        float(rng.normal(scale=0.5) - 1.0),
    )


def random_images(rng, shape, n=None):
    size = shape if n is None else (n,) + tuple(shape)
    clean = rng.uniform(20, 235, size)
    return clean + rng.normal(0, 20, size), clean


def central_difference(fun, x, direction, h):
    """Fourth-order central difference of ``fun`` at ``x`` along ``direction``."""
    return (
        -fun(x + 2 * h * direction)
        + 8 * fun(x + h * direction)
        - 8 * fun(x - h * direction)
        + fun(x - 2 * h * direction)
    ) / (12 * h)


def assert_fd(fun, grad, x, direction, h, rtol=1e-6):
    numeric = central_difference(fun, x, direction, h)
    exact = float(np.sum(grad * direction))
    assert abs(numeric - exact) <= rtol * abs(exact), (numeric, exact)


def rel_err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


# ------------------------------------------------------------------------- padding adjoint
@pytest.mark.parametrize("shape,pad", [((5, 4), 6), ((1, 3), 4), ((2, 2), 5), ((6, 7), 2)])
def test_pad_adjoint_is_transpose_of_padding(shape, pad):
    H, W = shape
    # columns of the padding matrix: the padded image of every unit image
    M = np.stack(
        [np.pad(np.eye(H * W)[j].reshape(H, W), pad, mode="symmetric").ravel()
         for j in range(H * W)],
        axis=1,
    )
    V = np.random.default_rng(0).normal(size=(H + 2 * pad, W + 2 * pad))
    expected = (M.T @ V.ravel()).reshape(H, W)
    np.testing.assert_allclose(pad_symmetric_adjoint(V, pad, shape), expected, rtol=1e-13)
    # Numba: padding and fold (with g = 0) agree with NumPy
    P = np.empty((1,) + V.shape)
    u = np.random.default_rng(1).normal(size=(1, H, W))
    _pad_batch(u, pad, P)
    np.testing.assert_array_equal(P[0], np.pad(u[0], pad, mode="symmetric"))
    du = np.empty((1, H, W))
    _fold_batch(V[None], pad, np.zeros((1, H, W)), 1.0, du)
    np.testing.assert_allclose(du[0], expected, rtol=1e-13)


# ---------------------------------------------------------------- NumPy reference, one stage
def test_reference_forward_matches_stage_reference():
    rng = np.random.default_rng(2)
    spec = make_spec(5)
    st = random_stage(rng, spec)
    f, _ = random_images(rng, (9, 8))
    u = f + rng.normal(0, 5, f.shape)
    model = params_to_model([st], spec, sigma=25.0)
    np.testing.assert_allclose(
        stage_forward_reference(u, f, st, spec), stage_reference(u, f, model, 0), rtol=1e-13
    )


STAGE_CASES = [(5, (6, 5)), (5, (3, 2)), (3, (1, 4))]  # incl. images smaller than the pad


def _linear_loss(spec, u, f, g, st):
    """L(params, u) = <g, u_t>: its gradients are what the backward pass returns."""

    def loss(a=st.coefficients, w=st.weights, theta=st.log_lambda, u=u):
        return float(np.sum(g * stage_forward_reference(u, f, StageParams(a, w, theta), spec)))

    return loss


@pytest.mark.parametrize("kernel_size,shape", STAGE_CASES)
def test_reference_stage_gradient_finite_differences(kernel_size, shape):
    rng = np.random.default_rng(3)
    spec = make_spec(kernel_size)
    st = random_stage(rng, spec)
    f, _ = random_images(rng, shape)
    u = f + rng.normal(0, 10, shape)
    g = rng.normal(size=shape)
    loss = _linear_loss(spec, u, f, g, st)
    gr = stage_backward_reference(u, f, g, st, spec)
    a, w = st.coefficients, st.weights
    for _ in range(2):
        assert_fd(lambda x: loss(a=x), gr.coefficients, a, rng.normal(size=a.shape), 1e-4)
        assert_fd(lambda x: loss(w=x), gr.weights, w, rng.normal(size=w.shape), 1e-2)
        assert_fd(lambda x: loss(u=x), gr.u, u, rng.normal(size=u.shape), 1e-2)
    assert_fd(lambda x: loss(theta=x), gr.log_lambda, st.log_lambda, 1.0, 1e-3)
    # individual entries, including corner pixels (folded padding)
    for arr, grad, key, h in [(a, gr.coefficients, "a", 1e-4), (w, gr.weights, "w", 1e-2),
                              (u, gr.u, "u", 1e-2)]:
        flat = [0, arr.size - 1, int(rng.integers(arr.size))]
        if key == "w":  # weights of centres that the responses actually reach
            flat = list(np.argsort(np.abs(grad).ravel())[-3:])
        for j in flat:
            e = np.zeros(arr.size)
            e[j] = 1.0
            e = e.reshape(arr.shape)
            fun = {"a": lambda x: loss(a=x), "w": lambda x: loss(w=x),
                   "u": lambda x: loss(u=x)}[key]
            assert_fd(fun, grad, arr, e, h)


def _fold_ignoring_boundary(dP, pad, shape):
    return dP[pad : pad + shape[0], pad : pad + shape[1]].copy()


def _fold_single_reflection(dP, pad, shape):
    # reflects once and clips: right only while the pad is not wider than the image
    def index(n, size):
        i = np.arange(n) - pad
        i = np.where(i < 0, -i - 1, np.where(i >= size, 2 * size - 1 - i, i))
        return np.clip(i, 0, size - 1)

    out = np.zeros(shape)
    rows, cols = index(dP.shape[0], shape[0]), index(dP.shape[1], shape[1])
    np.add.at(out, (rows[:, None], cols[None, :]), dP)
    return out


@pytest.mark.parametrize("wrong_fold", [_fold_ignoring_boundary, _fold_single_reflection])
def test_finite_difference_check_detects_a_wrong_boundary(monkeypatch, wrong_fold):
    """Negative control: a wrong adjoint of the padding must fail the check."""
    from skimage_trd.train import gradients as _gradients

    rng = np.random.default_rng(4)
    spec = make_spec(5)
    st = random_stage(rng, spec)
    shape = (3, 2)  # smaller than the pad (4): NumPy reflects repeatedly
    f, _ = random_images(rng, shape)
    u = f + rng.normal(0, 10, shape)
    g = rng.normal(size=shape)
    loss = _linear_loss(spec, u, f, g, st)
    d = rng.normal(size=shape)
    right = stage_backward_reference(u, f, g, st, spec).u
    assert_fd(lambda x: loss(u=x), right, u, d, 1e-2)
    monkeypatch.setattr(_gradients, "pad_symmetric_adjoint", wrong_fold)
    wrong = stage_backward_reference(u, f, g, st, spec).u
    with pytest.raises(AssertionError):
        assert_fd(lambda x: loss(u=x), wrong, u, d, 1e-2)


# --------------------------------------------------------------- loss over stages (NumPy)
def _multi_stage_problem(rng, kernel_size, shape, n_stages, n_images=2):
    spec = make_spec(kernel_size)
    params = pack_params([random_stage(rng, spec, 5.0) for _ in range(n_stages)])
    noisy, clean = random_images(rng, shape, n_images)
    return spec, params, noisy, clean


@pytest.mark.parametrize("kernel_size,shape", [(5, (4, 3)), (3, (6, 5))])
def test_joint_gradient_finite_differences(kernel_size, shape):
    rng = np.random.default_rng(5)
    spec, x, noisy, clean = _multi_stage_problem(rng, kernel_size, shape, 3)

    def loss(v):
        return loss_and_grad(v, noisy, clean, spec, stages="all", backend="numpy")[0]

    value, grad = loss_and_grad(x, noisy, clean, spec, stages="all", backend="numpy")
    assert value == pytest.approx(0.5 * np.sum((forward_batch(noisy, x, spec, backend="numpy")
                                                - clean) ** 2), rel=1e-13)
    assert grad.shape == x.shape
    for _ in range(2):
        assert_fd(loss, grad, x, rng.normal(size=x.size), 1e-4)
    size = spec.stage_size
    # the first stage's lambda has no effect (u_0 = f); the later ones do
    assert grad[size - 1] == 0.0
    for t in range(3):
        block = slice(t * size, (t + 1) * size)
        d = np.zeros(x.size)
        d[block] = rng.normal(size=size)  # one stage at a time
        assert_fd(loss, grad, x, d, 1e-4)
        for j in (t * size, t * size + spec.n_filters * spec.n_coefficients + 40,
                  (t + 1) * size - 1):
            if grad[j] == 0.0:
                continue
            e = np.zeros(x.size)
            e[j] = 1.0
            assert_fd(loss, grad, x, e, 1e-4)


def test_greedy_gradient_finite_differences_and_consistency():
    rng = np.random.default_rng(6)
    spec, x, noisy, clean = _multi_stage_problem(rng, 5, (5, 4), 3)
    size = spec.stage_size
    fixed, last = x[: 2 * size], x[2 * size :]

    def loss(v):
        return loss_and_grad(v, noisy, clean, spec, stages="last", fixed=fixed,
                             backend="numpy")[0]

    value, grad = loss_and_grad(last, noisy, clean, spec, stages="last", fixed=fixed,
                                backend="numpy")
    assert grad.shape == (size,)
    for _ in range(2):
        assert_fd(loss, grad, last, rng.normal(size=size), 1e-4)
    # same as the last block of the joint gradient, and as starting from u_start
    joint_value, joint = loss_and_grad(x, noisy, clean, spec, stages="all", backend="numpy")
    assert value == pytest.approx(joint_value, rel=1e-13)
    np.testing.assert_allclose(grad, joint[2 * size :], rtol=1e-12, atol=1e-12 * np.abs(grad).max())
    u2 = forward_batch(noisy, fixed, spec, backend="numpy")
    v2, g2 = loss_and_grad(last, noisy, clean, spec, stages="last", u_start=u2,
                           backend="numpy")
    assert v2 == value
    np.testing.assert_array_equal(g2, grad)
    # greedy first stage: no fixed stages, the lambda gradient vanishes
    _, g1 = loss_and_grad(x[:size], noisy, clean, spec, stages="last", backend="numpy")
    assert g1[-1] == 0.0 and np.any(g1[:-1] != 0.0)


# ------------------------------------------------------------------- Numba against NumPy
NUMBA_CASES = [
    # kernel_size, image shape, strip, chunk, centres, precision
    (7, (5, 4), 32, 64, CENTERS, PRECISION),  # image smaller than the pad (6)
    (5, (13, 11), 4, 2, CENTERS, PRECISION),  # several strips of both parities, 2 chunks
    (3, (37, 41), 2, 64, np.arange(-387.5, 388.0, 12.5), 0.0064),
    (5, (9, 17), 5, 1, np.arange(-300.0, 301.0, 5.0), 0.01),  # beta delta**2 = 1/4
    (3, (12, 7), 3, 64, np.arange(-320.0, 321.0, 20.0), 0.01),  # beta delta**2 = 4
]


@pytest.mark.parametrize("kernel_size,shape,strip,chunk,centers,precision", NUMBA_CASES)
def test_numba_stage_gradient_matches_reference(kernel_size, shape, strip, chunk, centers,
                                                precision):
    rng = np.random.default_rng(7)
    spec = make_spec(kernel_size, 4, centers, precision)
    st = random_stage(rng, spec)
    f, _ = random_images(rng, shape, 3)
    u = f + rng.normal(0, 10, f.shape)
    g = rng.normal(size=f.shape)
    ref = stage_gradient(u, f, g, st, spec, backend="numpy")
    for input_grad in (True, False):
        got = stage_gradient(u, f, g, st, spec, input_grad=input_grad, _strip=strip,
                             _chunk=chunk)
        assert rel_err(got.coefficients, ref.coefficients) < 1e-9
        assert rel_err(got.weights, ref.weights) < 1e-9
        assert got.log_lambda == pytest.approx(ref.log_lambda, rel=1e-12)
        if input_grad:
            assert got.u.shape == u.shape
            assert rel_err(got.u, ref.u) < 1e-9
        else:
            assert got.u is None
    # forward pass
    out = stage_forward(u, f, st, spec, _strip=strip, _chunk=chunk)
    assert rel_err(out, stage_forward(u, f, st, spec, backend="numpy")) < 1e-12
    # float32: same quantities to float32 accuracy
    got = stage_gradient(u.astype(np.float32), f.astype(np.float32), g.astype(np.float32), st,
                         spec, _strip=strip, _chunk=chunk)
    assert got.u.dtype == np.float32
    assert rel_err(got.coefficients, ref.coefficients) < 1e-3
    assert rel_err(got.weights, ref.weights) < 1e-3
    assert got.log_lambda == pytest.approx(ref.log_lambda, rel=1e-4)
    assert rel_err(got.u, ref.u) < 1e-4
    out32 = stage_forward(u.astype(np.float32), f.astype(np.float32), st, spec)
    assert out32.dtype == np.float32 and rel_err(out32, out) < 1e-5


def test_numba_responses_beyond_the_rbf_grid():
    """Responses far outside the centres (phi = 0 there) on both sides, in both kernels."""
    rng = np.random.default_rng(11)
    spec = make_spec(5, 4)
    st = random_stage(rng, spec)
    u = rng.uniform(-3000, 3000, (2, 9, 10))  # |z| reaches thousands: beyond +-415
    f = u + rng.normal(0, 10, u.shape)
    g = rng.normal(size=u.shape)
    filters = params_to_model([st], spec, sigma=25.0).filters[0]
    z = np.concatenate([correlate_valid(np.pad(ub, 4, mode="symmetric"), k).ravel()
                        for ub in u for k in filters])
    # last centre + (K + 1/2) spacings, K = 10: beyond it the kernels' tables end
    assert z.min() < -415 and z.max() > 415
    ref = stage_gradient(u, f, g, st, spec, backend="numpy")
    got = stage_gradient(u, f, g, st, spec, _strip=4)
    for name in ("coefficients", "weights", "u"):
        assert rel_err(getattr(got, name), getattr(ref, name)) < 1e-9, name
    out = stage_forward(u, f, st, spec, _strip=4)
    assert rel_err(out, stage_forward(u, f, st, spec, backend="numpy")) < 1e-12


def test_numba_loss_and_grad_matches_reference():
    rng = np.random.default_rng(8)
    spec, x, noisy, clean = _multi_stage_problem(rng, 5, (7, 6), 3, n_images=3)
    for stages, params, kw in [("all", x, {}),
                               ("last", x[2 * spec.stage_size :],
                                {"fixed": x[: 2 * spec.stage_size]})]:
        v_ref, g_ref = loss_and_grad(params, noisy, clean, spec, stages=stages,
                                     backend="numpy", **kw)
        v, g = loss_and_grad(params, list(noisy), list(clean), spec, stages=stages, **kw)
        assert v == pytest.approx(v_ref, rel=1e-12)
        assert rel_err(g, g_ref) < 1e-9
        v32, g32 = loss_and_grad(params, noisy.astype(np.float32), clean.astype(np.float32),
                                 spec, stages=stages, **kw)
        assert v32 == pytest.approx(v_ref, rel=1e-4)
        assert rel_err(g32, g_ref) < 1e-3


# ------------------------------------------------------------------ parameters and models
def test_pack_unpack_roundtrip_and_errors():
    rng = np.random.default_rng(9)
    spec = make_spec(3)
    stages = [random_stage(rng, spec) for _ in range(2)]
    x = pack_params(stages)
    assert x.dtype == np.float64 and x.shape == (2 * spec.stage_size,)
    back = unpack_params(x, spec)
    for s0, s1 in zip(stages, back):
        np.testing.assert_array_equal(s0.coefficients, s1.coefficients)
        np.testing.assert_array_equal(s0.weights, s1.weights)
        assert s0.log_lambda == s1.log_lambda
    with pytest.raises(ValueError, match="not a positive multiple"):
        unpack_params(x[:-1], spec)
    with pytest.raises(ValueError, match="stages='last' trains one stage"):
        loss_and_grad(x, rng.normal(size=(4, 4)), rng.normal(size=(4, 4)), spec, stages="last")
    with pytest.raises(ValueError, match="stages must be"):
        loss_and_grad(x, rng.normal(size=(4, 4)), rng.normal(size=(4, 4)), spec, stages="first")
    with pytest.raises(ValueError, match="same shape"):
        loss_and_grad(x, [np.zeros((4, 4)), np.zeros((4, 5))], np.zeros((2, 4, 4)), spec)


def test_model_bridge_roundtrip():
    rng = np.random.default_rng(10)
    spec = make_spec(5)
    stages = [random_stage(rng, spec) for _ in range(2)]
    model = params_to_model(stages, spec, sigma=15.0, name="test")
    assert isinstance(model, TRDModel) and model.n_stages == 2
    np.testing.assert_allclose(np.sum(model.filters**2, axis=(2, 3)), 1.0, rtol=1e-13)
    np.testing.assert_allclose(model.lambdas, np.exp([s.log_lambda for s in stages]))
    x, spec2 = model_to_params(model)
    assert spec2.n_filters == spec.n_filters and spec2.kernel_size == spec.kernel_size
    # coefficients come back normalised; the model they define is the same
    again = params_to_model(x, spec2, sigma=15.0)
    np.testing.assert_allclose(again.filters, model.filters, atol=1e-13)
    np.testing.assert_array_equal(again.weights, model.weights)
    np.testing.assert_allclose(again.lambdas, model.lambdas, rtol=1e-13)
    # and the stage maps agree
    f, _ = random_images(rng, (6, 7))
    np.testing.assert_allclose(forward_batch(f, x, spec2, backend="numpy")[0],
                               forward_batch(f, stages, spec, backend="numpy")[0], rtol=1e-12)
    bad = model.copy()
    bad.filters[1, 0] += 0.1  # nonzero mean
    with pytest.raises(ValueError, match="not zero-mean"):
        model_to_params(bad)


# ------------------------------------------------------------ losses without clean images
def test_sure_gradient_finite_differences():
    # both passes (from y and from y + eps b) differentiated exactly, joint and greedy
    rng = np.random.default_rng(11)
    spec, x, noisy, _ = _multi_stage_problem(rng, 3, (6, 5), 2)

    def loss(v):
        return sure_loss_and_grad(v, noisy, spec, sigma=20.0, backend="numpy", seed=3)[0]

    value, grad = sure_loss_and_grad(x, noisy, spec, sigma=20.0, backend="numpy", seed=3)
    for _ in range(3):
        assert_fd(loss, grad, x, rng.normal(size=x.size), 1e-4)
    size = spec.stage_size
    fixed, last = x[:size], x[size:]

    def greedy(v):
        return sure_loss_and_grad(v, noisy, spec, sigma=20.0, stages="last", fixed=fixed,
                                  backend="numpy", seed=3)[0]

    gv, gg = sure_loss_and_grad(last, noisy, spec, sigma=20.0, stages="last", fixed=fixed,
                                backend="numpy", seed=3)
    assert gv == pytest.approx(value, rel=1e-12)  # the same two-stage map
    assert_fd(greedy, gg, last, rng.normal(size=last.size), 1e-4)
    # the Numba kernels give the same loss and gradient
    nv, ng = sure_loss_and_grad(x, noisy, spec, sigma=20.0, backend="numba", seed=3)
    assert nv == pytest.approx(value, rel=1e-9)
    assert rel_err(ng, grad) < 1e-8


def test_sure_is_an_unbiased_estimate_of_the_clean_loss():
    # averaged over noise draws, SURE equals the loss against the clean images
    rng = np.random.default_rng(12)
    spec = make_spec(5)
    x = pack_params([random_stage(rng, spec, 5.0) for _ in range(2)])
    clean = rng.uniform(40, 215, (4, 24, 24))
    sigma = 15.0
    sure, true, naive = [], [], []
    for k in range(40):
        noisy = clean + sigma * rng.standard_normal(clean.shape)
        sure.append(sure_loss_and_grad(x, noisy, spec, sigma=sigma, seed=k)[0])
        true.append(loss_and_grad(x, noisy, clean, spec)[0])
        # without the divergence term: the fit to the noisy image less N sigma^2 / 2
        naive.append(loss_and_grad(x, noisy, noisy, spec)[0] - 0.5 * clean.size * sigma**2)
    sure, true, naive = np.array(sure), np.array(true), np.array(naive)
    spread = np.std(sure - true) / np.sqrt(len(sure))
    assert abs(np.mean(sure - true)) < 4 * spread
    assert abs(np.mean(sure - true)) < 0.02 * np.mean(true)
    assert abs(np.mean(naive - true)) > 10 * spread  # the divergence term matters here
    with pytest.raises(ValueError, match="sigma"):
        sure_loss_and_grad(x, clean, spec, sigma=0.0)


def test_noise2noise_target_is_unbiased():
    # the loss is linear in the target's noise: two opposite noise draws average to the clean
    # target's gradient exactly (Noise2Noise, Lehtinen et al. 2018)
    rng = np.random.default_rng(13)
    spec, x, noisy, clean = _multi_stage_problem(rng, 3, (6, 5), 2)
    n = 20.0 * rng.standard_normal(clean.shape)
    lp, gp = loss_and_grad(x, noisy, clean + n, spec, backend="numpy")
    lm, gm = loss_and_grad(x, noisy, clean - n, spec, backend="numpy")
    lc, gc = loss_and_grad(x, noisy, clean, spec, backend="numpy")
    assert rel_err(0.5 * (gp + gm), gc) < 1e-10
    assert 0.5 * (lp + lm) == pytest.approx(lc + 0.5 * np.sum(n**2), rel=1e-12)

"""Poisson-Gaussian noise: the variance-stabilising transform, its exact unbiased inverse, the
parameter estimator, and denoising through them."""

import warnings

import numpy as np
import pytest
from skimage import data

from skimage_trd import (
    denoise_trd_poisson,
    estimate_poisson_gaussian,
    generalized_anscombe,
    inverse_generalized_anscombe,
)

GAIN, READ, OFFSET = 2.0, 3.0, 100.0


def _observe(y, rng):
    return GAIN * rng.poisson(y) + OFFSET + READ * rng.standard_normal(np.shape(y))


@pytest.mark.parametrize("y, tolerance", [(3.0, 0.12), (10.0, 0.03), (50.0, 0.01)])
def test_transform_stabilizes_the_variance(y, tolerance):
    # the GAT is exact only asymptotically: a few photons leave a little excess variance
    z = _observe(np.full(200_000, y), np.random.default_rng(0))
    assert abs(generalized_anscombe(z, GAIN, READ, OFFSET).var() - 1) < tolerance


@pytest.mark.parametrize("y", [0.2, 1.0, 4.0, 30.0, 1000.0])
def test_exact_unbiased_inverse(y):
    z = _observe(np.full(400_000, y), np.random.default_rng(1))
    d = generalized_anscombe(z, GAIN, READ, OFFSET).mean()
    back = inverse_generalized_anscombe(d, GAIN, READ, OFFSET)
    assert abs(back - (GAIN * y + OFFSET)) < 0.02 * GAIN * y + 0.02
    # the algebraic inverse is biased at low counts; the exact one is not
    algebraic = GAIN * ((d / 2) ** 2 - 3 / 8 - (READ / GAIN) ** 2) + OFFSET
    if y <= 1:
        assert abs(algebraic - (GAIN * y + OFFSET)) > abs(back - (GAIN * y + OFFSET))


def test_estimator():
    rng = np.random.default_rng(2)
    y = data.camera()[:256, :256] / 255.0 * 60 + 2
    gain, read = estimate_poisson_gaussian(_observe(y, rng), offset=OFFSET)
    assert abs(gain - GAIN) < 0.3 * GAIN and abs(read - READ) < 0.4 * READ
    with pytest.raises(ValueError, match="32x32"):
        estimate_poisson_gaussian(np.zeros((10, 10)))


def test_denoising_low_counts_beats_gaussian_only():
    from skimage_trd import denoise_trd

    rng = np.random.default_rng(3)
    y = data.camera()[100:228, 100:228] / 255.0 * 20 + 0.5
    z = _observe(y, rng)
    truth = GAIN * y + OFFSET
    err = lambda a: np.mean((a - truth) ** 2)  # noqa: E731
    known = denoise_trd_poisson(z, GAIN, READ, offset=OFFSET)
    estimated = denoise_trd_poisson(z, offset=OFFSET)
    assert known.shape == z.shape and known.dtype == np.float64
    assert err(known) < 0.2 * err(z)
    assert err(known) < 0.7 * err(denoise_trd(z))
    assert err(estimated) < 1.2 * err(known)
    stack = denoise_trd_poisson(np.stack([z, z]), GAIN, READ, offset=OFFSET)
    np.testing.assert_allclose(stack[1], known, atol=1e-9)


def test_channels_dtype_and_bad_input():
    rng = np.random.default_rng(5)
    y = data.camera()[:64, :64] / 255.0 * 20 + 0.5
    z = _observe(y, rng)
    planes = np.stack([z, _observe(2 * y, rng), _observe(y[::-1], rng)])
    rgb = np.moveaxis(planes, 0, -1)
    out = denoise_trd_poisson(rgb, GAIN, READ, offset=OFFSET, channel_axis=-1)
    assert out.shape == rgb.shape
    np.testing.assert_allclose(np.moveaxis(out, -1, 0),
                               denoise_trd_poisson(planes, GAIN, READ, offset=OFFSET), atol=1e-9)
    with pytest.warns(UserWarning, match="channel_axis=-1"):  # (M, N, 3) without channel_axis
        denoise_trd_poisson(rgb, GAIN, READ, offset=OFFSET)
    counts = np.clip(np.rint(z), 0, None).astype(np.uint16)
    kept = denoise_trd_poisson(counts, GAIN, READ, offset=OFFSET, preserve_dtype=True)
    assert kept.dtype == np.uint16
    np.testing.assert_array_equal(
        kept, np.rint(denoise_trd_poisson(counts, GAIN, READ, offset=OFFSET)).astype(np.uint16))
    for kwargs, match in [(dict(gain=GAIN, read_noise=-1.0), "read_noise"),
                          (dict(gain=0.0, read_noise=READ), "gain"),
                          (dict(offset=1e4), "offset=10000 is above 99 %")]:
        with pytest.raises(ValueError, match=match):
            denoise_trd_poisson(z, **{"offset": OFFSET, **kwargs})
    bad = z.copy()
    bad[3, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        denoise_trd_poisson(bad, offset=OFFSET)
    with pytest.raises(TypeError, match="bool"):
        denoise_trd_poisson(z > OFFSET)


def test_estimator_refuses_what_it_cannot_fit():
    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 200, 256)[None, :].repeat(256, axis=0)
    darker_is_noisier = 100 + ramp + (12 - ramp / 20) * rng.standard_normal(ramp.shape)
    with pytest.raises(ValueError, match="does not grow with brightness"):
        estimate_poisson_gaussian(darker_is_noisier, offset=100)
    flat = 100 + 3 * rng.standard_normal((64, 64))
    with pytest.raises(ValueError, match="too small or too flat"):
        estimate_poisson_gaussian(flat, offset=100)


def test_below_offset_zero_signal_and_saturation():
    rng = np.random.default_rng(4)
    # no signal: read noise around the dark level, partly below it; comes back as the offset
    dark = OFFSET + READ * rng.standard_normal((96, 96))
    assert (dark < OFFSET).mean() > 0.4
    out = denoise_trd_poisson(dark, GAIN, READ, offset=OFFSET)
    assert np.all(np.isfinite(out)) and abs(out.mean() - OFFSET) < 0.5 and out.std() < 0.5
    # saturated 12-bit camera: restored as if unsaturated, and said so
    y = np.full((96, 96), 5.0)
    y[:, 48:] = 5000.0
    raw = np.minimum(GAIN * rng.poisson(y) + OFFSET, 4095).astype(np.uint16)
    with pytest.warns(UserWarning, match="full-scale"):
        out = denoise_trd_poisson(raw, GAIN, READ, offset=OFFSET)
    assert abs(out[:, 60:].mean() - 4095) < 5
    unsaturated = np.minimum(raw, 4000)
    unsaturated[0, 0] = 4095  # a single full-scale pixel is no saturation
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        denoise_trd_poisson(unsaturated, GAIN, READ, offset=OFFSET)
    # one saturated plane in a stack of many is said, although the stack as a whole is not
    stack = np.stack([unsaturated] * 9 + [raw])
    with pytest.warns(UserWarning, match="1 of 10 planes"):
        denoise_trd_poisson(stack, GAIN, READ, offset=OFFSET)


def test_progress_counts_over_all_planes():
    rng = np.random.default_rng(5)
    y = np.full((3, 48, 48), 8.0)
    raw = _observe(y, rng)
    raw[1] = OFFSET  # a constant plane, which denoise_trd only copies
    calls = []
    denoise_trd_poisson(raw, GAIN, READ, offset=OFFSET, progress=lambda d, t: calls.append((d, t)))
    done = [d / t for d, t in calls]
    assert done == sorted(done) and done[-1] == 1.0 and len({t for _, t in calls}) == 1
    assert any(abs(f - 1 / 3) < 1e-9 for f in done) and any(abs(f - 2 / 3) < 1e-9 for f in done)


def test_select_sure_picks_the_model_with_the_lower_risk():
    # two candidates: a shipped model, and a copy of it that does nothing (zero influence
    # functions: the output is the input, risk = the noise); SURE must keep the real one
    import copy

    from skimage_trd import load_model

    rng = np.random.default_rng(6)
    y = 20 * (data.camera()[100:196, 100:196] / 255.0)
    raw = _observe(y, rng)
    real = load_model("trd-gauss-s50-7x7-5st")
    idle = copy.deepcopy(load_model("trd-gauss-s25-7x7-5st"))
    idle.weights = np.zeros_like(idle.weights)
    idle.name = "idle"
    for bank in ([real, idle], [idle, real]):
        out = denoise_trd_poisson(raw, GAIN, READ, offset=OFFSET, select="sure", model=bank)
        np.testing.assert_array_equal(
            out, denoise_trd_poisson(raw, GAIN, READ, offset=OFFSET, model=real))
    # a flat plane (no range to choose by) is copied, as with the range rule
    flat = np.full((64, 64), 300.0)
    np.testing.assert_allclose(
        denoise_trd_poisson(flat, GAIN, READ, offset=OFFSET, select="sure"),
        denoise_trd_poisson(flat, GAIN, READ, offset=OFFSET))
    with pytest.raises(ValueError, match="select"):
        denoise_trd_poisson(raw, GAIN, READ, offset=OFFSET, select="best")


def test_read_noise_estimated_for_a_given_gain():
    # the gain known, only the line's intercept is fitted: the read noise comes out near the
    # truth where the free fit wanders (it gave 0 for the moon at 20 photons)
    rng = np.random.default_rng(0)
    y = data.moon()[:256, :256] / 255.0 * 20 + 0.5
    z = _observe(y, rng)
    g, r = estimate_poisson_gaussian(z, offset=OFFSET, gain=GAIN)
    assert g == GAIN and abs(r - READ) < 0.15 * READ
    assert abs(estimate_poisson_gaussian(z, offset=OFFSET)[1] - READ) > 0.5 * READ
    np.testing.assert_array_equal(denoise_trd_poisson(z, GAIN, offset=OFFSET),
                                  denoise_trd_poisson(z, GAIN, r, offset=OFFSET))
    with pytest.raises(ValueError, match="gain"):
        estimate_poisson_gaussian(z, offset=OFFSET, gain=0.0)


def test_range_rule_blends_the_two_models_around_the_level():
    # a stabilised plane whose level lies between two of the bank's models is denoised by
    # both, blended linearly in log(level) between their noise levels
    import math

    from skimage_trd import denoise_trd, load_model
    from skimage_trd._planes import robust_range, training_sigma

    rng = np.random.default_rng(7)
    y = 20 * (data.camera()[::4, ::4] / 255.0)
    raw = _observe(y, rng)
    s25, s50 = load_model("trd-gauss-s25-7x7-5st"), load_model("trd-gauss-s50-7x7-5st")
    s15 = load_model("trd-gauss-s15-7x7-5st")
    t = generalized_anscombe(raw, GAIN, READ, offset=OFFSET)
    level = training_sigma(255.0 / robust_range(t))
    assert 25 < level < 50  # (20 photons, read noise 3)
    w = math.log(level / 25) / math.log(2)
    parts = [denoise_trd(t, 1.0, model=m, preserve_range=True) for m in (s25, s50)]
    expected = inverse_generalized_anscombe((1 - w) * parts[0] + w * parts[1], GAIN, READ,
                                            offset=OFFSET)
    for bank in ([s15, s25, s50], [s50, s25]):
        out = denoise_trd_poisson(raw, GAIN, READ, offset=OFFSET, model=bank)
        np.testing.assert_allclose(out, expected, rtol=0, atol=1e-9)
    # the blend is better than either model alone here
    truth = GAIN * y + OFFSET
    err = [np.mean((inverse_generalized_anscombe(p, GAIN, READ, offset=OFFSET) - truth) ** 2)
           for p in parts]
    assert np.mean((expected - truth) ** 2) < min(err)
    # no blend: a single model, a level beyond the bank (all models below it), select='sure'
    single = denoise_trd_poisson(raw, GAIN, READ, offset=OFFSET, model=s25)
    np.testing.assert_allclose(single, inverse_generalized_anscombe(parts[0], GAIN, READ,
                                                                    offset=OFFSET), atol=1e-9)
    beyond = denoise_trd_poisson(raw, GAIN, READ, offset=OFFSET, model=[s15, s25])
    np.testing.assert_array_equal(beyond, single)
    sure = denoise_trd_poisson(raw, GAIN, READ, offset=OFFSET, model=[s25, s50], select="sure")
    assert any(np.array_equal(sure, denoise_trd_poisson(raw, GAIN, READ, offset=OFFSET,
                                                        model=m)) for m in (s25, s50))

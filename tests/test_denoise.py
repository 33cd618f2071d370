"""The public denoise_trd: dtype rules, shapes, channels, equivariance, errors, the oracle."""

import warnings

import numpy as np
import pytest
from conftest import AUTHORS, SHARED, random_model, require_shared
from skimage import data

from skimage_trd import denoise_trd, import_matlab_model, load_model
from skimage_trd.kernels.engine import run_model


@pytest.fixture(scope="module")
def bank():
    models = []
    for i, s in enumerate((15.0, 25.0, 50.0)):
        m = random_model(2, 5, seed=20 + i)
        m.sigma = s
        m.name = f"rand-s{s:g}"
        models.append(m)
    return models


@pytest.fixture(scope="module")
def noisy():
    rng = np.random.default_rng(0)
    clean = data.camera()[100:164, 200:260] / 255.0
    return clean + 0.1 * rng.standard_normal(clean.shape)


def test_matches_engine_on_model_scale(model, noisy):
    # float64 input: mapped onto the model's scale in float64, the model run in float32, the
    # result mapped back in float64 and returned as float64
    out = denoise_trd(noisy, 0.1, model=model)
    assert out.dtype == np.float64
    gain = model.sigma / 0.1
    f = (noisy - noisy.mean()) * gain + 127.5
    expected = (run_model(f.astype(np.float32), model).astype(np.float64) - 127.5) / gain \
        + noisy.mean()
    np.testing.assert_allclose(out, expected, atol=1e-12)
    # exact=True: float64 arithmetic and exact influence functions
    exact = denoise_trd(noisy, 0.1, model=model, exact=True)
    expected = (run_model(f, model, exact=True) - 127.5) / gain + noisy.mean()
    np.testing.assert_allclose(exact, expected, atol=1e-12)
    # float32 arithmetic is within 0.01 of exact on the model's [0, 255] scale
    np.testing.assert_allclose(out, exact, atol=0.01 / gain)
    assert np.abs(out - exact).max() > 0  # (not the same computation)


def test_float64_input_computes_like_float32_input(model, noisy):
    a = denoise_trd(noisy, 0.1, model=model)
    b = denoise_trd(noisy.astype(np.float32), 0.1, model=model)
    assert a.dtype == np.float64 and b.dtype == np.float32
    # the same model run in float32; only the maps to and from its scale differ in precision
    np.testing.assert_allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("a, b", [(3.0, 7.0), (0.01, -2.0), (255.0, 0.0)])
def test_affine_equivariance(bank, noisy, a, b):
    ref = denoise_trd(noisy, 0.1, model=bank)
    out = denoise_trd(a * noisy + b, a * 0.1, model=bank)
    np.testing.assert_allclose((out - b) / a, ref, atol=1e-9)


def test_equivariance_with_estimated_sigma(bank, noisy):
    ref = denoise_trd(noisy, model=bank)
    out = denoise_trd(40 * noisy + 3, model=bank)
    np.testing.assert_allclose((out - 3) / 40, ref, atol=1e-9)


def test_bank_picks_nearest_sigma(bank, noisy):
    # 0.2 on a ~[0, 1] image is ~51 on the [0, 255] scale: the sigma-50 model
    out = denoise_trd(noisy, 0.2, model=bank, data_range=1.0)
    assert np.allclose(out, denoise_trd(noisy, 0.2, model=bank[2]))
    out = denoise_trd(noisy, 0.06, model=bank, data_range=1.0)
    assert np.allclose(out, denoise_trd(noisy, 0.06, model=bank[0]))


def test_range_rule_matches_the_level_of_the_training_images(bank, noisy):
    from skimage_trd._planes import (
        TRAINING_RANGE_LEVELS,
        PlaneOptions,
        plane_settings,
        robust_range,
        training_sigma,
    )

    # the table inverted: each training level maps back to its sigma, monotone in between,
    # proportional beyond, 0 and inf unchanged
    for s, level in TRAINING_RANGE_LEVELS:
        assert training_sigma(level) == pytest.approx(s)
    grid = np.geomspace(1.0, 1000.0, 200)
    assert np.all(np.diff([training_sigma(v) for v in grid]) > 0)
    (s0, l0), (s1, l1) = TRAINING_RANGE_LEVELS[0], TRAINING_RANGE_LEVELS[-1]
    assert training_sigma(l0 / 2) == pytest.approx(s0 / 2)
    assert training_sigma(2 * l1) == pytest.approx(2 * s1)
    assert training_sigma(0.0) == 0.0 and training_sigma(np.inf) == np.inf
    # a plane is judged by its robust range as the training images were: 0.1 of noise on a
    # plane whose robust range is r sits at 25.5 / r on the 0..255 scale, which the models'
    # training data show at a lower training sigma
    settings = plane_settings(noisy, 0.1, PlaneOptions(bank=tuple(bank), in_dtype=noisy.dtype))
    level = 255.0 * 0.1 / robust_range(noisy)
    assert settings.level == pytest.approx(training_sigma(level))
    assert settings.level < level
    # data_range= is the clean image's full range, as the training images' 255 was: unmapped
    given = plane_settings(noisy, 0.1, PlaneOptions(bank=tuple(bank), in_dtype=noisy.dtype, data_range=1.0))
    assert given.level == pytest.approx(25.5)


@pytest.mark.parametrize(
    "dtype, out_dtype",
    [(np.float16, np.float32), (np.float32, np.float32), (np.float64, np.float64),
     (np.uint8, np.float64), (np.uint16, np.float64), (np.int16, np.float64)],
)
def test_dtypes(model, noisy, dtype, out_dtype):
    if np.dtype(dtype).kind == "f":
        img = noisy.astype(dtype)
        sigma = 0.1
    else:
        top = np.iinfo(dtype).max
        img = (np.clip(noisy, 0, 1) * top).astype(dtype)
        sigma = 0.1 * top
    out = denoise_trd(img, sigma, model=model)
    assert out.dtype == out_dtype and out.shape == img.shape
    assert np.all(np.isfinite(out))
    if np.dtype(dtype).kind != "f":
        low = -1.0 if np.dtype(dtype).kind == "i" else 0.0
        assert out.min() >= low and out.max() <= 1
        ref = denoise_trd(img.astype(np.float64) / top, 0.1, model=model)
        np.testing.assert_allclose(out, np.clip(ref, low, 1), atol=1e-4)


def test_preserve_range(model, noisy):
    img = (np.clip(noisy, 0, 1) * 4095).astype(np.uint16)
    out = denoise_trd(img, 409.5, model=model, preserve_range=True)
    ref = denoise_trd(img.astype(np.float64), 409.5, model=model)
    assert out.dtype == np.float64
    np.testing.assert_allclose(out, np.clip(ref, 0, 65535), atol=1e-2)


@pytest.mark.parametrize("preserve_range", [False, True])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int16, np.float16, np.float32])
def test_preserve_dtype(model, noisy, dtype, preserve_range):
    """preserve_dtype returns the input's dtype and units: the float result, rounded and clipped."""
    if np.dtype(dtype).kind == "f":
        img, sigma = noisy.astype(dtype), 0.1
    else:
        top = 4095 if dtype != np.uint8 else 255  # a 12-bit camera in 16 bits
        img = (np.clip(noisy, 0, 1) * top).astype(dtype)
        sigma = 0.1 * top
    kw = dict(model=model, preserve_range=preserve_range)
    out = denoise_trd(img, sigma, preserve_dtype=True, **kw)
    assert out.dtype == img.dtype and out.shape == img.shape
    ref = denoise_trd(img, sigma, **kw)
    if np.dtype(dtype).kind == "f":
        np.testing.assert_array_equal(out, ref.astype(dtype))
        return
    units = ref if preserve_range else ref * np.iinfo(dtype).max
    info = np.iinfo(dtype)
    expected = np.clip(np.rint(units), info.min, info.max)
    assert np.abs(out.astype(np.float64) - expected).max() <= 1  # rounding of float32 work
    assert np.mean(out != expected) < 1e-3
    assert out.max() <= top + 3 * sigma and abs(out.astype(float).mean() - img.mean()) < 0.01 * top


@pytest.mark.parametrize("dtype", [np.int32, np.uint32, np.int64, np.uint64])
def test_preserve_dtype_wide_integers(model, dtype):
    info = np.iinfo(dtype)
    img = np.full((40, 50), info.max, dtype)  # saturated: must not wrap around
    img[:, :25] = max(info.min, -(2**40))
    img[0, 0] = 100000001  # above 2**24: float32 would not hold it
    with pytest.warns(UserWarning, match="half an integer step"):  # a deliberate copy
        out = denoise_trd(img, 1e-30, model=model, preserve_range=True, preserve_dtype=True)
    assert out.dtype == dtype
    np.testing.assert_array_equal(out[:, 30:], info.max if info.max < 2**53 else out[:, 30:])
    assert out[0, 0] == 100000001 and out[5, 40] >= info.max // 2
    noisy = (np.random.default_rng(0).standard_normal((40, 50)) * 1e6 + 2e9).astype(dtype)
    out = denoise_trd(noisy, 1e6, model=model, preserve_range=True, preserve_dtype=True)
    assert out.dtype == dtype and abs(float(out.mean()) - 2e9) < 1e6


def test_preserve_dtype_clips_and_passes_a_clean_image_through(model):
    img = np.full((40, 50), 65535, np.uint16)
    img[:, :25] = 0
    with pytest.warns(UserWarning, match="half an integer step"):  # noise negligible: a copy
        out = denoise_trd(img, 1e-12, model=model, preserve_dtype=True)
    np.testing.assert_array_equal(out, img)
    out = denoise_trd(img, 3000.0, model=model, preserve_dtype=True)
    assert out.dtype == np.uint16 and out.min() >= 0  # clipped, no wrap-around


@pytest.mark.parametrize("channel_axis", [0, 1, 2, -1])
def test_channel_axis(model, noisy, channel_axis):
    rgb = np.stack([noisy, noisy[::-1], noisy[:, ::-1]], axis=-1)
    img = np.moveaxis(rgb, -1, channel_axis)
    out = denoise_trd(img, 0.1, model=model, channel_axis=channel_axis, color_transform="none")
    assert out.shape == img.shape
    back = np.moveaxis(out, channel_axis, -1)
    np.testing.assert_allclose(back[..., 1], denoise_trd(noisy[::-1], 0.1, model=model), atol=1e-12)


def test_per_channel_sigma(model, noisy):
    rgb = np.stack([noisy, noisy], axis=-1)
    out = denoise_trd(rgb, [0.1, 0.05], model=model, channel_axis=-1)
    np.testing.assert_allclose(out[..., 1], denoise_trd(noisy, 0.05, model=model), atol=1e-12)


def test_stack_is_processed_plane_by_plane(model, noisy):
    stack = np.stack([noisy, noisy[::-1]])
    out = denoise_trd(stack, 0.1, model=model)
    np.testing.assert_allclose(out[1], denoise_trd(noisy[::-1], 0.1, model=model), atol=1e-12)
    four_d = stack[None]
    assert denoise_trd(four_d, 0.1, model=model).shape == four_d.shape


def test_sigma_zero_returns_input(model, noisy):
    np.testing.assert_array_equal(denoise_trd(noisy, 0, model=model), noisy)


@pytest.mark.parametrize("name", ["trd-gauss-s25-5x5-5st", None])  # a shipped model; the bank
def test_denoising_helps(noisy, name):
    clean = data.camera()[100:164, 200:260] / 255.0
    out = denoise_trd(noisy, 0.1, model=name)
    assert np.mean((out - clean) ** 2) < 0.3 * np.mean((noisy - clean) ** 2)


def test_numpy_backend_and_threads_agree(model, noisy):
    a = denoise_trd(noisy, 0.1, model=model, backend="numpy", exact=True)
    b = denoise_trd(noisy, 0.1, model=model, backend="numba", num_threads=1, exact=True)
    c = denoise_trd(noisy, 0.1, model=model, tile_shape=(20, 20), exact=True)
    np.testing.assert_allclose(a, b, atol=1e-10)
    np.testing.assert_allclose(c, b, atol=1e-10)
    # the default (linear tables, within 2e-4 of phi) moves the result by less than 0.01 on the
    # model's [0, 255] scale (measured 0.002 here)
    d = denoise_trd(noisy, 0.1, model=model, num_threads=2)
    np.testing.assert_allclose(d, b, atol=0.01 * 0.1 / model.sigma)


def test_progress(model, noisy):
    calls = []
    denoise_trd(np.stack([noisy] * 3), 0.1, model=model, progress=lambda d, t: calls.append((d, t)))
    assert calls[-1] == (6, 6) and len(calls) == 6


def test_calibrate_denoiser_works(model, noisy):
    from skimage.restoration import calibrate_denoiser

    best = calibrate_denoiser(noisy, denoise_trd, {"sigma": [0.05, 0.1], "model": [model]})
    assert best(noisy).shape == noisy.shape


@pytest.mark.parametrize(
    "image, kwargs, exc, match",
    [
        (np.zeros(10), {}, ValueError, "at least 2 spatial"),
        (np.zeros((0, 5)), {}, ValueError, "empty"),
        (np.full((8, 8), np.nan), {}, ValueError, "NaN"),
        (np.full((8, 8), np.inf), {}, ValueError, "NaN or infinite"),
        (np.zeros((8, 8), complex), {}, TypeError, "complex"),
        (np.zeros((8, 8), bool), {}, TypeError, "bool"),
        (np.zeros((8, 8)), {"sigma": -1.0}, ValueError, "non-negative"),
        (np.zeros((8, 8)), {"sigma": np.nan}, ValueError, "finite"),
        (np.zeros((8, 8)), {"sigma": "x"}, TypeError, "sigma"),
        (np.zeros((8, 8, 3)), {"channel_axis": 3}, ValueError, "out of range"),
        (np.zeros((8, 8, 3)), {"channel_axis": (0, 1)}, ValueError, "single channel axis"),
        (np.zeros((8, 3)), {"channel_axis": 1}, ValueError, "at least 2 spatial"),
        (np.zeros((8, 8, 3)), {"channel_axis": -1, "sigma": [1, 2]}, ValueError, "one per channel"),
        (np.zeros((8, 8)), {"model": "not-a-model"}, ValueError, "unknown model"),
        (np.zeros((8, 8)), {"backend": "tpu"}, ValueError, "unknown backend"),
        (np.zeros((8, 8)), {"tile_shape": (0, 4)}, ValueError, "tile_shape"),
        (np.zeros((8, 8)), {"n_stages": 9}, ValueError, "n_stages"),
    ],
)
def test_bad_input(model, image, kwargs, exc, match):
    kwargs = {"sigma": 0.1, "model": model, **kwargs}
    with pytest.raises(exc, match=match):
        denoise_trd(image, **kwargs)


def test_color_without_channel_axis_warns(model):
    with pytest.warns(UserWarning, match="channel_axis=-1"):
        denoise_trd(np.zeros((8, 8, 3)), 0.1, model=model)


def test_deblocking_model_refused(model):
    deb = random_model(1, 5, task="deblock")
    with pytest.raises(ValueError, match="deblock model"):
        denoise_trd(np.zeros((8, 8)), 0.1, model=deb)


# ------------------------------------------------------------------ the oracle (../shared)
@pytest.mark.shared
@pytest.mark.slow
def test_bsd68_table1_sigma25_authors_7x7():
    """The authors' 7x7 sigma-25 model over BSD68 gives the paper's 28.92 dB (docs/protocols.md)."""
    from skimage.io import imread

    folder = require_shared(SHARED / "data" / "bsd68")
    m = import_matlab_model(AUTHORS / "denoising" / "JointTraining_7x7_400_180x180_stage=5_sigma=25.mat")
    rng = np.random.default_rng(0)
    scores = []
    for path in sorted(folder.glob("*.png")):
        clean = imread(path).astype(np.float64)
        noisy = clean + 25 * rng.standard_normal(clean.shape)
        out = run_model(noisy.astype(np.float32), m).astype(np.float64)
        scores.append(10 * np.log10(255**2 / np.mean((np.clip(out, 0, 255) - clean) ** 2)))
    assert len(scores) == 68
    assert abs(np.mean(scores) - 28.92) < 0.01
    # and one image through the public API on the [0, 1] scale, against the engine
    clean = imread(sorted(folder.glob("*.png"))[0]).astype(np.float64)
    noisy = clean + 25 * np.random.default_rng(0).standard_normal(clean.shape)
    out = denoise_trd(noisy / 255, 25 / 255, model=m)
    psnr = 10 * np.log10(1 / np.mean((np.clip(out, 0, 1) - clean / 255) ** 2))
    assert abs(psnr - scores[0]) < 0.005


def test_color_in_opponent_space():
    rgb = data.astronaut()[100:164, 150:214] / 255.0
    noisy = rgb + 0.1 * np.random.default_rng(0).standard_normal(rgb.shape)
    m = load_model("trd-gauss-s25-5x5-5st")  # shipped
    opp = denoise_trd(noisy, 0.1, model=m, channel_axis=-1)
    per = denoise_trd(noisy, 0.1, model=m, channel_axis=-1, color_transform="none")
    assert opp.shape == rgb.shape and opp.dtype == np.float64
    # with a trained model, decorrelating the colours helps
    assert np.mean((opp - rgb) ** 2) < np.mean((per - rgb) ** 2)
    # equivariance holds through the transform; channel-first works too
    np.testing.assert_allclose((denoise_trd(2 * noisy + 1, 0.2, model=m, channel_axis=-1) - 1) / 2,
                               opp, atol=1e-9)
    first = denoise_trd(np.moveaxis(noisy, -1, 0), 0.1, model=m, channel_axis=0)
    np.testing.assert_allclose(np.moveaxis(first, 0, -1), opp, atol=1e-12)
    # different noise per channel: channel by channel
    mixed = denoise_trd(noisy, [0.1, 0.05, 0.1], model=m, channel_axis=-1)
    np.testing.assert_allclose(mixed[..., 0], per[..., 0], atol=1e-12)
    with pytest.raises(ValueError, match="color_transform"):
        denoise_trd(noisy, 0.1, model=m, channel_axis=-1, color_transform="lab")


def test_color_integer_input_and_data_range(bank):
    rgb = (data.astronaut()[:48, :48]).astype(np.uint8)
    out = denoise_trd(rgb, 25, model=bank, channel_axis=-1)
    assert out.dtype == np.float64 and 0 <= out.min() and out.max() <= 1
    # preserve_range changes the units of the result, not the model chosen
    kept = denoise_trd(rgb, 25, model=bank, channel_axis=-1, preserve_range=True)
    np.testing.assert_allclose(kept / 255, out, atol=1e-5)
    # data_range is in the image's units, also through the colour transform
    a = denoise_trd(rgb, 25, model=bank, channel_axis=-1, data_range=255)
    b = denoise_trd(rgb / 255, 25 / 255, model=bank, channel_axis=-1, data_range=1.0)
    np.testing.assert_allclose(a, b, atol=1e-3)  # uint8 is computed in float32, b in float64
    wide = denoise_trd(rgb, 25, model=bank, channel_axis=-1, data_range=2550)
    assert np.abs(wide - a).max() > 1e-3  # the range reaches the choice of model


def test_integer_model_choice_does_not_depend_on_preserve_range(bank):
    # a 12-bit camera in uint16: judged by its own contrast, with or without preserve_range
    rng = np.random.default_rng(0)
    clean = data.camera()[:96, :96].astype(float) * 3000 / 255 + 100
    u16 = np.clip(clean + 50 * rng.standard_normal(clean.shape), 0, 65535).astype(np.uint16)
    scaled = denoise_trd(u16, 50, model=bank) * 65535
    kept = denoise_trd(u16, 50, model=bank, preserve_range=True)
    np.testing.assert_allclose(scaled, kept, atol=0.01)
    as_float = denoise_trd(u16.astype(np.float64), 50, model=bank)
    np.testing.assert_allclose(kept, as_float, atol=0.01)


def test_warnings_for_likely_mistakes(model):
    img = (data.camera()[:48, :48]).astype(np.uint8)
    with pytest.warns(UserWarning, match=r"sigma=0.0784.*pass sigma=20, not 0.0784") as rec:
        out = denoise_trd(img, 20 / 255, model=model)
    assert rec[0].filename == __file__  # points at the caller
    with pytest.warns(UserWarning, match=r"uint16 image.*pass sigma=90, not 0\.00137331\.$"):
        denoise_trd(img.astype(np.uint16) * 256, 90 / 65535, model=model)
    np.testing.assert_allclose(out, img / 255, atol=1e-3)  # nearly the input, as it says
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        denoise_trd(img, 0.5, model=model)  # half a grey level: plausible, no warning
        # floats: any sigma up to the spread of their values (the sky above is flatter than
        # noise of 20/255 would leave it: that warns, see the next test)
        denoise_trd(data.camera()[100:148, 200:248] / 255, 20 / 255, model=model)
        denoise_trd(np.zeros((8, 8, 3)), 0.1, model=model, channel_axis=-1)
        denoise_trd(np.zeros((1, 64, 8)), 0.1, model=model, channel_axis=-1)  # 1-row planes
    with pytest.warns(UserWarning, match=r"64 channels of 3x64 planes.*channel_axis=0\."):
        denoise_trd(np.zeros((3, 64, 64)), 0.1, model=model, channel_axis=-1)


def test_sigma_on_the_0_255_scale_for_an_image_in_0_1_warns(model):
    # the opposite of the uint8 mistake above: a float image in [0, 1], sigma in grey levels
    rng = np.random.default_rng(0)
    clean = data.camera()[:64, :64] / 255.0
    noisy = clean + 0.1 * rng.standard_normal(clean.shape)
    with pytest.warns(UserWarning, match=r"sigma=20 is \S+x the spread of this image's values "
                                         r".*pass sigma=20/255=0\.0784") as rec:
        denoise_trd(noisy, 20, model=model)
    assert len(rec) == 1 and rec[0].filename == __file__  # points at the caller
    with pytest.warns(UserWarning, match=r"sigma=20 is \S+x .*pass sigma=20/255=0\.0784"):
        denoise_trd(np.stack([np.clip(noisy, 0, 1)] * 3, -1), [20, 20, 20], model=model,
                    channel_axis=-1, color_transform="none")  # colour, one sigma per channel
    with pytest.warns(UserWarning, match=r"sigma=3000 .*0\.\.65535 scale, pass "
                                         r"sigma=3000/65535=0\.0458"):
        denoise_trd(noisy, 3000, model=model)
    u8 = np.clip(np.rint(noisy * 255), 0, 255).astype(np.uint8)
    with pytest.warns(UserWarning, match=r"sigma=300 is \S+x .*noise's standard deviation"):
        denoise_trd(u8, 300, model=model)


def test_proper_sigma_values_do_not_warn(model):
    rng = np.random.default_rng(1)
    clean = data.camera()[:64, :64] / 255.0
    noisy = clean + 0.1 * rng.standard_normal(clean.shape)
    u8 = np.clip(np.rint(noisy * 255), 0, 255).astype(np.uint8)
    u16 = np.clip(np.rint(noisy * 4000 + 100), 0, 65535).astype(np.uint16)  # a 12-bit camera
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        denoise_trd(noisy, 0.1, model=model)  # [0, 1] float, sigma in its units
        denoise_trd(noisy.astype(np.float32), 0.1, model=model)
        # the strongest shipped level, clipped to [0, 1] (as an 8-bit image would be)
        heavy = np.clip(clean + 150 / 255 * rng.standard_normal(clean.shape), 0, 1)
        denoise_trd(heavy, 150 / 255, model=model)
        denoise_trd(noisy * 255, 25, model=model)  # a float image on the 0..255 scale
        denoise_trd(u8, 25, model=model)  # uint8: grey levels, with and without preserve_range
        denoise_trd(u8, 25, model=model, preserve_range=True, preserve_dtype=True)
        denoise_trd(u16, 400, model=model)  # uint16: camera units
        denoise_trd(u16, 400, model=model, preserve_range=True)
        denoise_trd(np.full((64, 64), 0.5), 0.1, model=model)  # a constant image: no spread
        denoise_trd(noisy[:6, :6], 1.0, model=model)  # too few values to judge
        denoise_trd(noisy, model=model)  # estimated


def test_tile_shape_forms(model, noisy):
    whole = denoise_trd(noisy, 0.1, model=model)
    np.testing.assert_allclose(denoise_trd(noisy, 0.1, model=model, tile_shape=24), whole,
                               atol=1e-6)
    for bad, err in [("ab", TypeError), ("24", TypeError), ((0, 8), ValueError),
                     ((8, 8, 8), ValueError), ((24.5, 24), ValueError), (3.5, TypeError)]:
        with pytest.raises(err, match="tile_shape"):
            denoise_trd(noisy, 0.1, model=model, tile_shape=bad)


def test_tiny_noise_beside_a_wide_spread_runs_in_float64(model, monkeypatch):
    # noise 2e-7 of the spread: on the model's scale the plane reaches 5e6 * s_m from the mid
    # level, where float32 rounding alone is a sixth of the noise; such planes run in float64
    import skimage_trd._planes as planes

    rng = np.random.default_rng(3)
    sigma = 1e-7
    img = np.linspace(0, 1, 48 * 40).reshape(48, 40) + sigma * rng.standard_normal((48, 40))
    exact = denoise_trd(img, sigma, model=model, exact=True)
    out = denoise_trd(img, sigma, model=model)
    assert np.abs(out - exact).max() < 0.01 * sigma
    monkeypatch.setattr(planes, "FLOAT32_SPREAD", np.inf)  # the check can fail: float32 here
    out32 = denoise_trd(img, sigma, model=model)
    assert np.abs(out32 - exact).max() > 0.05 * sigma


def test_progress_ends_at_its_total_when_the_last_plane_is_only_copied(model, noisy):
    calls = []
    stack = np.stack([noisy, np.full_like(noisy, 0.5)])  # the constant plane is copied
    out = denoise_trd(stack, 0.1, model=model, progress=lambda d, t: calls.append((d, t)))
    np.testing.assert_array_equal(out[1], stack[1])
    assert calls[-1][0] == calls[-1][1] and len({t for _, t in calls}) == 1
    assert all(b[0] >= a[0] for a, b in zip(calls, calls[1:]))
    calls.clear()
    denoise_trd(np.full((2, 32, 32), 0.5), 0.1, model=model,
                progress=lambda d, t: calls.append((d, t)))
    assert calls == [(1, 1)]

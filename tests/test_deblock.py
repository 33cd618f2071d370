"""JPEG deblocking: block DCT, tables, coefficient recovery, the projection, deblock_trd."""

import io
import warnings

import numpy as np
import pytest
from conftest import AUTHORS, SHARED, random_model, require_shared
from PIL import Image
from skimage import data

from skimage_trd import deblock_jpeg, deblock_trd, import_matlab_model
from skimage_trd._jpeg import (
    QuantizationConstraint,
    block_dct,
    block_idct,
    estimate_quality,
    project_to_box,
    project_to_box_adjoint,
    quality_tables,
    quantized_coefficients,
    read_jpeg,
)
from skimage_trd.kernels.engine import run_model
from skimage_trd.kernels.reference import deblock_reference


def _jpeg(img, quality):
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "JPEG", quality=quality)
    buf.seek(0)
    return buf


@pytest.mark.parametrize("quality", [1, 10, 50, 75, 100])
def test_quality_tables_match_pillow(quality):
    img = data.astronaut()[:64, :64]
    with Image.open(_jpeg(img, quality)) as im:
        q = im.quantization
    luma, chroma = quality_tables(quality)
    np.testing.assert_array_equal(luma.ravel(), q[0])
    np.testing.assert_array_equal(chroma.ravel(), q[1])
    assert estimate_quality(luma) == quality or quality in (1, 100)


def test_block_dct_is_orthonormal():
    x = np.random.default_rng(0).standard_normal((16, 24))
    y = block_dct(x)
    assert y.shape == (2, 3, 8, 8)
    assert np.isclose(np.sum(x**2), np.sum(y**2))
    np.testing.assert_allclose(block_idct(y), x, atol=1e-12)
    assert np.isclose(y[0, 0, 0, 0], x[:8, :8].sum() / 8)  # DC = 8 * mean


@pytest.mark.parametrize("shape", [(64, 48), (61, 45)])
@pytest.mark.parametrize("quality", [10, 30, 80])
def test_coefficients_recovered_from_the_decoded_image(shape, quality):
    img = data.camera()[100 : 100 + shape[0], 200 : 200 + shape[1]]
    planes, tables, mode = read_jpeg(_jpeg(img, quality))
    assert mode == "L" and np.array_equal(tables[0], quality_tables(quality)[0])
    d = quantized_coefficients(planes[0], tables[0])
    assert np.all(d == np.round(d))
    rec = np.clip(np.round(block_idct(d * tables[0]) + 128), 0, 255)[: shape[0], : shape[1]]
    close = np.abs(rec - planes[0]) <= 1  # the decoder's integer IDCT is within one grey level
    h, w = shape[0] // 8 * 8, shape[1] // 8 * 8
    assert np.mean(close[:h, :w]) > 0.99  # whole blocks: the coefficients are recovered
    assert np.mean(close) > 0.95  # blocks cut by the border: the encoder's padding is guessed


def test_projection():
    rng = np.random.default_rng(0)
    q = quality_tables(20)[0]
    d = np.zeros((2, 3, 8, 8))
    d[..., :3, :3] = np.round(rng.standard_normal((2, 3, 3, 3)) * 0.6)
    d[..., 0, 0] = 0  # grey around 128 with low frequencies: nothing gets clipped
    c = QuantizationConstraint(d, q, 0.8)
    u = c.start + rng.normal(0, 5, (16, 24))
    p = c.project(u)
    assert 0 < p.min() and p.max() < 255  # nothing clipped in this example
    y = block_dct(p - 128)
    assert np.all((y >= c.lower - 1e-9) & (y <= c.upper + 1e-9))
    np.testing.assert_allclose(c.project(p), p, atol=1e-9)  # idempotent
    # the nearest consistent image: moving along any coefficient that is free gets no closer
    assert np.sum((p - u) ** 2) <= np.sum((c.start - u) ** 2)
    far = c.project(np.full((16, 24), 1e4))  # far outside: back into the set, and into [0, 255]
    assert 0 <= far.min() and far.max() <= 255
    assert np.all(block_dct(far - 128) <= c.upper + 1e-9)


def test_batch_projection_and_its_adjoint():
    # the one projection serves a batch (training) as it serves each image (deblock_trd)
    rng = np.random.default_rng(1)
    q = quality_tables(30)[0]
    cs = [QuantizationConstraint(np.round(rng.standard_normal((2, 3, 8, 8)) * 2), q, 0.8)
          for _ in range(3)]
    v = np.stack([c.start for c in cs]) + rng.normal(0, 20, (3, 16, 24))
    lower, upper = np.stack([c.lower for c in cs]), np.stack([c.upper for c in cs])
    u, inside, unclipped = project_to_box(v, lower, upper, masks=True)
    for i, c in enumerate(cs):
        np.testing.assert_allclose(u[i], c.project(v[i]), atol=1e-12)
    assert 0 < inside.mean() < 1 and 0 < unclipped.mean() < 1  # both masks matter here
    # the adjoint: <J dv, g> = <dv, J^T g> for the Jacobian J at v (piecewise linear)
    dv, g = rng.standard_normal((2, 3, 16, 24))
    eps = 1e-6
    plus, minus = (project_to_box(v + e * dv, lower, upper) for e in (eps, -eps))
    jdv = (plus - minus) / (2 * eps)
    assert np.sum(jdv * g) == pytest.approx(np.sum(dv * project_to_box_adjoint(g, inside, unclipped)),
                                            rel=1e-6)


def test_numba_deblocking_equals_reference():
    m = random_model(2, 5, seed=3, task="deblock")
    img = data.camera()[:45, :53]
    planes, tables, _ = read_jpeg(_jpeg(img, 20))
    c = QuantizationConstraint(quantized_coefficients(planes[0], tables[0]), tables[0], 0.8)
    ref = deblock_reference(c, m)
    out = run_model(c.start, m, post_stage=lambda u, t: c.project(u))
    np.testing.assert_allclose(out, ref, atol=1e-6)
    out32 = run_model(c.start.astype(np.float32), m, post_stage=lambda u, t: c.project(u))
    np.testing.assert_allclose(out32, ref, atol=2e-2)


def test_deblock_trd_api():
    m = random_model(2, 5, seed=4, task="deblock")
    img = data.camera()[:70, :90]
    dec = np.asarray(Image.open(_jpeg(img, 10)))
    out = deblock_trd(dec, 10, model=m)
    assert out.shape == dec.shape and out.dtype == np.float64 and 0 <= out.min() <= out.max() <= 1
    np.testing.assert_allclose(deblock_trd(dec / 255.0, 10, model=m), out, atol=1e-6)
    np.testing.assert_allclose(deblock_trd(dec.astype(float), 10, model=m, preserve_range=True),
                               out * 255, atol=1e-4)
    np.testing.assert_allclose(deblock_trd(dec, qtable=quality_tables(10)[0], model=m), out)
    calls = []
    deblock_trd(dec, 10, model=m, progress=lambda d, t: calls.append((d, t)))
    assert calls[-1] == (2, 2)
    # float32 in, float32 out (as denoise_trd and skimage.restoration)
    assert deblock_trd((dec / 255.0).astype(np.float32), 10, model=m).dtype == np.float32
    # values no JPEG decoder gives are refused, naming the fix
    with pytest.raises(ValueError, match="pass preserve_range=True"):
        deblock_trd(dec.astype(float), 10, model=m)
    with pytest.raises(ValueError, match=r"this uint16 image holds"):
        deblock_trd(dec.astype(np.uint16) * 16, 10, model=m)
    with pytest.raises(ValueError, match="0..255"):
        deblock_trd(dec * 2.0, 10, model=m, preserve_range=True)
    with pytest.warns(UserWarning, match="looks like the 0..1 scale"):
        deblock_trd(dec / 255.0, 10, model=m, preserve_range=True)
    overshoot = dec / 255.0
    overshoot[0, 0] = 1.01  # not a decoder's value, and not the 0..255 scale either
    with pytest.raises(ValueError, match="clip the image to"):
        deblock_trd(overshoot, 10, model=m)
    overshoot[0, 0] = 1.001  # within half a grey level: accepted
    np.testing.assert_allclose(deblock_trd(overshoot, 10, model=m), out, atol=0.02)
    with pytest.raises(ValueError, match="quality"):
        deblock_trd(dec, model=m)
    with pytest.raises(ValueError, match="qtable"):
        deblock_trd(dec, qtable=np.ones((4, 4)), model=m)
    with pytest.raises(ValueError, match="deblock_trd needs a deblocking model"):
        deblock_trd(dec, 10, model=random_model())
    with pytest.raises(ValueError, match="3 channels"):
        deblock_trd(np.zeros((16, 16, 4), np.uint8), 10, model=m, channel_axis=-1)


def test_deblock_preserve_range_none_keeps_the_input_scale():
    m = random_model(2, 5, seed=4, task="deblock")
    dec = np.asarray(Image.open(_jpeg(data.camera()[:40, :48], 10)))
    unit = deblock_trd(dec, 10, model=m)
    on255 = deblock_trd(dec.astype(float), 10, model=m, preserve_range=True)
    # integers and floats beyond 1 are on 0..255, other floats on 0..1; the output keeps it
    np.testing.assert_array_equal(deblock_trd(dec, 10, model=m, preserve_range=None), on255)
    np.testing.assert_array_equal(
        deblock_trd(dec.astype(float), 10, model=m, preserve_range=None), on255)
    np.testing.assert_array_equal(
        deblock_trd(dec / 255.0, 10, model=m, preserve_range=None),
        deblock_trd(dec / 255.0, 10, model=m))
    np.testing.assert_allclose(unit * 255, on255, atol=1e-4)
    # values on neither scale are still refused
    with pytest.raises(ValueError, match="0..255"):
        deblock_trd(dec * 2.0, 10, model=m, preserve_range=None)
    da = pytest.importorskip("dask.array")
    lazy = deblock_trd(da.from_array(dec / 255.0, chunks=(20, 24)), 10, model=m,
                       preserve_range=None)
    np.testing.assert_allclose(lazy.compute(), unit, atol=1e-12)


def test_deblock_color_and_file(tmp_path):
    m = random_model(2, 5, seed=5, task="deblock")
    rgb = data.astronaut()[:64, :80]
    buf = _jpeg(rgb, 20)
    (tmp_path / "a.jpg").write_bytes(buf.getvalue())
    dec = np.asarray(Image.open(tmp_path / "a.jpg"))
    out = deblock_trd(dec, 20, model=m, channel_axis=-1)
    assert out.shape == rgb.shape
    out_file = deblock_jpeg(tmp_path / "a.jpg", model=m)
    assert out_file.shape == rgb.shape and out_file.max() <= 1
    # chroma passes through: Cb, Cr of the result are those of the decoded file (to rounding)
    gray = tmp_path / "g.jpg"
    Image.fromarray(rgb[..., 0]).save(gray, "JPEG", quality=20)
    assert deblock_jpeg(gray, model=m).shape == rgb.shape[:2]
    dark = tmp_path / "dark.jpg"  # a nearly black file: its 0..1 values are grey levels
    Image.fromarray((rgb[..., 0] > 128).astype(np.uint8)).save(dark, "JPEG", quality=90)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert deblock_jpeg(dark, model=m).max() <= 2 / 255
    (tmp_path / "x.png").write_bytes(b"")
    Image.fromarray(rgb).save(tmp_path / "x.png")
    with pytest.raises(ValueError, match="not a JPEG"):
        deblock_jpeg(tmp_path / "x.png", model=m)


def test_shipped_models_improve_jpeg():
    img = data.camera()[:128, :128]
    dec = np.asarray(Image.open(_jpeg(img, 10)))
    out = deblock_trd(dec, 10) * 255
    err = lambda a: np.mean((np.asarray(a, float) - img) ** 2)  # noqa: E731
    assert err(out) < 0.85 * err(dec)


@pytest.mark.shared
@pytest.mark.slow
def test_authors_q10_model_on_live1_half():
    """The authors' q=10 model through our projection: LIVE1-half 27.85 dB in docs/protocols.md."""
    folder = require_shared(SHARED / "data" / "live1")
    m = import_matlab_model(AUTHORS / "jpeg_deblocking" / "JointTraining_7x7_400_176X176_stage=4.mat")
    scores = []
    for path in sorted(folder.glob("*.png")):
        im = Image.open(path).convert("L")
        im = im.resize((im.width // 2, im.height // 2), Image.BICUBIC)
        x = np.asarray(im, dtype=np.float64)
        with Image.open(_jpeg(np.asarray(im), 10)) as j:
            dec, table = np.asarray(j), j.quantization[0]
        out = deblock_trd(dec, qtable=table, model=m) * 255
        scores.append(10 * np.log10(255**2 / np.mean((out - x) ** 2)))
    # coefficients recovered from the decoded images cost up to 0.02 dB (docs/protocols.md)
    assert abs(np.mean(scores) - 27.85) < 0.03


def test_deblock_dask_equals_numpy():
    da = pytest.importorskip("dask.array")
    m = random_model(2, 5, seed=6, task="deblock")
    frames = np.stack([np.asarray(Image.open(_jpeg(data.camera()[i:i + 40, 50:106], 20)))
                       for i in (0, 100, 200)])
    lazy = deblock_trd(da.from_array(frames, chunks=(2, 16, 24)), 20, model=m)
    assert isinstance(lazy, da.Array) and lazy.dtype == np.float64
    np.testing.assert_allclose(lazy.compute(), deblock_trd(frames, 20, model=m), atol=1e-12)
    rgb = np.stack([frames[0], frames[1], frames[2]], axis=0)  # channels first
    lazy = deblock_trd(da.from_array(rgb, chunks=(1, 20, 20)), 20, model=m, channel_axis=0)
    np.testing.assert_allclose(lazy.compute(), deblock_trd(rgb, 20, model=m, channel_axis=0),
                               atol=1e-12)
    with pytest.raises(ValueError, match="quality"):  # parameters are checked at once
        deblock_trd(da.from_array(frames), model=m)
    big = deblock_trd(da.zeros((5, 64, 48), np.uint8, chunks=(5, 16, 16)), 20, model=m)
    assert big.chunksize == (1, 64, 48)  # memory bounded by a plane
    # values are checked up front, in one pass
    with pytest.raises(ValueError, match="preserve_range=True"):
        deblock_trd(da.from_array(frames.astype(np.float64), chunks=(1, 40, 56)), 20, model=m)
    nan = frames / 255.0
    nan[1, 3, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        deblock_trd(da.from_array(nan, chunks=(1, 40, 56)), 20, model=m)
    with pytest.warns(UserWarning, match="stack of 6 gray planes"):  # (M, N, 3): at the call
        lazy = deblock_trd(da.from_array(np.zeros((6, 16, 3), np.uint8), chunks=2), 20, model=m)
    with warnings.catch_warnings():  # and not again for every chunk
        warnings.simplefilter("error")
        lazy.compute()

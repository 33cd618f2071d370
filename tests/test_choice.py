"""denoise_trd(select='sure'): the bank's model chosen per plane by SURE (skimage_trd._choice)."""

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter
from skimage import data

from skimage_trd import _choice, denoise_trd
from skimage_trd._registry import resolve_models

SIGMA = 25 / 255


def psnr(a, b):
    return 10 * np.log10(1.0 / np.mean((a - b) ** 2))


def noisy(clean, seed=1, sigma=SIGMA):
    return clean + sigma * np.random.default_rng(seed).standard_normal(clean.shape)


@pytest.fixture(scope="module")
def bank():
    return tuple(resolve_models(None, "denoise"))


def levels(models):
    return [m.sigma for m in models]


def test_candidates_bracket_the_rule_and_add_the_dtype_level(bank):
    assert levels(_choice.candidates(bank, 30.0)) == [25, 50]
    assert levels(_choice.candidates(bank, 25.0)) == [25, 50]  # (25 <= level: 25 and the next)
    assert levels(_choice.candidates(bank, 10.0)) == [15, 25]  # below the bank: 15 and 25
    assert levels(_choice.candidates(bank, 90.0)) == [75, 100]
    assert levels(_choice.candidates(bank, 300.0)) == [100, 150]  # above: 150 and 100
    assert levels(_choice.candidates(bank, 40.0, dtype_level=14.0)) == [15, 25, 50]
    # per level the model with most filters (7x7 before 5x5)
    assert all(m.kernel_size == 7 for m in _choice.candidates(bank, 30.0))
    one = tuple(m for m in bank if m.sigma == 25)
    assert len(_choice.candidates(one, 30.0)) == 1


def test_dtype_range():
    from skimage_trd._planes import PlaneOptions

    def rng_of(dtype, extent, preserve=False):
        return _choice.dtype_range(PlaneOptions(bank=(), in_dtype=np.dtype(dtype),
                                                preserve_range=preserve), extent)

    assert rng_of(np.uint8, (0, 1)) == 1.0
    assert rng_of(np.uint16, (0, 65535), preserve=True) == 65535.0
    assert rng_of(np.int16, (-1, 1)) == 2.0
    assert rng_of(np.float64, (-0.3, 1.2)) == 1.0
    assert rng_of(np.float64, (-20, 270)) == 255.0
    assert rng_of(np.float64, (0, 4000)) is None


@pytest.mark.parametrize("name", ["page", "phantom", "clock"])
def test_sure_picks_the_truly_better_candidate(name):
    # images where the candidates differ by 0.2-0.8 dB (SURE's candidates include the dtype
    # rule's model, which is the worse one on the phantom and on the clock)
    clean = {"page": lambda: data.page()[:, :256] / 255.0,
             "phantom": lambda: data.shepp_logan_phantom()[72:328, 72:328],
             "clock": lambda: data.clock()[:256, 100:356] / 255.0}[name]()
    y = noisy(clean)
    out, choices = denoise_trd(y, SIGMA, select="sure", return_choices=True)
    truth = {m: psnr(denoise_trd(y, SIGMA, model=m), clean) for m in choices[0]["estimated_mse"]}
    assert len(truth) >= 2
    assert max(truth.values()) - min(truth.values()) > 0.1  # a choice that matters
    assert choices[0]["model"] == max(truth, key=truth.get)
    assert psnr(out, clean) >= psnr(denoise_trd(y, SIGMA), clean) - 1e-9
    # the estimates are estimates of the mean squared error (not just a ranking)
    for m, est in choices[0]["estimated_mse"].items():
        true_mse = 10 ** (-truth[m] / 10)
        assert abs(est - true_mse) < 0.03 * SIGMA**2


def test_whole_plane_result_is_the_chosen_models_run():
    clean = data.camera()[:200, :240] / 255.0
    y = noisy(clean)
    out, choices = denoise_trd(y, SIGMA, select="sure", return_choices=True)
    assert np.array_equal(out, denoise_trd(y, SIGMA, model=choices[0]["model"]))


def test_repeatable():
    clean = data.camera()[:160, :160] / 255.0
    y = noisy(clean)
    a = denoise_trd(y, SIGMA, select="sure", return_choices=True)[1]
    b = denoise_trd(y.copy(), SIGMA, select="sure", return_choices=True)[1]
    assert a == b


@pytest.fixture
def small_tiles(monkeypatch):
    monkeypatch.setattr(_choice, "WHOLE_PIXELS", 100 * 100)
    monkeypatch.setattr(_choice, "TILE", 48)
    monkeypatch.setattr(_choice, "SAMPLE_TILES", 3)


def test_sample_regions_cover_tiles_with_their_halo():
    rng = np.random.default_rng(0)
    regions = _choice.sample_regions((1000, 700), 30, rng)
    assert len(regions) == _choice.SAMPLE_TILES
    for outer, inner in regions:
        oy, ox = outer
        iy, ix = inner
        assert (iy.stop - iy.start, ix.stop - ix.start) == (_choice.TILE, _choice.TILE)
        top = oy.start + iy.start
        left = ox.start + ix.start
        assert oy.start == max(0, top - 30) and ox.start == max(0, left - 30)
        assert oy.stop == min(1000, top + _choice.TILE + 30)
        assert ox.stop == min(700, left + _choice.TILE + 30)
    assert _choice.sample_regions((300, 300), 30, rng) == [((slice(0, 300), slice(0, 300)),) * 2]


def test_tiles_with_halo_equal_the_whole_plane(bank):
    # the tiles SURE runs give the whole plane's pixels (so the sample judges the real result)
    from skimage_trd._planes import PlaneOptions, denoise_plane, plane_settings

    clean = data.camera()[:220, :260] / 255.0
    y = noisy(clean)
    opts = PlaneOptions(bank=bank, in_dtype=y.dtype)
    st = plane_settings(y, SIGMA, opts)
    whole = denoise_plane(y, st, opts)
    for outer, inner in _choice.sample_regions(y.shape, st.model.halo, np.random.default_rng(3)):
        part = denoise_plane(y[outer], st, opts)[inner]
        top, left = outer[0].start + inner[0].start, outer[1].start + inner[1].start
        ref = whole[top:top + part.shape[0], left:left + part.shape[1]]
        np.testing.assert_allclose(part, ref, rtol=0, atol=1e-6)


def test_sampled_plane_chooses_and_then_runs_the_model(small_tiles):
    clean = data.page()[:, :300] / 255.0  # 191 x 300 > WHOLE_PIXELS: three 48x48 tiles
    y = noisy(clean)
    out, choices = denoise_trd(y, SIGMA, select="sure", return_choices=True)
    assert len(choices[0]["estimated_mse"]) >= 2
    assert np.array_equal(out, denoise_trd(y, SIGMA, model=choices[0]["model"]))


@pytest.mark.parametrize("tiles", [False, True])
def test_dask_equals_in_memory(tiles, request):
    da = pytest.importorskip("dask.array")
    if tiles:
        request.getfixturevalue("small_tiles")
    clean = np.stack([data.camera()[:180, :200], data.coins()[:180, :200]]) / 255.0
    y = noisy(clean)
    a, ca = denoise_trd(y, SIGMA, select="sure", return_choices=True)
    b, cb = denoise_trd(da.from_array(y, chunks=(1, 90, 100)), SIGMA, select="sure",
                        return_choices=True)
    # the same choices; the estimates to float rounding (dask's mean of a plane, the centre of
    # its mapping onto the model scale, may differ from NumPy's in the last bits)
    assert [(c["plane"], c["model"]) for c in ca] == [(c["plane"], c["model"]) for c in cb]
    for c, d in zip(ca, cb):
        assert c["estimated_mse"].keys() == d["estimated_mse"].keys()
        for k in c["estimated_mse"]:
            assert c["estimated_mse"][k] == pytest.approx(d["estimated_mse"][k], rel=1e-9)
    np.testing.assert_allclose(b.compute(), a, rtol=0, atol=1e-6)


def test_choices_for_stacks_colour_and_integer_input():
    clean = data.astronaut()[100:228, 100:228]
    rgb = np.clip(clean + 20 * np.random.default_rng(0).standard_normal(clean.shape), 0, 255)
    rgb = rgb.astype(np.uint8)
    _, choices = denoise_trd(rgb, 20, channel_axis=-1, select="sure", return_choices=True)
    assert [c["plane"] for c in choices] == [(0,), (1,), (2,)]  # the opponent channels
    assert all(c["sigma"] == pytest.approx(20) for c in choices)  # in the image's units
    stack = noisy(np.stack([data.camera()[:128, :128] / 255.0] * 2))
    _, choices = denoise_trd(stack, SIGMA, select="sure", return_choices=True)
    assert [c["plane"] for c in choices] == [(0,), (1,)]
    _, choices = denoise_trd(stack, SIGMA, return_choices=True)  # the range rule: no estimates
    assert all(c["estimated_mse"] == {} and c["model"] for c in choices)


def test_progress_reaches_the_end_with_sure():
    calls = []
    y = noisy(np.stack([data.camera()[:100, :100] / 255.0] * 2))
    denoise_trd(y, SIGMA, select="sure", progress=lambda d, t: calls.append((d, t)))
    assert calls[-1][0] == calls[-1][1]
    assert all(b[0] >= a[0] for a, b in zip(calls, calls[1:]))


def test_bad_and_degenerate_input():
    y = noisy(data.camera()[:100, :100] / 255.0)
    with pytest.raises(ValueError, match="select"):
        denoise_trd(y, SIGMA, select="best")
    with pytest.raises(ValueError):
        denoise_trd(y, float("nan"), select="sure")
    flat = np.full((100, 100), 0.5)
    out, ch = denoise_trd(flat, SIGMA, select="sure", return_choices=True)
    assert np.array_equal(out, flat) and ch[0]["action"] == "copy"
    out, ch = denoise_trd(y, 0.0, select="sure", return_choices=True)
    assert np.array_equal(out, y) and ch[0]["action"] == "copy"
    # below MIN_PIXELS: the range rule, documented
    tiny = y[:40, :40]
    out, ch = denoise_trd(tiny, SIGMA, select="sure", return_choices=True)
    assert ch[0]["estimated_mse"] == {}
    assert np.array_equal(out, denoise_trd(tiny, SIGMA))
    # a plane smaller than a tile, but above MIN_PIXELS: the whole plane
    thin = noisy(np.tile(np.linspace(0, 1, 700), (8, 1)))
    _, ch = denoise_trd(thin, SIGMA, select="sure", return_choices=True)
    assert len(ch[0]["estimated_mse"]) >= 2
    # NaN pixels are refused as ever
    bad = y.copy()
    bad[3, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        denoise_trd(bad, SIGMA, select="sure")


def test_single_model_is_not_a_choice():
    y = noisy(data.camera()[:100, :100] / 255.0)
    out, ch = denoise_trd(y, SIGMA, model="trd-gauss-s25-7x7-5st", select="sure",
                          return_choices=True)
    assert ch[0]["estimated_mse"] == {} and ch[0]["model"] == "trd-gauss-s25-7x7-5st"
    assert np.array_equal(out, denoise_trd(y, SIGMA, model="trd-gauss-s25-7x7-5st"))


def test_blurred_blobs_texture_microscopy_smoke():
    blobs = gaussian_filter(data.binary_blobs(128, 0.05, rng=0).astype(float), 2.0)
    out = denoise_trd(noisy(blobs), SIGMA, select="sure")
    assert psnr(out, blobs) > psnr(noisy(blobs), blobs) + 5


@pytest.mark.parametrize("close, probes", [(-1.0, 1), (1e9, 3)])
def test_close_decisions_draw_more_probes(monkeypatch, close, probes):
    from skimage_trd import _planes

    calls = []
    real = _planes.denoise_plane

    def counting(*args, **kw):
        calls.append(1)
        return real(*args, **kw)

    monkeypatch.setattr(_choice, "denoise_plane", counting)
    monkeypatch.setattr(_choice, "CLOSE", close)
    monkeypatch.setattr(_choice, "MAX_PROBES", 3)
    y = noisy(data.camera()[:128, :128] / 255.0)
    _, ch = denoise_trd(y, SIGMA, select="sure", return_choices=True)
    k = len(ch[0]["estimated_mse"])
    assert len(calls) == k * (1 + probes)  # each candidate: its run, then one per probe


def test_block_standard_error():
    rng = np.random.default_rng(0)
    d = [rng.standard_normal((256, 256))]  # white noise of unit variance per pixel
    total, se = _choice._difference(d, [np.zeros((256, 256))])
    assert total == pytest.approx(d[0].sum())
    assert se == pytest.approx(256.0, rel=0.3)  # sqrt(65536 pixels)


def test_clipped_data_take_the_dtype_rule_without_sure():
    # clipped noise is not Gaussian: SURE favours strong models there, so the range rule stays
    clean = data.camera()[:128, :128].astype(np.float64)
    raw = clean + 25 * np.random.default_rng(0).standard_normal(clean.shape)
    clipped = np.clip(np.rint(raw), 0, 255).astype(np.uint8)
    assert np.mean((clipped == 0) | (clipped == 255)) > 1e-3
    out, ch = denoise_trd(clipped, 25, select="sure", return_choices=True)
    assert ch[0]["estimated_mse"] == {}
    # without SURE: the model nearest the dtype's level (uint8: 255 grey levels -> sigma 25)
    assert ch[0]["model"] == "trd-gauss-s25-7x7-5st"
    assert np.array_equal(out, denoise_trd(clipped, 25, data_range=255))
    # the same clipping converted to float (piled up at its extremes)
    out, ch = denoise_trd(clipped / 255.0, 25 / 255, select="sure", return_choices=True)
    assert ch[0]["estimated_mse"] == {} and ch[0]["model"] == "trd-gauss-s25-7x7-5st"
    # unclipped integer data are judged by SURE
    mid = np.clip(np.rint(clean * 0.5 + 64 + 10 * np.random.default_rng(1).standard_normal(
        clean.shape)), 0, 255).astype(np.uint8)
    assert mid.min() > 0 and mid.max() < 255
    _, ch = denoise_trd(mid, 10, select="sure", return_choices=True)
    assert len(ch[0]["estimated_mse"]) >= 2


def test_clipped_12_bit_data_keep_the_range_rule():
    # a 12-bit camera in uint16: the type's range says nothing about the data, so a clipped
    # plane keeps the range rule's model (not the weakest one the type's range would give)
    clean = np.maximum(data.camera()[:128, :128].astype(np.float64) * 16 - 600, 0)
    raw = np.clip(np.rint(clean + 400 * np.random.default_rng(0).standard_normal(clean.shape)),
                  0, 4095).astype(np.uint16)
    assert np.mean(raw == 0) > 1e-3
    out, ch = denoise_trd(raw, 400, preserve_range=True, select="sure", return_choices=True)
    assert ch[0]["estimated_mse"] == {}
    assert np.array_equal(out, denoise_trd(raw, 400, preserve_range=True))


def test_stabilised_photon_counts_are_not_taken_for_clipped():
    # discrete floats repeat their smallest value often (no photon): not a clipping limit
    from skimage_trd import generalized_anscombe

    clean = (data.camera()[:128, :128] / 255.0) ** 3 * 20
    counts = np.random.default_rng(0).poisson(clean).astype(np.float64)
    t = generalized_anscombe(counts, 1.0, 0.0)
    assert np.mean(t == t.min()) > 1e-3
    _, ch = denoise_trd(t, 1.0, preserve_range=True, select="sure", return_choices=True)
    assert len(ch[0]["estimated_mse"]) >= 2

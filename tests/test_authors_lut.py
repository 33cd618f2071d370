"""Imported authors' models evaluate phi as the authors' code does: from their lookup table
(exact samples on a grid, linear interpolation, constant beyond the ends); our own models keep
the closed-form RBF sum."""

import numpy as np
import pytest
from conftest import AUTHORS, random_model, require_shared

from skimage_trd import TRDModel, denoise_trd, list_models, load_model
from skimage_trd.kernels.engine import run_model
from skimage_trd.kernels.reference import influence_reference, lookup_phi, trd_reference

# a grid narrow enough that filter responses of a [0, 255] image leave it on both sides
LUT = {"x0": -40.0, "step": 0.5, "n": 161}


def lut_model(seed=3, kernel_size=5):
    m = random_model(n_stages=2, kernel_size=kernel_size, seed=seed)
    m.metadata["influence_lut"] = dict(LUT)
    m.validate()
    return m


def lut_eval_by_hand(z, weights, centers, precision, lut):
    """phi by the authors' rule, written out: sample, interpolate, hold the ends."""
    x0, step, n = lut["x0"], lut["step"], lut["n"]
    samples = influence_reference(x0 + step * np.arange(n), weights, centers, precision)
    t = (np.asarray(z, np.float64) - x0) / step
    out = np.empty_like(t)
    below, above = t <= 0, t >= n - 1
    inside = ~(below | above)
    k = np.floor(t[inside]).astype(int)
    frac = t[inside] - k
    out[inside] = samples[k] + frac * (samples[k + 1] - samples[k])
    out[below], out[above] = samples[0], samples[-1]
    return out


def test_lookup_phi_follows_the_authors_rule():
    m = lut_model()
    z = np.linspace(-100, 100, 4001)
    phi = lookup_phi(m)
    for t, i in [(0, 0), (1, 5)]:
        np.testing.assert_allclose(phi(t, i, z), lut_eval_by_hand(z, m.weights[t, i], m.centers,
                                                                 m.precision, LUT), atol=1e-12)
    # beyond the grid phi holds its end values; the closed form goes on
    assert np.allclose(phi(0, 0, np.array([-90.0, 90.0])), phi(0, 0, np.array([-40.0, 40.0])))
    closed = influence_reference(np.array([90.0]), m.weights[0, 0], m.centers, m.precision)
    assert abs(closed[0] - phi(0, 0, np.array([90.0]))[0]) > 1e-3


@pytest.mark.parametrize("dtype, atol", [(np.float64, 1e-9), (np.float32, 2e-3)])
@pytest.mark.parametrize("exact", [None, True])
def test_kernels_use_the_lookup_table(dtype, atol, exact):
    m = lut_model()
    f = np.random.default_rng(0).uniform(0, 255, (37, 41))
    ref = trd_reference(f, m)
    for backend in ("numba", "numpy"):
        out = run_model(f.astype(dtype), m, backend=backend, exact=exact)
        np.testing.assert_allclose(out, ref, rtol=0, atol=atol)
    closed = m.copy()
    del closed.metadata["influence_lut"]
    assert np.abs(run_model(f, closed) - ref).max() > 0.1  # the table does matter here


def test_tiled_lookup_table_equals_whole():
    m = lut_model()
    f = np.random.default_rng(1).uniform(0, 255, (70, 50))
    np.testing.assert_allclose(run_model(f, m, tile_shape=(20, 30)), run_model(f, m), atol=1e-12)


def test_lookup_table_survives_save_and_load(tmp_path):
    m = lut_model()
    loaded = TRDModel.load(m.save(tmp_path / "m.npz"))
    assert loaded.influence_lut == (LUT["x0"], LUT["step"], LUT["n"])
    f = np.random.default_rng(2).uniform(0, 255, (20, 20))
    np.testing.assert_array_equal(run_model(f, loaded), run_model(f, m))


@pytest.mark.parametrize("bad", [{"x0": 0.0, "step": 0.0, "n": 10}, {"x0": 0.0, "step": 1.0},
                                 {"x0": np.nan, "step": 1.0, "n": 10},
                                 {"x0": 0.0, "step": 1.0, "n": 1}])
def test_bad_lookup_table_refused(bad):
    m = random_model()
    m.metadata["influence_lut"] = bad
    with pytest.raises(ValueError, match="influence_lut"):
        m.validate()


def test_our_models_use_the_closed_form():
    for name in list_models(task="denoise") + list_models(task="deblock"):
        assert load_model(name).influence_lut is None, name


@pytest.mark.shared
@pytest.mark.slow
@pytest.mark.parametrize("sigma", [25, 50])
def test_authors_models_pixel_exact(sigma):
    """Within 0.05 grey levels of the authors' evaluation at every pixel (the closed-form sum
    differs by more at about 3 % of the pixels, up to 1.7 grey levels, on this image)."""
    require_shared(AUTHORS)
    from skimage.io import imread

    m = load_model(AUTHORS / "denoising" / f"JointTraining_7x7_400_180x180_stage=5_sigma={sigma}.mat")
    grid = {25: (-320.0, 0.2, 3201), 50: (-397.5, 0.25, 3181)}[sigma]
    assert m.influence_lut == grid
    clean = imread(sorted((AUTHORS.parent.parent / "data" / "bsd68").glob("*.png"))[0])
    noisy = clean + sigma * np.random.default_rng(0).standard_normal(clean.shape)
    ref = trd_reference(noisy, m)
    for dtype in (np.float64, np.float32):
        out = run_model(noisy.astype(dtype), m)
        assert np.abs(out - ref).max() < 0.05, dtype
    # through the public API, in the image's own units, float64 input as users pass it
    out = denoise_trd(noisy / 255, sigma / 255, model=m, data_range=1.0)
    # (the stage map commutes with adding constants, so the API's centring changes nothing)
    assert np.abs(out * 255 - ref).max() < 0.05


@pytest.mark.parametrize("kernel, dtype, atol", [("strips", np.float32, 2e-3),
                                                 ("tiles", np.float32, 2e-3),
                                                 ("tiles", np.float64, 1e-9)])
def test_cuda_kernels_use_the_lookup_table(monkeypatch, kernel, dtype, atol):
    """The CUDA sources (compiled as C++, threads emulated: tests/test_cuda_source.py) read the
    authors' table through the cubic-table path: straight pieces, flat beyond the ends."""
    import sys

    from cuda_emulation import CXX, fake_cupy

    from skimage_trd.kernels import cuda as _cupy_kernels

    if CXX is None:
        pytest.skip("no C++ compiler (g++) for the emulation")
    cp = fake_cupy()
    monkeypatch.setitem(sys.modules, "cupy", cp)
    monkeypatch.setattr(_cupy_kernels, "cupy_module", lambda: cp)
    monkeypatch.setattr(_cupy_kernels, "_kernels", {})
    monkeypatch.setattr(_cupy_kernels, "_device_cache", {})
    monkeypatch.setattr(_cupy_kernels, "_max_shared", {})
    monkeypatch.setattr(_cupy_kernels, "FLOAT32_KERNEL", kernel)
    m = lut_model(kernel_size=5)
    f = np.random.default_rng(4).uniform(0, 255, (33, 29))
    out = run_model(f.astype(dtype), m, backend="cupy", exact=True)  # (exact: ignored for tables)
    np.testing.assert_allclose(out, trd_reference(f, m), rtol=0, atol=atol)

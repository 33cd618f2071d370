"""CuPy GPU kernels against the NumPy reference (skipped without CuPy and a GPU)."""

import importlib.util

import numpy as np
import pytest
from conftest import random_model

from skimage_trd import denoise_trd
from skimage_trd.kernels.engine import run_model
from skimage_trd.kernels.reference import trd_reference

cp = pytest.importorskip("cupy")
try:
    _usable = cp.cuda.runtime.getDeviceCount() > 0
except Exception:  # no driver
    _usable = False
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not _usable, reason="no usable CUDA device")]

SHAPES = [(1, 1), (2, 3), (5, 4), (13, 9), (33, 65), (70, 31), (100, 129)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("kernel_size", [5, 7])
@pytest.mark.parametrize("float32_kernel", ["tiles", "strips"])
def test_cupy_equals_reference(monkeypatch, shape, kernel_size, float32_kernel):
    from skimage_trd.kernels import cuda as cuda_kernels

    monkeypatch.setattr(cuda_kernels, "FLOAT32_KERNEL", float32_kernel)
    m = random_model(3, kernel_size, seed=kernel_size, wide_grid=kernel_size == 7)
    f = np.random.default_rng(sum(shape)).uniform(0, 255, shape)
    ref = trd_reference(f, m)
    out64 = run_model(cp.asarray(f), m, backend="cupy")
    assert isinstance(out64, cp.ndarray) and out64.dtype == np.float64
    np.testing.assert_allclose(out64.get(), ref, rtol=0, atol=1e-8)
    out32 = run_model(cp.asarray(f, dtype=np.float32), m, backend="cupy")
    assert out32.dtype == np.float32
    np.testing.assert_allclose(out32.get(), ref, rtol=0, atol=2e-3)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("kernel_size", [5, 7])
@pytest.mark.parametrize("config", [(8, 8, False), (4, 16, False), (8, 16, False),
                                    (16, 4, False), (8, 8, True), (4, 8, True), (8, 16, True)])
def test_cupy_strips_kernel_equals_reference(monkeypatch, shape, kernel_size, config):
    from skimage_trd.kernels import cuda as cuda_kernels

    monkeypatch.setattr(cuda_kernels, "FLOAT32_KERNEL", "strips")
    monkeypatch.setattr(cuda_kernels, "STRIP_CONFIG",
                        dict(zip(("rows", "per_thread", "taps_in_registers"), config)))
    m = random_model(3, kernel_size, seed=kernel_size, wide_grid=kernel_size == 7)
    f = np.random.default_rng(sum(shape)).uniform(0, 255, shape)
    out32 = run_model(cp.asarray(f, dtype=np.float32), m, backend="cupy")
    assert out32.dtype == np.float32
    np.testing.assert_allclose(out32.get(), trd_reference(f, m), rtol=0, atol=2e-3)
    key = cuda_kernels.strips_kernel_key(cuda_kernels.strip_geometry(
        kernel_size, m.filters.shape[1], *config[:2], taps_in_registers=config[2])["defines"])
    assert (key, cp.cuda.Device().id) in cuda_kernels._kernels  # the strips kernel ran, in this shape


def test_cupy_tiled_equals_whole():
    m = random_model(3, 5, seed=5)
    f = cp.asarray(np.random.default_rng(1).uniform(0, 255, (57, 45)))
    whole = run_model(f, m, backend="cupy")
    tiled = run_model(f, m, backend="cupy", tile_shape=(16, 20))
    np.testing.assert_allclose(tiled.get(), whole.get(), atol=1e-10)


def test_denoise_trd_cupy_in_cupy_out():
    m = random_model(2, 7, seed=3)
    rng = np.random.default_rng(0)
    img = rng.uniform(0, 1, (3, 40, 50))
    # exact influence functions: the same sums on both
    out_np = denoise_trd(img, 0.1, model=m, exact=True)
    out_cp = denoise_trd(cp.asarray(img), 0.1, model=m, exact=True)
    assert isinstance(out_cp, cp.ndarray) and out_cp.shape == img.shape
    np.testing.assert_allclose(out_cp.get(), out_np, atol=1e-8)
    # by table (the default): the GPU's cubic tables and the CPU's linear ones, each
    # within a hundredth of a grey level of exact (docs/performance.md)
    out_t = denoise_trd(cp.asarray(img), 0.1, model=m)
    np.testing.assert_allclose(out_t.get(), out_np, atol=0.01 / 255)
    # NumPy in, GPU backend: NumPy out
    out_g = denoise_trd(img, 0.1, model=m, backend="cupy", exact=True)
    assert isinstance(out_g, np.ndarray)
    np.testing.assert_allclose(out_g, out_np, atol=1e-8)
    # CuPy in, CPU backend: CuPy out
    out_c = denoise_trd(cp.asarray(img), 0.1, model=m, backend="numba")
    assert isinstance(out_c, cp.ndarray)


def test_gpu_training_gradients_equal_numpy():
    from skimage_trd.train.gradients import StageParams, TrainingSpec, pack_params
    from skimage_trd.train.gradients_cupy import GemmTrainer

    rng = np.random.default_rng(0)
    spec = TrainingSpec(7, np.arange(-387.5, 387.6, 12.5), 0.0064)
    m = spec.n_coefficients
    stages = [StageParams(rng.standard_normal((m, m)), rng.standard_normal((m, 63)) * 0.3,
                          np.log(0.1)) for _ in range(2)]
    x = rng.uniform(0, 255, (5, 23, 19))
    f = x + 25 * rng.standard_normal(x.shape)
    params = pack_params(stages)
    l_ref, g_ref = GemmTrainer(f, x, spec, np, np.float64).loss_and_grad(params)
    gpu = GemmTrainer(f, x, spec, cp, np.float64, images_per_chunk=2)
    l64, g64 = gpu.loss_and_grad(params)
    assert np.isclose(l64, l_ref, rtol=1e-10)
    np.testing.assert_allclose(g64, g_ref, rtol=1e-7, atol=1e-8 * np.abs(g_ref).max())
    gpu32 = GemmTrainer(f, x, spec, cp, np.float32)
    l32, g32 = gpu32.loss_and_grad(params)
    assert np.isclose(l32, l_ref, rtol=1e-4)
    assert np.abs(g32 - g_ref).max() < 1e-3 * np.abs(g_ref).max()
    # deterministic: the same call twice gives the same bits
    l32b, g32b = gpu32.loss_and_grad(params)
    assert l32b == l32 and np.array_equal(g32b, g32)


def test_deblock_gradients_on_gpu_equal_numpy():
    from skimage_trd._jpeg import block_dct, block_idct, quality_tables
    from skimage_trd.train.gradients import StageParams, TrainingSpec, pack_params
    from skimage_trd.train.gradients_cupy import GemmTrainer

    rng = np.random.default_rng(0)
    spec = TrainingSpec(5, np.arange(-310.0, 310.1, 10.0), 0.01)
    m = spec.n_coefficients
    stages = [StageParams(rng.standard_normal((m, m)), rng.standard_normal((m, 63)), 0.0)
              for _ in range(2)]
    q = quality_tables(10)[0]
    clean = rng.uniform(30, 220, (3, 24, 16))
    d = np.stack([np.rint(block_dct(c - 128) / q) for c in clean])
    start = np.stack([block_idct(di * q) + 128 for di in d])
    bounds = ((d - 0.4) * q, (d + 0.4) * q)
    params = pack_params(stages)
    l_ref, g_ref = GemmTrainer(start, clean, spec, np, np.float64, constraint=bounds).loss_and_grad(params)
    l, g = GemmTrainer(start, clean, spec, cp, np.float64, constraint=bounds).loss_and_grad(params)
    assert np.isclose(l, l_ref, rtol=1e-10)
    np.testing.assert_allclose(g, g_ref, rtol=1e-7, atol=1e-8 * np.abs(g_ref).max())


def test_deblock_trd_on_gpu_equals_cpu():
    from skimage_trd import deblock_trd

    m = random_model(2, 7, seed=2, task="deblock")
    img = np.random.default_rng(0).integers(0, 256, (37, 45)).astype(np.uint8)
    cpu = deblock_trd(img, 20, model=m)
    gpu = deblock_trd(img, 20, model=m, backend="cupy")
    np.testing.assert_allclose(gpu, cpu, atol=1e-5)


HAVE_PYWT = importlib.util.find_spec("pywt") is not None  # for the noise estimate


def test_plane_settings_on_the_gpu_equal_the_cpu():
    """A CuPy plane's statistics (mean, extremes, the robust range that picks the model of
    the bank) are computed on its GPU and agree with the NumPy ones."""
    from skimage import data

    from skimage_trd._planes import PlaneOptions, plane_settings, robust_range
    from skimage_trd._registry import resolve_models

    bank = resolve_models(None, "denoise")
    assert len(bank) > 1
    rng = np.random.default_rng(3)
    for plane in (data.camera(), data.coins().astype(np.float32) / 255,
                  rng.normal(1000, 40, (300, 200)), data.camera().astype(np.uint16) * 200,
                  (data.coins() / 255).astype(np.float16)):
        g = cp.asarray(plane)
        assert robust_range(g) == pytest.approx(robust_range(plane), rel=1e-9)
        opts = PlaneOptions(bank=tuple(bank), in_dtype=plane.dtype)
        scale = opts.scale  # 1 for floats, 1 / the type's maximum for integers
        for sigma in ((None,) * HAVE_PYWT + (0.02 / scale, 0.1 / scale)):
            cpu = plane_settings(plane, sigma, opts)
            gpu = plane_settings(g, sigma, opts)
            assert gpu.action == cpu.action and gpu.model is cpu.model
            assert gpu.center == pytest.approx(cpu.center, rel=1e-9)
            assert gpu.gain == pytest.approx(cpu.gain, rel=1e-9)
    # end to end with the default bank: the same model, the same result (to the tables' 0.01)
    img = data.camera().astype(np.float32) / 255 + rng.normal(0, 0.1, (512, 512)).astype(
        np.float32)
    np.testing.assert_allclose(denoise_trd(cp.asarray(img), 0.1).get(), denoise_trd(img, 0.1),
                               atol=0.01 / 255)


def test_select_sure_on_the_gpu_chooses_as_on_the_cpu():
    from skimage import data

    clean = data.page()[:, :256] / 255.0
    y = clean + 0.1 * np.random.default_rng(0).standard_normal(clean.shape)
    ref, ref_choices = denoise_trd(y, 0.1, select="sure", return_choices=True)
    out, choices = denoise_trd(cp.asarray(y), 0.1, select="sure", return_choices=True)
    assert isinstance(out, cp.ndarray)
    assert [c["model"] for c in choices] == [c["model"] for c in ref_choices]
    for c, r in zip(choices, ref_choices):
        for name, mse in r["estimated_mse"].items():
            assert c["estimated_mse"][name] == pytest.approx(mse, rel=0.02)
    np.testing.assert_allclose(out.get(), ref, atol=0.01 / 255)

"""The CUDA kernels' sources, compiled as C++ and run with emulated threads (no GPU needed).

``run_model(..., backend="cupy")`` runs end to end with ``tests/cuda_emulation.fake_cupy`` in
place of CuPy, so the GPU path's Python glue (geometry, launch arguments, stage loop) is tested
together with the kernels' index arithmetic. tests/test_cupy.py checks the real thing on a GPU.
"""

import sys

import numpy as np
import pytest
from conftest import random_model
from cuda_emulation import CXX, fake_cupy

from skimage_trd.kernels import cuda as _cupy_kernels
from skimage_trd.kernels.engine import run_model
from skimage_trd.kernels.reference import trd_reference

pytestmark = pytest.mark.skipif(CXX is None, reason="no C++ compiler (g++) for the emulation")

# one block, several blocks across and down, partial blocks, images smaller than the halo
SHAPES = [(1, 1), (5, 4), (33, 65), (70, 31), (131, 40)]


@pytest.fixture
def emulated(monkeypatch):
    cp = fake_cupy()
    monkeypatch.setitem(sys.modules, "cupy", cp)
    monkeypatch.setattr(_cupy_kernels, "cupy_module", lambda: cp)
    monkeypatch.setattr(_cupy_kernels, "_kernels", {})
    monkeypatch.setattr(_cupy_kernels, "_device_cache", {})
    monkeypatch.setattr(_cupy_kernels, "_max_shared", {})
    return cp


def _check(f, m, atol, **kw):
    out = run_model(f, m, backend="cupy", **kw)
    assert out.dtype == f.dtype and out.shape == f.shape
    np.testing.assert_allclose(out, trd_reference(f.astype(np.float64), m), rtol=0, atol=atol)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("kernel_size", [3, 5, 7])
def test_strips_kernel_equals_reference(emulated, monkeypatch, shape, kernel_size):
    monkeypatch.setattr(_cupy_kernels, "FLOAT32_KERNEL", "strips")
    m = random_model(2, kernel_size, seed=kernel_size, wide_grid=kernel_size == 7)
    f = np.random.default_rng(sum(shape)).uniform(0, 255, shape).astype(np.float32)
    _check(f, m, 2e-3)
    _assert_strips_ran(rows=8, stages=2)


def _compiled():
    """The compiled kernels, by their keys (of cached_kernel) on the emulated device 0."""
    assert all(device == 0 for _, device in _cupy_kernels._kernels)
    return {key: kernel for (key, _), kernel in _cupy_kernels._kernels.items()}


def _assert_strips_ran(rows, stages):
    ((key, kernel),) = _compiled().items()
    assert key[0] == "strips"
    assert len(kernel.launches) == stages
    assert all(launch[1] == (32, rows) for launch in kernel.launches)


# the quick subset (-m "not slow") keeps the default block shape (above), the float64 kernel and
# one planted bug; the full suite runs every block shape and bug
# (8, 16) with 7x7 filters needs 56 KB of shared memory: the launch must ask for more than 48 KB
# taps: the filter taps held in registers (read once per filter) instead of read where used
@pytest.mark.slow
@pytest.mark.parametrize("rows, per_thread, taps", [(4, 16, False), (16, 4, False),
                                                    (2, 5, False), (8, 16, False), (8, 8, True),
                                                    (4, 8, True), (2, 5, True)])
def test_strips_kernel_other_block_shapes(emulated, monkeypatch, rows, per_thread, taps):
    monkeypatch.setattr(_cupy_kernels, "FLOAT32_KERNEL", "strips")
    monkeypatch.setattr(_cupy_kernels, "STRIP_CONFIG",
                        {"rows": rows, "per_thread": per_thread, "taps_in_registers": taps})
    m = random_model(2, 7, seed=1)
    f = np.random.default_rng(2).uniform(0, 255, (75, 70)).astype(np.float32)
    _check(f, m, 2e-3)
    _assert_strips_ran(rows, stages=2)


@pytest.mark.parametrize("bug", [
    pytest.param(("if (y0 + p < VH) sv", "if (y0 + p < VH - 1) sv"),  # last response row never written
                 marks=pytest.mark.slow),
    pytest.param(("TAP((F - 1 - a) * F + (F - 1 - b))", "TAP(a * F + b)"),  # backward filter not rotated
                 marks=pytest.mark.slow),
    pytest.param(("kr[j] = k[j]", "kr[j] = k[j ^ 1]"),  # taps in registers read out of order
                 marks=pytest.mark.slow),
    ("        __syncthreads();\n        // acc", "        // acc"),  # a barrier missing
])
def test_emulation_catches_planted_bugs(emulated, monkeypatch, bug):
    """The emulated tests can fail: a planted error in the strips kernel is caught."""
    assert bug[0] in _cupy_kernels._STRIPS_SOURCE
    monkeypatch.setattr(_cupy_kernels, "_STRIPS_SOURCE", _cupy_kernels._STRIPS_SOURCE.replace(*bug))
    monkeypatch.setattr(_cupy_kernels, "FLOAT32_KERNEL", "strips")
    monkeypatch.setattr(_cupy_kernels, "STRIP_CONFIG",
                        {"rows": 8, "per_thread": 8, "taps_in_registers": "kr[j]" in bug[0]})
    m = random_model(2, 7, seed=1)
    f = np.random.default_rng(2).uniform(0, 255, (75, 70)).astype(np.float32)
    with pytest.raises(AssertionError):
        _check(f, m, 2e-3)


def test_emulation_refuses_what_cuda_refuses(emulated):
    from cuda_emulation import EmulatedKernel

    g = _cupy_kernels.strip_geometry(7, 48, rows=8, per_thread=16)
    kernel = EmulatedKernel(_cupy_kernels.strips_source(g["defines"]), "trd_stage_strips")
    with pytest.raises(RuntimeError, match="dynamic shared memory"):
        kernel((1, 1), g["block"], (), shared_mem=g["shared_bytes"])
    kernel.max_dynamic_shared_size_bytes = g["shared_bytes"]
    with pytest.raises(TypeError, match="arguments"):
        kernel((1, 1), g["block"], (), shared_mem=g["shared_bytes"])


def test_strips_geometry_forward_lengths():
    g = _cupy_kernels.strip_geometry(7, 48, rows=8, per_thread=8)
    assert g["block"] == (32, 8) and g["tile"] == (64, 32)
    assert 4 <= g["defines"]["PF"] <= 16
    # an explicit forward length is honoured, and shared memory grows with the filters
    assert _cupy_kernels.strip_geometry(7, 48, 8, 8, forward=5)["defines"]["PF"] == 5
    assert (_cupy_kernels.strip_geometry(7, 80, 8, 8)["shared_bytes"]
            - g["shared_bytes"] == 4 * 32 * 49)


@pytest.mark.parametrize("shape", [(5, 4), (70, 31)])
@pytest.mark.parametrize("exact", [False, True])
def test_tiles_kernel_float64_equals_reference(emulated, shape, exact):
    m = random_model(2, 5, seed=2)
    f = np.random.default_rng(3).uniform(0, 255, shape)
    _check(f, m, 1e-8 if exact else 1e-4, exact=exact)  # tables: 1e-5 of phi


@pytest.mark.slow
def test_tiles_kernel_float32_equals_reference(emulated, monkeypatch):
    monkeypatch.setattr(_cupy_kernels, "FLOAT32_KERNEL", "tiles")
    m = random_model(2, 7, seed=4, wide_grid=True)
    f = np.random.default_rng(4).uniform(0, 255, (40, 35)).astype(np.float32)
    _check(f, m, 2e-3)
    ((key, kernel),) = _compiled().items()
    assert key == ("tiles", "float32") and kernel.launches[0][1] == (32, 32)


@pytest.mark.slow
def test_strips_falls_back_to_tiles_without_the_shared_memory(emulated):
    """The default float32 kernel is strips; a block that needs more shared memory than the
    GPU gives (9x9, 80 filters: 53 KB; 48 KB before Volta) runs the tiles kernel instead."""
    f = np.random.default_rng(5).uniform(0, 255, (40, 37)).astype(np.float32)
    m = random_model(1, 9, seed=6)
    assert _cupy_kernels.FLOAT32_KERNEL == "strips"
    assert _cupy_kernels.strip_geometry(9, m.filters.shape[1])["shared_bytes"] > 48 * 1024
    emulated.max_shared_bytes = 48 * 1024
    _check(f, m, 2e-3)
    assert list(_compiled()) == [("tiles", "float32")]
    _cupy_kernels._kernels.clear()
    _cupy_kernels._max_shared.clear()
    emulated.max_shared_bytes = 227 * 1024
    _check(f, m, 2e-3)
    assert [key[0] for key in _compiled()] == ["strips"]


@pytest.mark.parametrize("dtype, rtol", [(np.float64, 1e-13), (np.float32, 1e-5)])
def test_training_kernels_equal_numpy(emulated, dtype, rtol):
    _check_training_kernels(emulated, dtype, rtol)


def test_training_kernels_test_can_fail(emulated, monkeypatch):
    """A planted error in the shared RBF sum (phi' with the distances to the centres below the
    nearest one counted the wrong way) is caught."""
    from skimage_trd.train import gradients_cupy

    bug = ("dj += delta; visit", "dj -= delta; visit")
    assert _cupy_kernels.RBF_SUM_SOURCE.count(bug[0]) == 1
    planted = _cupy_kernels.RBF_SUM_SOURCE.replace(*bug)
    monkeypatch.setattr(gradients_cupy, "RBF_SUM_SOURCE", planted)  # (the RBF-weight kernel)
    monkeypatch.setattr(_cupy_kernels, "RBF_SUM_SOURCE", planted)  # (phi, kernels.cuda)
    with pytest.raises(AssertionError):
        _check_training_kernels(emulated, np.float64, 1e-13)


def _check_training_kernels(emulated, dtype, rtol):
    """The CUDA kernels of GPU training (train/gradients_cupy.py: phi and phi' of the responses,
    an ElementwiseKernel; the RBF-weight gradient, the RawModule rbf_grad), which evaluate the
    RBF sum with the stage kernels' shared snippet (kernels.cuda.RBF_SUM_SOURCE), equal their
    NumPy versions (sums over every centre)."""
    from skimage_trd.train import gradients_cupy
    from skimage_trd.train.gradients import TrainingSpec

    spec = TrainingSpec(5, np.arange(-310.0, 310.1, 10.0), 0.01)
    rng = np.random.default_rng(0)
    # responses on the grid, beyond its ends and beyond the reach of its last centre (phi = 0);
    # rbf_grad: several blocks of threads per row, the last one partly filled
    Z = rng.uniform(-450, 450, (3, 10000)).astype(dtype)
    E = rng.standard_normal(Z.shape).astype(dtype)
    W = rng.standard_normal((3, spec.n_rbf))
    V, D = gradients_cupy.phi_and_derivative(Z, W, spec, emulated)
    V_ref, D_ref = gradients_cupy.phi_and_derivative(Z, W, spec, np)
    assert V.dtype == D.dtype == dtype
    np.testing.assert_allclose(V, V_ref, rtol=0, atol=rtol * np.abs(V_ref).max())
    np.testing.assert_allclose(D, D_ref, rtol=0, atol=rtol * np.abs(D_ref).max())
    assert np.all(V[np.abs(Z) > 430] == 0)
    dW = gradients_cupy.rbf_weight_gradient(Z, E, spec, emulated)
    dW_ref = gradients_cupy.rbf_weight_gradient(Z, E, spec, np)
    np.testing.assert_allclose(dW, dW_ref, rtol=0, atol=rtol * np.abs(dW_ref).max())
    kernels = _compiled()
    assert set(kernels) == {("gemm_phi", np.dtype(dtype).name),
                            ("gemm_rbf_grad", np.dtype(dtype).name)}
    (launch,) = kernels[("gemm_rbf_grad", np.dtype(dtype).name)].launches
    assert launch[0][0] > 1  # blocks per row


@pytest.mark.parametrize("dtype, atol", [(np.float64, 1e-9), (np.float32, 2e-2)])
def test_volume_stages_on_the_gpu_path_equal_reference(emulated, dtype, atol):
    """Volume models on the CuPy path (kernels/volume.py run_volume_gpu: im2col, products,
    the CUDA phi kernel with the stage kernels' RBF sum, col2im), with the emulated CuPy."""
    from skimage_trd.train.models import lift_to_volume

    rng = np.random.default_rng(3)
    m = lift_to_volume(random_model(n_stages=2, kernel_size=3, n_filters=4, seed=3), 3)
    m.filters[:, :, 0] += 0.3 * m.filters[:, :, 1]  # (filters reaching the planes above, below)
    m.filters -= m.filters.mean(axis=(2, 3, 4), keepdims=True)
    f = rng.uniform(0, 255, (5, 12, 14)).astype(dtype)
    out = run_model(f, m, backend="cupy")
    assert out.dtype == dtype and out.shape == f.shape
    np.testing.assert_allclose(out, trd_reference(f.astype(np.float64), m), rtol=0, atol=atol)
    assert ("gemm_phi", np.dtype(dtype).name) in _compiled()


def test_denoise_trd_volumes_on_the_gpu_path(emulated, monkeypatch):
    """denoise_trd(axes="ZYX", backend="cupy") through the emulated CuPy: the CPU result."""
    from skimage_trd import _denoise, denoise_trd, fluorescence_volume
    from skimage_trd.train.models import lift_to_volume

    monkeypatch.setattr(_denoise, "cupy_module", lambda: emulated)
    m = lift_to_volume(random_model(n_stages=2, kernel_size=3, n_filters=4, seed=4), 3)
    clean = fluorescence_volume((5, 16, 18), seed=1)
    noisy = clean + 0.1 * np.random.default_rng(0).standard_normal(clean.shape)
    gpu = denoise_trd(noisy, 0.1, axes="ZYX", model=m, backend="cupy", exact=True)
    cpu = denoise_trd(noisy, 0.1, axes="ZYX", model=m, exact=True)
    np.testing.assert_allclose(gpu, cpu, atol=1e-9)

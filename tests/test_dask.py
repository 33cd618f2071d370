"""Dask arrays: lazy results equal to the in-memory ones, also on a distributed cluster."""

import numpy as np
import pytest
from conftest import random_model

from skimage_trd import denoise_trd

da = pytest.importorskip("dask.array")

MODEL = random_model(3, 5, seed=41)
BANK = [random_model(2, 5, seed=42 + i) for i in range(2)]
BANK[0].sigma, BANK[1].sigma = 15.0, 40.0


def _image(shape, seed=0):
    rng = np.random.default_rng(seed)
    clean = np.clip(np.cumsum(rng.standard_normal(shape), axis=-1) / 20 + 0.5, 0, 1)
    return clean + 0.08 * rng.standard_normal(shape)


@pytest.mark.parametrize("chunks", [(23, 31), (64, 17), (100, 100), (10, 90)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dask_equals_numpy_2d(chunks, dtype):
    img = _image((100, 90)).astype(dtype)
    expected = denoise_trd(img, 0.08, model=MODEL)
    lazy = denoise_trd(da.from_array(img, chunks=chunks), 0.08, model=MODEL)
    assert isinstance(lazy, da.Array) and lazy.dtype == expected.dtype
    np.testing.assert_allclose(lazy.compute(), expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())


def test_dask_stack_bank_estimated_sigma_uint16():
    stack = (np.clip(_image((3, 70, 64)), 0, 1) * 4095).astype(np.uint16)
    kw = dict(model=BANK, preserve_range=True)
    expected = denoise_trd(stack, **kw)
    lazy = denoise_trd(da.from_array(stack, chunks=(1, 30, 40)), **kw)
    np.testing.assert_allclose(lazy.compute(), expected, rtol=1e-5, atol=1e-3)


def test_dask_preserve_dtype_uint16():
    stack = (np.clip(_image((2, 70, 64)), 0, 1) * 4095).astype(np.uint16)
    kw = dict(model=BANK, preserve_range=True, preserve_dtype=True)
    expected = denoise_trd(stack, **kw)
    lazy = denoise_trd(da.from_array(stack, chunks=(1, 30, 40)), **kw)
    assert isinstance(lazy, da.Array) and lazy.dtype == np.uint16
    assert np.abs(lazy.compute().astype(int) - expected).max() <= 1


def test_dask_channels():
    rgb = _image((60, 50, 3))
    expected = denoise_trd(rgb, [0.08, 0.05, 0.1], model=MODEL, channel_axis=-1)
    lazy = denoise_trd(da.from_array(rgb, chunks=(25, 25, 1)), [0.08, 0.05, 0.1], model=MODEL,
                       channel_axis=-1)
    np.testing.assert_allclose(lazy.compute(), expected, rtol=1e-5, atol=1e-7)


@pytest.mark.slow
def test_distributed_local_cluster_with_processes():
    distributed = pytest.importorskip("distributed")
    img = _image((2, 120, 110))
    expected = denoise_trd(img, 0.08, model=MODEL)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client:
        lazy = denoise_trd(da.from_array(img, chunks=(1, 60, 55)), 0.08, model=MODEL)
        result = client.compute(lazy).result()
    np.testing.assert_allclose(result, expected, rtol=1e-5, atol=1e-7)


def test_dask_color_opponent_matches_numpy():
    rgb = _image((50, 40, 3))
    expected = denoise_trd(rgb, 0.08, model=MODEL, channel_axis=-1)
    lazy = denoise_trd(da.from_array(rgb, chunks=(20, 20, 3)), 0.08, model=MODEL, channel_axis=-1)
    assert isinstance(lazy, da.Array)
    np.testing.assert_allclose(lazy.compute(), expected, rtol=1e-5, atol=1e-7)


def test_dask_backends():
    img = _image((40, 30))
    lazy = denoise_trd(da.from_array(img, chunks=(20, 15)), 0.08, model=MODEL, backend="numpy")
    np.testing.assert_allclose(lazy.compute(), denoise_trd(img, 0.08, model=MODEL, backend="numpy"),
                               atol=1e-12)
    with pytest.raises(ValueError, match="CPU backends"):
        denoise_trd(da.from_array(img), 0.08, model=MODEL, backend="cupy")
    with pytest.raises(ValueError, match="backend"):
        denoise_trd(da.from_array(img), 0.08, model=MODEL, backend="tpu")


@pytest.mark.parametrize("sigma", [0.1, None])
def test_dask_refuses_nan_and_inf(sigma):
    x = _image((2, 40, 40))
    x[1, 5, 5] = np.nan
    with pytest.raises(ValueError, match=r"NaN or infinite"):
        denoise_trd(da.from_array(x, chunks=(1, 20, 20)), sigma, model=MODEL)
    y = x[0].copy()
    y[7, 7] = -np.inf
    with pytest.raises(ValueError, match="NaN or infinite"):
        denoise_trd(da.from_array(y, chunks=20), sigma, model=MODEL)
    huge = x[0] * 1e306  # finite, though its sum overflows
    assert denoise_trd(da.from_array(huge, chunks=20), 1e305, model=MODEL).shape == huge.shape


def test_dask_decides_float64_stages_from_the_whole_plane(monkeypatch):
    # noise tiny beside the plane's spread: float64 stages in memory; the dask path must see
    # the same spread although it samples only the plane's centre
    import skimage_trd._dask as dask_path

    monkeypatch.setattr(dask_path, "SAMPLE", 16)
    sigma = 2e-7
    img = np.zeros((96, 90))
    img[:, :4], img[:, -4:] = 1.0, -1.0  # the extremes lie outside the central sample
    img += 0.01 * np.sin(np.arange(90) / 7.0) + sigma * np.random.default_rng(2).standard_normal(img.shape)
    expected = denoise_trd(img, sigma, model=MODEL)
    lazy = denoise_trd(da.from_array(img, chunks=(40, 45)), sigma, model=MODEL).compute()
    assert np.abs(lazy - expected).max() < 0.01 * sigma

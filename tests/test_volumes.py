"""Volumes: 3-D models, their kernels and gradients, the volume generator, training by fit."""

import numpy as np
import pytest
from scipy.ndimage import correlate

from skimage_trd import TRDModel, dct_filter_basis
from skimage_trd._model import ModelFileError
from skimage_trd._volumes import fluorescence_volume
from skimage_trd.kernels._simd import has_avx512
from skimage_trd.kernels.engine import run_model
from skimage_trd.kernels.prepare import prepare
from skimage_trd.kernels.reference import correlate_valid, trd_reference
from skimage_trd.kernels.volume import GridRBF, run_volume
from skimage_trd.train import fit
from skimage_trd.train.gradients import (
    StageParams,
    TrainingSpec,
    model_to_params,
    pack_params,
    params_to_model,
)
from skimage_trd.train.gradients_volume import (
    VolumeStages,
    VolumeTrainer,
    pad_symmetric_adjoint_nd,
    stage_backward_volume_reference,
    stage_forward_volume_reference,
)
from skimage_trd.train.models import default_rbf_grid, lift_to_volume

CENTERS, PRECISION = default_rbf_grid(25)


def small_2d_model(rng, n_filters=4, f=5, n_stages=2):
    filters = rng.standard_normal((n_stages, n_filters, f, f))
    filters -= filters.mean(axis=(2, 3), keepdims=True)
    filters /= np.sqrt((filters**2).sum(axis=(2, 3), keepdims=True))
    return TRDModel(filters=filters, weights=rng.normal(0, 5, (n_stages, n_filters, CENTERS.size)),
                    centers=CENTERS, precision=PRECISION, lambdas=np.full(n_stages, 0.2),
                    sigma=25, name="small")


def random_volume_model(rng, shape=(3, 5, 5), n_filters=3, n_stages=2):
    filters = rng.standard_normal((n_stages, n_filters) + shape)
    filters -= filters.mean(axis=(2, 3, 4), keepdims=True)
    filters /= np.sqrt((filters**2).sum(axis=(2, 3, 4), keepdims=True))
    return TRDModel(filters=filters, weights=rng.normal(0, 5, (n_stages, n_filters, CENTERS.size)),
                    centers=CENTERS, precision=PRECISION, lambdas=np.full(n_stages, 0.2),
                    sigma=25, name="vol")


# ------------------------------------------------------------------------------- the model
def test_volume_model_shape_save_load(tmp_path):
    m = random_volume_model(np.random.default_rng(0))
    assert (m.ndim, m.depth, m.kernel_size, m.filter_shape) == (3, 3, 5, (3, 5, 5))
    assert m.radii == (1, 2, 2) and m.halos == (4, 8, 8)
    m.save(tmp_path / "v.npz")
    back = TRDModel.load(tmp_path / "v.npz")
    assert back.filter_shape == (3, 5, 5)
    np.testing.assert_array_equal(back.filters, m.filters)
    with pytest.raises(ModelFileError, match="odd"):
        TRDModel(filters=np.zeros((1, 2, 2, 5, 5)), weights=np.zeros((1, 2, 63)),
                 centers=CENTERS, precision=PRECISION, lambdas=[1.0], sigma=25)
    with pytest.raises(ModelFileError, match="denoising"):
        TRDModel(filters=m.filters, weights=m.weights, centers=CENTERS, precision=PRECISION,
                 task="deblock", quality=10)


def test_dct_basis_3d_orthonormal_zero_mean():
    b = dct_filter_basis((3, 5, 5))
    assert b.shape == (74, 3, 5, 5)
    M = b.reshape(len(b), -1)
    np.testing.assert_allclose(M @ M.T, np.eye(len(b)), atol=1e-12)
    np.testing.assert_allclose(M.sum(axis=1), 0, atol=1e-12)
    np.testing.assert_array_equal(dct_filter_basis(5), dct_filter_basis((5, 5)))


def test_correlate_valid_3d_matches_scipy():
    rng = np.random.default_rng(1)
    a, k = rng.random((7, 9, 10)), rng.random((3, 5, 5))
    np.testing.assert_allclose(correlate_valid(a, k),
                               correlate(a, k, mode="constant")[1:-1, 2:-2, 2:-2], atol=1e-12)


# ------------------------------------------------------------------------------- the stages
def test_lifted_model_is_plane_by_plane_exactly():
    rng = np.random.default_rng(2)
    m2 = small_2d_model(rng)
    m3 = lift_to_volume(m2, 3)
    vol = rng.uniform(0, 255, (5, 14, 16))
    planes = np.stack([trd_reference(p, m2) for p in vol])
    np.testing.assert_array_equal(trd_reference(vol, m3), planes)
    np.testing.assert_allclose(run_model(vol, m3), planes, atol=1e-9)
    assert m3.metadata["lifted_from"]["name"] == "small"
    with pytest.raises(ValueError, match="odd"):
        lift_to_volume(m2, 2)


@pytest.mark.parametrize("dtype, atol", [(np.float64, 1e-9), (np.float32, 2e-2)])
def test_volume_kernel_matches_reference(dtype, atol):
    rng = np.random.default_rng(3)
    m = random_volume_model(rng)
    vol = rng.uniform(0, 255, (6, 11, 13))
    ref = trd_reference(vol, m)
    np.testing.assert_allclose(run_volume(vol, m, dtype), ref, atol=atol)
    np.testing.assert_allclose(run_model(vol.astype(dtype), m, backend="numpy"), ref, atol=atol)


requires_avx512 = pytest.mark.skipif(not has_avx512(), reason="the volume block kernels need AVX-512")


def tabled_volume_reference(f, m, kind):
    """The reference with phi from the tables the block kernels read (``kind`` 'p': the piecewise
    polynomials, 'l': the linear tables)."""
    stages = prepare(m, np.float32).stages
    if kind == "p":
        return trd_reference(f, m, phi=lambda t, i, z: stages[t].poly(z, row=i))
    return trd_reference(f, m, phi=lambda t, i, z: stages[t].linear(z, row=i))


@requires_avx512
@pytest.mark.parametrize("fshape", [(3, 7, 7), (3, 5, 5), (1, 3, 3), (5, 5, 5),
                                    pytest.param((3, 9, 9), marks=pytest.mark.slow)])
@pytest.mark.parametrize("kind", ["p", "l"])
@pytest.mark.parametrize("shape, tiles", [((1, 1, 1), None), ((4, 9, 11), None),
                                          ((19, 70, 75), (8, 32, 32)), ((11, 40, 150), None)])
def test_volume_block_kernels_equal_the_reference_with_their_tables(fshape, kind, shape, tiles):
    """The register-blocked volume stages against the NumPy reference with the same influence
    tables, on volumes cut into tiles in all three axes (with ``tiles``) or not."""
    from skimage_trd.kernels.volume_blocks import run_volume_blocks

    rng = np.random.default_rng(sum(fshape) + sum(shape))
    m = random_volume_model(rng, shape=fshape)
    prep = prepare(m, np.float32)
    if kind == "p":
        assert all(st.poly is not None for st in prep.stages)
    f = rng.uniform(-100, 400, shape)  # responses beyond both ends of the tables' grid too
    out = run_volume_blocks(f.astype(np.float32), prep, fshape, kind, m.n_stages, tiles=tiles)
    assert out.dtype == np.float32 and out.shape == shape
    ref = tabled_volume_reference(f, m, kind)
    np.testing.assert_allclose(out, ref, rtol=0, atol=4e-3)
    # ... and the comparison can fail: one tap of the filters' first plane changed
    m.filters[0, 1, 0, fshape[1] // 2, 0] += 0.05
    if shape[0] > 1:
        assert np.abs(out - tabled_volume_reference(f, m, kind)).max() > 1e-2


@requires_avx512
def test_volume_block_kernels_are_what_float32_volumes_run_and_threads_agree():
    from skimage_trd.kernels import volume_blocks as vbk
    from skimage_trd.kernels.numba_cpu import numba_threads

    rng = np.random.default_rng(21)
    m = random_volume_model(rng, shape=(3, 7, 7))
    vol = rng.uniform(0, 255, (13, 50, 70)).astype(np.float32)
    prep = prepare(m, np.float32)
    kind = "p" if all(st.poly is not None for st in prep.stages) else "l"
    with numba_threads(1):
        one = vbk.run_volume_blocks(vol, prep, m.filter_shape, kind, m.n_stages, tiles=(4, 16, 32))
        assert vbk.volume_tiles(vol.shape, 4, 16, 32) == 4 * 4 * 3
        np.testing.assert_array_equal(run_model(vol, m), vbk.run_volume_blocks(
            vol, prep, m.filter_shape, kind, m.n_stages))
    with numba_threads(2):
        two = vbk.run_volume_blocks(vol, prep, m.filter_shape, kind, m.n_stages, tiles=(4, 16, 32))
    np.testing.assert_array_equal(one, two)
    # float64 volumes keep the exact RBF sums of the matrix form
    vol64 = vol.astype(np.float64)
    np.testing.assert_allclose(run_model(vol64, m), trd_reference(vol64, m), atol=1e-9)


def test_volume_blocks_module_is_what_its_generator_writes():
    import importlib.util
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("gen_blocks", root / "tools" / "gen_simd_blocks.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    text = (root / "src" / "skimage_trd" / "kernels" / "_vblocks.py").read_text()
    assert text == gen.source(volume=True)


def test_run_model_refuses_mismatched_dimensions():
    rng = np.random.default_rng(4)
    with pytest.raises(ValueError, match="volumes"):
        run_model(rng.random((8, 9)), random_volume_model(rng))
    with pytest.raises(ValueError, match="2-D images"):
        run_model(rng.random((4, 8, 9)), small_2d_model(rng))


# ------------------------------------------------------------------------------- gradients
def test_pad_symmetric_adjoint_nd_is_the_adjoint():
    rng = np.random.default_rng(5)
    u = rng.random((3, 4, 5))
    pads = (2, 3, 6)  # (6 > 5: repeated reflection)
    v = rng.random(tuple(n + 2 * p for n, p in zip(u.shape, pads)))
    lhs = np.sum(np.pad(u, [(p, p) for p in pads], mode="symmetric") * v)
    rhs = np.sum(u * pad_symmetric_adjoint_nd(v, pads, u.shape))
    assert lhs == pytest.approx(rhs, rel=1e-12)


def volume_spec(n_filters=3):
    return TrainingSpec(3, CENTERS, PRECISION, n_filters=n_filters, depth=3)


def random_params(rng, spec, n_stages=2):
    return [StageParams(rng.standard_normal((spec.n_filters, spec.n_coefficients)),
                        rng.normal(0, 5, (spec.n_filters, spec.n_rbf)), float(np.log(0.2)))
            for _ in range(n_stages)]


def test_volume_stage_matches_numpy_reference():
    """The matrix form against the plain formulas, whose phi is the exact RBF sum (the cubic
    interpolant of training differs from it by GridRBF.max_error; the finite-difference test
    below checks that the gradient is the interpolant's exactly)."""
    rng = np.random.default_rng(6)
    spec = volume_spec()
    p = random_params(rng, spec, 1)[0]
    u = rng.uniform(0, 255, (1, 5, 8, 9))
    f = u + rng.normal(0, 20, u.shape)
    g = rng.standard_normal(u.shape)
    st = VolumeStages(f, spec, np.float64)
    out = st.stage_forward(st.stage(p), u)[0]
    np.testing.assert_allclose(out[0], stage_forward_volume_reference(u[0], f[0], p, spec),
                               atol=1e-4)
    grad, du = st.stage_backward(st.stage(p), u, None, g, True)
    ref = stage_backward_volume_reference(u[0], f[0], g[0], p, spec)
    for a, b in ((grad.coefficients, ref.coefficients), (grad.weights, ref.weights),
                 (du[0], ref.u)):
        assert np.abs(a - b).max() <= 1e-4 * np.abs(b).max()
    assert grad.log_lambda == pytest.approx(ref.log_lambda, rel=1e-9)
    assert GridRBF(CENTERS, PRECISION).max_error(p.weights) < 1e-4


def test_volume_loss_gradient_finite_differences():
    rng = np.random.default_rng(7)
    spec = volume_spec()
    params = pack_params(random_params(rng, spec, 2))
    clean = rng.uniform(20, 235, (2, 5, 8, 9))
    noisy = clean + rng.normal(0, 20, clean.shape)
    tr = VolumeTrainer(noisy, clean, spec, np.float64)
    _, grad = tr.loss_and_grad(params)
    size = spec.stage_size
    picks = list(rng.choice(params.size, 10, replace=False)) + [size - 1, 2 * size - 1]
    for i in picks:  # (the log-lambdas of both stages among them)
        h = 1e-5 * max(1.0, abs(params[i]))
        e = np.zeros_like(params)
        e[i] = h
        fd = (tr.loss_and_grad(params + e)[0] - tr.loss_and_grad(params - e)[0]) / (2 * h)
        assert grad[i] == pytest.approx(fd, rel=1e-6, abs=1e-7 * np.abs(grad).max())
    _, grad_last = tr.loss_and_grad(params[size:], stages="last",
                                    u_start=tr.forward([random_params(rng, spec, 1)[0]]))
    assert grad_last.shape == (size,)


def test_params_round_trip_3d():
    rng = np.random.default_rng(8)
    m = random_volume_model(rng)
    params, spec = model_to_params(m)
    assert spec.filter_shape == (3, 5, 5) and spec.n_coefficients == 74
    back = params_to_model(params, spec, sigma=25)
    np.testing.assert_allclose(back.filters, m.filters, atol=1e-12)


# ------------------------------------------------------------------------------- generator
def test_fluorescence_volume_is_reproducible_and_varied():
    a = fluorescence_volume((8, 40, 44), seed=3)
    b = fluorescence_volume((8, 40, 44), seed=3)
    c = fluorescence_volume((8, 40, 44), psf="widefield", z_step=2.5, seed=4)
    np.testing.assert_array_equal(a, b)
    for v in (a, c):
        assert v.shape == (8, 40, 44) and v.min() >= 0 and v.max() <= 1
        assert v.std() > 0.02
    assert np.abs(a - c).mean() > 0.01
    with pytest.raises(ValueError, match="psf"):
        fluorescence_volume((4, 8, 8), psf="sted")
    with pytest.raises(ValueError, match="structures"):
        fluorescence_volume((4, 8, 8), structures=("cells",))


# ------------------------------------------------------------------------------- training
def test_fit_trains_a_volume_model_from_a_lifted_2d_model():
    rng = np.random.default_rng(9)
    m2 = small_2d_model(rng, n_filters=3, f=3, n_stages=2)
    vols = [fluorescence_volume((8, 24, 24), seed=s) * 255 for s in (0, 1)]
    lines = []
    m = fit(vols, sigma=25, init=m2, depth=3, iterations=3, chunk=3, log=lines.append)
    assert m.filter_shape == (3, 3, 3) and m.name.startswith("small-lifted-3x3x3-mse-")
    hist = m.metadata["provenance"]
    assert hist["config"]["depth"] == 3
    # the start gives the 2-D result; training moved the filters out of the centre plane
    assert np.abs(m.filters[:, :, [0, 2]]).max() > 0
    noisy = vols[0] + 25 * np.random.default_rng(0).standard_normal(vols[0].shape)
    assert np.isfinite(run_model(noisy, m)).all()
    with pytest.raises(ValueError, match="volumes"):
        fit([np.zeros((24, 24))], sigma=25, init=m2, depth=3)
    with pytest.raises(ValueError, match="starts from a model"):
        fit(vols, sigma=25, depth=3)


def test_fit_adapts_a_volume_model_by_sure_with_held_out_pixels():
    rng = np.random.default_rng(10)
    m3 = lift_to_volume(small_2d_model(rng, n_filters=3, f=3, n_stages=2), 3)
    vol = fluorescence_volume((12, 64, 64), seed=5) * 200 + 20
    noisy = vol + 25 * rng.standard_normal(vol.shape)
    lines = []
    m = fit([noisy], sigma=25, loss="sure", init=m3, iterations=4, chunk=2, patch=32,
            log=lines.append)
    assert m.filter_shape == (3, 3, 3)
    result = m.metadata["provenance"]["result"]
    assert "unchanged" in result or result.get("iteration", 0) > 0
    assert any("held-out" in line for line in lines)
    assert not m.metadata["provenance"]["config"].get("twin")


# ------------------------------------------------------------------------------- the API
def noisy_volume(shape=(6, 40, 44), sigma=0.1, seed=0):
    clean = fluorescence_volume(shape, seed=seed)
    return clean, clean + sigma * np.random.default_rng(seed).standard_normal(shape)


@pytest.fixture(scope="module")
def volume_model():
    return lift_to_volume(small_2d_model(np.random.default_rng(11), n_filters=4, f=5), 3)


def test_denoise_trd_axes_zyx_runs_the_volume_model(volume_model):
    from skimage_trd import denoise_trd

    clean, noisy = noisy_volume()
    out, choices = denoise_trd(noisy, 0.1, axes="ZYX", model=volume_model, return_choices=True)
    assert out.shape == noisy.shape and out.dtype == np.float64
    assert choices[0]["model"] == volume_model.name and choices[0]["volume"] == ()
    # the lifted model is its 2-D model plane by plane: the volume call equals the plane call
    # with the 2-D model (the stage map commutes with the planes' and the volume's means)
    flat = small_2d_model(np.random.default_rng(11), n_filters=4, f=5)
    np.testing.assert_allclose(out, denoise_trd(noisy, 0.1, model=flat), atol=2e-5)
    # a time series of volumes, channels, uint8 in and out
    ts = np.stack([noisy, noisy])
    out_t = denoise_trd(ts, 0.1, axes="TZYX", model=volume_model)
    np.testing.assert_allclose(out_t[1], out, atol=1e-6)
    out_c = denoise_trd(np.stack([noisy, noisy], -1), [0.1, 0.1], axes="ZYXC",
                        model=volume_model)
    np.testing.assert_allclose(out_c[..., 0], out, atol=1e-6)
    u8 = np.clip(noisy * 255, 0, 255).astype(np.uint8)
    assert denoise_trd(u8, 25, axes="ZYX", model=volume_model, preserve_range=True,
                       preserve_dtype=True).dtype == np.uint8
    progress = []
    denoise_trd(ts, 0.1, axes="TZYX", model=volume_model,
                progress=lambda d, t: progress.append((d, t)))
    assert progress[-1][0] == progress[-1][1] and progress == sorted(progress)


def test_denoise_trd_axes_bad_input_is_refused(volume_model):
    from skimage_trd import denoise_trd

    _, noisy = noisy_volume()
    cases = [
        (dict(axes="YX"), "letters"),
        (dict(axes="ZYX", model="trd-gauss-s25-7x7-5st"), "2-D models"),
        (dict(axes="ZXY", model=volume_model), "Y and X"),
        (dict(axes="ZZX", model=volume_model), "twice"),
        (dict(axes="QYX", model=volume_model), "unknown"),
        (dict(model=volume_model), "axes with a Z"),
        (dict(axes="ZYX", model=volume_model, tile_shape=64), "whole"),
        (dict(spacing=(2, 1, 1)), "axes"),
        (dict(axes="ZYX", model=volume_model, spacing=(2, 1)), "three"),
    ]
    for kw, match in cases:
        with pytest.raises((ValueError, TypeError), match=match):
            denoise_trd(noisy, 0.1, **kw)
    with pytest.raises(ValueError, match="no Z"):
        denoise_trd(noisy[0], 0.1, axes="ZYX", model=volume_model)
    with pytest.raises(ValueError, match="fewer than the 3 planes"):
        denoise_trd(noisy[:2], 0.1, axes="ZYX", model=volume_model)
    with pytest.warns(UserWarning, match="plane by plane"):
        out = denoise_trd(noisy, 0.1, axes="ZYX", spacing=(8, 1, 1))
    np.testing.assert_array_equal(out, denoise_trd(noisy, 0.1))


def test_denoise_trd_poisson_volumes():
    from skimage_trd import denoise_trd_poisson, generalized_anscombe, load_model

    volume_model = lift_to_volume(load_model("trd-gauss-s25-7x7-5st"), 3)  # (a denoiser)
    clean = fluorescence_volume((6, 40, 44), seed=2)
    rng = np.random.default_rng(0)
    raw = 2.0 * rng.poisson(20 * clean) + 100 + 3 * rng.standard_normal(clean.shape)
    out = denoise_trd_poisson(raw, 2, 3, offset=100, axes="ZYX", model=volume_model)
    expected = 2 * 20 * clean + 100
    assert np.mean((out - expected) ** 2) < 0.5 * np.mean((raw - expected) ** 2)
    # the volume path is the transform, the volume call and the inverse
    t = generalized_anscombe(raw, 2, 3, 100)
    assert np.isfinite(out).all() and out.shape == raw.shape and t.shape == raw.shape
    two = denoise_trd_poisson(np.stack([raw, raw]), 2, 3, offset=100, axes="TZYX",
                              model=volume_model)
    np.testing.assert_allclose(two[1], out, atol=1e-9)
    with pytest.raises(ValueError, match="letters"):
        denoise_trd_poisson(raw, 2, 3, offset=100, axes="YX")


# ------------------------------------------------------------------------------- the CLI
def test_cli_denoises_an_ome_tiff_volume_with_its_own_axes(volume_model, tmp_path, capsys):
    tifffile = pytest.importorskip("tifffile")
    from skimage_trd import denoise_trd
    from skimage_trd.cli import main

    _, noisy = noisy_volume()
    raw = np.clip(noisy * 4095, 0, 4095).astype(np.uint16)
    src = tmp_path / "stack.ome.tif"
    tifffile.imwrite(src, raw, ome=True, metadata={"axes": "ZYX", "PhysicalSizeZ": 0.5,
                                                   "PhysicalSizeY": 0.2, "PhysicalSizeX": 0.2})
    np.save(tmp_path / "stack.npy", raw)
    volume_model.save(tmp_path / "m3.npz")
    out = tmp_path / "out"
    common = ["--model", str(tmp_path / "m3.npz"), "--sigma", "409.5", "-o", str(out), "-q"]
    assert main(["denoise", str(src), "--axes", "file", *common]) == 0
    assert main(["denoise", str(tmp_path / "stack.npy"), "--axes", "ZYX", *common]) == 0
    with tifffile.TiffFile(out / "stack.ome.tif") as tif:
        assert tif.series[0].axes == "ZYX" and tif.series[0].dtype == np.uint16
        got = tif.series[0].asarray()
    expected = denoise_trd(raw, 409.5, axes="ZYX", model=volume_model, preserve_range=True,
                           preserve_dtype=True)
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(np.load(out / "stack.npy"), expected)
    # a z-step far beyond the models' (OME sizes): plane by plane, with the 2-D bank
    far = tmp_path / "far.ome.tif"
    tifffile.imwrite(far, raw, ome=True, metadata={"axes": "ZYX", "PhysicalSizeZ": 5.0,
                                                   "PhysicalSizeY": 0.2, "PhysicalSizeX": 0.2})
    capsys.readouterr()
    assert main(["denoise", str(far), "--axes", "file", "--sigma", "409.5", "-o", str(out)]) == 0
    assert "denoised plane by plane" in capsys.readouterr().err
    np.testing.assert_array_equal(tifffile.imread(out / "far.ome.tif"), denoise_trd(
        raw, 409.5, preserve_range=True, preserve_dtype=True))
    with pytest.raises(SystemExit):
        main(["denoise", str(src), "--axes", "ZYX", "--channel-axis", "0", *common])
    # a zarr volume chunked in z: chunk by chunk, the same result
    zarr = pytest.importorskip("zarr")
    z = zarr.create_array(store=str(tmp_path / "vol.zarr"), shape=raw.shape, dtype=raw.dtype,
                          chunks=(2, 20, 24), dimension_names=["z", "y", "x"])
    z[:] = raw
    assert main(["denoise", str(tmp_path / "vol.zarr"), "--axes", "file", *common]) == 0
    # (chunk by chunk on one thread each: float32 sums in another order, roundings may differ)
    got = zarr.open_array(str(out / "vol.zarr"))[:]
    assert np.abs(got.astype(int) - expected).max() <= 1


def test_dask_volumes_chunked_in_z_equal_the_whole_volume():
    da = pytest.importorskip("dask.array")
    from skimage_trd import denoise_trd

    rng = np.random.default_rng(12)
    model = random_volume_model(rng, shape=(3, 3, 3), n_filters=3, n_stages=2)
    model.filters *= 0.5  # (a gentle map: the result stays near the data)
    _, noisy = noisy_volume((14, 36, 40))
    whole = denoise_trd(noisy, 0.1, axes="ZYX", model=model)
    for chunks in ((5, 36, 40), (4, 13, 17), (14, 20, 40)):
        lazy = denoise_trd(da.from_array(noisy, chunks=chunks), 0.1, axes="ZYX", model=model)
        assert isinstance(lazy, da.Array)
        np.testing.assert_allclose(lazy.compute(), whole, atol=1e-6)
    two = da.from_array(np.stack([noisy, noisy]), chunks=(1, 5, 18, 20))
    np.testing.assert_allclose(denoise_trd(two, 0.1, axes="TZYX", model=model)[1].compute(),
                               whole, atol=1e-6)


def test_volume_stage_on_several_threads_equals_one(monkeypatch):
    """The slabs shared out over threads (sums per thread) give the one-thread result, and
    OpenBLAS's thread count comes back as it was."""
    import numba

    from skimage_trd.kernels import volume as kv
    from skimage_trd.kernels.numba_cpu import numba_threads

    rng = np.random.default_rng(13)
    m = random_volume_model(rng)
    vol = rng.uniform(0, 255, (9, 14, 15)).astype(np.float32)
    monkeypatch.setattr(kv, "SLAB_BYTES", 4096)  # (one plane a slab: many slabs)
    with numba_threads(1):
        one = kv.run_volume(vol, m)
    funcs = kv._openblas_functions()
    before = funcs[0]() if funcs else None
    with numba_threads(min(2, numba.config.NUMBA_NUM_THREADS)):
        several = kv.run_volume(vol, m)
    np.testing.assert_allclose(several, one, rtol=0, atol=2e-4)
    if funcs:
        assert funcs[0]() == before


def test_tiff_voxel_size_reads_ome_units():
    from skimage_trd._batch import _tiff_spacing, _TiffInfo

    xml = ('<OME><Image><Pixels ID="P" PhysicalSizeX="0.1" PhysicalSizeY="0.1" '
           'PhysicalSizeZ="500" PhysicalSizeZUnit="nm" Type="uint16"></Pixels></Image></OME>')
    info = _TiffInfo(axes="ZYX", photometric=1, planarconfig=1, ome=xml, imagej=None,
                     resolution=None, resolutionunit=None, compressed=False)
    assert _tiff_spacing(info) == pytest.approx((0.5, 0.1, 0.1))


def test_volume_adapt_leaves_thin_volumes_and_select_sure_is_refused(volume_model):
    from skimage_trd import denoise_trd

    _, noisy = noisy_volume((4, 40, 44))  # (fewer than the 5 planes 2 stages of 3 span)
    out = denoise_trd(noisy, 0.1, axes="ZYX", model=volume_model, adapt=True)
    np.testing.assert_allclose(out, denoise_trd(noisy, 0.1, axes="ZYX", model=volume_model))
    with pytest.raises(ValueError, match="range rule"):
        denoise_trd(noisy, 0.1, axes="ZYX", model=volume_model, select="sure")


def test_volume_noise_estimate_keeps_blocks_within_planes():
    """Planes of 12 rows alternating between 5 and 40 photons: stacked as they are, 8x8 blocks
    straddle planes of different brightness and the read noise comes out 0; cut to whole
    blocks per plane, the estimate holds (gain 2, read noise 3)."""
    from skimage_trd._poisson import _estimate_volume, estimate_poisson_gaussian

    rng = np.random.default_rng(0)
    levels = np.where(np.arange(40) % 2 == 0, 5.0, 40.0)
    lam = np.broadcast_to(levels[:, None, None], (40, 12, 96))
    raw = 2.0 * rng.poisson(lam) + 100.0 + rng.normal(0, 3.0, lam.shape)
    gain, read_noise = _estimate_volume(raw, 100.0, None)
    assert abs(gain - 2.0) < 0.4 and abs(read_noise - 3.0) < 1.0
    _, naive = estimate_poisson_gaussian(raw.reshape(-1, 96), offset=100.0)
    assert abs(naive - 3.0) > 1.0  # (the stacking this replaces)

"""The readable NumPy reference against itself (adjointness) and the fast kernels against it."""

import numpy as np
import pytest
from conftest import random_model

from skimage_trd.kernels import numba_cpu as nk
from skimage_trd.kernels.engine import (
    LINEAR_TABLE_TOLERANCE,
    _run_numba,
    influence_kind,
    iter_tiles,
    prepare,
    run_model,
)
from skimage_trd.kernels.influence import (
    LinearTable,
    build_linear_table,
    build_table,
    influence_and_derivative,
    linear_from_cubic,
)
from skimage_trd.kernels.reference import correlate_valid, influence_reference, trd_reference


def test_correlation_adjoint_is_rotated_correlation():
    # <k * x, y> == <x, rot180(k) * pad0(y)>: the 'kbar' of Eq. 7 is the adjoint of 'k'.
    rng = np.random.default_rng(0)
    k = rng.standard_normal((5, 5))
    x = rng.standard_normal((20, 17))
    y = rng.standard_normal((16, 13))
    lhs = np.sum(correlate_valid(x, k) * y)
    rhs = np.sum(x * correlate_valid(np.pad(y, 4), k[::-1, ::-1]))
    assert np.isclose(lhs, rhs, rtol=1e-12)


def test_stage_of_constant_image_is_identity(model):
    # zero-mean filters see nothing in a constant image and u = f: nothing moves
    f = np.full((23, 19), 87.0)
    assert np.allclose(trd_reference(f, model), f, atol=1e-9)


def test_influence_table_accuracy():
    m = random_model(1, 5, seed=3)
    table = build_table(m.weights[0], m.centers, m.precision, 1e-5)
    assert table.max_error <= 1e-5
    z = np.linspace(-500, 500, 20001)
    phi, _ = influence_and_derivative(z, m.weights[0], m.centers, m.precision)
    t = np.clip((z - table.x0) * table.inv_h, 0, table.n_intervals - 1e-12)
    n = t.astype(int)
    tt = t - n
    c = table.coef[:, n]
    approx = ((c[..., 3] * tt + c[..., 2]) * tt + c[..., 1]) * tt + c[..., 0]
    assert np.max(np.abs(approx - phi)) < 2e-5
    assert np.allclose(influence_reference(z[:50], m.weights[0, 0], m.centers, m.precision),
                       phi[0, :50], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("tolerance", [1e-3, 2e-4, 2e-5])
def test_linear_table_accuracy(tolerance):
    m = random_model(2, 5, seed=3)
    table = build_linear_table(m.weights[1], m.centers, m.precision, tolerance, np.float64)
    assert table.max_error <= tolerance and table.pairs.dtype == np.complex128
    z = np.linspace(-500, 500, 100001)
    phi, _ = influence_and_derivative(z, m.weights[1], m.centers, m.precision)
    err = np.max(np.abs(table(z) - phi))
    assert err <= tolerance
    assert np.allclose(table(z, row=3), table(z)[3])
    # a finer tolerance needs a finer grid, which is also more accurate
    coarse = build_linear_table(m.weights[1], m.centers, m.precision, 4 * tolerance)
    assert coarse.n_intervals < table.n_intervals
    assert np.max(np.abs(coarse(z) - phi)) > err
    # float32 tables are complex64 (one 8-byte read per evaluation)
    assert build_linear_table(m.weights[1], m.centers, m.precision, tolerance,
                              np.float32).pairs.dtype == np.complex64


def test_linear_table_needs_an_accurate_cubic_and_a_reachable_tolerance():
    m = random_model(1, 5, seed=3)
    cubic = build_table(m.weights[0], m.centers, m.precision, 1e-3)
    with pytest.raises(ValueError, match="exceeds"):
        linear_from_cubic(cubic, cubic.max_error / 2)
    with pytest.raises(ValueError, match="parts per cubic interval"):
        linear_from_cubic(cubic, cubic.max_error * 1.000001)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_engine_rejects_non_finite_images(bad):
    m = random_model(1, 5, seed=3)
    f = np.zeros((9, 9), np.float32)
    f[4, 4] = bad
    with pytest.raises(ValueError, match="NaN or infinite"):
        run_model(f, m)


def tabled_reference(f, m, dtype, n_stages=None, kind=None):
    """The reference with phi from the tables the Numba kernel reads: the linear tables, or with
    ``kind='p'`` the piecewise polynomials; ``kind='auto'``: those the engine picks for float32
    input (:func:`influence_kind`)."""
    prep = prepare(m, dtype)
    if kind == "auto":
        n = m.n_stages if n_stages is None else n_stages
        kind = influence_kind(prep, n, m.kernel_size, np.dtype(dtype), exact=False)
    stages = prep.stages
    if kind == "p":
        return trd_reference(f, m, n_stages, phi=lambda t, i, z: stages[t].poly(z, row=i))
    return trd_reference(f, m, n_stages, phi=lambda t, i, z: stages[t].linear(z, row=i))


def table_error_bound(m, t):
    """A bound on a stage's diffusion term's error from its tables: tol * sum_i |k_i|_1."""
    return LINEAR_TABLE_TOLERANCE * np.abs(m.filters[t]).sum()


SHAPES = [(1, 1), (2, 3), (5, 4), (7, 7), (13, 9), (33, 65), (70, 31), (205, 23)]  # 205: several strips


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("kernel_size", [5, 7])
def test_numba_equals_reference_float64(shape, kernel_size):
    m = random_model(3, kernel_size, seed=kernel_size, wide_grid=kernel_size == 7)
    rng = np.random.default_rng(sum(shape))
    f = rng.uniform(0, 255, shape)
    ref = trd_reference(f, m)
    out = run_model(f, m, backend="numba")
    assert out.dtype == np.float64 and out.shape == shape
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-8)


@pytest.mark.parametrize("shape", SHAPES)
def test_numba_equals_reference_float32(shape):
    m = random_model(3, 7, seed=11)
    rng = np.random.default_rng(sum(shape) + 1)
    f = rng.uniform(0, 255, shape)
    # the kernel computes what its tables say, up to float32 rounding ...
    out = run_model(f.astype(np.float32), m, backend="numba")
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, tabled_reference(f, m, np.float32, kind="auto"), rtol=0,
                               atol=2e-3)
    out_t = run_model(f, m, backend="numba", exact=False)
    np.testing.assert_allclose(out_t, tabled_reference(f, m, np.float64), rtol=0, atol=1e-8)
    # ... and one stage is as close to the exact one as the tables' tolerance allows
    one = run_model(f.astype(np.float32), m, backend="numba", n_stages=1)
    np.testing.assert_allclose(one, trd_reference(f, m, 1), rtol=0,
                               atol=table_error_bound(m, 0) + 2e-3)
    assert np.abs(out - trd_reference(f, m)).max() < 0.05  # measured 0.004 for shape (205, 23)


# 3, 9: other unrolled sizes; 11: the generic loop (9 and 11, no shipped model's size, compile
# kernels of their own: slow)
@pytest.mark.parametrize("kernel_size", [3, pytest.param(9, marks=pytest.mark.slow),
                                         pytest.param(11, marks=pytest.mark.slow)])
@pytest.mark.parametrize("dtype, exact", [(np.float32, False), (np.float64, False),
                                          (np.float64, True)])
def test_numba_equals_reference_other_filter_sizes(kernel_size, dtype, exact):
    m = random_model(2, kernel_size, seed=kernel_size)
    # values up to 10x the usual range: responses beyond both ends of the table's grid
    f = np.random.default_rng(kernel_size).uniform(-1000, 2550, (41, 37))
    ref = trd_reference(f, m) if exact else tabled_reference(f, m, dtype, kind="auto")
    out = run_model(f.astype(dtype), m, backend="numba", exact=exact)
    assert out.dtype == dtype
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-8 if dtype == np.float64 else 5e-3)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n_intervals", [300, 32768, 32769, 40000, 65536])
def test_table_clamp_stays_inside_the_table(dtype, n_intervals):
    # int(t) must index the table for any t <= top in the compute dtype (in float32,
    # n - 1e-3 rounds to n from 32769 intervals on)
    from skimage_trd.kernels.prepare import PreparedStage

    pairs = np.zeros((1, n_intervals), np.result_type(dtype, np.complex64))
    st = PreparedStage(filters=None, flipped=None, weights=None, coef=None, x0=-10.0, inv_h=1.0,
                       lam=0.0, linear=LinearTable(pairs, x0=-10.0, inv_h=1.0, max_error=0.0))
    top = st.grid[2]
    assert st.grid.dtype == dtype and top < n_intervals and int(top) == n_intervals - 1


# --- the register-blocked float32 kernels (both kinds of influence-function table) ---------------

BLOCK_SHAPES = [(1, 1), (2, 3), (7, 9), (33, 65), (64, 32), (129, 300), (150, 611)]  # 611: 3 tiles
requires_avx512 = pytest.mark.skipif(not nk.has_avx512(), reason="the 'p' kernels need AVX-512")


@pytest.mark.parametrize("shape", BLOCK_SHAPES)
@pytest.mark.parametrize("kind", [pytest.param("p", marks=requires_avx512), "l"])
@pytest.mark.parametrize("kernel_size", [3, 5, 7, pytest.param(9, marks=pytest.mark.slow)])
def test_block_kernels_equal_the_reference_with_their_tables(shape, kind, kernel_size):
    m = random_model(2, kernel_size, seed=3 * kernel_size)
    # responses beyond both ends of the tables' grid too
    f = np.random.default_rng(sum(shape)).uniform(-300, 600, shape)
    if kind == "p":
        assert all(st.poly is not None for st in prepare(m, np.float32).stages)
    out = _run_numba(f.astype(np.float32), m, m.n_stages, False, None, None, kind=kind)
    assert out.dtype == np.float32 and out.shape == shape
    np.testing.assert_allclose(out, tabled_reference(f, m, np.float32, kind=kind), rtol=0,
                               atol=4e-3)


def test_block_kernels_fail_on_a_wrong_model():
    # the comparison above can fail: a changed filter tap changes the output
    m = random_model(2, 7, seed=2)
    f = np.random.default_rng(0).uniform(0, 255, (40, 70))
    m2 = m.copy()
    m2.filters[1, 5, 6, 6] += 0.05
    out = run_model(f.astype(np.float32), m2, backend="numba")
    assert np.abs(out - tabled_reference(f, m, np.float32, kind="auto")).max() > 1e-2


def test_block_kernels_give_the_same_result_on_any_number_of_threads():
    m = random_model(3, 7, seed=1)
    f = np.random.default_rng(2).uniform(0, 255, (200, 530)).astype(np.float32)
    with nk.numba_threads(1):
        one = run_model(f, m, backend="numba")
    with nk.numba_threads(2):
        two = run_model(f, m, backend="numba")
    np.testing.assert_array_equal(one, two)
    calls = []
    nk.run_tiles(lambda *a: calls.append(a[-2:]), (), 7, n_threads=3)
    assert sorted(calls) == [(0, 2), (2, 4), (4, 7)]


@pytest.mark.parametrize("shape, pad", [((1, 1), 6), ((3, 2), 6), ((5, 7), 2), ((40, 33), 12)])
def test_pad_symmetric_is_numpys_symmetric_padding(shape, pad):
    u = np.random.default_rng(0).uniform(0, 1, shape).astype(np.float32)
    out = np.zeros((shape[0] + 2 * pad, shape[1] + 2 * pad + nk.PAD_SLACK), np.float32)
    nk.pad_symmetric(u, pad, out)

    def mirrored(n):  # the symmetric rule continued periodically (pads wider than the image)
        i = np.arange(-pad, n + pad) % (2 * n)
        return np.where(i >= n, 2 * n - 1 - i, i)

    expected = u[np.ix_(mirrored(shape[0]), mirrored(shape[1]))]
    if pad <= min(shape):
        np.testing.assert_array_equal(expected, np.pad(u, pad, mode="symmetric"))
    np.testing.assert_array_equal(out[:, :shape[1] + 2 * pad], expected)
    assert not out[:, shape[1] + 2 * pad:].any()  # the slack columns stay untouched


@pytest.mark.parametrize("shape", [(1, 1), (3, 5), (12, 14), (100, 61), (257, 300)])
@pytest.mark.parametrize("threads", [1, 2])
def test_smooth_gaussian_is_scipys_gaussian_filter(shape, threads):
    from scipy.ndimage import gaussian_filter

    u = np.random.default_rng(sum(shape)).standard_normal(shape)
    with nk.numba_threads(threads):
        out = nk.smooth_gaussian(u, 1.5)
    np.testing.assert_allclose(out, gaussian_filter(u, 1.5, mode="reflect"), rtol=0, atol=1e-13)
    if u.size > 1:  # (a 1x1 plane is its own smoothing)
        assert not np.allclose(out, gaussian_filter(u, 1.0, mode="reflect"), atol=1e-3)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float64])
def test_scale_maps_equal_the_numpy_steps_exactly(dtype):
    rng = np.random.default_rng(3)
    plane = (rng.uniform(0, 1, (137, 53)) * (255 if dtype == np.uint8 else 4095)).astype(dtype)
    scale, center, gain, mid = 1 / 255, 0.4321, 151.37, 127.5
    x = plane.astype(np.float64)
    x *= scale
    x -= center
    x *= gain
    x += mid
    for threads in (1, 2):  # (rows in blocks of MAP_ROWS over the threads)
        f = np.empty(plane.shape, np.float32)
        with nk.numba_threads(threads):
            nk.to_model_scale(plane, scale, center, gain, mid, f)
        np.testing.assert_array_equal(f, x.astype(np.float32))
        res = f + np.random.default_rng(4).standard_normal(f.shape).astype(np.float32)
        for lo, hi in ((0.0, 1.0), (1.0, 0.0)):  # clipped, and not (lo > hi)
            y = res.astype(np.float64)
            y -= mid
            y /= gain
            y += center
            if lo <= hi:
                np.clip(y, lo, hi, out=y)
            out = np.empty(plane.shape, np.float64)
            with nk.numba_threads(threads):
                nk.from_model_scale(res, mid, gain, center, lo, hi, out=out)
            np.testing.assert_array_equal(out, y)


def test_block_kernels_run_in_a_forked_child_of_a_process_that_used_them():
    # the tile threads' pool of the parent does not exist in a forked child: a fresh one is made
    import multiprocessing

    m = random_model(2, 7, seed=1)
    f = np.random.default_rng(0).uniform(0, 255, (64, 600)).astype(np.float32)
    with nk.numba_threads(2):
        parent = run_model(f, m, backend="numba")
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(1) as pool:
        child = pool.apply_async(_run_two_threads, (f, m)).get(timeout=60)
    np.testing.assert_array_equal(child, parent)


def _run_two_threads(f, m):
    with nk.numba_threads(2):
        return run_model(f, m, backend="numba")


def test_tile_width_divides_rows_into_nearly_equal_tiles():
    for W in (1, 17, 255, 256, 300, 511, 512, 2048, 4096, 5000):
        tw = nk.tile_width(W, 3)
        n = -(-W // tw)
        assert 1 <= tw <= max(W, 1) and tw <= 512 and n * tw - W < 16 * n
        assert tw % 16 == 0 or tw == W  # tiles start on whole vectors
        assert nk.n_tiles(100, W, 64, tw) == 2 * n


def test_influence_kind_picks_polynomials_only_where_they_hold_and_run():
    m = random_model(2, 7, seed=5)
    prep = prepare(m, np.float32)
    assert influence_kind(prep, 2, 7, np.dtype(np.float32), exact=True) is None
    assert influence_kind(prepare(m, np.float64), 2, 7, np.dtype(np.float64), exact=False) is None
    assert influence_kind(prepare(random_model(1, 11, seed=1), np.float32), 1, 11,
                          np.dtype(np.float32), exact=False) is None
    expected = "p" if nk.has_avx512() else None
    assert influence_kind(prep, 2, 7, np.dtype(np.float32), exact=False) == expected


def test_influence_kind_falls_back_to_linear_tables_or_row_kernels(monkeypatch):
    from dataclasses import replace

    from skimage_trd.kernels import engine
    from skimage_trd.kernels.prepare import Prepared

    m = random_model(2, 7, seed=5)
    prep = prepare(m, np.float32)
    monkeypatch.setattr(engine.nk, "has_avx512", lambda: False)  # AVX2: the row kernels
    assert influence_kind(prep, 2, 7, np.dtype(np.float32), exact=False) is None
    monkeypatch.setattr(engine.nk, "has_avx512", lambda: True)
    # a stage whose polynomials are not accurate enough (None) sends the image to the tables
    stages = (prep.stages[0], replace(prep.stages[1], poly=None))
    partial = Prepared(stages=stages, mu0=prep.mu0, delta=prep.delta, beta=prep.beta,
                       reach=prep.reach)
    assert influence_kind(partial, 2, 7, np.dtype(np.float32), exact=False) == "l"
    assert influence_kind(partial, 1, 7, np.dtype(np.float32), exact=False) == "p"


def test_poly_tables_are_within_the_tolerance_of_phi():
    from skimage_trd import load_model

    for name in ("trd-gauss-s25-7x7-5st", "trd-gauss-s150-7x7-5st"):
        m = load_model(name)
        for t, st in enumerate(prepare(m, np.float32).stages[:2]):
            assert st.poly is not None and st.poly.max_error < LINEAR_TABLE_TOLERANCE
            grid_end = st.poly.x0 + 32 / st.poly.inv_h
            z = np.linspace(st.poly.x0 - 100, grid_end + 100, 20001)
            for i in (0, 17, m.weights.shape[1] - 1):
                exact = influence_reference(z, m.weights[t, i], m.centers, m.precision)
                assert np.abs(st.poly(z, row=i) - exact).max() < LINEAR_TABLE_TOLERANCE


def test_poly_tables_are_refused_where_they_cannot_hold_phi():
    # a kinked influence function (the authors' tables are piecewise linear) is no polynomial
    from skimage_trd.kernels.influence import InfluenceTable, poly_from_cubic

    x = np.linspace(-100, 100, 2001)
    kinked = np.abs(x - 3.0)  # a kink inside a segment
    y = kinked[None, :-1]
    coef = np.stack([y, np.diff(kinked)[None], 0 * y, 0 * y], axis=-1)
    cubic = InfluenceTable(coef=coef, x0=-100.0, inv_h=10.0, max_error=0.0)
    assert poly_from_cubic(cubic, -100.0, 100.0).max_error > LINEAR_TABLE_TOLERANCE


def test_blocks_module_is_what_its_generator_writes():
    import importlib.util
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("gen_blocks", root / "tools" / "gen_simd_blocks.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    assert (root / "src" / "skimage_trd" / "kernels" / "_blocks.py").read_text() == gen.source()


def test_unrolled_module_is_what_its_generator_writes():
    import importlib.util
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("gen_unrolled", root / "tools" / "gen_unrolled.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    assert (root / "src" / "skimage_trd" / "kernels" / "_unrolled.py").read_text() == gen.source()


def test_reference_backend_matches_reference():
    m = random_model(2, 5, seed=4)
    f = np.random.default_rng(0).uniform(0, 255, (21, 18))
    np.testing.assert_array_equal(run_model(f, m, backend="numpy"), trd_reference(f, m))


def test_kernel_detects_a_wrong_model():
    # the comparison above can fail: a changed weight changes the output
    m = random_model(2, 5, seed=4)
    f = np.random.default_rng(0).uniform(0, 255, (21, 18))
    m2 = m.copy()
    m2.weights[1, 3, 30] += 1.0
    assert np.abs(run_model(f, m2, backend="numba") - trd_reference(f, m)).max() > 1e-3


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("tile", [(16, 16), (25, 40), (1, 7), (64, 3)])
def test_tiled_equals_whole(dtype, tile):
    m = random_model(3, 5, seed=5)
    f = np.random.default_rng(1).uniform(0, 255, (57, 45)).astype(dtype)
    whole = run_model(f, m, backend="numba")
    tiled = run_model(f, m, backend="numba", tile_shape=tile)
    np.testing.assert_allclose(tiled, whole, rtol=0, atol=1e-4 if dtype == np.float32 else 1e-10)


def test_tiles_cover_the_image_once():
    count = np.zeros((37, 29), int)
    for inner, outer, _crop in iter_tiles(count.shape, (10, 8), 6):
        count[inner] += 1
        assert outer[0].start <= inner[0].start and outer[0].stop >= inner[0].stop
    assert np.all(count == 1)


def test_progress_and_partial_stages():
    m = random_model(3, 5, seed=6)
    f = np.random.default_rng(2).uniform(0, 255, (20, 20))
    seen = []
    out = run_model(f, m, n_stages=2, progress=lambda d, t: seen.append((d, t)))
    assert seen == [(1, 2), (2, 2)]
    np.testing.assert_allclose(out, trd_reference(f, m, n_stages=2), atol=1e-8)

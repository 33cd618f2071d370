"""CuPy (CUDA) kernels of the TRD stage map: CuPy arrays in, CuPy arrays out.

One fused kernel per stage. A thread block owns a ``TILE x TILE`` square of
output pixels: it loads the padded input it needs into shared memory, then for
every filter computes ``v = phi_i(k_i * u)`` on the tile grown by ``r`` into
shared memory and adds ``rot180(k_i) * v`` to each thread's accumulator. No
image-sized intermediate is written. Influence functions come from cubic tables
(float32; the CPU kernels read linear tables sampled from the same cubic ones) or
from the exact RBF sum (float64).

CuPy is imported lazily; without it (or without a usable GPU) the functions
raise ImportError / RuntimeError naming the ``gpu`` extra.
"""

from __future__ import annotations

import threading

import numpy as np

from ._engine import model_fingerprint, prepare

# Output tile edge per thread block: float64 needs more registers per thread.
TILES = {"float32": 32, "float64": 16}

_SOURCE = r"""
extern "C" __device__ __forceinline__ T phi_table(T z, const T* coef, int i, int n_int, T x0, T inv_h) {
    T t = (z - x0) * inv_h;
    if (t < (T)0) t = (T)0;
    int n = (int)t;
    if (n >= n_int) { n = n_int - 1; t = (T)1; } else { t = t - (T)n; }
    const T* c = coef + ((size_t)i * n_int + n) * 4;
    return ((c[3] * t + c[2]) * t + c[1]) * t + c[0];
}

extern "C" __device__ __forceinline__ T phi_exact(T z, const T* w, T mu0, T delta, T beta, int J, int K) {
    int jc = (int)floor((double)((z - mu0) / delta) + 0.5);
    if (jc < 0) jc = 0;
    if (jc > J - 1) jc = J - 1;
    T d = z - (mu0 + jc * delta);
    if (fabs((double)d) > (K + 1) * (double)delta) return (T)0;
    T g0 = exp(-(T)0.5 * beta * d * d);
    T q = exp(-beta * delta * delta);
    T s = w[jc] * g0;
    T g = g0;
    T rho = exp(beta * delta * d - (T)0.5 * beta * delta * delta);
    int hi = jc + K + 1 < J ? jc + K + 1 : J;
    for (int j = jc + 1; j < hi; ++j) { g *= rho; rho *= q; s += w[j] * g; }
    g = g0;
    rho = exp(-beta * delta * d - (T)0.5 * beta * delta * delta);
    int lo = jc - K - 1 > -1 ? jc - K - 1 : -1;
    for (int j = jc - 1; j > lo; --j) { g *= rho; rho *= q; s += w[j] * g; }
    return s;
}

extern "C" __global__ void __launch_bounds__(TILE * TILE) trd_stage(
    const T* __restrict__ padded, const T* __restrict__ f, T* __restrict__ out,
    int H, int W, const T* __restrict__ filters, int N, int F,
    const T* __restrict__ coef, int n_int, T x0, T inv_h,
    const T* __restrict__ weights, int J, T mu0, T delta, T beta, int K,
    int exact, T lam)
{
    extern __shared__ unsigned char smem_raw[];
    T* su = reinterpret_cast<T*>(smem_raw);
    const int r = F / 2;
    const int TU = TILE + 4 * r;
    const int TZ = TILE + 2 * r;
    T* sv = su + TU * TU;
    const int Wp = W + 4 * r, Hp = H + 4 * r;
    const int by = blockIdx.y * TILE, bx = blockIdx.x * TILE;
    const int tid = threadIdx.y * TILE + threadIdx.x;
    const int nthreads = TILE * TILE;
    for (int idx = tid; idx < TU * TU; idx += nthreads) {
        int yy = idx / TU, xx = idx % TU;
        int gy = by + yy, gx = bx + xx;
        su[idx] = (gy < Hp && gx < Wp) ? padded[(size_t)gy * Wp + gx] : (T)0;
    }
    __syncthreads();
    T acc = (T)0;
    for (int i = 0; i < N; ++i) {
        const T* k = filters + i * F * F;
        for (int idx = tid; idx < TZ * TZ; idx += nthreads) {
            int yy = idx / TZ, xx = idx % TZ;
            T s = (T)0;
            for (int a = 0; a < F; ++a) {
                const T* row = su + (yy + a) * TU + xx;
                for (int b = 0; b < F; ++b) s += k[a * F + b] * row[b];
            }
            sv[idx] = exact ? phi_exact(s, weights + i * J, mu0, delta, beta, J, K)
                            : phi_table(s, coef, i, n_int, x0, inv_h);
        }
        __syncthreads();
        for (int a = 0; a < F; ++a) {
            const T* row = sv + (threadIdx.y + a) * TZ + threadIdx.x;
            for (int b = 0; b < F; ++b) acc += k[(F - 1 - a) * F + (F - 1 - b)] * row[b];
        }
        __syncthreads();
    }
    const int y = by + threadIdx.y, x = bx + threadIdx.x;
    if (y < H && x < W) {
        T u = su[(threadIdx.y + 2 * r) * TU + threadIdx.x + 2 * r];
        out[(size_t)y * W + x] = u - (acc + lam * (u - f[(size_t)y * W + x]));
    }
}
"""

_kernels: dict = {}
_device_cache: dict = {}
_lock = threading.Lock()


def cupy_module():
    """Import CuPy and check that a GPU is usable, with an actionable error."""
    try:
        import cupy
    except ImportError as exc:
        raise ImportError(
            "the GPU backend needs CuPy: pip install 'skimage-trd[gpu]' (cupy-cuda12x)"
        ) from exc
    try:
        if cupy.cuda.runtime.getDeviceCount() < 1:
            raise RuntimeError("no CUDA device found")
    except Exception as exc:  # CUDARuntimeError when no driver
        raise RuntimeError(f"CuPy is installed but no usable CUDA GPU was found ({exc})") from exc
    return cupy


def _kernel(dtype):
    import cupy

    name = np.dtype(dtype).name
    with _lock:
        k = _kernels.get(name)
        if k is None:
            ctype = {"float32": "float", "float64": "double"}[name]
            src = f"#define T {ctype}\n#define TILE {TILES[name]}\n" + _SOURCE
            k = cupy.RawModule(code=src, options=("--use_fast_math",) if name == "float32" else ())
            k = k.get_function("trd_stage")
            _kernels[name] = k
    return k


def _device_prepared(model, dtype):
    import cupy

    key = (model_fingerprint(model), np.dtype(dtype).str, cupy.cuda.Device().id)
    with _lock:
        hit = _device_cache.get(key)
    if hit is not None:
        return hit
    prep = prepare(model, dtype)
    stages = [
        (cupy.asarray(st.filters), cupy.asarray(st.coef), cupy.asarray(st.weights), st)
        for st in prep.stages
    ]
    hit = (prep, stages)
    with _lock:
        if len(_device_cache) > 16:
            _device_cache.clear()
        _device_cache[key] = hit
    return hit


def run_cupy(f, model, n_stages, exact, post_stage, progress):
    """Run ``n_stages`` of ``model`` on the 2-D CuPy (or NumPy) array ``f`` on the GPU."""
    cupy = cupy_module()
    f = cupy.ascontiguousarray(cupy.asarray(f))
    dtype = np.dtype(f.dtype)
    if dtype not in (np.float32, np.float64):
        f = f.astype(np.float64)
        dtype = np.dtype(np.float64)
    kernel = _kernel(dtype)
    prep, stages = _device_prepared(model, dtype)
    r = model.radius
    H, W = f.shape
    tile = TILES[dtype.name]
    tu, tz = tile + 4 * r, tile + 2 * r
    shared = (tu * tu + tz * tz) * dtype.itemsize
    grid = ((W + tile - 1) // tile, (H + tile - 1) // tile)
    scalar = dtype.type
    u = f
    for t in range(n_stages):
        filt, coef, weights, st = stages[t]
        padded = cupy.pad(u, 2 * r, mode="symmetric")
        out = cupy.empty_like(f)
        kernel(
            grid,
            (tile, tile),
            (
                padded, f, out, np.int32(H), np.int32(W), filt, np.int32(filt.shape[0]),
                np.int32(filt.shape[1]), coef, np.int32(coef.shape[1]), scalar(st.x0),
                scalar(st.inv_h), weights, np.int32(weights.shape[1]), scalar(prep.mu0),
                scalar(prep.delta), scalar(prep.beta), np.int32(prep.reach), np.int32(bool(exact)),
                scalar(st.lam),
            ),
            shared_mem=shared,
        )
        if post_stage is not None:
            out = post_stage(out, t)
        u = out
        if progress is not None:
            progress(t + 1)
    return u

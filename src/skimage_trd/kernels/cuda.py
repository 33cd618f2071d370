"""CuPy (CUDA) kernels of the TRD stage map: CuPy arrays in, CuPy arrays out.

One fused kernel per stage; no image-sized intermediate is written. A thread
block owns a tile of output pixels: it loads the padded input it needs into
shared memory, then for every filter computes ``v = phi_i(k_i * u)`` on the tile
grown by ``r`` into shared memory and adds ``rot180(k_i) * v`` to its
accumulators. Influence functions come from cubic tables (float32; the CPU
kernels read linear tables sampled from the same cubic ones) or from the exact
RBF sum (float64).

Two kernels: ``strips`` (float32 by table, the default) keeps a vertical strip
of output pixels per thread in registers, so one shared-memory read feeds a
strip's length of multiply-adds; ``tiles`` (one pixel per thread; float64, the
exact RBF sum, and float32 where a GPU lacks the shared memory for a strips
block) is bound by its shared-memory and filter reads, about 6x slower in
float32 on an H100. Both sources are also compiled as C++ by
``tests/test_cuda_source.py`` (threads emulated on the CPU) so that their index
arithmetic is tested without a GPU.

CuPy is imported lazily; without it (or without a usable GPU) the functions
raise ImportError / RuntimeError naming the ``gpu`` extra.
"""

from __future__ import annotations

import threading

import numpy as np

from .prepare import model_fingerprint, prepare

# Output tile edge per thread block: float64 needs more registers per thread.
TILES = {"float32": 32, "float64": 16}

# Shared-memory declarations as macros, so that the C++ emulation in the tests
# (tests/cuda_emulation.py) can supply its own. Every CUDA source of the package starts with it.
CUDA_PRELUDE = r"""
#ifndef SHARED_ARRAY
#define SHARED_ARRAY(type, name) extern __shared__ type name[]
#endif
"""

# The exact influence function phi(z) = sum_j w_j exp(-beta/2 (z - mu_j)^2), centres
# mu_j = mu0 + j delta, j < J: the one copy that every CUDA kernel evaluating it includes (the
# tiles kernel below; the training kernels of train/gradients_cupy.py, as an ElementwiseKernel's
# preamble and in the RawModule rbf_grad). Only the centre nearest z and the K on each side are
# visited (the rest weigh below 1e-21, influence.RBF_REACH), with three exp per z instead of one
# per centre: from g = exp(-beta/2 d^2) at the nearest centre (d = z - mu_jc), the next term out
# is g * rho, with rho = exp(+-beta delta d - beta delta^2 / 2) times q = exp(-beta delta^2) at
# every step. The template parameter is "Real", not "T", which some sources #define.
RBF_SUM_SOURCE = r"""
// visit(j, g_j, z - mu_j) for the centres j near z: the nearest, then upwards, then downwards;
// none where z is further than K + 1 centres beyond the grid's ends.
template <typename Real, typename Visit>
__device__ __forceinline__ void rbf_terms(Real z, Real mu0, Real delta, Real beta, int J, int K,
                                          Visit visit) {
    int jc = (int)floor((double)((z - mu0) / delta) + 0.5);
    if (jc < 0) jc = 0;
    if (jc > J - 1) jc = J - 1;
    Real d = z - (mu0 + jc * delta);
    if (fabs((double)d) > (K + 1) * (double)delta) return;
    Real g0 = exp(-(Real)0.5 * beta * d * d);
    Real q = exp(-beta * delta * delta);
    visit(jc, g0, d);
    Real g = g0, dj = d;
    Real rho = exp(beta * delta * d - (Real)0.5 * beta * delta * delta);
    int hi = jc + K + 1 < J ? jc + K + 1 : J;
    for (int j = jc + 1; j < hi; ++j) { g *= rho; rho *= q; dj -= delta; visit(j, g, dj); }
    g = g0; dj = d;
    rho = exp(-beta * delta * d - (Real)0.5 * beta * delta * delta);
    int lo = jc - K - 1 > -1 ? jc - K - 1 : -1;
    for (int j = jc - 1; j > lo; --j) { g *= rho; rho *= q; dj += delta; visit(j, g, dj); }
}

// phi(z), the weights w[0..J)
template <typename Real>
__device__ __forceinline__ Real rbf_phi(Real z, const Real* w, Real mu0, Real delta, Real beta,
                                        int J, int K) {
    Real s = 0;
    rbf_terms(z, mu0, delta, beta, J, K, [&](int j, Real g, Real) { s += w[j] * g; });
    return s;
}

// phi(z), and phi'(z) = -beta sum_j (z - mu_j) w_j g_j in dphi
template <typename Real>
__device__ __forceinline__ Real rbf_phi_and_derivative(Real z, const Real* w, Real mu0,
                                                       Real delta, Real beta, int J, int K,
                                                       Real& dphi) {
    Real s = 0, ds = 0;
    rbf_terms(z, mu0, delta, beta, J, K, [&](int j, Real g, Real dj) {
        s += w[j] * g;
        ds -= beta * dj * w[j] * g;
    });
    dphi = ds;
    return s;
}
"""

_SOURCE = CUDA_PRELUDE + RBF_SUM_SOURCE + r"""
extern "C" __device__ __forceinline__ T phi_table(T z, const T* coef, int i, int n_int, T x0, T inv_h) {
    T t = (z - x0) * inv_h;
    if (t < (T)0) t = (T)0;
    int n = (int)t;
    if (n >= n_int) { n = n_int - 1; t = (T)1; } else { t = t - (T)n; }
    const T* c = coef + ((size_t)i * n_int + n) * 4;
    return ((c[3] * t + c[2]) * t + c[1]) * t + c[0];
}

extern "C" __global__ void __launch_bounds__(TILE * TILE) trd_stage(
    const T* __restrict__ padded, const T* __restrict__ f, T* __restrict__ out,
    int H, int W, const T* __restrict__ filters, int N, int F,
    const T* __restrict__ coef, int n_int, T x0, T inv_h,
    const T* __restrict__ weights, int J, T mu0, T delta, T beta, int K,
    int exact, T lam)
{
    SHARED_ARRAY(unsigned char, smem_raw);
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
            sv[idx] = exact ? rbf_phi(s, weights + i * J, mu0, delta, beta, J, K)
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

# float32 kernel of run_cupy: "strips" (a strip of pixels per thread; 6x faster than "tiles"
# at 2048^2 on an H100, docs/performance.md) or "tiles" (one pixel per thread).
FLOAT32_KERNEL = "strips"

# The strips kernel: a block is STRIP_THREADS_X = 32 threads wide (one output
# column each) and ``rows`` threads high; each thread accumulates ``per_thread``
# output pixels down its column, so a block covers 32 x (rows * per_thread)
# pixels. The forward responses on the tile grown by r are computed in strips
# of ``forward`` pixels, work items spread over all threads. With taps_in_registers
# each thread reads a filter's taps once per filter instead of where each is used
# (6 % faster at 2048^2 on an H100; up to 9x9 filters, which ptxas fits in 64 registers
# without spills). 32x8 threads x 8 pixels: within 5 % of the fastest block shape timed
# from 256^2 to 3072^2, and the fastest of those that need no opt-in shared memory above
# 48 KB for 7x7 (docs/performance.md).
STRIP_THREADS_X = 32
STRIP_CONFIG = {"rows": 8, "per_thread": 8, "taps_in_registers": True}

_STRIPS_SOURCE = CUDA_PRELUDE + r"""
__device__ __forceinline__ float phi_cubic(float z, const float4* __restrict__ c, int n_int,
                                           float x0, float inv_h) {
    float t = (z - x0) * inv_h;
    int n;
    if (!(t > 0.f)) { n = 0; t = 0.f; }  // (a NaN too: no out-of-table read)
    else if (t >= (float)n_int) { n = n_int - 1; t = 1.f; }
    else { n = (int)t; t = t - (float)n; }
    const float4 q = __ldg(c + n);
    return ((q.w * t + q.z) * t + q.y) * t + q.x;
}

extern "C" __global__ void __launch_bounds__(TXB * TYB) trd_stage_strips(
    const float* __restrict__ padded, const float* __restrict__ f, float* __restrict__ out,
    int H, int W, const float* __restrict__ filters, int N,
    const float4* __restrict__ coef, int n_int, float x0, float inv_h, float lam)
{
    constexpr int R = F / 2;
    constexpr int BX = TXB, BY = TYB * PB;     // output tile
    constexpr int VW = BX + 2 * R, VH = BY + 2 * R;  // responses: tile grown by R
    constexpr int UW = BX + 4 * R;             // input: tile grown by 2R
    constexpr int NS = (VH + PF - 1) / PF;     // forward strips per column
    constexpr int UH = (BY + 4 * R > NS * PF + 2 * R) ? BY + 4 * R : NS * PF + 2 * R;
    constexpr int NT = TXB * TYB;
    constexpr int ITEMS = VW * NS;
    SHARED_ARRAY(float, smem);
    float* su = smem;                // UH x UW
    float* sv = su + UH * UW;        // VH x VW
    float* sk = sv + VH * VW;        // N x F x F
    const int tid = threadIdx.y * TXB + threadIdx.x;
    const int by = blockIdx.y * BY, bx = blockIdx.x * BX;
    const int Wp = W + 4 * R, Hp = H + 4 * R;
    for (int idx = tid; idx < UH * UW; idx += NT) {
        const int yy = idx / UW, xx = idx - yy * UW;
        const int gy = by + yy, gx = bx + xx;
        su[idx] = (gy < Hp && gx < Wp) ? padded[(size_t)gy * Wp + gx] : 0.f;
    }
    for (int idx = tid; idx < N * F * F; idx += NT) sk[idx] = filters[idx];
    __syncthreads();
    float acc[PB];
#pragma unroll
    for (int p = 0; p < PB; ++p) acc[p] = 0.f;
    for (int i = 0; i < N; ++i) {
        const float* k = sk + i * F * F;
        const float4* ci = coef + (size_t)i * n_int;
#if WREG  // the filter's taps in registers: one shared-memory read each per filter
        float kr[F * F];
#pragma unroll
        for (int j = 0; j < F * F; ++j) kr[j] = k[j];
#define TAP(j) kr[j]
#else     // each tap read from shared memory where it is used
#define TAP(j) k[j]
#endif
        // v = phi_i(k_i * u) on the grown tile, strips of PF pixels down a column
        for (int item = tid; item < ITEMS; item += NT) {
            const int s = item / VW, c = item - s * VW;
            const int y0 = s * PF;
            float z[PF];
#pragma unroll
            for (int p = 0; p < PF; ++p) z[p] = 0.f;
#pragma unroll
            for (int b = 0; b < F; ++b) {
                float col[PF + 2 * R];
#pragma unroll
                for (int j = 0; j < PF + 2 * R; ++j) col[j] = su[(y0 + j) * UW + c + b];
#pragma unroll
                for (int a = 0; a < F; ++a) {
                    const float w = TAP(a * F + b);
#pragma unroll
                    for (int p = 0; p < PF; ++p) z[p] = fmaf(w, col[p + a], z[p]);
                }
            }
#pragma unroll
            for (int p = 0; p < PF; ++p)
                if (y0 + p < VH) sv[(y0 + p) * VW + c] = phi_cubic(z[p], ci, n_int, x0, inv_h);
        }
        __syncthreads();
        // acc += rot180(k_i) * v on the thread's PB pixels
        const int y0 = threadIdx.y * PB;
#pragma unroll
        for (int b = 0; b < F; ++b) {
            float col[PB + 2 * R];
#pragma unroll
            for (int j = 0; j < PB + 2 * R; ++j) col[j] = sv[(y0 + j) * VW + threadIdx.x + b];
#pragma unroll
            for (int a = 0; a < F; ++a) {
                const float w = TAP((F - 1 - a) * F + (F - 1 - b));
#pragma unroll
                for (int p = 0; p < PB; ++p) acc[p] = fmaf(w, col[p + a], acc[p]);
            }
        }
        __syncthreads();
#undef TAP
    }
    const int x = bx + threadIdx.x;
    if (x < W) {
#pragma unroll
        for (int p = 0; p < PB; ++p) {
            const int ty = threadIdx.y * PB + p, y = by + ty;
            if (y < H) {
                const float u = su[(ty + 2 * R) * UW + threadIdx.x + 2 * R];
                out[(size_t)y * W + x] = u - (acc[p] + lam * (u - f[(size_t)y * W + x]));
            }
        }
    }
}
"""


def strip_geometry(kernel_size, n_filters, rows=None, per_thread=None, forward=None,
                   taps_in_registers=None):
    """Block shape, compile-time constants and shared-memory bytes of the strips kernel.

    ``forward`` (pixels per forward work item) defaults to the length from 4
    to 16 that needs the fewest pipe cycles: rounds of work items over the
    block's threads, each costing the larger of its multiply-adds (4 per
    thread per clock) and its shared-memory reads (1 per thread per clock).
    """
    rows = STRIP_CONFIG["rows"] if rows is None else rows
    per_thread = STRIP_CONFIG["per_thread"] if per_thread is None else per_thread
    if taps_in_registers is None:
        taps_in_registers = STRIP_CONFIG.get("taps_in_registers", False) and kernel_size <= 9
    F, r = kernel_size, kernel_size // 2
    bx, by = STRIP_THREADS_X, rows * per_thread
    vw, vh, uw = bx + 2 * r, by + 2 * r, bx + 4 * r
    nt = STRIP_THREADS_X * rows

    def layout(pf):
        ns = -(-vh // pf)
        rounds = -(-(vw * ns) // nt)
        reads = (pf + 2 * r) * F + (0 if taps_in_registers else F * F)
        cost = rounds * max(pf * F * F / 4, reads)
        return cost, ns

    if forward is None:
        forward = min(range(4, 17), key=lambda pf: (layout(pf)[0], -pf))
    ns = layout(forward)[1]
    uh = max(by + 4 * r, ns * forward + 2 * r)
    floats = uh * uw + vh * vw + n_filters * F * F
    defines = {"F": F, "TXB": STRIP_THREADS_X, "TYB": rows, "PB": per_thread, "PF": forward,
               "WREG": int(bool(taps_in_registers))}
    return {"block": (STRIP_THREADS_X, rows), "tile": (by, bx), "defines": defines,
            "shared_bytes": 4 * floats}


def tiles_shared_bytes(dtype_name, radius):
    """Dynamic shared memory of the tiles kernel: the input tile grown by 2r and the
    responses grown by r."""
    t = TILES[dtype_name]
    return ((t + 4 * radius) ** 2 + (t + 2 * radius) ** 2) * np.dtype(dtype_name).itemsize


def tiles_source(dtype_name):
    """The tiles kernel's CUDA source for 'float32' or 'float64'."""
    ctype = {"float32": "float", "float64": "double"}[dtype_name]
    return f"#define T {ctype}\n#define TILE {TILES[dtype_name]}\n" + _SOURCE


def strips_source(defines):
    """The strips kernel's CUDA source with its compile-time constants."""
    head = "".join(f"#define {k} {v}\n" for k, v in defines.items())
    return head + _STRIPS_SOURCE


_kernels: dict = {}  # (key, device id) -> compiled kernel: see cached_kernel
_device_cache: dict = {}
_max_shared: dict = {}  # device id -> bytes
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


def cached_kernel(key, build):
    """The kernel ``build()`` compiles, once per ``key`` and CUDA device.

    The one kernel cache of the package (this module's stage kernels and the training
    kernels of ``train.gradients_cupy``): ``_kernels[(key, device id)]``, filled under a
    lock so that concurrent callers compile a kernel once, per device as
    ``cupy.memoize(for_each_device=True)`` keys it.
    """
    import cupy

    full_key = (key, cupy.cuda.Device().id)
    with _lock:
        k = _kernels.get(full_key)
        if k is None:
            k = _kernels[full_key] = build()
    return k


def _kernel(dtype):
    name = np.dtype(dtype).name

    def build():
        import cupy

        module = cupy.RawModule(code=tiles_source(name),
                                options=("--use_fast_math",) if name == "float32" else ())
        return module.get_function("trd_stage")

    return cached_kernel(("tiles", name), build)


def strips_kernel_key(defines):
    """The key of a compiled strips kernel (``key`` of :func:`cached_kernel`)."""
    return ("strips",) + tuple(sorted(defines.items()))


def _strips_kernel(geometry):
    def build():
        import cupy

        return cupy.RawKernel(strips_source(geometry["defines"]), "trd_stage_strips",
                              options=("--use_fast_math",))

    k = cached_kernel(strips_kernel_key(geometry["defines"]), build)
    if geometry["shared_bytes"] > 48 * 1024 and k.max_dynamic_shared_size_bytes < geometry[
            "shared_bytes"]:
        k.max_dynamic_shared_size_bytes = geometry["shared_bytes"]
    return k


def _max_shared_bytes(cupy):
    """Dynamic shared memory a block may have on the current GPU, opt-in included
    (48 KB on GPUs before Volta, 227 KB on an H100)."""
    rt = cupy.cuda.runtime
    device = cupy.cuda.Device().id
    with _lock:
        if device not in _max_shared:
            _max_shared[device] = rt.deviceGetAttribute(
                rt.cudaDevAttrMaxSharedMemoryPerBlockOptin, device)
        return _max_shared[device]


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
    prep, stages = _device_prepared(model, dtype)
    r = model.radius
    H, W = f.shape
    geometry = None
    if FLOAT32_KERNEL == "strips" and dtype == np.float32 and not exact:
        geometry = strip_geometry(model.kernel_size, stages[0][0].shape[0])
        if geometry["shared_bytes"] > _max_shared_bytes(cupy):
            geometry = None  # a large model on a GPU with little shared memory: tiles
    if geometry is not None:
        kernel, block, shared = _strips_kernel(geometry), geometry["block"], geometry[
            "shared_bytes"]
        by, bx = geometry["tile"]

        def arguments(padded, out, filt, coef, weights, st):
            return (padded, f, out, np.int32(H), np.int32(W), filt, np.int32(filt.shape[0]),
                    coef, np.int32(coef.shape[1]), np.float32(st.x0), np.float32(st.inv_h),
                    np.float32(st.lam))
    else:
        kernel = _kernel(dtype)
        by = bx = TILES[dtype.name]
        block = (bx, by)
        shared = tiles_shared_bytes(dtype.name, r)
        scalar = dtype.type

        def arguments(padded, out, filt, coef, weights, st):
            return (padded, f, out, np.int32(H), np.int32(W), filt, np.int32(filt.shape[0]),
                    np.int32(filt.shape[1]), coef, np.int32(coef.shape[1]), scalar(st.x0),
                    scalar(st.inv_h), weights, np.int32(weights.shape[1]), scalar(prep.mu0),
                    scalar(prep.delta), scalar(prep.beta), np.int32(prep.reach),
                    np.int32(bool(exact)), scalar(st.lam))
    grid = ((W + bx - 1) // bx, (H + by - 1) // by)
    u = f
    for t in range(n_stages):
        padded = cupy.pad(u, 2 * r, mode="symmetric")
        out = cupy.empty_like(f)
        kernel(grid, block, arguments(padded, out, *stages[t]), shared_mem=shared)
        if post_stage is not None:
            out = post_stage(out, t)
        u = out
        if progress is not None:
            progress(t + 1)
    return u


# phi and phi' of every response: row n of the (N, Q) responses has weights w[n * J, ...)
# (GPU training, train/gradients_cupy.py, and the volume stages, kernels/volume.py)
_CUDA_PHI = r"""
const long long n = i / Q;
T dphi;
v = rbf_phi_and_derivative(z, &w[n * J], mu0, delta, beta, J, K, dphi);
dv = dphi;
"""


def phi_kernel(dtype):
    """The ElementwiseKernel ``(Z, w, Q, J, mu0, delta, beta, K) -> (V, D)``: the exact RBF
    sum phi and its derivative of every response of an (N, Q) matrix, row n with the weights
    ``w[n * J:(n + 1) * J]`` (the RBF sum of :data:`RBF_SUM_SOURCE`)."""
    def build():
        import cupy

        return cupy.ElementwiseKernel(
            "T z, raw T w, int64 Q, int32 J, T mu0, T delta, T beta, int32 K",
            "T v, T dv", _CUDA_PHI, "trd_phi_dphi", preamble=RBF_SUM_SOURCE,
        )

    return cached_kernel(("gemm_phi", np.dtype(dtype).name), build)

"""Numba CPU kernels of the TRD stage map (fast versions of ``reference.py``).

One stage is fused: besides the padded input and the output, each row strip
(up to ``MAX_STRIP`` output rows; strips run in parallel) has a buffer of
filter responses, an accumulator and a few rows of scratch, all of which stay
in cache. For each filter the strip's responses ``phi(k * u)`` are computed
and immediately correlated with ``rot180(k)`` into the accumulator.

Compiled functions are cached on disk (``cache=True``), so a new process
does not recompile.
"""

from __future__ import annotations

import contextlib
import math

import numba
import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic

from ._unrolled import corr3, corr5, corr7, corr9

MAX_STRIP = 96  # output rows per parallel work item at most (tall strips recompute less overlap)


def strip_height(n_rows, n_threads):
    """Rows per work item: tall, but at least two items per thread when the image allows."""
    return max(8, min(MAX_STRIP, -(-n_rows // (2 * max(1, n_threads)))))


@njit(cache=True, inline="always")
def _mirror(i, n):
    # NumPy 'symmetric' padding (edge repeated), valid for any pad width.
    j = i % (2 * n)
    if j >= n:
        j = 2 * n - 1 - j
    return j


@njit(cache=True)
def pad_symmetric(u, p, out):
    H, W = u.shape
    for y in range(H + 2 * p):
        sy = _mirror(y - p, H)
        for x in range(W + 2 * p):
            out[y, x] = u[sy, _mirror(x - p, W)]


@njit(cache=True, inline="always")
def _phi_table_lookup(row, pairs, idx):
    """row[x] = phi(z) from one filter's linear table ``pairs`` (value + 1j * step to the next
    node, see ``influence.LinearTable``), given the interval index ``idx[x]`` and offset
    ``row[x]`` of z (the correlation computes those, a vectorised loop). One complex read
    fetches both numbers. The reads are scalar: LLVM does not vectorise them, and AVX-512
    gathers measured no faster on this machine's CPU. Unsigned indices skip the negative-index
    check."""
    for x in range(row.shape[0]):
        p = pairs[np.uint64(idx[x])]
        row[x] = p.real + row[x] * p.imag


@njit(cache=True, inline="always")
def _correlate_any(src, y, k, out, n, mode, cb, x0, inv_h, top, idx):
    """:func:`_correlate_row` for any filter size: a plain loop over the taps."""
    F = k.shape[0]
    v = cb[0, :n]
    v[:] = 0.0
    for a in range(F):
        row = src[y + a]
        for b in range(F):
            kab = k[a, b]
            for x in range(n):
                v[x] += kab * row[x + b]
    for x in range(n):
        if mode == 0:
            out[x] = v[x]
        elif mode == 1:
            out[x] += v[x]
        else:
            t = min(max((v[x] - x0) * inv_h, top - top), top)
            m = np.int32(t)
            idx[x] = m
            out[x] = t - m


@njit(cache=True, inline="always")
def _correlate_row(src, y, k, out, n, mode, cb, x0, inv_h, top, idx):
    """Row ``y`` of the correlation of ``src`` with ``k``, stored, added or turned into table
    coordinates by ``mode`` as in ``_unrolled.py`` (unrolled for the usual sizes, a plain loop
    for others; ``cb`` is scratch of shape (F, >= n + F - 1) for both). ``x0``, ``inv_h``,
    ``top`` and ``idx`` are used by mode 2 only. The table kernels call the size's function
    directly (choosing here, inside the loop, cost ~15 %)."""
    F = k.shape[0]
    if F == 7:
        corr7(src, y, k, out, n, mode, cb, x0, inv_h, top, idx)
    elif F == 5:
        corr5(src, y, k, out, n, mode, cb, x0, inv_h, top, idx)
    elif F == 3:
        corr3(src, y, k, out, n, mode, cb, x0, inv_h, top, idx)
    elif F == 9:
        corr9(src, y, k, out, n, mode, cb, x0, inv_h, top, idx)
    else:
        _correlate_any(src, y, k, out, n, mode, cb, x0, inv_h, top, idx)


@njit(cache=True, inline="always")
def _phi_exact(z, w, mu0, delta, beta, J, K):
    # Gaussian RBF sum over the 2K+1 centres nearest to z; consecutive terms
    # follow from the first by a recurrence, so only three exponentials are needed.
    jc = int(math.floor((z - mu0) / delta + 0.5))
    if jc < 0:
        jc = 0
    elif jc > J - 1:
        jc = J - 1
    d = z - (mu0 + jc * delta)
    if abs(d) > (K + 1) * delta:
        return 0.0 * z
    g0 = math.exp(-0.5 * beta * d * d)
    q = math.exp(-beta * delta * delta)
    s = w[jc] * g0
    # upwards: d_{j+1} = d_j - delta
    g = g0
    rho = math.exp(beta * delta * d - 0.5 * beta * delta * delta)
    for j in range(jc + 1, min(J, jc + K + 1)):
        g *= rho
        rho *= q
        s += w[j] * g
    g = g0
    rho = math.exp(-beta * delta * d - 0.5 * beta * delta * delta)
    for j in range(jc - 1, max(-1, jc - K - 1), -1):
        g *= rho
        rho *= q
        s += w[j] * g
    return s


@njit(cache=True, inline="always")
def _finish_strip(padded, f, lam, acc, y0, r, out):
    # out = u - (acc + lam (u - f)) on the strip's rows
    for yy in range(acc.shape[0]):
        urow = padded[y0 + yy + 2 * r]
        frow = f[y0 + yy]
        orow = out[y0 + yy]
        arow = acc[yy]
        for x in range(acc.shape[1]):
            uv = urow[x + 2 * r]
            orow[x] = uv - (arow[x] + lam * (uv - frow[x]))


@intrinsic
def _frame_address(typingctx):
    """The calling function's frame address (LLVM's ``llvm.frameaddress``), as an integer.

    Taking it also makes LLVM keep a frame pointer in that function; see :func:`_table_stage`.
    """

    def codegen(context, builder, signature, args):
        i8p = ir.IntType(8).as_pointer()
        fn = builder.module.declare_intrinsic("llvm.frameaddress", [i8p],
                                              ir.FunctionType(i8p, [ir.IntType(32)]))
        address = builder.call(fn, [ir.Constant(ir.IntType(32), 0)])
        return builder.ptrtoint(address, context.get_value_type(types.uintp))

    return types.uintp(), codegen


@njit(cache=True, inline="always")
def _strip_buffers(like, h, r, W, F):
    """A strip's responses z (h + 2r, W + 2r), zeroed accumulator (h, W) and column sums
    (F, W + 2r + F - 1), in the dtype of ``like``, carved from one block that starts at the
    caller's stack-frame address modulo 4096 (inlined, so the caller takes the frame address and
    keeps a frame pointer; see :func:`_table_stage`)."""
    Wz = W + 2 * r
    nz, na, nc = (h + 2 * r) * Wz, h * W, F * (Wz + F - 1)
    block = np.empty(nz + na + nc + 4096 // like.itemsize, dtype=like.dtype)
    o = ((_frame_address() - block.ctypes.data) % 4096) // like.itemsize
    z = block[o:o + nz].reshape((h + 2 * r, Wz))
    acc = block[o + nz:o + nz + na].reshape((h, W))
    acc[:] = 0.0
    return z, acc, block[o + nz + na:o + nz + na + nc].reshape((F, Wz + F - 1))


@njit(cache=True, inline="always")
def _table_stage(corr, padded, f, lam, filters, flipped, pairs, grid, strip, out):
    # The loop of trd_stage, inlined into one kernel per filter size with that size's
    # correlation ``corr``. A strip's buffers (responses z, accumulator, column sums) are one
    # block that starts at the address of the strip's stack frame modulo 4096. With buffers
    # allocated apart, the kernel's speed depended on where the thread's stack lay (loads stall
    # behind stores whose addresses share the low 12 bits, "4K aliasing"); placed against the
    # frame address it does not (measured in docs/performance.md, "CPU (Numba), denoising").
    N, F, _ = filters.shape
    r = F // 2
    H = padded.shape[0] - 4 * r
    W = padded.shape[1] - 4 * r
    Wz = W + 2 * r
    x0, inv_h, top = grid[0], grid[1], grid[2]
    for s in prange((H + strip - 1) // strip):
        y0 = s * strip
        h = min(strip, H - y0)
        z, acc, cb = _strip_buffers(padded, h, r, W, F)
        idx = np.empty(Wz, dtype=np.int32)
        for i in range(N):
            # responses v = phi_i(k_i * u) on rows y0 .. y0 + h + 2r of the 'valid' grid
            for yy in range(h + 2 * r):
                corr(padded, y0 + yy, filters[i], z[yy], Wz, 2, cb, x0, inv_h, top, idx)
                _phi_table_lookup(z[yy], pairs[i], idx)
            # acc += rot180(k_i) * v  ('valid')
            for yy in range(h):
                corr(z, yy, flipped[i], acc[yy], W, 1, cb, x0, inv_h, top, idx)
        _finish_strip(padded, f, lam, acc, y0, r, out)


# One short kernel per filter size, written out: kernels made by a factory (closures) are never
# found in Numba's on-disk cache, so every new process would recompile them.
@njit(cache=True, parallel=True, fastmath=True)
def _trd_stage3(padded, f, lam, filters, flipped, pairs, grid, strip, out):
    _table_stage(corr3, padded, f, lam, filters, flipped, pairs, grid, strip, out)


@njit(cache=True, parallel=True, fastmath=True)
def _trd_stage5(padded, f, lam, filters, flipped, pairs, grid, strip, out):
    _table_stage(corr5, padded, f, lam, filters, flipped, pairs, grid, strip, out)


@njit(cache=True, parallel=True, fastmath=True)
def _trd_stage7(padded, f, lam, filters, flipped, pairs, grid, strip, out):
    _table_stage(corr7, padded, f, lam, filters, flipped, pairs, grid, strip, out)


@njit(cache=True, parallel=True, fastmath=True)
def _trd_stage9(padded, f, lam, filters, flipped, pairs, grid, strip, out):
    _table_stage(corr9, padded, f, lam, filters, flipped, pairs, grid, strip, out)


@njit(cache=True, parallel=True, fastmath=True)
def _trd_stage_any(padded, f, lam, filters, flipped, pairs, grid, strip, out):
    _table_stage(_correlate_any, padded, f, lam, filters, flipped, pairs, grid, strip, out)


_TABLE_KERNELS = {3: _trd_stage3, 5: _trd_stage5, 7: _trd_stage7, 9: _trd_stage9}


def table_kernel(kernel_size):
    """The compiled :func:`trd_stage` for one filter size."""
    return _TABLE_KERNELS.get(kernel_size, _trd_stage_any)


def trd_stage(padded, f, lam, filters, flipped, pairs, grid, strip, out):
    """One stage: ``out = u - (sum_i rot180(k_i) * phi_i(k_i * u) + lam (u - f))``.

    ``padded`` is ``u`` padded symmetrically by ``2 r``; ``flipped`` holds the filters rotated by
    180 degrees. ``phi_i(z)`` comes from the linear table ``pairs[i]`` at
    ``t = clip((z - grid[0]) * grid[1], 0, grid[2])`` (interval ``int(t)``, offset
    ``t - int(t)``); ``grid`` is in the compute dtype and ``grid[2] < n_intervals`` in it.
    Deblocking passes ``lam = 0`` (its projection runs afterwards). Runs the kernel compiled for
    the filter size (:func:`table_kernel`). :func:`trd_stage_exact` is the same loop with the
    exact RBF sum (a separate kernel: with both in one, this one ran slower; docs/performance.md).
    """
    table_kernel(filters.shape[1])(padded, f, lam, filters, flipped, pairs, grid, strip, out)


@njit(cache=True, parallel=True, fastmath=True)
def trd_stage_exact(padded, f, lam, filters, flipped, weights, mu0, delta, beta, K, strip, out):
    """:func:`trd_stage` with ``phi_i`` the exact RBF sum (weights ``weights[i]``, centres
    ``mu0 + j delta``, precision ``beta``, the ``K`` centres on either side of the nearest)."""
    N, F, _ = filters.shape
    r = F // 2
    H = padded.shape[0] - 4 * r
    W = padded.shape[1] - 4 * r
    Wz = W + 2 * r
    J = weights.shape[1]
    for s in prange((H + strip - 1) // strip):
        y0 = s * strip
        h = min(strip, H - y0)
        z = np.empty((h + 2 * r, Wz), dtype=padded.dtype)
        acc = np.zeros((h, W), dtype=padded.dtype)
        idx = np.empty(Wz, dtype=np.int32)
        cb = np.empty((F, Wz + F - 1), dtype=padded.dtype)
        for i in range(N):
            w = weights[i]
            for yy in range(h + 2 * r):
                row = z[yy]
                # mode 0 stores the responses; the table arguments (mu0 here) are unused
                _correlate_row(padded, y0 + yy, filters[i], row, Wz, 0, cb, mu0, mu0, mu0, idx)
                for x in range(Wz):
                    row[x] = _phi_exact(row[x], w, mu0, delta, beta, J, K)
            for yy in range(h):
                _correlate_row(z, yy, flipped[i], acc[yy], W, 1, cb, mu0, mu0, mu0, idx)
        _finish_strip(padded, f, lam, acc, y0, r, out)


@contextlib.contextmanager
def numba_threads(n_threads):
    """Run a block with ``n_threads`` Numba threads (``None``: unchanged); restores the setting."""
    previous = set_threads(n_threads)
    try:
        yield
    finally:
        numba.set_num_threads(previous)


def set_threads(n_threads):
    """Set Numba's thread count; ``None`` leaves it unchanged. Returns the previous count."""
    previous = numba.get_num_threads()
    if n_threads is not None:
        numba.set_num_threads(int(n_threads))
    return previous

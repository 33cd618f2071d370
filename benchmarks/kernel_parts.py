"""Where the time of the CPU stage kernel goes: the stage with parts removed, one thread.

    python benchmarks/kernel_parts.py [--size 512] [--repeat 7]

Runs the 7x7 stage kernel ``skimage_trd.kernels.numba_cpu.table_kernel(7)`` and copies of it on
camera + noise (sigma 25) with the shipped sigma-25 7x7 model's first stage, five times (a five-
stage model's worth), and prints the median time of: the shipped kernel; a copy compiled here; the
copy with the filter size chosen inside the loop (as ``_correlate_row`` does); the copy with its
buffers allocated apart (no frame pointer, see ``skimage_trd.kernels.numba_cpu._table_stage``); the
copy reading the cubic table (four reads per evaluation instead of one); the copy without the table
reads; the first correlation only; and 10 passes of 48 7x7 correlations over the image, tap by tap
(one shifted load per multiply-add) and in the two loops of ``_unrolled.py``. A tool for kernel
work: the variants compute wrong images on purpose.
"""

from __future__ import annotations

import argparse
import datetime
import platform

import numba
import numpy as np
from _data import median_times  # (benchmarks/ is the script's folder)
from numba import njit, prange

from skimage_trd._registry import load_model
from skimage_trd.kernels import numba_cpu as nk
from skimage_trd.kernels._unrolled import corr7
from skimage_trd.kernels.engine import prepare


@njit(inline="always")
def cubic_lookup(row, c, idx):
    # the cubic table's evaluation: four scalar reads
    cf = c.reshape(-1)
    for x in range(row.shape[0]):
        n = np.uint64(idx[x]) * np.uint64(4)
        t = row[x]
        row[x] = ((cf[n + np.uint64(3)] * t + cf[n + np.uint64(2)]) * t
                  + cf[n + np.uint64(1)]) * t + cf[n]


def make_stage(lookup=True, second=True, dispatch=False, cubic=False, block=True):
    corr = nk._correlate_row if dispatch else corr7
    phi = cubic_lookup if cubic else nk._phi_table_lookup

    @njit(parallel=True, fastmath=True)
    def stage(padded, f, lam, filters, flipped, coef, grid, strip, out):
        N, F, _ = filters.shape
        r = F // 2
        H = padded.shape[0] - 4 * r
        W = padded.shape[1] - 4 * r
        Wz = W + 2 * r
        for s in prange((H + strip - 1) // strip):
            y0 = s * strip
            h = min(strip, H - y0)
            if block:  # the shipped kernel's buffer block, placed against the frame address
                z, acc, cb = nk._strip_buffers(padded, h, r, W, F)
            else:  # buffers allocated apart, no frame pointer
                z = np.empty((h + 2 * r, Wz), dtype=padded.dtype)
                acc = np.zeros((h, W), dtype=padded.dtype)
                cb = np.empty((F, Wz + F - 1), dtype=padded.dtype)
            idx = np.empty(Wz, dtype=np.int32)
            x0, inv_h, top = grid[0], grid[1], grid[2]
            for i in range(N):
                for yy in range(h + 2 * r):
                    corr(padded, y0 + yy, filters[i], z[yy], Wz, 2, cb, x0, inv_h, top, idx)
                    if lookup:
                        phi(z[yy], coef[i], idx)
                if second:
                    for yy in range(h):
                        corr(z, yy, flipped[i], acc[yy], W, 1, cb, x0, inv_h, top, idx)
            for yy in range(h):
                for x in range(W):
                    uv = padded[y0 + yy + 2 * r, x + 2 * r]
                    out[y0 + yy, x] = uv - (acc[yy, x] + lam * (uv - f[y0 + yy, x]))
    return stage


@njit(fastmath=True)
def tap_by_tap(src, k, out):
    # out[y, x] += sum_ab k[a, b] src[y + a, x + b], one shifted load per multiply-add
    for y in range(out.shape[0]):
        o = out[y]
        for x in range(o.shape[0]):
            s = o[x]
            for a in range(7):
                row = src[y + a]
                for b in range(7):
                    s += k[a, b] * row[x + b]
            o[x] = s


@njit(fastmath=True)
def two_loops(src, k, out, cb, idx):
    for y in range(out.shape[0]):
        corr7(src, y, k, out[y], out.shape[1], 1, cb, src[0, 0], src[0, 0], src[0, 0], idx)


def median_time(fn, repeat):
    return median_times([fn], repeat)[0]


def main(argv=None):
    from skimage import data

    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--repeat", type=int, default=7)
    args = ap.parse_args(argv)
    numba.set_num_threads(1)
    n = args.size
    st = prepare(load_model("trd-gauss-s25-7x7-5st"), np.float32).stages[0]
    cam = np.tile(data.camera().astype(np.float32), (n // 512 + 1, n // 512 + 1))[:n, :n]
    f = (cam + 25 * np.random.default_rng(0).standard_normal((n, n))).astype(np.float32)
    padded = np.empty((n + 12, n + 12), np.float32)
    nk.pad_symmetric(f, 6, padded)
    out = np.empty_like(f)
    strip = nk.strip_height(n, 1)
    a = (padded, f, st.lam, st.filters, st.flipped, st.linear.pairs, st.grid, strip, out)
    # the cubic table's grid, for the variant that reads it
    n_c = st.coef.shape[1]
    cubic_grid = np.array([st.x0, st.inv_h, np.nextafter(np.float32(n_c), np.float32(0))], np.float32)
    a_cubic = a[:5] + (st.coef, cubic_grid) + a[7:]
    print(f"# {platform.platform()}, one thread; {datetime.date.today()}; "
          f"python benchmarks/kernel_parts.py --size {n} --repeat {args.repeat}")
    print(f"# seconds per {n}^2 image, 5 stages of 48 7x7 filters (median of {args.repeat})")
    print("| variant | seconds |\n|---|---|")
    shipped = nk.table_kernel(7)
    t = median_time(lambda: shipped(*a), args.repeat)
    print(f"| `trd_stage` as shipped | {5 * t:.3f} |")
    for name, kw in (("a copy compiled here", {}),
                     ("the copy, filter size chosen in the loop", {"dispatch": True}),
                     ("the copy, buffers allocated apart", {"block": False}),
                     ("the copy with the cubic table", {"cubic": True}),
                     ("the copy without the table reads", {"lookup": False}),
                     ("the first correlation only", {"lookup": False, "second": False})):
        fn = make_stage(**kw)
        args_ = a_cubic if kw.get("cubic") else a
        print(f"| {name} | {5 * median_time(lambda: fn(*args_), args.repeat):.3f} |", flush=True)
    src = np.ascontiguousarray(padded[: n + 6, : n + 6])
    acc = np.zeros((n, n), np.float32)
    cb = np.empty((7, n + 6), np.float32)
    idx = np.empty(n + 6, np.int32)
    ks = st.filters
    for name, fn in (("correlations tap by tap", lambda: [tap_by_tap(src, k, acc) for k in ks]),
                     ("correlations in two loops", lambda: [two_loops(src, k, acc, cb, idx)
                                                            for k in ks])):
        print(f"| {name} (48 filters x 10 passes) | {10 * median_time(fn, args.repeat):.3f} |",
              flush=True)


if __name__ == "__main__":
    main()

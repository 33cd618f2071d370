"""Register-blocked float32 CPU stages of volume models (3-D filters ``D x F x F``).

The 2-D block kernels of ``numba_cpu.py`` carried into a third dimension. The volume is cut
into tiles of ``tile_d`` planes x ``tile_h`` rows x ``tile_w`` columns; for each filter, each
response plane of the tile, ``phi(k * u)`` (``D`` input planes: the blocks of ``_vblocks.py``,
whose accumulators stay in registers through the filter's planes), goes into a ring of ``D``
planes; as soon as the ring holds the ``D`` response planes an output plane needs, the
adjoint correlation adds them into the tile's accumulator. The ring and the last few input
planes stay in the core's L2 cache whatever the tile's depth; the accumulator (one plane of
it at a time is in use) may live further out, since a 3-D filter does ``D`` times the work
of a 2-D one per byte moved. The responses of a tile are computed for ``tile_d + D - 1``
planes, ``tile_h + 2r`` rows and ``tile_w + 2r`` columns (the price of tiling, as in 2-D).

Tiles are shared out over threads by :func:`.numba_cpu.run_tiles`. AVX-512 only (the
engine falls back to the matrix form of ``volume.py`` elsewhere).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from . import _vblocks as vb
from ._simd import vsplat
from .numba_cpu import (
    PAD_SLACK,
    _mirror,
    _response_stride_max,
    _tile_columns,
    aligned_zeros,
    pad_symmetric,
    padded_buffer,
    run_tiles,
    tile_width,
)

__all__ = ["TILE_PLANES", "TILE_ROWS", "block_volume_kernel", "pad_volume",
           "run_volume_blocks", "volume_tiles"]

TILE_PLANES = 16  # output planes of a tile (default of tile_d)
TILE_ROWS = 64  # output rows of a tile (default of tile_h)


@njit(cache=True)
def pad_volume(u, pz, p, out):
    """``out[:Z + 2pz, :H + 2p, :W + 2p] = u`` padded symmetrically (``out`` may be wider)."""
    Z = u.shape[0]
    for z in range(Z + 2 * pz):
        pad_symmetric(u[_mirror(z - pz, Z)], p, out[z])


@njit(cache=True, inline="always")
def _vblock_stage(fwd, fwd1, bwd, bwd1, padded, f, lam, filters, flipped, tables, grid, tile_d,
                  tile_h, tile_w, out, first_tile, last_tile):
    # out = u - (sum_i flip(k_i) * phi_i(k_i * u) + lam (u - f)), tile by tile; ``padded`` is u
    # padded by 2 rz planes and 2 r rows and columns, plus PAD_SLACK zero columns.
    N, D, F, _ = filters.shape
    r = F // 2
    rz = D // 2
    Z, H, W = out.shape
    P = padded.shape[2]
    PS = padded.shape[1] * P
    src = padded.reshape(padded.size)
    kf = filters.reshape((N, D * F * F))
    kb = flipped.reshape((N, D * F * F))
    lo, ih, top = vsplat(grid[0]), vsplat(grid[1]), vsplat(grid[2])
    R = vb.ROWS
    n_tz = (Z + tile_d - 1) // tile_d
    n_ty = (H + tile_h - 1) // tile_h
    n_tx = (W + tile_w - 1) // tile_w
    zs_max = _response_stride_max(tile_w, r)
    slot = (tile_h + 2 * r) * zs_max  # one response plane of the ring
    ring = aligned_zeros(D * slot)  # zeroed once: see numba_cpu._block_stage
    acc = aligned_zeros(tile_d * tile_h * zs_max)
    po_in = np.arange(D) * PS  # a response plane's input planes in ``padded``
    po_ring = np.empty(D, dtype=np.int64)  # an output plane's response planes in the ring
    for tile in range(first_tile, min(last_tile, n_tz * n_ty * n_tx)):
        z0 = (tile // (n_ty * n_tx)) * tile_d
        y0 = (tile // n_tx % n_ty) * tile_h
        x0 = (tile % n_tx) * tile_w
        d = min(tile_d, Z - z0)
        h = min(tile_h, H - y0)
        w = min(tile_w, W - x0)
        nz, nw, zs = _tile_columns(w, r)  # responses' and output's columns, stride
        rows = h + 2 * r
        plane = h * nw  # one output plane of acc
        for i in range(N):
            for q in range(d + 2 * rz):
                # response plane z0 + q (of the grid grown by rz): input planes z0 + q + dz
                base = (z0 + q) * PS + y0 * P + x0
                s0 = (q % D) * slot
                yy = 0
                while yy + R <= rows:
                    fwd(src, base + yy * P, P, po_in, kf[i], ring, s0 + yy * zs, zs, nz,
                        tables[i], lo, ih, top)
                    yy += R
                while yy < rows:
                    fwd1(src, base + yy * P, P, po_in, kf[i], ring, s0 + yy * zs, zs, nz,
                         tables[i], lo, ih, top)
                    yy += 1
                if q < 2 * rz:
                    continue
                # output plane z0 + o reads response planes z0 + o .. z0 + o + D - 1
                o = q - 2 * rz
                for dz in range(D):
                    po_ring[dz] = ((o + dz) % D) * slot
                a0 = o * plane
                yy = 0
                while yy + R <= h:
                    bwd(ring, yy * zs, zs, po_ring, kb[i], acc, a0 + yy * nw, nw, nw, i == 0)
                    yy += R
                while yy < h:
                    bwd1(ring, yy * zs, zs, po_ring, kb[i], acc, a0 + yy * nw, nw, nw, i == 0)
                    yy += 1
        for zz in range(d):
            for yy in range(h):
                urow = padded[z0 + zz + 2 * rz, y0 + yy + 2 * r]
                frow = f[z0 + zz, y0 + yy]
                orow = out[z0 + zz, y0 + yy]
                a = zz * plane + yy * nw
                for xx in range(w):
                    uv = urow[x0 + xx + 2 * r]
                    orow[x0 + xx] = uv - (acc[a + xx] + lam * (uv - frow[x0 + xx]))


# One kernel per filter size and influence-function kind, written out (cached on disk; as in
# numba_cpu.py).
@njit(cache=True, nogil=True, fastmath=True)
def _vblock_stage3p(padded, f, lam, filters, flipped, tables, grid, tile_d, tile_h, tile_w, out,
                    first_tile, last_tile):
    _vblock_stage(vb.vfwd3p, vb.vfwd3p_row, vb.vbwd3, vb.vbwd3_row, padded, f, lam, filters,
                  flipped, tables, grid, tile_d, tile_h, tile_w, out, first_tile, last_tile)


@njit(cache=True, nogil=True, fastmath=True)
def _vblock_stage5p(padded, f, lam, filters, flipped, tables, grid, tile_d, tile_h, tile_w, out,
                    first_tile, last_tile):
    _vblock_stage(vb.vfwd5p, vb.vfwd5p_row, vb.vbwd5, vb.vbwd5_row, padded, f, lam, filters,
                  flipped, tables, grid, tile_d, tile_h, tile_w, out, first_tile, last_tile)


@njit(cache=True, nogil=True, fastmath=True)
def _vblock_stage7p(padded, f, lam, filters, flipped, tables, grid, tile_d, tile_h, tile_w, out,
                    first_tile, last_tile):
    _vblock_stage(vb.vfwd7p, vb.vfwd7p_row, vb.vbwd7, vb.vbwd7_row, padded, f, lam, filters,
                  flipped, tables, grid, tile_d, tile_h, tile_w, out, first_tile, last_tile)


@njit(cache=True, nogil=True, fastmath=True)
def _vblock_stage9p(padded, f, lam, filters, flipped, tables, grid, tile_d, tile_h, tile_w, out,
                    first_tile, last_tile):
    _vblock_stage(vb.vfwd9p, vb.vfwd9p_row, vb.vbwd9, vb.vbwd9_row, padded, f, lam, filters,
                  flipped, tables, grid, tile_d, tile_h, tile_w, out, first_tile, last_tile)


@njit(cache=True, nogil=True, fastmath=True)
def _vblock_stage3l(padded, f, lam, filters, flipped, tables, grid, tile_d, tile_h, tile_w, out,
                    first_tile, last_tile):
    _vblock_stage(vb.vfwd3l, vb.vfwd3l_row, vb.vbwd3, vb.vbwd3_row, padded, f, lam, filters,
                  flipped, tables, grid, tile_d, tile_h, tile_w, out, first_tile, last_tile)


@njit(cache=True, nogil=True, fastmath=True)
def _vblock_stage5l(padded, f, lam, filters, flipped, tables, grid, tile_d, tile_h, tile_w, out,
                    first_tile, last_tile):
    _vblock_stage(vb.vfwd5l, vb.vfwd5l_row, vb.vbwd5, vb.vbwd5_row, padded, f, lam, filters,
                  flipped, tables, grid, tile_d, tile_h, tile_w, out, first_tile, last_tile)


@njit(cache=True, nogil=True, fastmath=True)
def _vblock_stage7l(padded, f, lam, filters, flipped, tables, grid, tile_d, tile_h, tile_w, out,
                    first_tile, last_tile):
    _vblock_stage(vb.vfwd7l, vb.vfwd7l_row, vb.vbwd7, vb.vbwd7_row, padded, f, lam, filters,
                  flipped, tables, grid, tile_d, tile_h, tile_w, out, first_tile, last_tile)


@njit(cache=True, nogil=True, fastmath=True)
def _vblock_stage9l(padded, f, lam, filters, flipped, tables, grid, tile_d, tile_h, tile_w, out,
                    first_tile, last_tile):
    _vblock_stage(vb.vfwd9l, vb.vfwd9l_row, vb.vbwd9, vb.vbwd9_row, padded, f, lam, filters,
                  flipped, tables, grid, tile_d, tile_h, tile_w, out, first_tile, last_tile)


_KERNELS = {
    (3, "p"): _vblock_stage3p, (5, "p"): _vblock_stage5p, (7, "p"): _vblock_stage7p,
    (9, "p"): _vblock_stage9p, (3, "l"): _vblock_stage3l, (5, "l"): _vblock_stage5l,
    (7, "l"): _vblock_stage7l, (9, "l"): _vblock_stage9l,
}


def block_volume_kernel(kernel_size, kind):
    """The register-blocked float32 volume stage for ``D x kernel_size x kernel_size`` filters
    (any odd ``D``; ``kernel_size`` one of :data:`.numba_cpu.BLOCK_SIZES`) with influence functions of
    ``kind`` (``'p'`` polynomials, ``'l'`` linear tables, as :func:`.numba_cpu.block_kernel`).

    Called (through :func:`.numba_cpu.run_tiles`) as ``kernel(padded, f, lam, filters, flipped,
    tables, grid, tile_d, tile_h, tile_w, out, first_tile, last_tile)``: ``padded`` is u padded
    by :func:`pad_volume` (``2 rz`` planes, ``2 r`` rows and columns, and
    :data:`.numba_cpu.PAD_SLACK` more zero columns), ``out`` (Z, H, W) receives
    ``u - (sum_i flip(k_i) * phi_i(k_i * u) + lam (u - f))``."""
    return _KERNELS[(kernel_size, kind)]


def volume_tiles(shape, tile_d, tile_h, tile_w):
    """The number of tiles of an (Z, H, W) volume."""
    Z, H, W = shape
    return -(-Z // tile_d) * -(-H // tile_h) * -(-W // tile_w)


def run_volume_blocks(f, prep, filter_shape, kind, n_stages, *, progress=None, n_threads=None,
                      tiles=None):
    """The stages of a prepared float32 volume model on the volume ``f`` (model scale, float32)
    by the block kernels; ``tiles`` ``(tile_d, tile_h, tile_w)`` overrides the defaults."""
    D, F, _ = filter_shape
    rz, r = D // 2, F // 2
    Z, H, W = f.shape
    if tiles is None:
        tiles = (TILE_PLANES, TILE_ROWS, tile_width(W, r))
    tile_d, tile_h, tile_w = tiles
    kernel = block_volume_kernel(F, kind)
    padded = padded_buffer((Z + 4 * rz, H + 4 * r, W + 4 * r + PAD_SLACK))
    n = volume_tiles(f.shape, tile_d, tile_h, tile_w)
    buffers = [np.empty_like(f), np.empty_like(f)]
    u = f
    for t in range(n_stages):
        st = prep.stages[t]
        pad_volume(u, 2 * rz, 2 * r, padded)
        tables, grid = (st.poly.coef, st.poly_grid) if kind == "p" else (st.linear.pairs, st.grid)
        out = buffers[t % 2]
        run_tiles(kernel, (padded, f, np.float32(st.lam), st.filters, st.flipped, tables, grid,
                           tile_d, tile_h, tile_w, out), n, n_threads)
        u = out
        if progress is not None:
            progress(t + 1, n_stages)
    return u

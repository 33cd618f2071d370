"""JPEG pieces for deblocking: 8x8 block DCT, quantisation tables, the constraint projection.

Conventions (as baseline JPEG): the image is level-shifted by -128, cut into
8x8 blocks (an image whose size is not a multiple of 8 is padded by repeating
its last row and column, as libjpeg does), and each block is transformed by
the orthonormal 2-D DCT-II. A coefficient ``y`` is quantised to
``d = round(y / q)`` with ``q`` the table entry of its frequency.

The projection of paper Eq. 9 puts every coefficient of ``u`` back into the
box ``[(d - c/2) q, (d + c/2) q]`` (``c = 1`` in the paper; 0.8 in the
authors' code, see docs/protocols.md). Every function takes NumPy or CuPy arrays.
"""

from __future__ import annotations

import io

import numpy as np

from ._arrays import _xp

__all__ = [
    "IJG_LUMA",
    "IJG_CHROMA",
    "quality_tables",
    "estimate_quality",
    "block_dct",
    "block_idct",
    "pad_to_blocks",
    "project_to_box",
    "project_to_box_adjoint",
    "quantized_coefficients",
    "QuantizationConstraint",
    "read_jpeg",
    "jpeg_roundtrip",
]

# ITU-T T.81 Annex K tables (natural, row-major order), as used by the IJG library.
IJG_LUMA = np.array([
    16, 11, 10, 16, 24, 40, 51, 61,
    12, 12, 14, 19, 26, 58, 60, 55,
    14, 13, 16, 24, 40, 57, 69, 56,
    14, 17, 22, 29, 51, 87, 80, 62,
    18, 22, 37, 56, 68, 109, 103, 77,
    24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101,
    72, 92, 95, 98, 112, 100, 103, 99,
], dtype=np.float64).reshape(8, 8)

IJG_CHROMA = np.array([
    17, 18, 24, 47, 99, 99, 99, 99,
    18, 21, 26, 66, 99, 99, 99, 99,
    24, 26, 56, 99, 99, 99, 99, 99,
    47, 66, 99, 99, 99, 99, 99, 99,
    99, 99, 99, 99, 99, 99, 99, 99,
    99, 99, 99, 99, 99, 99, 99, 99,
    99, 99, 99, 99, 99, 99, 99, 99,
    99, 99, 99, 99, 99, 99, 99, 99,
], dtype=np.float64).reshape(8, 8)


def quality_tables(quality):
    """The IJG (libjpeg, Pillow) luma and chroma tables for a quality 1..100 (baseline)."""
    q = int(quality)
    if not 1 <= q <= 100:
        raise ValueError(f"JPEG quality must be an integer in 1..100, got {quality!r}")
    scale = 5000 // q if q < 50 else 200 - 2 * q
    tables = []
    for base in (IJG_LUMA, IJG_CHROMA):
        t = np.floor((base * scale + 50) / 100)
        tables.append(np.clip(t, 1, 255))
    return tables[0], tables[1]


def estimate_quality(table):
    """The IJG quality whose luma table is nearest to ``table`` (8x8), by mean log ratio."""
    table = np.asarray(table, dtype=np.float64).reshape(8, 8)
    best = min(range(1, 101), key=lambda q: float(np.mean(np.abs(
        np.log(quality_tables(q)[0]) - np.log(table)))))
    return best


def _dct_matrix():
    """Orthonormal 8-point DCT-II matrix C: the 2-D DCT of a block X is C X C^T."""
    n = np.arange(8)
    c = np.sqrt(2 / 8) * np.cos(np.pi * (2 * n[None, :] + 1) * n[:, None] / 16)
    c[0] /= np.sqrt(2)
    return c


DCT8 = _dct_matrix()


def dct_blocks(blocks, inverse=False):
    """2-D orthonormal DCT-II (or its inverse) over the last two axes (8, 8) of any array."""
    xp = _xp(blocks)
    c = xp.asarray(DCT8, dtype=blocks.dtype if blocks.dtype.kind == "f" else np.float64)
    if inverse:
        return xp.matmul(xp.matmul(c.T, blocks), c)
    return xp.matmul(xp.matmul(c, blocks), c.T)


def _blocks(x):
    *lead, H, W = x.shape
    b = x.reshape(*lead, H // 8, 8, W // 8, 8)
    return b.swapaxes(-3, -2)


def _unblocks(b):
    *lead, nh, nw = b.shape[:-2]
    return b.swapaxes(-3, -2).reshape(*lead, nh * 8, nw * 8)


def block_dct(x):
    """Orthonormal 8x8 block DCT of ``x`` (..., H, W) (sides multiples of 8): shape
    (..., H/8, W/8, 8, 8)."""
    return dct_blocks(_blocks(x))


def block_idct(coef):
    """Inverse of :func:`block_dct`: (..., H, W) images."""
    return _unblocks(dct_blocks(coef, inverse=True))


def project_to_box(v, lower, upper, masks=False):
    """The projection of Eq. 9: the nearest image (in L2) to ``v`` whose 8x8 block DCT
    coefficients (of ``v - 128``) lie in ``[lower, upper]``, clipped to [0, 255].

    ``v`` is an image (H, W) or a batch (B, H, W), ``lower`` and ``upper`` of shape
    (..., H/8, W/8, 8, 8); computed in ``v``'s float dtype. The projection is piecewise linear;
    with ``masks``, also returns what its derivative passes (:func:`project_to_box_adjoint`):
    the coefficients strictly inside their box and the pixels strictly inside [0, 255].
    """
    xp = _xp(v)
    y = block_dct(v - v.dtype.type(128))
    w = block_idct(xp.clip(y, lower, upper)) + v.dtype.type(128)
    u = xp.clip(w, 0, 255).astype(v.dtype, copy=False)
    if not masks:
        return u
    return u, (y > lower) & (y < upper), (w > 0) & (w < 255)


def project_to_box_adjoint(g, inside, unclipped):
    """``dL/dv`` from ``g = dL/du`` at the point the masks of :func:`project_to_box` came
    from: the transpose of the projection's Jacobian, the masks applied in reverse order."""
    return block_idct(block_dct(g * unclipped) * inside).astype(g.dtype, copy=False)


def pad_to_blocks(x):
    """Pad to multiples of 8 by repeating the last row and column (as JPEG encoders do)."""
    xp = _xp(x)
    H, W = x.shape
    return xp.pad(x, ((0, -H % 8), (0, -W % 8)), mode="edge")


def quantized_coefficients(decoded, table, iterations=3):
    """Recover the integer coefficients ``d`` of a decoded JPEG plane by requantising.

    ``decoded`` is on the [0, 255] scale (any size). Requantising the block
    DCT of the decoded plane gives the coefficients exactly except where the
    decoder clipped pixels to 0 or 255, and in the blocks cut by the image
    border (the encoder saw padding that the decoded image does not show).
    A few alternating steps fix most of those: the reconstruction from the
    current ``d`` fills the padding, and clipped pixels may lie beyond 0 or
    255, while every other pixel keeps its decoded value.
    """
    xp = _xp(decoded)
    decoded = decoded.astype(xp.float64)
    table = xp.asarray(table, dtype=xp.float64)
    H, W = decoded.shape
    x = pad_to_blocks(decoded)
    for it in range(iterations + 1):
        d = xp.rint(block_dct(x - 128.0) / table)
        if it == iterations:
            return d
        r = block_idct(d * table) + 128.0
        v = r[:H, :W]
        v = xp.where(decoded <= 0, xp.minimum(v, 0.0),
                     xp.where(decoded >= 255, xp.maximum(v, 255.0), decoded))
        x = r
        x[:H, :W] = v


class QuantizationConstraint:
    """Projection onto the images consistent with a JPEG plane's coefficients.

    Parameters
    ----------
    d : ndarray, shape (H/8, W/8, 8, 8)
        Integer coefficients (:func:`quantized_coefficients`).
    table : ndarray, shape (8, 8)
        Quantisation steps.
    scale : float
        ``c`` of the box ``[(d - c/2) q, (d + c/2) q]``.
    """

    def __init__(self, d, table, scale=0.8):
        xp = _xp(d)
        q = xp.asarray(table, dtype=xp.float64)
        self.lower = (d - scale / 2) * q
        self.upper = (d + scale / 2) * q
        self.start = block_idct(d * q) + 128.0  # the decoder's output before clipping

    @property
    def shape(self):
        nh, nw = self.lower.shape[:2]
        return nh * 8, nw * 8

    def project(self, u):
        """Nearest image (in L2) whose coefficients are inside the box, clipped to [0, 255]
        (:func:`project_to_box`, computed in float64)."""
        return project_to_box(u.astype(_xp(u).float64), self.lower, self.upper).astype(
            u.dtype, copy=False)


def read_jpeg(path):
    """Decode a JPEG file without colour conversion.

    Returns
    -------
    planes : list of ndarray
        Y (or the gray plane), then Cb and Cr for colour files, float64 on
        [0, 255], each of the image's size (chroma upsampled by the decoder).
    tables : list of ndarray (8, 8)
        Quantisation table of each plane, from ``Image.quantization``.
    mode : str
        'L' or 'YCbCr'.
    """
    from PIL import Image

    with Image.open(path) as im:
        if im.format != "JPEG":
            raise ValueError(f"{path} is not a JPEG file (Pillow reads it as {im.format})")
        qt = {k: np.asarray(v, dtype=np.float64).reshape(8, 8) for k, v in im.quantization.items()}
        if im.mode == "L":
            return [np.asarray(im, dtype=np.float64)], [qt[0]], "L"
        if im.mode != "RGB":
            raise ValueError(f"{path}: JPEG mode {im.mode} is not supported (gray or YCbCr colour)")
        im.draft("YCbCr", im.size)
        ycc = np.asarray(im.convert("YCbCr") if im.mode != "YCbCr" else im, dtype=np.float64)
    planes = [ycc[..., i] for i in range(3)]
    chroma = qt.get(1, qt[0])
    return planes, [qt[0], chroma, chroma], "YCbCr"


def jpeg_roundtrip(image, quality):
    """Compress a gray image (0..255) with Pillow at ``quality`` and decode it again.

    Returns the decoded image (uint8) and its luma quantisation table (8x8, float64).
    """
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.clip(np.rint(image), 0, 255).astype(np.uint8)).save(
        buf, "JPEG", quality=int(quality))
    buf.seek(0)
    with Image.open(buf) as im:
        return np.asarray(im), np.asarray(im.quantization[0], dtype=np.float64).reshape(8, 8)

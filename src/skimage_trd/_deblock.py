"""``deblock_trd``: JPEG artifact removal with trained reaction diffusion (paper Eq. 9)."""

from __future__ import annotations

import functools
import warnings

import numpy as np

from ._arrays import (
    check_image,
    float_dtype,
    iter_planes,
    resolve_backend,
)
from ._axes import setup_input
from ._jpeg import (
    QuantizationConstraint,
    estimate_quality,
    quality_tables,
    quantized_coefficients,
    read_jpeg,
)
from ._registry import resolve_models
from .kernels.cuda import cupy_module
from .kernels.engine import run_model
from .kernels.numba_cpu import numba_threads

__all__ = ["deblock_trd", "deblock_jpeg"]


def _pick(bank, quality):
    return min(bank, key=lambda m: (abs(m.quality - quality), -m.n_filters))


def _luma_table(quality, qtable):
    """The luma table, from ``qtable`` (one table or a (luma, chroma) pair) or ``quality``."""
    if qtable is not None:
        arr = np.asarray(qtable, dtype=np.float64)
        if arr.shape in ((8, 8), (64,)):
            luma = arr.reshape(8, 8)
        elif arr.shape in ((2, 8, 8), (2, 64)):
            luma = arr.reshape(2, 8, 8)[0]
        else:
            raise ValueError(f"qtable must be one 8x8 table or a (luma, chroma) pair, got shape {arr.shape}")
        if np.any(arr < 1) or not np.all(np.isfinite(arr)):
            raise ValueError("quantisation steps must be finite and at least 1")
        return luma, estimate_quality(luma) if quality is None else int(quality)
    if quality is None:
        raise ValueError("give the JPEG quality (1..100) or the quantisation table (qtable=) the "
                         "image was compressed with; deblock_jpeg(path) reads both from the file")
    if isinstance(quality, bool) or not float(quality).is_integer():
        raise ValueError(f"JPEG quality must be an integer in 1..100, got {quality!r}")
    return quality_tables(int(quality))[0], int(quality)


def _deblock_plane(y, table, model, *, backend, constraint_scale, n_stages, progress=None):
    """Restore one plane on the [0, 255] scale, the JPEG's own block grid."""
    scale = model.constraint_scale if constraint_scale is None else float(constraint_scale)
    d = quantized_coefficients(y, table)
    if backend == "cupy":
        d = cupy_module().asarray(d)
    constraint = QuantizationConstraint(d, table, scale)
    start = constraint.start
    out = run_model(start, model, backend=backend, n_stages=n_stages, exact=False,
                    post_stage=lambda u, t: constraint.project(u), progress=progress)
    H, W = y.shape
    out = out[:H, :W]
    return out.get() if backend == "cupy" else out


# decoded JPEG values lie in 0..255 (decoders clip); allow half a grey level of rounding
_SLACK = 0.5
UNIT_SCALE_MAX = 1 + _SLACK / 255  # the largest value of an image on the [0, 1] scale


def _resolve_range(values, preserve_range) -> bool:
    """``preserve_range`` as a bool; ``None``: decided from the data (``values``: the image, or
    its minimum and maximum). Integers are 0..255; floats whose maximum is at most 1 (and half a
    grey level) are the 0..1 scale, other floats 0..255."""
    if preserve_range is not None:
        return bool(preserve_range)
    return values.dtype.kind != "f" or float(values.max()) > UNIT_SCALE_MAX


def _check_values(values, preserve_range):
    """Refuse values no JPEG decoder gives (``values``: the image, or its minimum and maximum)."""
    lo, hi = float(values.min()), float(values.max())
    if values.dtype.kind in "ui":
        if lo < 0 or hi > 255:
            raise ValueError(f"integer images must hold 8-bit JPEG values (0..255); this "
                             f"{values.dtype} image holds {lo:g}..{hi:g}")
    elif preserve_range:
        if lo < -_SLACK or hi > 255 + _SLACK:
            raise ValueError(f"with preserve_range=True the image must hold decoded JPEG values "
                             f"in 0..255; it holds {lo:g}..{hi:g}")
        if lo < hi <= UNIT_SCALE_MAX and not np.array_equal(values, np.round(values)):
            # a decoder's 0..255 values are integers; fractions below 1 are the 0..1 scale
            warnings.warn(f"the image holds {lo:g}..{hi:g}, which looks like the 0..1 scale; "
                          "with preserve_range=True it is read as 0..255 (nearly black). Leave "
                          "preserve_range False for images in [0, 1].", UserWarning, stacklevel=3)
    elif lo < -_SLACK / 255 or hi > UNIT_SCALE_MAX:
        if lo >= -_SLACK and 2 < hi <= 255 + _SLACK:
            hint = " For values on the 0..255 scale pass preserve_range=True."
        elif hi <= 2:
            hint = (" Values outside [0, 1] do not come from a JPEG decoder (resampled or "
                    "filtered?): clip the image to [0, 1] first.")
        else:
            hint = ""
        raise ValueError(f"float images must hold the decoded JPEG in [0, 1] (as from "
                         f"img_as_float); this one holds {lo:g}..{hi:g}.{hint}")


def _to_255(host, preserve_range):
    """The decoded image on JPEG's 0..255 scale (float64; its values checked before)."""
    x255 = host.astype(np.float64)
    if host.dtype.kind == "f" and not preserve_range:
        x255 *= 255.0
    return x255


def deblock_trd(
    image,
    quality=None,
    *,
    qtable=None,
    model=None,
    channel_axis=None,
    preserve_range=False,
    backend="auto",
    num_threads=None,
    constraint_scale=None,
    n_stages=None,
    progress=None,
):
    """Remove JPEG blocking artifacts with a trained reaction diffusion (TRD) model.

    Every stage is a diffusion step followed by the projection onto the
    images whose 8x8 block DCT coefficients quantise to those of the JPEG
    file (paper Eq. 9), so the result stays consistent with the file.

    Parameters
    ----------
    image : ndarray (M, N[, ...][, C]), cupy.ndarray or dask array
        The decoded JPEG image: uint8, or floats in [0, 1] (as from
        ``img_as_float``), or floats in [0, 255] with ``preserve_range=True``
        (``preserve_range=None`` tells the two float scales apart). Leading
        axes are a stack of planes. A dask array gives a lazy dask array,
        computed plane by plane (rechunked to one whole plane, with its
        colour channels, per chunk); its values are checked up front in one
        pass (minimum and maximum).
        Gray planes are restored with the luma table; an RGB image
        (``channel_axis`` given, 3 channels) is converted to JPEG's YCbCr,
        its luma restored and its chroma passed through unchanged.
    quality : int, optional
        IJG quality (1..100) the image was compressed with: the standard
        tables scaled by quality. Not needed with ``qtable``.
    qtable : array_like, optional
        The file's quantisation table (8x8, natural order), or a pair
        (luma, chroma). Preferred over ``quality`` when known; see
        :func:`deblock_jpeg` to read it from the file.
    model : str, path, TRDModel or sequence of them, optional
        Deblocking model(s); the one trained for the nearest quality is used.
        Default: the shipped models.
    channel_axis : int or None, optional
        Axis of the colour channels (3, RGB), or ``None`` for gray.
    preserve_range : bool or None, optional
        Float input is already on the [0, 255] scale; output stays on it.
        ``None``: decide from the data and give the output on the input's
        own scale, as an image viewer needs: integer input, and floats whose
        maximum is above 1 + 0.5/255 (1 and half a grey level), are on the
        [0, 255] scale (as with ``True``), other floats on [0, 1] (as with
        ``False``). An image on the 0..255 scale that is all but
        black (maximum at most 1) is then read as the 0..1 scale: pass a
        bool when the scale is known. Default ``False``.
    backend : {'auto', 'numba', 'numpy', 'cupy'}, optional
    num_threads : int, optional
        Threads for the Numba kernels.
    constraint_scale : float, optional
        Width ``c`` of the quantisation box in quantisation steps (Eq. 9 has
        1; the authors' code uses 0.8). Default: the model's own.
    n_stages : int, optional
        Run only the first stages.
    progress : callable(done, total), optional
        Called after every stage of every plane; not for dask arrays.

    Returns
    -------
    ndarray
        Same shape as ``image``; in [0, 1], or in [0, 255] with
        ``preserve_range=True`` (or ``None`` decided so); float32 for
        float16/float32 input, float64 otherwise (as ``denoise_trd`` and
        ``skimage.restoration``).

    Raises
    ------
    ValueError
        Values no JPEG decoder gives: integers outside 0..255, floats
        outside [0, 1] (or 0..255 with ``preserve_range=True``), NaN.

    Notes
    -----
    The integer coefficients of the JPEG file are recovered by requantising
    the decoded image (exact except in blocks the decoder clipped and some
    blocks cut by the image border). The iteration runs on the JPEG's grid
    of whole 8x8 blocks, starting from the dequantised image, and the result
    is cropped to the image size.

    References
    ----------
    .. [1] Y. Chen, W. Yu and T. Pock, "On learning optimized reaction
           diffusion processes for effective image restoration", CVPR 2015.
    """
    setup = setup_input(image, channel_axis, what="deblock_trd")
    image, kind, channel_axis = setup.image, setup.kind, setup.channel_axis
    if channel_axis is not None and image.shape[channel_axis] != 3:
        raise ValueError(f"colour deblocking needs 3 channels (RGB) on channel_axis, got "
                         f"{image.shape[channel_axis]}")
    backend = resolve_backend(backend, kind)
    luma, q = _luma_table(quality, qtable)
    bank = resolve_models(model, "deblock")
    m = _pick(bank, q)
    if n_stages is not None and not 1 <= int(n_stages) <= m.n_stages:
        raise ValueError(f"n_stages must be in 1..{m.n_stages}, got {n_stages}")
    if constraint_scale is not None and not (0 < float(constraint_scale) <= 2):
        raise ValueError(f"constraint_scale must be in (0, 2], got {constraint_scale}")
    options = dict(luma=luma, model=m, backend=backend, num_threads=num_threads,
                   constraint_scale=constraint_scale, n_stages=n_stages)
    if kind == "dask":
        import dask

        # one pass over the input: NaN, inf and the range, before anything lazy is built
        values = check_image(np.array(dask.compute(image.min(), image.max()), image.dtype))
        preserve_range = _resolve_range(values, preserve_range)
        _check_values(values, preserve_range)
        return _deblock_dask(image, channel_axis, dict(options, preserve_range=preserve_range))
    host = image.get() if kind == "cupy" else image
    preserve_range = _resolve_range(host, preserve_range)
    options["preserve_range"] = preserve_range
    _check_values(host, preserve_range)
    out = _deblock_checked(host, channel_axis, progress=progress, **options)
    if kind == "cupy":
        import cupy

        return cupy.asarray(out)
    return out


def _deblock_checked(host, channel_axis, *, luma, model, preserve_range, backend, num_threads,
                     constraint_scale, n_stages, progress=None):
    """``deblock_trd`` on a NumPy array after its checks (of the parameters and the values)."""
    x255 = _to_255(host, preserve_range)
    if channel_axis is not None:
        rgb = np.moveaxis(x255, channel_axis, -1)
        ycc = _rgb_to_ycbcr(rgb)
        planes_of = ycc  # luma restored, chroma passed through
    else:
        planes_of = x255[..., None]
    restored = planes_of.copy()
    planes = list(iter_planes(planes_of.shape[:-1], None))
    with numba_threads(num_threads if backend == "numba" else None):
        for k, (index, _) in enumerate(planes):
            cb = None if progress is None else (
                lambda d, t, k=k: progress(k * t + d, len(planes) * t))
            restored[index + (0,)] = _deblock_plane(
                planes_of[index + (0,)], luma, model, backend=backend,
                constraint_scale=constraint_scale, n_stages=n_stages, progress=cb)
    if channel_axis is not None:
        out255 = np.moveaxis(_ycbcr_to_rgb(restored), -1, channel_axis)
    else:
        out255 = restored[..., 0]
    out = np.clip(out255, 0, 255)
    if not preserve_range:
        out = out / 255.0
    return out.astype(float_dtype(host.dtype, True)[0], copy=False)


def _deblock_dask(image, channel_axis, options):
    """Lazily, chunk by chunk: one plane (with all three colour channels) per chunk, so that the
    result equals the in-memory one and memory is bounded by a plane."""
    axes = [ax for ax in range(image.ndim) if ax != channel_axis][-2:]
    whole = {ax: -1 for ax in axes}
    if channel_axis is not None:
        whole[channel_axis] = -1
    chunks = {ax: whole.get(ax, 1) for ax in range(image.ndim)}
    out_dtype = float_dtype(image.dtype, True)[0]
    return image.rechunk(chunks).map_blocks(
        functools.partial(_deblock_checked, channel_axis=channel_axis, **options),
        dtype=out_dtype, meta=np.array((), dtype=out_dtype), token="deblock_trd")


# JPEG (JFIF) full-range BT.601 colour conversion, as libjpeg.
def _rgb_to_ycbcr(rgb):
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    y = 0.299 * r + 0.587 * g + 0.114 * b
    cb = -0.168735892 * r - 0.331264108 * g + 0.5 * b + 128
    cr = 0.5 * r - 0.418687589 * g - 0.081312411 * b + 128
    return np.stack([y, cb, cr], axis=-1)


def _ycbcr_to_rgb(ycc):
    y, cb, cr = ycc[..., 0], ycc[..., 1] - 128, ycc[..., 2] - 128
    r = y + 1.402 * cr
    g = y - 0.344136286 * cb - 0.714136286 * cr
    b = y + 1.772 * cb
    return np.stack([r, g, b], axis=-1)


def deblock_jpeg(path, *, model=None, backend="auto", num_threads=None, constraint_scale=None,
                 progress=None):
    """Read a JPEG file and return it restored, using the file's own quantisation tables.

    Parameters
    ----------
    path : str or path-like
        A baseline JPEG file (gray or YCbCr colour).
    model, backend, num_threads, constraint_scale, progress
        As for :func:`deblock_trd`.

    Returns
    -------
    ndarray
        float64 in [0, 1]: (M, N) for gray files, (M, N, 3) RGB for colour
        files (luma restored; chroma as decoded).
    """
    planes, tables, mode = read_jpeg(path)
    # the file's own Y plane (no colour round trip) and its table
    # the decoder's values are integers in 0..255: as uint8, whatever their brightness
    y = deblock_trd(planes[0].astype(np.uint8), qtable=tables[0], model=model,
                    preserve_range=True,
                    backend=backend, num_threads=num_threads, constraint_scale=constraint_scale,
                    progress=progress)
    if mode == "L":
        return y / 255.0
    ycc = np.stack([y, planes[1], planes[2]], axis=-1)
    return np.clip(_ycbcr_to_rgb(ycc), 0, 255) / 255.0

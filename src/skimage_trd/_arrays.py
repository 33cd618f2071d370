"""Input checks, dtype rules and plane iteration shared by the public functions.

dtype rule (as ``skimage.restoration``): integer images go through
``img_as_float`` unless ``preserve_range=True``; float16 becomes float32;
float32 and float64 are kept. Complex, bool and object arrays are refused.
"""

from __future__ import annotations

import itertools
import warnings

import numpy as np

__all__ = ["array_module", "check_image", "normalize_channel_axis", "normalize_tile_shape",
           "iter_planes", "resolve_backend", "BACKENDS"]

BACKENDS = ("numpy", "numba", "cupy")


def array_module(image):
    """'numpy', 'cupy' or 'dask' for the kind of array given."""
    mod = type(image).__module__.split(".")[0]
    if mod == "cupy":
        return "cupy"
    if mod == "dask":
        return "dask"
    return "numpy"


def resolve_backend(backend, kind):
    """The backend that runs an array of ``kind`` (:func:`array_module`): ``'auto'`` is CuPy for
    CuPy arrays and Numba otherwise; dask arrays run on the CPU backends."""
    if backend == "auto":
        return "cupy" if kind == "cupy" else "numba"
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose 'auto' or one of {BACKENDS}")
    if kind == "dask" and backend == "cupy":
        raise ValueError("dask arrays run on the CPU backends ('numba', 'numpy'), got 'cupy'; "
                         "map the function over CuPy chunks yourself for GPU work")
    return backend


def check_image(image, *, name="image", finite=True):
    """Refuse what cannot be restored, with a message that says how to fix it.

    Returns the image as an array of its own module (NumPy arrays for
    array-likes).
    """
    kind = array_module(image)
    if kind == "numpy":
        image = np.asarray(image)
    dtype = np.dtype(image.dtype)
    if dtype.kind == "c":
        raise TypeError(
            f"{name} is complex ({dtype}); TRD restores real-valued images. "
            "Pass the magnitude (abs) or the real and imaginary parts separately."
        )
    if dtype.kind not in "uif":
        raise TypeError(
            f"{name} has dtype {dtype}; expected an integer or floating-point image "
            "(bool and object arrays are not images to denoise)."
        )
    if image.size == 0:
        raise ValueError(f"{name} is empty (shape {image.shape}); nothing to restore.")
    if finite and dtype.kind == "f" and kind != "dask":
        xp = _xp(image)
        if not bool(xp.all(xp.isfinite(image))):
            raise ValueError(
                f"{name} contains NaN or infinite values; replace them first "
                "(for example with numpy.nan_to_num or inpainting)."
            )
    return image


def _xp(image):
    """The array module of ``image``: ``cupy`` for CuPy arrays, ``dask.array`` for dask arrays,
    else ``numpy`` (the one place that tells them apart; see :func:`array_module`)."""
    kind = array_module(image)
    if kind == "cupy":
        import cupy

        return cupy
    if kind == "dask":
        import dask.array

        return dask.array
    return np


def normalize_channel_axis(image, channel_axis):
    """Validate ``channel_axis`` and return it as a non-negative int (or None)."""
    if channel_axis is None:
        return None
    if isinstance(channel_axis, (tuple, list)):
        raise ValueError("only a single channel axis is supported; got " f"{channel_axis!r}")
    if not isinstance(channel_axis, (int, np.integer)) or isinstance(channel_axis, bool):
        raise TypeError(f"channel_axis must be an int or None, got {channel_axis!r}")
    if not -image.ndim <= channel_axis < image.ndim:
        raise ValueError(
            f"channel_axis={channel_axis} is out of range for an image with {image.ndim} "
            f"dimensions (shape {image.shape})."
        )
    return int(channel_axis) % image.ndim


def check_spatial(image, channel_axis, *, what="denoise_trd"):
    spatial = image.ndim - (channel_axis is not None)
    if spatial < 2:
        hint = " (with channel_axis, the other axes must be at least 2-D)" if channel_axis is not None else ""
        raise ValueError(
            f"{what} needs an image with at least 2 spatial dimensions; got shape "
            f"{image.shape}{hint}. Reshape a 1-D signal to (1, N) if that is what you mean."
        )
    if channel_axis is None and image.ndim == 3 and image.shape[-1] in (3, 4):
        warnings.warn(
            f"image of shape {image.shape} is processed as a stack of {image.shape[0]} "
            "gray planes. If it is a colour image, pass channel_axis=-1.",
            UserWarning,
            stacklevel=3,
        )


def normalize_tile_shape(tile_shape):
    """``tile_shape`` as a pair of positive ints (an int means square tiles), or None."""
    if tile_shape is None:
        return None
    if isinstance(tile_shape, (int, np.integer)) and not isinstance(tile_shape, bool):
        tile_shape = (tile_shape, tile_shape)
    try:
        if isinstance(tile_shape, str):
            raise TypeError
        pair = tuple(int(s) for s in tile_shape)
        exact = all(p == s for p, s in zip(pair, tile_shape))
    except (TypeError, ValueError) as exc:
        raise TypeError(f"tile_shape must be an int or a pair of ints, got {tile_shape!r}") from exc
    if len(pair) != 2 or min(pair) < 1 or not exact:
        raise ValueError(f"tile_shape must be two positive ints, got {tile_shape!r}")
    return pair


def float_dtype(dtype, preserve_range):
    """The working float dtype and the linear scale that img_as_float applies."""
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        if dtype.itemsize <= 4:
            return np.dtype(np.float32), 1.0
        return np.dtype(np.float64), 1.0
    if preserve_range:
        return np.dtype(np.float64), 1.0
    info = np.iinfo(dtype)
    return np.dtype(np.float64), 1.0 / info.max


def to_input_dtype(result, in_dtype, preserve_range):
    """Map a float result back to the input's dtype and units (the inverse of ``float_dtype``).

    Integer types: rounded and clipped to the type's range. Works on NumPy (in place on the
    float result), CuPy and dask arrays alike.
    """
    in_dtype = np.dtype(in_dtype)
    if in_dtype.kind == "f":
        return result.astype(in_dtype, copy=False)
    _, scale = float_dtype(in_dtype, preserve_range)
    info = np.iinfo(in_dtype)
    # the largest floats that convert without overflow (2**63 - 1 rounds up to 2**63)
    lo = float(info.min)
    hi = float(info.max) if float(info.max) < 2.0**53 else np.nextafter(float(info.max), 0.0)
    if isinstance(result, np.ndarray):
        if scale != 1.0:
            result /= scale
        np.rint(result, out=result)
        np.clip(result, lo, hi, out=result)
        return result.astype(in_dtype)
    scaled = result / scale if scale != 1.0 else result
    return scaled.round().clip(lo, hi).astype(in_dtype)


def iter_planes(shape, channel_axis):
    """Index tuples of the 2-D planes of an array (last two non-channel axes are rows, cols)."""
    axes = [ax for ax in range(len(shape)) if ax != channel_axis]
    row_ax, col_ax = axes[-2], axes[-1]
    lead = [ax for ax in range(len(shape)) if ax not in (row_ax, col_ax)]
    for idx in itertools.product(*(range(shape[ax]) for ax in lead)):
        full = [slice(None)] * len(shape)
        for ax, i in zip(lead, idx, strict=False):
            full[ax] = i
        channel = idx[lead.index(channel_axis)] if channel_axis is not None else None
        yield tuple(full), channel

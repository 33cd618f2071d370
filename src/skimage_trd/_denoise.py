"""``denoise_trd``: Gaussian denoising with trained reaction diffusion (paper Eq. 7)."""

from __future__ import annotations

import contextlib
import contextvars
import os
import warnings
from dataclasses import replace

import numpy as np

from ._adapt import ADAPT_SHARE, adapt_bank, adapt_volume_bank
from ._arrays import (
    _xp,
    array_module,
    iter_planes,
    normalize_tile_shape,
    resolve_backend,
    to_input_dtype,
)
from ._axes import iter_volumes, setup_input
from ._choice import choice_record, sure_setting
from ._dask import denoise_trd_dask
from ._planes import (
    PlaneOptions,
    check_sigma,
    clip_limits,
    denoise_plane,
    plane_settings,
    select_model,
)
from ._registry import resolve_models
from .kernels.cuda import cupy_module

__all__ = ["denoise_trd", "select_model"]

# progress steps per plane with select='sure' (half the choice, half the run)
PROGRESS_UNITS = 1000


def denoise_trd(
    image,
    sigma=None,
    *,
    model=None,
    channel_axis=None,
    preserve_range=False,
    backend="auto",
    num_threads=None,
    tile_shape=None,
    n_stages=None,
    data_range=None,
    exact=False,
    color_transform="opponent",
    progress=None,
    preserve_dtype=False,
    select="range",
    return_choices=False,
    adapt=False,
    axes=None,
    spacing=None,
):
    """Remove Gaussian noise with a trained nonlinear reaction diffusion (TRD) model.

    Parameters
    ----------
    image : ndarray (M, N[, ...][, C]) of ints, uints or floats; or cupy.ndarray
        Image to denoise. 2-D images are gray; with ``channel_axis`` each
        channel is denoised; further leading axes are treated as a stack of
        2-D planes (the last two non-channel axes are rows and columns).
    sigma : float or sequence of float, optional
        Standard deviation of the noise, in the intensity units of ``image``
        as given (for a uint8 image, 25 means 25 grey levels). ``None``
        estimates it for every plane and channel with
        :func:`skimage.restoration.estimate_sigma`. A sequence gives one value
        per channel.
    model : str, path, TRDModel or sequence of them, optional
        The model bank. For every plane, the model whose training noise level
        is nearest to ``sigma`` relative to the plane's intensity range is
        chosen (see ``data_range`` and ``select``) and the intensities are
        rescaled so that the noise matches it. Default: the shipped models
        (noise levels 15, 25, 50, 75, 100 and 150 on the 0..255 scale).
    channel_axis : int or None, optional
        If ``None``, the image is assumed to be grayscale (single-channel).
        Otherwise, this parameter indicates which axis of the array
        corresponds to channels.
    preserve_range : bool, optional
        Keep integer images in their own value range instead of converting
        them with :func:`skimage.util.img_as_float`.
    backend : {'auto', 'numba', 'numpy', 'cupy'}, optional
        'auto' uses CuPy kernels for CuPy arrays and Numba kernels otherwise;
        'numpy' is the slow reference implementation; 'cupy' with a NumPy
        array moves the work to the GPU and the result back.
    num_threads : int, optional
        Threads for the Numba kernels (default: Numba's setting).
    tile_shape : (int, int) or int, optional
        Process every plane in tiles of this size (an int: square tiles) plus a halo of
        ``n_stages * (kernel_size - 1)`` pixels; the result equals
        whole-image processing and memory is bounded by the tile size.
        Chosen automatically (2048 x 2048) when a plane's working buffers
        would not fit in the memory available.
    n_stages : int, optional
        Run only the first stages of the model.
    data_range : float, optional
        Intensity range of the clean image, in the units of ``image``, used
        with ``sigma`` to choose a model from the bank (the model trained for
        the noise level nearest to ``255 * sigma / data_range``). Default:
        the range between the 0.5 and 99.5 percentiles of the lightly
        smoothed plane, which keeps the result equivariant (see Notes) and
        the same with and without ``preserve_range`` (a 12-bit image in
        uint16 is judged by its own contrast, not by the type's range). That
        robust range is compared with the training images' own (about 186 of
        255 for train400, widened by strong noise): the model whose training
        images had the nearest ``255 * sigma / range`` is chosen.
    exact : bool, optional
        Run the model in float64 arithmetic with the influence functions
        evaluated as exact sums of Gaussians, instead of in float32 with
        tables accurate to 2e-4 on the [0, 255] scale (linear on the CPU,
        cubic and accurate to 1e-5 on the GPU), whatever the input dtype.
        The default differs from exact evaluation by less than 0.01 of 255;
        ``exact=True`` is several times slower (docs/performance.md).
    color_transform : {'opponent', 'none'}, optional
        For 3-channel images (``channel_axis`` given) with one noise level:
        denoise in the orthonormal opponent colour space (luminance and two
        colour differences, which keeps white noise white) instead of channel
        by channel. 'none' denoises the channels as they are.
    progress : callable(done, total), optional
        Called after every stage of every plane (and tile); not for dask
        arrays, whose result is lazy.
    preserve_dtype : bool, optional
        Return the result in the input's dtype and intensity units (for
        integer images: rounded to the nearest integer and clipped to the
        type's range, whatever ``preserve_range`` says). A 12-bit camera
        image in uint16 comes back as uint16 on the same 0..4095 scale.
    select : {'range', 'sure'}, optional
        How a model of the bank is chosen for every plane (when the bank has
        models of several noise levels). ``'range'``: the nearest model to the
        noise relative to the plane's intensity range (``data_range``, or the
        robust range judged as the training images' was). ``'sure'``: the
        candidates are the bank's noise levels around that one and the level
        the dtype's range gives (1 for floats in [0, 1], 255 for uint8 or
        floats on the 8-bit scale), each model run at the scale that matches
        its training noise; the one with the lowest
        Stein's unbiased risk estimate of the mean squared error wins (no
        clean image needed; Gaussian noise of the given or estimated sigma).
        Evaluated on the whole plane up to 2**19 pixels (the winner's run is
        the result) and on four 192 x 192 tiles of larger planes; the probes
        and tiles are seeded from the plane's shape and extreme values, so the
        choice is repeatable (and equal for dask input where the range rule's
        level is: sigma given, or planes within dask's 1024 x 1024 sample).
        Planes under 64 x 64 pixels keep the range rule. Clipped planes (over
        0.1 % of the pixels at an integer type's limits, or floats at 0 and 1,
        or 0 and 255: their noise is not Gaussian) are not judged by SURE:
        8-bit data and floats in [0, 1] take the candidate nearest the dtype's
        level, other types the range rule's model. About four times the work of ``'range'`` at 512 x 512
        with two candidates and one probe (up to twelve runs with three
        candidates and three probes; docs/sure.md, with the measured gains).
        Colour images in the opponent space are judged channel by channel as
        floats (no dtype candidate, no clipping rule).
    return_choices : bool, optional
        Also return, per plane (and colour channel), what was chosen: a list
        of dicts with ``plane`` (its index in the leading axes), ``action``
        ('denoise', 'copy' or 'mean'), ``model`` (its name), ``sigma`` (in the
        image's units) and ``estimated_mse`` (``select='sure'``: every
        candidate's estimated mean squared error, squared image units).
    adapt : bool, optional
        First adapt the models the call would use to this image, without a
        clean image: each is fine-tuned by Stein's unbiased risk estimate on
        the planes it would denoise (:func:`skimage_trd.train.fit` with
        ``loss='sure'`` and its defaults: up to 40 Adam steps on four random
        128 x 128 windows, judged every 5 steps by SURE of the whole
        adaptation on every pixel (a twin run of the same adaptation on the
        image plus a known probe, beside it), the best parameters kept,
        stopped after 20 steps without progress; volumes: a fifth of the
        (y, x) blocks held out instead), then the image is denoised with
        them. A model that no step improves by two standard errors of that
        estimate is used unchanged, and
        so is one for images clipped at their limits (8-bit data at 0 or 255,
        saturation) where fewer than a quarter of the pixels lie 3 sigmas or
        more from the limit (SURE's estimate does not hold near it). About
        5 s per step on one core (the run and its twin): two to five minutes
        for a 256 x 256 or 512 x 512 gray image (Set12 on one thread: 100 to
        280 s), as much
        again for every further model a stack's planes use; progress is
        reported for it (90 % of the call's). NumPy images only, gray, stacks or channels denoised one by
        one (``color_transform='none'``). To keep the adapted model, call
        :func:`skimage_trd.train.fit` yourself (``docs/models.md``).
    axes : str, optional
        What the axes of ``image`` are, in OME/tifffile letters: ``T`` (time), ``S`` (any
        stack), ``C`` (channel), ``Z``, ``Y``, ``X`` (e.g. ``'ZYX'``, ``'TZYX'``,
        ``'TZCYX'``, ``'YX'``, ``'TYX'``). With a ``Z`` (right before ``Y`` and ``X``),
        every (z, y, x) volume is denoised as one volume with the volume models (3-D
        filters, ``model`` must be such models; default: the shipped ones); without, plane
        by plane as without ``axes``. ``C`` sets the channel axis (as ``channel_axis``).
        Volumes need at least 3 planes; NumPy, CuPy and dask arrays (dask: lazy, chunks in
        z too, the result equal to the whole volume's); ``adapt`` adapts the volume model
        (NumPy); no ``tile_shape`` or colour transform (channels one by one).
        docs/volumes.md has the measurements.
    spacing : (float, float, float), optional
        Volumes: the voxel size ``(dz, dy, dx)`` in any one unit. The volume models are
        trained for z-steps of 1 to 4 pixels; a z-step beyond 6 pixels is denoised plane by
        plane with the 2-D models (with a warning). Default: not checked.

    Returns
    -------
    denoised : ndarray
        Same shape as ``image``; float32 for float16/float32 input, float64
        otherwise (same array module as the input); the input's dtype with
        ``preserve_dtype=True``.
    choices : list of dict
        Only with ``return_choices=True`` (see there).

    Raises
    ------
    TypeError
        Complex, bool or object images; an unsupported array type.
    MemoryError
        Before any work, when the result itself cannot fit in memory (Numba
        backend, ``tile_shape`` not given).
    ValueError
        Empty or 1-D images, NaN or infinite values, a negative sigma, an
        unknown model, backend or ``select``, a ``channel_axis`` out of range.

    Warns
    -----
    UserWarning
        Likely mistakes: a sigma below half an integer step of an integer
        image (given in the wrong units, e.g. ``20/255`` for uint8); a sigma
        above the spread of the image's values (max - min; noise of that
        level would spread them wider: e.g. ``20`` for an image in [0, 1],
        where ``20/255`` was meant; not checked for dask arrays); an
        (M, N, 3) or (M, N, 4) image without ``channel_axis``; a
        ``channel_axis`` that gives many channels of planes only a few
        pixels high or wide.

    Notes
    -----
    *Intensity scale.* TRD models are trained on images in [0, 255] with a
    fixed noise level ``s_m``. A plane ``x`` with noise ``sigma`` is mapped to
    ``(x - mean(x)) * s_m / sigma + 127.5``, denoised, and mapped back. The
    stage map commutes with adding constants (its filters have zero mean),
    so for ``a > 0``::

        denoise_trd(a * x + b, sigma=a * s) == a * denoise_trd(x, sigma=s) + b

    up to float rounding. Integer input converted by ``img_as_float`` is
    clipped to the converted range ([0, 1] or [-1, 1]); with
    ``preserve_range=True`` to the integer type's range. Float input is not
    clipped. The model runs in float32 (float64 with ``exact=True``, and
    for planes whose noise is below 1e-5 of their spread, where float32
    rounding would reach 1e-2 of the noise); float64 and 32/64-bit integer
    planes are mapped onto the model's scale and back in float64.
    Results are float32 for float16/float32 input and float64 otherwise,
    as in scikit-image.
    A plane whose noise is below 1e-7 of its spread is returned unchanged;
    one whose noise exceeds its spread ten million times becomes its mean.

    Unless ``exact=True``, the model runs in float32 with its influence
    functions evaluated from tables accurate to 2e-4 on the [0, 255] scale;
    the restored image differs from exact float64 evaluation by less than
    0.01 of 255 (docs/performance.md). Models imported from the authors'
    MATLAB files evaluate their influence functions from the authors' own
    lookup table in both cases (docs/correctness.md).

    References
    ----------
    .. [1] Y. Chen, W. Yu and T. Pock, "On learning optimized reaction
           diffusion processes for effective image restoration", CVPR 2015.
           :DOI:`10.1109/CVPR.2015.7299163`

    Examples
    --------
    >>> import numpy as np
    >>> from skimage import data
    >>> from skimage_trd import denoise_trd
    >>> rng = np.random.default_rng(0)
    >>> clean = data.camera()[:128, :128] / 255.0
    >>> noisy = clean + 0.1 * rng.standard_normal(clean.shape)
    >>> denoised = denoise_trd(noisy, sigma=0.1)  # doctest: +SKIP
    >>> denoised.shape
    (128, 128)
    """
    setup = setup_input(image, channel_axis, axes, spacing, what="denoise_trd")
    image, kind, channel_axis, layout = setup.image, setup.kind, setup.channel_axis, setup.layout
    n_channels = 1 if channel_axis is None else image.shape[channel_axis]
    sigmas = check_sigma(sigma, n_channels)
    if color_transform not in ("opponent", "none"):
        raise ValueError(f"color_transform must be 'opponent' or 'none', got {color_transform!r}")
    backend = resolve_backend(backend, kind)
    _warn_sigma_units(sigmas, image.dtype)
    _warn_sigma_range(image, kind, sigmas)
    if select not in ("range", "sure"):
        raise ValueError(f"select must be 'range' or 'sure', got {select!r}")
    if layout is not None and layout.volume:
        if select == "sure":
            raise ValueError("select='sure' chooses among 2-D models plane by plane; volumes "
                             "use the range rule (select='range')")
        return _volume_call(image, kind, sigmas, layout, model=model, backend=backend,
                            num_threads=num_threads, tile_shape=tile_shape, n_stages=n_stages,
                            data_range=data_range, exact=exact, progress=progress,
                            preserve_range=preserve_range, preserve_dtype=preserve_dtype,
                            return_choices=return_choices, adapt=adapt)
    _warn_channel_axis(image.shape, channel_axis)
    bank = tuple(resolve_models(model, "denoise"))
    if any(m.ndim == 3 for m in bank):
        if layout is not None and layout.far_planes:
            raise ValueError("the z-step (spacing) is beyond what the volume models cover, so "
                             "the planes are denoised one by one: give 2-D models (or none)")
        raise ValueError("volume models (3-D filters) denoise volumes: give axes with a Z "
                         "(e.g. axes='ZYX')")
    n_stages = _check_bank_options(bank, n_stages, data_range)
    opts = PlaneOptions(bank=bank, in_dtype=image.dtype, preserve_range=bool(preserve_range),
                        backend=backend, num_threads=num_threads,
                        tile_shape=normalize_tile_shape(tile_shape), n_stages=n_stages,
                        data_range=data_range, exact=bool(exact), select=select)
    choices = [] if return_choices else None
    opponent = color_transform == "opponent" and n_channels == 3 and len(set(sigmas)) == 1
    if adapt:
        if kind != "numpy":
            raise ValueError(f"adapt=True trains on the image in memory: pass a NumPy array "
                             f"(got a {kind} array; e.g. np.asarray(image), or .get() for "
                             "CuPy)")
        if opponent:
            raise ValueError("adapt=True adapts gray models: for a colour image pass "
                             "color_transform='none' (channels denoised one by one), or "
                             "adapt a model with skimage_trd.train.fit")
        share, progress = _adapt_progress(progress)
        opts = adapt_bank(image, sigmas, channel_axis, opts, progress=share)
    if opponent:
        out = _denoise_opponent(image, kind, sigmas[0], channel_axis, opts, progress=progress,
                                choices=choices)
    elif kind == "dask":
        out = denoise_trd_dask(image, sigmas, channel_axis, opts, choices=choices)
    else:
        out = _denoise_planes(image, kind, sigmas, channel_axis, opts, progress=progress,
                              choices=choices)
    if preserve_dtype:
        out = to_input_dtype(out, image.dtype, preserve_range)
    return (out, choices) if return_choices else out


def _denoise_planes(image, kind, sigmas, channel_axis, opts, *, progress=None, choices=None,
                    unit=1.0):
    """``denoise_trd`` after its checks, for a NumPy or CuPy image: plane by plane. What was
    chosen for each plane is appended to ``choices`` (a list) when given; ``unit``: the image's
    units per working unit of ``opts`` (the opponent transform's planes are in the input's
    working units)."""
    backend = opts.backend
    if backend == "cupy":
        xp = cupy_module()
        src = xp.asarray(image)
    else:
        xp = np
        src = image.get() if kind == "cupy" else image
    plane_shape = tuple(n for ax, n in enumerate(image.shape) if ax != channel_axis)[-2:]
    if backend == "numba" and opts.tile_shape is None:
        opts = replace(opts, tile_shape=_memory_plan(image.shape, plane_shape, opts))
    out = xp.empty(image.shape, dtype=opts.out_dtype)
    planes = list(iter_planes(image.shape, channel_axis))
    total_planes = len(planes)

    sure = opts.select == "sure"
    if progress is not None:  # remember the last report, to end on done == total (below)
        user_progress, last = progress, [None]

        def progress(done, total):
            last[0] = (done, total)
            user_progress(done, total)
    for p_index, (index, channel) in enumerate(planes):
        plane = src[index]
        setting = plane_settings(plane, sigmas[channel or 0], opts)
        cb = choosing = None
        if progress is not None:
            if sure:  # each plane: the choice (model runs), then the run (its stages)
                span = PROGRESS_UNITS // 2

                def choosing(done, total, p=p_index):
                    progress(p * PROGRESS_UNITS + span * done // total,
                             total_planes * PROGRESS_UNITS)

                def cb(done, total, p=p_index):
                    progress(p * PROGRESS_UNITS + span + (PROGRESS_UNITS - span) * done // total,
                             total_planes * PROGRESS_UNITS)
            else:
                def cb(done, total, p=p_index):
                    progress(p * total + done, total_planes * total)
        if sure:
            extent = (float(plane.min()), float(plane.max()))
            setting = sure_setting(setting, opts, plane.shape, extent,
                                   lambda rows, cols: plane[rows, cols], progress=choosing)
        if choices is not None:
            choices.append(choice_record(index, channel_axis, setting, unit / opts.scale))
        if setting.output is not None:  # SURE ran the chosen model on the whole plane
            out[index] = setting.output
            if cb is not None:
                cb(1, 1)
        else:
            out[index] = denoise_plane(plane, setting, opts, cb)
    if progress is not None and (last[0] is None or last[0][0] != last[0][1]):
        # the last planes were only copied (constant, or no noise): they report nothing
        total = 1 if last[0] is None else last[0][1]
        user_progress(total, total)
    if backend == "cupy" and kind != "cupy":
        return out.get()
    if kind == "cupy" and backend != "cupy":
        return cupy_module().asarray(out)
    return out


def _check_bank_options(bank, n_stages, data_range):
    """``n_stages`` (as an int, or None) checked against the bank, and ``data_range``."""
    if n_stages is not None:
        n_stages = int(n_stages)
        shortest = min(m.n_stages for m in bank)
        if not 1 <= n_stages <= shortest:
            raise ValueError(f"n_stages must be in 1..{shortest}, got {n_stages}")
    if data_range is not None and not (np.isfinite(data_range) and data_range > 0):
        raise ValueError(f"data_range must be a positive number, got {data_range!r}")
    return n_stages


def _adapt_progress(progress):
    """``(share, rest)``: a call's progress split between adapting the models (the first
    ``ADAPT_SHARE`` of it) and denoising (the rest); both None without ``progress``."""
    if progress is None:
        return None, None
    units = 1000
    adapt_units = int(units * ADAPT_SHARE)

    def share(done, total):
        progress(adapt_units * done // total, units)

    def rest(done, total):
        progress(adapt_units + (units - adapt_units) * done // total, units)

    return share, rest


def _volume_call(image, kind, sigmas, layout, *, model, backend, num_threads, tile_shape,
                 n_stages, data_range, exact, progress, preserve_range, preserve_dtype,
                 return_choices, adapt):
    """``denoise_trd`` with ``axes`` holding a Z: every (z, y, x) volume as one volume."""
    if tile_shape is not None:
        raise ValueError("volumes are denoised whole: tile_shape is for planes")
    z = layout.axes.index("Z")
    bank = tuple(resolve_models(model, "denoise", ndim=3))
    flat = [m.name for m in bank if m.ndim != 3]
    if flat:
        raise ValueError(f"axes {layout.axes!r} asks for volumes, but {flat} are 2-D models: "
                         "give volume models (3-D filters), or drop the Z from axes to "
                         "denoise plane by plane")
    depth = max(m.depth for m in bank)
    if image.shape[z] < depth:
        raise ValueError(f"the volumes have {image.shape[z]} planes (axis Z of shape "
                         f"{image.shape}), fewer than the {depth} planes of the volume "
                         "models' filters: denoise them plane by plane (axes without Z)")
    n_stages = _check_bank_options(bank, n_stages, data_range)
    opts = PlaneOptions(bank=bank, in_dtype=image.dtype, preserve_range=bool(preserve_range),
                        backend=resolve_backend(backend, kind), num_threads=num_threads,
                        n_stages=n_stages, data_range=data_range, exact=bool(exact))
    choices = [] if return_choices else None
    if kind == "dask":
        if adapt:
            raise ValueError("adapt=True trains on the volume in memory: pass a NumPy array")
        out = denoise_trd_dask(image, sigmas, layout.channel_axis, opts, choices=choices,
                               layout=layout)
        if preserve_dtype:
            out = to_input_dtype(out, image.dtype, preserve_range)
        return (out, choices) if return_choices else out
    if adapt and kind == "cupy":
        raise ValueError("adapt=True trains on the CPU: pass a NumPy array (.get() it)")
    if adapt:  # the volume models fine-tuned on these volumes first (90 % of the progress)
        share, progress = _adapt_progress(progress)
        opts = adapt_volume_bank(image, sigmas, layout, opts, progress=share)
    if opts.backend == "cupy":  # (CuPy arrays, or NumPy ones sent to the GPU)
        xp = cupy_module()
        src = xp.asarray(image)
    else:
        xp = np
        src = image.get() if kind == "cupy" else image
    out = xp.empty(image.shape, dtype=opts.out_dtype)
    volumes = list(iter_volumes(image.shape, layout))
    for k, (index, channel) in enumerate(volumes):
        vol = src[index]
        setting = plane_settings(vol, sigmas[channel or 0], opts)
        cb = None
        if progress is not None:
            def cb(done, total, k=k):
                progress(k * total + done, len(volumes) * total)
        if choices is not None:
            record = choice_record(index, layout.channel_axis, setting, 1.0 / opts.scale)
            record["volume"] = record.pop("plane")
            choices.append(record)
        out[index] = denoise_plane(vol, setting, opts, cb)
        if cb is not None and setting.action != "denoise":
            cb(1, 1)
    if opts.backend == "cupy" and kind != "cupy":
        out = out.get() if array_module(out) == "cupy" else np.asarray(out)  # (to the host)
    elif kind == "cupy" and opts.backend != "cupy":
        out = cupy_module().asarray(out)
    if preserve_dtype:
        out = to_input_dtype(out, image.dtype, preserve_range)
    return (out, choices) if return_choices else out


# Orthonormal opponent colour transform: luminance and two colour differences.
_OPPONENT = np.array([[1, 1, 1], [1, 0, -1], [1, -2, 1]], dtype=np.float64)
_OPPONENT /= np.sqrt((_OPPONENT**2).sum(axis=1, keepdims=True))


def _denoise_opponent(image, kind, sigma, channel_axis, opts, *, progress=None, choices=None):
    """Denoise a 3-channel image in the opponent colour space (white noise stays white)."""
    xp = _xp(image)
    work_dtype, scale = opts.out_dtype, opts.scale
    x = xp.moveaxis(image, channel_axis, -1).astype(work_dtype) * work_dtype.type(scale)
    m = (np if kind == "dask" else xp).asarray(_OPPONENT, dtype=work_dtype)
    y = x @ m.T
    s = None if sigma is None else sigma * scale
    # the transformed image is in working units: the options follow it
    inner = replace(opts, in_dtype=y.dtype, preserve_range=True,
                    data_range=None if opts.data_range is None else opts.data_range * scale)
    sigmas = [s] * 3
    if kind == "dask":
        out = denoise_trd_dask(y, sigmas, y.ndim - 1, inner, choices=choices, unit=1.0 / scale)
    else:
        out = _denoise_planes(y, kind, sigmas, y.ndim - 1, inner, progress=progress,
                              choices=choices, unit=1.0 / scale)
    out = out @ m
    clip = clip_limits(image.dtype, opts.preserve_range)
    if clip is not None:
        out = xp.clip(out, *clip)
    return xp.moveaxis(out.astype(work_dtype, copy=False), -1, channel_axis)


def _available_memory():
    """Bytes of memory available now (Linux), or None where that cannot be told."""
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


# Whole-plane processing holds, besides the input and the output, about this many plane-sized
# buffers of the map dtype (the plane mapped onto the model's scale; a float64 copy when sigma
# or the intensity range is estimated) and of the compute dtype (the plane the stages start
# from, the padded image and two stage buffers; twice that for a plane run in float64 for
# its tiny noise, FLOAT32_SPREAD).
_MAP_BUFFERS = 2
_COMPUTE_BUFFERS = 4
AUTO_TILE = 2048


def _memory_plan(shape, plane_shape, opts):
    """Refuse up front what cannot fit; tile planes whose working set would not fit."""
    available = _available_memory()
    if available is None:
        return None
    out_dtype = opts.out_dtype
    out_bytes = int(np.prod(shape)) * np.dtype(out_dtype).itemsize
    if out_bytes > 0.9 * available:
        raise MemoryError(
            f"the result of shape {shape} ({out_bytes / 2**30:.1f} GiB of "
            f"{np.dtype(out_dtype).name}) does not fit in the {available / 2**30:.1f} GiB of "
            "memory available; process the image in parts, e.g. as a dask array "
            "(denoise_trd takes dask arrays) or plane by plane"
        )
    per_pixel = (_MAP_BUFFERS * opts.map_dtype.itemsize
                 + _COMPUTE_BUFFERS * opts.compute_dtype.itemsize)
    if int(np.prod(plane_shape)) * per_pixel > 0.5 * (available - out_bytes):
        return (AUTO_TILE, AUTO_TILE)  # identical result, memory bounded by the tile
    return None


def _warn_sigma_units(sigmas, dtype):
    """Warn when sigma is below half an integer step: most likely given in the wrong units."""
    dtype = np.dtype(dtype)
    small = [s for s in sigmas if s is not None and 0 < s < 0.5]
    if dtype.kind in "ui" and small:
        warnings.warn(
            f"sigma={small[0]:g} is below half an integer step of this {dtype} image, so the "
            f"result is nearly the input. sigma is in the image's own units as given "
            f"({np.iinfo(dtype).min}..{np.iinfo(dtype).max} for {dtype}), whatever "
            f"preserve_range says: for noise of {small[0]:g} on a [0, 1] scale pass "
            f"sigma={small[0] * np.iinfo(dtype).max:.4g}, not {small[0]:g}.",
            UserWarning,
            stacklevel=3,
        )


# Internal callers that give denoise_trd a sigma of their own making (the Poisson path: 1 after
# the variance-stabilising transform) turn the sigma range check off for their calls
# (per thread and task, unlike a module flag).
_CHECK_SIGMA_RANGE = contextvars.ContextVar("skimage_trd_check_sigma_range", default=True)


@contextlib.contextmanager
def internal_sigma():
    """Within this block, ``denoise_trd`` does not warn about a sigma above the image's spread."""
    token = _CHECK_SIGMA_RANGE.set(False)
    try:
        yield
    finally:
        _CHECK_SIGMA_RANGE.reset(token)


# below this many values a noisy image's spread (max - min) can fall short of the noise's sigma
_RANGE_CHECK_MIN_SIZE = 64


def _warn_sigma_range(image, kind, sigmas):
    """Warn when sigma exceeds the spread (max - min) of the image's values: noise of that level
    would have spread them several times wider, so sigma is most likely in other units than the
    image's own (0..255 for an image in [0, 1]). Not for dask arrays (that would read them)."""
    given = [s for s in sigmas if s is not None]
    if (not given or kind == "dask" or image.size < _RANGE_CHECK_MIN_SIZE
            or not _CHECK_SIGMA_RANGE.get()):
        return
    sigma = max(given)
    xp = _xp(image)
    lo, hi = float(xp.min(image)), float(xp.max(image))
    spread = hi - lo
    if not 0 < spread < sigma:
        return
    if -1 <= lo and hi <= 2 and 1 <= sigma <= 65535:  # an image in about [0, 1]
        scale, name = (255, "grey levels on the 0..255 scale") if sigma <= 255 else (
            65535, "units of the 16-bit 0..65535 scale")
        hint = (f"for an image in [0, 1] with noise of {sigma:g} {name}, pass "
                f"sigma={sigma:g}/{scale}={sigma / scale:.3g}")
    else:
        hint = "pass the noise's standard deviation in those units"
    warnings.warn(
        f"sigma={sigma:g} is {sigma / spread:.3g}x the spread of this image's values "
        f"({lo:.4g}..{hi:.4g}), but noise of that level would spread them several times wider: "
        f"sigma is in the image's own units as given; {hint} (or sigma=None to estimate it).",
        UserWarning,
        stacklevel=3,
    )


def _warn_channel_axis(shape, channel_axis):
    """Warn when the channel axis looks spatial and a spatial axis looks like channels."""
    if channel_axis is None:
        return
    axes = [ax for ax in range(len(shape)) if ax != channel_axis][-2:]
    likely = min(axes, key=lambda ax: shape[ax])
    if shape[channel_axis] > 4 and 1 < shape[likely] <= 4:
        warnings.warn(
            f"channel_axis={channel_axis} of an image of shape {shape} gives "
            f"{shape[channel_axis]} channels of {shape[axes[0]]}x{shape[axes[1]]} planes; if "
            f"the channels are on axis {likely} (length {shape[likely]}), pass "
            f"channel_axis={likely}.",
            UserWarning,
            stacklevel=3,
        )



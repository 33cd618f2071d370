"""Dask arrays in, lazy dask arrays out: TRD chunk by chunk with an exact overlap.

The output at a pixel depends only on the input within the model's halo
(``n_stages * (kernel_size - 1)`` pixels), so ``map_overlap`` with that depth
along rows and columns and ``boundary='none'`` (chunks at the image border
keep the symmetric boundary rule of the whole image) reproduces the in-memory
result to float rounding, for any chunking.

What is decided per plane (the noise level when not given, the model of the
bank, the intensity center) is computed up front: the center as the plane's
mean, and its minimum and maximum (one pass over the input, which also looks for NaN and
infinite values; they decide, as in memory, whether a plane is copied and whether its stages
run in float64), the
noise estimate and the choice of model from a central crop of at most
``SAMPLE`` x ``SAMPLE`` pixels. The result therefore equals the in-memory one
exactly when planes are no larger than the crop, or when ``sigma`` is given and
the bank has one model; otherwise only those estimates may differ. The denoising itself stays lazy.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from ._choice import choice_record, sure_setting
from ._planes import denoise_plane, plane_settings

SAMPLE = 1024
SAMPLE_PLANES = 32  # volumes: the sample's planes (around the middle one)


def denoise_trd_dask(image, sigmas, channel_axis, opts, *, choices=None, unit=1.0,
                     layout=None):
    """A lazy dask array: ``image`` (dask) denoised with ``opts`` (:class:`._planes.PlaneOptions`,
    validated by ``denoise_trd``), ``sigmas`` one per channel (None: estimated). The settings
    of the planes are decided now (eagerly) and appended to ``choices`` when given (``unit``
    as in ``_denoise._denoise_planes``). ``layout`` (``_axes.AxesLayout`` with ``volume``):
    the (z, y, x) volumes are the units, with the halo of the volume models along z too."""
    try:
        import dask
        import dask.array as da
    except ImportError as exc:  # pragma: no cover - a dask array implies dask
        raise ImportError("dask input needs dask: pip install 'skimage-trd[dask]'") from exc
    out_dtype = opts.out_dtype

    # planes: every index of the axes other than the last two spatial ones
    volume = layout is not None and layout.volume
    if volume:
        spatial = [layout.axes.index(a) for a in "ZYX"]
    else:
        spatial = [ax for ax in range(image.ndim) if ax != channel_axis][-2:]
    lead = [ax for ax in range(image.ndim) if ax not in spatial]
    H, W = image.shape[spatial[-2]], image.shape[spatial[-1]]
    y0, x0 = max(0, (H - SAMPLE) // 2), max(0, (W - SAMPLE) // 2)
    crop = [slice(None)] * image.ndim
    crop[spatial[-2]] = slice(y0, y0 + SAMPLE)
    crop[spatial[-1]] = slice(x0, x0 + SAMPLE)
    if volume:
        Z = image.shape[spatial[0]]
        z0 = max(0, (Z - SAMPLE_PLANES) // 2)
        crop[spatial[0]] = slice(z0, z0 + SAMPLE_PLANES)
    finite = da.isfinite(image).all() if image.dtype.kind == "f" else True
    axes = tuple(spatial)
    sample, means, lows, highs, finite = dask.compute(
        image[tuple(crop)], image.astype(np.float64).mean(axis=axes), image.min(axis=axes),
        image.max(axis=axes), finite)  # one pass over the input for all

    if not finite:
        raise ValueError("image contains NaN or infinite values; replace them first "
                         "(for example with dask.array.nan_to_num).")
    sample = np.asarray(sample)
    means, lows, highs = np.asarray(means), np.asarray(lows), np.asarray(highs)

    # per-plane settings, decided as denoise_trd does, on the sample
    lead_shape = tuple(image.shape[ax] for ax in lead)
    settings = {}
    for idx in np.ndindex(*lead_shape):
        sel = [slice(None)] * image.ndim
        for ax, i in zip(lead, idx):
            sel[ax] = i
        plane = sample[tuple(sel)]
        channel = idx[lead.index(channel_axis)] if channel_axis is not None else None
        s = sigmas[channel or 0]
        # the whole plane's mean and extremes (so that the choice of copying it, and of
        # float64 stages, is the in-memory one); the rest from the sample
        extent = (float(lows[idx]), float(highs[idx]))
        settings[idx] = plane_settings(plane, s, opts, center=float(means[idx]) * opts.scale,
                                       extent=extent)
        if opts.select == "sure" and not volume:  # SURE on the plane or its tiles, read
            whole = image[tuple(sel)]

            def fetch(rows, cols, whole=whole):
                return np.asarray(whole[rows, cols].compute())

            # (the whole plane's result, when SURE made one, is not kept: the graph
            # recomputes it chunk by chunk)
            settings[idx] = replace(sure_setting(settings[idx], opts, (H, W), extent, fetch),
                                    output=None)
        if choices is not None:
            choices.append(choice_record(tuple(sel), channel_axis, settings[idx],
                                         unit / opts.scale))

    depth = {ax: 0 for ax in range(image.ndim)}
    if volume:  # per axis: z, y, x
        for ax, k in zip(spatial, range(3)):
            depth[ax] = max(m.halos[k] for m in opts.bank)
    else:
        depth[spatial[0]] = depth[spatial[1]] = max(m.halo for m in opts.bank)

    for ax in spatial:  # an axis shorter than the halo: one chunk along it, no overlap needed
        if depth[ax] >= image.shape[ax]:
            image = image.rechunk({ax: -1})
            depth[ax] = 0

    def block(x, block_info=None):
        loc = block_info[0]["array-location"]
        out = np.empty(x.shape, dtype=out_dtype)
        for local in np.ndindex(*(x.shape[ax] for ax in lead)):
            idx = tuple(loc[ax][0] + i for ax, i in zip(lead, local))
            sel = [slice(None)] * x.ndim
            for ax, i in zip(lead, local):
                sel[ax] = i
            sel = tuple(sel)
            out[sel] = denoise_plane(x[sel], settings[idx], opts)
        return out

    return da.map_overlap(block, image, depth=depth, boundary="none", trim=True,
                          dtype=out_dtype, meta=np.array((), dtype=out_dtype))

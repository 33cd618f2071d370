"""The bank's model for a plane chosen by Stein's unbiased risk estimate (``select='sure'``).

The range rule (:func:`._planes.plane_settings`) maps a plane's noise onto the model scale with
the plane's robust intensity range, judged against the training images' own
(:func:`._planes.training_sigma`; ``data_range``, when given, is not mapped), and takes the
nearest model. Whether a stronger or a weaker
model does better depends on the image (a text page, a brick texture and a clock face with a
flat wall want different ones at the same noise), and the clean image that would tell is not
there. SURE tells without it, for Gaussian noise of known level (:mod:`._sure`):

    SURE(f, y) = ||f(y) - y||^2 / N - s^2 + 2 s^2 / N * div f(y)

with the divergence from a Monte-Carlo probe (random signs ``b``; ``div f ~ b . (f(y + eps b)
- f(y)) / eps``), common to all candidates so that the comparison does not depend on it. When
the two best candidates are within :data:`CLOSE` standard errors of each other (judged from
the spread of their difference over blocks of the plane), up to :data:`MAX_PROBES` probes are
averaged (on whole planes; a sample's own error is larger than one probe's).

Candidates: the bank's noise levels that bracket the range rule's level for the plane, and the
level nearest to the one the dtype's range gives (1.0 for floats in [0, 1] and for integers
converted by ``img_as_float``; the type's range with ``preserve_range``), each model at the
intensity scale that matches its training noise to the plane's.

Where SURE is evaluated: the whole plane when it has at most :data:`WHOLE_PIXELS` pixels (the
chosen candidate's result is then the output: no further run); otherwise :data:`SAMPLE_TILES`
tiles of :data:`TILE` x :data:`TILE` pixels at pseudo-random places of a grid over the plane,
each run with its halo so that its pixels equal those of the whole plane's run. The probes and
tiles are seeded from the plane's shape, minimum and maximum (repeatable for a given input,
equal for a plane in memory and in dask whenever the range rule's level is: sigma given, or
planes within the dask path's sample). Planes below :data:`MIN_PIXELS` pixels keep the range
rule (SURE from a few thousand pixels is too noisy to choose with); clipped planes
(:func:`_clipped`: their noise is not Gaussian near the limits) take the candidate nearest the
dtype's level (8-bit data, floats in [0, 1]) or the range rule's model (other types). Clipping
is judged on the first region: the whole plane, or its first tile.

Measured (docs/sure.md): whole-plane SURE picks the truly better candidate nearly always; a
sample of a few per cent of a plane does not (its noise is about 0.1 s^2 per pixel, against
differences of 1e-3 s^2 between candidates on clean-looking images), which is why the sample
is large and the selection costs more than the denoising at 512 x 512.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import replace

import numpy as np

from ._arrays import _xp
from ._planes import denoise_plane, select_model
from ._sure import divergence_epsilon, probe_rng

WHOLE_PIXELS = 1 << 19
TILE = 192
SAMPLE_TILES = 4
MIN_PIXELS = 64 * 64
# a decision is close when the two best candidates' SURE sums differ by less than CLOSE
# standard errors (judged from blocks of BLOCK x BLOCK pixels, which overstates it: the blocks
# differ in content too); then more probes are drawn, up to MAX_PROBES (whole planes only)
CLOSE = 1.0
BLOCK = 64
MAX_PROBES = 3


def distinct_levels(bank):
    """Per noise level of ``bank`` its model with the most filters (the first of equals)."""
    best = {}
    for m in bank:
        if m.sigma not in best or m.n_filters > best[m.sigma].n_filters:
            best[m.sigma] = m
    return best


def candidates(bank, level, dtype_level=None):
    """The models SURE chooses between: the bank's levels bracketing ``level`` (the range
    rule's level: the training sigma it matches the plane with; beyond the bank's span, the
    extreme and its neighbour), and the level nearest ``dtype_level`` when given (``255 *
    sigma / dtype range``, deliberately not mapped: a full range, like ``data_range``)."""
    by_level = distinct_levels(bank)
    levels = sorted(by_level)
    if len(levels) < 2 or not 0 < level < math.inf:
        return [select_model(bank, level)]
    below = [s for s in levels if s <= level]
    above = [s for s in levels if s > level]
    chosen = set(below[-1:] + above[:1])
    if not below:
        chosen.add(levels[1])
    if not above:
        chosen.add(levels[-2])
    if dtype_level is not None and 0 < dtype_level < math.inf:
        chosen.add(min(levels, key=lambda s: abs(math.log(s / dtype_level))))
    return [by_level[s] for s in sorted(chosen)]


def dtype_range(opts, extent):
    """The intensity range the input's dtype implies, in working units: the type's for
    integers, 1 for floats in [0, 1] and 255 for floats on the 8-bit scale (judged from the
    plane's ``extent``, working units, noise included: [-7, 8] is a noisy [0, 1] image, a
    maximum above 32 and below 383 the 8-bit scale); None for other floats."""
    dt = np.dtype(opts.in_dtype)
    if dt.kind in "ui":
        if opts.preserve_range:
            info = np.iinfo(dt)
            return float(info.max) - float(info.min)
        return 1.0 if dt.kind == "u" else 2.0
    lo, hi = extent  # (noise reaches beyond the clean range, far beyond at strong noise)
    if -7 <= lo and hi <= 8:
        return 1.0
    if -128 <= lo and 32 < hi <= 383:  # floats on the 8-bit scale, e.g. image.astype(float)
        return 255.0
    return None


def plane_seed(shape, extent):
    """The seed of a plane's probes and tiles: from its shape and extreme values."""
    key = np.asarray([*shape, *extent], dtype=np.float64).tobytes()
    return zlib.crc32(key)


def sample_regions(shape, halo, rng):
    """(outer, inner) slice pairs: the whole plane, or SAMPLE_TILES tiles with their halo;
    ``inner`` is relative to ``outer``."""
    H, W = shape
    if H * W <= WHOLE_PIXELS:
        whole = (slice(0, H), slice(0, W))
        return [(whole, whole)]
    th, tw = min(TILE, H), min(TILE, W)
    gy, gx = H // th, W // tw
    cells = rng.permutation(gy * gx)[:SAMPLE_TILES]
    regions = []
    for c in sorted(int(c) for c in cells):
        i, j = divmod(c, gx)
        y0 = i * th + int(rng.integers(0, H - gy * th + 1))
        x0 = j * tw + int(rng.integers(0, W - gx * tw + 1))
        oy0, ox0 = max(0, y0 - halo), max(0, x0 - halo)
        oy1, ox1 = min(H, y0 + th + halo), min(W, x0 + tw + halo)
        regions.append(((slice(oy0, oy1), slice(ox0, ox1)),
                        (slice(y0 - oy0, y0 - oy0 + th), slice(x0 - ox0, x0 - ox0 + tw))))
    return regions


def sure_setting(setting, opts, shape, extent, fetch, progress=None):
    """Refine the range rule's ``setting`` of a plane by SURE.

    ``shape`` and ``extent`` are the plane's (rows, columns) and (minimum, maximum) as stored;
    ``fetch(rows, columns)`` returns the stored pixels of a rectangle of it (slices) as a NumPy
    or CuPy array (``plane[rows, columns]``; the dask path reads just those). ``progress(done,
    total)`` counts model runs. Returns the chosen setting, with the estimates of every
    candidate and, when the whole plane was evaluated, its result."""
    if setting.action != "denoise" or opts.select != "sure":
        return setting
    H, W = shape
    if H * W < MIN_PIXELS:
        return setting
    scale = opts.scale
    d = opts.data_range * scale if opts.data_range is not None else dtype_range(
        opts, (extent[0] * scale, extent[1] * scale))
    s = setting.noise
    dtype_level = None if d is None else 255.0 * s / d
    cands = candidates(opts.bank, setting.level, dtype_level)
    if len(cands) < 2:
        return setting
    seed = plane_seed((H, W), extent)
    rng = probe_rng(seed)
    halo = max(m.halo for m in cands)
    layout = sample_regions((H, W), halo, rng)
    settings = [replace(setting, model=m, gain=m.sigma / s) for m in cands]
    K = len(settings)
    # (more probes only for a whole plane: on a sample, the sample's error dominates)
    max_probes = MAX_PROBES if len(layout) == 1 else 1
    runs, most = 0, K * len(layout) * (1 + max_probes)

    def ran():
        nonlocal runs
        runs += 1
        if progress is not None:
            progress(runs, most)

    # per region: the stored pixels, the inner part, per candidate its result, its residual
    # term (f - y)^2 - s^2 and the sum of its divergence terms over the probes
    regions = []
    for r, (outer, inner) in enumerate(layout):
        y = fetch(*outer)
        if r == 0 and _clipped(y[inner], extent, opts):
            # clipped data hold clipped, not Gaussian, noise near the limits, where SURE
            # would favour strong models (measured: up to 0.45 dB lost on uint8 images): the
            # model nearest the dtype's level instead (on clipped uint8 test images the better
            # fixed rule on average) for 8-bit data and floats in [0, 1]; else the range rule
            if dtype_level is None or not _eight_bit(opts, d):
                return setting  # (a 12-bit camera in uint16: the type's range means nothing)
            m = select_model(cands, dtype_level)
            return replace(setting, model=m, gain=m.sigma / s)
        yw = y.astype(np.float64) * scale
        results = [denoise_plane(y, st, opts) for st in settings]
        for _ in results:
            ran()
        residual = [(f[inner].astype(np.float64) - yw[inner]) ** 2 - s * s for f in results]
        regions.append((y, inner, results, residual, [0.0] * K))
    kept = sum(_size(inner) for _, inner, *_ in regions)
    for n_probes in range(1, max_probes + 1):
        for y, inner, results, _, divergence in regions:
            xp = _xp(y)
            ih, iw = inner[0].stop - inner[0].start, inner[1].stop - inner[1].start
            eps = divergence_epsilon(s, _size(inner))
            b = np.zeros(y.shape)
            b[inner] = rng.integers(0, 2, size=(ih, iw)) * 2.0 - 1.0
            b = xp.asarray(b)
            probed = y.astype(np.float64) + (eps / scale) * b
            for k, st in enumerate(settings):
                fb = denoise_plane(probed, st, opts)
                ran()
                change = fb[inner].astype(np.float64) - results[k][inner].astype(np.float64)
                divergence[k] = divergence[k] + b[inner] * change / eps
        # every pixel's SURE term per candidate (the divergence averaged over the probes)
        terms = [[res[k] + 2.0 * s * s * div[k] / n_probes for _, _, _, res, div in regions]
                 for k in range(K)]
        mse = np.array([sum(float(t.sum()) for t in tk) for tk in terms]) / kept
        order = np.argsort(mse)
        gap, spread = _difference(terms[order[1]], terms[order[0]])
        if gap > CLOSE * spread:
            break
    best = int(order[0])
    if progress is not None and runs < most:
        progress(most, most)
    estimates = tuple((m.name, float(v)) for m, v in zip(cands, mse))
    output = regions[0][2][best] if len(layout) == 1 else None
    return replace(settings[best], estimates=estimates, output=output)


def _size(inner):
    """Pixels of a (rows, columns) pair of slices."""
    return (inner[0].stop - inner[0].start) * (inner[1].stop - inner[1].start)


def _eight_bit(opts, d):
    """Whether the dtype range ``d`` (working units) is that of 8-bit data or of floats in
    [0, 1]: the ranges the fixed dtype rule was measured on."""
    dt = np.dtype(opts.in_dtype)
    if dt.kind in "ui":
        return dt.itemsize == 1
    return d in (1.0, 255.0)


def _clipped(y, extent, opts):
    """Whether more than 0.1 % of the pixels ``y`` (as stored) sit at a clipping limit: an
    integer type's limits, or for floats the limits a conversion clips to (0 and 1 for
    floats in [0, 1], 0 and 255 on the 8-bit scale; other floats are not judged: their
    repeated extreme values may be discrete data, such as stabilised photon counts)."""
    dt = np.dtype(opts.in_dtype)
    if dt.kind in "ui" and y.dtype.kind in "ui":
        info = np.iinfo(dt)
        limits = (info.min, info.max)
    else:
        d = dtype_range(opts, (extent[0] * opts.scale, extent[1] * opts.scale))
        if d is None or opts.scale != 1.0:
            return False
        limits = (0.0, d)
    n = y.size
    return bool(int((y == limits[0]).sum()) > 1e-3 * n or int((y == limits[1]).sum()) > 1e-3 * n)


def _difference(worse, better):
    """The difference of two candidates' SURE sums, and its standard error judged from its
    spread over blocks of BLOCK x BLOCK pixels (the terms of each region, a list)."""
    sums = []
    for a, b in zip(worse, better):
        d = a - b
        H, W = d.shape
        for i in range(0, H, BLOCK):
            for j in range(0, W, BLOCK):
                sums.append(float(d[i:i + BLOCK, j:j + BLOCK].sum()))
    sums = np.asarray(sums)
    if sums.size < 2:
        return float(sums.sum()), 0.0
    return float(sums.sum()), float(np.sqrt(sums.size) * sums.std(ddof=1))


def choice_record(index, channel_axis, setting, unit):
    """What ``denoise_trd(..., return_choices=True)`` reports for one plane: its index (the
    plane's position in the leading axes, the channel's included), what was done to it, the
    model, the noise level and, with ``select='sure'``, the estimated mean squared error of
    every candidate; ``unit`` converts working units to the image's units."""
    lead = tuple(i for i in index if not isinstance(i, slice))
    return {
        "plane": lead,
        "action": setting.action,
        "model": None if setting.model is None else setting.model.name,
        "sigma": setting.noise * unit,
        "estimated_mse": {name: mse * unit * unit for name, mse in setting.estimates},
    }

"""One plane: the choice of model and intensity mapping (:func:`plane_settings`), and the
model run on the plane or any rectangle of it (:func:`denoise_plane`).

Shared by the in-memory path (:mod:`._denoise`) and the dask path (:mod:`._dask`), which
decides the settings from a sample of each plane and then denoises chunk by chunk.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import numpy as np

from ._arrays import _xp, float_dtype
from ._model import TRDModel
from .kernels import numba_cpu as nk
from .kernels.engine import run_model
from .kernels.numba_cpu import numba_threads, smooth_gaussian

# Intensity level the model scale is centred on: models see images in [0, 255].
MODEL_MID = 127.5


# Noise below 1e-7 of the plane's spread is left alone (float32 resolves about 1e-7).
NEGLIGIBLE_NOISE = 1e7

# Planes whose spread exceeds their noise this many times run the stages in float64: on the
# model's scale their values reach spread / sigma * s_m from the mid level, where float32's
# rounding, relative to the noise s_m, is about spread / sigma * 6e-8 (6e-3 of the noise here).
FLOAT32_SPREAD = 1e5


# The range rule's level (``255 * sigma / robust_range``) of the training data: per training noise
# level s (0..255 scale), the median over train400 of the level of its noisy images, whose robust
# range is below 255 (about 186 clean, widened by the noise). A model trained at s is at home at
# that level, not at s. Measured by ``python training/range_levels.py``.
TRAINING_RANGE_LEVELS = ((5.0, 6.9), (10.0, 13.7), (15.0, 20.5), (25.0, 33.7), (35.0, 46.3),
                         (50.0, 64.5), (75.0, 91.2), (100.0, 114.6), (150.0, 149.8),
                         (200.0, 176.1))


def training_sigma(range_level):
    """The training noise level (0..255 scale) whose training images have the range rule's
    level ``range_level``: :data:`TRAINING_RANGE_LEVELS` inverted, linear in log-log between its
    entries and proportional beyond them (0 and inf stay)."""
    if not 0 < range_level < math.inf:
        return range_level
    sig, lev = zip(*TRAINING_RANGE_LEVELS)
    if range_level <= lev[0]:
        return range_level * sig[0] / lev[0]
    if range_level >= lev[-1]:
        return range_level * sig[-1] / lev[-1]
    x = np.interp(math.log(range_level), np.log(lev), np.log(sig))
    return float(math.exp(x))


def select_model(bank, sigma_255):
    """The model of ``bank`` whose training sigma is nearest (in ratio) to ``sigma_255``."""
    if not 0 < sigma_255 < np.inf:  # no intensity range, or no noise: the extremes
        return max(bank, key=lambda m: (m.sigma, m.n_filters)) if sigma_255 > 0 else \
            min(bank, key=lambda m: (m.sigma, -m.n_filters))
    return min(bank, key=lambda m: (abs(math.log(m.sigma / sigma_255)), -m.n_filters))


def robust_range(plane):
    """Spread of intensities (0.5 to 99.5 percentile) of a plane smoothed against noise
    (a CuPy plane on its GPU)."""
    xp = _xp(plane)
    if xp is np and plane.ndim != 2:  # (a volume)
        from scipy.ndimage import gaussian_filter

        smooth = gaussian_filter(np.asarray(plane, dtype=np.float64), 1.5, mode="reflect")
    elif xp is np:
        smooth = smooth_gaussian(plane, 1.5)  # scipy's gaussian_filter, 'reflect', to rounding
    else:
        from cupyx.scipy.ndimage import gaussian_filter

        smooth = gaussian_filter(xp.asarray(plane, dtype=xp.float64), 1.5, mode="reflect")
    # (the smoothed copy is ours to reorder: no second copy for the percentiles)
    lo, hi = xp.percentile(smooth.reshape(-1), xp.asarray([0.5, 99.5]),
                           overwrite_input=True).tolist()
    return float(hi - lo)


def estimate_plane_sigma(plane):
    """Noise estimate of one 2-D plane; 0 where the plane is too small to tell."""
    from skimage.restoration import estimate_sigma

    with warnings.catch_warnings():
        # per-plane calls: skimage's colour hint and empty-slice warnings do not apply
        warnings.simplefilter("ignore")
        s = float(estimate_sigma(np.asarray(plane, dtype=np.float64)))
    return s if np.isfinite(s) else 0.0


@dataclass(frozen=True)
class PlaneSetting:
    """What happens to one plane: 'copy' it, replace it by its 'mean', or 'denoise' it."""

    action: str
    center: float
    model: TRDModel | None = None
    gain: float = 1.0
    wide: bool = False  # the stages in float64 (``exact``, or a spread above FLOAT32_SPREAD)
    noise: float = 0.0  # the plane's noise level, working units (given or estimated)
    level: float = float("nan")  # the training noise level the range rule matches it with (0..255)
    # select='sure': (model name, estimated mean squared error in working units) per candidate,
    # and the chosen model's result on the whole plane when SURE evaluated the whole plane
    estimates: tuple = ()
    output: object = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class PlaneOptions:
    """What every plane of one ``denoise_trd`` call shares: validated once by ``denoise_trd``,
    then used as it is by the in-memory, tiled and dask paths."""

    bank: tuple  # the models to choose from (TRDModel)
    in_dtype: np.dtype  # the input image's dtype: units, compute dtype, clipping
    preserve_range: bool = False
    backend: str = "numba"  # resolved: 'numba', 'numpy' or 'cupy'
    num_threads: int | None = None
    tile_shape: tuple | None = None
    n_stages: int | None = None
    data_range: float | None = None  # in the image's own units
    exact: bool = False
    select: str = "range"  # how a model of the bank is chosen per plane: 'range' or 'sure'

    @property
    def scale(self) -> float:
        """The image's units -> working units (``img_as_float``'s scale; 1 for floats)."""
        return float_dtype(self.in_dtype, self.preserve_range)[1]

    @property
    def out_dtype(self) -> np.dtype:
        return float_dtype(self.in_dtype, self.preserve_range)[0]

    @property
    def compute_dtype(self) -> np.dtype:
        """The dtype the stages run in: float64 with ``exact``, float32 otherwise, float64
        images included (float32 arithmetic is within 0.01 grey levels of exact evaluation:
        docs/performance.md); planes whose noise is tiny beside their spread are run in
        float64 whatever this says (:data:`FLOAT32_SPREAD`)."""
        return np.dtype(np.float64 if self.exact else np.float32)

    @property
    def map_dtype(self) -> np.dtype:
        """The dtype of the affine maps onto the model's scale and back: the wider of the
        compute dtype and the input's (float64 for float64 and 32/64-bit integer images, whose
        values float32 cannot hold exactly)."""
        return np.promote_types(self.compute_dtype, self.in_dtype)


def clip_limits(in_dtype, preserve_range):
    in_dtype = np.dtype(in_dtype)
    if in_dtype.kind == "f":
        return None
    if preserve_range:
        info = np.iinfo(in_dtype)
        return float(info.min), float(info.max)
    return (-1.0 if in_dtype.kind == "i" else 0.0), 1.0


def plane_settings(plane, sigma, opts, center=None, extent=None):
    """Decide for one plane (as stored; working units are ``plane * opts.scale``) how it is
    denoised, with a model of ``opts.bank``.

    ``sigma`` is in the image's own units (None: estimated here); ``center`` (working units)
    defaults to the plane's mean, ``extent`` (its minimum and maximum, as stored) to the
    plane's own (the dask path passes the whole plane's). Float64 copies of the plane are
    made only to estimate sigma or the intensity range, when those are needed; a CuPy
    plane's are made on its GPU, except for the sigma estimate.
    """
    scale, bank, data_range = opts.scale, opts.bank, opts.data_range
    # statistics where the plane is (a CuPy plane's on its GPU: only numbers come back)
    xp = _xp(plane)
    plane = xp.asarray(plane)
    if sigma is None:  # (scikit-image's estimator runs on the CPU)
        host = plane.get() if xp is not np else plane
        s = estimate_plane_sigma(host.astype(np.float64) * scale)
    else:
        s = sigma * scale
    center = float(plane.mean(dtype=xp.float64)) * scale if center is None else float(center)
    lo, hi = (float(plane.min()), float(plane.max())) if extent is None else extent
    spread = max(hi * scale - center, center - lo * scale)
    if s == 0 or spread == 0 or spread / s > NEGLIGIBLE_NOISE:
        # no noise, a constant plane (which the stage map leaves as it is), or noise
        # too weak to matter (and to rescale onto the model's scale without overflow)
        return PlaneSetting("copy", center, noise=s)
    if spread / s < 1.0 / NEGLIGIBLE_NOISE:
        # noise ten million times the signal: nothing but the mean is left to estimate
        return PlaneSetting("mean", center, noise=s)
    level = float("nan")
    if len(bank) == 1:
        m = bank[0]
    else:
        if data_range is not None:
            r = data_range * scale
        else:
            r = robust_range(plane) * scale  # (linear in the scale: no scaled copy)
        level = 255.0 * s / r if r > 0 else np.inf
        if data_range is None:  # judged like the models' training images were
            level = training_sigma(level)
        m = select_model(bank, level)
    wide = bool(opts.exact) or spread / s > FLOAT32_SPREAD
    return PlaneSetting("denoise", center, m, m.sigma / s, wide, noise=s, level=level)


def denoise_plane(plane, setting, opts, progress=None):
    """Apply a plane's setting to the plane, or to any rectangular part of it (dask blocks).

    The model runs in float32, or float64 where ``setting.wide`` says (``exact``, or a plane
    whose noise is tiny beside its spread); the affine maps onto the model's scale and back
    run in the wider of that and the plane's dtype, so that a float64 plane keeps float64
    resolution around its mean and a 32-bit integer plane its exact values."""
    backend, scale = opts.backend, opts.scale
    xp = np if backend != "cupy" else _xp(plane)
    cdt = np.dtype(np.float64 if setting.wide else np.float32)
    wdt = np.promote_types(cdt, plane.dtype)
    if (setting.action == "denoise" and xp is np and wdt == np.float64 and cdt == np.float32
            and plane.ndim == 2):
        return _denoise_fused(plane, setting, opts, progress)
    # in place throughout: one plane-sized buffer here (two for a float64 plane computed in
    # float32), plus the engine's three
    x = plane.astype(wdt)
    x *= wdt.type(scale)
    if setting.action == "copy":
        return x
    if setting.action == "mean":
        x[...] = setting.center
        return x
    x -= wdt.type(setting.center)
    x *= wdt.type(setting.gain)
    x += wdt.type(MODEL_MID)
    f = x.astype(cdt, copy=False)
    if xp is np:
        f = np.ascontiguousarray(f)
    with numba_threads(opts.num_threads if backend == "numba" else None):
        res = run_model(f, setting.model, backend=backend, n_stages=opts.n_stages,
                        tile_shape=opts.tile_shape, exact=bool(opts.exact) and backend != "numpy",
                        progress=progress)
    if res.dtype != wdt:
        x[...] = res  # (x is free again: back to the wider dtype without a new buffer)
        res = x
    res -= wdt.type(MODEL_MID)
    res /= wdt.type(setting.gain)
    res += wdt.type(setting.center)
    clip = clip_limits(opts.in_dtype, opts.preserve_range)
    if clip is not None:
        xp.clip(res, *clip, out=res)
    return res


def _denoise_fused(plane, setting, opts, progress):
    """:func:`denoise_plane` for a NumPy plane computed in float32 with float64 maps: each map
    one pass (the same float64 steps in the same order, so the same numbers), no float64 copy."""
    f = np.empty(plane.shape, np.float32)
    backend = opts.backend
    clip = clip_limits(opts.in_dtype, opts.preserve_range)
    lo, hi = (float(clip[0]), float(clip[1])) if clip is not None else (1.0, 0.0)
    out = np.empty(plane.shape, np.float64)
    with numba_threads(opts.num_threads if backend == "numba" else None):
        nk.to_model_scale(plane, float(opts.scale), float(setting.center), float(setting.gain),
                          MODEL_MID, f)
        res = run_model(f, setting.model, backend=backend, n_stages=opts.n_stages,
                        tile_shape=opts.tile_shape, exact=bool(opts.exact) and backend != "numpy",
                        progress=progress)
        nk.from_model_scale(res, MODEL_MID, float(setting.gain), float(setting.center), lo, hi,
                            out=out)
    return out


def check_sigma(sigma, n_channels):
    if sigma is None:
        return [None] * n_channels
    values = np.atleast_1d(np.asarray(sigma, dtype=np.float64)) if not np.isscalar(sigma) else None
    if values is None:
        try:
            values = np.array([float(sigma)])
        except (TypeError, ValueError) as exc:
            raise TypeError(f"sigma must be a number, a sequence of numbers or None, got {sigma!r}") from exc
    if values.ndim != 1 or values.size not in (1, n_channels):
        raise ValueError(
            f"sigma must be one value or one per channel ({n_channels}); got {np.shape(sigma)}"
        )
    if not np.all(np.isfinite(values)) or np.any(values < 0):
        raise ValueError(f"sigma must be finite and non-negative, got {sigma!r}")
    if values.size == 1:
        values = np.repeat(values, n_channels)
    return [float(v) for v in values]

"""The work behind the widgets, free of Qt and napari so that it can be tested on its own.

Every job takes a ``progress(done, total)`` callback and a ``cancel`` event; a set event stops
the job at the next stage (or training iteration) with :class:`Cancelled`, leaving nothing
behind.
"""

from __future__ import annotations

import os
import re
import threading
from pathlib import Path

import numpy as np

import skimage_trd
from skimage_trd import ModelFileError, TRDModel

AUTO = "auto (model bank)"
USER_MODELS_ENV = "SKIMAGE_TRD_USER_MODELS"


class Cancelled(Exception):
    """The user cancelled the job."""


def user_models_dir() -> Path:
    """Where models trained in napari are saved (``SKIMAGE_TRD_USER_MODELS`` overrides)."""
    env = os.environ.get(USER_MODELS_ENV)
    if env:
        return Path(env)
    return skimage_trd.model_cache_dir() / "user-models"


def model_choices(task: str) -> list[str]:
    """Registered models of a task, then the user's own (file paths), for the model menus."""
    names = skimage_trd.list_models(task)
    own = []
    folder = user_models_dir()
    if folder.is_dir():
        for path in sorted(folder.glob("*.npz")):
            try:
                if TRDModel.load(path).task == task:
                    own.append(str(path))
            except ModelFileError:
                continue
    return [AUTO, *names, *own]


def _model_arg(choice):
    return None if choice in (None, "", AUTO) else choice


def _ticker(progress, cancel):
    def tick(done, total):
        if cancel is not None and cancel.is_set():
            raise Cancelled()
        if progress is not None:
            progress(done, total)

    return tick


def _middle_plane(data, channel_axis=None):
    """The middle 2-D plane of a stack (its first channel), as float64."""
    plane = np.asarray(data)
    if channel_axis is not None:
        plane = np.moveaxis(plane, channel_axis, -1)[..., 0]
    while plane.ndim > 2:
        plane = plane[plane.shape[0] // 2]
    return plane.astype(np.float64)


def estimate_noise(data, channel_axis=None) -> float:
    """Noise level of the data (the middle plane of a stack), in its own units."""
    from skimage.restoration import estimate_sigma

    return float(estimate_sigma(_middle_plane(data, channel_axis)))


def estimate_photons(data, *, offset=0.0, channel_axis=None):
    """``(gain, read_noise)`` of photon-counting data (the middle plane of a stack, its first
    channel), in camera units; ValueError (with the reason) when they cannot be estimated."""
    return skimage_trd.estimate_poisson_gaussian(_middle_plane(data, channel_axis),
                                                 offset=offset)


SELECT = {"intensity range": "range", "SURE (estimated error)": "sure"}


def volume_axes(ndim, channel_axis=None):
    """The ``axes`` of a layer denoised as volumes: its last three spatial axes are (z, y, x),
    any before them time points (``'TZYX'``), channels last for RGB layers."""
    spatial = ndim - (channel_axis is not None)
    if spatial < 3:
        raise ValueError("a volume needs three spatial axes (z, y, x): this layer is 2-D")
    axes = "S" * max(0, spatial - 4) + "T" * (spatial > 3) + "ZYX"
    return axes + ("C" if channel_axis is not None else "")


def denoise(data, *, sigma=None, model=AUTO, backend="auto", channel_axis=None, progress=None,
            cancel=None, keep_dtype=False, select="range", choices=None, adapt=False,
            volume=False, spacing=None):
    """Denoise layer data (NumPy or dask; nD as 2-D planes). ``sigma`` None or 0: estimated.
    ``keep_dtype``: the result in the layer's dtype (integers rounded and clipped).
    ``select``: how the bank's model is chosen ('range' or 'sure'); what was chosen for every
    plane is appended to ``choices`` (a list) when given. ``adapt``: the model is first
    fine-tuned on the layer by SURE (``denoise_trd(..., adapt=True)``; a dask layer is read
    into memory for it; colour layers are denoised channel by channel then). ``volume``: the
    last three axes are (z, y, x) volumes denoised with the volume models (:func:`volume_axes`),
    ``spacing`` their voxel size (dz, dy, dx), e.g. the layer's scale."""
    if sigma is not None and sigma <= 0:
        sigma = None
    extra = {}
    if volume:
        if not type(data).__module__.startswith("dask"):  # (dask volumes stay lazy)
            data = np.asarray(data)
        extra = dict(axes=volume_axes(data.ndim, channel_axis), spacing=spacing)
        channel_axis = None  # (the axes say where the channels are)
    if adapt:
        data = np.asarray(data)  # (adapting trains on the whole layer)
        extra.update(adapt=True, color_transform="none")
    out, chosen = skimage_trd.denoise_trd(
        data, sigma, model=_model_arg(model), channel_axis=channel_axis,
        backend={"CPU": "numba", "GPU": "cupy"}.get(backend, "auto"), preserve_range=True,
        progress=None if type(data).__module__.startswith("dask") else _ticker(progress, cancel),
        preserve_dtype=keep_dtype, select=select, return_choices=True, **extra,
    )
    if choices is not None:
        choices.extend(chosen)
    return out


def _peak(data):
    """The intensity range a PSNR of ``data`` is stated against: the integer type's (8 bits:
    255), 1 for (noisy) floats around [0, 1] and 255 on the 8-bit scale (as
    ``denoise_trd(select='sure')`` judges them), else the data's own extent."""
    dt = np.dtype(data.dtype)
    if dt.kind in "ui":
        return float(np.iinfo(dt).max) - (float(np.iinfo(dt).min) if dt.kind == "i" else 0.0)
    lo, hi = float(np.min(data)), float(np.max(data))
    if -7 <= lo and hi <= 8:
        return 1.0
    if -128 <= lo and 32 < hi <= 383:
        return 255.0
    return max(hi - lo, 1e-300)


def choice_summary(choices, data):
    """One line for the widget: the model(s) chosen and, from SURE, the estimated PSNR of the
    result (against the range of :func:`_peak`; no clean image involved)."""
    used = [c for c in choices if c["model"] is not None]
    if not used:
        return "no plane needed denoising"
    names = {}
    for c in used:
        names[c["model"]] = names.get(c["model"], 0) + 1
    text = ", ".join(n if k == 1 and len(used) == 1 else f"{n} x{k}" for n, k in names.items())
    mses = [c["estimated_mse"][c["model"]] for c in used if c["estimated_mse"]]
    if not mses:
        return text + " (intensity-range rule)"
    mse = float(np.mean(mses))
    if mse <= 0:  # SURE is unbiased, not positive: a very clean result can come out below 0
        return text + " (SURE; estimated error below its resolution)"
    psnr = 10 * np.log10(_peak(data) ** 2 / mse)
    return text + f" (SURE; estimated PSNR {psnr:.1f} dB{' mean' if len(mses) > 1 else ''})"


def denoise_photons(data, *, gain=None, read_noise=None, offset=0.0, model=AUTO,
                    backend="auto", channel_axis=None, progress=None, cancel=None,
                    keep_dtype=False, estimate_from=None, select="range", axes=None,
                    spacing=None):
    """Denoise photon-counting layer data (Poisson-Gaussian noise) in camera units with
    :func:`skimage_trd.denoise_trd_poisson`. ``gain`` or ``read_noise`` None: estimated, per
    plane and channel of ``data``, or, given ``estimate_from`` (a whole 2-D plane, channels
    on ``channel_axis``, of which ``data`` is a part: the preview's visible region), from that
    plane's channels, so that a crop is denoised as it would be in its plane. Dask data is
    read (the result is not lazy). ``keep_dtype``: the result in the layer's dtype."""
    if cancel is not None and cancel.is_set():  # cancelled before it started: nothing read
        raise Cancelled()
    tick = _ticker(progress, cancel)
    data = data.get() if type(data).__module__.startswith("cupy") else np.asarray(data)
    kw = dict(offset=offset, model=_model_arg(model),
              backend={"CPU": "numba", "GPU": "cupy"}.get(backend, "auto"),
              preserve_dtype=keep_dtype, select=select)
    if axes is not None:  # volumes (axes with a Z): estimated per volume by the library
        return skimage_trd.denoise_trd_poisson(data, gain, read_noise, axes=axes,
                                               spacing=spacing, progress=tick, **kw)
    if estimate_from is None or (gain is not None and read_noise is not None):
        return skimage_trd.denoise_trd_poisson(data, gain, read_noise, channel_axis=channel_axis,
                                               progress=tick, **kw)
    source = np.asarray(estimate_from)
    if channel_axis is None:
        pairs = [(data, source)]
    else:
        pairs = list(zip(np.moveaxis(data, channel_axis, 0), np.moveaxis(source, channel_axis, 0)))
    out = []
    for k, (part, whole) in enumerate(pairs):
        g, r = skimage_trd.estimate_poisson_gaussian(np.asarray(whole, np.float64), offset=offset)
        out.append(skimage_trd.denoise_trd_poisson(
            part, g if gain is None else gain, r if read_noise is None else read_noise,
            progress=lambda done, total, k=k: tick(k * total + done, len(pairs) * total), **kw))
    return out[0] if channel_axis is None else np.stack(out, axis=channel_axis)


def jpeg_tables(path):
    """The luma quantisation table of a JPEG file, or None if ``path`` is not a JPEG."""
    if not path:
        return None
    try:
        from PIL import Image

        with Image.open(path) as im:
            if im.format != "JPEG":
                return None
            return np.asarray(im.quantization[0], dtype=np.float64).reshape(8, 8)
    except (OSError, ValueError):
        return None


def deblock(data, *, quality=None, qtable=None, model=AUTO, rgb=False, progress=None,
            cancel=None):
    """Deblock decoded JPEG layer data (RGB in the last axis if ``rgb``), in the layer's units:
    integers holding 0..255, or floats on the 0..255 or the 0..1 scale (told apart by the
    maximum). Other values are refused by :func:`skimage_trd.deblock_trd`. Dask data gives a
    lazy result (as for denoising)."""
    lazy = type(data).__module__.startswith("dask")
    data = data if lazy else np.asarray(data)
    # preserve_range=None: deblock_trd tells the 0..1 and the 0..255 float scales apart and
    # answers on the layer's own scale
    out = skimage_trd.deblock_trd(data, quality, qtable=qtable, model=_model_arg(model),
                                  channel_axis=-1 if rgb else None, preserve_range=None,
                                  progress=None if lazy else _ticker(progress, cancel))
    return np.rint(out).astype(np.uint8) if data.dtype == np.uint8 else out  # dask: lazily


def read_folder(folder):
    """The 2-D planes of a folder of training images (stacks and zarr arrays split into
    planes), each in its stored units (no scaling of 16-bit data)."""
    from skimage_trd.train import load_image_folder

    return load_image_folder(folder, raw=True)[0]


def train(clean, *, noisy=None, sigma, kernel_size=5, n_stages=3, greedy_iterations=30,
          joint_iterations=None, name="my-trd-model", start_from=None, backend="numba",
          progress=None, cancel=None, log=None, loss="mse", photons=None,
          on_step=None) -> Path:
    """Train a denoising model from a clean layer (noise added, seed 0) or a clean/noisy pair
    (``loss='mse'``), from a noisy layer alone (``'sure'``: ``clean`` holds the noisy data,
    Gaussian noise of ``sigma``), or from two noisy acquisitions of one scene (``'n2n'``:
    ``clean`` the first, ``noisy`` the second), through :func:`skimage_trd.train.fit` (the
    front door the command line and scripts use, with its defaults). ``photons``
    (``loss='sure'``): a dict of ``gain``, ``read_noise`` (None: estimated per plane) and
    ``offset``: the layer holds photon-counting data in camera units, stabilised by the
    generalised Anscombe transform (``sigma`` is then the model's noise level on the [0, 255]
    scale, e.g. 25), and the model is for ``denoise_trd_poisson(..., model=)``, the Denoise
    widget's photon-counting mode.

    ``clean`` is a layer's data (a 2-D image or a stack of planes) or a list of 2-D planes of
    any sizes (a folder's images). Intensities are mapped to the [0, 255] training scale by
    the range of ``clean`` (all of its planes); ``sigma`` is in its units. ``on_step``
    receives each iteration's :class:`skimage_trd.train.TrainingStep` (the widget's loss
    plot). With ``start_from`` (a model name or file) the model is fine-tuned (``fit``'s
    defaults for fine-tuning unless ``joint_iterations`` is given: by SURE, Adam judged by a
    twin run (SURE of the whole adaptation), the best parameters kept, the starting model returned
    unchanged if nothing beats it); ``kernel_size``, ``n_stages`` and ``greedy_iterations``
    are those of a new model. The model is saved into :func:`user_models_dir` as
    ``<name>.npz`` (``<name>-2.npz``, ... if taken; nothing is overwritten) and its path
    returned.
    """
    from skimage_trd.train import fit  # (the library loads on first use)

    check_model_name(name)
    if isinstance(clean, (list, tuple)):  # 2-D planes, possibly of different sizes
        planes = [np.asarray(p, dtype=np.float64) for p in clean]
        if not planes or any(p.ndim != 2 for p in planes):
            raise ValueError("training images must be 2-D planes")
        shape = None
    else:
        clean = np.asarray(clean, dtype=np.float64)
        if clean.ndim < 2:
            raise ValueError(f"the clean layer must be an image, got shape {clean.shape}")
        planes, shape = list(clean.reshape(-1, *clean.shape[-2:])), clean.shape
    if photons is not None and loss != "sure":
        raise ValueError("photon-counting data are trained with SURE (noisy images alone)")
    if not all(np.isfinite(p).all() for p in planes):
        raise ValueError("the training data hold NaN or infinite values")
    if loss == "sure" and noisy is not None:
        raise ValueError("SURE trains on the noisy layer alone; pass no second layer")
    if loss == "n2n" and noisy is None:
        raise ValueError("Noise2Noise needs a second noisy layer of the same scene")
    lo, hi = min(float(p.min()) for p in planes), max(float(p.max()) for p in planes)
    if hi <= lo:
        raise ValueError("the clean layer is constant; it has nothing to learn from")
    init = None if start_from in (None, "", AUTO) else skimage_trd.load_model(start_from)
    if photons is not None:  # raw camera units: fit stabilises them (sigma: the model's)
        images, lo, scale, shift = planes, 0.0, 1.0, 0.0
    else:
        # onto the training scale: a new model's by the layer's range (0..255); a model to
        # fine-tune's by its noise level, as denoise_trd maps planes onto it (no rescaled start)
        shift = 0.0
        scale = 255.0 / (hi - lo)
        if init is not None and init.task == "denoise" and init.sigma:
            scale = float(init.sigma) / float(sigma)
            lo, shift = float(np.mean([p.mean() for p in planes])), 127.5
        images = [(p - lo) * scale + shift for p in planes]
    targets = None
    if noisy is not None and loss != "sure":
        noisy = np.asarray(noisy, dtype=np.float64)
        if noisy.shape != shape:
            raise ValueError(f"the two layers differ in shape: {shape} and {noisy.shape}")
        targets = [(p - lo) * scale + shift for p in noisy.reshape(-1, *noisy.shape[-2:])]
    tick = _ticker(progress, cancel)

    def step_done(step):  # after every iteration (raises Cancelled when asked to stop)
        if on_step is not None:
            on_step(step)
        tick(step.iteration, step.total)

    def on_log(line):
        if cancel is not None and cancel.is_set():  # (before the first iteration, too)
            raise Cancelled()
        if log is not None:
            log(line)

    model = fit(images, sigma=float(sigma) * scale, loss=loss, targets=targets, init=init,
                kernel_size=kernel_size, n_stages=n_stages, greedy_iterations=greedy_iterations,
                iterations=joint_iterations, photons=photons, backend=backend, log=on_log,
                callback=step_done, data_source="napari layer",
                command="napari widget 'Train TRD'")
    folder = user_models_dir()
    folder.mkdir(parents=True, exist_ok=True)
    path = free_model_path(folder, name)
    model.name = path.stem
    return model.save(path)


def default_iterations(fine_tuning):
    """The joint iterations :func:`skimage_trd.train.fit` runs when none are given."""
    from skimage_trd.train import DEFAULTS

    return DEFAULTS["adapt" if fine_tuning else "new"]["iterations"]


_MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


def check_model_name(name):
    """Refuse model names that are not plain file names (they become ``<name>.npz``)."""
    if not _MODEL_NAME.fullmatch(name or ""):
        raise ValueError(f"model name {name!r}: use letters, digits, '.', '_' and '-' (up to "
                         "100, starting with a letter or digit); it becomes the file name")


def free_model_path(folder, name):
    """``folder/name.npz``, or ``name-2.npz``, ``name-3.npz``, ... when taken: never overwrite."""
    path, k = Path(folder) / f"{name}.npz", 2
    while path.exists():
        path, k = Path(folder) / f"{name}-{k}.npz", k + 1
    return path


def new_event():
    return threading.Event()

"""Training data: image folders, stacks and zarr arrays read as planes on the [0, 255]
scale, added noise, JPEG pairs, photon-counting images made fit for SURE, the held-out pixels,
and the batch of a run (:func:`_prepare_data`)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .._batch import is_zarr_dir, open_zarr_array
from .._jpeg import QuantizationConstraint, jpeg_roundtrip, quantized_coefficients
from .._poisson import estimate_poisson_gaussian, generalized_anscombe
from ..kernels.engine import model_fingerprint

__all__ = ["load_image_folder", "add_noise", "jpeg_pairs", "photon_training_images",
           "holdout_weights"]

# held-out pixels come in square blocks of this side; only their inner part, a receptive
# field's reach from the pixels the loss sees, is scored (the loss of a training pixel depends
# on the noisy pixels within that reach, so the parameters learn nothing of those)
HOLDOUT_BLOCK = 64

IMAGE_SUFFIXES = {".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp", ".pgm", ".npy"}


# ------------------------------------------------------------------------------------- data
def _training_sources(path):
    """The image files and zarr arrays that ``path`` (a folder, one file or one zarr array)
    holds, sorted by name."""
    def is_zarr(p):
        return p.is_dir() and (is_zarr_dir(p) or p.suffix.lower() == ".zarr")

    if is_zarr(path) or (path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES):
        return [path]
    if not path.is_dir():
        raise ValueError(f"training data {str(path)!r} does not exist (a folder of images, one "
                         "image or stack file, or a zarr array)")
    sources = sorted(p for p in path.iterdir()
                     if is_zarr(p) or (p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES))
    if not sources:
        raise ValueError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}, or zarr arrays) in "
                         f"{path}")
    return sources


def load_image_folder(folder, *, min_size=None, raw=False) -> tuple[list[np.ndarray], list[str]]:
    """Read every image of ``folder`` (sorted by name) as gray float64 on the [0, 255] scale.

    ``folder`` may also be one image or stack file, or one zarr array. Colour images are
    converted with ITU-R 601 luma weights; 16-bit images divided by 257; float images (TIFF,
    NumPy ``.npy``, zarr) taken as they are; with ``raw`` every value as stored (camera units,
    for photon-counting data). Stacks (multi-page TIFF, 3-D ``.npy`` whose last axis is not 3
    or 4 colours, zarr arrays of any number of axes: the last two are rows and columns) give
    one image per plane, named ``file:plane``. Unreadable files and images smaller than
    ``min_size`` (rows and columns) raise ``ValueError`` naming the file.
    """
    from skimage.color import rgb2gray
    from skimage.io import imread

    images, names = [], []
    for path in _training_sources(Path(folder)):
        zarr_array = path.is_dir()
        try:
            if zarr_array:
                img = open_zarr_array(path)[...]
            elif path.suffix.lower() == ".npy":
                img = np.load(path, allow_pickle=False)
            else:
                img = imread(path)
        except (ImportError, ValueError) as exc:
            if zarr_array:  # zarr missing, or a group refused with the path to give
                raise
            raise ValueError(f"cannot read training image {path}: {exc}") from exc
        except Exception as exc:
            raise ValueError(f"cannot read training image {path}: {exc}") from exc
        if img.dtype == np.uint16 and not raw:
            img = img / 257.0
        stack_file = zarr_array or path.suffix.lower() in (".tif", ".tiff", ".npy")
        if raw and img.ndim == 3 and img.shape[-1] in (2, 3, 4) and not stack_file:
            raise ValueError(f"{path}: a colour image; photon-counting training needs the "
                             "camera's gray values (one channel per file)")
        if zarr_array and img.ndim >= 2:
            planes = list(img.reshape(-1, *img.shape[-2:]))
        elif img.ndim == 3 and img.shape[-1] in (3, 4):
            planes = [rgb2gray(img[..., :3]) * (255.0 if img.dtype.kind in "ui" else 1.0)]
        elif img.ndim == 3 and img.shape[-1] == 2 and not stack_file:
            planes = [img[..., 0]]  # gray and alpha
        elif img.ndim == 3 and stack_file:
            planes = list(img)
        elif img.ndim == 2:
            planes = [img]
        else:
            raise ValueError(f"training image {path} has shape {img.shape}; expected 2-D, RGB "
                             "or a stack of 2-D planes")
        for k, plane in enumerate(planes):
            plane = np.asarray(plane, dtype=np.float64)
            name = path.name if len(planes) == 1 else f"{path.name}:{k}"
            if min_size is not None and min(plane.shape) < min_size:
                raise ValueError(
                    f"training image {name} is {plane.shape[0]}x{plane.shape[1]}, smaller than "
                    f"{min_size} pixels on a side"
                )
            images.append(plane)
            names.append(name)
    return images, names


def _check_one_size(images):
    """Without cropping, training stacks the images: they must be of one size."""
    shapes = sorted({np.shape(c) for c in images})
    if len(shapes) > 1:
        side = min(min(s) for s in shapes)
        raise ValueError(f"without cropping (crop=None, --crop 0) the training images must be of "
                         f"one size; got {len(shapes)} sizes ({shapes[0]}, {shapes[1]}, ...): "
                         f"crop them to one size (--crop N, N at most {side} here)")


def add_noise(clean, sigma, seed):
    """``clean + sigma * N(0, 1)`` with ``numpy.random.default_rng(seed)``, image by image."""
    rng = np.random.default_rng(seed)
    return [c + sigma * rng.standard_normal(c.shape) for c in clean]


def jpeg_pairs(clean, quality, scale=0.8):
    """JPEG-compress clean images (Pillow, baseline) and recover their quantisation constraints.

    Returns the starting images (inverse DCT of the dequantised coefficients),
    and the lower and upper coefficient bounds ``(d -/+ scale/2) q`` of each
    image, as :func:`skimage_trd.deblock_trd` computes them from a decoded file.
    """
    starts, lowers, uppers = [], [], []
    for img in clean:
        decoded, table = jpeg_roundtrip(img, quality)
        c = QuantizationConstraint(quantized_coefficients(decoded, table), table, scale)
        starts.append(c.start)
        lowers.append(c.lower)
        uppers.append(c.upper)
    return starts, np.stack(lowers), np.stack(uppers)


def _crop_batch(images, names, size):
    """Equal-sized centre crops (the paper trains on 180x180 crops), as one array."""
    out = []
    for img, name in zip(images, names):
        if min(img.shape) < size:
            raise ValueError(f"training image {name} is smaller than the crop size {size}")
        y0 = (img.shape[0] - size) // 2
        x0 = (img.shape[1] - size) // 2
        out.append(img[y0 : y0 + size, x0 : x0 + size])
    return np.stack(out)


def holdout_weights(shape, fraction, block=HOLDOUT_BLOCK, reach=0):
    """The 0/1 weights of a (H, W) image's loss: 0 on the held-out blocks, a ``fraction`` of
    the ``block`` x ``block`` blocks spread evenly over the image (block ``(i, j)`` is held out
    when ``(2 i + j) mod round(1/fraction)`` is 0, a pattern that leaves no row or column of
    blocks out whole), 1 elsewhere; images smaller than four blocks on a side get blocks of a
    quarter of their side (at least 4 pixels). All ones if ``fraction`` is 0. With ``reach``
    (the receptive field's radius), also the weights of the held-out estimate: 1 on the
    pixels of the held-out blocks at least ``reach + 1`` pixels from any pixel of the loss
    (less, down to a quarter of the block, where blocks are small); returns both then."""
    H, W = shape
    weights = np.ones(shape, dtype=np.float32)
    held = np.zeros(shape, dtype=np.float32)
    block = min(block, max(4, min(H, W) // 4))
    if fraction and H >= 2 * block and W >= 2 * block:
        period = max(2, round(1.0 / fraction))
        for i in range(-(-H // block)):
            for j in range(-(-W // block)):
                if (2 * i + j) % period == 0:
                    weights[i * block:(i + 1) * block, j * block:(j + 1) * block] = 0.0
    if not reach:
        return weights
    from scipy.ndimage import binary_erosion

    guard = min(int(reach) + 1, max(1, block // 4))
    # (outside the image is not the loss's: erode with the border counted as held out)
    held = binary_erosion(weights == 0, iterations=guard, border_value=1).astype(np.float32)
    return weights, held


# a value held by more than this fraction of an image's pixels at its minimum or maximum is a
# clipping bound (as denoise_trd's SURE choice judges clipped planes)
CLIP_FRACTION = 1e-3
# pixels whose local mean is within this many sigmas of a bound are left out: the noise of
# pixels clipped with a probability of even 1 % (2.4 sigmas from the bound) biases SURE by
# several times the error of a good denoiser (measured on skimage.data.cell, whose
# background lies 2.4 sigmas above 0 at sigma 25: SURE 2.1 against a true 8.0)
CLIP_MARGIN = 3.0
# fine-tuning by SURE needs at least this share of pixels far from a clipping bound; with
# fewer, the starting model is returned unchanged
MIN_UNCLIPPED = 0.25


def unclipped_weights(image, sigma):
    """0/1 weights of a noisy image: 0 where its noise is not the Gaussian SURE assumes.

    An image clipped at its minimum or maximum (8-bit data, saturated cameras: more than
    :data:`CLIP_FRACTION` of the pixels at that value) has noise cut short near that bound,
    and SURE's estimate is biased there (it rewards smoothing what it takes for noise). The
    pixels whose local mean (a Gaussian of 2 pixels, which the pixel's own noise hardly moves)
    lies within :data:`CLIP_MARGIN` sigmas of such a bound get weight 0; all ones for images
    that are not clipped."""
    from scipy.ndimage import gaussian_filter

    image = np.asarray(image, dtype=np.float64)
    lo, hi = float(image.min()), float(image.max())
    clipped_lo = np.mean(image == lo) > CLIP_FRACTION
    clipped_hi = np.mean(image == hi) > CLIP_FRACTION
    weights = np.ones(image.shape, dtype=np.float32)
    if not (clipped_lo or clipped_hi):
        return weights
    local = gaussian_filter(image, 2.0, mode="reflect")
    if clipped_lo:
        weights[local < lo + CLIP_MARGIN * sigma] = 0.0
    if clipped_hi:
        weights[local > hi - CLIP_MARGIN * sigma] = 0.0
    return weights


@dataclass
class _TrainingData:
    """A run's batch: inputs and targets (N, H, W) in the training dtype (SURE's windows from
    images of several sizes: lists of 2-D images), the quantisation constraint of deblocking
    runs, the 0/1 weights of the loss (a list per image, or None: every pixel) and of the
    held-out estimate (None: nothing held out), and the digest that ties checkpoints to the
    data."""

    inputs: np.ndarray | list
    targets: np.ndarray | list
    constraint: tuple | None
    digest: str
    n_images: int
    weights: list | None = None
    held: list | None = None
def _prepare_data(clean, noisy, config, names, init_model) -> _TrainingData:
    """The batch of a run from the images given to :func:`train_model`."""
    deblock = config.task == "deblock"
    if config.loss == "sure":  # noisy images only: they stand in for the targets below
        if noisy is None or clean is not None:
            raise ValueError("loss 'sure' trains on noisy images alone: pass clean=None and "
                             "noisy=[...] (Gaussian noise of config.sigma)")
        clean = noisy
    if config.loss == "n2n" and noisy is None:
        raise ValueError("loss 'n2n' trains on pairs of noisy acquisitions: pass noisy=[first] "
                         "and clean=[second acquisition of the same scenes]")
    names = names or [f"image{i}" for i in range(len(clean))]
    if noisy is None:
        noisy = clean if deblock else add_noise(clean, config.sigma, config.seed)
    if len(noisy) != len(clean):
        raise ValueError(f"{len(noisy)} noisy images for {len(clean)} clean ones")
    for c, n, name in zip(clean, noisy, names):
        if np.shape(c) != np.shape(n):
            raise ValueError(f"training pair {name}: clean {np.shape(c)} and noisy {np.shape(n)} differ")
        for img in (c, n) if n is not c else (c,):
            if not np.isfinite(img).all():
                raise ValueError(f"training image {name} has NaN or infinite pixels: mask or "
                                 "repair them, or leave the image out")
        if config.loss == "n2n" and np.array_equal(c, n):
            raise ValueError(f"training pair {name}: the two acquisitions are identical (the "
                             "same noise); Noise2Noise needs two independent acquisitions of "
                             "each scene")
    field = config.n_stages * (config.kernel_size - 1) + 1
    for c, name in zip(clean, names):
        side = min(np.shape(c)[-2:]) if not config.crop else min(config.crop, *np.shape(c)[-2:])
        if side < field:
            raise ValueError(
                f"training image {name} is {np.shape(c)[-2]}x{np.shape(c)[-1]}"
                + (f" (cropped to {config.crop})" if config.crop else "")
                + f", smaller than the receptive field of {config.n_stages} stages of "
                f"{config.kernel_size}x{config.kernel_size} filters ({field} pixels): every "
                "pixel's result would depend on the mirrored border; use larger images, or "
                "fewer stages or smaller filters")
    if config.depth is not None:
        zfield = config.n_stages * (config.depth - 1) + 1
        for c, name in zip(clean, names):
            if np.ndim(c) != 3 or np.shape(c)[0] < zfield:
                raise ValueError(
                    f"training volume {name} has shape {np.shape(c)}: a volume model trains on "
                    f"volumes (z, y, x) of at least {zfield} planes (the receptive field of "
                    f"{config.n_stages} stages of {config.depth}-plane filters)")
    if config.patch and config.patch < field:
        raise ValueError(f"training windows of {config.patch} pixels (patch) are smaller than "
                         f"the receptive field ({field} pixels): use a patch of at least {field}")
    dtype = np.dtype(config.dtype)
    if config.crop:
        x = _crop_batch(clean, names, config.crop)
        f = _crop_batch(noisy, names, config.crop)
    elif config.loss == "sure" and config.patch and len({np.shape(c) for c in clean}) > 1:
        # SURE's random windows can come from images of any sizes
        images = [np.asarray(c, dtype=dtype) for c in clean]
        digest = hashlib.sha256(b"".join(im.tobytes() for im in images)).hexdigest()[:16]
        if init_model is not None:
            digest += "-from-" + model_fingerprint(init_model)[:12]
        weights, held = _loss_weights(images, config)
        return _TrainingData(images, images, None, digest, len(images), weights, held)
    else:
        _check_one_size(clean)
        x, f = np.stack(clean), np.stack(noisy)
    constraint = None
    if deblock:
        starts, lower, upper = jpeg_pairs(list(x), config.quality, config.constraint_scale)
        f, constraint = np.stack(starts), (lower, upper)
    if config.loss == "n2n":  # each acquisition the target of the other
        f, x = np.concatenate([f, x]), np.concatenate([x, f])
    x = x.astype(dtype)
    f = f.astype(dtype)
    digest = hashlib.sha256(np.ascontiguousarray(x).tobytes()).hexdigest()[:16]
    if init_model is not None:  # a fine-tuning checkpoint belongs to its starting model
        digest += "-from-" + model_fingerprint(init_model)[:12]
    weights, held = _loss_weights(f, config)
    return _TrainingData(f, x, constraint, digest, len(clean), weights, held)


def _loss_weights(inputs, config):
    """The 0/1 weights of the loss and of the held-out estimate, per image (None, None when
    every pixel counts in the loss and nothing is held out): the held-out blocks
    (``config.holdout``), and with SURE, the pixels near a clipping bound left out of both."""
    if not config.holdout and config.loss != "sure":
        return None, None
    clip = [unclipped_weights(im, config.sigma) if config.loss == "sure"
            else np.ones(np.shape(im), np.float32) for im in inputs]
    if not config.holdout:
        return (None if all(c.all() for c in clip) else clip), None
    reach = config.n_stages * (config.kernel_size - 1) // 2
    # (volumes: the blocks of a plane's pattern held out through every plane, columns whose
    # voxels' receptive fields stay inside them in z too)
    split = [tuple(np.broadcast_to(a, np.shape(im)).copy() for a in
                   holdout_weights(np.shape(im)[-2:], config.holdout, reach=reach))
             for im in inputs]
    if all(w.all() for w, _ in split):
        shape = np.shape(inputs[0])
        raise ValueError(
            f"the training images ({shape[-2]}x{shape[-1]}) are too small to hold pixels out "
            "for validation: use images of at least 16x16, or holdout=0")
    weights = [w * c for (w, _), c in zip(split, clip)]
    held = [h * c for (_, h), c in zip(split, clip)]
    if sum(h.sum() for h in held) == 0:
        raise ValueError("no held-out pixel is usable for validation (all near a clipping "
                         "bound of the data): use holdout=0")
    return weights, held


def photon_training_images(raw_images, *, sigma, gain=None, read_noise=None, offset=0.0):
    """Photon-counting data (camera units) made fit for SURE training: the generalised
    Anscombe transform (noise of variance 1, :func:`skimage_trd.generalized_anscombe`) times
    ``sigma``, so that the model's noise level is ``sigma`` on the [0, 255] scale. A model
    trained on them is used by :func:`skimage_trd.denoise_trd_poisson` (``model=``), which maps
    its stabilised planes by the same factor. ``gain`` or ``read_noise`` None: estimated per
    image (:func:`skimage_trd.estimate_poisson_gaussian`). Returns the images and the
    ``(gain, read_noise)`` used for each."""
    out, used = [], []
    for z in raw_images:
        z = np.asarray(z, dtype=np.float64)
        g, r = gain, read_noise
        if g is None or r is None:
            eg, er = estimate_poisson_gaussian(z, offset=offset)
            g, r = (eg if g is None else g), (er if r is None else r)
        out.append(generalized_anscombe(z, g, r, offset) * float(sigma))
        used.append((float(g), float(r)))
    return out, used


def _jpeg_decoded(img, quality):
    return jpeg_roundtrip(img, quality)[0].astype(np.float64)


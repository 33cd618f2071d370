"""Sample data: noisy, low-light and JPEG-compressed versions of images bundled with
scikit-image (no download)."""

import numpy as np


def _noisy(image, sigma, name):
    rng = np.random.default_rng(0)
    noisy = image / 255.0 + sigma / 255.0 * rng.standard_normal(image.shape)
    return [(noisy, {"name": name, "metadata": {"noise_sigma": sigma / 255.0}}, "image")]


def noisy_camera():
    from skimage import data

    return _noisy(data.camera(), 25, "camera (noisy, sigma 25)")


def noisy_cells():
    """A cell in saline, a quantitative phase image from digital holographic microscopy
    (skimage.data.cell), with Gaussian noise of 15 grey levels."""
    from skimage import data

    return _noisy(data.cell(), 15, "cell, phase image (noisy, sigma 15)")


def jpeg_camera():
    from skimage import data

    from skimage_trd import jpeg_roundtrip

    decoded, _ = jpeg_roundtrip(data.camera(), 10)
    return [(decoded, {"name": "camera (JPEG q10)", "metadata": {"jpeg_quality": 10}}, "image")]


def low_light_cells(peak_photons=5.0, background_photons=0.1, gain=2.0, offset=100.0,
                    read_noise=3.0, seed=0):
    """A simulated low-light microscopy image, as a camera records it: the cell of
    skimage.data.cell (a phase image; its background, the median, taken away and the rest
    scaled) as the expected photon counts of a fluorescence-like image, dark around the cell
    (``background_photons``) and ``peak_photons`` at its brightest pixel; photon (Poisson)
    noise, then ``gain`` camera units per photon, ``offset`` camera units of dark level and
    Gaussian read noise of ``read_noise`` camera units, rounded to uint16.

    The layer's metadata hold the camera's gain, offset and read noise (camera units), the
    photon counts and the noise-free expected image in camera units (``clean``), so that the
    Denoise widget's photon-counting mode can be tried with the true values or estimates."""
    from skimage import data

    cell = data.cell().astype(np.float64)
    signal = np.clip(cell - np.median(cell), 0.0, None)
    photons = background_photons + (peak_photons - background_photons) * signal / signal.max()
    rng = np.random.default_rng(seed)
    raw = gain * rng.poisson(photons) + offset + read_noise * rng.standard_normal(photons.shape)
    raw = np.clip(np.rint(raw), 0, np.iinfo(np.uint16).max).astype(np.uint16)
    meta = {"gain": gain, "offset": offset, "read_noise": read_noise,
            "peak_photons": peak_photons, "background_photons": background_photons,
            "clean": offset + gain * photons, "source": "skimage.data.cell"}
    name = f"low-light cell (photon counting, {peak_photons:g} photons peak)"
    top = peak_photons + 3 * np.sqrt(peak_photons)  # photons: the brightest pixels, noise and all
    limits = (float(offset - 3 * read_noise), float(offset + gain * top))
    return [(raw, {"name": name, "metadata": meta, "contrast_limits": limits}, "image")]


def noisy_volume():
    """A fluorescence-like z-stack (procedural: filaments, vesicles, membranes and nuclei
    through a confocal point-spread function; 32 planes of 192 x 192, z-step 2 pixels,
    ``skimage_trd._volumes.fluorescence_volume``) with Gaussian noise 0.1, voxel size
    (2, 1, 1): denoise it as a volume."""
    from skimage_trd import fluorescence_volume

    clean = fluorescence_volume((32, 192, 192), psf="confocal", z_step=2.0, seed=7)
    noisy = clean + 0.1 * np.random.default_rng(0).standard_normal(clean.shape)
    meta = {"noise_sigma": 0.1, "clean": clean, "source": "skimage_trd._volumes, seed 7"}
    return [(noisy, {"name": "fluorescence volume (noisy, sigma 0.1)", "metadata": meta,
                     "scale": (2.0, 1.0, 1.0)}, "image")]

"""Procedural fluorescence-like volumes: training and test data for the 3-D models.

There are no clean microscopy volumes on the machines that train our models, so the 3-D
models learn from volumes drawn here: structures rendered on an isotropic grid (one unit =
one pixel), blurred by a point-spread function, then sampled in z every ``z_step`` pixels.

* filaments: random smooth curves (persistent random walks) of varying thickness;
* vesicles: small spheres, filled or hollow;
* membranes: thin sheets (a level set of smooth random noise), and cell outlines;
* nuclei: large ellipsoids with a textured interior and soft edges, dimmer;
* a dim, smoothly varying background.

Point-spread functions are Gaussians (standard deviations in pixels, z and xy) of three
shapes: ``'widefield'`` (long in z, plus an out-of-focus haze), ``'confocal'`` and
``'lightsheet'`` (nearly isotropic). Every random choice follows ``seed``.
"""

from __future__ import annotations

import numpy as np

__all__ = ["fluorescence_volume", "STRUCTURES", "PSFS"]

STRUCTURES = ("filaments", "vesicles", "membranes", "nuclei")
# (sigma_z, sigma_xy) in pixels, and the out-of-focus haze (weight, sigma multiplier)
PSFS = {
    "widefield": ((3.5, 1.3), (0.35, 6.0)),
    "confocal": ((2.2, 0.9), (0.0, 1.0)),
    "lightsheet": ((1.4, 1.0), (0.0, 1.0)),
}


def _splat(vol, points, values):
    """Add ``values`` at the (z, y, x) ``points`` with trilinear weights."""
    shape = np.array(vol.shape)
    p0 = np.floor(points).astype(np.int64)
    frac = points - p0
    for dz in (0, 1):
        for dy in (0, 1):
            for dx in (0, 1):
                idx = p0 + np.array([dz, dy, dx])
                w = (np.where(dz, frac[:, 0], 1 - frac[:, 0]) *
                     np.where(dy, frac[:, 1], 1 - frac[:, 1]) *
                     np.where(dx, frac[:, 2], 1 - frac[:, 2]))
                ok = np.all((idx >= 0) & (idx < shape), axis=1)
                np.add.at(vol, tuple(idx[ok].T), values[ok] * w[ok])


def _filaments(shape, rng, count):
    from scipy.ndimage import gaussian_filter

    out = np.zeros(shape)
    for thickness in (0.6, 1.2):
        layer = np.zeros(shape)
        for _ in range(count):
            n = int(rng.integers(150, 600))
            direction = rng.standard_normal(3)
            direction /= np.linalg.norm(direction)
            p = rng.random(3) * (np.array(shape) - 1)
            pts = np.empty((n, 3))
            for i in range(n):
                direction += 0.18 * rng.standard_normal(3)
                direction /= np.linalg.norm(direction)
                p = p + 0.5 * direction
                pts[i] = p
            brightness = rng.uniform(0.4, 1.0)
            _splat(layer, pts, np.full(n, brightness))
        out += gaussian_filter(layer, thickness) * (thickness ** 2) * 6.0
    return out


def _vesicles(shape, rng, count):
    zz, yy, xx = np.indices(shape, sparse=True)
    out = np.zeros(shape)
    for _ in range(count):
        c = rng.random(3) * (np.array(shape) - 1)
        r = rng.uniform(1.5, 6.0)
        hollow = rng.random() < 0.5
        d = np.sqrt((zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2)
        if hollow:
            prof = np.exp(-0.5 * ((d - r) / 0.8) ** 2)
        else:
            prof = 1.0 / (1.0 + np.exp((d - r) / 0.5))
        out += rng.uniform(0.4, 1.0) * prof
    return out


def _smooth_noise(shape, rng, scale):
    from scipy.ndimage import gaussian_filter

    g = gaussian_filter(rng.standard_normal(shape), scale, mode="wrap")
    g -= g.mean()  # (a scale near the volume's size leaves a large mean)
    return g / (g.std() + 1e-12)


def _membranes(shape, rng):
    g = _smooth_noise(shape, rng, rng.uniform(10, 20))
    level = rng.uniform(-0.5, 0.5)
    width = rng.uniform(0.04, 0.08)
    sheets = np.exp(-0.5 * ((g - level) / width) ** 2)
    return rng.uniform(0.3, 0.7) * sheets


def _nuclei(shape, rng, count):
    zz, yy, xx = np.indices(shape, sparse=True)
    texture = 0.6 + 0.4 * np.tanh(_smooth_noise(shape, rng, 2.0))
    out = np.zeros(shape)
    for _ in range(count):
        c = rng.random(3) * (np.array(shape) - 1)
        radii = rng.uniform(10, 30, 3)
        d = np.sqrt(((zz - c[0]) / radii[0]) ** 2 + ((yy - c[1]) / radii[1]) ** 2 +
                    ((xx - c[2]) / radii[2]) ** 2)
        inside = 1.0 / (1.0 + np.exp((d - 1.0) / 0.06))
        out += rng.uniform(0.2, 0.45) * inside * texture
    return out


def fluorescence_volume(shape=(32, 192, 192), *, structures=STRUCTURES, psf="confocal",
                        z_step=2.0, seed=None):
    """A clean fluorescence-like volume with intensities in [0, 1].

    Parameters
    ----------
    shape : (int, int, int)
        ``(z, y, x)`` of the result.
    structures : sequence of str
        Any of ``'filaments'``, ``'vesicles'``, ``'membranes'``, ``'nuclei'``.
    psf : {'widefield', 'confocal', 'lightsheet'}
        Shape of the Gaussian point-spread function (see ``PSFS``: standard deviations in
        pixels).
    z_step : float
        Distance between planes in pixels (1: isotropic sampling; 2-4: typical z-stacks).
    seed : int or numpy.random.Generator, optional

    Returns
    -------
    ndarray, float64, shape ``shape``
        Dim background near 0.05, the brightest structures near 0.9 (a few voxels up to 1).
    """
    from scipy.ndimage import gaussian_filter, map_coordinates

    if psf not in PSFS:
        raise ValueError(f"psf must be one of {sorted(PSFS)}, got {psf!r}")
    unknown = set(structures) - set(STRUCTURES)
    if unknown or not structures:
        raise ValueError(f"structures must be some of {STRUCTURES}, got {structures!r}")
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"shape must be (z, y, x), got {shape!r}")
    if not 0.25 <= float(z_step) <= 8:
        raise ValueError(f"z_step must be between 0.25 and 8 pixels, got {z_step}")
    rng = np.random.default_rng(seed)
    Z, H, W = (int(n) for n in shape)
    iso = (int(np.ceil((Z - 1) * z_step)) + 1, H, W)
    area = H * W / 192.0**2 * iso[0] / 64.0
    scene = np.zeros(iso)
    if "nuclei" in structures:
        scene += _nuclei(iso, rng, max(1, int(round(rng.uniform(1, 3) * area))))
    if "membranes" in structures:
        scene += _membranes(iso, rng)
    if "filaments" in structures:
        scene += _filaments(iso, rng, max(1, int(round(rng.uniform(6, 16) * area))))
    if "vesicles" in structures:
        scene += _vesicles(iso, rng, max(1, int(round(rng.uniform(15, 50) * area))))
    (sz, sxy), (haze, wide) = PSFS[psf]
    img = gaussian_filter(scene, (sz, sxy, sxy), mode="nearest")
    if haze:
        img = (1 - haze) * img + haze * gaussian_filter(scene, (sz * wide, sxy * wide, sxy * wide),
                                                        mode="nearest")
    top = max(np.percentile(img, 99.95), 0.5 * img.max())  # (sparse scenes: the max decides)
    img = img / (top + 1e-12) * 0.85
    background = 0.05 * (1 + 0.5 * _smooth_noise(iso, rng, 30.0))
    img = np.clip(img + np.clip(background, 0.0, None), 0.0, 1.0)
    z = np.arange(Z) * float(z_step)
    coords = np.meshgrid(z, np.arange(H), np.arange(W), indexing="ij", sparse=False)
    if float(z_step) == int(z_step):
        return np.ascontiguousarray(img[:: int(z_step)][:Z])
    return map_coordinates(img, coords, order=1, mode="nearest")

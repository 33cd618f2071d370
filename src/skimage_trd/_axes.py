"""``axes``: which axes of an array are what (OME/tifffile/careamics letters), and volumes.

Letters: ``T`` time, ``S`` sample (any stack), ``C`` channel, ``Z``, ``Y``, ``X``. ``Y`` and
``X`` are the last two spatial axes, in that order; ``Z``, when present, comes right before
them (channels may sit anywhere). With ``Z`` the public functions filter every (z, y, x)
volume as one, with the volume models (3-D filters); without it, plane by plane as before.
"""

from __future__ import annotations

import itertools
import warnings
from dataclasses import dataclass

import numpy as np

from ._arrays import array_module, check_image, check_spatial, normalize_channel_axis

__all__ = ["parse_axes", "AxesLayout", "iter_volumes", "check_volume_spacing",
           "MAX_ANISOTROPY", "InputSetup", "setup_input"]

LETTERS = "TSCZYX"
# z-steps beyond this many pixels: the planes share too little for the volume models (trained
# with z-steps of 1 to 4 pixels); the volume is denoised plane by plane instead, with a warning
MAX_ANISOTROPY = 6.0


@dataclass(frozen=True)
class AxesLayout:
    """What ``axes`` says about an array: its channel axis (or None) and whether it holds
    volumes (a ``Z`` axis right before ``Y`` and ``X``)."""

    axes: str
    channel_axis: int | None
    volume: bool
    far_planes: bool = False  # a Z axis whose planes are too far apart: denoised one by one


def parse_axes(axes, shape, channel_axis=None) -> AxesLayout:
    """Check ``axes`` against the array's ``shape`` (and ``channel_axis`` if given too)."""
    if not isinstance(axes, str):
        raise TypeError(f"axes must be a string of axis letters such as 'ZYX' or 'TZYX', "
                        f"got {axes!r}")
    letters = axes.upper()
    bad = sorted(set(letters) - set(LETTERS))
    if bad:
        raise ValueError(f"axes {axes!r}: unknown letters {bad}; use T (time), S (stack), "
                         "C (channel), Z, Y and X")
    if len(set(letters)) != len(letters):
        raise ValueError(f"axes {axes!r} names an axis twice")
    if len(letters) != len(shape):
        hint = ""
        if len(shape) == 2 and "Z" in letters:
            hint = " (a 2-D image has no Z axis: use axes='YX')"
        raise ValueError(f"axes {axes!r} has {len(letters)} letters for an array of "
                         f"{len(shape)} dimensions (shape {tuple(shape)}){hint}")
    spatial = letters.replace("C", "")
    if not spatial.endswith("YX"):
        raise ValueError(f"axes {axes!r}: Y and X must be the last spatial axes, in that "
                         "order (e.g. 'ZYX', 'TZYX', 'ZYXC', 'CZYX', 'YX')")
    if "Z" in spatial and not spatial.endswith("ZYX"):
        raise ValueError(f"axes {axes!r}: Z must come right before Y and X")
    c = letters.index("C") if "C" in letters else None
    if channel_axis is not None and c is not None and channel_axis % len(shape) != c:
        raise ValueError(f"channel_axis={channel_axis} disagrees with axes {axes!r} (C is "
                         f"axis {c})")
    if channel_axis is not None and c is None:
        raise ValueError(f"channel_axis={channel_axis} given, but axes {axes!r} has no C")
    return AxesLayout(letters, c, "Z" in letters)


def check_volume_spacing(spacing, depth_planes):
    """The z-step in pixels from ``spacing`` ((dz, dy, dx) or None: 1, as the models assume
    nothing else); warns and returns None when it is beyond :data:`MAX_ANISOTROPY`."""
    if spacing is None:
        return 1.0
    spacing = np.asarray(spacing, dtype=np.float64).ravel()
    if spacing.size != 3 or not np.all(np.isfinite(spacing)) or np.any(spacing <= 0):
        raise ValueError(f"spacing must be three positive numbers (dz, dy, dx), got "
                         f"{spacing.tolist()}")
    dz, dy, dx = spacing
    if not 0.5 <= dy / dx <= 2:
        raise ValueError(f"spacing {spacing.tolist()}: pixels twice as long as wide are not "
                         "supported (resample to square pixels)")
    step = dz / np.sqrt(dy * dx)
    if step > MAX_ANISOTROPY:
        warnings.warn(f"z-step of {step:.3g} pixels (spacing {spacing.tolist()}): beyond the "
                      f"{MAX_ANISOTROPY:g} pixels the volume models cover, neighbouring planes "
                      "share little; denoised plane by plane instead", UserWarning, stacklevel=4)
        return None
    return float(step)


def iter_volumes(shape, layout: AxesLayout):
    """Index tuples of the (z, y, x) volumes of an array, with each one's channel (or None)."""
    nd = len(shape)
    z, y, x = (layout.axes.index(a) for a in "ZYX")
    lead = [ax for ax in range(nd) if ax not in (z, y, x)]
    for idx in itertools.product(*(range(shape[ax]) for ax in lead)):
        full = [slice(None)] * nd
        for ax, i in zip(lead, idx, strict=True):
            full[ax] = i
        channel = idx[lead.index(layout.channel_axis)] if layout.channel_axis is not None else None
        yield tuple(full), channel


@dataclass(frozen=True)
class InputSetup:
    """An image checked by :func:`setup_input`: the array (of its own module), its kind
    (``'numpy'``, ``'cupy'``, ``'dask'``), the channel axis (non-negative, or None) and the
    axes layout (None without ``axes``; ``layout.volume``: denoise (z, y, x) volumes)."""

    image: object
    kind: str
    channel_axis: int | None
    layout: AxesLayout | None

    @property
    def volume(self) -> bool:
        return self.layout is not None and self.layout.volume


def setup_input(image, channel_axis=None, axes=None, spacing=None, *, what="denoise_trd"):
    """The one input setup of the public functions: refuse what cannot be restored
    (:func:`skimage_trd._arrays.check_image`), read ``axes`` (and the volumes' ``spacing``)
    and ``channel_axis``, and check that planes have two spatial dimensions. ``axes`` with a
    ``Z`` whose z-step is beyond :data:`MAX_ANISOTROPY` pixels falls back to planes (warned,
    ``layout.far_planes``)."""
    kind = array_module(image)
    image = check_image(image)
    layout = None
    if axes is not None:
        layout = parse_axes(axes, image.shape, normalize_channel_axis(image, channel_axis))
        channel_axis = layout.channel_axis
        if layout.volume and check_volume_spacing(spacing, image.shape) is None:
            layout = AxesLayout(layout.axes, layout.channel_axis, False, far_planes=True)
    elif spacing is not None:
        raise ValueError("spacing is the voxel size of volumes: give axes (e.g. 'ZYX') too")
    channel_axis = normalize_channel_axis(image, channel_axis)
    if layout is None or not layout.volume:
        check_spatial(image, channel_axis, what=what)
    return InputSetup(image, kind, channel_axis, layout)

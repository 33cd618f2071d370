"""The TRD model: filters, influence functions and reaction weights of every stage.

A model is plain data. The stage map that uses it lives in ``kernels/reference.py``
(readable NumPy) and in the kernels (Numba, CuPy), which are tested against it.

File format
-----------
A model is saved as an uncompressed ``.npz`` archive read with
``allow_pickle=False``. It holds the float arrays ``filters``, ``weights``,
``centers``, ``precision`` and (denoising only) ``lambdas``, plus ``metadata``:
a 0-d unicode array holding a JSON object (name, task, sigma or quality,
provenance ...). Nothing in a model file is ever unpickled or executed.
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = ["TRDModel", "ModelFileError", "FORMAT_VERSION"]

FORMAT_VERSION = 1
TASKS = ("denoise", "deblock")
_ARRAY_KEYS = ("filters", "weights", "centers", "precision", "lambdas")


def atomic_write_bytes(path, data: bytes):
    """Write ``data`` to ``path`` so that a crash leaves either the old file or the new one."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return path


class ModelFileError(ValueError):
    """A model file could not be read: missing, truncated, malformed or unsafe."""


@dataclass(eq=False)
class TRDModel:
    """Parameters of a trained reaction diffusion (TRD) model.

    Every stage ``t`` maps ``u`` to::

        u - (sum_i rot180(k_ti) * phi_ti(k_ti * u) + lambda_t (u - f))

    where ``*`` is 2-D correlation with the symmetric boundary rule of the
    authors (see :func:`skimage_trd.kernels.reference.stage_reference`), ``f`` the noisy input
    and ``phi_ti(z) = sum_j w_tij exp(-precision / 2 (z - mu_j)**2)``.
    Intensities live on the [0, 255] scale the models were trained on.

    Parameters
    ----------
    filters : ndarray, shape (n_stages, n_filters, kernel_size, kernel_size)
        Filters ``k_ti`` (row, column), used by correlation. A volume model (3-D filters,
        denoising only) has shape (n_stages, n_filters, depth, kernel_size, kernel_size):
        ``depth`` planes (z) of ``kernel_size x kernel_size`` taps (y, x).
    weights : ndarray, shape (n_stages, n_filters, n_rbf)
        Gaussian RBF weights ``w_tij`` of the influence functions.
    centers : ndarray, shape (n_rbf,)
        Equidistant RBF centres ``mu_j`` on the [0, 255] intensity scale.
    precision : float
        RBF precision ``beta``: ``exp(-beta / 2 (z - mu)**2)``.
    lambdas : ndarray, shape (n_stages,), or None
        Reaction weights (denoising). ``None`` for deblocking models, whose
        stages end in the quantisation-constraint projection instead.
    task : {'denoise', 'deblock'}
    sigma : float, optional
        Noise standard deviation on the [0, 255] scale a denoising model was
        trained for.
    quality : int, optional
        JPEG quality a deblocking model was trained for.
    name : str
    metadata : dict
        JSON-serialisable extras: provenance of training, source, notes.
    """

    filters: np.ndarray
    weights: np.ndarray
    centers: np.ndarray
    precision: float
    lambdas: np.ndarray | None = None
    task: str = "denoise"
    sigma: float | None = None
    quality: int | None = None
    name: str = "unnamed"
    metadata: dict = field(default_factory=dict)

    def __post_init__(self):
        self.filters = np.array(self.filters, dtype=np.float64)
        self.weights = np.array(self.weights, dtype=np.float64)
        self.centers = np.array(self.centers, dtype=np.float64)
        self.precision = float(self.precision)
        if self.lambdas is not None:
            self.lambdas = np.array(self.lambdas, dtype=np.float64)
        self.validate()

    # ------------------------------------------------------------------ shape
    @property
    def n_stages(self) -> int:
        return self.filters.shape[0]

    @property
    def n_filters(self) -> int:
        return self.filters.shape[1]

    @property
    def kernel_size(self) -> int:
        """In-plane filter size (y and x)."""
        return self.filters.shape[-1]

    @property
    def ndim(self) -> int:
        """Spatial dimensions the filters span: 2 (images) or 3 (volumes, z first)."""
        return self.filters.ndim - 2

    @property
    def filter_shape(self) -> tuple:
        """``(kernel_size, kernel_size)``, or ``(depth, kernel_size, kernel_size)`` in 3-D."""
        return tuple(self.filters.shape[2:])

    @property
    def depth(self) -> int:
        """Filter taps along z: 1 for a 2-D model."""
        return self.filters.shape[2] if self.ndim == 3 else 1

    @property
    def radius(self) -> int:
        """In-plane filter radius r; one stage reads ``2 r`` pixels around each output pixel."""
        return self.kernel_size // 2

    @property
    def radii(self) -> tuple:
        """Filter radius along each spatial axis (z first for a volume model)."""
        return tuple(n // 2 for n in self.filter_shape)

    @property
    def halo(self) -> int:
        """Pixels of context the whole model needs in-plane: ``n_stages * 2 r``."""
        return self.n_stages * 2 * self.radius

    @property
    def halos(self) -> tuple:
        """Context the whole model needs along each spatial axis: ``n_stages * 2 r_axis``."""
        return tuple(self.n_stages * 2 * r for r in self.radii)

    @property
    def influence_lut(self) -> tuple[float, float, int] | None:
        """``(x0, step, n)`` when the influence functions are defined by a lookup table, as in
        the authors' code: ``phi`` sampled exactly at ``x0 + k step`` (k = 0..n-1), linearly
        interpolated between the samples and constant beyond the ends. ``None`` (this library's
        own models): ``phi`` is the closed-form RBF sum. Imported authors' models carry the
        table of their file (``metadata['influence_lut']``), so that they reproduce the
        authors' outputs pixel by pixel."""
        lut = self.metadata.get("influence_lut")
        if lut is None:
            return None
        return float(lut["x0"]), float(lut["step"]), int(lut["n"])

    @property
    def constraint_scale(self) -> float:
        """Deblocking: half-width of the quantisation box in units of q/2 (c of Eq. 9)."""
        return float(self.metadata.get("constraint_scale", 0.8))

    def __repr__(self):
        level = f"sigma={self.sigma:g}" if self.sigma is not None else f"quality={self.quality}"
        size = (f"kernel_size={self.kernel_size}" if self.ndim == 2
                else f"filter_shape={self.filter_shape}")
        return (
            f"TRDModel(name={self.name!r}, task={self.task!r}, {level}, "
            f"n_stages={self.n_stages}, n_filters={self.n_filters}, {size})"
        )

    # ------------------------------------------------------------- validation
    def validate(self, source: str = "TRDModel"):
        """Raise :class:`ModelFileError` naming ``source`` if the parameters are inconsistent."""

        def fail(msg):
            raise ModelFileError(f"{source}: {msg}")

        if self.task not in TASKS:
            fail(f"task must be one of {TASKS}, got {self.task!r}")
        if self.filters.ndim not in (4, 5) or self.filters.shape[-2] != self.filters.shape[-1]:
            fail(
                "filters must have shape (n_stages, n_filters, kernel_size, kernel_size), or "
                "(n_stages, n_filters, depth, kernel_size, kernel_size) for volumes, "
                f"got {self.filters.shape}"
            )
        T, N = self.filters.shape[:2]
        if T < 1 or N < 1 or any(n % 2 == 0 for n in self.filters.shape[2:]):
            fail(f"need at least one stage and filter and odd filter sizes, got {self.filters.shape}")
        if self.ndim == 3 and self.task != "denoise":
            fail("volume (3-D) models are denoising models")
        J = self.centers.shape[0] if self.centers.ndim == 1 else -1
        if J < 2:
            fail(f"centers must be a 1-D array of at least 2 RBF centres, got shape {self.centers.shape}")
        if self.weights.shape != (T, N, J):
            fail(f"weights must have shape {(T, N, J)}, got {self.weights.shape}")
        steps = np.diff(self.centers)
        if not np.allclose(steps, steps[0], rtol=1e-9, atol=0) or steps[0] <= 0:
            fail("RBF centres must be increasing and equidistant")
        if not (np.isfinite(self.precision) and self.precision > 0):
            fail(f"precision must be a positive finite number, got {self.precision}")
        if self.task == "denoise":
            if self.lambdas is None or self.lambdas.shape != (T,):
                shape = None if self.lambdas is None else self.lambdas.shape
                fail(f"a denoising model needs lambdas of shape {(T,)}, got {shape}")
        elif self.lambdas is not None:
            fail("a deblocking model has no lambdas (its stages end in a projection)")
        for key in _ARRAY_KEYS:
            value = getattr(self, key)
            if value is not None and not np.all(np.isfinite(value)):
                fail(f"{key} contains NaN or infinite values")
        if self.sigma is not None and not (np.isfinite(self.sigma) and self.sigma > 0):
            fail(f"sigma must be positive, got {self.sigma}")
        if self.task == "denoise" and self.sigma is None:
            fail("a denoising model must record the noise sigma it was trained for")
        if self.task == "deblock" and self.quality is None:
            fail("a deblocking model must record the JPEG quality it was trained for")
        try:
            json.dumps(self.metadata)
        except TypeError as exc:
            fail(f"metadata must be JSON-serialisable ({exc})")
        if self.metadata.get("influence_lut") is not None:
            try:
                x0, step, n = self.influence_lut
            except (TypeError, KeyError, ValueError) as exc:
                fail(f"metadata['influence_lut'] must hold x0, step and n ({exc!r})")
            if not (np.isfinite(x0) and np.isfinite(step) and step > 0 and 2 <= n <= 10**6):
                fail(f"influence_lut needs a finite x0, a positive step and 2..1e6 samples, "
                     f"got x0={x0}, step={step}, n={n}")

    # -------------------------------------------------------------------- I/O
    def to_dict(self) -> dict:
        """Metadata as stored in the file's JSON entry."""
        extra = {"filter_shape": list(self.filter_shape)} if self.ndim == 3 else {}
        return extra | {
            "format_version": FORMAT_VERSION,
            "name": self.name,
            "task": self.task,
            "sigma": self.sigma,
            "quality": self.quality,
            "n_stages": self.n_stages,
            "n_filters": self.n_filters,
            "kernel_size": self.kernel_size,
            "n_rbf": int(self.centers.size),
            "metadata": self.metadata,
        }

    def save(self, path):
        """Write the model to ``path`` (``.npz``), atomically."""
        arrays = {
            "filters": self.filters,
            "weights": self.weights,
            "centers": self.centers,
            "precision": np.array(self.precision),
            "metadata": np.array(json.dumps(self.to_dict(), sort_keys=True)),
        }
        if self.lambdas is not None:
            arrays["lambdas"] = self.lambdas
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        return atomic_write_bytes(path, buf.getvalue())

    @classmethod
    def load(cls, path) -> TRDModel:
        """Read a model written by :meth:`save`; refuse anything else with a clear error."""
        path = Path(path)
        if not path.is_file():
            raise ModelFileError(f"model file {str(path)!r} does not exist")
        try:
            with np.load(path, allow_pickle=False) as npz:
                keys = set(npz.files)
                missing = {"filters", "weights", "centers", "precision", "metadata"} - keys
                if missing:
                    raise ModelFileError(
                        f"{path}: not a TRD model file (missing {sorted(missing)})"
                    )
                arrays = {k: npz[k] for k in keys & set(_ARRAY_KEYS + ("metadata",))}
        except ModelFileError:
            raise
        except (ValueError, OSError, EOFError, zipfile.BadZipFile, KeyError) as exc:
            # allow_pickle=False makes NumPy refuse object arrays with ValueError.
            raise ModelFileError(f"{path}: cannot read model file ({exc})") from exc
        for key in _ARRAY_KEYS:
            if key in arrays and arrays[key].dtype.kind != "f":
                raise ModelFileError(
                    f"{path}: array {key!r} has dtype {arrays[key].dtype}, expected floating point"
                )
        meta_arr = arrays["metadata"]
        if meta_arr.dtype.kind != "U" or meta_arr.ndim != 0:
            raise ModelFileError(f"{path}: metadata entry must be a JSON string")
        try:
            meta = json.loads(str(meta_arr))
        except json.JSONDecodeError as exc:
            raise ModelFileError(f"{path}: metadata is not valid JSON ({exc})") from exc
        if not isinstance(meta, dict) or meta.get("format_version") != FORMAT_VERSION:
            raise ModelFileError(
                f"{path}: unsupported model format version "
                f"{meta.get('format_version') if isinstance(meta, dict) else None!r} "
                f"(this library reads version {FORMAT_VERSION})"
            )
        if arrays["precision"].ndim != 0:
            raise ModelFileError(f"{path}: precision must be a scalar")
        model = cls.__new__(cls)
        model.filters = arrays["filters"].astype(np.float64)
        model.weights = arrays["weights"].astype(np.float64)
        model.centers = arrays["centers"].astype(np.float64)
        model.precision = float(arrays["precision"])
        lam = arrays.get("lambdas")
        model.lambdas = None if lam is None else lam.astype(np.float64)
        model.task = meta.get("task")
        model.sigma = meta.get("sigma")
        model.quality = meta.get("quality")
        model.name = str(meta.get("name", path.stem))
        model.metadata = meta.get("metadata") or {}
        if not isinstance(model.metadata, dict):
            raise ModelFileError(f"{path}: metadata.metadata must be a JSON object")
        model.validate(source=str(path))
        return model

    # ------------------------------------------------------------- utilities
    def copy(self) -> TRDModel:
        return TRDModel(
            filters=self.filters.copy(),
            weights=self.weights.copy(),
            centers=self.centers.copy(),
            precision=self.precision,
            lambdas=None if self.lambdas is None else self.lambdas.copy(),
            task=self.task,
            sigma=self.sigma,
            quality=self.quality,
            name=self.name,
            metadata=json.loads(json.dumps(self.metadata)),
        )

    def truncated(self, n_stages: int) -> TRDModel:
        """The model's first ``n_stages`` stages as a model of its own."""
        if not 1 <= n_stages <= self.n_stages:
            raise ValueError(f"n_stages must be in 1..{self.n_stages}, got {n_stages}")
        m = self.copy()
        m.filters = m.filters[:n_stages].copy()
        m.weights = m.weights[:n_stages].copy()
        if m.lambdas is not None:
            m.lambdas = m.lambdas[:n_stages].copy()
        return m

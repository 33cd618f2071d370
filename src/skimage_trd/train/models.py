"""Models at the ends of a run: the paper's plain initial stage, a shipped model rescaled to
another noise level and checked against a run's configuration, and the trained parameters as a
:class:`~skimage_trd.TRDModel`."""

from __future__ import annotations

import json
import math

import numpy as np

from .._model import TRDModel
from .gradients import (
    StageParams,
    TrainingSpec,
    model_to_params,
    params_to_model,
    unpack_params,
)

__all__ = ["default_rbf_grid", "plain_initial_stage", "rescale_model", "lift_to_volume"]


# ------------------------------------------------------------------------------ initialisation
def default_rbf_grid(sigma):
    """RBF centres and precision: the authors' grid, wider for strong noise (sigma >= 50)."""
    if sigma >= 50:
        return np.arange(-387.5, 387.5 + 1e-9, 12.5), 0.0064
    return np.arange(-310.0, 310.0 + 1e-9, 10.0), 0.01


def plain_initial_stage(spec: TrainingSpec, *, width=10.0, strength=0.05, log_lambda=0.0):
    """The paper's plain start for one stage.

    Filters: the ``kernel_size**2 - 1`` zero-mean DCT atoms (coefficients =
    identity). Influence functions: ``phi(z) = strength * 2 s / (1 + s**2)``
    with ``s = z / width``, the derivative of the Lorentzian penalty
    ``log(1 + s**2)`` of the paper on the [0, 255] intensity scale, fitted by
    the RBFs by least squares. ``strength`` keeps the first step stable (the
    48 unit filters sum to ~48 times the identity on high frequencies).
    """
    m = spec.n_coefficients
    n = spec.n_filters
    coefficients = np.eye(n, m)
    lo = spec.centers[0] - 3 * (spec.centers[1] - spec.centers[0])
    hi = spec.centers[-1] + 3 * (spec.centers[1] - spec.centers[0])
    z = np.linspace(lo, hi, 4001)
    s = z / width
    target = strength * 2 * s / (1 + s * s)
    basis = np.exp(-0.5 * spec.precision * (z[:, None] - spec.centers[None, :]) ** 2)
    ridge = 1e-6 * np.eye(spec.n_rbf)
    w = np.linalg.solve(basis.T @ basis + ridge, basis.T @ target)
    weights = np.tile(w, (n, 1))
    return StageParams(coefficients, weights, float(log_lambda))


def rescale_model(model: TRDModel, sigma: float) -> TRDModel:
    """A denoising model trained for noise ``model.sigma``, re-expressed for noise ``sigma``.

    Running ``model`` on an image whose intensities are multiplied by ``s = model.sigma /
    sigma`` (so that its noise matches the model's) and dividing the result by ``s`` is what
    :func:`~skimage_trd.denoise_trd` does with a model trained for another noise level. That
    is a TRD model itself, exactly: the same filters and reaction weights, and influence
    functions ``phi(s z) / s``, i.e. RBF centres ``mu / s``, precision ``beta s**2`` and
    weights ``w / s``. Fine-tuning for a new noise level (``python -m skimage_trd.train
    --init MODEL --sigma S``) starts from it, that is from what the bank already does at
    that level, rather than from an under- or over-smoothing model.

    Parameters
    ----------
    model : TRDModel
        A denoising model with ``sigma`` set.
    sigma : float
        The new noise level, [0, 255] scale.

    Returns
    -------
    TRDModel
        With ``sigma``, the name ``<model.name>-as-s<sigma>`` and ``metadata['rescaled_from']``
        (the original's name and sigma, and the contrast ``s``).
    """
    if model.task != "denoise" or model.sigma is None:
        raise ValueError(f"rescaling needs a denoising model with its sigma, got {model.name!r}")
    if not (math.isfinite(sigma) and sigma > 0):
        raise ValueError(f"sigma must be a positive number, got {sigma}")
    s = float(model.sigma) / float(sigma)
    meta = dict(model.metadata)
    meta["rescaled_from"] = {"name": model.name, "sigma": float(model.sigma), "contrast": s}
    return TRDModel(filters=model.filters.copy(), weights=model.weights / s,
                    centers=np.asarray(model.centers, dtype=np.float64) / s,
                    precision=float(model.precision) * s * s, lambdas=model.lambdas.copy(),
                    task="denoise", sigma=float(sigma),
                    name=f"{model.name}-as-s{float(sigma):g}", metadata=meta)


def _at_noise(model, sigma):
    """``model`` to fine-tune for noise ``sigma``: :func:`rescaled <rescale_model>` if it was
    trained for another level."""
    if (model.task == "denoise" and sigma is not None and model.sigma is not None
            and not math.isclose(model.sigma, sigma, rel_tol=1e-9)):
        return rescale_model(model, sigma)
    return model


def lift_to_volume(model: TRDModel, depth: int = 3) -> TRDModel:
    """A 2-D denoising model as a volume model with ``depth x F x F`` filters: each filter in
    the centre plane, zeros above and below. On a volume it gives exactly the 2-D model's
    result plane by plane (the cheap start of a 3-D model: fine-tuning from it starts where
    plane-by-plane denoising is)."""
    if model.ndim != 2 or model.task != "denoise":
        raise ValueError(f"lift_to_volume takes a 2-D denoising model, got {model!r}")
    if depth < 1 or depth % 2 == 0:
        raise ValueError(f"depth must be odd and positive, got {depth}")
    filters = np.zeros(model.filters.shape[:2] + (depth,) + model.filters.shape[2:])
    filters[:, :, depth // 2] = model.filters
    meta = json.loads(json.dumps(model.metadata))
    meta.pop("provenance", None)
    meta["lifted_from"] = {"name": model.name, "depth": int(depth)}
    return TRDModel(filters=filters, weights=model.weights, centers=model.centers,
                    precision=model.precision, lambdas=model.lambdas, sigma=model.sigma,
                    name=f"{model.name}-lifted-{depth}x{model.kernel_size}x{model.kernel_size}",
                    metadata=meta)


def _initial_stages(model, spec, config):
    """The parameters of ``model`` for fine-tuning, after checking it fits ``config``."""
    if model.task != config.task:
        raise ValueError(f"fine-tuning a {config.task} run starts from a {config.task} model, "
                         f"got a {model.task} model ({model.name!r})")
    params, mspec = model_to_params(model)
    same_grid = (mspec.centers.shape == spec.centers.shape
                 and np.allclose(mspec.centers, spec.centers) and mspec.precision == spec.precision)
    if (mspec.filter_shape, mspec.n_filters, model.n_stages) != (
            spec.filter_shape, spec.n_filters, config.n_stages) or not same_grid:
        raise ValueError(
            f"model {model.name!r} ({model.n_stages} stages of {model.n_filters} "
            f"{model.kernel_size}x{model.kernel_size} filters) does not fit this run's "
            "configuration; build it with TrainingConfig.for_model(model, ...)")
    return unpack_params(params, spec)


def _to_model(stages, spec, config, metadata=None, name=None):
    """The TRDModel of a parameter set, named ``name`` or after the task and its level."""
    f, T = config.kernel_size, len(stages)
    size = f"{f}x{f}" if config.depth is None else f"{config.depth}x{f}x{f}"
    if config.task == "denoise":
        return params_to_model(stages, spec, sigma=config.sigma,
                               name=name or f"trd-gauss-s{config.sigma:g}-{size}-{T}st",
                               metadata=metadata)
    m = params_to_model(stages, spec, sigma=1.0)
    meta = dict(metadata or {})
    meta["constraint_scale"] = config.constraint_scale
    return TRDModel(filters=m.filters, weights=m.weights, centers=m.centers,
                    precision=m.precision, lambdas=None, task="deblock",
                    quality=int(config.quality),
                    name=name or f"trd-jpeg-q{config.quality}-{f}x{f}-{T}st",
                    metadata=meta)


"""Importer for the authors' released MATLAB models (TNRD-Codes)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from ._basis import filters_from_coefficients
from ._model import ModelFileError, TRDModel

__all__ = ["import_matlab_model"]


def _scalar(struct, key, path):
    try:
        return np.asarray(struct[key]).item()
    except (KeyError, ValueError) as exc:
        raise ModelFileError(f"{path}: MFS.{key} missing or not a scalar") from exc


def import_matlab_model(path, *, task=None, sigma=None, quality=None, name=None) -> TRDModel:
    """Read a model file of the authors' MATLAB code (Chen, Yu & Pock).

    Parameters
    ----------
    path : str or path-like
        ``.mat`` file holding ``cof``, ``stage`` and ``MFS``.
    task : {'denoise', 'deblock'}, optional
        Inferred from the parameter count when omitted: deblocking models
        have no reaction weight.
    sigma, quality : optional
        Noise level or JPEG quality the model was trained for. Read from the
        file name (``sigma=25``, ``Q=20``) when omitted; the authors' q = 10
        deblocking file has no suffix.
    name : str, optional

    Returns
    -------
    TRDModel

    Notes
    -----
    Layout (see the authors' test code): ``cof[:, t]`` holds ``m*m`` DCT
    coefficients (``m = f*f - 1`` filters of ``m`` coefficients; MATLAB
    column-major, so row ``i`` of ``reshape(m, m)`` in NumPy is filter ``i``),
    then ``log(lambda_t)`` for denoising models, then ``m * n_rbf`` RBF
    weights (row ``i`` of ``reshape(m, n_rbf)`` is ``phi_i``). Filters are
    normalised to unit norm. The RBF grid (centres and precision) is read from
    ``MFS``; the sigma-50 models use a wider grid than the others.

    The authors' code evaluates the influence functions from a lookup table
    (``MFS.offsetD``, ``MFS.step``, ``MFS.nD``: [-320, 320] in steps of 0.2,
    [-397.5, 397.5] in steps of 0.25 for the sigma-50 models) with linear
    interpolation and constant values beyond its ends; the imported model
    records that grid (:attr:`TRDModel.influence_lut`) and every backend
    evaluates phi the same way, so that results match the authors' outputs
    pixel by pixel, also for filter responses beyond the grid (strong edges),
    where the closed-form RBF sum would differ.
    """
    from scipy.io import loadmat

    path = Path(path)
    try:
        mat = loadmat(path, squeeze_me=False)
    except Exception as exc:  # scipy raises many kinds for a bad file
        raise ModelFileError(f"{path}: not a readable MATLAB file ({exc})") from exc
    for key in ("cof", "MFS"):
        if key not in mat:
            raise ModelFileError(f"{path}: no {key!r} variable; not an authors' TRD model")
    cof = np.asarray(mat["cof"], dtype=np.float64)
    mfs = mat["MFS"][0, 0]
    centers = np.asarray(mfs["means"], dtype=np.float64).ravel()
    precision = float(_scalar(mfs, "precision", path))
    n_rbf = centers.size
    n_params, n_stages = cof.shape
    # n_params = m*m + [1] + m*n_rbf with m = f*f - 1
    layout = None
    for f in (3, 5, 7, 9, 11, 13):
        m = f * f - 1
        for has_lambda in (True, False):
            if m * m + int(has_lambda) + m * n_rbf == n_params:
                layout = (f, m, has_lambda)
    if layout is None:
        raise ModelFileError(
            f"{path}: {n_params} parameters per stage match no filter size with {n_rbf} RBFs"
        )
    f, m, has_lambda = layout
    if task is None:
        task = "denoise" if has_lambda else "deblock"
    coeffs = cof[: m * m].T.reshape(n_stages, m, m)
    filters = filters_from_coefficients(coeffs, f, normalize=True)
    offset = m * m
    lambdas = None
    if has_lambda:
        lambdas = np.exp(cof[offset])
        offset += 1
    weights = cof[offset:].T.reshape(n_stages, m, n_rbf)
    metadata = {"source": f"imported from authors' MATLAB file {path.name}"}
    lut = _lookup_table(mfs)
    if lut is not None:
        metadata["influence_lut"] = lut
    stem = path.stem
    if sigma is None and task == "denoise":
        hit = re.search(r"sigma=(\d+(?:\.\d+)?)", stem)
        if hit is None:
            raise ModelFileError(f"{path}: pass sigma=..., the file name does not say it")
        sigma = float(hit.group(1))
    if quality is None and task == "deblock":
        hit = re.search(r"Q=(\d+)", stem)
        quality = int(hit.group(1)) if hit else 10
    return TRDModel(
        filters=filters,
        weights=weights,
        centers=centers,
        precision=precision,
        lambdas=lambdas,
        task=task,
        sigma=sigma,
        quality=quality,
        name=name or stem,
        metadata=metadata,
    )


def _lookup_table(mfs):
    """The grid of the authors' lookup table (``MFS.offsetD``, ``MFS.step``, ``MFS.nD``), or
    None when the file holds none. Their code evaluates phi from it (``lut_eval``): exact
    samples on the grid, linear interpolation, constant beyond the ends."""
    names = mfs.dtype.names or ()
    if not {"offsetD", "step", "nD"} <= set(names):
        return None
    try:
        x0, step, n = (np.asarray(mfs[k], dtype=np.float64).item() for k in ("offsetD", "step", "nD"))
    except ValueError:
        return None
    return {"x0": x0, "step": step, "n": int(round(n))}

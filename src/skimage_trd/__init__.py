"""Trained nonlinear reaction diffusion (TRD) image restoration.

Chen, Yu & Pock, "On learning optimized reaction diffusion processes for
effective image restoration", CVPR 2015.
"""

from ._basis import dct_filter_basis
from ._deblock import deblock_jpeg, deblock_trd
from ._denoise import denoise_trd
from ._matlab import import_matlab_model
from ._model import ModelFileError, TRDModel
from ._plot import penalty_functions, plot_model
from ._poisson import (
    denoise_trd_poisson,
    estimate_poisson_gaussian,
    generalized_anscombe,
    inverse_generalized_anscombe,
)
from ._reference import stage_reference, trd_reference
from ._registry import list_models, load_model
from ._sure import sure_mse

__version__ = "0.1.0.dev0"

__all__ = [
    "denoise_trd",
    "deblock_trd",
    "deblock_jpeg",
    "denoise_trd_poisson",
    "sure_mse",
    "estimate_poisson_gaussian",
    "generalized_anscombe",
    "inverse_generalized_anscombe",
    "load_model",
    "list_models",
    "TRDModel",
    "ModelFileError",
    "dct_filter_basis",
    "import_matlab_model",
    "stage_reference",
    "trd_reference",
    "plot_model",
    "penalty_functions",
]

"""Trained nonlinear reaction diffusion (TRD) image restoration.

Chen, Yu & Pock, "On learning optimized reaction diffusion processes for
effective image restoration", CVPR 2015.

The namespace is lazy (as scikit-image's is, with ``lazy_loader``): a name's module is imported
on first use, so that ``import skimage_trd; skimage_trd.list_models()`` loads neither Numba nor
the kernels.
"""

import lazy_loader as _lazy

__version__ = "0.1.0.dev0"

__getattr__, __dir__, _names = _lazy.attach(
    __name__,
    submodules=["train"],
    submod_attrs={
        "_denoise": ["denoise_trd"],
        "_deblock": ["deblock_trd", "deblock_jpeg"],
        "_poisson": [
            "denoise_trd_poisson",
            "estimate_poisson_gaussian",
            "generalized_anscombe",
            "inverse_generalized_anscombe",
        ],
        "_sure": ["sure_mse"],
        "_registry": ["load_model", "list_models", "model_cache_dir"],
        "_jpeg": ["jpeg_roundtrip"],
        "_model": ["TRDModel", "ModelFileError"],
        "_basis": ["dct_filter_basis"],
        "_matlab": ["import_matlab_model"],
        "_plot": ["plot_model", "penalty_functions"],
        "_volumes": ["fluorescence_volume"],
    },
)
__all__ = [name for name in _names if name != "train"]  # functions and classes, not subpackages

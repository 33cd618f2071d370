"""Pictures of a model: filters, influence functions and penalty functions (paper Figs. 1 and 3)."""

from __future__ import annotations

import math

import numpy as np

from ._registry import load_model
from .kernels.influence import influence_and_derivative

__all__ = ["penalty_functions", "plot_model"]


def penalty_functions(model, stage, z):
    """Influence functions ``phi_i(z)`` and penalties ``rho_i(z) = int_0^z phi_i`` of a stage.

    Returns two arrays of shape ``(n_filters, z.size)``. The penalty of a
    Gaussian RBF sum has a closed form with ``erf``.
    """
    from scipy.special import erf

    z = np.asarray(z, dtype=np.float64)
    w = model.weights[stage]
    phi, _ = influence_and_derivative(z, w, model.centers, model.precision)
    a = math.sqrt(model.precision / 2)
    prim = erf(a * (z[None, :] - model.centers[:, None])) - erf(-a * model.centers[:, None])
    rho = math.sqrt(math.pi / (2 * model.precision)) * (w @ prim)
    return phi, rho


def plot_model(model, stage=0, *, n_filters=12, z_range=None, order="norm", fig=None):
    """Draw filters with their influence and penalty functions (Chen, Yu & Pock, Figs. 1, 3).

    Parameters
    ----------
    model : TRDModel or str
    stage : int
        0-based stage to draw.
    n_filters : int
        How many filters to show (those with the largest influence, by default).
    z_range : float, optional
        Responses drawn in ``[-z_range, z_range]`` on the [0, 255] scale;
        default: the half-width of the RBF grid.
    order : {'norm', 'index'}
        Show the filters whose influence functions are largest, or the first ones.
    fig : matplotlib Figure, optional

    Returns
    -------
    matplotlib.figure.Figure
    """
    try:
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ImportError("plot_model needs matplotlib: pip install 'skimage-trd[docs]'") from exc
    model = load_model(model)
    if not 0 <= stage < model.n_stages:
        raise ValueError(f"stage must be in 0..{model.n_stages - 1}, got {stage}")
    zr = float(z_range) if z_range is not None else float(model.centers[-1])
    z = np.linspace(-zr, zr, 801)
    phi, rho = penalty_functions(model, stage, z)
    if order == "norm":
        idx = np.argsort(-np.max(np.abs(phi), axis=1))[:n_filters]
    elif order == "index":
        idx = np.arange(min(n_filters, model.n_filters))
    else:
        raise ValueError(f"order must be 'norm' or 'index', got {order!r}")
    cols = len(idx)
    if fig is None:
        fig = plt.figure(figsize=(1.6 * cols, 5.0))
    axes = fig.subplots(3, cols, squeeze=False)
    for c, i in enumerate(idx):
        k = model.filters[stage, i]
        lim = np.abs(k).max()
        axes[0, c].imshow(k, cmap="gray", vmin=-lim, vmax=lim, interpolation="nearest")
        axes[0, c].set_axis_off()
        axes[0, c].set_title(f"k{i + 1}", fontsize=8)
        axes[1, c].plot(z, phi[i], lw=1)
        axes[2, c].plot(z, rho[i], lw=1, color="C1")
        for r in (1, 2):
            axes[r, c].tick_params(labelsize=6)
            axes[r, c].axhline(0, color="0.8", lw=0.5)
    axes[1, 0].set_ylabel("influence phi(z)", fontsize=8)
    axes[2, 0].set_ylabel("penalty rho(z)", fontsize=8)
    fig.suptitle(f"{model.name}: stage {stage + 1} of {model.n_stages} "
                 f"(lambda = {model.lambdas[stage]:.3g})" if model.lambdas is not None
                 else f"{model.name}: stage {stage + 1} of {model.n_stages}", fontsize=10)
    fig.tight_layout()
    return fig

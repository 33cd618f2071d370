"""``denoise_trd(..., adapt=True)``: the models the call would use, fine-tuned by SURE on the
image itself (its planes on each model's scale) through the training front door
(:func:`skimage_trd.train.fit`, its defaults), before the image is denoised with them."""

from __future__ import annotations

import logging
from dataclasses import replace

import numpy as np

from ._arrays import iter_planes
from ._axes import iter_volumes
from ._choice import sure_setting
from ._planes import MODEL_MID, plane_settings

__all__ = ["adapt_bank", "adapt_volume_bank", "ADAPT_SHARE"]

logger = logging.getLogger("skimage_trd.adapt")

# the share of a call's progress (0..1) that adaptation reports; the denoising the rest
ADAPT_SHARE = 0.9


def _model_scale_planes(image, sigmas, channel_axis, opts):
    """{model name: (model, [planes on its scale])} for the planes the call would denoise."""
    groups = {}
    for index, channel in iter_planes(image.shape, channel_axis):
        plane = np.asarray(image[index])
        setting = plane_settings(plane, sigmas[channel or 0], opts)
        if opts.select == "sure" and setting.action == "denoise":
            extent = (float(plane.min()), float(plane.max()))
            setting = sure_setting(setting, opts, plane.shape, extent,
                                   lambda rows, cols, p=plane: p[rows, cols])
        if setting.action != "denoise":
            continue
        x = (plane.astype(np.float64) * opts.scale - setting.center) * setting.gain + MODEL_MID
        groups.setdefault(setting.model.name, (setting.model, []))[1].append(x)
    return groups


def _tune(groups, progress, what):
    """Each group's model fine-tuned by SURE on its data (planes or volumes) through fit."""
    from .train import fit  # (training loads only when asked for)

    steps = max(1, max((_steps(model) for model, _ in groups.values()), default=1))
    total = max(1, steps * len(groups))
    tuned = {}
    for k, (name, (model, data)) in enumerate(groups.items()):
        def callback(step, k=k):
            if progress is not None:
                progress(k * steps + min(step.iteration, steps), total)

        logger.info("adapting %s to %d %s by SURE", name, len(data), what)
        tuned[name] = fit(data, sigma=model.sigma, loss="sure", init=model,
                          callback=callback, log=logger.info,
                          data_source="denoise_trd(..., adapt=True)")
        result = tuned[name].metadata["provenance"].get("result", {})
        logger.info("%s: estimated %.3f -> %.3f dB (%s)%s", name,
                    result.get("start_score", float("nan")),
                    result.get("best_score", float("nan")),
                    result.get("judged_by", result.get("reason", "")),
                    " (unchanged)" if result.get("unchanged") else "")
    return tuned


def _steps(model):
    from .train import DEFAULTS

    d = DEFAULTS["adapt"] | (DEFAULTS["adapt_volume"] if model.ndim == 3 else {})
    return d["iterations"]


def adapt_volume_bank(image, sigmas, layout, opts, progress=None):
    """:func:`adapt_bank` for volumes (``axes`` with a Z): each volume model the call would
    use, fine-tuned by SURE on the volumes it would denoise (on its scale)."""
    groups = {}
    for index, channel in iter_volumes(image.shape, layout):
        vol = np.asarray(image[index])
        setting = plane_settings(vol, sigmas[channel or 0], opts)
        if setting.action != "denoise":
            continue
        m = setting.model
        field = m.n_stages * (m.depth - 1) + 1  # (planes training needs: fit refuses fewer)
        if vol.shape[0] < field:
            logger.info("not adapting %s to a volume of %d planes (fewer than the %d its "
                        "receptive field spans): the model is used as it is", m.name,
                        vol.shape[0], field)
            continue
        x = (vol.astype(np.float64) * opts.scale - setting.center) * setting.gain + MODEL_MID
        groups.setdefault(m.name, (m, []))[1].append(x)
    tuned = _tune(groups, progress, "volume(s)")
    return replace(opts, bank=tuple(tuned.get(m.name, m) for m in opts.bank))


def adapt_bank(image, sigmas, channel_axis, opts, progress=None):
    """``opts`` with each model of its bank that some plane of ``image`` would use replaced
    by that model fine-tuned by SURE on those planes (or kept, where fine-tuning did not beat
    it by the run's estimate). Progress is reported as ``progress(done, total)`` over the
    fine-tuning iterations of all models."""
    groups = _model_scale_planes(image, sigmas, channel_axis, opts)
    tuned = _tune(groups, progress, "plane(s)")
    return replace(opts, bank=tuple(tuned.get(m.name, m) for m in opts.bank))

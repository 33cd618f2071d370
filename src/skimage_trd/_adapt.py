"""``denoise_trd(..., adapt=True)``: the models the call would use, fine-tuned by SURE on the
image itself (its planes on each model's scale) through the training front door
(:func:`skimage_trd.train.fit`, its defaults), before the image is denoised with them."""

from __future__ import annotations

import logging
from dataclasses import replace

import numpy as np

from ._arrays import iter_planes
from ._choice import sure_setting
from ._planes import MODEL_MID, plane_settings

__all__ = ["adapt_bank", "ADAPT_SHARE"]

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


def adapt_bank(image, sigmas, channel_axis, opts, progress=None):
    """``opts`` with each model of its bank that some plane of ``image`` would use replaced
    by that model fine-tuned by SURE on those planes (or kept, where fine-tuning did not beat
    it on the held-out pixels). Progress is reported as ``progress(done, total)`` over the
    fine-tuning iterations of all models."""
    from .train import fine_tuning_defaults, fit  # (training loads only when asked for)

    groups = _model_scale_planes(image, sigmas, channel_axis, opts)
    steps = fine_tuning_defaults("sure")["iterations"]
    total = max(1, steps * len(groups))
    tuned = {}
    for k, (name, (model, planes)) in enumerate(groups.items()):
        def callback(step, k=k):
            if progress is not None:
                progress(k * steps + step.iteration, total)

        logger.info("adapting %s to %d plane(s) by SURE", name, len(planes))
        tuned[name] = fit(planes, sigma=model.sigma, loss="sure", init=model,
                          callback=callback, log=logger.info,
                          data_source="denoise_trd(..., adapt=True)")
        result = tuned[name].metadata["provenance"].get("result", {})
        logger.info("%s: held-out estimate %.3f -> %.3f dB%s", name,
                    result.get("start_score", float("nan")),
                    result.get("best_score", float("nan")),
                    " (unchanged)" if result.get("unchanged") else "")
    bank = tuple(tuned.get(m.name, m) for m in opts.bank)
    return replace(opts, bank=bank)

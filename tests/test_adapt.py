"""Adapting a model to the user's noisy data (issue 33): one front door with its defaults, the
judges (held-out pixels, the twin run), the best model kept, never a worse one,
``denoise_trd(adapt=True)``."""

import subprocess
import sys

import numpy as np
import pytest
from skimage import data
from skimage.io import imsave

import skimage_trd
from skimage_trd.train import (
    DEFAULTS,
    TrainingConfig,
    fine_tuning_defaults,
    fit,
    holdout_weights,
    train_model,
)
from skimage_trd.train import fitting as fitting_module
from skimage_trd.train import objectives as objectives_module
from skimage_trd.train.cli import command
from skimage_trd.train.config import Checkpoint
from skimage_trd.train.data import unclipped_weights
from skimage_trd.train.objectives import HeldOut, TwinEstimate, _TwinObjective
from skimage_trd.train.optimizers import _adam_chunks


def _noisy(size=96, sigma=25.0, seed=0, offset=(100, 150)):
    cam = data.camera().astype(np.float64)
    r, c = offset
    clean = cam[r:r + size, c:c + size]
    return clean, clean + sigma * np.random.default_rng(seed).standard_normal(clean.shape)


@pytest.fixture(scope="module")
def small_base():
    """A small denoising model (3x3, 2 stages) to fine-tune quickly."""
    clean = [_noisy(64, offset=(100 + 50 * i, 150))[0] for i in range(4)]
    cfg = TrainingConfig(sigma=25, kernel_size=3, n_stages=2, greedy_iterations=6,
                         joint_iterations=0, crop=None, chunk=6, dtype="float64")
    model = train_model(clean, cfg, log=lambda s: None)
    model.name = "small-base"
    return model


def test_holdout_blocks_are_spread_and_the_right_share():
    w = holdout_weights((256, 256), 0.2)
    assert set(np.unique(w)) == {0.0, 1.0}
    share = 1 - w.mean()
    assert 0.15 < share < 0.25
    blocks = w.reshape(4, 64, 4, 64).mean(axis=(1, 3))
    assert set(np.unique(blocks)) == {0.0, 1.0}
    assert blocks.max(axis=0).min() == 1.0 and blocks.max(axis=1).min() == 1.0  # no row/column
    assert holdout_weights((256, 256), 0.0).all()
    small = holdout_weights((40, 40), 0.2)  # blocks shrink to a quarter of the side
    assert 0 < (1 - small).sum() < small.size
    # scored: the held-out pixels farther than the receptive field's reach from the loss's
    from scipy.ndimage import distance_transform_edt

    w, held = holdout_weights((256, 256), 0.2, reach=15)
    assert held.sum() > 0 and not (held * w).any()
    inside = np.pad(w == 0, 1, constant_values=True)  # (the border is no training pixel)
    distance = distance_transform_edt(inside)[1:-1, 1:-1]
    assert distance[held > 0].min() > 15


def test_pixels_near_a_clipping_bound_are_left_out_of_sure():
    yy, xx = np.mgrid[:128, :128]
    clean = 128 + 40 * np.sin(xx / 9.0) * np.cos(yy / 13.0)  # mid-grey: 88..168
    noisy = clean + 25 * np.random.default_rng(0).standard_normal(clean.shape)
    assert unclipped_weights(noisy, 25.0).all()  # not clipped: every pixel counts
    dark = np.clip(np.round(noisy), 0, 255)
    dark[:40] = np.clip(np.round(5 + 25 * np.random.default_rng(1).standard_normal((40, 128))),
                        0, 255)
    w = unclipped_weights(dark, 25.0)
    assert w[:36].mean() < 0.05 and w[50:].mean() > 0.9  # the dark, clipped band is left out


def _good_and_smooth():
    """The shipped sigma-25 model and one that smooths too much (its sigma-35 rescaling run at
    the scale of noise 25): two fixed models whose true errors differ."""
    from skimage_trd.train import rescale_model

    good = skimage_trd.load_model("trd-gauss-s25-7x7-5st")
    smooth = rescale_model(good, 35.0)
    smooth.sigma = 25.0
    return good, smooth


def test_held_out_sure_estimates_the_true_error_of_fixed_models():
    # SURE on the held-out pixels of two fixed models (the shipped one and one that smooths
    # too much) against the true squared error there: levels and, what picks a result, the
    # difference (deterministic: fixed seeds)
    run = skimage_trd.kernels.engine.run_model
    good, smooth = _good_and_smooth()
    cfg = TrainingConfig.for_model(good, sigma=25, greedy_iterations=0, joint_iterations=0,
                                   loss="sure", holdout=0.2)
    est, true = [], []
    for seed in range(3):
        clean, noisy = _noisy(192, seed=seed)
        _, held = holdout_weights(noisy.shape, 0.2, reach=15)
        judge = HeldOut([noisy], None, [held], cfg, loss="sure")
        est.append([judge.mse(m) for m in (good, smooth)])
        true.append([np.sum(held * (run(noisy, m, exact=False) - clean) ** 2) / held.sum()
                     for m in (good, smooth)])
    est, true = np.array(est), np.array(true)
    assert np.all(est[:, 1] > est[:, 0])  # the worse model is judged worse, every time
    assert abs(est.mean() - true.mean()) < 0.15 * true.mean(), (est, true)
    diff_est, diff_true = np.diff(est).mean(), np.diff(true).mean()
    assert 0.4 * diff_true < diff_est < 1.6 * diff_true, (diff_est, diff_true)


def _scripted_scores(monkeypatch, scores, zs=None):
    """Make the judges' estimates (held-out pixels, twin run) return ``scores`` in turn (the
    start's first), and their gains over the start ``zs`` standard errors (default 10)."""
    it = iter(scores)
    zs = iter(zs) if zs is not None else None

    def psnr(self, *args):
        self.last_maps = None
        return next(it)

    for judge in (objectives_module.HeldOut, objectives_module.TwinEstimate):
        monkeypatch.setattr(judge, "psnr", psnr)
        monkeypatch.setattr(judge, "gain_z", lambda self, a, b: 10.0 if zs is None else next(zs))


def test_a_run_that_never_beats_its_start_returns_the_start_unchanged(monkeypatch, small_base):
    clean, noisy = _noisy(96)
    _scripted_scores(monkeypatch, [30.0, 29.9, 29.5, 29.0, 28.0])
    lines = []
    tuned = fit([noisy], sigma=25, loss="sure", init=small_base, iterations=8, chunk=2,
                patience=0, log=lines.append)
    assert tuned.name == small_base.name
    np.testing.assert_array_equal(tuned.weights, small_base.weights)
    np.testing.assert_array_equal(tuned.filters, small_base.filters)
    result = tuned.metadata["provenance"]["result"]
    assert result["unchanged"] and result["best_joint_iteration"] == 0
    assert any("no iteration beat the starting point" in line for line in lines)


def test_the_best_checkpoint_is_the_result_and_patience_stops_early(monkeypatch, small_base):
    clean, noisy = _noisy(96)
    # start, then iterations 2, 4 (best), 6, 8, 10: patience 2 stops after 8
    _scripted_scores(monkeypatch, [30.0, 30.2, 30.5, 30.4, 30.1, 99.0])
    lines, steps = [], []
    tuned = fit([noisy], sigma=25, loss="sure", init=small_base, iterations=20, chunk=2,
                patience=2, log=lines.append, callback=steps.append)
    result = tuned.metadata["provenance"]["result"]
    assert result["best_joint_iteration"] == 4 and result["best_score"] == 30.5
    assert not result["unchanged"] and any("stopped early" in line for line in lines)
    assert max(s.iteration for s in steps) == 8
    # the log and the steps show the held-out estimate, never SURE's fitted figure
    assert not any("train PSNR" in line for line in lines)
    assert [s.validation for s in steps if s.iteration in (3, 5)] == [30.2, 30.5]
    # its own name, with the starting model in its provenance
    assert tuned.name.startswith("small-base-sure-") and tuned.name != small_base.name
    assert tuned.metadata["provenance"]["initial_model"]["name"] == "small-base"
    # the result is the parameters of iteration 4: rerun to 4 without holding out judgement
    _scripted_scores(monkeypatch, [0.0, 1.0, 2.0])
    four = fit([noisy], sigma=25, loss="sure", init=small_base, iterations=4, chunk=2,
               patience=0)
    np.testing.assert_array_equal(tuned.weights, four.weights)


def test_a_gain_within_the_estimates_noise_is_no_gain(monkeypatch, small_base):
    # a checkpoint that scores higher but not by two standard errors is not the result
    clean, noisy = _noisy(96)
    _scripted_scores(monkeypatch, [30.0, 30.3, 30.6], zs=[1.5, 2.5])
    tuned = fit([noisy], sigma=25, loss="sure", init=small_base, iterations=4, chunk=2,
                patience=0)
    result = tuned.metadata["provenance"]["result"]
    assert result["best_joint_iteration"] == 4  # (iteration 2 scored higher than the start,
    gains = [h.get("gain_z") for h in tuned.metadata["provenance"]["history"]]  # by 1.5 SE)
    assert gains[-2:] == [1.5, 2.5]


def test_gain_z_of_a_paired_difference():
    held = [np.ones((64, 64))]
    judge = HeldOut.__new__(HeldOut)
    judge.held = held
    rng = np.random.default_rng(0)
    before = [100 + rng.standard_normal((64, 64))]
    assert abs(judge.gain_z(before, [before[0] - 0.001])) > 10  # tiny but exact: certain
    noise = [before[0] + 0.5 + 5 * rng.standard_normal((64, 64))]
    z = judge.gain_z(before, noise)  # worse by 0.5, noise 5 per pixel over 4096 pixels
    assert -8 < z < -3


def test_overfitting_made_easy_hands_back_no_worse_model(small_base):
    # L-BFGS (restarted each chunk, a new probe each) on one small image for many iterations
    clean, noisy = _noisy(64, offset=(300, 200))
    tuned = fit([noisy], sigma=25, loss="sure", init=small_base, optimizer="lbfgs",
                iterations=30)
    run = skimage_trd.kernels.engine.run_model

    def true_psnr(m):
        return 10 * np.log10(255**2 / np.mean((run(noisy, m) - clean) ** 2))

    assert true_psnr(tuned) > true_psnr(small_base) - 0.1


def _capture_configs(monkeypatch):
    seen = []

    def fake(clean, config, **kw):
        seen.append((config, kw["init_model"].name if kw["init_model"] else None))
        raise _Seen

    monkeypatch.setattr(fitting_module, "train_model", fake)
    return seen


class _Seen(ValueError):  # (the command line turns it into SystemExit)
    pass


def test_every_front_door_fine_tunes_with_the_same_defaults(monkeypatch, tmp_path):
    from napari_trd import _jobs

    seen = _capture_configs(monkeypatch)
    clean, noisy = _noisy(96)
    noisy8 = np.clip(np.round(noisy), 0, 255).astype(np.uint8)
    folder = tmp_path / "noisy"
    folder.mkdir()
    imsave(folder / "a.png", noisy8, check_contrast=False)
    base = "trd-gauss-s25-7x7-5st"
    with pytest.raises(SystemExit):  # (the fake raises once the configuration is made)
        command(["--loss", "sure", "--data", str(folder), "--sigma", "25", "--init", base,
                 "--out", str(tmp_path / "run")])
    with pytest.raises(_Seen):
        fit([noisy8.astype(float)], sigma=25, loss="sure", init=base)
    monkeypatch.setenv(_jobs.USER_MODELS_ENV, str(tmp_path / "models"))
    with pytest.raises(_Seen):
        _jobs.train(noisy8 / 255.0, sigma=25 / 255.0, loss="sure", start_from=base,
                    joint_iterations=None)
    with pytest.raises(_Seen):
        skimage_trd.denoise_trd(noisy8, 25, adapt=True)
    assert len(seen) == 4
    configs = [c for c, _ in seen]
    assert all(name == base for _, name in seen)
    d = fine_tuning_defaults("sure")
    for c in configs:
        assert (c.optimizer, c.learning_rate, c.joint_iterations, c.chunk, c.twin, c.holdout,
                c.patience, c.patch, c.patches, c.crop) == (
            d["optimizer"], d["learning_rate"], d["iterations"], d["chunk"], d["twin"],
            d["holdout"], d["patience"], d["patch"], d["patches"], None)
        assert c.sigma == 25 and c.loss == "sure" and c.greedy_iterations == 0
    # judged by a twin run, nothing held out; with L-BFGS (no twin) by held-out pixels
    assert d["optimizer"] == "adam" and d["twin"] and d["holdout"] == 0
    with pytest.raises(_Seen):
        fit([noisy8.astype(float)], sigma=25, loss="sure", init=base, optimizer="lbfgs")
    assert not seen[-1][0].twin and seen[-1][0].holdout == DEFAULTS["adapt"]["holdout"] > 0


def test_the_console_script_exits_0_on_success_and_1_on_failure(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    clean, _ = _noisy(48)
    imsave(folder / "a.png", clean.astype(np.uint8), check_contrast=False)
    args = [sys.executable, "-m", "skimage_trd.train", "--data", str(folder), "--sigma", "20",
            "--kernel-size", "3", "--stages", "1", "--greedy-iterations", "1",
            "--joint-iterations", "0"]
    ok = subprocess.run([*args, "--out", str(tmp_path / "ok")], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert "TRDModel(" not in ok.stdout and "saved" in ok.stdout
    bad = subprocess.run([*args, "--out", str(tmp_path / "bad"), "--crop", "500"],
                         capture_output=True, text=True)
    assert bad.returncode == 1 and "error:" in bad.stderr


def test_denoise_trd_adapt(monkeypatch):
    monkeypatch.setitem(DEFAULTS["adapt"], "iterations", 4)
    monkeypatch.setitem(DEFAULTS["adapt"], "chunk", 2)
    clean, noisy = _noisy(128)
    noisy01 = noisy / 255.0
    reports = []
    out, choices = skimage_trd.denoise_trd(noisy01, 25 / 255.0, adapt=True, return_choices=True,
                                           progress=lambda d, t: reports.append((d, t)))
    plain = skimage_trd.denoise_trd(noisy01, 25 / 255.0)
    assert out.shape == noisy01.shape and out.dtype == plain.dtype
    name = choices[0]["model"]
    assert name.startswith("trd-gauss-s25-7x7-5st")
    if name == "trd-gauss-s25-7x7-5st":  # unchanged: the default call's result
        np.testing.assert_array_equal(out, plain)
    else:
        assert not np.array_equal(out, plain)
    assert reports[-1][0] == reports[-1][1] and len(reports) > 4
    assert all(a[0] / a[1] <= b[0] / b[1] for a, b in zip(reports, reports[1:]))
    with pytest.raises(ValueError, match="color_transform='none'"):
        skimage_trd.denoise_trd(np.stack([noisy01] * 3, -1), 0.1, channel_axis=-1, adapt=True)
    da = pytest.importorskip("dask.array")
    with pytest.raises(ValueError, match="NumPy"):
        skimage_trd.denoise_trd(da.from_array(noisy01), 0.1, adapt=True)


def test_command_line_and_napari_job_adapt(monkeypatch, tmp_path):
    from skimage.io import imread

    from napari_trd import _jobs
    from skimage_trd.cli import main

    monkeypatch.setitem(DEFAULTS["adapt"], "iterations", 2)
    monkeypatch.setitem(DEFAULTS["adapt"], "chunk", 1)
    clean, noisy = _noisy(96)
    noisy8 = np.clip(np.round(noisy), 0, 255).astype(np.uint8)
    imsave(tmp_path / "a.png", noisy8, check_contrast=False)
    assert main(["denoise", str(tmp_path / "a.png"), "-o", str(tmp_path / "out"), "--sigma",
                 "25", "--adapt", "-q"]) == 0
    out = imread(tmp_path / "out" / "a.png")
    assert out.shape == noisy8.shape and out.dtype == np.uint8
    choices = []
    layer = _jobs.denoise(noisy8, sigma=25, adapt=True, keep_dtype=True, choices=choices)
    assert layer.dtype == np.uint8 and choices[0]["model"].startswith("trd-gauss-s25")


# ----------------------------------------------------------------------------- the twin run
def test_adam_on_a_run_and_its_twin_is_adam_on_each_alone():
    # one parameter vector for both: Adam is elementwise, so nothing couples them
    class Quadratic:
        def __init__(self, centre):
            self.centre, self.calls = centre, 0
            self.last_loss_per_px = self.last_psnr = self.last_time = 0.0
            self.psnr_name = None

        def start_chunk(self, done):
            pass

        def __call__(self, x):
            self.calls += 1
            d = x - self.centre * np.cos(self.calls)  # (a gradient that changes every step)
            return float(d @ d), 2 * d

    class Quiet:
        def iteration(self, *args):
            pass

    x0 = np.linspace(-1, 1, 7)
    seen = []
    both = _adam_chunks(_TwinObjective(Quadratic(3.0), Quadratic(-2.0)), np.concatenate([x0, x0]),
                        0, 9, chunk=4, on_chunk=lambda x, done, m: seen.append(done),
                        reporter=Quiet(), label="", learning_rate=0.1)
    alone = [_adam_chunks(Quadratic(c), x0, 0, 9, chunk=4, on_chunk=lambda *a: None,
                          reporter=Quiet(), label="", learning_rate=0.1) for c in (3.0, -2.0)]
    np.testing.assert_array_equal(both, np.concatenate(alone))
    assert seen == [4, 8, 9]


def test_the_twin_run_is_the_same_adaptation_of_the_perturbed_images(small_base, tmp_path):
    # the run and its twin, side by side, end where each ends alone (the run on the image, the
    # twin on the image plus TwinEstimate's probe): same probes, same steps
    clean, noisy = _noisy(64)
    cfg = TrainingConfig.for_model(small_base, sigma=25, greedy_iterations=0,
                                   joint_iterations=4, chunk=2, crop=None, loss="sure",
                                   optimizer="adam", twin=True, dtype="float64")
    train_model(None, cfg, noisy=[noisy], checkpoint_dir=tmp_path / "both", init_model=small_base)
    both = Checkpoint(tmp_path / "both", cfg, "")
    with np.load(both.path) as z:
        params, twin_params = z["params"], z["twin_params"]
    alone = cfg.__class__(**{**cfg.__dict__, "twin": False})
    twin_image = TwinEstimate([noisy], None, cfg).twin_inputs[0]
    for image, expected in ((noisy, params), (twin_image, twin_params)):
        folder = tmp_path / str(len(list(tmp_path.iterdir())))
        train_model(None, alone, noisy=[image], checkpoint_dir=folder, init_model=small_base)
        with np.load(folder / "checkpoint.npz") as z:
            np.testing.assert_allclose(z["params"], expected, rtol=0, atol=1e-12)
    assert not np.array_equal(params, twin_params)  # (the twin saw other data)


def test_the_twin_estimate_of_fixed_models_is_sure():
    # a twin that equals the run (no adaptation): SURE with the twin's probe, near the true
    # error, and the difference of two fixed models (what picks a result) too
    good, smooth = _good_and_smooth()
    cfg = TrainingConfig.for_model(good, sigma=25, greedy_iterations=0, joint_iterations=0,
                                   loss="sure", optimizer="adam", twin=True)
    run = skimage_trd.kernels.engine.run_model
    est, true = [], []
    for seed in range(3):
        clean, noisy = _noisy(256, seed=seed)
        judge = TwinEstimate([noisy], None, cfg)
        est.append([float(judge.maps(m, m)[0].mean()) for m in (good, smooth)])
        true.append([float(np.mean((run(noisy, m, exact=False) - clean) ** 2))
                     for m in (good, smooth)])
    est, true = np.array(est), np.array(true)
    assert np.all(est[:, 1] > est[:, 0])  # the worse model is judged worse, every time
    assert abs(est.mean() - true.mean()) < 0.1 * true.mean(), (est, true)
    diff_est, diff_true = np.diff(est).mean(), np.diff(true).mean()
    assert 0.6 * diff_true < diff_est < 1.4 * diff_true, (diff_est, diff_true)


def test_the_twin_estimate_counts_what_the_adaptation_learnt_of_the_noise(small_base):
    # after an adaptation to one small image, SURE through the adapted model with the twin's
    # probe alone (the parameters taken as fixed) runs above the true gain; the twin run's
    # estimate does not
    clean, noisy = _noisy(64, offset=(300, 200))
    cfg = TrainingConfig.for_model(small_base, sigma=25, greedy_iterations=0,
                                   joint_iterations=20, chunk=20, crop=None, loss="sure",
                                   optimizer="adam", learning_rate=0.01, dtype="float64")
    judge = TwinEstimate([noisy], None, cfg)
    run_ = train_model(None, cfg, noisy=[noisy], init_model=small_base)
    twin = train_model(None, cfg, noisy=[judge.twin_inputs[0]], init_model=small_base)
    run = skimage_trd.kernels.engine.run_model

    def true_mse(m):
        return float(np.mean((run(noisy, m, exact=False) - clean) ** 2))

    true_gain = true_mse(small_base) - true_mse(run_)
    start = judge.maps(small_base, small_base)[0]
    twin_gain = float((start - judge.maps(run_, twin)[0]).mean())
    fixed_gain = float((start - judge.maps(run_, run_)[0]).mean())
    assert fixed_gain > true_gain + 5, (fixed_gain, true_gain)  # optimistic: fitted to the noise
    assert abs(twin_gain - true_gain) < 0.5 * (fixed_gain - true_gain), (twin_gain, true_gain)


def test_overfitting_with_adam_hands_back_no_worse_model(small_base):
    # the defaults (Adam, judged by the twin run) with a large step on one small image
    clean, noisy = _noisy(64, offset=(300, 200))
    tuned = fit([noisy], sigma=25, loss="sure", init=small_base, learning_rate=0.02,
                iterations=30)
    run = skimage_trd.kernels.engine.run_model

    def true_psnr(m):
        return 10 * np.log10(255**2 / np.mean((run(noisy, m) - clean) ** 2))

    assert tuned.metadata["provenance"]["config"]["twin"]
    assert true_psnr(tuned) > true_psnr(small_base) - 0.1


def test_a_resumed_twin_run_continues_where_it_stopped(small_base, tmp_path):
    # 4 steps, then the same run asked for 8 (checkpoint: the run's, the twin's parameters
    # and Adam's moments of both): the same as 8 at once
    clean, noisy = _noisy(64)
    kw = dict(sigma=25, loss="sure", init=small_base, chunk=2, patience=0)
    fit([noisy], iterations=4, checkpoint_dir=tmp_path / "a", **kw)
    resumed = fit([noisy], iterations=8, checkpoint_dir=tmp_path / "a", **kw)
    straight = fit([noisy], iterations=8, checkpoint_dir=tmp_path / "b", **kw)
    with np.load(tmp_path / "a" / "checkpoint.npz") as a, \
            np.load(tmp_path / "b" / "checkpoint.npz") as b:
        for key in ("params", "twin_params", "best_params"):
            np.testing.assert_array_equal(a[key], b[key])
    np.testing.assert_array_equal(resumed.weights, straight.weights)
    assert resumed.metadata["provenance"]["result"] == straight.metadata["provenance"]["result"]


def test_the_judge_gets_the_twin_runs_parameters(monkeypatch, small_base, tmp_path):
    # every estimate compares the run's stages with its twin's (never the run's twice)
    from skimage_trd.train.gradients import pack_params

    clean, noisy = _noisy(64)
    seen = []
    psnr = TwinEstimate.psnr

    def spy(self, stages, twin_stages, spec, config):
        seen.append((pack_params(stages), pack_params(twin_stages)))
        return psnr(self, stages, twin_stages, spec, config)

    monkeypatch.setattr(TwinEstimate, "psnr", spy)
    fit([noisy], sigma=25, loss="sure", init=small_base, iterations=4, chunk=2, patience=0,
        checkpoint_dir=tmp_path)
    np.testing.assert_array_equal(*seen[0])  # the start: both the same
    with np.load(tmp_path / "checkpoint.npz") as z:
        np.testing.assert_array_equal(seen[-1][0], z["params"])
        np.testing.assert_array_equal(seen[-1][1], z["twin_params"])
    assert not np.array_equal(*seen[-1])


def test_the_twin_is_an_option(small_base):
    clean, noisy = _noisy(64)
    plain = fit([noisy], sigma=25, loss="sure", init=small_base, iterations=2, chunk=1,
                holdout=0, twin=False)  # no judge: the last parameters
    assert "result" not in plain.metadata["provenance"]
    assert not plain.metadata["provenance"]["config"]["twin"]
    with pytest.raises(ValueError, match="twin=True"):
        fit([noisy], sigma=25, loss="sure", init=small_base, optimizer="lbfgs", twin=True)
    with pytest.raises(ValueError, match="twin=True"):
        fit([noisy], sigma=25, loss="sure", init=small_base, holdout=0.2, twin=True)

"""The training driver: it learns, checkpoints, resumes exactly, and names bad data."""

import numpy as np
import pytest
from skimage import data
from skimage.io import imsave

from skimage_trd import TRDModel
from skimage_trd.train import TrainingConfig, load_image_folder, train_model
from skimage_trd.train.cli import command as main


def _clean(n=4, size=40):
    cam = data.camera().astype(np.float64)
    return [cam[100 + 50 * i : 100 + 50 * i + size, 150 : 150 + size] for i in range(n)]


def _config(**kw):
    base = dict(sigma=25, kernel_size=3, n_stages=2, greedy_iterations=4, joint_iterations=4,
                crop=40, chunk=2, dtype="float64")
    base.update(kw)
    return TrainingConfig(**base)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The uninterrupted run of _config() that every interrupted one must reproduce. Training is
    deterministic (test_deterministic_for_a_seed), so the tests below share one."""
    return train_model(_clean(), _config(), checkpoint_dir=tmp_path_factory.mktemp("full"),
                       log=lambda s: None)


def test_training_improves_on_the_noisy_input(tmp_path):
    clean = _clean()
    lines = []
    model = train_model(clean, _config(), log=lines.append)
    prov = model.metadata["provenance"]
    noisy_psnr = 10 * np.log10(255**2 / 25**2)
    assert prov["final_train_psnr"] > noisy_psnr + 3
    assert any("ETA" in line and "grad" in line and "PSNR" in line for line in lines)
    assert model.n_stages == 2 and model.kernel_size == 3 and model.sigma == 25


@pytest.mark.parametrize("dtype", ["float64", pytest.param("float32", marks=pytest.mark.slow)])
def test_deterministic_for_a_seed(dtype):
    a = train_model(_clean(), _config(dtype=dtype), log=lambda s: None)
    b = train_model(_clean(), _config(dtype=dtype), log=lambda s: None)
    np.testing.assert_array_equal(a.weights, b.weights)
    c = train_model(_clean(), _config(seed=1, dtype=dtype), log=lambda s: None)
    assert not np.array_equal(a.weights, c.weights)


class _Stop(Exception):
    pass


@pytest.mark.parametrize("stop_after", [3, 9, 14])
def test_resume_reproduces_the_uninterrupted_run(tmp_path, uninterrupted, stop_after):
    full = uninterrupted
    seen = []

    def killer(line):
        seen.append(line)
        if len(seen) == stop_after:
            raise _Stop  # the process dies here, possibly in the middle of a chunk

    with pytest.raises(_Stop):
        train_model(_clean(), _config(), checkpoint_dir=tmp_path / "b", log=killer)
    lines = []
    resumed = train_model(_clean(), _config(), checkpoint_dir=tmp_path / "b", log=lines.append)
    assert lines[0].startswith("resuming") or stop_after < 3
    np.testing.assert_array_equal(resumed.filters, full.filters)
    np.testing.assert_array_equal(resumed.weights, full.weights)
    np.testing.assert_array_equal(resumed.lambdas, full.lambdas)


def test_checkpoint_of_other_config_is_refused(tmp_path):
    train_model(_clean(), _config(greedy_iterations=2, joint_iterations=0),
                   checkpoint_dir=tmp_path, log=lambda s: None)
    with pytest.raises(ValueError, match="different configuration"):
        train_model(_clean(), _config(sigma=15), checkpoint_dir=tmp_path, log=lambda s: None)


def test_more_joint_iterations_continue_a_finished_run(tmp_path):
    # 4 then 6 joint iterations (chunks of 2) end where 6 from the start end
    full = train_model(_clean(), _config(joint_iterations=6), log=lambda s: None)
    train_model(_clean(), _config(), checkpoint_dir=tmp_path, log=lambda s: None)
    lines = []
    longer = train_model(_clean(), _config(joint_iterations=6), checkpoint_dir=tmp_path,
                         log=lines.append)
    assert lines[0].startswith("resuming") and "4 iterations done" in lines[0]
    np.testing.assert_array_equal(longer.filters, full.filters)
    np.testing.assert_array_equal(longer.weights, full.weights)
    prov = longer.metadata["provenance"]
    assert prov["iterations"]["joint"] == 6 and len(prov["sessions"]) == 2
    # but not fewer than are done, nor another change
    with pytest.raises(ValueError, match="more than the 2 asked for"):
        train_model(_clean(), _config(joint_iterations=2), checkpoint_dir=tmp_path,
                    log=lambda s: None)
    with pytest.raises(ValueError, match="different configuration"):
        train_model(_clean(), _config(joint_iterations=8, chunk=4), checkpoint_dir=tmp_path,
                    log=lambda s: None)


def test_bad_training_data_is_named(tmp_path):
    good = tmp_path / "good"
    good.mkdir()
    for i, img in enumerate(_clean(2)):
        imsave(good / f"img{i}.png", img.astype(np.uint8))
    (good / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="broken.png"):
        load_image_folder(good)
    (good / "broken.png").unlink()
    imsave(good / "tiny.png", np.zeros((10, 12), np.uint8))
    with pytest.raises(ValueError, match="tiny.png.*smaller"):
        load_image_folder(good, min_size=40)
    with pytest.raises(ValueError, match="does not exist"):
        load_image_folder(tmp_path / "nowhere")
    clean = _clean(2)
    with pytest.raises(ValueError, match="image1"):
        train_model(clean, _config(), noisy=[clean[0], clean[1][:30]], log=lambda s: None)


def test_command_line(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    for i, img in enumerate(_clean(3)):
        imsave(folder / f"c{i}.png", np.clip(img, 0, 255).astype(np.uint8))
    out = tmp_path / "run"
    model = main(["--data", str(folder), "--sigma", "20", "--out", str(out), "--kernel-size", "3",
                  "--stages", "1", "--greedy-iterations", "2", "--joint-iterations", "0",
                  "--crop", "40", "--chunk", "1", "--export", str(tmp_path / "m.npz")])
    loaded = TRDModel.load(tmp_path / "m.npz")
    assert loaded.sigma == 20 and loaded.n_stages == 1
    assert "--sigma 20" in loaded.metadata["provenance"]["command"]
    assert (out / "train.log").read_text().count("iter") >= 2
    np.testing.assert_array_equal(model.weights, loaded.weights)


def test_command_line_fine_tunes_a_deblocking_model(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    for i, img in enumerate(_clean(3)):
        imsave(folder / f"c{i}.png", np.clip(img, 0, 255).astype(np.uint8))
    common = ["--data", str(folder), "--task", "deblock", "--crop", "32", "--chunk", "1"]
    main([*common, "--quality", "20", "--out", str(tmp_path / "a"), "--kernel-size", "3",
          "--stages", "2", "--greedy-iterations", "1", "--joint-iterations", "0",
          "--export", str(tmp_path / "a.npz")])
    tuned = main([*common, "--out", str(tmp_path / "b"), "--init", str(tmp_path / "a.npz"),
                  "--joint-iterations", "2", "--export", str(tmp_path / "b.npz")])
    assert tuned.quality == 20 and tuned.n_stages == 2 and tuned.kernel_size == 3  # from --init
    log = (tmp_path / "b" / "train.log").read_text()
    assert "fine-tuning" in log and "greedy" not in log.split("fine-tuning")[1]
    assert "--init" in tuned.metadata["provenance"]["command"]
    with pytest.raises(SystemExit, match="unknown|not"):
        main([*common, "--out", str(tmp_path / "c"), "--init", "no-such-model"])
    # the task comes from the model; a contradicting --task is refused before any work
    with pytest.raises(SystemExit, match="is a deblock model"):
        main(["--data", str(folder), "--task", "denoise", "--sigma", "20", "--out",
              str(tmp_path / "d"), "--init", str(tmp_path / "a.npz")])
    # denoising fine-tuning with validation and sigma taken from the model
    main(["--data", str(folder), "--sigma", "20", "--out", str(tmp_path / "e"), "--kernel-size", "3",
          "--stages", "1", "--greedy-iterations", "1", "--joint-iterations", "0", "--crop", "32",
          "--export", str(tmp_path / "e.npz")])
    tuned = main(["--data", str(folder), "--validation", str(folder), "--out", str(tmp_path / "f"),
                  "--init", str(tmp_path / "e.npz"), "--joint-iterations", "1", "--crop", "32"])
    assert tuned.sigma == 20 and tuned.task == "denoise"


def test_command_line_deblocking_default_crop(tmp_path):
    """Without --crop a deblocking run uses 176 (whole 8x8 blocks), not the denoising 180."""
    from skimage.transform import resize

    folder = tmp_path / "data"
    folder.mkdir()
    for i, img in enumerate(_clean(2)):
        imsave(folder / f"c{i}.png", np.clip(resize(img, (180, 180)), 0, 255).astype(np.uint8))
    model = main(["--data", str(folder), "--task", "deblock", "--quality", "20", "--out",
                  str(tmp_path / "run"), "--kernel-size", "3", "--stages", "1",
                  "--greedy-iterations", "1", "--joint-iterations", "0"])
    assert model.metadata["provenance"]["config"]["crop"] == 176


@pytest.mark.slow
def test_deblocking_training_on_numpy_backend(tmp_path):
    from skimage_trd import deblock_trd

    clean = [c[:32, :32] for c in _clean(3)]
    cfg = TrainingConfig(task="deblock", quality=10, kernel_size=3, n_stages=2, greedy_iterations=3,
                         joint_iterations=2, crop=32, chunk=2, dtype="float64")
    lines = []
    model = train_model(clean, cfg, backend="numpy", log=lines.append)
    assert model.task == "deblock" and model.quality == 10 and model.lambdas is None
    assert model.constraint_scale == 0.8 and model.name == "trd-jpeg-q10-3x3-2st"
    from skimage_trd.train.data import _jpeg_decoded

    dec = _jpeg_decoded(clean[0], 10)
    out = deblock_trd(dec, 10, model=model, preserve_range=True)
    err = lambda a: np.mean((a - clean[0]) ** 2)  # noqa: E731
    assert err(out) < err(dec)  # trained on these crops, it must beat the decoder on them
    # the Numba trainer takes the same path (float64: equal to rounding)
    numba_model = train_model(clean, cfg, backend="numba", log=lines.append)
    np.testing.assert_allclose(numba_model.filters, model.filters, atol=1e-6)
    np.testing.assert_allclose(numba_model.weights, model.weights, rtol=1e-5,
                               atol=1e-6 * np.abs(model.weights).max())


def test_fine_tuning_a_deblocking_model(tmp_path):
    from skimage_trd.train.data import _jpeg_decoded

    clean = [c[:32, :32] for c in _clean(3)]
    cfg = TrainingConfig(task="deblock", quality=10, kernel_size=3, n_stages=2, greedy_iterations=2,
                         joint_iterations=0, crop=32, chunk=2)
    start = train_model(clean, cfg, log=lambda line: None)
    tune = TrainingConfig.for_model(start, task="deblock", quality=10, greedy_iterations=0,
                                    joint_iterations=4, crop=32, chunk=2)
    lines = []
    tuned = train_model(clean, tune, init_model=start, log=lines.append,
                        checkpoint_dir=tmp_path / "run")
    assert any("fine-tuning" in line for line in lines)
    assert tuned.task == "deblock" and tuned.lambdas is None
    assert tuned.metadata["provenance"]["initialised_from"] == start.name
    dec = [_jpeg_decoded(c, 10) for c in clean]
    from skimage_trd import deblock_trd

    def err(m):
        return np.mean([np.mean((deblock_trd(d, 10, model=m, preserve_range=True) - c) ** 2)
                        for d, c in zip(dec, clean)])

    assert err(tuned) < err(start)
    with pytest.raises(ValueError, match="deblock run starts from a deblock model"):
        denoiser = train_model(_clean(), _config(greedy_iterations=1, joint_iterations=0), log=print)
        train_model(clean, tune, init_model=denoiser, log=lines.append)


def test_config_validation():
    with pytest.raises(ValueError, match="sigma"):
        TrainingConfig()
    with pytest.raises(ValueError, match="quality"):
        TrainingConfig(task="deblock")
    with pytest.raises(ValueError, match="8x8"):
        TrainingConfig(task="deblock", quality=10, crop=180)


@pytest.mark.parametrize("crash_at", range(1, 9))  # a run writes 8 checkpoints
def test_crash_while_writing_a_checkpoint(tmp_path, monkeypatch, uninterrupted, crash_at):
    import skimage_trd._model as tr

    full = uninterrupted
    real_replace = tr.os.replace
    calls = {"n": 0}

    def crashing_replace(src, dst):
        calls["n"] += 1
        if calls["n"] == crash_at:  # the temporary file is written, the rename never happens
            raise _Stop
        return real_replace(src, dst)

    monkeypatch.setattr(tr.os, "replace", crashing_replace)
    with pytest.raises(_Stop):
        train_model(_clean(), _config(), checkpoint_dir=tmp_path / "b", log=lambda s: None)
    monkeypatch.setattr(tr.os, "replace", real_replace)
    resumed = train_model(_clean(), _config(), checkpoint_dir=tmp_path / "b", log=lambda s: None)
    np.testing.assert_array_equal(resumed.weights, full.weights)


@pytest.mark.slow
def test_sigkill_and_resume(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    folder = tmp_path / "data"
    folder.mkdir()
    for i, img in enumerate(_clean(3)):
        imsave(folder / f"c{i}.png", np.clip(img, 0, 255).astype(np.uint8))
    args = ["--data", str(folder), "--sigma", "20", "--kernel-size", "3", "--stages", "2",
            "--greedy-iterations", "6", "--joint-iterations", "6", "--crop", "40", "--chunk", "1",
            "--dtype", "float64"]
    main(args + ["--out", str(tmp_path / "full"), "--export", str(tmp_path / "full.npz")])
    run = tmp_path / "killed"
    cmd = [sys.executable, "-m", "skimage_trd.train", *args, "--out", str(run),
           "--export", str(tmp_path / "resumed.npz")]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (run / "checkpoint.npz").exists() and time.time() < deadline:
        time.sleep(0.01)
    time.sleep(0.3)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    a = TRDModel.load(tmp_path / "full.npz")
    b = TRDModel.load(tmp_path / "resumed.npz")
    np.testing.assert_array_equal(a.weights, b.weights)
    np.testing.assert_array_equal(a.filters, b.filters)


def test_fine_tuning_starts_from_a_model_and_improves_it():
    base = train_model(_clean(), _config(joint_iterations=0), log=lambda s: None)
    other = [c[::-1] for c in _clean()]  # "your own data"
    config = TrainingConfig.for_model(base, greedy_iterations=0, joint_iterations=4, crop=40,
                                      chunk=2, dtype="float64")
    lines = []
    tuned = train_model(other, config, init_model=base, log=lines.append)
    assert any("fine-tuning" in line for line in lines)
    assert not any("greedy" in line for line in lines)
    assert tuned.metadata["provenance"]["initialised_from"] == base.name
    before = train_model(other, config.__class__.for_model(base, greedy_iterations=0,
                         joint_iterations=0, crop=40, dtype="float64"), init_model=base,
                         log=lambda s: None)
    assert (tuned.metadata["provenance"]["final_loss_per_pixel"]
            < before.metadata["provenance"]["final_loss_per_pixel"])
    with pytest.raises(ValueError, match="does not fit"):
        train_model(other, _config(kernel_size=5), init_model=base, log=lambda s: None)


def test_command_line_data_errors_are_one_line(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    for i, img in enumerate(_clean(2, size=60)):
        imsave(folder / f"c{i}.png", np.clip(img[: 40 + i, :48], 0, 255).astype(np.uint8))
    common = ["--data", str(folder), "--sigma", "20", "--out", str(tmp_path / "r"),
              "--greedy-iterations", "1", "--joint-iterations", "0", "--stages", "1"]
    with pytest.raises(SystemExit, match=r"smaller than .*180.*pass a smaller --crop"):
        main([*common, "--crop", "180"])
    with pytest.raises(SystemExit, match=r"of one size.*--crop N, N at most 40"):
        main([*common, "--crop", "0"])
    with pytest.raises(SystemExit, match="does not exist"):
        main([*common, "--crop", "32", "--validation", str(tmp_path / "missing")])
    with pytest.raises(SystemExit, match="does not exist"):
        main([*common, "--crop", "32", "--noisy", str(tmp_path / "missing")])
    assert not (tmp_path / "r").exists()  # refused before any work


def _true_psnr(model, noisy, clean):
    from skimage_trd.kernels.engine import run_model

    out = [run_model(np.asarray(n, np.float64), model) for n in noisy]
    mse = np.mean([(o - c) ** 2 for o, c in zip(out, clean)])
    return 10 * np.log10(255**2 / mse)


@pytest.mark.slow  # training-sized
def test_training_without_clean_images_sure_and_n2n():
    # SURE on the noisy images alone, and Noise2Noise on two acquisitions, learn nearly what
    # clean targets teach (measured against the clean images, which training never sees)
    from skimage_trd.train import add_noise

    cam = data.camera().astype(np.float64)
    clean = [np.roll(cam, 37 * i, axis=i % 2)[100:220, 100:220] for i in range(4)]
    first, second = add_noise(clean, 25, 7), add_noise(clean, 25, 8)
    config = dict(crop=120)
    supervised = train_model(clean, _config(**config), noisy=first, log=lambda s: None)
    lines = []
    sure = train_model(None, _config(loss="sure", **config), noisy=first, log=lines.append)
    n2n = train_model(second, _config(loss="n2n", **config), noisy=first, log=lambda s: None)
    # SURE's figure on the training pixels is the optimiser's own: not logged as a PSNR
    assert any("loss/px" in line for line in lines)
    assert not any("PSNR" in line for line in lines)
    assert sure.metadata["provenance"]["loss"] == "sure"
    ref = _true_psnr(supervised, first, clean)
    for model in (sure, n2n):
        got = _true_psnr(model, first, clean)
        assert got > 10 * np.log10(255**2 / 25**2) + 8 and got > ref - 0.5, (got, ref)
    # Noise2Noise's training PSNR less the targets' noise estimates the true one without the
    # clean images; SURE's is not recorded (it runs above the truth on fitted pixels)
    assert np.isnan(sure.metadata["provenance"]["final_train_psnr"])
    n2n_true = 0.5 * (_true_psnr(n2n, first, clean) + _true_psnr(n2n, second, clean))
    assert abs(n2n.metadata["provenance"]["final_train_psnr"] - n2n_true) < 1
    with pytest.raises(ValueError, match="noisy images alone"):
        train_model(clean, _config(loss="sure"), noisy=first, log=lambda s: None)
    with pytest.raises(ValueError, match="pairs of noisy"):
        train_model(clean, _config(loss="n2n"), log=lambda s: None)
    with pytest.raises(ValueError, match="loss must be"):
        _config(loss="l1")


def test_sure_on_too_few_pixels_is_flagged():
    # a few small images let the optimiser fit the one probe: said in the log
    from skimage_trd.train import add_noise

    lines = []
    with pytest.warns(UserWarning, match="few pixels for SURE"):
        train_model(None, _config(loss="sure", joint_iterations=0, greedy_iterations=1),
                    noisy=add_noise(_clean(), 25, 7), log=lines.append)
    assert any("few pixels for SURE" in line for line in lines)


def test_command_line_losses_without_clean_images(tmp_path, capsys):
    from skimage_trd.train import add_noise

    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    clean = _clean(3)
    for folder, seed in ((a, 1), (b, 2)):
        for i, img in enumerate(add_noise(clean, 20, seed)):
            imsave(folder / f"c{i}.png", np.clip(img, 0, 255).round().astype(np.uint8))
    common = ["--sigma", "20", "--kernel-size", "3", "--stages", "1", "--greedy-iterations", "2",
              "--joint-iterations", "0", "--crop", "40", "--chunk", "1"]
    m = main(["--data", str(a), "--loss", "sure", "--out", str(tmp_path / "sure"),
              "--validation", str(b), *common])
    assert m.metadata["provenance"]["loss"] == "sure"
    log = (tmp_path / "sure" / "train.log").read_text()
    # SURE's own figure is fitted by the optimiser: the log shows the validation estimate only
    assert "train PSNR (SURE)" not in log and "validation PSNR" in log and "(SURE)\n" in log
    m = main(["--data", str(a), "--noisy", str(b), "--loss", "n2n",
              "--out", str(tmp_path / "n2n"), *common])
    assert m.metadata["provenance"]["loss"] == "n2n"
    assert m.metadata["provenance"]["n_images"] == 3
    for argv, message in ((["--data", str(a), "--loss", "n2n"], "needs --noisy"),
                          (["--data", str(a), "--noisy", str(b), "--loss", "sure"], "drop --noisy")):
        with pytest.raises(SystemExit, match=message):
            main([*argv, "--out", str(tmp_path / "x"), *common])


def test_stacks_and_float_arrays_as_training_data(tmp_path):
    import tifffile

    rng = np.random.default_rng(0)
    stack = rng.uniform(0, 255, (3, 48, 50))
    np.save(tmp_path / "a.npy", stack)
    tifffile.imwrite(tmp_path / "b.tif", (stack[:2] * 257).astype(np.uint16))
    np.save(tmp_path / "c.npy", stack[0].astype(np.float32))
    images, names = load_image_folder(tmp_path)
    assert names == ["a.npy:0", "a.npy:1", "a.npy:2", "b.tif:0", "b.tif:1", "c.npy"]
    np.testing.assert_array_equal(images[1], stack[1])
    np.testing.assert_allclose(images[4], np.floor(stack[1] * 257) / 257, atol=1e-9)
    np.testing.assert_allclose(images[5], stack[0], rtol=1e-6)
    with pytest.raises(ValueError, match="smaller than"):
        load_image_folder(tmp_path, min_size=49)
    # a gray + alpha PNG is one gray image, not a stack of rows
    la = tmp_path / "la"
    la.mkdir()
    gray = rng.integers(0, 256, (40, 44)).astype(np.uint8)
    imsave(la / "la.png", np.stack([gray, np.full_like(gray, 255)], axis=-1), check_contrast=False)
    images, names = load_image_folder(la)
    assert names == ["la.png"] and images[0].shape == (40, 44)
    np.testing.assert_array_equal(images[0], gray)


def test_zarr_arrays_and_single_files_as_training_data(tmp_path):
    zarr = pytest.importorskip("zarr")
    rng = np.random.default_rng(1)
    tzyx = rng.integers(0, 65536, (2, 3, 40, 42)).astype(np.uint16)  # time, z, rows, columns
    folder = tmp_path / "data"
    folder.mkdir()
    z = zarr.create_array(str(folder / "movie.zarr"), shape=tzyx.shape, chunks=(1, 1, 20, 21),
                          dtype=tzyx.dtype)
    z[...] = tzyx
    np.save(folder / "one.npy", tzyx[0, 0] / 257.0)
    images, names = load_image_folder(folder)
    # every plane of the zarr array (the last two axes are rows and columns), then the .npy
    assert names == [f"movie.zarr:{k}" for k in range(6)] + ["one.npy"]
    np.testing.assert_allclose(images[4], tzyx[1, 1] / 257.0)
    np.testing.assert_allclose(images[6], images[0])
    # the zarr array itself, or one file, as the data
    images, names = load_image_folder(folder / "movie.zarr", raw=True)
    assert len(images) == 6
    np.testing.assert_array_equal(images[5], tzyx[1, 2])
    assert load_image_folder(folder / "one.npy")[1] == ["one.npy"]
    # a zarr group is refused with the way out
    zarr.open_group(str(tmp_path / "ome.zarr"), mode="w").create_array("0", shape=(40, 42),
                                                                        dtype="u1")
    with pytest.raises(ValueError, match=r"zarr group.*ome.zarr/0"):
        load_image_folder(tmp_path / "ome.zarr")
    assert load_image_folder(tmp_path / "ome.zarr" / "0")[0][0].shape == (40, 42)
    # trained from the zarr array through the command line
    m = main(["--data", str(folder / "movie.zarr"), "--sigma", "25", "--loss", "sure",
              "--kernel-size", "3", "--stages", "1", "--greedy-iterations", "2",
              "--joint-iterations", "0", "--crop", "32", "--threads", "1",
              "--out", str(tmp_path / "run")])
    assert m.metadata["provenance"]["n_images"] == 6


def test_fit_reports_every_iteration_and_cancels(tmp_path):
    from skimage_trd.train import TrainingCancelled, TrainingStep, add_noise, fit

    clean = np.stack(_clean())
    steps = []
    model = fit(clean, sigma=25, kernel_size=3, n_stages=2, greedy_iterations=2, iterations=2,
                callback=steps.append)
    assert [s.iteration for s in steps] == [1, 2, 3, 4, 5, 6]
    assert all(isinstance(s, TrainingStep) and s.total == 6 for s in steps)
    assert steps[0].phase.startswith("greedy stage 1") and steps[-1].phase.startswith("joint")
    assert model.n_stages == 2 and model.sigma == 25
    # noisy images only, fine-tuning the model just made; cancelled at the third iteration,
    # then resumed from the checkpoint after the second
    noisy = add_noise(list(clean), 25, 3)
    with pytest.raises(TrainingCancelled, match="iteration 3"):
        fit(noisy, sigma=25, loss="sure", init=model, iterations=4, checkpoint_dir=tmp_path,
            chunk=2, callback=lambda s: s.iteration < 3)
    lines = []
    tuned = fit(noisy, sigma=25, loss="sure", init=model, iterations=4, checkpoint_dir=tmp_path,
                chunk=2, log=lines.append)
    assert any("resuming" in line and "2 iterations done" in line for line in lines)
    assert tuned.metadata["provenance"]["loss"] == "sure"
    with pytest.raises(ValueError, match="targets"):
        fit(noisy, sigma=25, loss="n2n")


def test_photon_counting_data_trained_by_sure(tmp_path):
    # raw camera images (uint16), stabilised by the generalised Anscombe transform: the model
    # is for denoise_trd_poisson(..., model=) and improves on the noisy input there
    import tifffile

    from skimage_trd import denoise_trd_poisson
    from skimage_trd.train import photon_training_images

    rng = np.random.default_rng(0)
    gain, read, offset = 2.0, 1.0, 100.0
    flat = gain * rng.poisson(np.full((64, 64), 20.0)) + offset + read * rng.standard_normal((64, 64))
    (t,), used = photon_training_images([flat], sigma=25.0, gain=gain, read_noise=read,
                                        offset=offset)
    assert used == [(gain, read)] and abs(t.std() / 25.0 - 1) < 0.05  # unit noise, times sigma
    folder = tmp_path / "raw"
    folder.mkdir()
    photons = [10.0 * c / 255.0 for c in _clean(4, 64)]
    raws = [np.round(gain * rng.poisson(y) + offset + read * rng.standard_normal(y.shape))
            .astype(np.uint16) for y in photons]
    for i, z in enumerate(raws):
        tifffile.imwrite(folder / f"z{i}.tif", z)
    model = main(["--data", str(folder), "--loss", "sure", "--photons", "--gain", "2",
                  "--read-noise", "1", "--offset", "100", "--sigma", "25", "--kernel-size", "3",
                  "--stages", "2", "--greedy-iterations", "4", "--joint-iterations", "2",
                  "--crop", "64", "--chunk", "2", "--optimizer", "lbfgs",
                  "--out", str(tmp_path / "run")])
    assert "photon counting" in (tmp_path / "run" / "train.log").read_text()
    out = denoise_trd_poisson(raws[0], gain, read, offset=offset, model=model)
    truth = gain * photons[0] + offset
    assert np.mean((out - truth) ** 2) < 0.5 * np.mean((raws[0] - truth) ** 2)
    with pytest.raises(SystemExit, match="--loss sure"):
        main(["--data", str(folder), "--photons", "--sigma", "25", "--out", str(tmp_path / "x")])
    with pytest.raises(SystemExit, match="add --photons"):
        main(["--data", str(folder), "--loss", "sure", "--gain", "2", "--sigma", "25",
              "--out", str(tmp_path / "x")])
    rgb = tmp_path / "rgb"
    rgb.mkdir()
    imsave(rgb / "c.png", np.zeros((40, 40, 3), np.uint8))
    with pytest.raises(ValueError, match="colour"):
        load_image_folder(rgb, raw=True)


def test_noise2noise_with_too_high_a_sigma_records_no_psnr():
    from skimage_trd.train import add_noise

    lines = []
    m = train_model(add_noise(_clean(2), 5, 2), _config(sigma=100, loss="n2n", greedy_iterations=1,
                                                        joint_iterations=0),
                    noisy=add_noise(_clean(2), 5, 1), log=lines.append)
    assert np.isnan(m.metadata["provenance"]["final_train_psnr"])
    assert any("looks too high" in line for line in lines)


def test_noise2noise_pairs_each_acquisition_with_the_other(monkeypatch):
    import skimage_trd.train.objectives as run
    from skimage_trd.train import add_noise

    seen = {}
    real = run._batch

    def capture(noisy, clean, spec, backend, constraint=None, weights=None):
        seen["f"], seen["x"] = noisy.copy(), clean.copy()
        return real(noisy, clean, spec, backend, constraint, weights)

    monkeypatch.setattr(run, "_batch", capture)
    first, second = add_noise(_clean(2), 25, 1), add_noise(_clean(2), 25, 2)
    train_model(second, _config(loss="n2n", greedy_iterations=1, joint_iterations=0),
                noisy=first, log=lambda s: None)
    np.testing.assert_array_equal(seen["f"], np.concatenate([first, second]))
    np.testing.assert_array_equal(seen["x"], np.concatenate([second, first]))


def test_run_state_is_the_checkpoints_json(tmp_path):
    import json

    from skimage_trd.train.config import Checkpoint, RunState

    # a checkpoint's state as every earlier version wrote it
    old = {"phase": "greedy", "stage": 1, "done": 40, "history": [{"phase": "greedy"}],
           "sessions": [{"git_commit": "abc"}], "config_digest": "x", "config": {},
           "data_digest": "y"}
    state = RunState.from_json(old)
    assert (state.phase, state.stage, state.done, state.init_model) == ("greedy", 1, 40, None)
    assert state.to_json() == {k: old[k] for k in ("phase", "stage", "done", "history",
                                                    "sessions")}
    config = _config()
    assert state.iterations_done(config) == config.greedy_iterations + 40
    joint = RunState(phase="joint", stage=config.n_stages - 1, done=3, init_model="m")
    assert joint.iterations_done(config) == config.n_stages * config.greedy_iterations + 3
    with pytest.raises(ValueError, match="phase"):
        RunState.from_json({"phase": "warmup"})
    # saved and loaded through a checkpoint: the same state
    ckpt = Checkpoint(tmp_path, config, "digest")
    ckpt.save(joint, np.arange(3.0))
    loaded, params, moments = ckpt.load()
    assert moments is None
    assert loaded == joint and np.array_equal(params, np.arange(3.0))
    with np.load(ckpt.path) as z:
        assert json.loads(str(z["state"]))["init_model"] == "m"


@pytest.mark.filterwarnings("ignore:few pixels for SURE")
@pytest.mark.parametrize("loss", ["mse", "sure"])
@pytest.mark.parametrize("stop_after", [3, 7, 9])
def test_adam_resumes_exactly(tmp_path, loss, stop_after):
    # Adam's moments are checkpointed with the parameters; SURE draws a probe per step,
    # seeded by the step, so an interrupted run continues exactly as the uninterrupted one
    from skimage_trd.train import add_noise

    config = _config(optimizer="adam", learning_rate=1e-2, loss=loss, greedy_iterations=3,
                     joint_iterations=4, chunk=2)
    clean = _clean()
    args = (None, config) if loss == "sure" else (clean, config)
    noisy = add_noise(clean, 25, 3)
    full = train_model(*args, noisy=noisy, log=lambda s: None)
    seen = []

    def killer(line):
        seen.append(line)
        if sum(" step " in x for x in seen) == stop_after:
            raise _Stop  # after stop_after steps: after the first checkpoint (chunk 2)

    with pytest.raises(_Stop):
        train_model(*args, noisy=noisy, checkpoint_dir=tmp_path, log=killer)
    lines = []
    resumed = train_model(*args, noisy=noisy, checkpoint_dir=tmp_path, log=lines.append)
    assert any(line.startswith("resuming") for line in lines)
    np.testing.assert_array_equal(resumed.weights, full.weights)
    np.testing.assert_array_equal(resumed.filters, full.filters)


@pytest.mark.slow  # training-sized
def test_adam_fine_tuning_by_sure_improves_and_stays_close():
    # fine-tuning a trained model on one noisy image by SURE with Adam: the true PSNR rises
    # (measured against the clean image, which training never sees), step by step
    from skimage_trd import load_model
    from skimage_trd.train import add_noise

    base = load_model("trd-gauss-s25-5x5-5st")
    clean = [data.camera()[:256, :256].astype(np.float64)]
    noisy = add_noise(clean, 25, 5)
    config = TrainingConfig.for_model(base, greedy_iterations=0, joint_iterations=12, chunk=4,
                                      crop=None, loss="sure", optimizer="adam")
    tuned = train_model(None, config, noisy=noisy, init_model=base, log=lambda s: None)
    before = _true_psnr(base, noisy, clean)
    after = _true_psnr(tuned, noisy, clean)
    assert after > before + 0.02, (before, after)


def test_optimizer_validation_and_digest():
    with pytest.raises(ValueError, match="optimizer"):
        _config(optimizer="sgd")
    with pytest.raises(ValueError, match="learning_rate"):
        _config(optimizer="adam", learning_rate=0.0)
    # L-BFGS runs keep the digest they always had (their checkpoints resume)
    assert _config().digest() == _config(learning_rate=5.0).digest()
    assert _config().digest() != _config(optimizer="adam").digest()


@pytest.mark.filterwarnings("ignore:few pixels for SURE")
def test_sure_on_random_windows_resumes_exactly(tmp_path):
    # every Adam step trains on new random windows with its probe: seeded by the step, so an
    # interrupted run continues exactly; the loss is per window pixel
    from skimage_trd.train import add_noise

    config = _config(optimizer="adam", learning_rate=1e-2, loss="sure", greedy_iterations=2,
                     joint_iterations=4, chunk=2, patch=16, patches=3)
    noisy = add_noise(_clean(), 25, 3)
    lines = []
    full = train_model(None, config, noisy=noisy, log=lines.append)
    # the loss is summed over 3 windows of 16x16 (not the 4 images of 40x40) and said per pixel
    from skimage_trd.train.objectives import _SureBatch

    batch = _SureBatch(np.stack(noisy).astype(np.float64), config.spec(), "numba", 25.0, 0,
                       patch=16, patches=3)
    assert batch.n_px == 3 * 16 * 16 and batch.data[0].shape == (3, 16, 16)
    per_px = full.metadata["provenance"]["final_loss_per_pixel"]
    assert 0.5 * 5**2 < per_px < 0.5 * 25**2  # (loss = half the squared error: below the noise)
    seen = []

    def killer(line):
        seen.append(line)
        if sum(" step " in x for x in seen) == 5:
            raise _Stop

    with pytest.raises(_Stop):
        train_model(None, config, noisy=noisy, checkpoint_dir=tmp_path, log=killer)
    resumed = train_model(None, config, noisy=noisy, checkpoint_dir=tmp_path, log=lambda s: None)
    np.testing.assert_array_equal(resumed.weights, full.weights)
    other = train_model(None, _config(optimizer="adam", learning_rate=1e-2, loss="sure",
                                      greedy_iterations=2, joint_iterations=4, chunk=2,
                                      patch=16, patches=3, seed=1),
                        noisy=noisy, log=lambda s: None)
    assert not np.array_equal(other.weights, full.weights)
    with pytest.raises(ValueError, match="patch"):
        _config(patch=16)  # windows are for SURE
    with pytest.raises(ValueError, match="patch"):
        _config(loss="sure", patch=4)


def test_rescaled_model_is_the_model_run_at_the_matching_contrast():
    from skimage_trd import denoise_trd, load_model
    from skimage_trd.train import rescale_model

    s50 = load_model("trd-gauss-s50-7x7-5st")
    m = rescale_model(s50, 150)
    assert m.sigma == 150 and m.metadata["rescaled_from"]["name"] == s50.name
    np.testing.assert_allclose(m.centers, 3 * s50.centers)
    noisy = _clean(1, size=64)[0] + 150 * np.random.default_rng(0).standard_normal((64, 64))
    # denoise_trd runs the sigma-50 model on the image times 50/150, and scales back
    expected = denoise_trd(noisy, 150, model=s50, data_range=255, exact=True)
    got = denoise_trd(noisy, 150, model=m, data_range=255, exact=True)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-9)
    assert np.abs(got - noisy).max() > 10  # it did denoise
    with pytest.raises(ValueError, match="positive"):
        rescale_model(s50, 0)
    with pytest.raises(ValueError, match="denoising model"):
        rescale_model(load_model("trd-jpeg-q10-7x7-4st"), 50)


def test_fine_tuning_for_another_noise_level_starts_from_the_rescaled_model():
    from skimage_trd.train import fit, rescale_model

    base = train_model(_clean(), _config(joint_iterations=0), log=lambda s: None)
    clean = _clean()
    start = fit(clean, sigma=50, init=base, iterations=0, crop=40, seed=3, holdout=0)
    assert start.sigma == 50
    expected = rescale_model(base, 50)
    np.testing.assert_allclose(start.centers, expected.centers)
    np.testing.assert_allclose(start.weights, expected.weights, rtol=1e-12, atol=1e-12)
    prov = start.metadata["provenance"]
    assert prov["initial_model"]["name"] == expected.name
    tuned = fit(clean, sigma=50, init=base, iterations=4, crop=40, seed=3, holdout=0)
    assert (tuned.metadata["provenance"]["final_loss_per_pixel"]
            < prov["final_loss_per_pixel"])


def test_bad_training_input_is_refused_clearly(tmp_path, capsys):
    from skimage_trd.train import add_noise

    clean = _clean(2)
    noisy = add_noise(clean, 25, 3)
    quiet = dict(log=lambda s: None)
    # NaN or infinite pixels, in the clean or the noisy images
    bad = [clean[0].copy(), clean[1]]
    bad[0][5, 7] = np.nan
    with pytest.raises(ValueError, match="image1.*NaN or infinite"):
        train_model(clean, _config(), noisy=[noisy[0], bad[0]], names=["image0", "image1"],
                    **quiet)
    with pytest.raises(ValueError, match="NaN or infinite"):
        train_model(None, _config(loss="sure"), noisy=[noisy[0] * np.inf, noisy[1]], **quiet)
    # Noise2Noise pairs that are the same acquisition
    with pytest.raises(ValueError, match="identical.*independent"):
        train_model([noisy[0], clean[1]], _config(loss="n2n"), noisy=[noisy[0], noisy[1]],
                    **quiet)
    # images (or SURE windows) smaller than the receptive field (2 stages of 7x7: 13 pixels)
    with pytest.raises(ValueError, match="receptive field.*13 pixels"):
        train_model([c[:12, :30] for c in clean], _config(kernel_size=7, crop=None), **quiet)
    with pytest.raises(ValueError, match=r"cropped to 16.*receptive field.*19 pixels"):
        train_model(clean, _config(kernel_size=7, n_stages=3, crop=16), **quiet)
    with pytest.raises(ValueError, match="patch.*receptive field"):
        train_model(None, _config(kernel_size=7, loss="sure", optimizer="adam", patch=12,
                                  crop=None), noisy=noisy, **quiet)
    # the command line: sigma estimated for noisy images alone (and said), required with clean
    # images, data errors as one line
    folder = tmp_path / "noisy"
    folder.mkdir()
    for i, img in enumerate(add_noise(_clean(2, 64), 20, 4)):
        np.save(folder / f"n{i}.npy", img)
    common = ["--kernel-size", "3", "--stages", "1", "--greedy-iterations", "1",
              "--joint-iterations", "0", "--crop", "0", "--threads", "1"]
    m = main(["--data", str(folder), "--loss", "sure", "--out", str(tmp_path / "est"), *common])
    assert 17 < m.sigma < 23  # the wavelet estimate of sigma 20
    log = (tmp_path / "est" / "train.log").read_text()
    assert "sigma not given" in log and "estimated from the noisy images" in log
    with pytest.raises(SystemExit, match="sigma is needed"):
        main(["--data", str(folder), "--out", str(tmp_path / "mse"), *common])
    broken = np.load(folder / "n1.npy")
    broken[0, 0] = np.inf
    np.save(folder / "n1.npy", broken)
    with pytest.raises(SystemExit, match="n1.npy has NaN or infinite"):
        main(["--data", str(folder), "--loss", "sure", "--sigma", "20",
              "--out", str(tmp_path / "nan"), *common])

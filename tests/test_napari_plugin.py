"""The napari plugin: its jobs on their own, then the widgets in a real viewer (Xvfb, Mesa)."""

import os

import numpy as np
import pytest

napari = pytest.importorskip("napari")
pytest.importorskip("pytestqt")

from napari_trd import _jobs  # noqa: E402
from napari_trd._sample_data import (  # noqa: E402
    jpeg_camera,
    low_light_cells,
    noisy_camera,
    noisy_cells,
)


@pytest.fixture(autouse=True)
def user_models(tmp_path, monkeypatch):
    monkeypatch.setenv(_jobs.USER_MODELS_ENV, str(tmp_path / "models"))
    return tmp_path / "models"


def test_manifest_is_valid():
    from importlib import resources

    from npe2 import PluginManifest

    manifest = PluginManifest.from_file(resources.files("napari_trd") / "napari.yaml")
    assert manifest.name == "skimage-trd"  # the distribution name
    assert {w.display_name for w in manifest.contributions.widgets} == {
        "Denoise (TRD)", "JPEG deblock (TRD)", "Train TRD"}


def test_qt_binding_is_a_current_one():
    # napari 0.9 says at every start, in a toast on the canvas, that its PyQt5 support is
    # deprecated: the napari and test extras install PyQt6, and that binding must be the one in
    # use (qtpy, which napari asks, prefers PyQt5 wherever it is also installed)
    import qtpy

    assert qtpy.API_NAME in ("PyQt6", "PySide6"), (
        f"napari runs on {qtpy.API_NAME} {qtpy.QT_VERSION}; uninstall it (the extras bring PyQt6) "
        "or set QT_API=pyqt6")


def test_sample_data():
    for make in (noisy_camera, noisy_cells, jpeg_camera):
        (data, meta, kind), = make()
        assert kind == "image" and data.ndim == 2 and meta["name"]


def test_denoise_job_progress_and_cancel():
    (noisy, _, _), = noisy_camera()
    seen = []
    out = _jobs.denoise(noisy[:96, :96], sigma=25 / 255, progress=lambda d, t: seen.append((d, t)))
    assert out.shape == (96, 96) and seen[-1][0] == seen[-1][1]
    cancel = _jobs.new_event()
    cancel.set()
    with pytest.raises(_jobs.Cancelled):
        _jobs.denoise(noisy[:64, :64], sigma=0.1, cancel=cancel)


def test_denoise_job_keeps_uint16_on_request():
    from skimage import data

    rng = np.random.default_rng(0)
    img = np.clip(data.camera()[:64, :64] * 16.0 + 200 * rng.standard_normal((64, 64)), 0, 4095)
    img = img.astype(np.uint16)  # a 12-bit camera
    out = _jobs.denoise(img, sigma=200, keep_dtype=True)
    assert out.dtype == np.uint16 and out.max() <= 4095 + 600
    ref = _jobs.denoise(img, sigma=200)
    assert ref.dtype == np.float64 and np.abs(out - ref).max() <= 0.5 + 1e-3


def test_deblock_job_keeps_uint8():
    (dec, _, _), = jpeg_camera()
    out = _jobs.deblock(dec[:64, :64], quality=10)
    assert out.dtype == np.uint8 and out.shape == (64, 64)
    # float layers on either scale come back on their own scale; other values are refused
    on255 = _jobs.deblock(dec[:64, :64].astype(np.float64), quality=10)
    unit = _jobs.deblock(dec[:64, :64] / 255.0, quality=10)
    assert on255.max() > 2 and unit.max() <= 1
    np.testing.assert_allclose(unit * 255, on255, atol=1e-6)
    np.testing.assert_array_equal(out, np.rint(on255).astype(np.uint8))
    with pytest.raises(ValueError, match="8-bit JPEG values"):
        _jobs.deblock(dec[:64, :64].astype(np.uint16) * 16, quality=10)
    da = pytest.importorskip("dask.array")
    lazy = _jobs.deblock(da.from_array(np.stack([dec[:64, :64]] * 2), chunks=(1, 32, 32)),
                         quality=10)
    assert isinstance(lazy, da.Array) and lazy.dtype == np.uint8
    np.testing.assert_array_equal(lazy.compute()[1], out)


def test_train_job_saves_a_selectable_model(user_models):
    (noisy, _, _), = noisy_camera()
    from skimage import data

    clean = data.camera()[:96, :128] / 255.0
    path = _jobs.train(clean, sigma=0.1, kernel_size=3, n_stages=1, greedy_iterations=3,
                       joint_iterations=0, name="tiny")
    assert path.parent == user_models and path.name == "tiny.npz"
    assert str(path) in _jobs.model_choices("denoise")
    out = _jobs.denoise(noisy[:40, :40], sigma=0.1, model=str(path))
    assert out.shape == (40, 40)
    cancel = _jobs.new_event()
    cancel.set()
    with pytest.raises(_jobs.Cancelled):
        _jobs.train(clean, sigma=0.1, kernel_size=3, n_stages=1, greedy_iterations=3,
                    joint_iterations=0, cancel=cancel)
    # the same name again: saved beside the first, which is kept
    again = _jobs.train(clean, sigma=0.1, kernel_size=3, n_stages=1, greedy_iterations=1,
                        joint_iterations=0, name="tiny")
    assert again.name == "tiny-2.npz" and path.exists()
    assert __import__("skimage_trd").load_model(again).name == "tiny-2"
    # names that are not plain file names are refused before any training
    for bad in ("../escaped", "a/b", "", ".hidden", "x" * 101):
        with pytest.raises(ValueError, match="model name"):
            _jobs.train(clean, sigma=0.1, name=bad, cancel=cancel)
    assert sorted(p.name for p in user_models.iterdir()) == ["tiny-2.npz", "tiny.npz"]


# ------------------------------------------------------------------------- real viewer
def _small_training_run(train, name, greedy):
    """Start a tiny run in a Train widget: 3x3 filters, one stage, ``greedy`` iterations."""
    train.kernel_size.value = 3
    train.n_stages.value = 1
    train.greedy.value = greedy
    train.joint.value = 0
    train.model_name.value = name
    train.run()


def _wait(qtbot, widget, timeout=120_000):
    qtbot.waitUntil(lambda: widget.run_button.enabled, timeout=timeout)


@pytest.mark.napari
@pytest.mark.slow
def test_denoise_widget_in_viewer(make_napari_viewer, qtbot):
    from napari_trd import DenoiseWidget

    viewer = make_napari_viewer(show=True)
    (noisy, meta, _), = noisy_camera()
    layer = viewer.add_image(noisy[:160, :200], name="noisy", scale=(0.5, 0.5), translate=(3, 4))
    widget = DenoiseWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Denoise (TRD)")
    assert widget.image.value == "noisy"
    # the estimate is computed in a thread and then shown (true 0.098)
    qtbot.waitUntil(lambda: widget.estimate.value not in ("-", widget.ESTIMATING), timeout=30_000)
    assert 0.05 < float(widget.estimate.value) < 0.15
    widget.run()
    _wait(qtbot, widget)
    assert widget.last_error is None
    result = viewer.layers["noisy_trd"]
    assert result.data.shape == layer.data.shape and result.visible
    np.testing.assert_array_equal(result.scale, layer.scale)
    np.testing.assert_array_equal(result.translate, layer.translate)
    clean = np.asarray(__import__("skimage").data.camera()[:160, :200] / 255.0)
    assert np.mean((result.data - clean) ** 2) < 0.3 * np.mean((noisy[:160, :200] - clean) ** 2)
    # the viewer shows it: the screenshot differs from a screenshot without the result
    shot = viewer.screenshot(canvas_only=True, flash=False)
    result.visible = False
    hidden = viewer.screenshot(canvas_only=True, flash=False)
    result.visible = True
    assert shot.shape[-1] == 4 and np.abs(shot.astype(int) - hidden.astype(int)).mean() > 1
    target = os.environ.get("TRD_SCREENSHOT")
    if target:  # docs: TRD_SCREENSHOT=docs/napari_denoise.png python -m pytest -k in_viewer
        viewer.window.resize(1300, 700)
        viewer.grid.enabled = True
        qtbot.wait(300)
        viewer.reset_view()
        qtbot.wait(300)
        full = viewer.screenshot(canvas_only=False, flash=False)
        viewer.grid.enabled = False
        from skimage.io import imsave

        imsave(target, full)
    # a second run keeps the first result (napari numbers the new name); a new preview
    # replaces the old one
    widget.run()
    _wait(qtbot, widget)
    assert "noisy_trd" in viewer.layers and "noisy_trd [1]" in viewer.layers
    for _ in range(2):
        widget.preview()
        _wait(qtbot, widget)
    assert [ly.name for ly in viewer.layers].count("noisy_trd_preview") == 1
    assert not any(ly.name.startswith("noisy_trd_preview [") for ly in viewer.layers)
    # an error turned into a notification
    widget.model.choices = [*widget.model.choices, "no-such-model"]
    widget.model.value = "no-such-model"
    widget.run()
    _wait(qtbot, widget)
    assert isinstance(widget.last_error, ValueError)


@pytest.mark.napari
def test_cancel_leaves_nothing_behind(make_napari_viewer, qtbot):
    from napari_trd import DenoiseWidget
    from napari_trd._jobs import denoise

    viewer = make_napari_viewer()
    stack = np.random.default_rng(0).uniform(0, 1, (12, 256, 256))  # several seconds of work
    viewer.add_image(stack, name="stack")
    widget = DenoiseWidget(viewer)
    widget.sigma.value = 0.1
    layers_before = [layer.name for layer in viewer.layers]
    worker = widget.run()
    qtbot.waitUntil(lambda: worker.is_running, timeout=10_000)
    widget.cancel()
    _wait(qtbot, widget)
    assert [layer.name for layer in viewer.layers] == layers_before  # no partial result
    assert widget.last_error is None and "cancelled" in widget.status.value
    assert widget.run_button.enabled and not widget.cancel_button.enabled
    # nothing left behind: the next run completes and gives the undisturbed result
    small = stack[:2, :64, :64]
    viewer.layers["stack"].data = small
    widget.run()
    _wait(qtbot, widget)
    np.testing.assert_array_equal(viewer.layers["stack_trd"].data, denoise(small, sigma=0.1))


def test_plugin_is_discovered_by_npe2():
    from npe2 import PluginManager

    pm = PluginManager.instance()
    pm.discover()
    manifest = pm.get_manifest("skimage-trd")
    commands = {c.id for c in manifest.contributions.commands}
    assert {"skimage-trd.denoise", "skimage-trd.deblock", "skimage-trd.train"} <= commands


@pytest.mark.napari
def test_dask_layer_stays_lazy(make_napari_viewer, qtbot):
    da = pytest.importorskip("dask.array")
    from napari_trd import DenoiseWidget

    viewer = make_napari_viewer()
    stack = da.from_array(np.random.default_rng(0).uniform(0, 1, (3, 64, 64)), chunks=(1, 64, 64))
    viewer.add_image(stack, name="lazy", contrast_limits=(0, 1))
    widget = DenoiseWidget(viewer)
    widget.sigma.value = 0.1
    widget.run()
    _wait(qtbot, widget)
    assert isinstance(viewer.layers["lazy_trd"].data, da.Array)


@pytest.mark.napari
def test_deblock_widget_reads_tables_from_file(make_napari_viewer, qtbot, tmp_path):
    from PIL import Image
    from skimage import data

    from napari_trd import DeblockWidget

    path = tmp_path / "cam.jpg"
    Image.fromarray(data.camera()[:128, :128]).save(path, "JPEG", quality=20)
    viewer = make_napari_viewer()
    viewer.open(str(path), plugin="napari")
    widget = DeblockWidget(viewer)
    assert widget.tables.value.startswith("from ")
    assert str(path) in widget.tables.value
    widget.run()
    _wait(qtbot, widget)
    assert widget.last_error is None
    assert viewer.layers["cam_deblocked"].data.shape == (128, 128)


@pytest.mark.napari
def test_train_widget_makes_model_selectable(make_napari_viewer, qtbot):
    from skimage import data

    from napari_trd import DenoiseWidget, TrainWidget

    viewer = make_napari_viewer()
    viewer.add_image(data.camera()[:96, :96] / 255.0, name="clean")
    denoise = DenoiseWidget(viewer)
    train = TrainWidget(viewer)
    _small_training_run(train, "widget-model", greedy=2)
    _wait(qtbot, train)
    assert train.last_error is None
    assert any(c.endswith("widget-model.npz") for c in denoise.model.choices)
    train.model_name.value = "../escaped"
    assert train.run() is None and "model name" in train.status.value  # refused at once


def test_fine_tune_job(user_models):
    from skimage import data

    clean = data.camera()[:96, :128] / 255.0
    base = _jobs.train(clean, sigma=0.1, kernel_size=3, n_stages=1, greedy_iterations=2,
                       joint_iterations=0, name="base")
    tuned = _jobs.train(clean[::-1], sigma=0.1, joint_iterations=2, name="tuned",
                        start_from=str(base))
    import skimage_trd

    m = skimage_trd.load_model(tuned)
    assert m.kernel_size == 3 and m.metadata["provenance"]["initialised_from"] == "base"


@pytest.mark.napari
def test_preview_of_a_plane_in_a_scaled_stack(make_napari_viewer, qtbot):
    from napari_trd import DenoiseWidget

    viewer = make_napari_viewer()
    stack = np.stack([np.full((40, 50), v) for v in (0.2, 0.5, 0.8)])
    stack = stack + 0.05 * np.random.default_rng(0).standard_normal(stack.shape)
    viewer.add_image(np.zeros((2, 3, 40, 50)), name="other")  # the viewer has one more axis
    layer = viewer.add_image(stack, name="stack", scale=(2, 1, 1), translate=(10, 0, 0))
    viewer.dims.set_point(-3, 10 + 2 * 2)  # world z of plane 2
    widget = DenoiseWidget(viewer)
    widget.image.value = "stack"
    lead, _ = widget.visible_region(layer)
    assert lead == (2,)
    widget.sigma.value = 0.05
    assert widget.volume.value  # (a z-stack: a volume by default)
    widget.volume.value = False
    widget.preview()
    _wait(qtbot, widget)
    assert abs(float(viewer.layers["stack_trd_preview"].data.mean()) - 0.8) < 0.02
    # as a volume: the slab of (up to 16) planes around the displayed one, placed in z too
    widget.volume.value = True
    widget.preview()
    _wait(qtbot, widget)
    preview = viewer.layers["stack_trd_preview"]
    assert preview.data.shape == (3, 40, 50) and widget.last_error is None
    assert preview.translate[-3] == pytest.approx(10)


@pytest.mark.napari
def test_sigma_boxes_resolve_small_noise_levels(make_napari_viewer, qtbot):
    from napari_trd import DenoiseWidget, TrainWidget

    viewer = make_napari_viewer()
    rng = np.random.default_rng(0)
    clean = __import__("skimage").data.camera()[:128, :128] / 255.0 * 0.02  # dim, in [0, 1]
    viewer.add_image(clean + 4e-4 * rng.standard_normal(clean.shape), name="dim")
    widget = DenoiseWidget(viewer)
    qtbot.waitUntil(lambda: widget.estimate.value not in ("-", widget.ESTIMATING), timeout=30_000)
    widget.sigma.value = 0.000412
    assert widget.sigma.value == pytest.approx(0.000412, rel=1e-3)  # not rounded to 0 (auto)
    train = TrainWidget(viewer)
    train.sigma.value = 0.0004
    assert train.sigma.value == pytest.approx(0.0004, rel=1e-3)


@pytest.mark.napari
def test_noise_estimate_reads_the_layer_off_the_gui_thread(make_napari_viewer, qtbot,
                                                          monkeypatch):
    import threading

    from napari_trd import DenoiseWidget

    calls, release = [], threading.Event()
    real = _jobs.estimate_noise

    def recording(data, channel_axis=None):
        calls.append(threading.current_thread() is threading.main_thread())
        if data.max() < 5:  # layer a's estimate: held back until b's is shown
            release.wait(timeout=20)
        return real(data, channel_axis)

    monkeypatch.setattr(_jobs, "estimate_noise", recording)
    viewer = make_napari_viewer()
    (noisy, _, _), = noisy_camera()
    viewer.add_image(noisy[:64, :64], name="a")
    widget = DenoiseWidget(viewer)
    qtbot.waitUntil(lambda: len(calls) == 1, timeout=10_000)  # a's estimate is running
    viewer.add_image(noisy[:64, :64] * 2 + 10, name="b")
    widget.image.value = "b"  # a new estimate; a's result, when it comes, is out of date
    qtbot.waitUntil(lambda: widget.estimate.value not in ("-", widget.ESTIMATING), timeout=30_000)
    shown_b = widget.estimate.value
    release.set()
    qtbot.waitUntil(lambda: not widget._estimating(), timeout=30_000)
    qtbot.wait(100)
    assert len(calls) == 2 and not any(calls)
    assert widget.estimate.value == shown_b  # a's late result was dropped
    assert 0.15 < float(shown_b) < 0.25  # b's noise (2 x 0.098), not a's


@pytest.mark.napari
def test_deblock_widget_reports_bad_lazy_data(make_napari_viewer, qtbot):
    da = pytest.importorskip("dask.array")
    from napari_trd import DeblockWidget

    viewer = make_napari_viewer()
    x = (np.arange(2 * 64 * 64).reshape(2, 64, 64) % 4096).astype(np.uint16)  # not 8-bit
    viewer.add_image(da.from_array(x, chunks=(1, 64, 64)), name="lazy", contrast_limits=(0, 4095))
    widget = DeblockWidget(viewer)
    widget.run()
    _wait(qtbot, widget)
    assert isinstance(widget.last_error, ValueError) and "8-bit" in widget.status.value
    assert [layer.name for layer in viewer.layers] == ["lazy"]


# ------------------------------------------------------------ photon counting (low light)
def _low_light(rows=slice(200, 456), cols=slice(150, 406)):
    """A 256 x 256 part of the low-light sample around the cell (enough for the estimator)."""
    (raw, meta, _), = low_light_cells()
    return raw[rows, cols], meta


def test_low_light_sample():
    (raw, meta, kind), = low_light_cells()
    info = meta["metadata"]
    assert kind == "image" and raw.dtype == np.uint16 and raw.shape == (660, 550)
    assert "low-light" in meta["name"] and "photon" in meta["name"]
    assert (info["gain"], info["offset"], info["read_noise"], info["peak_photons"]) == (
        2.0, 100.0, 3.0, 5.0)
    clean = info["clean"]  # expected camera units: offset + gain * photons
    assert (clean.max() - 100) / 2 == pytest.approx(5.0)
    assert (clean.min() - 100) / 2 == pytest.approx(info["background_photons"])
    # the noise is the model's: mean 0, variance gain**2 * photons + read_noise**2 (+ rounding)
    residual = raw.astype(np.float64) - clean
    expected_var = np.mean(2.0 * (clean - 100) + 9.0 + 1 / 12)
    assert abs(residual.mean()) < 0.05
    assert residual.var() == pytest.approx(expected_var, rel=0.03)
    # seeded: the same image every time
    np.testing.assert_array_equal(low_light_cells()[0][0], raw)


def test_low_light_sample_is_in_the_manifest():
    from importlib import resources

    from npe2 import PluginManifest

    manifest = PluginManifest.from_file(resources.files("napari_trd") / "napari.yaml")
    samples = {s.key: s.command for s in manifest.contributions.sample_data}
    assert samples["low_light_cells"] == "skimage-trd.sample_low_light_cells"
    python_names = {c.id: c.python_name for c in manifest.contributions.commands}
    assert python_names[samples["low_light_cells"]] == "napari_trd._sample_data:low_light_cells"


def test_photon_job_equals_the_library_and_reports_overall_progress():
    import skimage_trd

    raw, _ = _low_light()
    out = _jobs.denoise_photons(raw, gain=2.0, read_noise=3.0, offset=100.0)
    np.testing.assert_array_equal(out, skimage_trd.denoise_trd_poisson(raw, 2.0, 3.0,
                                                                      offset=100.0))
    clean = low_light_cells()[0][1]["metadata"]["clean"][200:456, 150:406]
    assert np.mean((out - clean) ** 2) < 0.3 * np.mean((raw - clean) ** 2)
    # a stack, estimated: the library runs denoise_trd plane by plane (its progress restarts at
    # every plane); the job's progress goes once from 0 to its total
    stack = np.stack([raw, raw[::-1]])
    seen = []
    out = _jobs.denoise_photons(stack, offset=100.0, keep_dtype=True,
                                progress=lambda d, t: seen.append((d, t)))
    expected = skimage_trd.denoise_trd_poisson(stack, offset=100.0, preserve_dtype=True)
    assert out.dtype == np.uint16
    np.testing.assert_array_equal(out, expected)
    done = [d for d, _ in seen]
    assert done == sorted(done) and len(set(done)) == len(done)
    assert seen[-1][0] == seen[-1][1] and len({t for _, t in seen}) == 1
    assert done[len(done) // 2 - 1] == seen[-1][1] // 2  # the first plane's end: halfway
    cancel = _jobs.new_event()
    cancel.set()
    with pytest.raises(_jobs.Cancelled):
        _jobs.denoise_photons(raw, gain=2.0, read_noise=3.0, offset=100.0, cancel=cancel)
    with pytest.raises(ValueError, match="above 99 %"):
        _jobs.denoise_photons(raw, gain=2.0, read_noise=3.0, offset=1000.0)


def test_photon_job_estimates_a_crop_from_its_whole_plane():
    import skimage_trd

    raw, _ = _low_light()
    rgb = np.stack([raw, raw[::-1], raw[:, ::-1]], axis=-1)
    part = rgb[40:80, 100:150]  # too small to estimate from on its own
    out = _jobs.denoise_photons(part, offset=100.0, channel_axis=-1, estimate_from=rgb)
    assert out.shape == part.shape
    for c in range(3):
        g, r = skimage_trd.estimate_poisson_gaussian(rgb[..., c], offset=100.0)
        np.testing.assert_array_equal(
            out[..., c], skimage_trd.denoise_trd_poisson(part[..., c], g, r, offset=100.0))
    with pytest.raises(ValueError, match="cannot estimate"):
        _jobs.denoise_photons(part[..., 0], offset=100.0)  # without the plane: refused


def _visible_to(field, widget):
    return field.native.isVisibleTo(widget.native)


def _settle(qtbot, widget):
    """Wait for the widget's estimates: a job started while workers fill Qt's thread pool
    (two threads on two cores) can hang napari (see DenoiseWidget._update_estimate)."""
    qtbot.waitUntil(lambda: not widget._estimating(), timeout=30_000)


@pytest.mark.napari
def test_denoise_widget_photon_counting(make_napari_viewer, qtbot, monkeypatch):
    import napari.qt.threading as qt_threading

    import skimage_trd
    from napari_trd import DenoiseWidget

    calls, workers = [], []  # estimates made (one a change, of the kind shown), workers
    for name in ("estimate_noise", "estimate_photons"):
        real = getattr(_jobs, name)
        monkeypatch.setattr(_jobs, name, lambda *a, _f=real, _n=name, **k: (
            calls.append(_n), _f(*a, **k))[1])
    real_create = qt_threading.create_worker
    monkeypatch.setattr(qt_threading, "create_worker", lambda *a, **k: (
        workers.append(a[0]), real_create(*a, **k))[1])
    viewer = make_napari_viewer()
    raw, meta = _low_light()
    layer = viewer.add_image(raw, name="dim", metadata=meta["metadata"])
    widget = DenoiseWidget(viewer)
    _settle(qtbot, widget)
    assert calls == ["estimate_noise"] and len(workers) == 1
    photon_fields = [widget.auto_photons, widget.gain, widget.offset, widget.read_noise,
                     widget.photon_estimate]
    # Gaussian mode as before: sigma shown, the camera's fields hidden
    assert widget.noise.value == widget.GAUSSIAN
    assert _visible_to(widget.sigma, widget) and _visible_to(widget.estimate, widget)
    assert not any(_visible_to(f, widget) for f in photon_fields)
    # the layer's metadata filled the camera's fields
    assert (widget.gain.value, widget.offset.value, widget.read_noise.value) == (2.0, 100.0, 3.0)
    widget.noise.value = widget.PHOTONS
    assert not _visible_to(widget.sigma, widget) and not _visible_to(widget.estimate, widget)
    assert all(_visible_to(f, widget) for f in photon_fields)
    assert widget.auto_photons.value and not widget.gain.enabled and not widget.read_noise.enabled
    # the estimate is computed in a thread and shown (the estimator's own numbers)
    qtbot.waitUntil(lambda: widget.photon_estimate.value.startswith("gain "), timeout=30_000)
    _settle(qtbot, widget)
    assert calls == ["estimate_noise", "estimate_photons"] and len(workers) == 2
    g, r = skimage_trd.estimate_poisson_gaussian(raw, offset=100.0)
    assert widget.photon_estimate.value == f"gain {g:.4g}, read noise {r:.4g}"
    # given values
    widget.auto_photons.value = False
    assert widget.gain.enabled and widget.read_noise.enabled
    _settle(qtbot, widget)
    widget.run()
    _wait(qtbot, widget)
    assert widget.last_error is None
    np.testing.assert_array_equal(
        viewer.layers["dim_trd"].data,
        skimage_trd.denoise_trd_poisson(raw, 2.0, 3.0, offset=100.0, preserve_dtype=True))
    # read noise 0 is a value, not 'estimate'
    widget.read_noise.value = 0.0
    widget.keep_dtype.value = False
    widget.run()
    _wait(qtbot, widget)
    np.testing.assert_array_equal(viewer.layers["dim_trd [1]"].data,
                                  skimage_trd.denoise_trd_poisson(raw, 2.0, 0.0, offset=100.0))
    # estimated
    widget.auto_photons.value = True
    widget.run()
    _wait(qtbot, widget)
    assert widget.last_error is None
    np.testing.assert_array_equal(viewer.layers["dim_trd [2]"].data,
                                  skimage_trd.denoise_trd_poisson(raw, offset=100.0))
    # the preview of the visible region (here a part of the plane), with estimates from the
    # whole plane (as in a run), then with given values
    assert widget.visible_region(layer)[0] == ()
    rows, cols = slice(40, 100), slice(60, 140)
    widget.visible_region = lambda _layer: ((), (rows, cols))
    widget.preview()
    _wait(qtbot, widget)
    np.testing.assert_array_equal(
        viewer.layers["dim_trd_preview"].data,
        skimage_trd.denoise_trd_poisson(raw[rows, cols], g, r, offset=100.0))
    widget.auto_photons.value = False
    widget.read_noise.value = 3.0
    widget.preview()
    _wait(qtbot, widget)
    np.testing.assert_array_equal(
        viewer.layers["dim_trd_preview"].data,
        skimage_trd.denoise_trd_poisson(raw[rows, cols], 2.0, 3.0, offset=100.0))
    # a bad offset: the library's message as an error notification, no new layer
    names = [ly.name for ly in viewer.layers]
    widget.offset.value = 1000.0
    _settle(qtbot, widget)
    widget.run()
    _wait(qtbot, widget)
    assert isinstance(widget.last_error, ValueError)
    assert "offset=1000 is above 99 %" in widget.status.value
    assert [ly.name for ly in viewer.layers] == names
    # the estimate follows the offset (read noise from the fitted line at the dark level)
    widget.offset.value = 0.0
    qtbot.waitUntil(lambda: widget.photon_estimate.value.startswith("gain "), timeout=30_000)
    g0, r0 = skimage_trd.estimate_poisson_gaussian(raw, offset=0.0)
    assert widget.photon_estimate.value == f"gain {g0:.4g}, read noise {r0:.4g}" and r0 != r
    # back to Gaussian: exactly today's denoising
    widget.noise.value = widget.GAUSSIAN
    assert _visible_to(widget.sigma, widget) and not _visible_to(widget.gain, widget)
    qtbot.waitUntil(lambda: widget.estimate.value not in ("-", widget.ESTIMATING), timeout=30_000)
    assert float(widget.estimate.value) == pytest.approx(_jobs.estimate_noise(raw), rel=1e-3)
    widget.sigma.value = 4.0
    widget.run()
    _wait(qtbot, widget)
    np.testing.assert_array_equal(viewer.layers["dim_trd [3]"].data,
                                  _jobs.denoise(raw, sigma=4.0, keep_dtype=False))


@pytest.mark.napari
def test_photon_estimate_says_when_it_cannot(make_napari_viewer, qtbot):
    from napari_trd import DenoiseWidget

    viewer = make_napari_viewer()
    raw, _ = _low_light()
    viewer.add_image(raw[100:124, 100:124], name="tiny")  # too small to estimate from
    widget = DenoiseWidget(viewer)
    widget.noise.value = widget.PHOTONS
    qtbot.waitUntil(lambda: widget.photon_estimate.value.startswith("cannot"), timeout=30_000)
    assert "at least 32x32" in widget.photon_estimate.tooltip
    widget.offset.value = 100.0
    _settle(qtbot, widget)
    widget.run()  # estimated per plane: the same refusal, as an error notification
    _wait(qtbot, widget)
    assert isinstance(widget.last_error, ValueError) and "32x32" in widget.status.value
    assert [ly.name for ly in viewer.layers] == ["tiny"]


@pytest.mark.napari
def test_job_warnings_reach_the_user(make_napari_viewer, qtbot):
    from napari_trd import DenoiseWidget

    viewer = make_napari_viewer()
    raw, _ = _low_light()
    raw = raw.copy()
    raw[:8, :128] = 4095  # a saturated 12-bit camera: 1.6 % of the pixels at full scale
    viewer.add_image(raw, name="saturated")
    widget = DenoiseWidget(viewer)
    widget.noise.value = widget.PHOTONS
    widget.auto_photons.value = False
    widget.gain.value, widget.read_noise.value, widget.offset.value = 2.0, 3.0, 100.0
    _settle(qtbot, widget)
    widget.run()
    _wait(qtbot, widget)
    assert widget.last_error is None and "saturated_trd" in viewer.layers
    assert "full-scale" in str(widget.last_warning) and "UserWarning" in widget.status.value


def test_train_jobs_without_clean_images(user_models):
    # a noisy layer alone (SURE) and two noisy acquisitions (Noise2Noise), fine-tuning a
    # shipped-size model made here; the saved models record their loss
    from skimage import data

    import skimage_trd

    rng = np.random.default_rng(0)
    clean = data.camera()[:128, :128] / 255.0
    first = clean + 0.1 * rng.standard_normal(clean.shape)
    second = clean + 0.1 * rng.standard_normal(clean.shape)
    base = _jobs.train(clean, sigma=0.1, kernel_size=3, n_stages=1, greedy_iterations=2,
                       joint_iterations=0, name="base")
    steps = []
    sure = _jobs.train(first, sigma=0.1, joint_iterations=2, name="sure",
                       start_from=str(base), loss="sure", progress=lambda d, t: steps.append(d))
    n2n = _jobs.train(first, noisy=second, sigma=0.1, joint_iterations=2,
                      name="n2n", start_from=str(base), loss="n2n")
    assert steps == [1, 2]
    for path, loss in ((sure, "sure"), (n2n, "n2n")):
        assert skimage_trd.load_model(path).metadata["provenance"]["loss"] == loss
    with pytest.raises(ValueError, match="second noisy layer"):
        _jobs.train(first, sigma=0.1, joint_iterations=1, name="x", loss="n2n")


@pytest.mark.napari
def test_train_widget_noisy_layer_only(make_napari_viewer, qtbot):
    from skimage import data

    import skimage_trd
    from napari_trd import TrainWidget

    viewer = make_napari_viewer()
    rng = np.random.default_rng(1)
    viewer.add_image(data.camera()[:96, :96] / 255.0 + 0.1 * rng.standard_normal((96, 96)),
                     name="noisy")
    train = TrainWidget(viewer)
    train.data_kind.value = train.SURE
    assert train.clean.label == "noisy image" and not _visible_to(train.noisy, train)
    train.data_kind.value = train.N2N
    assert _visible_to(train.noisy, train) and train.noisy.label == "second noisy image"
    train.noisy.value = "noisy"
    assert train.run() is None and "same layer" in train.status.value  # refused at once
    train.data_kind.value = train.SURE
    train.sigma.value = 0.1
    _small_training_run(train, "from-noisy", greedy=2)
    _wait(qtbot, train)
    assert train.last_error is None
    path = _jobs.user_models_dir() / "from-noisy.npz"
    assert skimage_trd.load_model(path).metadata["provenance"]["loss"] == "sure"


def test_train_job_on_planes_of_different_sizes_reports_each_step(user_models):
    # a folder's images (a list of 2-D planes of different sizes) trained by SURE; every
    # iteration's TrainingStep reaches on_step (the widget's loss plot)
    from skimage import data

    import skimage_trd

    rng = np.random.default_rng(2)
    cam = data.camera() / 255.0
    planes = [cam[:96, :128] + 0.1 * rng.standard_normal((96, 128)),
              cam[200:280, 100:180] + 0.1 * rng.standard_normal((80, 80))]
    steps = []
    path = _jobs.train(planes, sigma=0.1, kernel_size=3, n_stages=2, greedy_iterations=2,
                       joint_iterations=1, name="planes", loss="sure",
                       on_step=steps.append)
    assert [s.iteration for s in steps] == [1, 2, 3, 4, 5]
    assert {s.total for s in steps} == {5} and all(np.isfinite(s.loss) for s in steps)
    assert all(np.isnan(s.psnr) for s in steps)  # (SURE's fitted figure is not reported)
    assert steps[0].phase != steps[-1].phase
    model = skimage_trd.load_model(path)
    assert model.metadata["provenance"]["loss"] == "sure"
    bad = [planes[0], np.full((40, 40), np.nan)]
    with pytest.raises(ValueError, match="NaN"):
        _jobs.train(bad, sigma=0.1, joint_iterations=1, name="x", loss="sure")


@pytest.mark.napari
def test_train_widget_folder_of_noisy_images_and_loss_plot(make_napari_viewer, qtbot,
                                                           tmp_path):
    from skimage import data
    from skimage.io import imsave

    import skimage_trd
    from napari_trd import TrainWidget

    folder = tmp_path / "noisy"
    folder.mkdir()
    rng = np.random.default_rng(3)
    cam = data.camera().astype(np.float64)
    for name, crop in (("a.png", cam[:96, :96]), ("b.png", cam[300:380, 200:300])):
        noisy = np.clip(crop + 20 * rng.standard_normal(crop.shape), 0, 255)
        imsave(folder / name, noisy.astype(np.uint8), check_contrast=False)
    viewer = make_napari_viewer()
    train = TrainWidget(viewer)  # no layer at all: a folder needs none
    train.data_kind.value = train.FOLDER
    assert _visible_to(train.folder, train) and not _visible_to(train.clean, train)
    assert not _visible_to(train.noisy, train)
    assert train.run() is None and "folder" in train.status.value  # none chosen yet
    train.folder.value = folder
    train.sigma.value = 20.0  # the files' own units (uint8)
    _small_training_run(train, "from-folder", greedy=3)
    _wait(qtbot, train)
    assert train.last_error is None
    model = skimage_trd.load_model(_jobs.user_models_dir() / "from-folder.npz")
    assert model.metadata["provenance"]["loss"] == "sure"
    plot = train.loss_plot
    qtbot.waitUntil(lambda: len(plot.points) == 3, timeout=10_000)
    assert [p[1] for p in plot.points] == [1, 2, 3] and plot.total == 3
    assert "iteration 3/3" in plot.caption
    image = plot.grab().toImage()  # drawn without error, and not blank
    assert not image.isNull()
    colours = {image.pixel(x, y) for x in range(0, image.width(), 3)
               for y in range(0, image.height(), 3)}
    assert len(colours) > 3
    train.data_kind.value = train.SURE  # back to layers
    assert _visible_to(train.clean, train) and not _visible_to(train.folder, train)


def test_train_job_on_photon_counting_data(user_models):
    # a raw low-light layer (camera units) trained by SURE through the Anscombe transform; the
    # model then serves denoise_trd_poisson and improves on the raw data
    import skimage_trd

    raw, meta = _low_light()
    clean = low_light_cells()[0][1]["metadata"]["clean"][200:456, 150:406]
    path = _jobs.train(raw, sigma=25.0, kernel_size=3, n_stages=2, greedy_iterations=3,
                       joint_iterations=0, name="photons", loss="sure",
                       photons=dict(gain=2.0, read_noise=3.0, offset=100.0))
    model = skimage_trd.load_model(path)
    assert model.sigma == 25.0 and model.metadata["provenance"]["loss"] == "sure"
    out = skimage_trd.denoise_trd_poisson(raw, 2.0, 3.0, offset=100.0, model=model)
    assert np.mean((out - clean) ** 2) < 0.5 * np.mean((raw - clean) ** 2)
    with pytest.raises(ValueError, match="SURE"):
        _jobs.train(raw, sigma=25.0, joint_iterations=1, name="x",
                    photons=dict(gain=2.0, read_noise=3.0, offset=100.0))


@pytest.mark.napari
def test_train_widget_photon_mode_fields(make_napari_viewer):
    from napari_trd import TrainWidget

    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((32, 32)), name="raw")
    train = TrainWidget(viewer)
    photon_fields = (train.auto_photons, train.offset)
    assert not any(_visible_to(f, train) for f in photon_fields)
    train.data_kind.value = train.PHOTONS
    assert all(_visible_to(f, train) for f in photon_fields)
    assert not _visible_to(train.gain, train) and train.sigma.value == train.PHOTON_SIGMA
    train.auto_photons.value = False
    assert _visible_to(train.gain, train) and _visible_to(train.read_noise, train)


@pytest.mark.napari
def test_qt_thread_pool_keeps_room_for_qt(make_napari_viewer):
    # on small machines the global pool (napari's workers and Qt's image conversion) is grown
    # so that our workers cannot take every thread the GUI thread waits on
    from qtpy.QtCore import QThreadPool

    from napari_trd import DenoiseWidget
    from napari_trd._widgets import MIN_POOL_THREADS

    QThreadPool.globalInstance().setMaxThreadCount(2)  # as on a 2-core machine
    DenoiseWidget(make_napari_viewer())
    assert QThreadPool.globalInstance().maxThreadCount() >= MIN_POOL_THREADS


def test_denoise_job_reports_the_sure_choice():
    from skimage import data

    clean = data.page()[:, :256] / 255.0  # the range rule picks sigma 50 here; SURE sigma 25
    noisy = clean + 0.1 * np.random.default_rng(0).standard_normal(clean.shape)
    choices = []
    out = _jobs.denoise(noisy, sigma=0.1, select="sure", choices=choices)
    expected = __import__("skimage_trd").denoise_trd(noisy, 0.1, select="sure",
                                                      preserve_range=True)
    np.testing.assert_array_equal(out, expected)
    text = _jobs.choice_summary(choices, noisy)
    assert choices[0]["model"] in text and "estimated PSNR" in text
    # the estimate against the true PSNR of the result (within 0.5 dB on this image)
    est = float(text.split("estimated PSNR ")[1].split(" dB")[0])
    true = 10 * np.log10(1.0 / np.mean((out - clean) ** 2))
    assert abs(est - true) < 0.5
    ranged = []
    _jobs.denoise(noisy, sigma=0.1, choices=ranged)
    assert "intensity-range rule" in _jobs.choice_summary(ranged, noisy)
    stack = np.stack([noisy, noisy[::-1]]).astype(np.float32)
    many = []
    _jobs.denoise(stack, sigma=0.1, select="sure", choices=many)
    assert "x2" in _jobs.choice_summary(many, stack) and "mean" in _jobs.choice_summary(many, stack)
    assert _jobs.choice_summary([{"model": None, "estimated_mse": {}}], stack).startswith("no ")


@pytest.mark.napari
def test_denoise_widget_choose_by_sure(make_napari_viewer, qtbot):
    from skimage import data

    from napari_trd import DenoiseWidget

    viewer = make_napari_viewer()
    clean = data.page()[:, :256] / 255.0
    noisy = clean + 0.1 * np.random.default_rng(0).standard_normal(clean.shape)
    viewer.add_image(noisy, name="page")
    widget = DenoiseWidget(viewer)
    widget.sigma.value = 0.1
    widget.select.value = "SURE (estimated error)"
    widget.run()
    _wait(qtbot, widget)
    assert widget.last_error is None
    assert "trd-gauss-s25-7x7-5st" in widget.chosen.value
    assert "estimated PSNR" in widget.chosen.value
    np.testing.assert_array_equal(
        viewer.layers["page_trd"].data,
        __import__("skimage_trd").denoise_trd(noisy, 0.1, select="sure", preserve_range=True))


@pytest.mark.napari
@pytest.mark.slow
def test_denoise_widget_volume(make_napari_viewer, qtbot, user_models):
    """A z-stack layer is denoised as a volume by default (the layer's scale as the voxel
    size), its preview is a slab around the displayed plane, the view turns 3-D."""
    from napari_trd import DenoiseWidget
    from napari_trd._sample_data import noisy_volume
    from skimage_trd import denoise_trd, load_model
    from skimage_trd.train.models import lift_to_volume

    user_models.mkdir(parents=True, exist_ok=True)
    model = lift_to_volume(load_model("trd-gauss-s25-7x7-5st"), 3)
    model.save(user_models / "volume.npz")
    (data, meta, _), = noisy_volume()
    data = data[:20, :64, :80]
    viewer = make_napari_viewer(show=True)
    layer = viewer.add_image(data, name="vol", scale=(2.0, 0.5, 0.5))
    widget = DenoiseWidget(viewer)
    assert widget.volume.value and widget.volume.enabled and _visible_to(widget.adapt, widget)
    widget.model.value = str(user_models / "volume.npz")
    widget.sigma.value = 0.1
    widget.run()
    _wait(qtbot, widget)
    assert widget.last_error is None
    result = viewer.layers["vol_trd"]
    np.testing.assert_allclose(result.data, denoise_trd(data, 0.1, axes="ZYX", model=model,
                                                        spacing=(2.0, 0.5, 0.5)), atol=1e-6)
    np.testing.assert_array_equal(result.scale, layer.scale)
    assert viewer.dims.ndisplay == 3
    # preview: 16 planes around the displayed one, placed where they are
    viewer.dims.ndisplay = 2
    viewer.dims.set_point(0, 2.0 * 10)
    widget.preview()
    _wait(qtbot, widget)
    preview = viewer.layers["vol_trd_preview"]
    assert preview.data.shape[0] == 16 and widget.last_error is None
    assert preview.translate[0] == pytest.approx(2.0 * 2)  # planes 2..17
    # a 2-D layer: the option is off and disabled
    viewer.add_image(data[0], name="plane")
    widget.image.value = "plane"
    assert not widget.volume.value and not widget.volume.enabled



def test_denoise_job_adapts_volumes(monkeypatch):
    """The job passes the volume's axes, voxel size and adapt=True together to the library."""
    import skimage_trd

    seen = {}

    def fake(data, sigma, **kw):
        seen.update(kw)
        return np.asarray(data), []

    monkeypatch.setattr(skimage_trd, "denoise_trd", fake)
    _jobs.denoise(np.zeros((2, 5, 16, 16)), sigma=0.1, volume=True, spacing=(2.0, 1.0, 1.0),
                  adapt=True)
    assert seen["axes"] == "TZYX" and seen["spacing"] == (2.0, 1.0, 1.0) and seen["adapt"]
    assert seen["channel_axis"] is None

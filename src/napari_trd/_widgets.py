"""Dock widgets: Denoise (TRD), JPEG deblock (TRD), Train TRD.

Each widget runs its job in a napari thread worker; progress goes to napari's progress bar
(with a cancel button), errors to napari's notifications, results to a new layer that keeps
the input's scale, translate and name (plus a suffix).

Workers never outlive Qt: closing a widget (or its viewer) cancels its jobs and drops its
noise estimates, and at interpreter exit (and when the Qt application quits) every running
job is cancelled and every worker awaited (up to ``SHUTDOWN_WAIT_MS``) before Qt tears down,
so that no worker signals through a deleted Qt object (which aborts the process).
"""

from __future__ import annotations

import atexit
import threading
import weakref

import numpy as np
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    FloatSpinBox,
    Label,
    LineEdit,
    PushButton,
    SpinBox,
)

from . import _jobs
from ._lossplot import LossPlot

_LIVE = weakref.WeakSet()  # widgets whose model menus follow newly trained models

# How long interpreter exit waits for cancelled jobs and noise estimates to return. Jobs check
# for cancellation between stages (a fraction of a second); only an unusually large plane's
# single stage would take longer, and then the process may still abort at exit.
SHUTDOWN_WAIT_MS = 30_000
_shutdown_hooked = False


def shutdown_workers(msecs=SHUTDOWN_WAIT_MS):
    """Cancel every widget's jobs and wait up to ``msecs`` for all thread workers to return.

    Run at interpreter exit and when the Qt application is about to quit; call it yourself
    before tearing Qt down by other means. Returns whether all workers finished."""
    for widget in list(_LIVE):
        widget.stop_workers()
    from napari.qt.threading import WorkerBase

    try:
        WorkerBase.await_workers(msecs)
    except RuntimeError:  # still running after the wait: nothing more can be done safely
        return False
    return True


# Qt's global thread pool runs napari's thread workers (ours among them) and Qt's own image
# conversion, which the GUI thread waits for while it draws (a progress bar, for one). With the
# pool's default size on a 2-core machine (2 threads), two of our workers waiting for the Python
# lock can leave no thread for that conversion: napari hangs. Our widgets run at most a job and
# a noise estimate each; this many threads leave room for Qt beside all of them.
MIN_POOL_THREADS = 8


def _ensure_pool_room():
    from qtpy.QtCore import QThreadPool

    pool = QThreadPool.globalInstance()
    if pool.maxThreadCount() < MIN_POOL_THREADS:
        pool.setMaxThreadCount(MIN_POOL_THREADS)


def _hook_shutdown():
    """Register :func:`shutdown_workers` once, at exit and on the application's aboutToQuit
    (atexit handlers run last-registered first: before napari's and Qt's teardown)."""
    global _shutdown_hooked
    if _shutdown_hooked:
        return
    _shutdown_hooked = True
    atexit.register(shutdown_workers)
    try:
        from qtpy.QtWidgets import QApplication

        app = QApplication.instance()
        if app is not None:
            app.aboutToQuit.connect(shutdown_workers)
    except ImportError:  # pragma: no cover - napari always brings qtpy
        pass


def _gpu_available():
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


def _refine_step(spinbox, magnitude, digits):
    """Make a float box's step (and so its decimals) fine enough for values of this magnitude
    (``digits`` decimal places below its leading digit); never coarser than it was."""
    if magnitude > 0 and np.isfinite(magnitude):
        spinbox.step = min(spinbox.step, 10.0 ** (np.floor(np.log10(magnitude)) - digits))


class _JobWidget(Container):
    """Layer menus, a run button, a cancel button, and the worker plumbing."""

    task = "denoise"
    suffix = "_trd"

    def __init__(self, napari_viewer, widgets, run_text):
        self.viewer = napari_viewer
        self.run_button = PushButton(text=run_text)
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.status = Label(value="")
        super().__init__(widgets=[*widgets, self.run_button, self.cancel_button, self.status])
        self.run_button.changed.connect(self.run)
        self.cancel_button.changed.connect(self.cancel)
        self._cancel = None  # the latest job's cancel event (the Cancel button's)
        self._running = set()  # cancel events of all jobs still running
        self._closed = threading.Event()  # set when the widget is closed: workers stand down
        self.worker = None
        self.last_error = self.last_warning = None
        layers = napari_viewer.layers.events
        layers.inserted.connect(self._refresh_layers)
        layers.removed.connect(self._refresh_layers)
        _LIVE.add(self)
        # (a plain function of the events, not of self's Qt objects, which are gone by then)
        closed, running = self._closed, self._running
        self.native.destroyed.connect(lambda *_: _stand_down(closed, running))
        _hook_shutdown()
        _ensure_pool_room()

    def stop_workers(self):
        """Cancel the running job and drop pending noise estimates (the widget is closing)."""
        _stand_down(self._closed, self._running)

    # ------------------------------------------------------------------ menus
    def _image_layers(self):
        from napari.layers import Image

        return [layer for layer in self.viewer.layers if isinstance(layer, Image)]

    def _layer_names(self, widget=None):
        # a callable, so that magicgui's reset_choices (on docking, for instance) refreshes it
        return [layer.name for layer in self._image_layers()]

    def _model_names(self, widget=None):
        return _jobs.model_choices(self.task)

    def _refresh_layers(self, event=None):
        for combo in self._layer_combos():
            combo.reset_choices()

    def _layer_combos(self):
        return []

    def refresh_models(self):
        combo = getattr(self, "model", None)
        if combo is not None:
            combo.reset_choices()

    def layer(self, combo):
        if not combo.value:
            return None
        return self.viewer.layers[combo.value]

    # ----------------------------------------------------------------- worker
    def start(self, job, on_done, total, desc):
        """Run ``job(progress, cancel)`` off the GUI thread with a cancelable progress bar."""
        from napari.qt.threading import create_worker
        from napari.utils import cancelable_progress

        cancel = _jobs.new_event()
        pbar = cancelable_progress(total=total, desc=desc, cancel_callback=cancel.set)

        def progress(done, total_now):
            if pbar.total != total_now:
                pbar.total = total_now
            pbar.update(done - pbar.n)

        running = self._running

        def work():
            try:
                return job(progress, cancel)
            except _jobs.Cancelled:
                return _jobs.Cancelled
            finally:
                running.discard(cancel)

        # errors are ours to report (as napari notifications, below), not re-raised in Qt
        worker = create_worker(work, _ignore_errors=True)
        self._cancel = cancel
        self._running.add(cancel)
        self.worker = worker
        self.last_error = self.last_warning = None

        def returned(result):
            if result is _jobs.Cancelled:
                self._notify("cancelled: nothing was added", error=False)
            else:
                on_done(result)

        def errored(exc):
            self.last_error = exc
            self._notify(f"{type(exc).__name__}: {exc}", error=True)

        seen = set()

        def warned(args):  # the worker catches the job's warnings: pass them on to the user
            message = f"{getattr(args[1], '__name__', 'Warning')}: {args[0]}"
            self.last_warning = args[0]
            if message not in seen:  # once a job (a training loop may repeat one)
                seen.add(message)
                self._notify(message, error=None)

        def finished():
            pbar.close()
            self.run_button.enabled = True
            self.cancel_button.enabled = False

        worker.returned.connect(returned)
        worker.errored.connect(errored)
        worker.warned.connect(warned)
        worker.finished.connect(finished)
        self.run_button.enabled = False
        self.cancel_button.enabled = True
        worker.start()
        return worker

    def cancel(self, *_):
        if self._cancel is not None:
            self._cancel.set()

    def _notify(self, message, error):
        """Status line and napari notification: an error (True), information (False) or a
        warning (None)."""
        from napari.utils.notifications import show_error, show_info, show_warning

        self.status.value = message[:120]
        {True: show_error, False: show_info, None: show_warning}[error](message)

    def add_result(self, data, source, name_suffix=None, translate=None, scale=None,
                   replace=False):
        """A new layer beside ``source`` (its scale, translate and look). Only ``replace``
        (previews) removes an earlier layer of the same name; results of runs are kept, and
        napari numbers their names."""
        kwargs = dict(
            name=f"{source.name}{name_suffix or self.suffix}",
            scale=source.scale if scale is None else scale,
            translate=source.translate if translate is None else translate,
            rgb=source.rgb,
            contrast_limits=source.contrast_limits,
            colormap=source.colormap.name,
        )
        if replace and kwargs["name"] in self.viewer.layers:
            self.viewer.layers.remove(kwargs["name"])
        return self.viewer.add_image(data, **kwargs)

    def _guard(self, layer):
        if layer is None:
            self._notify("choose an image layer first", error=True)
            return False
        if getattr(layer, "multiscale", False):
            self._notify("multiscale layers are not supported; use the full-resolution level",
                         error=True)
            return False
        return True


def _stand_down(closed, running):
    closed.set()
    for cancel in list(running):
        cancel.set()


PREVIEW_SLAB = 16  # planes of the volume preview around the displayed one
VOLUME_MIN_PLANES = 3  # (the volume models' filters span 3 planes)


class DenoiseWidget(_JobWidget):
    """Denoise (TRD): image layer, noise model, noise level (auto-estimated and shown, or
    set), model, backend, and a preview of the visible region.

    Noise "photon counting (Poisson-Gaussian)" is for low-light data in camera units
    (:func:`skimage_trd.denoise_trd_poisson`): gain (camera units per photon), offset (dark
    level) and read noise given, or gain and read noise estimated for every plane. A layer
    whose metadata holds ``gain``, ``offset`` and ``read_noise`` (the low-light sample) fills
    those fields when it is chosen."""

    task = "denoise"
    suffix = "_trd"
    GAUSSIAN = "Gaussian"
    PHOTONS = "photon counting (Poisson-Gaussian)"

    def __init__(self, napari_viewer):
        self.viewer = napari_viewer  # the menus below read the viewer's layers
        self._estimates = set()  # estimate workers (noise sigma, gain) running or queued
        # each kind's latest estimate's ticket; older results are dropped
        self._tickets = {"sigma": 0, "photons": 0}
        self.image = ComboBox(label="image", choices=self._layer_names)
        self.noise = ComboBox(label="noise", choices=[self.GAUSSIAN, self.PHOTONS],
                              value=self.GAUSSIAN,
                              tooltip="photon counting: low-light data in camera units "
                                      "(photon noise plus the camera's read noise)")
        self.sigma = FloatSpinBox(label="noise sigma (0: auto)", value=0.0, min=0.0, max=1e9,
                                  step=0.001)
        self.estimate = Label(label="estimated sigma", value="-")
        self.auto_photons = CheckBox(label="estimate gain and read noise", value=True,
                                     tooltip="estimated for every plane (and channel); "
                                             "untick to give the camera's values")
        self.gain = FloatSpinBox(label="gain (camera units / photon)", value=1.0, min=1e-9,
                                 max=1e9, step=0.01)
        self.offset = FloatSpinBox(label="offset (dark level)", value=0.0, min=-1e9, max=1e9,
                                   step=0.01, tooltip="camera units of no light")
        self.read_noise = FloatSpinBox(label="read noise (camera units)", value=0.0, min=0.0,
                                       max=1e9, step=0.01,
                                       tooltip="standard deviation of the camera's read "
                                               "noise; 0 is a valid value")
        self.photon_estimate = Label(label="estimated gain, read noise", value="-")
        self.model = ComboBox(label="model", choices=self._model_names)
        self.select = ComboBox(label="choose model by", choices=list(_jobs.SELECT),
                               value="intensity range",
                               tooltip="with the model bank: the plane's intensity range (fast), "
                                       "or the lowest error estimated by SURE without a clean "
                                       "image (often better; four times the work or more)")
        self.adapt = CheckBox(label="adapt the model to this layer", value=False,
                              tooltip="first fine-tune the model on this layer itself by SURE "
                                      "(no clean image; judged by a twin run, never worse "
                                      "than the model by that estimate): two to five minutes "
                                      "per plane's model on one core, then denoise")
        self.volume = CheckBox(label="denoise as a volume (3-D)", value=False,
                               tooltip="filter the last three axes (z, y, x) as one volume "
                                       "with the volume models (3-D filters) instead of plane "
                                       "by plane; the layer's scale gives the voxel size")
        self.chosen = Label(label="chosen", value="-")
        backends = ["auto", "CPU"] + (["GPU"] if _gpu_available() else [])
        self.backend = ComboBox(label="backend", choices=backends, value="auto")
        self.keep_dtype = CheckBox(label="keep data type", value=True,
                                   tooltip="result in the layer's data type (e.g. uint16 stays "
                                           "uint16, rounded); off: floating point")
        self.preview_button = PushButton(text="Preview visible region")
        super().__init__(napari_viewer, [self.image, self.noise, self.sigma, self.estimate,
                                         self.auto_photons, self.gain, self.offset,
                                         self.read_noise, self.photon_estimate, self.model,
                                         self.select, self.adapt, self.volume, self.chosen,
                                         self.backend,
                                         self.keep_dtype, self.preview_button],
                         "Denoise")
        self.image.changed.connect(self._layer_chosen)
        self.volume.changed.connect(self._show_mode)
        self.noise.changed.connect(self._show_mode)
        self.auto_photons.changed.connect(self._show_mode)
        self.offset.changed.connect(self._update_photon_estimate)
        self.preview_button.changed.connect(self.preview)
        self._refresh_layers()
        self._show_fields()  # (after the container holds the fields: no stray windows)
        self._layer_chosen()  # (one estimate: a second would race the first to the layer)

    def _layer_combos(self):
        return [self.image]

    def _channel_axis(self, layer):
        return -1 if layer.rgb else None

    ESTIMATING = "estimating..."

    def _photon_mode(self):
        return self.noise.value == self.PHOTONS

    def _show_fields(self):
        """Show the fields of the chosen noise model (the sigma ones, or the camera's)."""
        photons = self._photon_mode()
        for field in (self.sigma, self.estimate):
            field.visible = not photons
        self.adapt.visible = not photons
        layer = self.layer(self.image) if hasattr(self, "image") else None
        self.volume.enabled = layer is not None and self._can_be_volume(layer)
        for field in (self.auto_photons, self.gain, self.offset, self.read_noise,
                      self.photon_estimate):
            field.visible = photons
        self.gain.enabled = self.read_noise.enabled = not self.auto_photons.value

    def _show_mode(self, *_):
        """The chosen noise model's fields, and its estimate if not made for this layer."""
        self._show_fields()
        if (self.photon_estimate if self._photon_mode() else self.estimate).value == "-":
            self._update_estimate()

    def _layer_chosen(self, *_):
        layer = self.layer(self.image)
        if layer is not None:
            self._fill_camera_fields(layer)
            # z-stacks are denoised as volumes by default
            with self.volume.changed.blocked():
                self.volume.value = self._can_be_volume(layer) and not self._time_axis(layer)
            self._show_fields()
        self._update_estimate()

    @staticmethod
    def _can_be_volume(layer):
        """Three spatial axes or more, and the z axis (the third last) at least as long as
        the volume models' filters."""
        nd = layer.data.ndim - layer.rgb
        return nd >= 3 and layer.data.shape[nd - 3] >= VOLUME_MIN_PLANES

    def _time_axis(self, layer):
        """Whether the viewer labels the layer's third-last spatial axis as time."""
        nd = layer.data.ndim - layer.rgb
        labels = list(self.viewer.dims.axis_labels)[-nd:]
        return len(labels) == nd and str(labels[-3]).lower() in ("t", "time")

    def _volume_options(self, layer):
        """``volume``, ``spacing`` for :func:`_jobs.denoise` (the layer's scale as the voxel
        size), or {} plane by plane."""
        if not (self.volume.value and self._can_be_volume(layer)):
            return {}
        nd = layer.data.ndim - layer.rgb
        return dict(volume=True, spacing=tuple(float(s) for s in layer.scale[nd - 3:nd]))

    def _fill_camera_fields(self, layer):
        """Take gain, offset and read noise from the layer's metadata where it has them (the
        low-light sample does); let the boxes resolve the layer's contrast range."""
        lo, hi = (float(v) for v in layer.contrast_limits)
        for box in (self.gain, self.offset, self.read_noise):
            _refine_step(box, hi - lo, 4)
        meta = getattr(layer, "metadata", None) or {}
        try:
            values = {k: float(meta[k]) for k in ("gain", "offset", "read_noise")}
        except (KeyError, TypeError, ValueError):
            return
        if values["gain"] > 0 and values["read_noise"] >= 0:
            self.gain.value, self.read_noise.value = values["gain"], values["read_noise"]
            with self.offset.changed.blocked():  # estimated once, by the caller
                self.offset.value = values["offset"]

    def _estimate_window(self, layer):
        """The layer's data and the index of its central 512 x 512 window (middle plane)."""
        data = layer.data
        crop = tuple(n // 2 for n in data.shape[: data.ndim - 2 - layer.rgb])  # middle plane
        h, w = data.shape[-2 - layer.rgb: data.ndim - layer.rgb]
        y0, x0 = max(0, h // 2 - 256), max(0, w // 2 - 256)
        return data, crop + (slice(y0, y0 + 512), slice(x0, x0 + 512))

    def _estimate_in_thread(self, kind, label, compute, show):
        """Compute an estimate of the chosen layer's central window in a thread (reading a
        lazy layer can take a while) and ``show(result)`` or ``show(exception)`` in ``label``,
        unless a newer estimate of the same kind was asked for meanwhile."""
        from napari.qt.threading import create_worker

        self._tickets[kind] += 1
        ticket, tickets = self._tickets[kind], self._tickets
        layer = self.layer(self.image)
        if layer is None or getattr(layer, "multiscale", False):
            label.value = "-"
            return
        data, window = self._estimate_window(layer)
        channel_axis = self._channel_axis(layer)
        label.value = self.ESTIMATING

        def shown(result):
            if ticket != tickets[kind]:  # another layer (or offset) was chosen meanwhile
                return
            try:
                show(result)
            except RuntimeError:  # the widget was closed meanwhile (its Qt object deleted)
                pass

        closed = self._closed

        def estimate():
            if ticket != tickets[kind] or closed.is_set():  # out of date: read nothing
                return None
            return compute(np.asarray(data[window]), channel_axis)

        worker = create_worker(estimate, _ignore_errors=True)  # a display helper: never raises
        worker.returned.connect(lambda r: r is not None and shown(r))
        worker.errored.connect(shown)
        self._estimates.add(worker)
        worker.finished.connect(lambda: self._estimates.discard(worker))
        worker.start()

    def _update_estimate(self, *_):
        """Show the estimate the noise model shows, of the layer's central 512 x 512 window
        (of its middle plane): the noise sigma, or in photon mode the gain and read noise. The
        other is marked out of date ('-') and estimated when its mode is chosen. (One worker
        a change: napari's workers and Qt's image conversions share one thread pool of as
        many threads as cores, and Qt waits on it holding the GIL, when napari draws a
        progress bar for instance; workers filling the pool then hang the viewer.)"""
        if self._photon_mode():
            self._tickets["sigma"] += 1  # a running sigma estimate is of another layer
            self.estimate.value = "-"
            self._update_photon_estimate()
            return

        def show(sigma):
            if isinstance(sigma, Exception):
                self.estimate.value = f"({type(sigma).__name__})"
                return
            self.estimate.value = f"{sigma:.4g}"
            if sigma:  # let the sigma box resolve three digits of the estimate
                _refine_step(self.sigma, sigma, 2)

        self._estimate_in_thread("sigma", self.estimate, _jobs.estimate_noise, show)
        self._tickets["photons"] += 1
        self.photon_estimate.value = "-"

    def _update_photon_estimate(self, *_):
        """Show the gain and read noise estimated from the central window (at the offset
        set), or why they cannot be (the reason in the tooltip)."""
        if not self._photon_mode():  # (estimated when photon mode is chosen)
            self._tickets["photons"] += 1
            self.photon_estimate.value = "-"
            return
        offset = self.offset.value

        def show(result):
            if isinstance(result, ValueError):  # the estimator says why: too flat, ...
                self.photon_estimate.value = "cannot estimate: give gain and read noise"
                self.photon_estimate.tooltip = str(result)
                return
            if isinstance(result, Exception):
                self.photon_estimate.value = f"({type(result).__name__})"
                self.photon_estimate.tooltip = str(result)
                return
            gain, read_noise = result
            self.photon_estimate.value = f"gain {gain:.4g}, read noise {read_noise:.4g}"
            self.photon_estimate.tooltip = ("estimated from the middle plane's central 512 x "
                                            "512 pixels; runs estimate every plane anew")
            _refine_step(self.gain, gain, 2)
            if read_noise > 0:
                _refine_step(self.read_noise, read_noise, 2)

        def compute(window, channel_axis):
            return _jobs.estimate_photons(window, offset=offset, channel_axis=channel_axis)

        self._estimate_in_thread("photons", self.photon_estimate, compute, show)

    def _estimating(self):
        """Whether a noise estimate is still running (or queued)."""
        return bool(self._estimates)

    def _sigma(self):
        return self.sigma.value if self.sigma.value > 0 else None

    def _photon_params(self):
        """Keywords of :func:`_jobs.denoise_photons` (None: estimated), or None in Gaussian
        mode."""
        if not self._photon_mode():
            return None
        auto = self.auto_photons.value
        return dict(gain=None if auto else self.gain.value,
                    read_noise=None if auto else self.read_noise.value,
                    offset=self.offset.value)

    def run(self, *_):
        layer = self.layer(self.image)
        if not self._guard(layer):
            return None
        data, sigma, model = layer.data, self._sigma(), self.model.value
        backend, channel_axis = self.backend.value, self._channel_axis(layer)
        keep, photons = self.keep_dtype.value, self._photon_params()
        select = _jobs.SELECT[self.select.value]
        volume = self._volume_options(layer)
        adapt = self.adapt.value and photons is None
        if volume and photons is not None:
            volume = dict(volume, axes=_jobs.volume_axes(data.ndim, channel_axis))
        summary = []  # the choices in one line, made by the job (it reads the data), shown after

        def job(progress, cancel):
            if photons is not None:
                extra = {} if not volume else dict(axes=volume["axes"],
                                                   spacing=volume["spacing"])
                return _jobs.denoise_photons(data, model=model, backend=backend,
                                             channel_axis=None if volume else channel_axis,
                                             progress=progress, cancel=cancel,
                                             keep_dtype=keep, select=select, **photons, **extra)
            choices = []
            out = _jobs.denoise(data, sigma=sigma, model=model, backend=backend,
                                channel_axis=channel_axis, progress=progress, cancel=cancel,
                                keep_dtype=keep, select=select, choices=choices, adapt=adapt,
                                **volume)
            if choices:
                summary.append(_jobs.choice_summary(choices, data))
            return out

        def done(out):
            self.add_result(out, layer)
            if volume:  # the result beside the input, in 3-D
                self.viewer.dims.ndisplay = 3
            if summary:
                self.chosen.value = summary[0]

        what = "photon-counting " if photons is not None else "adapting and " if adapt else ""
        self.chosen.value = "-"
        return self.start(job, done, total=1, desc=f"TRD {what}denoising {layer.name}")

    def visible_region(self, layer):
        """(index of the displayed plane, (row slice, column slice)) in data coordinates."""
        nd = layer.data.ndim - layer.rgb
        # the layer's axes are the viewer's last ones; world position -> data index
        point = np.asarray(self.viewer.dims.point)[-nd:]
        index = np.round((point - np.asarray(layer.translate)) / np.asarray(layer.scale))
        lead = tuple(int(np.clip(index[ax], 0, layer.data.shape[ax] - 1)) for ax in range(nd - 2))
        corners = getattr(layer, "corner_pixels", None)
        h, w = layer.data.shape[nd - 2], layer.data.shape[nd - 1]
        if corners is None or np.asarray(corners).shape[-1] < 2:
            return lead, (slice(0, h), slice(0, w))
        c = np.asarray(corners)[:, nd - 2 : nd]
        y0, x0 = (max(0, int(v)) for v in c[0])
        y1, x1 = (min(n, int(v) + 1) for v, n in zip(c[1], (h, w)))
        if y1 - y0 < 2 or x1 - x0 < 2:
            return lead, (slice(0, h), slice(0, w))
        return lead, (slice(y0, y1), slice(x0, x1))

    def preview(self, *_):
        layer = self.layer(self.image)
        if not self._guard(layer):
            return None
        lead, (rows, cols) = self.visible_region(layer)
        volume = self._volume_options(layer)
        if volume:  # a slab of planes around the displayed one, as a volume
            nz = layer.data.shape[len(lead) - 1]
            z = lead[-1]
            z0 = max(0, min(z - PREVIEW_SLAB // 2, nz - PREVIEW_SLAB))
            slab = slice(z0, min(nz, z0 + PREVIEW_SLAB))
            data = layer.data[lead[:-1] + (slab, rows, cols)]
        else:
            data = layer.data[lead + (rows, cols)]  # read in the job (lazy layers: off the GUI)
        sigma, model, backend = self._sigma(), self.model.value, self.backend.value
        channel_axis, keep = self._channel_axis(layer), self.keep_dtype.value
        photons = self._photon_params()
        if volume and photons is not None:
            volume = dict(volume, axes=_jobs.volume_axes(data.ndim, channel_axis))
        # estimated gain and read noise: from the whole displayed plane, as a run would
        whole = layer.data[lead] if photons and photons["gain"] is None and not volume else None
        # the preview is the displayed plane's visible part (the slab's), placed where it is
        nd = 3 if volume else 2
        start = ([slab.start] if volume else []) + [rows.start, cols.start]
        scale = np.asarray(layer.scale, dtype=float)[-nd:]
        translate = np.asarray(layer.translate, dtype=float)[-nd:] + scale * start

        select = _jobs.SELECT[self.select.value]
        summary = []

        def job(progress, cancel):
            if photons is not None:
                extra = {} if not volume else dict(axes=volume["axes"],
                                                   spacing=volume["spacing"])
                return _jobs.denoise_photons(data, model=model, backend=backend,
                                             channel_axis=None if volume else channel_axis,
                                             progress=progress, cancel=cancel,
                                             keep_dtype=keep, estimate_from=whole,
                                             select=select, **photons, **extra)
            region = np.asarray(data)
            choices = []
            out = _jobs.denoise(region, sigma=sigma, model=model, backend=backend,
                                channel_axis=channel_axis, progress=progress, cancel=cancel,
                                keep_dtype=keep, select=select, choices=choices, **volume)
            if choices:
                summary.append(_jobs.choice_summary(choices, region) + " (preview)")
            return out

        def done(out):
            self.add_result(out, layer, name_suffix="_trd_preview", translate=translate,
                            scale=scale, replace=True)
            if summary:
                self.chosen.value = summary[0]

        return self.start(job, done, total=1, desc="TRD preview")


class DeblockWidget(_JobWidget):
    """JPEG deblock (TRD): image layer; quantisation tables from the file the layer was opened
    from when it is a JPEG, else the quality you set."""

    task = "deblock"
    suffix = "_deblocked"

    def __init__(self, napari_viewer):
        self.viewer = napari_viewer  # the menus below read the viewer's layers
        self.image = ComboBox(label="image", choices=self._layer_names)
        self.quality = SpinBox(label="JPEG quality", value=10, min=1, max=100)
        self.tables = Label(label="tables", value="from quality")
        self.model = ComboBox(label="model", choices=self._model_names)
        super().__init__(napari_viewer, [self.image, self.quality, self.tables, self.model],
                         "Deblock")
        self.image.changed.connect(self._update_tables)
        self._refresh_layers()
        self._update_tables()

    def _layer_combos(self):
        return [self.image]

    def _file_table(self, layer):
        path = getattr(getattr(layer, "source", None), "path", None)
        return _jobs.jpeg_tables(path), path

    def _update_tables(self, *_):
        layer = self.layer(self.image)
        table, path = self._file_table(layer) if layer is not None else (None, None)
        self.tables.value = f"from {path}" if table is not None else "from quality"

    def run(self, *_):
        layer = self.layer(self.image)
        if not self._guard(layer):
            return None
        table, _ = self._file_table(layer)
        data, rgb, model = layer.data, layer.rgb, self.model.value
        quality = None if table is not None else self.quality.value

        def job(progress, cancel):
            return _jobs.deblock(data, quality=quality, qtable=table, model=model, rgb=rgb,
                                 progress=progress, cancel=cancel)

        return self.start(job, lambda out: self.add_result(out, layer), total=1,
                          desc=f"TRD deblocking {layer.name}")


class TrainWidget(_JobWidget):
    """Train TRD: learn a denoising model from a clean layer (noise added), a clean/noisy
    pair of layers, a noisy layer alone or a folder of noisy images (Stein's unbiased risk
    estimate) or two noisy acquisitions of one scene (Noise2Noise), with a live plot of the
    training loss; the model is saved and appears in the Denoise widget's model menu."""

    task = "denoise"
    ADDED = "clean image, noise added"
    PAIR = "clean and noisy images"
    SURE = "noisy image only (SURE)"
    FOLDER = "folder of noisy images (SURE)"
    N2N = "two noisy images of one scene (Noise2Noise)"
    PHOTONS = "photon-counting image only (SURE)"
    # the first and second layer menus' labels, and the training loss, per kind of data
    DATA = {ADDED: ("clean image", None, "mse"), PAIR: ("clean image", "noisy image", "mse"),
            SURE: ("noisy image", None, "sure"), FOLDER: (None, None, "sure"),
            N2N: ("first noisy image", "second noisy image", "n2n"),
            PHOTONS: ("photon-counting image", None, "sure")}
    PHOTON_SIGMA = 25.0  # the model's noise level for stabilised photon-counting data

    def __init__(self, napari_viewer):
        self.viewer = napari_viewer  # the menus below read the viewer's layers
        self.data_kind = ComboBox(label="training data", choices=list(self.DATA),
                                  value=self.ADDED,
                                  tooltip="without clean images: a noisy layer alone (its "
                                          "noise Gaussian of the sigma below), or two noisy "
                                          "acquisitions of the same scene")
        self.clean = ComboBox(label="clean image", choices=self._layer_names)
        self.folder = FileEdit(label="folder", mode="d",
                               tooltip="noisy images (PNG, TIFF stacks, .npy, zarr arrays), "
                                       "all with Gaussian noise of the sigma below, in their "
                                       "stored units")
        self.noisy = ComboBox(label="noisy image", choices=self._layer_names)
        self.auto_photons = CheckBox(label="estimate gain and read noise", value=True)
        self.gain = FloatSpinBox(label="gain (camera units / photon)", value=1.0, min=1e-9,
                                 max=1e9, step=0.01)
        self.offset = FloatSpinBox(label="offset (dark level)", value=0.0, min=-1e9, max=1e9,
                                   step=0.01)
        self.read_noise = FloatSpinBox(label="read noise (camera units)", value=0.0, min=0.0,
                                       max=1e9, step=0.01)
        self.sigma = FloatSpinBox(label="noise sigma", value=0.1, min=1e-9, max=1e9, step=0.001)
        self.kernel_size = ComboBox(label="filter size", choices=[3, 5, 7], value=5)
        self.n_stages = SpinBox(label="stages", value=3, min=1, max=8)
        self.greedy = SpinBox(label="greedy iterations / stage", value=30, min=0, max=1000)
        self.joint = SpinBox(label="joint iterations", value=self.NEW_JOINT, min=0, max=1000,
                             tooltip="fine-tuning a model: the training front door's default "
                                     "(skimage_trd.train.fit; by SURE: Adam judged by a twin "
                                     "run, the best step kept, early stop)")
        self.model_name = LineEdit(label="model name", value="my-trd-model")
        self.start_from = ComboBox(label="start from", choices=self._start_choices)
        super().__init__(napari_viewer, [self.data_kind, self.clean, self.folder, self.noisy,
                                         self.auto_photons, self.gain, self.offset,
                                         self.read_noise, self.sigma,
                                         self.kernel_size, self.n_stages, self.greedy,
                                         self.joint, self.start_from, self.model_name], "Train")
        self.clean.changed.connect(self._fit_sigma_box)
        self.start_from.changed.connect(self._joint_default)
        self.data_kind.changed.connect(self._show_data_fields)
        self.auto_photons.changed.connect(self._show_data_fields)
        self._refresh_layers()
        self._fit_sigma_box()
        self._show_data_fields()  # (after the container holds the fields: no stray windows)
        self.loss_plot = LossPlot()
        self.native.layout().addWidget(self.loss_plot)

    def _show_data_fields(self, *_):
        first, second, _ = self.DATA[self.data_kind.value]
        self.clean.visible = first is not None
        self.folder.visible = first is None
        if first is not None:
            self.clean.label = first
        self.noisy.visible = second is not None
        if second is not None:
            self.noisy.label = second
        photons = self.data_kind.value == self.PHOTONS
        for field in (self.auto_photons, self.offset):
            field.visible = photons
        for field in (self.gain, self.read_noise):
            field.visible = photons and not self.auto_photons.value
        # photon-counting data: the stabilised noise is 1; sigma is the model's (0..255 scale)
        self.sigma.label = "model sigma (0..255 scale)" if photons else "noise sigma"
        if photons and self.sigma.value < 1:
            self.sigma.value = self.PHOTON_SIGMA

    def _joint_default(self, *_):
        """Joint iterations: the quick default of a new model here, fit's for fine-tuning."""
        tuning = self.start_from.value not in (None, self.PLAIN)
        self.joint.value = _jobs.default_iterations(True) if tuning else self.NEW_JOINT

    def _fit_sigma_box(self, *_):
        """Noise levels down to 1e-4 of the clean layer's contrast range can be set (data in
        [0, 1]: four decimals); the range is the layer's, no data is read."""
        layer = self.layer(self.clean)
        if layer is not None:
            lo, hi = layer.contrast_limits
            _refine_step(self.sigma, float(hi) - float(lo), 4)

    def _layer_combos(self):
        return [self.clean, self.noisy]

    PLAIN = "plain initialisation"
    NEW_JOINT = 30  # a new model's joint iterations (the widget trains small models quickly)

    def _start_choices(self, widget=None):
        # fine-tuning: joint training from an existing model (its size and stages are kept)
        return [self.PLAIN, *_jobs.model_choices("denoise")[1:]]

    def refresh_models(self):
        self.start_from.reset_choices()

    def run(self, *_):
        first, second, loss = self.DATA[self.data_kind.value]
        if first is None:  # a folder of noisy images
            return self._run_folder(loss)
        clean = self.layer(self.clean)
        if not self._guard(clean):
            return None
        if clean.rgb:
            self._notify("training needs a gray layer (RGB models are not trained here); "
                         "split the channels or convert the layer to gray", error=True)
            return None
        noisy = None if second is None else self.layer(self.noisy)
        if second is not None and noisy is None:
            self._notify(f"choose the {second} layer, or another kind of training data",
                         error=True)
            return None
        if noisy is not None and noisy is clean:
            self._notify(f"the {first} and the {second} are the same layer", error=True)
            return None
        photons = None
        if self.data_kind.value == self.PHOTONS:
            auto = self.auto_photons.value
            photons = dict(gain=None if auto else self.gain.value, offset=self.offset.value,
                           read_noise=None if auto else self.read_noise.value)
        kw = self._train_options(loss, photons)
        if kw is None:
            return None
        clean_data, noisy_data = clean.data, None if noisy is None else noisy.data

        def job(progress, cancel):  # the layers are read here, off the GUI thread
            noisy_array = None if noisy_data is None else np.asarray(noisy_data)
            return _jobs.train(np.asarray(clean_data), noisy=noisy_array, progress=progress,
                               cancel=cancel, **kw)

        return self._start_training(job, kw)

    def _run_folder(self, loss):
        folder = self.folder.value
        if not folder or not folder.is_dir() or str(folder) in ("", "."):
            self._notify("choose the folder of noisy images", error=True)
            return None
        kw = self._train_options(loss, None)
        if kw is None:
            return None

        def job(progress, cancel):  # the folder is read here, off the GUI thread
            planes = _jobs.read_folder(folder)
            return _jobs.train(planes, progress=progress, cancel=cancel, **kw)

        return self._start_training(job, kw)

    def _train_options(self, loss, photons):
        """The training options the fields give, or None (refused, said in the status line)."""
        kw = dict(sigma=self.sigma.value, loss=loss, photons=photons,
                  kernel_size=int(self.kernel_size.value), n_stages=self.n_stages.value,
                  greedy_iterations=self.greedy.value, joint_iterations=self.joint.value,
                  name=self.model_name.value.strip() or "my-trd-model",
                  start_from=None if self.start_from.value == self.PLAIN else self.start_from.value)
        try:
            _jobs.check_model_name(kw["name"])
        except ValueError as exc:
            self._notify(str(exc), error=True)
            return None
        return kw

    def _start_training(self, job, kw):
        def done(path):
            for widget in list(_LIVE):
                try:
                    widget.refresh_models()
                except RuntimeError:  # its Qt widget was closed and deleted
                    _LIVE.discard(widget)
            self._notify(f"saved {path}; it is in the Denoise widget's model menu", error=False)

        greedy = 0 if kw["start_from"] else kw["n_stages"] * kw["greedy_iterations"]
        total = greedy + kw["joint_iterations"]
        self.loss_plot.clear(total)
        kw["on_step"] = self.loss_plot.add_step  # (the job reads kw when it runs)
        return self.start(job, done, total=max(total, 1), desc=f"training {kw['name']}")

"""A script that opens a viewer, docks the widgets, opens the samples and simply ends (no
viewer.close()) must exit cleanly: the noise estimates started for the new layers are still
running when the interpreter exits, and used to signal through deleted Qt objects (SIGABRT)."""

import os
import subprocess
import sys
import threading

import pytest

pytestmark = [pytest.mark.napari, pytest.mark.slow]

SCRIPT = """
import napari
viewer = napari.Viewer(show=False)
for w in ("Denoise (TRD)", "JPEG deblock (TRD)", "Train TRD"):
    viewer.window.add_plugin_dock_widget("skimage-trd", w)
for key in ("noisy_camera", "noisy_cells", "jpeg_camera"):
    viewer.open_sample("skimage-trd", key)
"""


def test_script_that_leaves_the_viewer_open_exits_cleanly(tmp_path):
    pytest.importorskip("napari")
    if not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        pytest.skip("needs a display (Xvfb: apt-get install xvfb)")
    script = tmp_path / "leave_open.py"
    script.write_text(SCRIPT)
    env = dict(os.environ, NUMBA_NUM_THREADS="1")
    env.pop("QT_QPA_PLATFORM", None)  # as a user's script runs: on the display
    codes = []
    for _ in range(10):
        run = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                             timeout=300, env=env)
        codes.append(run.returncode)
        assert run.returncode == 0, (codes, run.stderr[-2000:])
    assert codes == [0] * 10


def test_closing_a_widget_stands_its_workers_down(make_napari_viewer):
    from napari_trd._widgets import DenoiseWidget, shutdown_workers

    viewer = make_napari_viewer()
    widget = DenoiseWidget(viewer)
    cancel = threading.Event()  # a running job's cancel event
    widget._running.add(cancel)
    widget.native.close()
    widget.native.deleteLater()
    from qtpy.QtCore import QCoreApplication, QEvent

    QCoreApplication.sendPostedEvents(None, QEvent.Type.DeferredDelete)
    assert widget._closed.is_set() and cancel.is_set()
    assert shutdown_workers(5000)

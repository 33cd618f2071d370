"""The Train TRD widget after a short run, for the docs (its live loss plot included).

    xvfb-run -a python tools/napari_train_screenshot.py docs/napari_train.png

Trains a small model (3x3, 2 stages, 8 greedy iterations per stage, 6 joint) on a 128x128
crop of skimage's camera with noise added; the model goes to a temporary folder.
"""

import os
import sys
import tempfile
import time


def main(out):
    os.environ["SKIMAGE_TRD_USER_MODELS"] = tempfile.mkdtemp(prefix="trd-models-")
    import napari
    from qtpy.QtWidgets import QApplication
    from skimage import data

    from napari_trd import TrainWidget

    viewer = napari.Viewer(show=False)
    viewer.add_image(data.camera()[:128, :128] / 255.0, name="camera")
    w = TrainWidget(viewer)
    w.data_kind.value = w.ADDED
    w.clean.value = "camera"
    w.sigma.value = 0.1
    w.kernel_size.value, w.n_stages.value, w.greedy.value, w.joint.value = 3, 2, 8, 6
    w.model_name.value = "camera-s25"
    w.native.resize(560, 700)
    w.native.show()
    w.run()
    app = QApplication.instance()
    start = time.time()
    while not w.run_button.enabled and time.time() - start < 300:
        app.processEvents()
        time.sleep(0.05)
    for _ in range(20):  # the plot's last points arrive through queued signals
        app.processEvents()
        time.sleep(0.02)
    w.native.grab().save(out)
    print(f"{out}: {len(w.loss_plot.points)} iterations plotted; {w.loss_plot.caption}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "napari_train.png")

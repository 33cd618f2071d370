import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from skimage_trd import TRDModel, dct_filter_basis

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
AUTHORS = SHARED / "reference-models" / "tnrd-authors"


def random_model(n_stages=2, kernel_size=5, n_filters=None, seed=0, task="denoise",
                 wide_grid=False):
    """A random but well-behaved model: unit-norm zero-mean filters, smooth phi."""
    rng = np.random.default_rng(seed)
    basis = dct_filter_basis(kernel_size)
    m = basis.shape[0]
    n_filters = m if n_filters is None else n_filters
    coef = rng.standard_normal((n_stages, n_filters, m))
    filters = np.tensordot(coef, basis, axes=([-1], [0]))
    filters /= np.sqrt((filters**2).sum(axis=(-2, -1), keepdims=True))
    if wide_grid:
        centers, precision = np.arange(-387.5, 387.6, 12.5), 0.0064
    else:
        centers, precision = np.arange(-310.0, 310.1, 10.0), 0.01
    # phi ~ a * 2z/(1 + z^2) style shapes plus noise, as RBF weights
    target = 2 * centers / (1 + (centers / 20) ** 2) / 20
    weights = target[None, None, :] * rng.uniform(0.2, 1.0, (n_stages, n_filters, 1))
    weights = weights + 0.05 * rng.standard_normal(weights.shape)
    lambdas = rng.uniform(0.01, 0.2, n_stages) if task == "denoise" else None
    return TRDModel(filters=filters, weights=weights, centers=centers, precision=precision,
                    lambdas=lambdas, task=task, sigma=25.0 if task == "denoise" else None,
                    quality=10 if task == "deblock" else None, name=f"random-{seed}")


@pytest.fixture
def model():
    return random_model(n_stages=2, kernel_size=5, seed=1)


def require_shared(path=SHARED):
    if not Path(path).exists():
        pytest.skip(f"{path} not available (benchmark data live in ../shared)")
    return Path(path)


# ---------------------------------------------------------------- a display for the viewer tests
# Tests that open a napari viewer need a display with OpenGL. pytest-xvfb (test extra) starts a
# virtual one when Xvfb is installed, before any test runs. Without one, Qt aborts the whole
# process when the first QApplication is made, so whether a usable display exists is decided
# here, in a subprocess, before any viewer test sets up its fixtures; without one they skip.
VIEWER_PACKAGES = ("xvfb xauth libgl1-mesa-dri libglx-mesa0 libegl1 libxkbcommon-x11-0 and the "
                   "libxcb-* and other libraries listed in .ci/run")
_QT_FIXTURES = {"qapp", "qtbot", "make_napari_viewer", "make_napari_viewer_proxy"}
_PROBE = """
import sys
from qtpy.QtGui import QOffscreenSurface, QOpenGLContext
from qtpy.QtWidgets import QApplication
app = QApplication(["skimage-trd-display-probe"])
surface = QOffscreenSurface()
surface.create()
context = QOpenGLContext()
sys.exit(0 if context.create() and context.makeCurrent(surface) else 3)
"""
_display = {}


def display_problem():
    """None when Qt can open a window with OpenGL here, else why not (checked once)."""
    if "problem" not in _display:
        if (sys.platform.startswith("linux") and not os.environ.get("QT_QPA_PLATFORM")
                and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))):
            _display["problem"] = "no display (DISPLAY unset) and no Xvfb to start one"
        else:
            try:
                probe = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True,
                                       text=True, timeout=60)
                lines = probe.stderr.strip().splitlines() or [f"exit status {probe.returncode}"]
                _display["problem"] = None if probe.returncode == 0 else (
                    f"Qt cannot open an OpenGL window here ({lines[0][:200]})")
            except subprocess.TimeoutExpired:
                _display["problem"] = "Qt did not start within 60 s"
    return _display["problem"]


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    if item.get_closest_marker("napari") or _QT_FIXTURES & set(item.fixturenames):
        problem = display_problem()
        if problem:
            why = (f"needs a display with OpenGL: {problem}; install {VIEWER_PACKAGES} "
                   "(Debian/Ubuntu package names) and pytest-xvfb starts a virtual one")
            if os.environ.get("TRD_REQUIRE_DISPLAY"):  # CI (.ci/run): the viewer tests must run
                pytest.fail(why, pytrace=False)
            pytest.skip(why)

"""The documented examples run (small sizes)."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_zarr_example_equals_in_memory(tmp_path):
    zarr = pytest.importorskip("zarr")
    pytest.importorskip("dask.array")
    from skimage_trd import denoise_trd

    subprocess.run([sys.executable, str(ROOT / "examples" / "denoise_zarr.py"), "--demo",
                    str(tmp_path), "--shape", "2,300,260", "--chunk", "128"], check=True, capture_output=True)
    noisy = np.asarray(zarr.open(str(tmp_path / "noisy.zarr"), mode="r"))
    denoised = np.asarray(zarr.open(str(tmp_path / "denoised.zarr"), mode="r"))
    assert denoised.shape == noisy.shape == (2, 300, 260)
    np.testing.assert_allclose(denoised, denoise_trd(noisy), rtol=1e-5, atol=1e-5)

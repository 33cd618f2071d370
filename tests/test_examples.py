"""The documented examples run (small sizes)."""

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow  # subprocesses
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


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["tiles", "compressed strips"])
def test_ome_tiff_example_uint16(tmp_path, layout):
    """A 12-bit uint16 OME-TIFF stack, read lazily and rechunked, gives the in-memory result."""
    tifffile = pytest.importorskip("tifffile")
    zarr = pytest.importorskip("zarr")
    pytest.importorskip("dask.array")
    from skimage import data

    from skimage_trd import denoise_trd

    rng = np.random.default_rng(0)
    clean = data.camera()[:300, :260] / 255.0 * 3000 + 500
    stack = np.stack([clean, clean[::-1]]) + 150 * rng.standard_normal((2, 300, 260))
    stack = np.clip(np.rint(stack), 0, 4095).astype(np.uint16)
    path = tmp_path / "stack.ome.tif"
    layout_kw = (dict(tile=(128, 128)) if layout == "tiles"
                 else dict(rowsperstrip=16, compression="zlib"))
    tifffile.imwrite(path, stack, ome=True, metadata={"axes": "ZYX"}, photometric="minisblack",
                     **layout_kw)
    out_path = tmp_path / "denoised.zarr"
    subprocess.run([sys.executable, str(ROOT / "examples" / "denoise_zarr.py"), str(path),
                    str(out_path), "--keep-dtype", "--chunk", "128"], check=True, capture_output=True)
    out = zarr.open(str(out_path), mode="r")
    assert out.chunks == (1, 128, 128)  # rechunked: TIFF strips are 16 rows high
    denoised = np.asarray(out)
    assert denoised.dtype == np.uint16 and denoised.shape == stack.shape
    # sigma is estimated per plane from the dask sample (the whole plane here): same as in memory
    expected = denoise_trd(stack, preserve_range=True, preserve_dtype=True)
    assert np.abs(denoised.astype(int) - expected).max() <= 1
    noisy_err = np.abs(stack[0].astype(float) - clean).mean()
    assert np.abs(denoised[0].astype(float) - clean).mean() < 0.5 * noisy_err


@pytest.mark.parametrize("extra, name", [
    (["--out", "pic.png"], "pic.png"),
    (["--jpeg", "10", "--crop", "40,170,100,120", "--zoom", "2"], "trd_deblock.png"),
    (["--photons", "20", "--crop", "40,170,100,120", "--zoom", "2"], "trd_photons.png")])
def test_demo_writes_its_picture(tmp_path, monkeypatch, capsys, extra, name):
    from PIL import Image

    from skimage_trd.demo import main

    monkeypatch.chdir(tmp_path)  # each mode has its own default picture name
    main(extra)
    out = tmp_path / name
    line = capsys.readouterr().out
    before, after = (float(v) for v in re.findall(r"([\d.]+) dB", line))
    assert after > before + 0.5  # restored, by the shipped models
    assert re.search(r"first call [\d.]+ s \(.*\), then [\d.]+ s; wrote " + name, line)
    width, height = Image.open(out).size
    assert (width, height) == ((3 * 240 + 16, 200 + 28) if "--crop" in extra else (3 * 512 + 16, 512 + 28))
    with pytest.raises(SystemExit, match="--crop"):
        main([*extra, "--crop", "1,2,3", "--out", str(out)])


@pytest.mark.slow
def test_ome_tiff_example_volume(tmp_path):
    """An OME-TIFF z-stack denoised as a volume by the example, lazily in slabs of planes and
    tiles (chunks in z too), equals the in-memory volume call."""
    tifffile = pytest.importorskip("tifffile")
    zarr = pytest.importorskip("zarr")
    from skimage_trd import denoise_trd, fluorescence_volume

    clean = fluorescence_volume((24, 64, 64), seed=3)
    noisy = clean + 0.1 * np.random.default_rng(0).standard_normal(clean.shape)
    stack = np.clip(noisy * 4095, 0, 4095).astype(np.uint16)
    path, out_path = tmp_path / "stack.ome.tif", tmp_path / "out.zarr"
    tifffile.imwrite(path, stack, ome=True, metadata={"axes": "ZYX"})
    subprocess.run([sys.executable, str(ROOT / "examples" / "denoise_zarr.py"), str(path),
                    str(out_path), "--keep-dtype", "--chunk", "32", "--axes", "file",
                    "--planes", "12", "--sigma", "409.5"], check=True, capture_output=True)
    out = zarr.open(str(out_path), mode="r")
    assert out.chunks == (12, 32, 32)  # (two slabs of planes, overlapping by 10 in z)
    expected = denoise_trd(stack, 409.5, axes="ZYX", preserve_range=True, preserve_dtype=True)
    # (float32 sums in another order on several threads: a rounding to uint16 may differ by 1)
    assert np.abs(np.asarray(out).astype(int) - expected).max() <= 1

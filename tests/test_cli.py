"""The ``skimage-trd`` command: batch restoration of a mixed folder, reruns, interruptions,
the models subcommand, and a dask.distributed LocalCluster."""

import hashlib
import http.server
import json
import os
import signal
import subprocess
import sys
import threading
import time
from functools import partial
from pathlib import Path

import numpy as np
import pytest
from conftest import random_model

import skimage_trd._registry as reg
from skimage_trd import deblock_jpeg, deblock_trd, denoise_trd
from skimage_trd.cli import main

tifffile = pytest.importorskip("tifffile")
zarr = pytest.importorskip("zarr", minversion="3")
da = pytest.importorskip("dask.array")
from PIL import Image  # noqa: E402  (after the skips)

KEEP = dict(preserve_range=True, preserve_dtype=True)  # what the command does by default
ROOT = Path(__file__).resolve().parents[1]


def _noisy(rng, shape=(48, 40), scale=1.0, sigma=20.0):
    from skimage import data

    clean = data.camera()[100:100 + shape[0], 200:200 + shape[1]].astype(float)
    return clean * scale + sigma * scale * rng.standard_normal(shape)


def make_folder(folder, shape=(48, 40)):
    """uint8 PNG, RGB PNG, 12-bit uint16 3-page TIFF, OME-TIFF, RGB TIFF, float32 npy, zarr,
    gray and colour JPEGs, a corrupt PNG, and a file the command ignores."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    u8 = partial(lambda x: np.clip(np.rint(x), 0, 255).astype(np.uint8))
    Image.fromarray(u8(_noisy(rng, shape))).save(folder / "gray.png")
    rgb = np.stack([_noisy(rng, shape) for _ in range(3)], axis=-1)
    Image.fromarray(u8(rgb)).save(folder / "rgb.png")
    stack = np.clip(np.rint(np.stack([_noisy(rng, shape, 16) for _ in range(3)])), 0, 4095)
    tifffile.imwrite(folder / "stack.tif", stack.astype(np.uint16), photometric="minisblack")
    tifffile.imwrite(folder / "cells.ome.tif", stack.astype(np.uint16)[:2], ome=True,
                     photometric="minisblack",
                     metadata={"axes": "ZYX", "PhysicalSizeX": 0.325, "PhysicalSizeXUnit": "µm",
                               "PhysicalSizeY": 0.325, "PhysicalSizeYUnit": "µm",
                               "PhysicalSizeZ": 1.5, "Name": "cells"})
    tifffile.imwrite(folder / "colour.tif", u8(rgb[::-1]), photometric="rgb",
                     resolution=(300, 300), resolutionunit="INCH")
    np.save(folder / "plane.npy", (_noisy(rng, shape) / 255).astype(np.float32))
    z = zarr.create_array(store=str(folder / "volume.zarr"), shape=(2,) + shape,
                          dtype=np.float32, chunks=(1, 32, 32), dimension_names=("z", "y", "x"),
                          attributes={"pixel_size_um": 0.5})
    z[:] = np.stack([_noisy(rng, shape), _noisy(rng, shape)]) / 255
    Image.fromarray(u8(_noisy(rng, shape, sigma=0))).save(folder / "photo.jpg", quality=15)
    Image.fromarray(u8(rgb[:, ::-1])).save(folder / "colour.jpg", quality=20)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a PNG" * 4)
    (folder / "notes.txt").write_text("not an image: ignored in a folder")
    return folder


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    return make_folder(tmp_path_factory.mktemp("cli") / "in")


def _events(text):
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _png(path):
    with Image.open(path) as im:
        return np.asarray(im)


def _partials(folder):
    return [p.name for p in Path(folder).iterdir() if ".partial-" in p.name or ".old-" in p.name]


def test_denoise_mixed_folder_equals_in_memory(mixed, tmp_path, capsys):
    out = tmp_path / "out"
    status = main(["denoise", str(mixed), "-o", str(out), "--json"])
    events = _events(capsys.readouterr().out)
    assert status == 1  # the corrupt file failed, the others were restored
    summary = events[-1]
    assert summary["event"] == "summary"
    assert (summary["done"], summary["failed"], summary["skipped"]) == (9, 1, 0)
    assert [Path(f["input"]).name for f in summary["failures"]] == ["broken.png"]
    done = {Path(e["input"]).name: e for e in events if e["event"] == "done"}
    assert all(e["seconds"] >= 0 for e in done.values())
    assert done["photo.jpg"]["output"] == str(out / "photo.png")  # JPEG -> PNG
    assert not (out / "notes.txt").exists() and not (out / "broken.png").exists()
    assert _partials(out) == []

    gray = _png(mixed / "gray.png")
    np.testing.assert_array_equal(_png(out / "gray.png"), denoise_trd(gray, **KEEP))
    rgb = _png(mixed / "rgb.png")
    assert rgb.shape[-1] == 3
    np.testing.assert_array_equal(_png(out / "rgb.png"), denoise_trd(rgb, channel_axis=-1, **KEEP))
    photo = _png(mixed / "photo.jpg")
    np.testing.assert_array_equal(_png(out / "photo.png"), denoise_trd(photo, **KEEP))
    color = _png(mixed / "colour.jpg")
    np.testing.assert_array_equal(_png(out / "colour.png"),
                                  denoise_trd(color, channel_axis=-1, **KEEP))

    stack = tifffile.imread(mixed / "stack.tif")
    result = tifffile.imread(out / "stack.tif")
    assert result.dtype == np.uint16 and result.shape == (3, 48, 40)
    np.testing.assert_array_equal(result, denoise_trd(stack, **KEEP))

    with tifffile.TiffFile(out / "cells.ome.tif") as tif:
        assert tif.is_ome and tif.series[0].axes == "ZYX"
        pixels = tifffile.xml2dict(tif.ome_metadata)["OME"]["Image"]["Pixels"]
        assert pixels["PhysicalSizeX"] == 0.325 and pixels["PhysicalSizeZ"] == 1.5
        assert pixels["PhysicalSizeXUnit"] == "µm" and pixels["Type"] == "uint16"
        np.testing.assert_array_equal(
            tif.asarray(), denoise_trd(tifffile.imread(mixed / "cells.ome.tif"), **KEEP))

    with tifffile.TiffFile(out / "colour.tif") as tif:
        page = tif.pages[0]
        assert page.photometric == 2 and tif.series[0].axes == "YXS"
        assert page.tags["XResolution"].value == (300, 1) and page.resolutionunit == 2
        color = tifffile.imread(mixed / "colour.tif")
        np.testing.assert_array_equal(tif.asarray(), denoise_trd(color, channel_axis=-1, **KEEP))

    plane = np.load(mixed / "plane.npy")
    result = np.load(out / "plane.npy")
    assert result.dtype == np.float32
    np.testing.assert_array_equal(result, denoise_trd(plane, **KEEP))

    z_in = zarr.open_array(str(mixed / "volume.zarr"), mode="r")
    z_out = zarr.open_array(str(out / "volume.zarr"), mode="r")
    assert z_out.dtype == np.float32 and z_out.shape == z_in.shape
    assert dict(z_out.attrs) == {"pixel_size_um": 0.5}
    assert tuple(z_out.metadata.dimension_names) == ("z", "y", "x")
    # the lazy (dask) path, exactly; and the in-memory result to float rounding
    np.testing.assert_array_equal(z_out[:], denoise_trd(da.from_zarr(z_in), **KEEP).compute())
    np.testing.assert_allclose(z_out[:], denoise_trd(z_in[:], **KEEP), atol=1e-5)


def test_rerun_skips_overwrite_redoes(mixed, tmp_path, capsys):
    out = tmp_path / "out"
    files = [str(mixed / n) for n in ("gray.png", "stack.tif", "volume.zarr")]
    assert main(["denoise", *files, "-o", str(out), "-q"]) == 0
    stamps = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    capsys.readouterr()
    assert main(["denoise", *files, "-o", str(out), "--json"]) == 0
    events = _events(capsys.readouterr().out)
    assert [e["event"] for e in events] == ["skipped"] * 3 + ["summary"]
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == stamps
    before = _png(out / "gray.png")
    assert main(["denoise", *files, "-o", str(out), "--json", "--overwrite"]) == 0
    events = _events(capsys.readouterr().out)
    assert events[-1]["done"] == 3 and events[-1]["skipped"] == 0
    np.testing.assert_array_equal(_png(out / "gray.png"), before)
    assert _partials(out) == []


def test_options_sigma_model_float_tile(mixed, tmp_path):
    out = tmp_path / "out"
    gray = _png(mixed / "gray.png")
    stack = tifffile.imread(mixed / "stack.tif")
    assert main(["denoise", str(mixed / "gray.png"), str(mixed / "stack.tif"), "-o", str(out),
                 "--sigma", "300", "--model", "trd-gauss-s25-5x5-5st", "--float", "--tile", "32",
                 "--threads", "1", "-q"]) == 0
    # PNG input with --float: a float32 TIFF, in the data's units
    result = tifffile.imread(out / "gray.tif")
    assert result.dtype == np.float32
    expected = denoise_trd(gray, 300, model="trd-gauss-s25-5x5-5st", preserve_range=True,
                           tile_shape=32)
    np.testing.assert_array_equal(result, expected.astype(np.float32))
    expected = denoise_trd(stack, 300, model="trd-gauss-s25-5x5-5st", preserve_range=True)
    np.testing.assert_array_equal(tifffile.imread(out / "stack.tif"), expected.astype(np.float32))


def test_float_ome_tiff_says_float(mixed, tmp_path):
    out = tmp_path / "out"
    assert main(["denoise", str(mixed / "cells.ome.tif"), "-o", str(out), "--float", "-q"]) == 0
    with tifffile.TiffFile(out / "cells.ome.tif") as tif:
        pixels = tifffile.xml2dict(tif.ome_metadata)["OME"]["Image"]["Pixels"]
        assert pixels["Type"] == "float" and tif.series[0].dtype == np.float32
        assert pixels["PhysicalSizeZ"] == 1.5


def test_deblock_reads_jpeg_tables(mixed, tmp_path, capsys):
    out = tmp_path / "out"
    status = main(["deblock", str(mixed / "photo.jpg"), str(mixed / "colour.jpg"),
                   str(mixed / "gray.png"), "-o", str(out), "--json"])
    events = _events(capsys.readouterr().out)
    assert status == 1  # gray.png: no --quality
    failure = [e for e in events if e["event"] == "failed"]
    assert len(failure) == 1 and "--quality" in failure[0]["error"]
    for name in ("photo", "colour"):
        expected = np.clip(np.rint(deblock_jpeg(mixed / f"{name}.jpg") * 255), 0, 255)
        np.testing.assert_array_equal(_png(out / f"{name}.png"), expected.astype(np.uint8))
    # other formats with --quality: deblock_trd with the standard tables
    assert main(["deblock", str(mixed / "gray.png"), str(mixed / "rgb.png"), "-o", str(out),
                 "--quality", "20", "-q"]) == 0
    gray, rgb = _png(mixed / "gray.png"), _png(mixed / "rgb.png")
    expected = np.clip(np.rint(deblock_trd(gray, 20, preserve_range=True)), 0, 255)
    np.testing.assert_array_equal(_png(out / "gray.png"), expected.astype(np.uint8))
    expected = np.clip(np.rint(deblock_trd(rgb, 20, channel_axis=-1, preserve_range=True)), 0, 255)
    np.testing.assert_array_equal(_png(out / "rgb.png"), expected.astype(np.uint8))


def test_output_equal_to_input_refused(mixed, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a.png").write_bytes((mixed / "gray.png").read_bytes())
    before = (folder / "a.png").read_bytes()
    with pytest.raises(SystemExit) as exc:
        main(["denoise", str(folder), "-o", str(folder), "-q"])
    assert exc.value.code == 2
    with pytest.raises(SystemExit):
        main(["denoise", str(folder / "a.png"), "-o", str(folder / "."), "-q"])
    assert (folder / "a.png").read_bytes() == before
    assert sorted(p.name for p in folder.iterdir()) == ["a.png"]


@pytest.mark.parametrize("args, message", [
    (["denoise", "{folder}", "-o", "{folder}"], "refused: the output"),
    (["denoise", "{folder}", "-o", "{out}", "--model", "nosuch"], "--model: "),
    (["denoise", "{folder}", "-o", "{folder}/a.png"], "not a folder"),
    (["deblock", "{folder}", "-o", "{out}", "--quality", "200"], "--quality must be in 1..100"),
    (["models", "fetch"], "give model names"),
])
def test_argument_errors_print_the_command_usage(mixed, tmp_path, capsys, args, message):
    """A command's argument errors print that command's usage, not the top level's."""
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a.png").write_bytes((mixed / "gray.png").read_bytes())
    argv = [a.format(folder=folder, out=tmp_path / "out") for a in args]
    with pytest.raises(SystemExit) as exc:
        main([*argv, "-q"] if argv[0] != "models" else argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    command = " ".join(argv[:2] if argv[0] == "models" else argv[:1])
    assert err.startswith(f"usage: skimage-trd {command} ")
    assert f"skimage-trd {command}: error: " in err and message in err
    assert "COMMAND ..." not in err


def test_train_and_demo_usage_name_the_command(capsys):
    assert main(["train"]) == 2  # --data is required
    err = capsys.readouterr().err
    assert err.startswith("usage: skimage-trd train ") and "skimage-trd train: error: " in err
    assert main(["demo", "--no-such-option"]) == 2
    assert capsys.readouterr().err.startswith("usage: skimage-trd demo ")


def test_missing_unsupported_and_colliding_inputs(mixed, tmp_path, capsys):
    out = tmp_path / "out"
    other = tmp_path / "other"
    other.mkdir()
    (other / "gray.png").write_bytes((mixed / "gray.png").read_bytes())
    status = main(["denoise", str(tmp_path / "nothing.png"), str(mixed / "notes.txt"),
                   str(tmp_path / "*.nothing"), str(mixed / "gray.png"), str(other / "gray.png"),
                   "-o", str(out), "--json"])
    events = _events(capsys.readouterr().out)
    assert status == 1
    errors = {Path(f["input"]).name: f["error"] for f in events[-1]["failures"]}
    assert "no such file" in errors["nothing.png"]
    assert "unsupported format" in errors["notes.txt"]
    assert "no supported file matches" in errors["*.nothing"]
    assert "also" in errors["gray.png"]  # the second gray.png: same output name
    assert events[-1]["done"] == 1


def test_16_bit_png(tmp_path):
    gray = np.clip(np.rint(_noisy(np.random.default_rng(5), scale=16)), 0, 4095).astype(np.uint16)
    Image.fromarray(gray).save(tmp_path / "g16.png")
    out = tmp_path / "out"
    assert main(["denoise", str(tmp_path / "g16.png"), "-o", str(out), "-q"]) == 0
    result = _png(out / "g16.png")
    assert result.dtype == np.uint16
    np.testing.assert_array_equal(result, denoise_trd(gray, **KEEP))


def test_glob_pattern(mixed, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["denoise", str(mixed / "*.tif"), "-o", str(out), "-q"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["cells.ome.tif", "colour.tif", "stack.tif"]


def test_progress_bars_on_a_terminal(mixed, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    assert main(["denoise", str(mixed / "stack.tif"), str(mixed / "volume.zarr"), "-o",
                 str(tmp_path / "out")]) == 0
    err = capsys.readouterr().err
    assert "file" in err and "step" in err and "%|" in err  # tqdm: overall and per file
    assert "2 done, 0 skipped, 0 failed" in err


def _run(args, **kw):
    return subprocess.run([sys.executable, "-m", "skimage_trd", *args], capture_output=True,
                          text=True, timeout=600, **kw)


@pytest.mark.slow  # a subprocess
def test_python_m_subprocess(mixed, tmp_path):
    out = tmp_path / "out"
    proc = _run(["denoise", str(mixed / "gray.png"), str(mixed / "broken.png"), "-o", str(out),
                 "--json"])
    assert proc.returncode == 1
    events = _events(proc.stdout)
    assert [e["event"] for e in events] == ["started", "done", "started", "failed", "summary"]
    assert "broken.png" in proc.stderr or events[-1]["failures"][0]["input"].endswith("broken.png")
    np.testing.assert_array_equal(_png(out / "gray.png"),
                                  denoise_trd(_png(mixed / "gray.png"), **KEEP))
    proc = _run(["--help"])
    assert proc.returncode == 0 and "denoise" in proc.stdout and "models" in proc.stdout


def _kill_folder(tmp_path):
    folder = tmp_path / "many"
    folder.mkdir()
    rng = np.random.default_rng(1)
    # a.zarr first: written chunk by chunk under its temporary name while it is computed
    z = zarr.create_array(store=str(folder / "a.zarr"), shape=(2, 160, 160), dtype=np.float32,
                          chunks=(1, 80, 80))
    z[:] = np.stack([_noisy(rng, (160, 160)), _noisy(rng, (160, 160))]).astype(np.float32)
    for i in range(8):
        img = np.clip(np.rint(_noisy(rng, (160, 160))), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(folder / f"img{i}.png")
    return folder


def _wait_for(proc, out, hidden=False, timeout=300):
    """Wait until ``out`` holds a result (``hidden``: a temporary file or folder)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if out.is_dir() and any(p.name.startswith(".") == hidden for p in out.iterdir()):
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.002)
    return False


@pytest.mark.slow  # subprocesses
def test_killed_run_leaves_no_half_output_and_rerun_completes(tmp_path):
    folder = _kill_folder(tmp_path)
    reference = tmp_path / "reference"
    assert main(["denoise", str(folder), "-o", str(reference), "--sigma", "20", "-q"]) == 0
    names = sorted(p.name for p in reference.iterdir())
    assert len(names) == 9

    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "skimage_trd", "denoise", str(folder), "-o", str(out),
           "--sigma", "20", "--json"]
    for hidden in (True, False):  # killed while writing the zarr array; after the first output
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            assert _wait_for(proc, out, hidden=hidden)
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
        if hidden:
            assert not (out / "a.zarr").exists()  # half written: only under its temporary name
            assert [p.name for p in out.iterdir()][0].startswith(".a.zarr.partial-")
    finished = [p for p in out.iterdir() if not p.name.startswith(".")]
    assert finished
    for p in finished:  # whatever carries a final name is complete
        if p.suffix == ".png":
            np.testing.assert_array_equal(_png(p), _png(reference / p.name))
    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    summary = _events(rerun.stdout)[-1]
    assert summary["skipped"] == len(finished) and summary["done"] == 9 - len(finished)
    assert sorted(p.name for p in out.iterdir()) == names  # stale temporary files removed
    for name in names:
        if name.endswith(".png"):
            assert (out / name).read_bytes() == (reference / name).read_bytes(), name
    np.testing.assert_array_equal(zarr.open_array(str(out / "a.zarr"))[:],
                                  zarr.open_array(str(reference / "a.zarr"))[:])


@pytest.mark.slow  # a subprocess
def test_sigterm_removes_temporary_files(tmp_path):
    folder = _kill_folder(tmp_path)
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "skimage_trd", "denoise", str(folder), "-o",
                             str(out), "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        assert _wait_for(proc, out, hidden=True)  # while dask threads write the zarr array
        proc.send_signal(signal.SIGTERM)
        stdout, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode in (0, 130)  # 0: it had finished before the signal came
    if proc.returncode == 130:
        assert _events(stdout)[-1]["interrupted"] is True
    time.sleep(0.5)  # nothing may write into the temporary folder after the exit
    assert _partials(out) == []


# ------------------------------------------------------------------------------ models
def test_models_list_show_verify(capsys):
    assert main(["models", "list", "--json"]) == 0
    rows = _events(capsys.readouterr().out)
    names = {r["name"]: r for r in rows}
    assert names["trd-gauss-s25-7x7-5st"]["where"] == "shipped"
    assert names["trd-jpeg-q10-7x7-4st"]["task"] == "deblock"
    assert main(["models", "list", "--task", "deblock"]) == 0
    text = capsys.readouterr().out
    assert "trd-jpeg-q10-7x7-4st" in text and "trd-gauss" not in text
    assert main(["models", "show", "trd-gauss-s25-7x7-5st"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["task"] == "denoise" and info["sigma"] == 25
    assert "command" in info["metadata"]["provenance"]
    assert main(["models", "verify"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(rows) and all("\tok\t" in line for line in lines)
    assert main(["models", "show", "no-such-model"]) == 1


class _Server:
    def __init__(self, folder):
        handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
        handler.log_message = lambda *a: None
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def test_models_fetch_and_verify_a_download(tmp_path, monkeypatch, capsys):
    serve = tmp_path / "serve"
    serve.mkdir()
    model = random_model(seed=3)
    model.name = "trd-gauss-s40-5x5-2st"
    path = model.save(serve / "trd-gauss-s40-5x5-2st.npz")
    monkeypatch.setitem(reg._fetcher().registry, path.name,
                        "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest())
    monkeypatch.setattr(reg, "_loaded", {})
    cache = tmp_path / "cache"
    monkeypatch.setenv(reg.CACHE_ENV, str(cache))
    server = _Server(serve)
    monkeypatch.setenv(reg.URL_ENV, server.url)
    try:
        assert main(["models", "verify", "trd-gauss-s40-5x5-2st"]) == 0
        assert "not downloaded" in capsys.readouterr().out
        assert main(["models", "list"]) == 0
        rows = [line.split()[:3] for line in capsys.readouterr().out.splitlines()]
        assert ["trd-gauss-s40-5x5-2st", "denoise", "remote"] in rows
        assert main(["models", "fetch", "trd-gauss-s40-5x5-2st", "trd-gauss-s25-7x7-5st"]) == 0
        out = capsys.readouterr().out
        assert str(cache / path.name) in out and "weights" in out  # downloaded; shipped
        assert (cache / path.name).read_bytes() == path.read_bytes()
        assert main(["models", "verify", "trd-gauss-s40-5x5-2st"]) == 0
        assert "\tcached\tok\t" in capsys.readouterr().out
        (cache / path.name).write_bytes(b"tampered")
        assert main(["models", "verify"]) == 1
        assert "trd-gauss-s40-5x5-2st\tcached\tMISMATCH" in capsys.readouterr().out
        assert main(["models", "fetch", "not-a-model"]) == 1
    finally:
        server.close()


def test_train_and_demo_subcommands_are_the_old_scripts(capsys):
    assert main(["train", "--help"]) == 0
    assert "--joint-iterations" in capsys.readouterr().out
    assert main(["demo", "--help"]) == 0
    assert "--jpeg" in capsys.readouterr().out
    assert main(["train"]) == 2  # argparse: --data is required
    assert main([]) == 2


# ------------------------------------------------------------------------------ a cluster
@pytest.mark.slow  # starts two worker processes
def test_local_cluster_equals_local(mixed, tmp_path, capsys):
    distributed = pytest.importorskip("distributed")
    local, remote = tmp_path / "local", tmp_path / "cluster"
    names = ["gray.png", "rgb.png", "stack.tif", "cells.ome.tif", "plane.npy", "volume.zarr",
             "photo.jpg", "broken.png"]
    inputs = [str(mixed / n) for n in names]
    assert main(["denoise", *inputs, "-o", str(local), "-q"]) == 1
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster:
        status = main(["denoise", *inputs, "-o", str(remote), "--json", "--scheduler",
                       cluster.scheduler_address])
    events = _events(capsys.readouterr().out)
    assert status == 1 and events[-1]["done"] == 7 and events[-1]["failed"] == 1
    produced = sorted(p.name for p in remote.iterdir())
    assert produced == sorted(p.name for p in local.iterdir())
    for name in produced:
        if name.endswith(".zarr"):
            np.testing.assert_array_equal(zarr.open_array(str(remote / name))[:],
                                          zarr.open_array(str(local / name))[:])
        else:
            assert (remote / name).read_bytes() == (local / name).read_bytes(), name


def test_scheduler_unreachable(mixed, tmp_path, monkeypatch):
    pytest.importorskip("distributed")
    import skimage_trd.cli

    monkeypatch.setattr(skimage_trd.cli, "CONNECT_TIMEOUT", "1s")
    with pytest.raises(SystemExit, match="cannot reach"):
        main(["denoise", str(mixed / "gray.png"), "-o", str(tmp_path / "o"), "-q",
              "--scheduler", "tcp://127.0.0.1:9"])


def test_console_script_declared():
    text = (ROOT / "pyproject.toml").read_text()
    assert 'skimage-trd = "skimage_trd.cli:main"' in text
    assert os.path.isfile(ROOT / "src" / "skimage_trd" / "__main__.py")


def test_select_sure(tmp_path):
    from skimage import data

    rng = np.random.default_rng(0)
    # unclipped (no pixel at 0 or 255), so that SURE itself chooses
    clean = 40 + 0.6 * data.camera()[:128, :128]
    img = np.clip(np.rint(clean + 10 * rng.standard_normal((128, 128))), 0, 255).astype(np.uint8)
    assert img.min() > 0 and img.max() < 255
    _, choices = denoise_trd(img, 10, preserve_range=True, select="sure", return_choices=True)
    assert len(choices[0]["estimated_mse"]) >= 2
    Image.fromarray(img).save(tmp_path / "cam.png")
    out = tmp_path / "out"
    assert main(["denoise", str(tmp_path / "cam.png"), "-o", str(out), "--sigma", "10",
                 "--select", "sure", "--float", "--threads", "1", "-q"]) == 0
    expected = denoise_trd(img, 10, preserve_range=True, select="sure")
    np.testing.assert_array_equal(tifffile.imread(out / "cam.tif"), expected.astype(np.float32))

"""Shipped models and the pooch registry: download from a loopback server, cache, refusal."""

import hashlib
import http.server
import threading
from functools import partial

import numpy as np
import pytest
from conftest import random_model

import skimage_trd._registry as reg
from skimage_trd import ModelFileError, TRDModel, denoise_trd, list_models, load_model


def test_registry_lists_the_shipped_models():
    names = list_models("denoise")
    for expected in ("trd-gauss-s15-7x7-5st", "trd-gauss-s25-7x7-5st", "trd-gauss-s50-7x7-5st",
                     "trd-gauss-s25-5x5-5st", "trd-gauss-s75-7x7-5st", "trd-gauss-s100-7x7-5st",
                     "trd-gauss-s150-7x7-5st"):
        assert expected in names
    for name in names:
        m = load_model(name)  # hash-checked, from the wheel: no network
        assert m.task == "denoise" and m.name == name
        prov = m.metadata["provenance"]
        for key in ("command", "config", "git_commit", "final_loss_per_pixel", "iterations",
                    "noise_seed", "data_sha256_16"):
            assert key in prov


def test_shipped_hashes_match_registry():
    from importlib import resources

    for name, (digest, _) in reg.registry().items():
        path = resources.files("skimage_trd") / "weights" / name
        if path.is_file():
            assert hashlib.sha256(path.read_bytes()).hexdigest() == digest, name


def test_default_denoise_uses_shipped_models():
    rng = np.random.default_rng(0)
    clean = np.tile(np.linspace(0, 1, 48), (48, 1))
    noisy = clean + 0.1 * rng.standard_normal(clean.shape)
    out = denoise_trd(noisy, 0.1)
    assert np.mean((out - clean) ** 2) < 0.2 * np.mean((noisy - clean) ** 2)


class _Server:
    def __init__(self, folder):
        self.requests = []
        outer = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def log_message(self, *args):
                outer.requests.append(self.path)

        handler = partial(Handler, directory=str(folder))
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def served(tmp_path, monkeypatch):
    serve = tmp_path / "serve"
    serve.mkdir()
    model = random_model(seed=7)
    model.name = "trd-gauss-s30-5x5-2st"
    path = model.save(serve / "trd-gauss-s30-5x5-2st.npz")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    # registered in the module's pooch object, as if weights_registry.txt listed it
    monkeypatch.setitem(reg._fetcher().registry, path.name, f"sha256:{digest}")
    # its own URL in the registry is dead: the mirror (SKIMAGE_TRD_WEIGHTS_URL) serves it
    monkeypatch.setitem(reg._registry_urls, path.name, "http://127.0.0.1:9/dead/" + path.name)
    monkeypatch.setattr(reg, "_loaded", {})
    cache = tmp_path / "cache"
    monkeypatch.setenv(reg.CACHE_ENV, str(cache))
    server = _Server(serve)
    monkeypatch.setenv(reg.URL_ENV, server.url)
    yield model, path, cache, server
    server.close()


def test_download_then_cache(served):
    model, path, cache, server = served
    m = load_model("trd-gauss-s30-5x5-2st")
    np.testing.assert_array_equal(m.weights, model.weights)
    assert (cache / path.name).is_file()
    assert len(server.requests) == 1
    reg._loaded.clear()
    load_model("trd-gauss-s30-5x5-2st")
    assert len(server.requests) == 1  # served from the cache, no new request


def test_corrupted_download_refused(served):
    model, path, cache, server = served
    path.write_bytes(path.read_bytes()[:-10] + b"0123456789")  # server now sends a bad file
    with pytest.raises(ModelFileError, match="does not match its registered sha256"):
        load_model("trd-gauss-s30-5x5-2st")
    assert not (cache / path.name).exists()  # nothing corrupted left to be used


def test_corrupted_cache_entry_is_refetched(served):
    model, path, cache, server = served
    load_model("trd-gauss-s30-5x5-2st")
    reg._loaded.clear()
    (cache / path.name).write_bytes(b"garbage")
    m = load_model("trd-gauss-s30-5x5-2st")
    assert len(server.requests) == 2
    assert TRDModel.load(cache / path.name).n_stages == m.n_stages


def test_offline_error_names_file_cache_and_variable(served, monkeypatch):
    model, path, cache, server = served
    server.close()
    monkeypatch.setenv(reg.URL_ENV, "http://127.0.0.1:9/")
    with pytest.raises(ConnectionError, match=r"trd-gauss-s30-5x5-2st.*SKIMAGE_TRD_WEIGHTS_URL"):
        load_model("trd-gauss-s30-5x5-2st")


def test_task_is_read_from_the_file(served, monkeypatch):
    model, path, cache, server = served
    assert reg.registry()[path.name] == (hashlib.sha256(path.read_bytes()).hexdigest(),
                                         "http://127.0.0.1:9/dead/" + path.name)
    # not downloaded: only the registry's naming convention tells ("trd-gauss": denoising)
    assert "trd-gauss-s30-5x5-2st" in list_models("denoise")
    assert len(server.requests) == 0  # listing downloads nothing
    # a deblocking model registered under a denoising name: once the file is here, its
    # metadata wins over the name
    other = random_model(seed=8, task="deblock")
    other.name = "trd-gauss-s30-5x5-2st"
    other.save(path)
    monkeypatch.setitem(reg._fetcher().registry, path.name,
                        "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest())
    assert load_model("trd-gauss-s30-5x5-2st").task == "deblock"
    assert "trd-gauss-s30-5x5-2st" in list_models("deblock")
    assert "trd-gauss-s30-5x5-2st" not in list_models("denoise")
    assert reg.model_task("trd-gauss-s30-5x5-2st") == "deblock"
    with pytest.raises(ValueError, match="unknown task"):
        list_models("inpaint")


def test_shipped_tasks_come_from_their_files():
    for name in list_models():
        path = reg._shipped(name + ".npz")
        assert path is not None  # every registered model ships today
        assert reg.model_task(name) == TRDModel.load(path).task
    assert set(list_models("denoise")) | set(list_models("deblock")) == set(list_models())
    assert not set(list_models("denoise")) & set(list_models("deblock"))


def test_own_models_do_not_import_pooch(tmp_path):
    import subprocess
    import sys

    path = random_model(seed=9).save(tmp_path / "mine.npz")
    code = ("import sys, skimage_trd; skimage_trd.load_model(sys.argv[1]); "
            "print('pooch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True,
                         text=True, check=True).stdout.strip()
    assert out == "False"

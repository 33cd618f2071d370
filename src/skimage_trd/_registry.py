"""Pretrained models: the registry, the copies shipped in the wheel, and the download cache.

``weights_registry.txt`` (package data, pooch's registry format) lists every
model file with its sha256 and optionally a download URL. Files shipped in
``skimage_trd/weights/`` are used directly when their hash matches; the others
are fetched with pooch into a cache directory (``SKIMAGE_TRD_CACHE``
overrides it) from ``SKIMAGE_TRD_WEIGHTS_URL`` (or the URL in the registry).
A file whose hash does not match is never used.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import threading
from collections.abc import Sequence
from functools import lru_cache
from importlib import resources
from pathlib import Path

from ._matlab import import_matlab_model
from ._model import ModelFileError, TRDModel

__all__ = ["list_models", "load_model", "registry", "model_cache_dir", "resolve_models"]

CACHE_ENV = "SKIMAGE_TRD_CACHE"
URL_ENV = "SKIMAGE_TRD_WEIGHTS_URL"
DEFAULT_BASE_URL = "https://github.com/skimage-trd/skimage-trd/releases/download/weights-v1/"

_lock = threading.Lock()
_loaded: dict = {}


def _package_files():
    return resources.files("skimage_trd")


@lru_cache(maxsize=1)
def registry() -> dict:
    """{file name: (sha256, url or None)} read from ``weights_registry.txt``."""
    text = (_package_files() / "weights_registry.txt").read_text(encoding="utf-8")
    entries = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        fields = shlex.split(line)
        if len(fields) not in (2, 3):
            raise OSError(f"weights_registry.txt line {lineno}: expected 'name hash [url]'")
        name, digest = fields[0], fields[1].lower()
        if digest.startswith("sha256:"):
            digest = digest[len("sha256:") :]
        entries[name] = (digest, fields[2] if len(fields) == 3 else None)
    return entries


def model_cache_dir() -> Path:
    """Where downloaded models are kept (``SKIMAGE_TRD_CACHE`` overrides)."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env)
    import pooch

    return Path(pooch.os_cache("skimage-trd"))


def sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _model_name(file_name: str) -> str:
    return file_name[: -len(".npz")] if file_name.endswith(".npz") else file_name


def list_models(task=None) -> list[str]:
    """Names of the registered pretrained models (optionally only for ``task``).

    Parameters
    ----------
    task : {'denoise', 'deblock'}, optional
    """
    names = sorted(_model_name(n) for n in registry())
    if task is None:
        return names
    prefix = {"denoise": "trd-gauss", "deblock": "trd-jpeg"}.get(task)
    if prefix is None:
        raise ValueError(f"unknown task {task!r}; choose 'denoise' or 'deblock'")
    return [n for n in names if n.startswith(prefix)]


def _fetch(file_name: str) -> Path:
    digest, url = registry()[file_name]
    shipped = _package_files() / "weights" / file_name
    if shipped.is_file():
        path = Path(str(shipped))
        if sha256(path) == digest:
            return path
    try:
        import pooch
    except ImportError as exc:  # pragma: no cover - pooch is a dependency
        raise ImportError("downloading models needs pooch: pip install pooch") from exc
    base = os.environ.get(URL_ENV, DEFAULT_BASE_URL)
    if not base.endswith("/"):
        base += "/"
    fetcher = pooch.create(
        path=model_cache_dir(),
        base_url=base,
        registry={file_name: f"sha256:{digest}"},
        urls={} if (url is None or URL_ENV in os.environ) else {file_name: url},
        retry_if_failed=1,
    )
    try:
        return Path(fetcher.fetch(file_name, progressbar=False))
    except ValueError as exc:  # pooch: hash mismatch
        raise ModelFileError(
            f"model {file_name!r} downloaded from {base} does not match its registered sha256 "
            f"and was not used ({exc}). Cache: {model_cache_dir()} (set {CACHE_ENV} to move it)."
        ) from exc
    except Exception as exc:
        raise ConnectionError(
            f"model {file_name!r} is not in the wheel and could not be downloaded from {base} "
            f"into the cache {model_cache_dir()} ({type(exc).__name__}: {exc}). Set {URL_ENV} to a "
            f"mirror, or put the file into the cache (set {CACHE_ENV} to choose it)."
        ) from exc


def load_model(model) -> TRDModel:
    """A :class:`TRDModel` from a registered name, a ``.npz`` path or an authors' ``.mat`` file.

    Parameters
    ----------
    model : str, path-like or TRDModel
        A name from :func:`list_models`, or a file written by
        :meth:`TRDModel.save`, or a MATLAB file of the authors' code.

    Raises
    ------
    ValueError
        For an unknown name (the message lists the known ones).
    ModelFileError
        For a file that is missing, malformed, or fails its hash check.
    """
    if isinstance(model, TRDModel):
        return model
    if not isinstance(model, (str, os.PathLike)):
        raise TypeError(f"model must be a name, a path or a TRDModel, got {type(model).__name__}")
    text = os.fspath(model)
    file_name = text if text.endswith(".npz") else text + ".npz"
    if file_name in registry() and not Path(text).exists():
        with _lock:
            hit = _loaded.get(file_name)
        if hit is None:
            hit = TRDModel.load(_fetch(file_name))
            with _lock:
                _loaded[file_name] = hit
        return hit
    path = Path(text)
    if path.suffix == ".mat":
        return import_matlab_model(path)
    if path.suffix == ".npz" or path.exists():
        return TRDModel.load(path)
    raise ValueError(
        f"unknown model {text!r}: not a registered name and not a file. "
        f"Registered models: {', '.join(list_models()) or '(none)'}."
    )


def resolve_models(model, task) -> list[TRDModel]:
    """The model bank of a public function: the shipped models of ``task`` for ``None``, else
    the model(s) given (names, paths or TRDModel, one or a sequence), checked to be ``task``'s."""
    if model is None:
        names = list_models(task)
        if not names:
            raise ValueError(f"no pretrained {task} models are installed; pass model= a "
                             "TRDModel, a .npz file or an authors' .mat file")
        bank = [load_model(n) for n in names]
    elif isinstance(model, (str, TRDModel)) or hasattr(model, "__fspath__"):
        bank = [load_model(model)]
    elif isinstance(model, Sequence):
        bank = [load_model(m) for m in model]
        if not bank:
            raise ValueError("model is an empty sequence; give at least one model")
    else:
        raise TypeError(f"model must be None, a name, a path, a TRDModel or a sequence of them; "
                        f"got {type(model).__name__}")
    what = {"denoise": "denoise_trd needs a denoising model",
            "deblock": "deblock_trd needs a deblocking model"}[task]
    for m in bank:
        if m.task != task:
            raise ValueError(f"model {m.name!r} is a {m.task} model; {what}")
    return bank

"""Pretrained models: the registry, the copies shipped in the wheel, and the download cache.

``weights_registry.txt`` (package data, pooch's registry format) lists every model file with its
sha256 and optionally a download URL. It is read by one pooch object, as scikit-image's
``skimage.data`` does: ``pooch.create(..., registry=None)`` then ``.load_registry(...)``. The
object is made on first use rather than at import, so that code which never names a registered
model (its own ``TRDModel`` or file) does not import pooch.

Files shipped in ``skimage_trd/weights/`` are used directly when their hash matches; the others
are fetched by pooch (which checks the hash, retries, and never keeps a file that does not
match) into a cache directory (``SKIMAGE_TRD_CACHE`` overrides it) from
``SKIMAGE_TRD_WEIGHTS_URL`` (or the URL in the registry). A file whose hash does not match is
never used.

A model's task (denoise or deblock) is the one its file records (the ``metadata`` entry of the
``.npz``, written by :meth:`TRDModel.save`); only that small entry is read to list models. A
registered file that is neither shipped nor cached yet cannot be read without a download: its
task is taken from the registry's naming convention (``trd-gauss-*`` denoising, ``trd-jpeg-*``
deblocking), and checked against the file once it is loaded (:func:`resolve_models`).
"""

from __future__ import annotations

import json
import os
import re
import threading
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

import numpy as np

from ._matlab import import_matlab_model
from ._model import TASKS, ModelFileError, TRDModel

__all__ = ["list_models", "load_model", "registry", "model_cache_dir", "resolve_models"]

CACHE_ENV = "SKIMAGE_TRD_CACHE"
URL_ENV = "SKIMAGE_TRD_WEIGHTS_URL"
DEFAULT_BASE_URL = "https://github.com/skimage-trd/skimage-trd/releases/download/weights-v1/"
RETRIES = 2  # pooch's retry_if_failed: downloads are tried 1 + RETRIES times
# The registry's naming convention, used only for a file not downloaded yet (see above).
_NAME_PREFIX_TASK = {"trd-gauss": "denoise", "trd-jpeg": "deblock"}

_lock = threading.Lock()  # guards _loaded
_loaded: dict = {}  # file name -> TRDModel, for registered models
_pooch_lock = threading.RLock()  # guards the pooch object: its creation and every fetch
_pooch = None  # the pooch.Pooch of the registry, made by _fetcher()
_registry_urls: dict = {}  # the URLs the registry file gives (used unless a mirror is set)
_task_memo: dict = {}  # (path, size, mtime_ns, sha256) -> recorded task, None: no match


def _package_files():
    return resources.files("skimage_trd")


def model_cache_dir() -> Path:
    """Where downloaded models are kept (``SKIMAGE_TRD_CACHE`` overrides)."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env)
    import pooch

    return Path(pooch.os_cache("skimage-trd"))


def _base_url() -> str:
    return os.environ.get(URL_ENV) or DEFAULT_BASE_URL


def _fetcher():
    """The module's pooch object (made on first use), set to the current environment.

    The cache directory (``SKIMAGE_TRD_CACHE``) and the mirror (``SKIMAGE_TRD_WEIGHTS_URL``)
    are read again on every call, as they were before the object existed, so that setting
    either at run time takes effect. Callers that fetch hold ``_pooch_lock``.
    """
    global _pooch, _registry_urls
    with _pooch_lock:
        if _pooch is None:
            import pooch

            fetcher = pooch.create(
                path=pooch.os_cache("skimage-trd"),
                env=CACHE_ENV,
                base_url=DEFAULT_BASE_URL,
                registry=None,
                retry_if_failed=RETRIES,
            )
            with (_package_files() / "weights_registry.txt").open("r", encoding="utf-8") as fh:
                fetcher.load_registry(fh)
            _registry_urls = dict(fetcher.urls)
            _pooch = fetcher
        _pooch.path = model_cache_dir()
        _pooch.base_url = _base_url().rstrip("/") + "/"
        # a mirror serves every file, those with their own URL in the registry too
        _pooch.urls = {} if os.environ.get(URL_ENV) else dict(_registry_urls)
        return _pooch


def registry() -> dict:
    """{file name: (sha256, url or None)} of the registered models (read by pooch)."""
    fetcher = _fetcher()
    out = {}
    for name, known in fetcher.registry.items():
        alg, _, digest = known.rpartition(":")
        if alg not in ("", "sha256"):
            raise OSError(f"weights_registry.txt: {name} has a {alg} hash; models use sha256")
        out[name] = (digest, _registry_urls.get(name))
    return out


def sha256(path) -> str:
    """The sha256 of a file, as the registry records it (pooch's ``file_hash``)."""
    import pooch

    return pooch.file_hash(str(path), alg="sha256")


def _model_name(file_name: str) -> str:
    return file_name[: -len(".npz")] if file_name.endswith(".npz") else file_name


def _shipped(file_name: str) -> Path | None:
    """The copy of ``file_name`` in the wheel, if there is one (its hash not checked)."""
    shipped = _package_files() / "weights" / file_name
    return Path(str(shipped)) if shipped.is_file() else None


def _recorded_task(path: Path) -> str:
    """The task a model file records, reading only its small ``metadata`` entry."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            meta = json.loads(str(npz["metadata"]))
        task = meta["task"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelFileError(f"{path}: cannot read the model's task from its metadata "
                             f"({type(exc).__name__}: {exc})") from exc
    if task not in TASKS:
        raise ModelFileError(f"{path}: task must be one of {TASKS}, got {task!r}")
    return task


def _verified_task(path: Path, digest: str) -> str | None:
    """The task recorded in ``path`` if its hash is ``digest``, else ``None``; remembered
    while the file's size and modification time stay the same."""
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns, digest)
    if key not in _task_memo:
        _task_memo[key] = _recorded_task(path) if sha256(path) == digest else None
    return _task_memo[key]


def _registered_task(file_name: str, digest: str) -> str | None:
    """The task of a registered file: the one recorded in its copy on this machine (the
    wheel's, else the cache's; hash checked), else, not downloaded yet, the registry's naming
    convention (``None`` for a name that follows none)."""
    for path in (_shipped(file_name), model_cache_dir() / file_name):
        if path is not None and path.is_file():
            task = _verified_task(path, digest)
            if task is not None:
                return task
    for prefix, task in _NAME_PREFIX_TASK.items():
        if file_name.startswith(prefix):
            return task
    return None


def model_task(name: str) -> str | None:
    """The task (``'denoise'`` or ``'deblock'``) of the registered model ``name``."""
    file_name = name if name.endswith(".npz") else name + ".npz"
    table = registry()
    if file_name not in table:
        raise ValueError(f"unknown model {name!r}: not a registered name. "
                         f"Registered models: {', '.join(list_models()) or '(none)'}.")
    return _registered_task(file_name, table[file_name][0])


def model_ndim(name: str) -> int:
    """2 or 3: the filters' dimensions a registered name says (``-3x7x7-``: a volume model)."""
    return 3 if re.search(r"-\d+x\d+x\d+-", name) else 2


def list_models(task=None, ndim=None) -> list[str]:
    """Names of the registered pretrained models (optionally only for ``task``, or only the
    image (``ndim=2``) or volume (``ndim=3``) models).

    Parameters
    ----------
    task : {'denoise', 'deblock'}, optional
        Only the models whose file records this task (read from the file's metadata; for a
        model not downloaded yet, from its registered name).
    ndim : {2, 3}, optional
        Only the models with 2-D filters (images, planes) or 3-D filters (volumes), by their
        registered names (``trd-gauss-s25-3x7x7-5st``: a volume model).
    """
    if task is not None and task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose 'denoise' or 'deblock'")
    if ndim not in (None, 2, 3):
        raise ValueError(f"ndim must be 2, 3 or None, got {ndim!r}")
    table = registry()
    names = sorted(table)
    if task is not None:
        names = [n for n in names if _registered_task(n, table[n][0]) == task]
    if ndim is not None:
        names = [n for n in names if model_ndim(n) == ndim]
    return [_model_name(n) for n in names]


def _fetch(file_name: str) -> Path:
    """The hash-checked local path of a registered file: the wheel's copy, else pooch's (from
    the cache, or downloaded into it)."""
    digest, _ = registry()[file_name]
    shipped = _shipped(file_name)
    if shipped is not None and sha256(shipped) == digest:
        return shipped
    with _pooch_lock:
        fetcher = _fetcher()
        url, cache = fetcher.get_url(file_name), fetcher.abspath
        try:
            return Path(fetcher.fetch(file_name, progressbar=False))
        except ValueError as exc:  # pooch: the download does not match the registered hash
            raise ModelFileError(
                f"model {file_name!r} downloaded from {url} does not match its registered "
                f"sha256 and was not used ({exc}). Cache: {cache} (set {CACHE_ENV} to move it; "
                f"set {URL_ENV} to download from a mirror)."
            ) from exc
        except OSError as exc:  # requests' errors are OSErrors
            raise ConnectionError(
                f"model {file_name!r} is not in the wheel and could not be downloaded from {url} "
                f"into the cache {cache} ({type(exc).__name__}: {exc}). Set {URL_ENV} to a "
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
    path = Path(text)
    file_name = text if text.endswith(".npz") else text + ".npz"
    # an existing file is read as it is; only other names are looked up (and pooch imported)
    if not path.exists() and file_name in registry():
        with _lock:
            hit = _loaded.get(file_name)
        if hit is None:
            hit = TRDModel.load(_fetch(file_name))
            with _lock:
                _loaded[file_name] = hit
        return hit
    if path.suffix == ".mat":
        return import_matlab_model(path)
    if path.suffix == ".npz" or path.exists():
        return TRDModel.load(path)
    raise ValueError(
        f"unknown model {text!r}: not a registered name and not a file. "
        f"Registered models: {', '.join(list_models()) or '(none)'}."
    )


def resolve_models(model, task, ndim=2) -> list[TRDModel]:
    """The model bank of a public function: the shipped models of ``task`` (with ``ndim``-D
    filters) for ``None``, else the model(s) given (names, paths or TRDModel, one or a
    sequence), checked to be ``task``'s."""
    if model is None:
        names = list_models(task, ndim)
        if not names:
            what = "volume " if ndim == 3 else ""
            raise ValueError(f"no pretrained {what}{task} models are installed; pass model= a "
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

"""Batch restoration of files for the ``skimage-trd`` command: reading, restoring, writing.

One :class:`Job` per input file (or zarr array); :func:`run_job` reads it, restores it with
``denoise_trd``/``deblock_trd``/``deblock_jpeg`` and writes the result under a temporary name in
the output folder, renamed to the final name only when complete. Jobs are plain data, so that
they can be sent to dask.distributed workers (which then need the output folder on a shared
file system). Heavy modules (tifffile, zarr, dask) are imported only when a file needs them.

Formats
-------
PNG and JPEG (Pillow), TIFF (tifffile: multi-page stacks, OME-TIFF with its OME-XML, ImageJ
hyperstacks, resolution tags), zarr arrays (lazily, chunk by chunk, with dask), NumPy ``.npy``.
The output has the input's name and format, except JPEG input, written as PNG (a JPEG would add
new compression artifacts), and ``float32=True`` with PNG/JPEG input, written as TIFF.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from ._arrays import to_input_dtype
from ._deblock import UNIT_SCALE_MAX, deblock_jpeg, deblock_trd
from ._denoise import denoise_trd

__all__ = ["Job", "RestoreOptions", "classify", "output_name", "run_job", "partial_name"]

PNG = (".png",)
JPEG = (".jpg", ".jpeg", ".jpe", ".jfif")
TIFF = (".tif", ".tiff", ".btf", ".tf8")
NPY = (".npy",)
SUFFIXES = PNG + JPEG + TIFF + NPY
PARTIAL = ".partial-"


@dataclass
class RestoreOptions:
    """What the command line asked for (shared by all jobs of a run)."""

    task: str = "denoise"  # or 'deblock'
    sigma: tuple | None = None  # data units; None: estimated per plane
    model: object = None  # None (the shipped bank), or a list of names/paths/TRDModel
    channel_axis: object = "auto"  # 'auto' (from the file), None, or an int
    tile_shape: object = None
    num_threads: int | None = None
    backend: str = "auto"
    float32: bool = False
    quality: int | None = None  # deblock of non-JPEG input
    select: str = "range"  # denoise: how the bank's model is chosen per plane ('range', 'sure')
    adapt: bool = False  # denoise: fine-tune the models on each image first (SURE)
    chunk: int = 2048  # zarr: largest chunk edge (rows, columns) processed at once
    zarr_threads: int | None = None  # zarr, locally: dask threads (default: CPU count)
    axes: str | None = None  # denoise: OME letters ('ZYX': volumes), 'file' (a TIFF's), None


@dataclass
class Job:
    source: str
    output: str
    kind: str  # 'png', 'jpeg', 'tiff', 'npy', 'zarr'
    options: RestoreOptions = field(default_factory=RestoreOptions)


def is_zarr_dir(path: Path) -> bool:
    return path.is_dir() and any((path / n).exists() for n in (".zarray", ".zgroup", "zarr.json"))


def classify(path: Path) -> str | None:
    """The format of ``path`` from its name (zarr: from its directory), or None."""
    if path.is_dir():
        return "zarr" if is_zarr_dir(path) or path.suffix.lower() == ".zarr" else None
    suffix = path.suffix.lower()
    for kind, suffixes in (("png", PNG), ("jpeg", JPEG), ("tiff", TIFF), ("npy", NPY)):
        if suffix in suffixes:
            return kind
    return None


def output_name(path: Path, kind: str, options: RestoreOptions) -> str:
    """File name of the result: the input's, but JPEG -> PNG, and PNG/JPEG -> TIFF for floats."""
    if kind in ("png", "jpeg"):
        if options.float32:
            return path.stem + ".tif"
        if kind == "jpeg":
            return path.stem + ".png"
    return path.name


def partial_name(final: Path) -> Path:
    """The temporary name a result is written under (hidden; this host and process)."""
    return final.with_name(f".{final.name}{PARTIAL}{socket.gethostname()}-{os.getpid()}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_partials(folder: Path, own=False):
    """Remove the temporary files and folders that killed runs on this host left in ``folder``
    (those of processes that no longer run; with ``own``, this process's too)."""
    marker = f"{PARTIAL}{socket.gethostname()}-"
    with contextlib.suppress(OSError):
        for p in Path(folder).iterdir():
            if p.name.startswith(".") and marker in p.name:
                pid = p.name.rsplit("-", 1)[-1]
                if not pid.isdigit():
                    continue
                if (own and int(pid) == os.getpid()) or (
                        int(pid) != os.getpid() and not _pid_alive(int(pid))):
                    _remove(p)


def _remove(p: Path):
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            p.unlink()


def _commit(tmp: Path, final: Path):
    """Give the complete result its final name (replacing an older one)."""
    if tmp.is_dir():
        old = None
        if final.exists():
            old = final.with_name(f".{final.name}.old{PARTIAL}{socket.gethostname()}-{os.getpid()}")
            os.replace(final, old)
        os.replace(tmp, final)
        if old is not None:
            _remove(old)
    else:
        os.replace(tmp, final)


@contextlib.contextmanager
def _writing(final: Path):
    """Yield the temporary path to write ``final`` under; rename on success, remove on failure
    (exceptions, KeyboardInterrupt and SystemExit alike)."""
    tmp = partial_name(final)
    _remove(tmp)
    try:
        yield tmp
        _commit(tmp, final)
    except BaseException:
        _remove(tmp)
        if final.suffix.lower() == ".zarr" or tmp.is_dir():
            # zarr writes from its own I/O thread: a write interrupted in the main thread may
            # still land after the removal
            time.sleep(0.2)
            _remove(tmp)
        raise


# ------------------------------------------------------------------------------ restoring
def _restore(image, opts: RestoreOptions, channel_axis, color, progress, *, source=None,
             axes=None, spacing=None):
    """The restored array, in the input's dtype (float32 with ``opts.float32``); ``axes``
    (and the voxel ``spacing``): as :func:`denoise_trd` reads them."""
    if opts.task == "deblock":
        return _deblock(image, opts, channel_axis, progress, source)
    sigma = opts.sigma
    if sigma is not None and len(sigma) == 1:
        sigma = sigma[0]
    if axes is not None:
        volume = "Z" in axes.upper()  # (volumes: the range rule, channels one by one)
        out = denoise_trd(image, sigma, model=opts.model, axes=axes, spacing=spacing,
                          preserve_range=True, preserve_dtype=not opts.float32,
                          backend=opts.backend, num_threads=opts.num_threads,
                          tile_shape=opts.tile_shape, progress=progress,
                          select="range" if volume else opts.select,
                          color_transform="opponent" if "C" in axes.upper() and not volume
                          and not opts.adapt else "none", adapt=opts.adapt)
        return out.astype(np.float32, copy=False) if opts.float32 else out
    out = denoise_trd(image, sigma, model=opts.model, channel_axis=channel_axis,
                      preserve_range=True, preserve_dtype=not opts.float32,
                      backend=opts.backend, num_threads=opts.num_threads,
                      tile_shape=opts.tile_shape, progress=progress, select=opts.select,
                      color_transform="opponent" if color and not opts.adapt else "none",
                      adapt=opts.adapt)
    return out.astype(np.float32, copy=False) if opts.float32 else out


def _deblock(image, opts, channel_axis, progress, source):

    if source is not None:  # a JPEG file: its own quantisation tables
        out = deblock_jpeg(source, model=opts.model, backend=opts.backend,
                           num_threads=opts.num_threads, progress=progress) * 255.0
        in_dtype, preserve_range = np.dtype(np.uint8), True
    else:
        if opts.quality is None:
            raise ValueError("deblocking a file that is not a JPEG needs --quality (the JPEG "
                             "quality it was compressed with)")
        in_dtype = np.dtype(image.dtype)
        # integers hold 0..255; floats are on the 0..1 scale unless they exceed it
        preserve_range = in_dtype.kind != "f" or float(image.max()) > UNIT_SCALE_MAX
        out = deblock_trd(image, opts.quality, model=opts.model, channel_axis=channel_axis,
                          preserve_range=preserve_range, backend=opts.backend,
                          num_threads=opts.num_threads, progress=progress)
    if opts.float32:
        return out.astype(np.float32, copy=False)
    return to_input_dtype(out, in_dtype, preserve_range)


def _channel_axis(opts, from_file):
    return from_file if opts.channel_axis == "auto" else opts.channel_axis


# ------------------------------------------------------------------------------ PNG / JPEG
def _read_pillow(path):
    """(array, alpha or None, channel axis, info to keep) of a PNG or JPEG file."""
    from PIL import Image

    with Image.open(path) as im:
        if im.mode in ("RGB", "RGBA") and any(";16" in str(t.args) for t in im.tile):
            raise ValueError("a 16-bit colour PNG: Pillow reads only 8 bits of it; convert it "
                             "to TIFF (or .npy) to keep its precision")
        im.load()
        info = {k: im.info[k] for k in ("dpi", "icc_profile", "exif") if k in im.info}
        mode = im.mode
        if mode == "P":
            im = im.convert("RGBA" if "transparency" in im.info else "RGB")
        elif mode == "1":
            im = im.convert("L")
        elif mode == "PA":
            im = im.convert("RGBA")
        elif mode in ("CMYK", "YCbCr", "LAB", "HSV"):
            im = im.convert("RGB")
        arr = np.asarray(im)
    alpha = None
    if im.mode in ("RGBA", "LA"):
        arr, alpha = arr[..., :-1], arr[..., -1]
        if im.mode == "LA":
            arr = arr[..., 0]
    return np.ascontiguousarray(arr), alpha, (arr.ndim - 1 if arr.ndim == 3 else None), info


def _write_pillow(tmp, out, alpha, info):
    from PIL import Image

    if alpha is not None:
        if out.ndim == 2:
            out = out[..., None]
        out = np.concatenate([out, alpha[..., None].astype(out.dtype)], axis=-1)
        if out.shape[-1] == 2:  # LA
            Image.fromarray(out, mode="LA").save(tmp, format="PNG", **info)
            return
    Image.fromarray(out).save(tmp, format="PNG", **info)


def _run_pillow(job, progress):
    opts = job.options
    arr, alpha, axis_from_file, info = _read_pillow(job.source)
    source = job.source if (job.kind == "jpeg" and opts.task == "deblock") else None
    axis = _channel_axis(opts, axis_from_file)
    color = axis is not None and arr.ndim == 3 and arr.shape[axis] == 3
    axes = None if opts.axes is None or opts.axes.lower() == "file" else opts.axes
    out = _restore(arr, opts, axis, color, progress, source=source, axes=axes)
    final = Path(job.output)
    with _writing(final) as tmp:
        if opts.float32:
            _write_plain_tiff(tmp, out, axis)
        else:
            _write_pillow(tmp, out, alpha, info)


# ------------------------------------------------------------------------------ TIFF
@dataclass
class _TiffInfo:
    axes: str
    photometric: int
    planarconfig: int
    ome: str | None
    imagej: dict | None
    resolution: tuple | None
    resolutionunit: int | None
    compressed: bool


def _read_tiff(path):
    import tifffile

    with tifffile.TiffFile(path) as tif:
        if len(tif.series) != 1:
            raise ValueError(f"{len(tif.series)} image series in one TIFF file; only files "
                             "with one series (stack) are supported: split it first")
        series = tif.series[0]
        page = series.keyframe
        if page.photometric == 3:
            raise ValueError("a palette (indexed colour) TIFF: its values are colour indices, "
                             "not intensities; convert it to RGB or gray first")
        data = series.asarray()
        tags = page.tags
        resolution = None
        if "XResolution" in tags and "YResolution" in tags:
            resolution = (tags["XResolution"].value, tags["YResolution"].value)
        info = _TiffInfo(
            axes=series.axes, photometric=int(page.photometric),
            planarconfig=int(page.planarconfig),
            ome=tif.ome_metadata if tif.is_ome else None,
            imagej=dict(tif.imagej_metadata) if tif.is_imagej else None,
            resolution=resolution,
            resolutionunit=int(page.resolutionunit) if "ResolutionUnit" in tags else None,
            compressed=int(page.compression) in (8, 32946),  # deflate: written without extras
        )
    return data, info


_IMAGEJ_KEYS = ("spacing", "unit", "finterval", "fps", "loop", "mode", "Labels", "Ranges",
                "LUTs", "Info", "Properties", "xorigin", "yorigin", "zorigin", "tunit")

# OME-XML Pixels Type of a NumPy dtype
_OME_TYPES = {"int8": "int8", "int16": "int16", "int32": "int32", "uint8": "uint8",
              "uint16": "uint16", "uint32": "uint32", "float32": "float", "float64": "double"}


def _ome_with_dtype(xml: str, dtype) -> str:
    """The OME-XML with the (one) Pixels element's Type set to ``dtype``."""
    new = _OME_TYPES.get(np.dtype(dtype).name)
    if new is None:
        raise ValueError(f"OME-TIFF cannot hold {dtype}")

    def fix(match):
        element = re.sub(r'\sType="[^"]*"', f' Type="{new}"', match.group(0), count=1)
        return re.sub(r'\sSignificantBits="[^"]*"', "", element)

    return re.sub(r"<(?:\w+:)?Pixels\b[^>]*>", fix, xml, count=1)


def _write_tiff(tmp, out, info: _TiffInfo, in_dtype):
    import tifffile

    kw = {}
    photometric = {0: "miniswhite", 1: "minisblack", 2: "rgb"}.get(info.photometric, "minisblack")
    kw["photometric"] = photometric
    if photometric == "rgb":
        kw["planarconfig"] = "separate" if info.planarconfig == 2 else "contig"
    if info.resolution is not None:
        kw["resolution"] = info.resolution
        if info.resolutionunit is not None:
            kw["resolutionunit"] = info.resolutionunit
    if info.compressed:
        kw["compression"] = "zlib"
    if info.ome is not None:
        xml = info.ome if out.dtype == in_dtype else _ome_with_dtype(info.ome, out.dtype)
        # the original OME-XML, kept whole: the planes are written in the order they were read
        tifffile.imwrite(tmp, out, description=xml.encode("utf-8"), metadata=None,
                         bigtiff=out.nbytes > 2**31, **kw)
    elif info.imagej is not None and out.dtype in (np.uint8, np.uint16, np.float32):
        meta = {k: info.imagej[k] for k in _IMAGEJ_KEYS if k in info.imagej}
        meta["axes"] = info.axes.replace("I", "Z").replace("Q", "Z")
        kw.pop("planarconfig", None)
        tifffile.imwrite(tmp, out, imagej=True, metadata=meta, **kw)
    else:
        tifffile.imwrite(tmp, out, metadata={"axes": info.axes}, bigtiff=out.nbytes > 2**31, **kw)


def _write_plain_tiff(tmp, out, channel_axis):
    import tifffile

    rgb = channel_axis is not None and out.ndim == 3 and out.shape[-1] in (3, 4)
    tifffile.imwrite(tmp, out, photometric="rgb" if rgb else "minisblack")


def _run_tiff(job, progress):
    opts = job.options
    data, info = _read_tiff(job.source)
    axis_from_file = None
    for letter in "SC":
        if letter in info.axes:
            axis_from_file = info.axes.index(letter)
            break
    axis = _channel_axis(opts, axis_from_file)
    color = (info.photometric == 2 or opts.channel_axis != "auto") and axis is not None
    axes, spacing = _tiff_axes(opts.axes, info, data.shape)
    out = _restore(data, opts, axis, color, progress, axes=axes, spacing=spacing)
    with _writing(Path(job.output)) as tmp:
        _write_tiff(tmp, out, info, data.dtype)


# tifffile's axis letters -> ours: S (samples: colour) is a channel; I, Q (sequences, unknown)
# are stacks
_TIFF_LETTERS = {"S": "C", "I": "S", "Q": "S", "R": "S", "A": "S", "P": "S", "H": "S",
                 "E": "S", "L": "S", "V": "S", "O": "S", "M": "S"}


def _tiff_axes(asked, info: _TiffInfo, shape):
    """``(axes, spacing)`` for :func:`_restore`: ``--axes`` as given, or with ``file`` the
    TIFF's own axes (tifffile's letters mapped onto ours), with the voxel size from the OME
    Pixels element (PhysicalSizeZ/Y/X) or the ImageJ spacing and resolution when known."""
    if asked is None:
        return None, None
    if asked.lower() != "file":
        return asked, _tiff_spacing(info) if "Z" in asked.upper() else None
    axes = "".join(_TIFF_LETTERS.get(a, a) for a in info.axes.upper())
    if len(axes) != len(shape):
        raise ValueError(f"the TIFF's axes {info.axes!r} do not match its shape {shape}")
    if axes.count("S") > 1:  # (several unknown sequences: one stack)
        raise ValueError(f"the TIFF's axes {info.axes!r} are ambiguous: give --axes")
    return axes, _tiff_spacing(info) if "Z" in axes else None


_OME_UNITS = {"pm": 1e-6, "Å": 1e-4, "nm": 1e-3, "µm": 1.0, "um": 1.0, "mm": 1e3, "cm": 1e4,
              "m": 1e6}


def _tiff_spacing(info: _TiffInfo):
    """(dz, dy, dx) of an OME-TIFF's Pixels element or an ImageJ hyperstack, else None."""
    if info.ome:
        sizes = {}
        pixels = re.search(r"<(?:\w+:)?Pixels\b[^>]*>", info.ome)
        for key in ("Z", "Y", "X") if pixels else ():
            m = re.search(rf'\sPhysicalSize{key}="([^"]+)"', pixels.group(0))
            unit = re.search(rf'\sPhysicalSize{key}Unit="([^"]+)"', pixels.group(0))
            if m:  # in micrometres (OME's default unit), whatever unit each is given in
                sizes[key] = float(m.group(1)) * _OME_UNITS.get(unit.group(1) if unit else
                                                                 "µm", 1.0)
        if len(sizes) == 3:
            return sizes["Z"], sizes["Y"], sizes["X"]
    if info.imagej and info.imagej.get("spacing") and info.resolution:
        (xn, xd), (yn, yd) = info.resolution
        if xn and yn:
            return float(info.imagej["spacing"]), yd / yn, xd / xn
    return None


# ------------------------------------------------------------------------------ NumPy
def _run_npy(job, progress):
    opts = job.options
    data = np.load(job.source, mmap_mode="r", allow_pickle=False)
    axis = _channel_axis(opts, None)
    if opts.axes is not None and opts.axes.lower() == "file":
        raise ValueError("--axes file reads a TIFF's axes: give the letters for .npy files")
    out = _restore(np.asarray(data), opts, axis, axis is not None, progress, axes=opts.axes)
    with _writing(Path(job.output)) as tmp, open(tmp, "wb") as fh:
        np.save(fh, out, allow_pickle=False)


# ------------------------------------------------------------------------------ zarr
_CHANNEL_NAMES = {"c", "ch", "channel", "channels"}


def open_zarr_array(path):
    """The zarr array at ``path`` (read only); a zarr group (OME-Zarr) is refused with the
    path of an array in it to give instead. Needs zarr>=3."""
    try:
        import zarr
    except ImportError as exc:
        raise ImportError("zarr data need zarr>=3: pip install 'skimage-trd[dask]'") from exc
    try:
        return zarr.open_array(str(path), mode="r")
    except Exception as exc:
        try:
            group = zarr.open(str(path), mode="r").__class__.__name__.endswith("Group")
        except Exception:
            group = False
        if group:
            raise ValueError(f"{path} is a zarr group (OME-Zarr?), not an array: give the "
                             f"path of one array in it, e.g. {path}/0") from exc
        raise


def _open_zarr(path, chunk):
    """(lazy dask array, zarr array) of a zarr array; chunks larger than ``chunk`` along the
    rows and columns (or deeper than one plane when large) are split for processing."""
    try:
        import dask.array as da
    except ImportError as exc:
        raise ImportError("zarr input needs dask and zarr>=3: pip install 'skimage-trd[dask]'") \
            from exc
    z = open_zarr_array(path)
    arr = da.from_zarr(z)
    if arr.ndim >= 2:
        chunks = list(arr.chunksize)
        for ax in (-2, -1):
            chunks[ax] = min(chunks[ax], chunk)
        if np.prod(chunks) * arr.dtype.itemsize > 4 * chunk * chunk * 4:
            chunks[: arr.ndim - 2] = [1] * (arr.ndim - 2)
        if tuple(chunks) != arr.chunksize:
            arr = arr.rechunk(tuple(chunks))
    return arr, z


def _zarr_dims(z):
    dims = getattr(z.metadata, "dimension_names", None)
    if dims is None:
        dims = z.attrs.get("_ARRAY_DIMENSIONS")
    return list(dims) if dims is not None else None


def _zarr_axes(asked, dims, ndim):
    """``--axes`` for a zarr array: the letters given, or with ``file`` its dimension names
    (OME-Zarr's t, c, z, y, x)."""
    if asked is None or asked.lower() != "file":
        return asked
    names = {"t": "T", "time": "T", "z": "Z", "y": "Y", "x": "X"}
    names.update({c: "C" for c in _CHANNEL_NAMES})
    if dims is None or any(d is None or str(d).lower() not in names for d in dims):
        raise ValueError(f"--axes file: the zarr array's dimension names {dims} are not all "
                         "of t, c, z, y, x: give the letters (e.g. --axes ZYX)")
    axes = "".join(names[str(d).lower()] for d in dims)
    if len(axes) != ndim:
        raise ValueError(f"--axes file: dimension names {dims} for {ndim} axes")
    return axes


def _run_zarr(job, progress_factory, client=None):
    if job.options.adapt:
        raise ValueError("--adapt trains on the whole image in memory: not for zarr arrays "
                         "(adapt a model with skimage-trd train --loss sure --init MODEL on a "
                         "part of it, then pass --model)")
    import dask
    import dask.array as da
    import zarr

    opts = job.options
    arr, z = _open_zarr(job.source, opts.chunk)
    dims = _zarr_dims(z)
    axis_from_file = None
    if dims is not None:
        for i, d in enumerate(dims):
            if d is not None and str(d).lower() in _CHANNEL_NAMES:
                axis_from_file = i
    axis = _channel_axis(opts, axis_from_file)
    color = opts.channel_axis != "auto" and axis is not None
    local = dict(scheduler="threads", num_workers=opts.zarr_threads) if client is None else {}
    # one Numba thread per dask task: the parallelism is dask's (--threads tasks at once)
    zopts = _replace(opts, num_threads=1)
    axes = _zarr_axes(opts.axes, dims, arr.ndim)
    with dask.config.set(**local):  # (volumes: chunks in z too, the model's reach in z)
        lazy = _restore(arr, zopts, axis, color, None, axes=axes)
    # regular chunks, each written by one task: no two tasks write the same zarr chunk
    chunks = tuple(c[0] for c in lazy.chunks)
    if any(any(n != c[0] for n in c[:-1]) or c[-1] > c[0] for c in lazy.chunks):
        lazy = lazy.rechunk(chunks)
    fmt = z.metadata.zarr_format
    final = Path(job.output)
    with _writing(final) as tmp:
        extra = {"dimension_names": z.metadata.dimension_names} if fmt == 3 else {}
        target = zarr.create_array(store=str(tmp), shape=lazy.shape, dtype=lazy.dtype,
                                   chunks=chunks, zarr_format=fmt,
                                   attributes=dict(z.attrs), **extra)
        stored = da.store(lazy, target, lock=False, compute=False)
        if client is not None:
            future = client.compute(stored)
            try:
                future.result()
            except BaseException:
                future.cancel()
                raise
        else:
            # our own pool: when interrupted, the tasks running (one chunk each) finish before
            # the temporary folder is removed, so that none writes into it afterwards
            pool = ThreadPoolExecutor(opts.zarr_threads or os.cpu_count() or 1)
            try:
                with _DaskProgress(progress_factory):
                    stored.compute(scheduler="threads", pool=pool)
            finally:
                pool.shutdown(wait=True, cancel_futures=True)


def _replace(opts, **changes):
    return replace(opts, **changes)


class _DaskProgress:
    """A dask local-scheduler callback feeding a progress bar over the graph's tasks."""

    def __init__(self, factory):
        self.factory = factory
        self.cb = None

    def __enter__(self):
        if self.factory is None:
            return self
        from dask.callbacks import Callback

        outer = self

        class _CB(Callback):
            def _start_state(self, dsk, state):
                outer.total = sum(len(state[k]) for k in ("ready", "waiting", "running",
                                                             "finished"))
                outer.done = 0

            def _posttask(self, key, result, dsk, state, worker_id):
                outer.done += 1
                outer.factory(outer.done, max(outer.total, outer.done))

        self.cb = _CB()
        self.cb.__enter__()
        return self

    def __exit__(self, *exc):
        if self.cb is not None:
            self.cb.__exit__(*exc)


# ------------------------------------------------------------------------------ one job
def run_job(job: Job, progress=None, client=None) -> dict:
    """Restore one file; never raises for a bad file (KeyboardInterrupt and SystemExit pass).

    Returns ``{'status': 'done' | 'failed', 'seconds', 'output', 'error', 'warnings'}``.
    ``progress(done, total)`` is called as the work goes on (zarr: over dask tasks).
    """
    t0 = time.perf_counter()
    result = {"input": job.source, "output": job.output}
    try:
        opts = job.options
        if opts.task == "deblock" and job.kind != "jpeg" and opts.quality is None:
            raise ValueError("deblocking a file that is not a JPEG needs --quality (the JPEG "
                             "quality it was compressed with)")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if job.kind in ("png", "jpeg"):
                _run_pillow(job, progress)
            elif job.kind == "tiff":
                _run_tiff(job, progress)
            elif job.kind == "npy":
                _run_npy(job, progress)
            elif job.kind == "zarr":
                _run_zarr(job, progress, client=client)
            else:
                raise ValueError(f"unsupported format {job.kind!r}")
        result.update(status="done", warnings=sorted({str(w.message) for w in caught}))
    except Exception as exc:
        result.update(status="failed", error=f"{type(exc).__name__}: {exc}")
    result["seconds"] = round(time.perf_counter() - t0, 4)
    return result

"""The ``skimage-trd`` command: batch restoration of files, folders and zarr arrays, locally or
on a dask.distributed cluster; training; the demo; the pretrained models.

    skimage-trd denoise INPUT... -o OUTDIR [--sigma S] [--model M] [--channel-axis N|none]
                        [--tile N] [--threads N] [--backend B] [--float] [--overwrite]
                        [--quiet | --json] [--scheduler tcp://HOST:PORT]
    skimage-trd deblock INPUT... -o OUTDIR [--quality Q] ...
    skimage-trd models list | show NAME | fetch NAME... | verify [NAME...]
    skimage-trd train ...           (python -m skimage_trd.train, skimage-trd-train)
    skimage-trd demo ...            (python -m skimage_trd.demo, skimage-trd-demo)

Also ``python -m skimage_trd``. Exit status: 0 when every input was restored (or skipped as
done), 1 when some failed (the others are still processed; a summary lists the failures),
2 for a usage error, 130 when interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import json
import os
import signal
import sys
import time
from importlib import resources
from pathlib import Path

__all__ = ["main"]

CONNECT_TIMEOUT = "30s"  # to reach a --scheduler

_EPILOG = """\
INPUT: files, folders (their image files and zarr arrays, not subfolders) and glob patterns
(quoted: 'data/**/*.tif'). Formats: PNG, JPEG, TIFF (multi-page stacks; OME-TIFF and ImageJ
metadata kept), zarr arrays (lazy, chunk by chunk), NumPy .npy. Every output has its input's
name and format in OUTDIR, except JPEG input, written as PNG (re-encoding a JPEG would add new
artifacts), and PNG/JPEG input with --float, written as float32 TIFF. The dtype is kept
(integers rounded); values stay in the data's own units. Each output is written under a hidden
temporary name and renamed when complete; outputs already present are skipped (--overwrite
redoes them); an unreadable file is reported and the others processed.
"""


def _floats(text):
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or numbers separated by commas, "
                                         f"got {text!r}") from None
    if any(not (v >= 0 and v < float("inf")) for v in values):
        raise argparse.ArgumentTypeError(f"sigma must be finite and non-negative, got {text!r}")
    return values


def _tile(text):
    try:
        parts = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N or ROWS,COLS, got {text!r}") from None
    if len(parts) not in (1, 2) or min(parts) < 1:
        raise argparse.ArgumentTypeError(f"expected N or ROWS,COLS (positive), got {text!r}")
    return parts[0] if len(parts) == 1 else parts


def _axis(text):
    if text == "auto":
        return text
    if text.lower() in ("none", "no", "gray", "grey"):
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an axis number or 'none', got {text!r}") from None


def _positive_int(text):
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return n


def _restore_parser(sub, task):
    if task == "denoise":
        help_ = "remove Gaussian noise (denoise_trd) from files, folders, zarr arrays"
    else:
        help_ = "remove JPEG artifacts (deblock_jpeg / deblock_trd)"
    p = sub.add_parser(task, help=help_, description=help_ + ".", epilog=_EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="files, folders or glob patterns")
    p.add_argument("-o", "--output", required=True, metavar="OUTDIR",
                   help="folder for the results (made if missing; must not hold the inputs)")
    if task == "denoise":
        p.add_argument("--sigma", type=_floats, default=None, metavar="S",
                       help="noise standard deviation in the data's own units (uint8: grey "
                            "levels; 12-bit camera in uint16: camera units), or one per "
                            "channel (S1,S2,S3); default: estimated for every plane")
        p.add_argument("--select", choices=("range", "sure"), default="range",
                       help="how the bank's model is chosen for every plane: 'range' (the "
                            "plane's intensity range; default) or 'sure' (the candidate with the "
                            "lowest estimated error by Stein's unbiased risk estimate: often "
                            "better, four times the work or more)")
        p.add_argument("--adapt", action="store_true",
                       help="first fine-tune the model(s) on each image itself by SURE (no clean "
                            "image; judged by a twin run, never worse than the model by that "
                            "estimate; two to five minutes per image on one core); colour images are "
                            "then denoised channel by channel; not for zarr")
        p.add_argument("--axes", default=None, metavar="AXES|file",
                       help="what the array's axes are (T, S, C, Z, Y, X; e.g. ZYX, TZYX, "
                            "TZCYX): with a Z, every (z, y, x) volume is denoised as one with "
                            "the volume models (3-D filters); 'file': a TIFF's own axes "
                            "(OME-TIFF, ImageJ hyperstack), with its voxel size; default: "
                            "plane by plane")
    else:
        p.add_argument("--quality", type=int, default=None, metavar="Q",
                       help="JPEG quality (1..100) of inputs that are not JPEG files (JPEG files: "
                            "the quantisation tables are read from the file)")
    p.add_argument("--model", action="append", default=None, metavar="NAME|FILE",
                   help="model name (skimage-trd models list) or .npz/.mat file; repeat for a "
                        "bank (the model nearest the noise level is used); default: the shipped "
                        "models")
    p.add_argument("--channel-axis", type=_axis, default="auto", metavar="N|none",
                   help="axis of the channels; default: from the file (RGB PNG/JPEG/TIFF, the "
                        "'S' or 'C' axis of a TIFF, a zarr dimension named 'c'), else none")
    p.add_argument("--tile", type=_tile, default=None, metavar="N|ROWS,COLS",
                   help="process planes in tiles of this size (memory; same result)")
    p.add_argument("--threads", type=_positive_int, default=None, metavar="N",
                   help="CPU threads (default: all; with --scheduler: 1 per task)")
    p.add_argument("--backend", choices=("auto", "numba", "numpy", "cupy"), default="auto")
    p.add_argument("--float", dest="float32", action="store_true",
                   help="write float32 (in the data's units) instead of the input's dtype")
    p.add_argument("--chunk", type=_positive_int, default=2048, metavar="N",
                   help="zarr: largest chunk edge processed at once (default 2048)")
    p.add_argument("--overwrite", action="store_true", help="redo outputs that already exist")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("-q", "--quiet", action="store_true", help="no progress, only errors")
    mode.add_argument("--json", action="store_true",
                      help="one JSON object per line on stdout (started, done, skipped, failed; "
                           "a final summary), no progress bars")
    p.add_argument("--scheduler", metavar="ADDRESS", default=None,
                   help="a dask.distributed scheduler (tcp://host:8786) to run on: one task per "
                        "file, zarr arrays as chunk graphs; the workers must see the files")
    p.set_defaults(task=task, command_parser=p)
    return p


def _parser():
    ap = argparse.ArgumentParser(
        prog="skimage-trd",
        description="Trained reaction diffusion (TRD) image restoration: batch denoising and "
                    "JPEG deblocking of files, folders and zarr arrays; training; models.",
        epilog="skimage-trd COMMAND --help describes a command.")
    from . import __version__

    ap.add_argument("--version", action="version", version=f"skimage-trd {__version__}")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND")
    ap.set_defaults(models_parser=None)
    _restore_parser(sub, "denoise")
    _restore_parser(sub, "deblock")
    sub.add_parser("train", add_help=False,
                   help="train a model on your images (skimage-trd train --help)")
    sub.add_parser("demo", add_help=False,
                   help="denoise/deblock an example image, write a picture (demo --help)")
    m = sub.add_parser("models", help="list, show, fetch and verify the pretrained models",
                       description="The pretrained models: registered in the package with their "
                                   "sha256; shipped in the wheel or downloaded into the cache "
                                   "(SKIMAGE_TRD_CACHE).")
    m.set_defaults(models_parser=m)
    msub = m.add_subparsers(dest="models_command", metavar="ACTION")
    ml = msub.add_parser("list", help="the registered models and where their files are")
    ml.add_argument("--task", choices=("denoise", "deblock"))
    ml.add_argument("--json", action="store_true", help="one JSON object per model")
    ms = msub.add_parser("show", help="a model's parameters and provenance (JSON)")
    ms.add_argument("name", metavar="NAME|FILE")
    mf = msub.add_parser("fetch", help="download models into the cache (hash checked)")
    mf.set_defaults(fetch_parser=mf)
    mf.add_argument("names", nargs="*", metavar="NAME")
    mf.add_argument("--all", action="store_true", help="every registered model")
    mv = msub.add_parser("verify", help="check the sha256 of the shipped and cached files")
    mv.add_argument("names", nargs="*", metavar="NAME")
    return ap


def main(argv=None) -> int:
    """Run the command line ``argv`` (default: ``sys.argv[1:]``); returns the exit status."""
    try:
        return _main(sys.argv[1:] if argv is None else list(argv))
    except BrokenPipeError:  # stdout closed early (| head): quietly, as Unix tools do
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


def _main(argv) -> int:
    if argv and argv[0] in ("train", "demo"):
        return _passthrough(argv[0], argv[1:])
    ap = _parser()
    args = ap.parse_args(argv)
    if args.command is None:
        ap.print_help(sys.stderr)
        return 2
    if args.command == "models":
        if args.models_command is None:
            args.models_parser.print_help(sys.stderr)
            return 2
        return _models(args)
    # errors in a command's arguments print that command's usage (its parser's error())
    return _batch_command(args, args.command_parser)


def _passthrough(name, argv):
    if name == "train":
        from .train.cli import main as run
    else:
        from .demo import main as run
    try:
        status = run(argv, prog=f"skimage-trd {name}")  # its usage lines name this command
    except SystemExit as exc:
        code = exc.code
        if code is None or isinstance(code, int):
            return code or 0
        print(code, file=sys.stderr)
        return 1
    return status if isinstance(status, int) else 0


# ------------------------------------------------------------------------------ models
def _models(args) -> int:
    from . import _registry as reg

    if args.models_command == "list":
        return _models_list(reg, args)
    if args.models_command == "show":
        try:
            model = reg.load_model(args.name)
        except (ValueError, OSError, TypeError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        info = {"name": model.name, "task": model.task, "sigma": model.sigma,
                "quality": model.quality, "n_stages": model.n_stages,
                "n_filters": model.n_filters, "kernel_size": model.kernel_size,
                "halo": model.halo, "metadata": model.metadata}
        print(json.dumps(info, indent=2, default=_jsonable))
        return 0
    if args.models_command == "fetch":
        names = reg.list_models() if args.all else args.names
        if not names:
            args.fetch_parser.error("give model names (skimage-trd models list) or --all")
        status = 0
        for name in names:
            file_name = name if name.endswith(".npz") else name + ".npz"
            if file_name not in reg.registry():
                print(f"error: {name}: not a registered model", file=sys.stderr)
                status = 1
                continue
            try:
                path = reg._fetch(file_name)
            except (ValueError, OSError) as exc:
                print(f"error: {name}: {exc}", file=sys.stderr)
                status = 1
                continue
            print(f"{name}\t{path}")
        return status
    return _models_verify(reg, args)


def _jsonable(value):
    import numpy as np

    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return str(value)


def _where(reg, file_name):
    """('shipped' | 'cached' | 'remote', path or None) of a registered file (no download)."""
    shipped = resources.files("skimage_trd") / "weights" / file_name
    if shipped.is_file():
        return "shipped", Path(str(shipped))
    cached = reg.model_cache_dir() / file_name
    if cached.is_file():
        return "cached", cached
    return "remote", None


def _models_list(reg, args) -> int:
    names = reg.list_models(args.task)
    table = reg.registry()
    rows = []
    for name in names:
        file_name = name + ".npz"
        where, path = _where(reg, file_name)
        rows.append({"name": name, "task": reg.model_task(name) or "unknown", "where": where,
                     "path": None if path is None else str(path),
                     "sha256": table[file_name][0]})
    if args.json:
        for row in rows:
            print(json.dumps(row))
    else:
        width = max((len(r["name"]) for r in rows), default=4)
        print(f"{'name':<{width}}  {'task':<7}  where")
        for r in rows:
            print(f"{r['name']:<{width}}  {r['task']:<7}  {r['where']}"
                  + (f"  {r['path']}" if r["path"] else ""))
    return 0


def _models_verify(reg, args) -> int:
    names = args.names or reg.list_models()
    status = 0
    for name in names:
        file_name = name if name.endswith(".npz") else name + ".npz"
        if file_name not in reg.registry():
            print(f"{name}\tunknown (not a registered model)")
            status = 1
            continue
        digest = reg.registry()[file_name][0]
        kind, shipped = _where(reg, file_name)
        found = False
        for where, path in (("shipped", shipped if kind == "shipped" else None),
                            ("cached", reg.model_cache_dir() / file_name)):
            if path is None or not Path(path).is_file():
                continue
            found = True
            ok = reg.sha256(path) == digest
            print(f"{name}\t{where}\t{'ok' if ok else 'MISMATCH (not used)'}\t{path}")
            if not ok:
                status = 1
        if not found:
            print(f"{name}\tnot downloaded (skimage-trd models fetch {name})")
    return status


# ------------------------------------------------------------------------------ denoise, deblock
class _Reporter:
    """Progress bars (tqdm, on a terminal), log lines, or JSON lines."""

    def __init__(self, mode, n_jobs):
        self.mode = mode  # 'bars', 'lines', 'quiet', 'json'
        self.overall = None
        self.bar = None
        if mode == "bars":
            from tqdm import tqdm

            self._tqdm = tqdm
            self.overall = tqdm(total=n_jobs, unit="file", desc="skimage-trd", position=0,
                                dynamic_ncols=True)

    def emit(self, event, **fields):
        if self.mode == "json":
            print(json.dumps({"event": event, **fields}), flush=True)
            return
        text = None
        if event == "failed":
            text = f"failed: {fields['input']}: {fields['error']}"
        elif self.mode != "quiet":
            if event == "skipped":
                text = f"skipped: {fields['input']} ({fields['reason']})"
            elif event == "done":
                text = f"done: {fields['input']} -> {fields['output']} ({fields['seconds']:.2f} s)"
                for w in fields.get("warnings") or ():
                    text += f"\n  warning: {w}"
        if text is None:
            return
        if self.overall is not None:
            self._tqdm.write(text, file=sys.stderr)
        else:
            print(text, file=sys.stderr, flush=True)

    def file_progress(self, name):
        """A ``progress(done, total)`` callback drawing a bar for one file (or None)."""
        if self.mode != "bars":
            return None
        self.close_file()
        self.bar = self._tqdm(total=1, desc=name[-40:], position=1, leave=False,
                              unit="step", dynamic_ncols=True)

        def progress(done, total, bar=self.bar):
            if bar.total != total:
                bar.total = total
                bar.refresh()
            bar.update(done - bar.n)

        return progress

    def close_file(self):
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def advance(self):
        if self.overall is not None:
            self.overall.update(1)

    def close(self):
        self.close_file()
        if self.overall is not None:
            self.overall.close()


def _expand(inputs):
    """[(path, kind or None, error or None)] for INPUT arguments (folders and globs expanded)."""
    from ._batch import SUFFIXES, classify, is_zarr_dir

    found = []
    for text in inputs:
        path = Path(text)
        if path.exists():
            if path.is_dir() and not is_zarr_dir(path) and path.suffix.lower() != ".zarr":
                for child in sorted(path.iterdir()):
                    if child.name.startswith("."):
                        continue  # hidden, and the temporary files of running jobs
                    kind = classify(child)
                    if kind is not None:
                        found.append((child, kind, None))
                continue
            kind = classify(path)
            found.append((path, kind, None if kind else
                          f"unsupported format (not {', '.join(SUFFIXES)} or zarr)"))
        elif any(c in text for c in "*?["):
            matches = sorted(glob.glob(text, recursive=True))
            hits = [(Path(m), classify(Path(m))) for m in matches]
            hits = [(p, k) for p, k in hits if k is not None and not p.name.startswith(".")]
            if not hits:
                found.append((path, None, "no supported file matches this pattern"))
            found.extend((p, k, None) for p, k in hits)
        else:
            found.append((path, None, "no such file or folder"))
    unique, seen = [], set()
    for path, kind, error in found:
        key = os.path.realpath(path)
        if key not in seen:
            seen.add(key)
            unique.append((path, kind, error))
    return unique


def _batch_command(args, parser) -> int:
    """``denoise`` and ``deblock``; ``parser``: the command's own, whose error() prints its usage."""
    from ._batch import Job, RestoreOptions, output_name

    t_start = time.perf_counter()
    outdir = Path(args.output)
    if outdir.exists() and not outdir.is_dir():
        parser.error(f"-o {outdir}: not a folder")
    options = RestoreOptions(
        task=args.task, sigma=getattr(args, "sigma", None), quality=getattr(args, "quality", None),
        channel_axis=args.channel_axis, tile_shape=args.tile, backend=args.backend,
        num_threads=args.threads if args.threads or not args.scheduler else 1,
        float32=args.float32, chunk=args.chunk, zarr_threads=args.threads,
        select=getattr(args, "select", "range"), adapt=getattr(args, "adapt", False),
        axes=getattr(args, "axes", None))
    if options.axes is not None and options.axes.lower() != "file":
        from ._axes import LETTERS

        if set(options.axes.upper()) - set(LETTERS) or "Y" not in options.axes.upper():
            parser.error(f"--axes {options.axes!r}: letters of T, S, C, Z, Y, X (e.g. ZYX), "
                         "or 'file'")
        if args.channel_axis != "auto":
            parser.error("--axes names the channel axis (C): leave out --channel-axis")
    if options.quality is not None and not 1 <= options.quality <= 100:
        parser.error(f"--quality must be in 1..100, got {options.quality}")
    if args.model:
        from ._registry import resolve_models

        try:  # once, here: a wrong name fails before any work, and workers get the models
            options.model = resolve_models(args.model if len(args.model) > 1 else args.model[0],
                                           args.task)
        except (ValueError, OSError, TypeError) as exc:
            parser.error(f"--model: {exc}")

    entries = _expand(args.inputs)
    inputs = {os.path.realpath(p) for p, _, _ in entries}
    jobs, problems, used = [], [], {}
    for path, kind, error in entries:
        if error is not None:
            problems.append((str(path), error))
            continue
        out = outdir / output_name(path, kind, options)
        real_out = os.path.realpath(out)
        if real_out in inputs:
            parser.error(f"refused: the output {out} would overwrite the input {path}; "
                     f"choose another -o folder")
        if real_out in used:
            problems.append((str(path), f"its output {out} is also {used[real_out]}'s output; "
                                        f"rename one of them"))
            continue
        used[real_out] = str(path)
        jobs.append(Job(str(path), str(out), kind, options))

    mode = ("json" if args.json else "quiet" if args.quiet else
            "bars" if sys.stderr.isatty() else "lines")
    reporter = _Reporter(mode, len(jobs) + len(problems))
    counts = {"done": 0, "skipped": 0, "failed": 0}
    failures = []

    def failed(source, error, seconds=0.0, output=None):
        counts["failed"] += 1
        failures.append((source, error))
        reporter.emit("failed", input=source, output=output, error=error, seconds=seconds)
        reporter.advance()

    for source, error in problems:
        failed(source, error)
    if jobs:
        from ._batch import remove_stale_partials

        outdir.mkdir(parents=True, exist_ok=True)
        remove_stale_partials(outdir)  # what killed runs left (this host)
    todo = []
    for job in jobs:
        if Path(job.output).exists() and not args.overwrite:
            counts["skipped"] += 1
            reporter.emit("skipped", input=job.source, output=job.output,
                          reason="output exists; --overwrite redoes it")
            reporter.advance()
        else:
            todo.append(job)

    def finished(result):
        reporter.close_file()
        if result["status"] == "done":
            counts["done"] += 1
            reporter.emit("done", input=result["input"], output=result["output"],
                          seconds=result["seconds"], warnings=result.get("warnings", []))
            reporter.advance()
        else:
            failed(result["input"], result["error"], result["seconds"], result["output"])

    previous = _terminate_as_interrupt()
    interrupted = False
    try:
        if args.scheduler:
            _run_distributed(todo, args.scheduler, reporter, finished, failed)
        else:
            _run_local(todo, reporter, finished)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        signal.signal(signal.SIGTERM, previous)
        reporter.close()
        if interrupted and outdir.is_dir():
            from ._batch import remove_stale_partials

            remove_stale_partials(outdir, own=True)

    seconds = round(time.perf_counter() - t_start, 3)
    if mode == "json":
        print(json.dumps({"event": "summary", **counts, "interrupted": interrupted,
                          "seconds": seconds,
                          "failures": [{"input": s, "error": e} for s, e in failures]}),
              flush=True)
    elif mode != "quiet" or failures or interrupted:
        line = (f"skimage-trd {args.task}: {counts['done']} done, {counts['skipped']} skipped, "
                f"{counts['failed']} failed in {seconds:.1f} s"
                + (" (interrupted)" if interrupted else ""))
        print(line, file=sys.stderr)
        for source, error in failures:
            print(f"  failed: {source}: {error}", file=sys.stderr)
    if interrupted:
        return 130
    return 1 if failures else 0


def _terminate_as_interrupt():
    """SIGTERM (a batch system's cancel) unwinds like Ctrl-C: temporary files are removed."""

    def handler(signum, frame):
        raise KeyboardInterrupt

    try:
        return signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        return signal.getsignal(signal.SIGTERM)


def _run_local(jobs, reporter, finished):
    from ._batch import run_job

    for job in jobs:
        reporter.emit("started", input=job.source, output=job.output)
        result = run_job(job, progress=reporter.file_progress(Path(job.source).name))
        finished(result)


def _run_distributed(jobs, address, reporter, finished, failed):
    """One task per in-memory file on the cluster; zarr arrays as chunk graphs on it."""
    try:
        from distributed import Client, as_completed
    except ImportError:
        raise SystemExit("--scheduler needs dask.distributed: pip install 'skimage-trd[dask]'") \
            from None
    from ._batch import run_job

    try:
        client = Client(address, timeout=CONNECT_TIMEOUT)
    except OSError as exc:
        raise SystemExit(f"error: cannot reach the scheduler {address}: {exc}") from None
    with client:
        files = [j for j in jobs if j.kind != "zarr"]
        futures = {}
        for job in files:
            reporter.emit("started", input=job.source, output=job.output)
            future = client.submit(run_job, job, pure=False, key=f"skimage-trd-{job.source}-"
                                                                 f"{os.getpid()}-{time.time_ns()}")
            futures[future] = job
        try:
            for job in (j for j in jobs if j.kind == "zarr"):
                reporter.emit("started", input=job.source, output=job.output)
                finished(run_job(job, client=client))
            for future in as_completed(futures):
                try:
                    finished(future.result())
                except Exception as exc:  # the worker died, the task was lost
                    job = futures[future]
                    failed(job.source, f"{type(exc).__name__}: {exc}", output=job.output)
        except KeyboardInterrupt:
            client.cancel(list(futures))
            raise


if __name__ == "__main__":
    raise SystemExit(main())

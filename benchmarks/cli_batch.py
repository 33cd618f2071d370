"""The ``skimage-trd`` command measured (issue 19): its overhead, a huge zarr, a LocalCluster.

    python benchmarks/cli_batch.py overhead [--n 100] [--size 512] [--repeats 3] [--threads 1]
    python benchmarks/cli_batch.py huge-zarr [--size 20000] [--chunk 2048]
    python benchmarks/cli_batch.py cluster [--n 40] [--zarr-size 4096] [--repeats 3]

overhead
    ``--n`` noisy uint8 PNGs of ``--size``^2 (camera, Gaussian noise of 25 grey levels, one seed
    each) restored three ways, each in a fresh process, interleaved, ``--repeats`` times:
    the command (``python -m skimage_trd denoise DIR -o OUT --sigma 25 --threads 1 --json``),
    a Python loop doing the same reading (Pillow), ``denoise_trd`` and writing (Pillow), and
    the ``denoise_trd`` calls alone (timed inside the loop). Medians; the outputs of the
    command and of the loop are compared byte for byte.
huge-zarr
    a noisy float32 ``--size``^2 image written to zarr chunk by chunk (never whole in memory),
    then ``python -m skimage_trd denoise noisy.zarr -o OUT --sigma 0.1 --chunk C -q`` run under a
    small wrapper process whose only child is the command: its ``ru_maxrss`` for children is
    the command's peak resident memory. Wall time and a window of the result against
    in-memory ``denoise_trd`` (with the window's halo) are printed too.
cluster
    ``--n`` PNGs as above and a ``--zarr-size``^2 float32 zarr (1024^2 chunks): the command
    locally (all cores, threads) and with ``--scheduler`` on a ``distributed.LocalCluster`` of
    2 worker processes with 1 thread each (started before the clock runs; its start-up time is
    printed separately). Outputs compared with the local ones.

The data live in a temporary folder (``--folder`` to choose it), removed afterwards.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODEL = "trd-gauss-s25-7x7-5st"

LOOP = """
import glob, json, os, sys, time
import numpy as np
from PIL import Image
from skimage_trd import denoise_trd
src, dst, threads = sys.argv[1], sys.argv[2], int(sys.argv[3])
os.makedirs(dst, exist_ok=True)
spent = 0.0
for f in sorted(glob.glob(os.path.join(src, "*.png"))):
    with Image.open(f) as im:
        img = np.asarray(im)
    t = time.perf_counter()
    out = denoise_trd(img, 25.0, preserve_range=True, preserve_dtype=True, num_threads=threads)
    spent += time.perf_counter() - t
    Image.fromarray(out).save(os.path.join(dst, os.path.basename(f)))
print(json.dumps({"denoise_seconds": spent}))
"""

PEAK = """
import json, resource, subprocess, sys, time
t = time.perf_counter()
rc = subprocess.run(sys.argv[1:]).returncode
seconds = time.perf_counter() - t
print(json.dumps({"rc": rc, "seconds": seconds,
                  "peak_kib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))
"""


def header(args):
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        cpu = platform.processor()
    print(f"# {platform.platform()}; {cpu}; {os.cpu_count()} logical CPUs; "
          f"{datetime.datetime.now():%Y-%m-%d %H:%M}; python {' '.join(sys.argv)}")


def make_pngs(folder, n, size):
    import numpy as np
    from PIL import Image
    from skimage import data

    folder.mkdir(parents=True, exist_ok=True)
    camera = data.camera().astype(np.float64)
    reps = -(-size // camera.shape[0])
    clean = np.tile(camera, (reps, reps))[:size, :size]
    for i in range(n):
        noisy = clean + 25.0 * np.random.default_rng(i).standard_normal(clean.shape)
        Image.fromarray(np.clip(np.rint(noisy), 0, 255).astype(np.uint8)).save(
            folder / f"img{i:03d}.png")


def make_zarr(folder, size, chunk):
    examples = Path(__file__).resolve().parents[1] / "examples"
    code = ("import sys; sys.path.insert(0, sys.argv[4]); from denoise_zarr import make_demo; "
            "make_demo(sys.argv[1], shape=(1, int(sys.argv[2]), int(sys.argv[2])), "
            "chunks=(1, int(sys.argv[3]), int(sys.argv[3])))")
    subprocess.run([sys.executable, "-c", code, str(folder), str(size), str(chunk), str(examples)],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return folder / "noisy.zarr"


def timed(cmd):
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(map(str, cmd))} failed:\n{proc.stderr[-3000:]}")
    return seconds, proc.stdout


def same_files(a, b):
    names = sorted(p.name for p in Path(a).iterdir())
    return names == sorted(p.name for p in Path(b).iterdir()) and all(
        (Path(a) / n).read_bytes() == (Path(b) / n).read_bytes() for n in names)


def overhead(args, folder):
    src = folder / "png"
    make_pngs(src, args.n, args.size)
    command = [sys.executable, "-m", "skimage_trd", "denoise", str(src), "--sigma", "25",
               "--threads", str(args.threads), "--json", "-o"]
    # warm Numba's on-disk cache so that no run compiles
    subprocess.run(command[:4] + [str(src / "img000.png")] + command[5:] + [str(folder / "w")],
                   check=True, capture_output=True)
    cmd_s, loop_s, denoise_s = [], [], []
    for r in range(args.repeats):
        for what in ("command", "loop"):
            out = folder / f"{what}{r}"
            if what == "command":
                s, _ = timed(command + [str(out)])
                cmd_s.append(s)
            else:
                s, text = timed([sys.executable, "-c", LOOP, str(src), str(out), str(args.threads)])
                loop_s.append(s)
                denoise_s.append(json.loads(text.strip().splitlines()[-1])["denoise_seconds"])
        print(f"  repeat {r}: command {cmd_s[-1]:.1f} s, loop {loop_s[-1]:.1f} s, "
              f"denoise_trd alone {denoise_s[-1]:.1f} s", file=sys.stderr)
    equal = same_files(folder / "command0", folder / "loop0")
    c, lo, d = (statistics.median(v) for v in (cmd_s, loop_s, denoise_s))
    header(args)
    print(f"{args.n} PNGs of {args.size}^2 uint8, sigma 25, {args.threads} thread(s), median of "
          f"{args.repeats} (each a fresh process, interleaved); outputs byte-identical: {equal}")
    print("| run | seconds (median) | all runs | per image | vs loop | vs denoise_trd alone |")
    print("|---|---|---|---|---|---|")
    for name, med, runs in (("skimage-trd denoise --json", c, cmd_s),
                            ("Python loop (read, denoise_trd, write)", lo, loop_s),
                            ("denoise_trd calls alone", d, denoise_s)):
        print(f"| {name} | {med:.2f} | {', '.join(f'{v:.1f}' for v in runs)} | "
              f"{med / args.n * 1000:.0f} ms | {100 * (med / lo - 1):+.1f} % | "
              f"{100 * (med / d - 1):+.1f} % |")


def huge(args, folder):
    import numpy as np
    import zarr

    from skimage_trd import denoise_trd, load_model

    t = time.perf_counter()
    noisy_path = make_zarr(folder, args.size, args.chunk)
    written = time.perf_counter() - t
    out = folder / "out"
    cmd = [sys.executable, "-m", "skimage_trd", "denoise", str(noisy_path), "-o", str(out),
           "--sigma", "0.1", "--model", MODEL, "--chunk", str(args.chunk), "-q"]
    res = subprocess.run([sys.executable, "-c", PEAK, *cmd], check=True, capture_output=True,
                         text=True)
    r = json.loads(res.stdout.strip().splitlines()[-1])
    if r["rc"] != 0:
        raise SystemExit(f"the command failed:\n{res.stderr[-3000:]}")
    halo = load_model(MODEL).halo
    noisy = zarr.open_array(str(noisy_path), mode="r")
    result = zarr.open_array(str(out / "noisy.zarr"), mode="r")
    c = (args.size // 2 // args.chunk) * args.chunk
    y0, y1 = c - 256, c + 256
    window = np.asarray(noisy[0, y0 - halo:y1 + halo, y0 - halo:y1 + halo])
    ref = denoise_trd(window, 0.1, model=MODEL)[halo:-halo, halo:-halo]
    err = float(np.abs(np.asarray(result[0, y0:y1, y0:y1]) - ref).max())
    header(args)
    print(f"input written in {written:.0f} s (not counted); command: {' '.join(cmd[1:])}")
    print("| image | chunk | seconds | peak resident memory | image size | max abs difference "
          "to in-memory (512^2 window across a chunk corner) |")
    print("|---|---|---|---|---|---|")
    print(f"| {args.size}^2 float32 zarr | {args.chunk}^2 | {r['seconds']:.0f} | "
          f"{r['peak_kib'] / 2**20:.2f} GiB | {noisy.nbytes / 2**30:.2f} GiB | {err:.1e} |")


def cluster(args, folder):
    from distributed import LocalCluster

    src = folder / "png"
    make_pngs(src, args.n, 512)
    zsrc = make_zarr(folder / "z", args.zarr_size, 1024)
    base = [sys.executable, "-m", "skimage_trd", "denoise", "--sigma", "25", "-q"]
    zbase = [sys.executable, "-m", "skimage_trd", "denoise", "--sigma", "0.1", "--model", MODEL,
             "-q"]
    subprocess.run(base + [str(src / "img000.png"), "-o", str(folder / "w")], check=True,
                   capture_output=True)  # Numba's cache warm
    t = time.perf_counter()
    lc = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)
    started = time.perf_counter() - t
    rows = {}
    try:
        sched = ["--scheduler", lc.scheduler_address]
        for r in range(args.repeats):
            for what, cmd in (("PNG local", base + [str(src)]),
                              ("PNG cluster", base + [str(src)] + sched),
                              ("zarr local", zbase + [str(zsrc)]),
                              ("zarr cluster", zbase + [str(zsrc)] + sched)):
                out = folder / f"{what.replace(' ', '-')}{r}"
                rows.setdefault(what, []).append(timed(cmd + ["-o", str(out)])[0])
            print(f"  repeat {r}: " + ", ".join(f"{k} {v[-1]:.1f} s" for k, v in rows.items()),
                  file=sys.stderr)
    finally:
        lc.close()
    equal = same_files(folder / "PNG-local0", folder / "PNG-cluster0")
    import numpy as np
    import zarr

    zequal = np.array_equal(zarr.open_array(str(folder / "zarr-local0" / "noisy.zarr"))[:],
                            zarr.open_array(str(folder / "zarr-cluster0" / "noisy.zarr"))[:])
    header(args)
    print(f"LocalCluster(n_workers=2, threads_per_worker=1, processes=True) started in "
          f"{started:.1f} s (not counted); local: the command's threads (all cores); median of "
          f"{args.repeats}; PNG outputs byte-identical: {equal}; zarr outputs equal: {zequal}")
    mpx = {"PNG": args.n * 512 * 512 / 1e6, "zarr": args.zarr_size**2 / 1e6}
    print("| input | where | seconds (median) | all runs | Mpixel/s |")
    print("|---|---|---|---|---|")
    for what, runs in rows.items():
        kind, where = what.split()
        size = (f"{args.n} PNGs of 512^2" if kind == "PNG" else
                f"{args.zarr_size}^2 float32 zarr, 1024^2 chunks")
        med = statistics.median(runs)
        print(f"| {size} | {where} | {med:.1f} | {', '.join(f'{v:.1f}' for v in runs)} | "
              f"{mpx[kind] / med:.2f} |")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="what", required=True)
    o = sub.add_parser("overhead")
    o.add_argument("--n", type=int, default=100)
    o.add_argument("--size", type=int, default=512)
    o.add_argument("--repeats", type=int, default=3)
    o.add_argument("--threads", type=int, default=1)
    h = sub.add_parser("huge-zarr")
    h.add_argument("--size", type=int, default=20000)
    h.add_argument("--chunk", type=int, default=2048)
    c = sub.add_parser("cluster")
    c.add_argument("--n", type=int, default=40)
    c.add_argument("--zarr-size", type=int, default=4096)
    c.add_argument("--repeats", type=int, default=3)
    for p in (o, h, c):
        p.add_argument("--folder", help="work folder (default: a temporary one, removed after)")
    args = ap.parse_args(argv)
    folder = Path(args.folder or tempfile.mkdtemp(prefix="trd-cli-"))
    folder.mkdir(parents=True, exist_ok=True)
    try:
        {"overhead": overhead, "huge-zarr": huge, "cluster": cluster}[args.what](args, folder)
    finally:
        if not args.folder:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()

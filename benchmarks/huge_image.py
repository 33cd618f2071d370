"""A 20000 x 20000 image denoised tile by tile within a memory bound (issue 6: under 2 GiB).

    python benchmarks/huge_image.py [--size 20000] [--chunk 2048] [--threads 2] [--folder DIR]

Steps, each in a fresh process so that its peak resident memory is its own:

1. write a noisy float32 image (``skimage.data.camera`` tiled to size, Gaussian noise 0.1 on
   [0, 1], i.e. sigma 25.5 on the 0..255 scale) to zarr, chunk by chunk, never whole in memory;
2. denoise it: ``denoise_trd`` on the lazy ``dask.array.from_zarr`` array (tiles of ``--chunk``
   plus the model's halo, threaded scheduler) written to zarr with ``to_zarr``;
3. check a window of the result against in-memory ``denoise_trd`` of the same window with
   its halo (they must agree to float32 rounding).

Printed: size, time of step 2, its peak resident memory, and the check. The 5-stage 7x7
sigma-25 model is named explicitly so that nothing depends on the model choice.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

MODEL = "trd-gauss-s25-7x7-5st"

WRITE = """
import sys
sys.path.insert(0, sys.argv[4])
from denoise_zarr import make_demo
make_demo(sys.argv[1], shape=(1, int(sys.argv[2]), int(sys.argv[2])), chunks=(1, int(sys.argv[3]),
          int(sys.argv[3])))
"""

DENOISE = """
import json, resource, sys, time
import dask, dask.array as da
from skimage_trd import denoise_trd
from skimage_trd.kernels.numba_cpu import set_threads
folder, threads, model = sys.argv[1], int(sys.argv[2]), sys.argv[3]
set_threads(threads)
noisy = da.from_zarr(folder + "/noisy.zarr")[0]
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()
with dask.config.set(scheduler="threads", num_workers=threads):
    denoise_trd(noisy, 0.1, model=model).to_zarr(folder + "/denoised.zarr", overwrite=True)
seconds = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"seconds": seconds, "peak_kib": peak, "before_kib": base,
                  "image_bytes": noisy.nbytes}))
"""


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=20000)
    ap.add_argument("--chunk", type=int, default=2048)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--folder", help="work folder (default: a temporary one, removed after)")
    args = ap.parse_args(argv)
    folder = Path(args.folder or tempfile.mkdtemp(prefix="trd-huge-"))
    folder.mkdir(parents=True, exist_ok=True)
    examples = Path(__file__).resolve().parents[1] / "examples"
    try:
        subprocess.run([sys.executable, "-c", WRITE, str(folder), str(args.size), str(args.chunk),
                        str(examples)], check=True, stdout=subprocess.DEVNULL)
        res = subprocess.run([sys.executable, "-c", DENOISE, str(folder), str(args.threads), MODEL],
                             check=True, capture_output=True, text=True)
        r = json.loads(res.stdout.strip().splitlines()[-1])

        import numpy as np
        import zarr

        from skimage_trd import denoise_trd, load_model

        halo = load_model(MODEL).halo
        noisy = zarr.open(str(folder / "noisy.zarr"), mode="r")
        out = zarr.open(str(folder / "denoised.zarr"), mode="r")
        # a 512 x 512 window across a chunk corner, with the halo the stage map reaches
        c = (args.size // 2 // args.chunk) * args.chunk
        y0, y1 = c - 256, c + 256
        window = np.asarray(noisy[0, y0 - halo : y1 + halo, y0 - halo : y1 + halo])
        ref = denoise_trd(window, 0.1, model=MODEL)[halo:-halo, halo:-halo]
        err = float(np.abs(np.asarray(out[y0:y1, y0:y1]) - ref).max())
    finally:
        if not args.folder:
            shutil.rmtree(folder, ignore_errors=True)
    gib = r["peak_kib"] / 2**20
    print(f"# {platform.platform()}; threads={args.threads}; {datetime.date.today()}; "
          f"python {' '.join(sys.argv)}")
    print("| image | chunk | seconds | peak resident memory | image size | max abs difference "
          "to in-memory (window across a chunk corner) |")
    print("|---|---|---|---|---|---|")
    print(f"| {args.size}^2 float32 | {args.chunk}^2 | {r['seconds']:.0f} | {gib:.2f} GiB "
          f"| {r['image_bytes'] / 2**30:.2f} GiB | {err:.1e} |")


if __name__ == "__main__":
    main()

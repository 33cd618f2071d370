"""The 2-D block kernel's stage map for several tile shapes beside the C++ yardstick, in one process.

    python benchmarks/stage_tiles.py [--size 2048] [--repeat 4] [--tiles 96x512,64x512,48x512,96x256]

One thread. Five stages' time of the register-blocked float32 kernel (``numba_cpu.block_kernel``,
7x7, the shipped sigma-25 model's first stage, polynomial influence functions) on a padded
uniform-noise image, for each tile shape (rows x columns; the default call uses 96 rows and
``tile_width``'s columns), and the hand-written AVX-512 C++ kernel of ``../shared/perf`` (five
48-filter 7x7 stages) on the same image, interleaved; the range (min-max) of ``--repeat`` rounds.
Without the whole call's parts (model choice, scale maps), so the kernels alone are compared;
run it several times to see how much the machine's state moves both.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import time
from pathlib import Path

for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ[var] = "1"

import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parents[1] / "shared" / "perf"))
from _data import cpu_name  # noqa: E402

from skimage_trd import load_model  # noqa: E402
from skimage_trd.kernels import numba_cpu as nk  # noqa: E402
from skimage_trd.kernels.prepare import prepare  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=2048)
    ap.add_argument("--repeat", type=int, default=4)
    ap.add_argument("--tiles", default="96x512,64x512,48x512,96x256")
    args = ap.parse_args(argv)
    from impl_c import FusedTRD
    from trd_common import make_params

    st = prepare(load_model("trd-gauss-s25-7x7-5st"), np.float32).stages[0]
    H = W = args.size
    r = 3
    f = (np.random.default_rng(0).random((H, W)) * 255).astype(np.float32)
    padded = nk.padded_buffer((H + 4 * r, W + 4 * r + nk.PAD_SLACK))
    nk.pad_symmetric(f, 2 * r, padded)
    out = np.empty_like(f)
    kernel = nk.block_kernel(7, "p")
    cpp = FusedTRD(make_params(T=5, nk=48, ks=7), nthreads=1)
    shapes = [tuple(int(v) for v in t.split("x")) for t in args.tiles.split(",")]

    def five_stages(th, tw):
        args_ = (padded, f, np.float32(st.lam), st.filters, st.flipped, st.poly.coef,
                 st.poly_grid, th, tw, out)
        t0 = time.perf_counter()
        for _ in range(5):
            nk.run_tiles(kernel, args_, nk.n_tiles(H, W, th, tw), 1)
        return time.perf_counter() - t0

    five_stages(*shapes[0])
    cpp(f[:64, :64].copy())
    times = {s: [] for s in shapes}
    times["C++"] = []
    for _ in range(args.repeat):
        for s in shapes:
            times[s].append(five_stages(*s))
        t0 = time.perf_counter()
        cpp(f)
        times["C++"].append(time.perf_counter() - t0)
    print(f"{cpu_name()}, 1 thread, {datetime.date.today().isoformat()}, {H}x{W}, five stages\n"
          "command: python benchmarks/stage_tiles.py " + " ".join(argv or sys.argv[1:]))
    print(f"| kernel | seconds (min-max of {args.repeat}) |\n|---|---|")
    default = (nk.TILE_ROWS, nk.tile_width(W, r))
    for key, ts in times.items():
        name = "C++ yardstick" if key == "C++" else (
            f"blocks, tiles {key[0]}x{key[1]}" + (" (the default)" if key == default else ""))
        print(f"| {name} | {min(ts):.2f}-{max(ts):.2f} |")


if __name__ == "__main__":
    main()

"""BSD68 / Set12 denoising PSNR of our shipped models (docs/protocols.md), next to the authors' models.

    python benchmarks/table1_our_models.py [--threads 2] [--data bsd68|set12|FOLDER] [--authors]
        [--sigmas 15,25,50,75,100,150]

Our models run through the same engine as everything else, on float64 input with
exact influence functions. With --authors, the authors' released models (read from
../shared) are evaluated in the same run for comparison.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import sys
import time
from pathlib import Path

from skimage_trd import import_matlab_model, load_model
from skimage_trd.kernels.numba_cpu import set_threads

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _data import DATA, missing  # noqa: E402
from table1_authors_models import MODELS, evaluate, load_gray_set  # noqa: E402

OURS = [("trd-gauss-s15-7x7-5st", "7x7", 15), ("trd-gauss-s25-7x7-5st", "7x7", 25),
        ("trd-gauss-s50-7x7-5st", "7x7", 50), ("trd-gauss-s25-5x5-5st", "5x5", 25),
        ("trd-gauss-s75-7x7-5st", "7x7", 75), ("trd-gauss-s100-7x7-5st", "7x7", 100),
        ("trd-gauss-s150-7x7-5st", "7x7", 150)]
# floors: issue 3 (15/25/50), issue 22 (75: the authors' from-scratch model, protocols.md)
FLOORS = {("7x7", 15): 31.40, ("7x7", 25): 28.90, ("7x7", 50): 25.93, ("5x5", 25): 28.76,
          ("7x7", 75): 24.43}
PAPER = {("7x7", 15): 31.42, ("7x7", 25): 28.92, ("5x5", 25): 28.78}
BM3D = {15: 31.15, 25: 28.62, 50: 25.69}


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--data", default="bsd68",
                    help="bsd68 or set12 (folders of ../shared/data), or a folder of PNG images")
    ap.add_argument("--authors", action="store_true")
    ap.add_argument("--sigmas", default=None, help="only the models of these noise levels")
    args = ap.parse_args(argv)
    set_threads(args.threads)
    folder = Path(args.data) if Path(args.data).is_dir() else DATA / args.data
    if args.authors and not MODELS.is_dir():
        missing("tnrd-authors", MODELS.parent, option=None)
    images = load_gray_set(folder, folder.name.lower())
    print(f"# {args.data} ({len(images)} images), docs/protocols.md Gaussian denoising; float64, exact phi")
    print(f"# machine: {platform.platform()}, threads={args.threads}; date {datetime.date.today()}")
    print(f"# command: python {' '.join(sys.argv)}")
    head = "| model | sigma | ours (dB) | floor | paper |"
    if args.authors:
        head += " authors' model, same run |"
    print(head + " BM3D (docs/protocols.md) | seconds |")
    print("|---" * (head.count("|") + 1) + "|")
    wanted = None if args.sigmas is None else {float(v) for v in args.sigmas.split(",")}
    for name, kernel, sigma in OURS:
        if wanted is not None and sigma not in wanted:
            continue
        t0 = time.perf_counter()
        ours, _ = evaluate(load_model(name), images, sigma)
        bsd = folder.name.lower() == "bsd68"  # the floors and the paper's figures are BSD68 figures
        floor = f"{FLOORS[(kernel, sigma)]:.2f}" if bsd and (kernel, sigma) in FLOORS else "-"
        paper = PAPER.get((kernel, sigma), "-") if bsd else "-"
        row = f"| {name} | {sigma} | {ours:.3f} | {floor} | {paper} |"
        if args.authors:
            path = MODELS / f"JointTraining_{kernel}_400_180x180_stage=5_sigma={sigma}.mat"
            if path.exists():  # (the authors released no 7x7 model for sigma 100 or 150)
                theirs, _ = evaluate(import_matlab_model(path), images, sigma)
                row += f" {theirs:.3f} |"
            else:
                row += " - |"
        bm3d = BM3D.get(sigma) if bsd else None
        print(row + f" {bm3d or '-'} | {time.perf_counter() - t0:.0f} |")
        sys.stdout.flush()


if __name__ == "__main__":
    main()

"""BSD68 PSNR for sigma = 5, 10, ..., 75: the shipped model bank against BM3D at every sigma.

    python benchmarks/sigma_sweep.py [--sigmas 5,10,...,75] [--results FILE] [--threads 2]
        [--data FOLDER] [--model NAME_OR_PATH,...]

BSD68 is read from ../shared/data/bsd68 or --data (docs/protocols.md says where to get it);
BM3D needs the ``benchmarks`` extra (``pip install ".[benchmarks]"``) or ``--no-bm3d``.

Protocol (docs/protocols.md, Gaussian denoising): for each sigma a fresh ``default_rng(0)``, images in
sorted name order, ``noisy = clean + sigma * N(0, 1)`` (not clipped), PSNR of the output clipped to
[0, 255], mean over the 68 images. TRD: ``denoise_trd(noisy, sigma)`` with its defaults and the
shipped bank (7x7 sigma 15/25/50/75/100/150 and 5x5 sigma 25): per image, the model whose
training images' level is nearest (in ratio) to ``255 * sigma / r``, r the image's robust
intensity range (``_planes.training_sigma``), with the image rescaled so that its noise matches
the model's (no model is trained at 5, 10, 20, 30, 35, 40, 45 or 55..70). BM3D:
``bm3d.bm3d(noisy / 255, sigma_psd=sigma / 255)`` (package ``bm3d``, its default profile).

BM3D takes about 5 s per image, so the sweep takes over an hour on one core. Per-image results
are appended to ``--results`` (JSON lines) as they are measured and reused on a rerun, so the
sweep can be interrupted, resumed, or split over processes by sigma. The table printed at the end
holds the sigmas for which all 68 images are measured; the authors' dedicated models' figures
(docs/protocols.md, where known) are printed beside for reference.

``--model`` runs TRD with another bank (``denoise_trd(noisy, sigma, model=[...])``: names of
shipped or registry models, or .npz paths), to try a model before it joins the shipped bank;
its results are kept apart in ``--results`` under that bank's label. ``--earlier FILE`` adds
the shipped bank's TRD column of an earlier run of this protocol (another results file: a
previous bank or range rule) and borrows its BM3D figures, which do not depend on TRD, so that
a new bank is compared on the same noise without rerunning BM3D.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
from pathlib import Path

for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(var, "1")

import numpy as np  # noqa: E402

from skimage_trd._metrics import psnr  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _data import DATA, load_jsonl, require_images  # noqa: E402

# Authors' 7x7 5-stage models, one per sigma, on this protocol (docs/protocols.md)
AUTHORS = {5: 37.74, 10: 33.62, 15: 31.43, 25: 28.92, 35: 27.42, 50: 25.96, 75: 24.43}


def load_results(path):
    return load_jsonl(path, lambda r: (r.get("bank", SHIPPED), r["sigma"], r["image"]))


SHIPPED = "shipped"


def measure(sigmas, files, results_path, use_bm3d, bank=SHIPPED):
    from skimage.io import imread

    from skimage_trd import denoise_trd

    if use_bm3d:
        try:
            import bm3d
        except ImportError:
            sys.exit("BM3D needs the package bm3d: pip install \".[benchmarks]\" (or pass --no-bm3d)")
    done = load_results(results_path)
    model = None if bank == SHIPPED else bank.split(",")
    with results_path.open("a") as log:
        for sigma in sigmas:
            rng = np.random.default_rng(0)
            for path in files:
                clean = imread(path).astype(np.float64)
                noisy = clean + sigma * rng.standard_normal(clean.shape)  # drawn even when cached
                key = (bank, sigma, path.name)
                if key in done and (done[key].get("bm3d") is not None or not use_bm3d):
                    continue
                row = {"sigma": sigma, "image": path.name, "noisy": psnr(noisy, clean),
                       "trd": psnr(denoise_trd(noisy, sigma, model=model), clean), "bm3d": None}
                if bank != SHIPPED:
                    row["bank"] = bank
                if use_bm3d:
                    row["bm3d"] = psnr(255.0 * bm3d.bm3d(noisy / 255.0, sigma_psd=sigma / 255.0),
                                       clean)
                done[key] = row
                log.write(json.dumps(row) + "\n")
                log.flush()
                print(f"sigma {sigma:g} {path.name}: TRD {row['trd']:.2f}"
                      + (f" BM3D {row['bm3d']:.2f}" if row["bm3d"] is not None else ""), flush=True)
    return done


def table(done, sigmas, names, bank=SHIPPED, earlier=None):
    label = "shipped bank" if bank == SHIPPED else f"bank {bank}"
    compare = earlier is not None
    extra = " TRD, earlier run | change |" if compare else ""
    lines = [f"| sigma | noisy | TRD ({label}) |{extra} BM3D | TRD - BM3D | "
             "authors' model at this sigma |",
             "|---|---|---|---|---|---|" + ("---|---|" if compare else "")]
    earlier = {} if earlier is None else earlier
    for sigma in sigmas:
        rows = [done[bank, sigma, name] for name in names if (bank, sigma, name) in done]
        if len(rows) < len(names):
            lines.append(f"| {sigma:g} | ({len(rows)}/{len(names)} images measured) |"
                         + " |" * (6 if compare else 4))
            continue
        trd = np.mean([r["trd"] for r in rows])
        noisy = np.mean([r["noisy"] for r in rows])
        # BM3D does not depend on the bank: a candidate bank's rows borrow the shipped run's,
        # or the earlier run's
        bm = [r["bm3d"] if r["bm3d"] is not None
              else done.get((SHIPPED, sigma, name), {}).get("bm3d")
              or earlier.get((SHIPPED, sigma, name), {}).get("bm3d")
              for r, name in zip(rows, names)]
        before = [earlier.get((SHIPPED, sigma, name), {}).get("trd") for name in names]
        change = ""
        if compare:
            change = " - | - |"
            if all(b is not None for b in before):
                change = f" {np.mean(before):.3f} | {trd - np.mean(before):+.3f} |"
        bm3d_txt, diff_txt = "-", "-"
        if all(b is not None for b in bm):
            bm3d_txt, diff_txt = f"{np.mean(bm):.2f}", f"{trd - np.mean(bm):+.2f}"
        authors = AUTHORS.get(int(sigma)) if float(sigma).is_integer() else None
        trd_txt = f"{trd:.3f}" if compare else f"{trd:.2f}"
        lines.append(f"| {sigma:g} | {noisy:.2f} | {trd_txt} |{change} {bm3d_txt} | {diff_txt} | "
                     f"{'-' if authors is None else f'{authors:.2f}'} |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sigmas", default=",".join(str(s) for s in range(5, 80, 5)))
    ap.add_argument("--results", type=Path, default=Path("sigma_sweep_bsd68.jsonl"),
                    help="JSON lines with per-image results, appended to and reused")
    ap.add_argument("--threads", type=int, default=2, help="Numba threads for TRD")
    ap.add_argument("--images", type=int, default=None, help="only the first N images")
    ap.add_argument("--no-bm3d", action="store_true")
    ap.add_argument("--table-only", action="store_true", help="print the table from --results")
    ap.add_argument("--data", default=str(DATA / "bsd68"), help="the BSD68 images")
    ap.add_argument("--model", default=SHIPPED,
                    help="comma-separated models (names or .npz paths) to use as the bank "
                         "instead of the shipped one")
    ap.add_argument("--earlier", type=Path, default=None,
                    help="results of an earlier run: its shipped TRD beside, its BM3D borrowed")
    args = ap.parse_args(argv)
    from skimage_trd.kernels.numba_cpu import set_threads

    set_threads(args.threads)
    sigmas = [float(s) for s in args.sigmas.split(",")]
    files = require_images(args.data, "bsd68")[: args.images]
    if args.table_only:
        done = load_results(args.results)
    else:
        done = measure(sigmas, files, args.results, not args.no_bm3d, args.model)
    print(f"\n# BSD68 ({len(files)} images), PSNR dB; {platform.platform()}; "
          f"{datetime.date.today()}; python {' '.join(sys.argv)}")
    earlier = None if args.earlier is None else load_results(args.earlier)
    print(table(done, sigmas, [f.name for f in files], args.model, earlier))


if __name__ == "__main__":
    main()

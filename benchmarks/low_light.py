"""The photon-starved regime: TRD against BM3D at 1 to 20 photons for the brightest pixel.

    python benchmarks/low_light.py [--peaks 1,2,5,10,20] [--threads 1] [--results FILE]
        [--model NAME_OR_PATH,...] [--images N] [--no-bm3d]

Images: Set12 (../shared/data/set12 or --data) and three microscopy-like images that need no
download: skimage.data.cell (a phase image from holographic microscopy, central 512x512),
skimage.data.immunohistochemistry (a stained tissue slide, luminance, central 512x512) and
"blobs" (skimage.data.binary_blobs(512, 0.05, seed 0) blurred by a Gaussian of sigma 2: bright
fluorescent spots on a dark background).

Noise (Feng & Chen's protocol with a camera around it): expected photons ``y = peak * clean``
(clean in [0, 1]), observation ``z = gain * Poisson(y) + offset + N(0, read^2)`` with gain 2
camera units per photon, offset 100 and read noise 1 unit (half a photon); a fresh
``default_rng(peak)`` for each peak, images in order. PSNR (dB) of the estimate of
``gain * y + offset`` against it, peak ``gain * peak`` (no clipping), mean over the images.

Compared on the same noisy images:
- TRD, parameters given: ``denoise_trd_poisson(z, gain, read, offset=offset)`` (generalised
  Anscombe transform, the bank's model for the stabilised noise chosen by the range rule, or by
  SURE with ``--select sure``, exact unbiased inverse);
- TRD, parameters estimated: ``denoise_trd_poisson(z, offset=offset)`` (gain and read noise
  estimated per image; the offset, the camera's dark level, is given);
- BM3D with the same transform and inverse: ``bm3d.bm3d(gat(z), sigma_psd=1)``.
Seconds: per image, TRD (given, after a warm-up) and BM3D, one thread each.

``--draw K`` repeats the measurement on another noise draw (``default_rng(peak * 1000 + K)``),
to see how much a figure owes to the draw; its rows carry ``"draw": K``.

Per-image results are appended to ``--results`` (JSON lines, keyed by draw, bank, peak and image) and
reused on a rerun; ``--model`` runs TRD with another bank (names or .npz paths), whose results
are kept apart (BM3D borrowed from the shipped run).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path

for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(var, "1")

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _data import DATA, cpu_name, load_jsonl, require_images  # noqa: E402

GAIN, OFFSET, READ = 2.0, 100.0, 1.0
SHIPPED = "shipped"


def microscopy_images():
    from scipy.ndimage import gaussian_filter
    from skimage import color, data

    def center_crop(img, n=512):
        r0, c0 = (img.shape[0] - n) // 2, (img.shape[1] - n) // 2
        return img[r0 : r0 + n, c0 : c0 + n]

    cell = center_crop(data.cell()) / 255.0
    ihc = center_crop(color.rgb2gray(data.immunohistochemistry()))
    blobs = gaussian_filter(data.binary_blobs(512, 0.05, rng=0).astype(np.float64), 2.0)
    return {"cell": cell, "ihc": ihc, "blobs": blobs / blobs.max()}


def load_images(data_dir, n_images):
    from skimage.io import imread

    images = {f"set12/{p.name}": imread(p).astype(np.float64) / 255.0
              for p in require_images(data_dir, "set12")}
    images.update({f"microscopy/{k}": v for k, v in microscopy_images().items()})
    return dict(list(images.items())[:n_images])


def load_results(path, draw=0):
    # rows without "select" were measured before select='sure' existed: 'range'; rows without
    # "draw" are the protocol's draw 0. Only the rows of ``draw`` are kept.
    done = load_jsonl(path, lambda r: (r.get("draw", 0), r["bank"], r.get("select", "range"),
                                       r["peak"], r["image"]))
    return {key[1:]: row for key, row in done.items() if key[0] == draw}


def measure(peaks, images, results_path, bank, use_bm3d, select="range", draw=0):
    from skimage_trd import (
        denoise_trd_poisson,
        estimate_poisson_gaussian,
        generalized_anscombe,
        inverse_generalized_anscombe,
    )
    from skimage_trd._metrics import psnr

    if use_bm3d:
        try:
            import bm3d
        except ImportError:
            sys.exit("BM3D needs the package bm3d: pip install bm3d (or pass --no-bm3d)")
    model = None if bank == SHIPPED else bank.split(",")
    kw = {"select": select} if model is None else {"model": model, "select": select}
    warm = GAIN * np.random.default_rng(0).poisson(5 * np.ones((64, 64))) + OFFSET
    denoise_trd_poisson(warm, GAIN, READ, offset=OFFSET, **kw)  # compile before timing
    done = load_results(results_path, draw)
    with results_path.open("a") as log:
        for peak in peaks:
            rng = np.random.default_rng(int(peak * 1000) + draw)
            for name, clean in images.items():
                y = peak * clean
                z = GAIN * rng.poisson(y) + OFFSET + READ * rng.standard_normal(y.shape)
                key = (bank, select, peak, name)  # (the noise is drawn even when cached)
                if key in done:
                    continue
                truth = GAIN * y + OFFSET

                def score(a, truth=truth, peak=peak):
                    return psnr(a, truth, GAIN * peak, clip=False)

                t0 = time.perf_counter()
                given = denoise_trd_poisson(z, GAIN, READ, offset=OFFSET, **kw)
                t_trd = time.perf_counter() - t0
                row = {"bank": bank, "select": select, "peak": peak, "image": name,
                       **({"draw": draw} if draw else {}),
                       "noisy": score(z),
                       "trd_given": score(given), "seconds_trd": t_trd}
                try:
                    g, r = estimate_poisson_gaussian(z, offset=OFFSET)
                    row["estimated_gain"], row["estimated_read"] = g, r
                    row["trd_estimated"] = score(denoise_trd_poisson(z, offset=OFFSET, **kw))
                except ValueError as exc:  # reported, counted as missing
                    row["trd_estimated"], row["estimate_error"] = None, str(exc)
                if use_bm3d:
                    t0 = time.perf_counter()
                    d = generalized_anscombe(z, GAIN, READ, offset=OFFSET)
                    bm = inverse_generalized_anscombe(bm3d.bm3d(d, sigma_psd=1.0), GAIN, READ,
                                                      offset=OFFSET)
                    row["seconds_bm3d"] = time.perf_counter() - t0
                    row["bm3d_given"] = score(bm)
                done[key] = row
                log.write(json.dumps(row) + "\n")
                log.flush()
                print(f"peak {peak:g} {name}: noisy {row['noisy']:.2f} TRD {row['trd_given']:.2f}"
                      + (f" BM3D {row['bm3d_given']:.2f}" if "bm3d_given" in row else ""),
                      flush=True)
    return done


def _mean(values):
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else float("nan")


def _bm3d_row(done, peak, name):
    """BM3D does not depend on TRD's bank or choice: any row of this peak and image."""
    for key, row in done.items():
        if key[2:] == (peak, name) and "bm3d_given" in row:
            return row
    return {}


def table(done, peaks, images, bank, group, select="range"):
    names = [n for n in images if n.startswith(group + "/")]
    if not names:
        return ""
    lines = [f"{group} ({len(names)} images), bank: {bank}, select: {select}",
             "| peak photons | noisy | TRD, parameters given | TRD, estimated | "
             "BM3D (same transform), given | TRD - BM3D (given) | estimation costs TRD | "
             "seconds TRD / BM3D |",
             "|---|---|---|---|---|---|---|---|"]
    for peak in peaks:
        rows = [done.get((bank, select, peak, n)) for n in names]
        if not names or any(r is None for r in rows):
            continue
        bm_rows = [r if "bm3d_given" in r else _bm3d_row(done, peak, n)
                   for r, n in zip(rows, names)]
        trd, est = _mean([r["trd_given"] for r in rows]), _mean([r["trd_estimated"] for r in rows])
        bm = _mean([b.get("bm3d_given") for b in bm_rows])
        failed = sum(r["trd_estimated"] is None for r in rows)
        est_txt = f"{est:.2f}" + (f" ({failed} failed)" if failed else "")
        t_bm = _mean([b.get("seconds_bm3d") for b in bm_rows])
        bm_txt, diff_txt, t_bm_txt = ("-", "-", "-") if np.isnan(bm) else (
            f"{bm:.2f}", f"{trd - bm:+.2f}", f"{t_bm:.2f}")
        lines.append(
            f"| {peak:g} | {_mean([r['noisy'] for r in rows]):.2f} | {trd:.2f} | {est_txt} | "
            f"{bm_txt} | {diff_txt} | {trd - est:.2f} | "
            f"{_mean([r['seconds_trd'] for r in rows]):.3f} / {t_bm_txt} |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--peaks", default="1,2,5,10,20")
    ap.add_argument("--threads", type=int, default=1, help="Numba threads for TRD")
    ap.add_argument("--results", type=Path, default=Path("low_light.jsonl"),
                    help="JSON lines with per-image results, appended to and reused")
    ap.add_argument("--model", default=SHIPPED,
                    help="comma-separated models (names or .npz paths) as the bank")
    ap.add_argument("--images", type=int, default=None, help="only the first N images")
    ap.add_argument("--no-bm3d", action="store_true")
    ap.add_argument("--select", default="range", choices=["range", "sure"],
                    help="denoise_trd_poisson's choice of model per plane")
    ap.add_argument("--data", default=str(DATA / "set12"), help="the Set12 images")
    ap.add_argument("--draw", type=int, default=0,
                    help="another noise draw: default_rng(peak * 1000 + DRAW) (0: the protocol's)")
    args = ap.parse_args(argv)
    from skimage_trd.kernels.numba_cpu import set_threads

    set_threads(args.threads)
    peaks = [float(p) for p in args.peaks.split(",")]
    images = load_images(args.data, args.images)
    done = measure(peaks, images, args.results, args.model, not args.no_bm3d, args.select,
                   args.draw)
    print(f"\n# {platform.platform()}, {cpu_name()}; "
          f"TRD threads={args.threads}; {datetime.date.today()}; python {' '.join(sys.argv)}")
    print(f"# gain {GAIN:g} units/photon, offset {OFFSET:g}, read noise {READ:g} units; "
          "mean PSNR (dB) against gain * expected photons + offset")
    for group in ("set12", "microscopy"):
        text = table(done, peaks, images, args.model, group, args.select)
        if text:
            print()
            print(text)


if __name__ == "__main__":
    main()

"""Choosing the bank's model per image by SURE (``select='sure'``) against the fixed rules.

    python benchmarks/sure_select.py [--sets bsd68,set12,outside] [--sigmas 15,25,50]
        [--kinds float,uint8] [--threads 1] [--results FILE] [--table-only]
    python benchmarks/sure_select.py --cost [--threads 1] [--repeats 3]

Every image is denoised through the public API as a user calls it, with the noise level given:
float images in [0, 1] (``img_as_float``) with ``sigma = s / 255``, or uint8 images (noise
rounded and clipped into the type) with ``sigma = s`` grey levels; noise by the protocol of
docs/protocols.md (a fresh ``default_rng(0)`` per set and sigma, images in sorted order). Per
image:

- ``range``: ``denoise_trd(noisy, sigma)`` (the default: the robust-range rule);
- ``dtype``: ``denoise_trd(noisy, sigma, data_range=1.0)`` (255 for uint8: the model nearest the
  noise relative to the dtype's range);
- ``sure``: ``denoise_trd(noisy, sigma, select="sure")``, and each of SURE's candidates forced
  (``model=name``), to tell how often SURE picked the truly better one.

Sets: BSD68 and Set12 from ../shared/data (skipped when absent), and ``outside``: images unlike
both, from ``skimage.data`` (no download): photographs, textures (brick, grass, gravel), text
(page, text), microscopy and medical images (cell, immunohistochemistry, blobs, retina), an
astronomy image and a phantom, gray, central 512x512 crops; plus retina (1411x1411) and the
Hubble deep field (872x1000) whole, which SURE samples in tiles. PSNR of the output clipped to
the data range, against the clean image (which no method sees).

``--cost``: the time of the choice as a fraction of the denoising (one thread, median of
``--repeats``): ``denoise_trd(noisy, sigma, select="sure")`` against the chosen model's run alone
(``model=`` the chosen one), on a 512x512 image and a 2048x2048 one.

Results are appended to ``--results`` (JSON lines) and reused on a rerun.
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
from _data import DATA, cpu_name, load_jsonl  # noqa: E402

OUTSIDE = ["astronaut", "brick", "chelsea", "cell", "clock", "coffee", "coins", "grass",
           "gravel", "immunohistochemistry", "moon", "page", "rocket", "text",
           "shepp_logan_phantom", "blobs", "hubble_deep_field", "retina"]
WHOLE = ["retina", "hubble_deep_field"]  # also measured at their full size


def gray(a):
    from skimage import color

    if a.dtype == bool:
        a = a.astype(np.float64)
    if a.ndim == 3:
        return color.rgb2gray(a[..., :3])
    return a / 255.0 if a.dtype == np.uint8 else np.asarray(a, dtype=np.float64)


def crop(a, n=512):
    H, W = a.shape
    y0, x0 = max(0, (H - n) // 2), max(0, (W - n) // 2)
    return a[y0:y0 + n, x0:x0 + n]


def outside_images():
    """(name, clean image in [0, 1]) of the ``outside`` set."""
    from scipy.ndimage import gaussian_filter
    from skimage import data

    out = []
    for name in OUTSIDE:
        if name == "blobs":
            img = gaussian_filter(data.binary_blobs(512, 0.05, rng=0).astype(np.float64), 2.0)
        else:
            img = gray(getattr(data, name)())
        out.append((name, crop(img)))
    for name in WHOLE:
        out.append((name + "-whole", gray(getattr(data, name)())))
    return out


def set_images(name):
    from skimage.io import imread

    if name == "outside":
        return outside_images()
    folder = DATA / name
    files = sorted(folder.glob("*.png"))
    if not files:
        return None
    return [(p.name, imread(p).astype(np.float64) / 255.0) for p in files]


def psnr(a, b):
    return float(10 * np.log10(1.0 / np.mean((np.clip(a, 0, 1) - b) ** 2)))


def noisy_input(clean, sigma, kind, rng):
    """The noisy image as the user holds it, and sigma in its units."""
    noise = sigma * rng.standard_normal(clean.shape)
    if kind == "uint8":
        return np.clip(np.rint(clean * 255.0 + noise), 0, 255).astype(np.uint8), sigma
    return clean + noise / 255.0, sigma / 255.0


def measure(sets, sigmas, kinds, results_path):
    from skimage_trd import denoise_trd

    done = load_jsonl(results_path, lambda r: (r["set"], r["kind"], r["sigma"], r["image"]))
    with results_path.open("a") as log:
        for set_name in sets:
            images = set_images(set_name)
            if images is None:
                print(f"# {set_name}: not found under {DATA}, skipped", flush=True)
                continue
            for kind in kinds:
                for sigma in sigmas:
                    rng = np.random.default_rng(0)
                    for name, clean in images:
                        noisy, s = noisy_input(clean, sigma, kind, rng)  # drawn even if cached
                        key = (set_name, kind, sigma, name)
                        if key in done:
                            continue
                        unit = 255.0 if kind == "uint8" else 1.0
                        t0 = time.perf_counter()
                        out, choices = denoise_trd(noisy, s, select="sure", return_choices=True)
                        seconds = time.perf_counter() - t0
                        choice = choices[0]
                        row = {"set": set_name, "kind": kind, "sigma": sigma, "image": name,
                               "shape": list(clean.shape),
                               "range": psnr(denoise_trd(noisy, s), clean),
                               "dtype": psnr(denoise_trd(noisy, s, data_range=unit), clean),
                               "sure": psnr(out, clean), "chosen": choice["model"],
                               "sure_seconds": seconds,
                               "estimated_mse": {k: v / unit**2 for k, v in
                                                 choice["estimated_mse"].items()},
                               "candidates": {m: psnr(denoise_trd(noisy, s, model=m), clean)
                                              for m in choice["estimated_mse"]}}
                        done[key] = row
                        log.write(json.dumps(row) + "\n")
                        log.flush()
                        print(f"{set_name} {kind} sigma {sigma:g} {name}: range {row['range']:.2f}"
                              f" dtype {row['dtype']:.2f} sure {row['sure']:.2f} "
                              f"({row['chosen']})", flush=True)
    return done


def summary(done, sets, sigmas, kinds):
    lines = ["| set | input | sigma | range rule | dtype rule | SURE | SURE - better rule "
             "(mean / worst image) | SURE picked the truly better candidate | images |",
             "|---|---|---|---|---|---|---|---|---|"]
    for set_name in sets:
        for kind in kinds:
            for sigma in sigmas:
                rows = [r for k, r in done.items() if k[:3] == (set_name, kind, sigma)]
                if not rows:
                    continue
                rng_, dt, su = (np.array([r[k] for r in rows]) for k in ("range", "dtype", "sure"))
                better = rng_ if rng_.mean() > dt.mean() else dt
                per_image = su - np.maximum(rng_, dt)
                choices = [r for r in rows if len(r["candidates"]) > 1]
                right = sum(r["sure"] >= max(r["candidates"].values()) - 1e-9 for r in choices)
                lines.append(
                    f"| {set_name} | {kind} | {sigma:g} | {rng_.mean():.3f} | {dt.mean():.3f} | "
                    f"{su.mean():.3f} | {su.mean() - better.mean():+.3f} / "
                    f"{per_image.min():+.3f} | {right}/{len(choices)} | {len(rows)} |")
    return "\n".join(lines)


def per_image(done, set_name, kind, sigma):
    lines = ["| image | size | range rule | dtype rule | SURE | SURE's choice | SURE - better rule |",
             "|---|---|---|---|---|---|---|"]
    for k, r in sorted(done.items()):
        if k[:3] != (set_name, kind, sigma):
            continue
        lines.append(f"| {r['image']} | {r['shape'][0]}x{r['shape'][1]} | {r['range']:.2f} | "
                     f"{r['dtype']:.2f} | {r['sure']:.2f} | {r['chosen']} | "
                     f"{r['sure'] - max(r['range'], r['dtype']):+.2f} |")
    return "\n".join(lines)


def cost(repeats):
    from skimage import data, transform

    from skimage_trd import denoise_trd

    rng = np.random.default_rng(0)
    base = gray(data.astronaut())
    big = transform.resize(gray(data.retina()), (2048, 2048), order=1, anti_aliasing=False)
    lines = ["| image | candidates | choice | median s (select='sure') | median s (chosen "
             "model alone) | cost of the choice |", "|---|---|---|---|---|---|"]
    for label, clean in (("astronaut 512x512", base), ("retina resized 2048x2048", big)):
        noisy = clean + 25 / 255 * rng.standard_normal(clean.shape)
        _, choices = denoise_trd(noisy, 25 / 255, select="sure", return_choices=True,
                                 num_threads=1)
        chosen = choices[0]["model"]
        t_sure, t_run = [], []
        for _ in range(repeats):
            t0 = time.perf_counter()
            denoise_trd(noisy, 25 / 255, select="sure", num_threads=1)
            t1 = time.perf_counter()
            denoise_trd(noisy, 25 / 255, model=chosen, num_threads=1)
            t2 = time.perf_counter()
            t_sure.append(t1 - t0)
            t_run.append(t2 - t1)
        a, b = float(np.median(t_sure)), float(np.median(t_run))
        lines.append(f"| {label} | {len(choices[0]['estimated_mse'])} | {chosen} | "
                     f"{a:.2f} | {b:.2f} | {100 * (a - b) / b:.0f} % |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sets", default="bsd68,set12,outside")
    ap.add_argument("--sigmas", default="15,25,50")
    ap.add_argument("--kinds", default="float")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--results", type=Path,
                    default=Path(__file__).resolve().parent / "results" / "sure_select.jsonl")
    ap.add_argument("--table-only", action="store_true")
    ap.add_argument("--per-image", default=None, metavar="SET,KIND,SIGMA",
                    help="also print the per-image table of one set, e.g. outside,float,25")
    ap.add_argument("--cost", action="store_true", help="time the choice instead")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    from skimage_trd.kernels.numba_cpu import set_threads

    set_threads(args.threads)
    print(f"# {cpu_name()}; {platform.platform()}; threads={args.threads}; "
          f"{datetime.date.today()}; python {' '.join(sys.argv)}")
    if args.cost:
        print(cost(args.repeats))
        return
    sets, kinds = args.sets.split(","), args.kinds.split(",")
    sigmas = [float(s) for s in args.sigmas.split(",")]
    if args.table_only:
        done = load_jsonl(args.results, lambda r: (r["set"], r["kind"], r["sigma"], r["image"]))
    else:
        done = measure(sets, sigmas, kinds, args.results)
    print(summary(done, sets, sigmas, kinds))
    if args.per_image:
        s, k, sig = args.per_image.split(",")
        print()
        print(per_image(done, s, k, float(sig)))


if __name__ == "__main__":
    main()

"""``denoise_trd`` as users call it: float64 against float32 input, BM3D, and what a call
spends besides the TRD stages.

    python benchmarks/call_costs.py [--sizes 512,2048] [--repeat 7] [--threads 1] [--no-bm3d]

Image: ``skimage.data.camera`` (tiled to size) / 255 + Gaussian noise of 25/255 (seed 0), as
float64 in [0, 1] (``img_as_float``, ``image / 255``), the same values as float32, and the
clean camera quantised to uint8 plus noise for the uint8 row (sigma 25 in grey levels). Calls
exactly as a user writes them: ``denoise_trd(image, sigma=25 / 255)`` (default bank, no model
forced). Seconds: median of --repeat runs after a warm-up, one thread unless --threads. BM3D
(``bm3d.bm3d(noisy, sigma_psd=25 / 255)``, single-threaded) on the same float64 image in the
same run, at 512^2 only (it takes seconds).

The second table splits a 512^2 float64 call: the TRD stages themselves (``run_model`` on the
float32 model-scale plane), the input checks, the plane statistics (mean, extremes), the model
choice (robust intensity range), the noise estimate (``sigma=None`` only), the colour
transform (the opponent-space call minus the channel-by-channel one on a 512^2 RGB image), and
the rest (maps onto the model's scale and back, dtype conversions, copies), each as a share of
the call.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys

for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(var, "1")  # single-threaded peers and BLAS, before numpy loads

import numpy as np  # noqa: E402
from _data import cpu_name, median_times  # noqa: E402  (benchmarks/ is the script's folder)

from skimage_trd import denoise_trd  # noqa: E402
from skimage_trd._metrics import psnr  # noqa: E402
from skimage_trd.kernels.numba_cpu import set_threads  # noqa: E402


def median_time(fn, repeat):
    return median_times([fn], repeat)[0]


def test_image(size, seed=0):
    from skimage import data

    cam = data.camera()
    reps = -(-size // cam.shape[0])
    clean = np.tile(cam, (reps, reps))[:size, :size]
    noise = np.random.default_rng(seed).standard_normal(clean.shape)
    return clean, clean / 255.0 + 25 / 255 * noise


def speed_table(sizes, repeat, use_bm3d):
    rows = []
    for size in sizes:
        clean, x64 = test_image(size)
        x32 = x64.astype(np.float32)
        u8 = np.clip(np.round(x64 * 255), 0, 255).astype(np.uint8)
        t64, t32, tu8 = median_times([lambda: denoise_trd(x64, sigma=25 / 255),
                                      lambda: denoise_trd(x32, sigma=25 / 255),
                                      lambda: denoise_trd(u8, sigma=25)], repeat)
        tex = median_time(lambda: denoise_trd(x64, sigma=25 / 255, exact=True), max(3, repeat // 2))
        out64 = denoise_trd(x64, sigma=25 / 255)
        p64 = psnr(out64, clean / 255.0, 1.0)
        tb = pb = t64b = None
        if use_bm3d and size <= 512:
            import bm3d

            ob = bm3d.bm3d(x64, sigma_psd=25 / 255)
            # three BM3D runs, each between two TRD calls (the TRD median of those six runs)
            tb, t64b = median_times([lambda: bm3d.bm3d(x64, sigma_psd=25 / 255),
                                     lambda: denoise_trd(x64, sigma=25 / 255)], 3)
            pb = psnr(ob, clean / 255.0, 1.0)
        rows.append((size, t64, t32, tu8, tex, p64, tb, pb, t64b))
    print("| size | float64 call (s) | float32 call (s) | float64 / float32 | uint8 call (s) "
          "| float64, exact=True (s) | PSNR float64 call (dB) | BM3D (s) | BM3D PSNR (dB) "
          "| BM3D / float64 call (interleaved) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for size, t64, t32, tu8, tex, p64, tb, pb, t64b in rows:
        bm = ("-", "-", "-") if tb is None else (f"{tb:.2f}", f"{pb:.2f}",
                                                 f"{tb / t64b:.0f}x ({t64b:.3f} s)")
        print(f"| {size}^2 | {t64:.3f} | {t32:.3f} | {t64 / t32:.2f} | {tu8:.3f} | {tex:.3f} "
              f"| {p64:.2f} | {bm[0]} | {bm[1]} | {bm[2]} |")


def cost_table(repeat):
    from skimage import data

    from skimage_trd import _planes
    from skimage_trd._arrays import check_image
    from skimage_trd._registry import resolve_models
    from skimage_trd.kernels.engine import run_model

    _, x = test_image(512)
    bank = resolve_models(None, "denoise")
    opts = _planes.PlaneOptions(bank=tuple(bank), in_dtype=x.dtype)
    setting = _planes.plane_settings(x, 25 / 255, opts)
    f = ((x - setting.center) * setting.gain + 127.5).astype(np.float32)
    call = median_time(lambda: denoise_trd(x, sigma=25 / 255), repeat)
    call_est = median_time(lambda: denoise_trd(x), repeat)
    parts = {
        "TRD stages (run_model, float32)": median_time(lambda: run_model(f, setting.model), repeat),
        "input checks (check_image)": median_time(lambda: check_image(x), repeat),
        "plane statistics (mean, extremes)": median_time(
            lambda: _planes.plane_settings(
                x, 25 / 255, _planes.PlaneOptions(bank=tuple(bank[:1]), in_dtype=x.dtype)), repeat),
        "model choice (robust range)": median_time(lambda: _planes.robust_range(x), repeat),
    }
    parts["maps to the model's scale and back, dtype conversions, copies (the rest)"] = \
        call - sum(parts.values())
    estimate = median_time(lambda: _planes.estimate_plane_sigma(x), repeat)

    rgb = data.astronaut()[:512, :512] / 255.0
    rgb = rgb + 25 / 255 * np.random.default_rng(1).standard_normal(rgb.shape)
    opp = median_time(lambda: denoise_trd(rgb, sigma=25 / 255, channel_axis=-1), max(3, repeat // 2))
    per = median_time(lambda: denoise_trd(rgb, sigma=25 / 255, channel_axis=-1,
                                          color_transform="none"), max(3, repeat // 2))

    print(f"\n512^2 float64 gray call, sigma given: {call:.4f} s; sigma estimated: {call_est:.4f} s")
    print("\n| part of a 512^2 float64 call | seconds | share of the call |")
    print("|---|---|---|")
    for name, t in parts.items():
        print(f"| {name} | {t:.4f} | {100 * t / call:.1f} % |")
    overhead = call - parts["TRD stages (run_model, float32)"]
    print(f"| **all but the TRD stages (sigma given)** | {overhead:.4f} | {100 * overhead / call:.1f} % |")
    print(f"| noise estimate (sigma=None only; share of that call) | {estimate:.4f} "
          f"| {100 * estimate / call_est:.1f} % |")
    over_est = call_est - parts["TRD stages (run_model, float32)"]
    print(f"| **all but the TRD stages (sigma estimated)** | {over_est:.4f} "
          f"| {100 * over_est / call_est:.1f} % |")
    print(f"| colour transform (512^2 RGB: opponent call {opp:.3f} s minus channel-by-channel "
          f"{per:.3f} s; share of the opponent call) | {opp - per:.4f} | {100 * (opp - per) / opp:.1f} % |")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="512,2048", help="image sizes (default: %(default)s)")
    ap.add_argument("--repeat", type=int, default=7, help="runs per median (default: %(default)s)")
    ap.add_argument("--threads", type=int, default=1, help="Numba threads (default: %(default)s)")
    ap.add_argument("--no-bm3d", action="store_true", help="skip BM3D")
    args = ap.parse_args(argv)
    use_bm3d = not args.no_bm3d
    if use_bm3d:
        try:
            import bm3d  # noqa: F401
        except ImportError:
            raise SystemExit("BM3D is not installed: pip install '.[benchmarks]' (or pass "
                             "--no-bm3d)") from None
    set_threads(args.threads)
    print(f"# denoise_trd call costs: {cpu_name()}, {os.cpu_count()} logical CPUs, "
          f"{args.threads} Numba thread(s); {datetime.datetime.now():%Y-%m-%d %H:%M}")
    print(f"# command: python {' '.join(sys.argv)}\n")
    speed_table([int(s) for s in args.sizes.split(",")], args.repeat, use_bm3d)
    cost_table(args.repeat)


if __name__ == "__main__":
    main()

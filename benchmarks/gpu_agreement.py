"""The shipped models on the GPU against the CPU: same images, same noise, PSNR and differences.

    python benchmarks/gpu_agreement.py

For each shipped Gaussian model: a scikit-image sample (camera, coins) with noise at the
model's sigma, restored by ``denoise_trd`` on the CPU (Numba, float32) and on the GPU (CuPy,
float32, the default kernel); for each deblocking model, the image JPEG-compressed at the
model's quality and restored by ``deblock_trd`` on both. Prints PSNRs, the largest
difference on the [0, 255] scale and the GPU's median time of 5 (image already on the GPU).
"""

from __future__ import annotations

import datetime
import sys

import numpy as np
from skimage import data
from skimage.metrics import peak_signal_noise_ratio as psnr


def main():
    import cupy as cp

    from skimage_trd import deblock_trd, denoise_trd
    from skimage_trd._jpeg import jpeg_roundtrip

    props = cp.cuda.runtime.getDeviceProperties(0)
    print(f"# device: {props['name'].decode()}  date: {datetime.date.today()}")
    print(f"# command: python {' '.join(sys.argv)}")
    print("| model | image | PSNR input | PSNR CPU | PSNR GPU | max abs diff (of 255) "
          "| GPU time (s) |")
    print("|---|---|---|---|---|---|---|")
    images = {"camera": data.camera(), "coins": data.coins()}

    def gpu_time(fn, x):
        fn(x)
        times = []
        for _ in range(5):
            start, stop = cp.cuda.Event(), cp.cuda.Event()
            start.record()
            fn(x)
            stop.record()
            stop.synchronize()
            times.append(cp.cuda.get_elapsed_time(start, stop) / 1000)
        return float(np.median(times))

    for name, sigma in (("trd-gauss-s15-7x7-5st", 15), ("trd-gauss-s25-5x5-5st", 25),
                        ("trd-gauss-s25-7x7-5st", 25), ("trd-gauss-s50-7x7-5st", 50)):
        for label, img in images.items():
            clean = img.astype(np.float32) / 255
            noisy = clean + np.random.default_rng(0).normal(0, sigma / 255, img.shape).astype(
                np.float32)
            cpu = denoise_trd(noisy, sigma / 255, model=name)
            gpu = denoise_trd(cp.asarray(noisy), sigma / 255, model=name)
            t = gpu_time(lambda x: denoise_trd(x, sigma / 255, model=name), cp.asarray(noisy))
            gpu = gpu.get()
            print(f"| {name} | {label} | {psnr(clean, noisy, data_range=1):.2f} "
                  f"| {psnr(clean, cpu, data_range=1):.2f} | {psnr(clean, gpu, data_range=1):.2f} "
                  f"| {255 * np.abs(cpu - gpu).max():.4f} | {t:.4f} |")
    for q in (10, 20, 30):
        name = f"trd-jpeg-q{q}-7x7-4st"
        for label, img in images.items():
            dec, table = jpeg_roundtrip(img, q)
            cpu = 255 * deblock_trd(dec, qtable=table, model=name)
            gpu = 255 * deblock_trd(cp.asarray(dec), qtable=table, model=name).get()
            t = gpu_time(lambda x: deblock_trd(x, qtable=table, model=name), cp.asarray(dec))
            print(f"| {name} | {label} | {psnr(img, dec):.2f} "
                  f"| {psnr(img.astype(float), cpu, data_range=255):.2f} "
                  f"| {psnr(img.astype(float), gpu, data_range=255):.2f} "
                  f"| {np.abs(cpu - gpu).max():.4f} | {t:.4f} |")


if __name__ == "__main__":
    main()

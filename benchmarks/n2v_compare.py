"""TRD fine-tuned by SURE against Noise2Void (careamics), both trained on the same noisy image.

    # in a separate environment (careamics needs PyTorch; never a dependency of skimage-trd):
    python -m venv venv-n2v && venv-n2v/bin/pip install careamics && venv-n2v/bin/pip install -e .
    venv-n2v/bin/python benchmarks/n2v_compare.py [--set microscopy] [--budget 10] [--threads 1]

Per image of the set (benchmarks/adapt_sure.py's sets and noise: Gaussian sigma 25 on the 0..255
scale, a fresh ``default_rng(0)`` per set), in the same run and on one thread:

- TRD: the shipped 7x7 sigma-25 model fine-tuned on the noisy image alone,
  ``fit([noisy], sigma=25, loss="sure", init=..., optimizer="adam", iterations=30, patch=128,
  patches=4)``, then ``denoise_trd(noisy, 25, model=tuned, data_range=255)``;
- Noise2Void: careamics' default N2V (UNet, 64x64 patches, batch 32, its augmentations), trained
  from scratch on the same noisy image for ``--budget`` times TRD's training time (stopped by a
  callback at the first batch past it), then predicted in 256x256 tiles.

Printed: true PSNR (the clean image is used for scoring only) and seconds of both, per image.
Results are appended to ``--results`` (JSON lines).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _data import cpu_name  # noqa: E402
from adapt_sure import load_set  # noqa: E402


def psnr(a, b):
    return float(10 * np.log10(255.0**2 / np.mean((np.clip(a, 0, 255) - b) ** 2)))


def run_n2v(noisy, seconds, workdir):
    """careamics N2V trained for about ``seconds`` on ``noisy`` (0..255); its prediction and
    the training seconds."""
    from careamics import CAREamist
    from careamics.config import create_n2v_config
    from lightning.pytorch.callbacks import Callback

    class Budget(Callback):
        def __init__(self):
            self.t0 = None

        def on_train_start(self, trainer, module):
            self.t0 = time.perf_counter()

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            if time.perf_counter() - self.t0 > seconds:
                trainer.should_stop = True

    config = create_n2v_config(experiment_name="n2v_compare", data_type="array", axes="YX",
                               patch_size=[64, 64], batch_size=32, num_epochs=100000)
    model = CAREamist(config, work_dir=workdir, callbacks=[Budget()],
                      enable_progress_bar=False)
    x = noisy.astype(np.float32)
    t0 = time.perf_counter()
    model.train(train_data=x)
    trained = time.perf_counter() - t0
    pred, _ = model.predict(x, tile_size=(256, 256), axes="YX")
    return np.squeeze(np.asarray(pred[0], dtype=np.float64)), trained


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--set", default="microscopy")
    ap.add_argument("--budget", type=float, default=10.0,
                    help="N2V trains for this many times TRD's fine-tuning time")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--results", type=Path,
                    default=Path(__file__).resolve().parent / "results" / "n2v_compare.jsonl")
    args = ap.parse_args(argv)
    import torch

    from skimage_trd import denoise_trd, load_model
    from skimage_trd.kernels.numba_cpu import set_threads
    from skimage_trd.train import fit

    torch.set_num_threads(args.threads)
    set_threads(args.threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    base = load_model("trd-gauss-s25-7x7-5st")
    rng = np.random.default_rng(0)
    print(f"# {cpu_name()}; {platform.platform()}; threads={args.threads}; "
          f"{datetime.date.today()}; torch {torch.__version__}; python {' '.join(sys.argv)}")
    print("| image | noisy | shipped TRD | TRD fine-tuned by SURE (s) | N2V (s) |")
    print("|---|---|---|---|---|")
    with args.results.open("a") as log, tempfile.TemporaryDirectory() as work:
        for name, clean in load_set(args.set):
            noisy = clean + 25.0 * rng.standard_normal(clean.shape)
            t0 = time.perf_counter()
            tuned = fit([noisy], sigma=25.0, loss="sure", init=base, optimizer="adam",
                        iterations=30, chunk=30, patch=128, patches=4)
            t_trd = time.perf_counter() - t0
            trd = psnr(denoise_trd(noisy, 25.0, model=tuned, data_range=255.0), clean)
            shipped = psnr(denoise_trd(noisy, 25.0, model=base, data_range=255.0), clean)
            pred, t_n2v = run_n2v(noisy, args.budget * t_trd, work)
            row = {"set": args.set, "image": name, "noisy": psnr(noisy, clean),
                   "shipped": shipped, "trd": trd, "trd_seconds": t_trd, "n2v": psnr(pred, clean),
                   "n2v_seconds": t_n2v, "budget": args.budget}
            log.write(json.dumps(row) + "\n")
            log.flush()
            print(f"| {name} | {row['noisy']:.2f} | {shipped:.2f} | {trd:.2f} ({t_trd:.0f}) | "
                  f"{row['n2v']:.2f} ({t_n2v:.0f}) |", flush=True)


if __name__ == "__main__":
    main()

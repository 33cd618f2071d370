"""Trace of SURE adaptation on Set12: every judgement of the run beside the truth (issue 33).

    python benchmarks/adapt_trace.py [--only 01.png,02.png] [--results benchmarks/results/adapt_trace.jsonl]
    python benchmarks/adapt_trace.py --replay [--results ...]

For each Set12 image (noise 25 as ``adapt_defaults.py --door fit`` adds it), the fit door with
its defaults, except that it never stops early (``patience=0``: all its steps), so that every
checkpoint is seen: ``fit([noisy], sigma=25, loss="sure", init="trd-gauss-s25-7x7-5st",
patience=0)``. At each judgement (every 5 steps) a row records the run's estimate (``estimate``:
the PSNR its judge estimates, the twin run's SURE of the whole adaptation by default; rows of
``adapt_trace_heldout.jsonl``, traced before the twin run existed, hold the held-out pixels'
as ``held_out``), its paired gain over the start in standard errors (``gain_z``, the quantity
the acceptance rule compares with ``objectives.SIGNIFICANCE``) and the true PSNR of the
checkpoint's model on the whole image (``denoise_trd(noisy, 25, model=...)`` against the clean
image, never seen by the run). With these rows other acceptance rules and patiences can be
replayed offline without running the adaptation again (``--replay``: for each threshold on
``gain_z`` and patience, the mean and least true gain over the traced images, with the rule of
``loop._TrainingRun._consider``: a checkpoint is kept if its ``gain_z`` reaches the threshold and
its estimate beats the kept one's; the run stops once ``patience`` judgements pass without a
kept checkpoint). One thread; rows are appended as they come (JSON lines) and images already
traced are skipped.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("NUMBA_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _data import load_jsonl  # noqa: E402
from adapt_defaults import BASE, SIGMA, psnr_of, set_images  # noqa: E402

from skimage_trd import load_model  # noqa: E402
from skimage_trd.train import DEFAULTS, fit, loop  # noqa: E402

STEPS = DEFAULTS["adapt"]["iterations"]  # (fit's default: every step of a run is traced)


def trace(name, clean, noisy, out):
    original = loop._TrainingRun._consider

    def consider(self, stages, score, iteration):
        original(self, stages, score, iteration)
        model = loop._to_model(stages, self.spec, self.config)
        row = {"image": name, "iteration": int(iteration), "estimate": float(score),
               "judge": "twin" if self.twin is not None else "held-out",
               "gain_z": self.state.history[-1].get("gain_z"),
               "true": psnr_of(model, noisy, clean)}
        out.write(json.dumps(row) + "\n")
        out.flush()
        print(row, flush=True)

    loop._TrainingRun._consider = consider
    try:
        start = psnr_of(load_model(BASE), noisy, clean)
        out.write(json.dumps({"image": name, "iteration": 0, "true": start}) + "\n")
        fit([noisy], sigma=SIGMA, loss="sure", init=BASE, patience=0)
    finally:
        loop._TrainingRun._consider = original


def _estimate(row):
    return row.get("estimate", row.get("held_out"))  # (rows traced before the twin run)


def replay(rows, threshold, patience):
    """{image: true gain} under an acceptance rule (see the module's text)."""
    gains = {}
    for image in sorted({r["image"] for r in rows}):
        trace_ = sorted((r for r in rows if r["image"] == image), key=lambda r: r["iteration"])
        start = trace_[0]["true"]
        best, best_it = None, 0
        for r in trace_[1:]:
            if patience and r["iteration"] - best_it > patience * 5:
                break
            if r["gain_z"] is not None and r["gain_z"] >= threshold and (
                    best is None or _estimate(r) > _estimate(best)):
                best, best_it = r, r["iteration"]
        gains[image] = (best["true"] if best else start) - start
    return gains


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default=None)
    ap.add_argument("--replay", action="store_true")
    ap.add_argument("--results", type=Path,
                    default=Path(__file__).parent / "results" / "adapt_trace.jsonl")
    args = ap.parse_args(argv)
    if args.replay:
        rows = list(load_jsonl(args.results, id).values())
        steps = max(r["iteration"] for r in rows)  # (the traced runs' length: 100 before the twin)
        complete = {r["image"] for r in rows if r.get("iteration") == steps}
        rows = [r for r in rows if r["image"] in complete]
        print(f"{len(complete)} images traced to {steps} steps\n| gain_z at least | patience "
              "(judgements) | mean true gain | least | images changed |\n|---|---|---|---|---|")
        for threshold in (0.0, 0.5, 1.0, 1.5, 2.0, 2.5):
            for patience in (2, 4, 6, 0):
                g = replay(rows, threshold, patience)
                print(f"| {threshold:g} | {patience or 'none'} | {sum(g.values()) / len(g):+.3f} "
                      f"| {min(g.values()):+.3f} | {sum(v != 0 for v in g.values())} |")
        # bounds: the checkpoint the truth would pick, and a fixed number of steps
        start = {r["image"]: r["true"] for r in rows if r["iteration"] == 0}
        best = {i: max(r["true"] for r in rows if r["image"] == i) - start[i] for i in start}
        print(f"\nbest checkpoint by the truth (a bound): mean {sum(best.values()) / len(best):+.3f}")
        for it in sorted({10, 20, steps // 2, steps}):
            g = [r["true"] - start[r["image"]] for r in rows if r["iteration"] == it]
            print(f"always {it} steps: mean {sum(g) / len(g):+.3f}, least {min(g):+.3f}")
        return
    images = set_images("set12")
    if args.only:
        images = [im for im in images if im[0] in args.only.split(",")]
    done = {r["image"] for r in load_jsonl(args.results, lambda r: id(r)).values()
            if r.get("iteration") == STEPS}
    with args.results.open("a") as out:
        for name, clean, noisy in images:
            if name not in done:
                trace(name, clean, noisy, out)


if __name__ == "__main__":
    main()

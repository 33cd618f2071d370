"""Where the benchmarks find their data sets, and what they say when one is missing.

The data sets are not in the repository: they live in ``../shared/data`` (a folder ``shared/``
beside the clone) or wherever ``--data`` points. docs/protocols.md says what each one is and
where to get it.
"""

from __future__ import annotations

import json
import platform
import sys
import time
from pathlib import Path

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
DATA = SHARED / "data"
AUTHORS = SHARED / "reference-models" / "tnrd-authors"

WHERE = {
    "train400": "the 400 training crops of the TNRD/DnCNN papers (DnCNN repository, "
                "github.com/cszn/DnCNN: TrainingCodes/DnCNN_TrainingCodes_v1.0/data/Train400)",
    "bsd68": "the 68 BSD test images of the TNRD/DnCNN papers (github.com/cszn/DnCNN: testsets/BSD68)",
    "set12": "the 12 classic gray test images of the DnCNN paper (Set12, with DnCNN's test sets)",
    "live1": "the 29 LIVE1 colour images of the JPEG-deblocking benchmarks (e.g. "
             "github.com/cszn/DnCNN: testsets/LIVE1), converted losslessly from BMP to PNG",
    "classic5": "the 5 classic5 gray images of the JPEG-deblocking benchmarks",
    "tnrd-authors": "the authors' released TNRD MATLAB models (their public TNRD-Codes package), "
                    "folders denoising/ and jpeg_deblocking/",
}


def missing(what, folder, option="--data FOLDER"):
    """Say what is missing and where to get it, then exit with status 2."""
    how = f", or pass {option}" if option else ""
    sys.stderr.write(
        f"{Path(sys.argv[0]).name}: no {what} data in {folder}.\n"
        f"  {what}: {WHERE.get(what, what)}.\n"
        f"  Put it in {folder}{how} (see docs/protocols.md, 'Data').\n")
    sys.exit(2)


def require_images(folder, what, pattern="*.png", option="--data FOLDER"):
    """The sorted image files of a data set, or a message and exit status 2 without them."""
    folder = Path(folder)
    files = sorted(folder.glob(pattern)) if folder.is_dir() else []
    if not files:
        missing(what, folder, option)
    return files


def cpu_name():
    """The processor's model name (Linux), else what the platform module says."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_jsonl(path, key):
    """Per-item results stored as JSON lines (appended as they are measured), as a dict keyed
    by ``key(row)``; empty when the file does not exist yet."""
    done = {}
    path = Path(path)
    if path.exists():
        for line in path.read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                done[key(row)] = row
    return done


def measured_row(done, path, key, fields, run, score):
    """The row of ``done`` (from :func:`load_jsonl`) at ``key``, or a new one: ``run()`` timed,
    stored with ``fields``, ``score(output)`` (a dict), the seconds, CPU and date, appended to
    ``path`` and to ``done``. Returns (row, whether it was measured now)."""
    if key in done:
        return done[key], False
    t0 = time.perf_counter()
    out = run()
    seconds = time.perf_counter() - t0
    import datetime

    row = {**fields, **score(out), "seconds": seconds, "cpu": cpu_name(),
           "date": datetime.date.today().isoformat()}
    with open(path, "a") as fh:
        fh.write(json.dumps(row) + "\n")
    done[key] = row
    return row, True


def gain_table(rows, after="adapted"):
    """A markdown table of per-image PSNR before and after (rows with ``image``, ``shape``,
    ``before``, ``after``, ``seconds``), in the given order, and their mean and least gain."""
    import numpy as np

    lines = [f"| image | size | shipped model | {after} | gain (dB) | seconds |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['image']} | {r['shape'][0]}x{r['shape'][1]} | {r['before']:.3f} | "
                     f"{r['after']:.3f} | {r['after'] - r['before']:+.3f} | {r['seconds']:.1f} |")
    if rows:
        gains = [r["after"] - r["before"] for r in rows]
        lines.append(f"| mean | | {np.mean([r['before'] for r in rows]):.3f} | "
                     f"{np.mean([r['after'] for r in rows]):.3f} | {np.mean(gains):+.3f} "
                     f"(min {min(gains):+.3f}) | {np.mean([r['seconds'] for r in rows]):.1f} |")
    return "\n".join(lines)


def median_times(fns, repeat):
    """Median seconds of each of ``fns``, the calls interleaved (one of each per round), so
    that a change in the machine's load affects them alike; after one warm-up call each."""
    import numpy as np

    for fn in fns:
        fn()  # warm-up (compilation, table preparation, caches)
    times = [[] for _ in fns]
    for _ in range(repeat):
        for fn, ts in zip(fns, times):
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
    return [float(np.median(ts)) for ts in times]

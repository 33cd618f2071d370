"""Print the range rule's levels of the training data (``_planes.TRAINING_RANGE_LEVELS``).

    python training/range_levels.py [--data ../shared/data/train400] [--sigmas 15,25,50,...]

``denoise_trd`` judges a plane's noise against its robust intensity range (the 0.5-99.5
percentile spread of the lightly smoothed, noisy plane: ``_planes.robust_range``), as the level
``255 * sigma / range``. A model trained at noise ``s`` (0..255 scale) on train400 saw images
whose own robust range is below 255 (and widened by their noise), so it is at home at a higher
level than ``s``: the median over the training images of ``255 * s / robust_range(clean + s * N(0,
1))``, printed here per ``s`` (one ``default_rng(0)`` per sigma, images in sorted name order,
colour images averaged to grey). The range rule picks the model whose training images' level is
nearest the plane's.
"""

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
from skimage_trd._planes import robust_range  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "train400"))
    ap.add_argument("--sigmas", default="5,10,15,25,35,50,75,100,150,200")
    args = ap.parse_args(argv)
    from skimage.io import imread

    files = sorted(Path(args.data).glob("*.png"))
    if not files:
        sys.exit(f"no .png images in {args.data}")
    print(f"# {len(files)} images from {args.data}")
    images = []  # read once, for every sigma
    for f in files:
        clean = imread(f).astype(np.float64)
        images.append(clean.mean(axis=-1) if clean.ndim == 3 else clean)
    for s in (float(v) for v in args.sigmas.split(",")):
        rng = np.random.default_rng(0)
        levels = [255.0 * s / robust_range(clean + s * rng.standard_normal(clean.shape))
                  for clean in images]
        print(f"({s:g}, {np.median(levels):.1f}),")


if __name__ == "__main__":
    main()

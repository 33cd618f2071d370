"""Write src/skimage_trd/weights_registry.txt from the model files (sha256 of each).

    python training/make_registry.py [extra_model.npz URL ...]

Models in src/skimage_trd/weights/ ship in the wheel; further models (files given on the
command line with their download URL) are listed for pooch to fetch.
"""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "src" / "skimage_trd"
sys.path.insert(0, str(ROOT / "src"))
from skimage_trd._registry import sha256  # noqa: E402

HEADER = """\
# skimage-trd pretrained models, pooch registry format: file sha256:<hash> [url]
# Regenerate with: python training/make_registry.py
# Names: trd-gauss-s<sigma>-<f>x<f>-<T>st.npz (denoising), trd-gauss-s<sigma>-<d>x<f>x<f>-<T>st.npz
# (denoising volumes: 3-D filters), trd-jpeg-q<quality>-<f>x<f>-<T>st.npz (deblocking)
# Files in skimage_trd/weights/ ship in the wheel; the others are downloaded and cached.
"""


def main(argv):
    lines = [HEADER]
    for path in sorted((PKG / "weights").glob("*.npz")):
        lines.append(f"{path.name} sha256:{sha256(path)}\n")
    for path, url in zip(argv[::2], argv[1::2]):
        lines.append(f"{Path(path).name} sha256:{sha256(path)} {url}\n")
    (PKG / "weights_registry.txt").write_text("".join(lines))
    print("".join(lines))


if __name__ == "__main__":
    main(sys.argv[1:])

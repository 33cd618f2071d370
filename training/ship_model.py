"""Copy a trained model into the wheel's weights under its registry name.

    python training/ship_model.py RUN/model.npz trd-gauss-s25-3x7x7-5st

The model keeps its parameters and provenance; its name becomes the registry name and the
provenance records the file it came from. Then regenerate the registry:
``python training/make_registry.py``.
"""

import sys
from pathlib import Path

from skimage_trd import TRDModel

ROOT = Path(__file__).resolve().parents[1]


def main(source, name):
    model = TRDModel.load(source)
    trained_as = model.name
    model.name = name
    model.metadata.setdefault("provenance", {})["shipped_from"] = {
        "file": str(source), "trained_as": trained_as,
        "command": f"python training/ship_model.py {source} {name}"}
    target = ROOT / "src" / "skimage_trd" / "weights" / f"{name}.npz"
    model.save(target)
    print(f"wrote {target}: {model}")


if __name__ == "__main__":
    main(*sys.argv[1:3])

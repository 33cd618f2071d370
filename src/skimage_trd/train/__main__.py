"""``python -m skimage_trd.train``: see :mod:`skimage_trd.train`."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())

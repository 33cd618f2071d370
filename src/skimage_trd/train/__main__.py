"""``python -m skimage_trd.train``: see :mod:`skimage_trd.train`."""

from .run import main

if __name__ == "__main__":
    main()

"""``python -m skimage_trd``: the ``skimage-trd`` command (see :mod:`skimage_trd.cli`)."""

from .cli import main

raise SystemExit(main())

"""The stage map of a TRD model and the code that runs it (internal: no stability promise).

- :mod:`.reference`: the map in plain NumPy, written to be read next to the paper; every fast
  kernel is tested against it;
- :mod:`.influence`: the influence functions (Gaussian RBF sums) and the tables the fast
  kernels read them from;
- :mod:`.numba_cpu` (with the generated :mod:`._unrolled` row correlations): the CPU kernels;
- :mod:`.cuda`: the CUDA sources and their CuPy launchers;
- :mod:`.engine`: :func:`~.engine.run_model`, which prepares a model once (tables, fingerprint)
  and sends an image to one of the backends above, whole or in tiles.
"""

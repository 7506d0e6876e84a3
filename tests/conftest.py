"""Shared test settings."""

import os

# Tests run on the CPU, with numba's compiled kernels cached between runs.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault(
    "NUMBA_CACHE_DIR",
    os.path.join(os.path.dirname(os.path.dirname(__file__)), ".numba_cache"))
os.environ.setdefault("MPLBACKEND", "Agg")

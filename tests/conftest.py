"""Shared test settings and fixtures."""

import os
import pathlib

import pytest

# Tests run on the CPU, with numba's compiled kernels cached between runs.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault(
    "NUMBA_CACHE_DIR",
    os.path.join(os.path.dirname(os.path.dirname(__file__)), ".numba_cache"))
os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture
def tiny_config():
  """Factory of a digits config with a small MLP: seconds per run on a CPU.

  ``tiny_config(**overrides)`` applies dotted overrides, e.g.
  ``tiny_config(objective="softmax", **{"nngk.k": 5})``.
  """
  from nngk_jax import train

  root = pathlib.Path(__file__).resolve().parent.parent

  def make(**overrides):
    config = train.load_config(root / "experiments" / "configs" / "digits.py")
    config.model.backbone = "mlp"
    config.model.backbone_kwargs = {"hidden": (32,)}
    config.model.embed_dim = 8
    config.nngk.k = 8
    config.nngk.graph_backend = "exact"
    config.batch_size = 64
    config.samples_per_class = 16
    config.num_epochs = 2
    config.progress = False
    config.nmi = False
    train.apply_overrides(config, [f"{k}={v!r}" for k, v in overrides.items()])
    return config

  return make

"""Shared test settings and fixtures."""

import os
import pathlib

import numpy as np
import pytest

from nngk_jax import configs

# Tests run on the CPU, with numba's compiled kernels cached between runs.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault(
    "NUMBA_CACHE_DIR",
    os.path.join(os.path.dirname(os.path.dirname(__file__)), ".numba_cache"))
os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(scope="session")
def tiny_config():
  """Factory of a digits config with a small MLP: seconds per run on a CPU.

  ``tiny_config(**overrides)`` applies dotted overrides, e.g.
  ``tiny_config(objective="softmax", **{"nngk.k": 5})``; each call builds a
  fresh config, so module-scoped fixtures (one trained run per module) may
  use it too.
  """
  def make(**overrides):
    config = configs.load_config(configs.CONFIG_DIR / "digits.py")
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
    configs.apply_overrides(config, [f"{k}={v!r}" for k, v in overrides.items()])
    return config

  return make


def _encoded(value: int, shape=(12, 10)) -> bytes:
  """A PNG of one grey level, as TFDS stores images (encoded bytes)."""
  import io
  from PIL import Image
  buffer = io.BytesIO()
  Image.fromarray(np.full(shape + (3,), value, np.uint8)).save(buffer, "PNG")
  return buffer.getvalue()


# TFDS labels per split of the fake data: several images per class, classes
# on both sides of each benchmark's class boundary.
FAKE_LABELS = {
    "cub": {"train": [0, 0, 0, 1, 1, 1, 150, 150, 150],
            "test": [2, 2, 2, 150, 199, 199, 199]},
    "cars196": {"train": [0, 0, 0, 97, 97, 98, 98, 98],
                "test": [5, 5, 5, 195, 195, 195]},
    "sop": {"train": [0, 0, 0, 1, 1, 1, 2, 2],
            "test": [3, 3, 3, 4, 4, 4, 5, 5, 5]},
    # Classification: both splits hold every class (CIFAR-100's test all
    # but class 98).
    "cifar10": {"train": [c for c in range(10) for _ in range(3)],
                "test": list(range(9, -1, -1))},
    "cifar100": {"train": list(range(100)) + list(range(0, 100, 7)),
                 "test": [c for c in range(100) if c != 98]},
}


def _fake_tfds(*names):
  """mock_data serving FAKE_LABELS[name] with encoded images, for each of
  ``names`` (the builder asked for picks one)."""
  from nngk_jax.data import benchmarks
  import tensorflow_datasets as tfds
  by_builder = {benchmarks.BENCHMARKS[n].builder: n for n in names}

  def as_data_source(builder, split, decoders=None, **kwargs):
    del decoders, kwargs
    name = by_builder[builder.name]
    label_key = benchmarks.BENCHMARKS[name].label_key
    return [{"image": _encoded(17 * i % 256), label_key: label,
             "id": f"{split}-{i}"}
            for i, label in enumerate(FAKE_LABELS[name][str(split)])]

  return tfds.testing.mock_data(policy=tfds.testing.MockPolicy.USE_CODE,
                                as_data_source_fn=as_data_source)


@pytest.fixture
def fake_tfds():
  """``fake_tfds(*names)``: a context in which ``tfds.data_source`` serves
  small fake CUB / Cars196 / SOP / CIFAR data (``FAKE_LABELS``, PNG-encoded
  images) for the benchmarks named;
  ``fake_tfds.labels`` is ``FAKE_LABELS``.
  """
  pytest.importorskip("tensorflow_datasets")
  _fake_tfds.labels = FAKE_LABELS
  return _fake_tfds

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


# --------------------------------------------------------------------------
# Scheduling under pytest-xdist (`make test`: `-n 2`).
#
# The suite's wall time is set by its longest tests, which sit late in the
# collection (test_multihost, test_notebooks, test_parallel, test_train): with
# xdist's default `--dist load` they ran last, one worker finishing them while
# the other idled. Under `-n N` (default `--dist`) the tests below are sent
# first, longest first, one at a time to whichever worker is free; the other
# tests follow module by module (a module's fixtures built once), largest
# modules first. Only the order changes: every test still runs.
#
# Seconds each took on a 2-core CPU with a cold numba cache (`--durations`);
# a key names a test or, ending in "[", each of its parameter sets (the
# first key that matches counts).
SLOW_TESTS = {
    "tests/test_multihost.py::test_two_processes_train_like_one": 70,
    "tests/test_notebooks.py::test_notebook_runs[03_impostor_search.ipynb]": 45,
    "tests/test_parallel.py::test_eight_devices_train_like_one": 45,
    "tests/test_train.py::test_sigkill_mid_epoch_then_rerun_equals_uninterrupted_run": 39,
    "tests/test_pretrained.py::test_paper_recipe_trains_from_pretrained_weights": 34,
    "tests/test_notebooks.py::test_notebook_runs[01_quickstart.ipynb]": 32,
    "tests/test_notebooks.py::test_notebook_runs[02_image_pipeline.ipynb]": 23,
    "tests/test_continual.py::test_every_method_runs_and_learns_its_first_task[continual_nngk]": 21,
    "tests/test_continual.py::test_every_method_runs_and_learns_its_first_task[": 6,
    "tests/test_train.py::test_classification_protocol_reports_both_accuracies": 18,
    "tests/test_train.py::test_sigterm_mid_epoch_exits_143_then_rerun_equals_uninterrupted_run": 17,
    "tests/test_train.py::test_cli_trains_on_an_image_folder": 16,
    "tests/test_biased.py::test_short_training_on_digits_beats_chance": 14,
    "tests/test_impostor.py::test_loose_run_moves_its_centres_and_resumes_exactly": 14,
    "tests/test_train.py::test_runaway_parameters_stop_training_and_a_lower_rate_resumes": 13,
    "tests/test_objectives.py::test_objective_trains_and_loss_decreases[": 5,
    "tests/test_train.py::test_end_to_end_writes_outputs_and_learns[": 8,
    "tests/test_train_benchmarks.py::test_whole_loop_on_fake_benchmark[": 7,
}
# Tests sent to ONE worker, together, ahead of the others: each process
# that builds a PyNNDescent graph compiles NN-descent (30-45 s; numba cannot
# cache it on disk), and on a cold cache also PyNNDescent's other kernels
# (about 2 minutes). Seconds: both tests, cold cache.
PYNNDESCENT_TESTS = (
    "tests/test_neighbours.py::test_pynndescent_backend",
    "tests/test_metrics.py::test_pynndescent_search_close_to_exact",
)
PYNNDESCENT_SECONDS = 150


def _schedule_unit(nodeid: str) -> tuple[str, float | None]:
  """The unit of work ``nodeid`` is sent in, and its expected seconds
  (None: a module's fast tests)."""
  if nodeid in PYNNDESCENT_TESTS:
    return "pynndescent", PYNNDESCENT_SECONDS
  for key, seconds in SLOW_TESTS.items():
    if nodeid == key or (key.endswith("[") and nodeid.startswith(key)):
      return nodeid, seconds
  return nodeid.split("::", 1)[0], None


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config, items):
  """On an xdist worker: the collection in the order it is scheduled in
  (``SLOW_TESTS`` longest first, then modules with the most tests first;
  a module's tests keep their order). Other runs keep pytest's order."""
  if not hasattr(config, "workerinput"):
    return
  units = [_schedule_unit(item.nodeid) for item in items]
  size: dict[str, int] = {}
  for unit, _ in units:
    size[unit] = size.get(unit, 0) + 1
  first = {}
  for i, (unit, _) in enumerate(units):
    first.setdefault(unit, i)
  order = sorted(range(len(items)), key=lambda i: (
      units[i][1] is None, -(units[i][1] or 0), -size[units[i][0]],
      first[units[i][0]], i))
  items[:] = [items[i] for i in order]


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
  """``-n N`` with the default ``--dist load``: units of ``_schedule_unit``
  (a slow test, the PyNNDescent tests, a module's other tests), sent in the
  collection's order (see ``pytest_collection_modifyitems``), the next to
  the first worker with at most 2 tests left."""
  if config.getoption("dist") != "load":
    return None
  from xdist.scheduler import LoadScopeScheduling

  class SlowFirstScheduling(LoadScopeScheduling):

    def _split_scope(self, nodeid):
      return _schedule_unit(nodeid)[0]

    def schedule(self):
      # Units in the collection's order, not reordered by their sizes.
      reorder = self.config.option.loadscopereorder
      self.config.option.loadscopereorder = False
      try:
        super().schedule()
      finally:
        self.config.option.loadscopereorder = reorder

  return SlowFirstScheduling(config, log)


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

"""Tests of the centre bank component (nngk_jax.bank)."""

import jax.numpy as jnp
import numpy as np
import pytest

from nngk_jax import bank as banklib
from nngk_jax import checks
from nngk_jax import neighbours as neighbourlib


def _bank(n=30, dim=4, **kwargs):
  labels = np.arange(n) % 5
  options = dict(k=6, graph_backend="exact", log_weights=True)
  options.update(kwargs)
  return banklib.CentreBank(labels, dim, **options), labels


def _points(n=30, dim=4, seed=0):
  return np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)


def test_refresh_follows_the_schedule_and_records_what_it_did():
  bank, _ = _bank(refresh_every=2)
  state = bank.init_state()
  calls = []

  def embed(seed):
    def run():
      calls.append(seed)
      return _points(seed=seed)
    return run

  state, record = bank.refresh(state, 0, embed(0))
  np.testing.assert_array_equal(np.asarray(state.centres), _points(seed=0))
  assert set(record) == {"refresh_seconds", "graph_seconds",
                         "missing_positive_fraction", "positive_share"}
  state, record = bank.refresh(state, 1, embed(1))  # not due: nothing to do
  assert record == {} and calls == [0]
  state, record = bank.refresh(state, 2, embed(2))
  assert calls == [0, 2] and "graph_seconds" in record
  np.testing.assert_array_equal(np.asarray(state.centres), _points(seed=2))


def test_resumed_bank_rebuilds_its_graph_without_embedding():
  bank, _ = _bank(refresh_every=3)
  state = bank.init_state().replace(centres=jnp.asarray(_points()))
  state, record = bank.refresh(state, 1, lambda: pytest.fail("no refresh"))
  assert set(record) == {"graph_seconds", "missing_positive_fraction",
                         "positive_share"}
  assert bank.batch_extras(np.array([0]))["neighbour_idx"].shape == (1, 6)


def test_batch_extras_match_a_loop_over_the_exact_neighbours():
  bank, labels = _bank()
  points = _points()
  state, record = bank.refresh(bank.init_state(), 0, lambda: points)
  index = np.array([3, 17, 29])
  extras = bank.batch_extras(index)
  missing = 0
  for i in range(len(points)):
    d2 = ((points - points[i]) ** 2).sum(1)
    d2[i] = np.inf
    nearest = np.argsort(d2)[:6]
    has = bool((labels[nearest] == labels[i]).any())
    missing += not has
    if i in index:
      row = list(index).index(i)
      assert sorted(extras["neighbour_idx"][row]) == sorted(nearest)
      assert extras["has_positive"][row] == has
  assert record["missing_positive_fraction"] == pytest.approx(
      missing / len(points))
  # positive_share: a loop over the same exact neighbours.
  shares = []
  for i in range(len(points)):
    d2 = ((points - points[i]) ** 2).sum(1)
    d2[i] = np.inf
    others = int((labels == labels[i]).sum()) - 1
    if others:
      shares.append((labels[np.argsort(d2)[:6]] == labels[i]).sum() / others)
  assert record["positive_share"] == pytest.approx(np.mean(shares))


def test_positive_share_skips_singletons_and_appended_columns():
  # Centres 0-2 of class 0, 3 alone in class 1. K = 1 nearest, then one
  # appended same-class column, which must not count.
  graph = neighbourlib.NeighbourGraph(
      np.array([[1, 2], [3, 0], [3, 0], [0, 0]], np.int32),
      np.array([[True, True], [True, True], [True, True], [True, False]]),
      num_same_class=1)
  labels = np.array([0, 0, 0, 1])
  # Rows 0-2 have 2 others: 1/2, 0/2, 0/2; row 3 has none (left out).
  assert banklib.positive_share(graph, labels) == pytest.approx(1 / 6)
  alone = neighbourlib.NeighbourGraph(np.array([[1], [0]], np.int32),
                                      np.ones((2, 1), bool))
  assert np.isnan(banklib.positive_share(alone, np.array([0, 1])))


def test_batch_extras_before_refresh_is_an_error():
  bank, _ = _bank()
  with pytest.raises(RuntimeError, match="before refresh"):
    bank.batch_extras(np.array([0]))


def test_bank_without_graph_has_no_extras_and_no_parameters():
  bank, _ = _bank(k=None, log_weights=False)
  state, record = bank.refresh(bank.init_state(), 0, _points)
  assert set(record) == {"refresh_seconds"}
  assert bank.batch_extras(np.array([1, 2])) == {}
  assert bank.init_params() == {} and bank.statistics({}) == {}
  assert bank.view(state, {}).log_weights is None


def test_non_finite_embeddings_stop_the_refresh_naming_the_epoch():
  bank, _ = _bank()
  points = _points()
  points[7, 2] = np.nan
  with pytest.raises(checks.TrainingDivergedError,
                     match=r"1 of 30 centre embeddings .* epoch 4 .*row: 7"):
    bank.refresh(bank.init_state(), 3, lambda: points)


@pytest.mark.parametrize("kwargs, match", [
    (dict(k=30), r"nngk.k=30 neighbours need a bank of more than 30"),
    (dict(k=0), r"nngk.k must be a positive integer"),
    (dict(refresh_every=0), r"nngk.refresh_every must be a positive integer"),
    (dict(batch_centre_momentum=1.5), r"batch_centre_momentum must lie"),
    (dict(weights_learning_rate=0.0), r"weights_learning_rate must be pos"),
])
def test_bad_settings_are_clear_errors(kwargs, match):
  with pytest.raises(ValueError, match=match):
    _bank(**kwargs)


def test_view_stops_gradients_into_stored_centres_and_reads_weights():
  import jax
  bank, _ = _bank()
  state = bank.init_state().replace(centres=jnp.asarray(_points()))
  params = {"bank": bank.init_params()}
  grad = jax.grad(lambda c: bank.view(state.replace(centres=c),
                                      params).centres.sum())(state.centres)
  np.testing.assert_array_equal(np.asarray(grad), 0.0)
  assert bank.view(state, params).log_weights.shape == (30,)
  stats = bank.statistics(params)
  assert stats == {"log_weight_std": 0.0, "log_weight_min": 0.0,
                   "log_weight_max": 0.0}


def test_after_step_is_identity_without_momentum():
  bank, _ = _bank()
  state = bank.init_state()
  batch = {"index": jnp.array([0, 1]), "valid": jnp.array([True, True])}
  assert bank.after_step(state, jnp.ones((2, 4)), batch) is state
  moving, _ = _bank(batch_centre_momentum=0.5)
  moved = moving.after_step(state, jnp.ones((2, 4)), batch)
  np.testing.assert_allclose(np.asarray(moved.centres)[:2], 0.5)
  np.testing.assert_array_equal(np.asarray(moved.centres)[2:], 0.0)


def test_auto_backend_is_exact_for_a_small_bank_on_the_cpu():
  from nngk_jax import neighbours
  bank, _ = _bank(graph_backend="auto")
  assert bank.graph_backend == "exact"
  assert neighbours.resolve_backend(
      "auto", neighbours.AUTO_EXACT_MAX_CENTRES + 1) == "pynndescent"
  state, _ = bank.refresh(bank.init_state(), 0, _points)
  assert bank.batch_extras(np.array([0]))["neighbour_idx"].shape == (1, 6)


def test_auto_graph_equals_the_exact_graph():
  from nngk_jax import neighbours
  points = _points(n=50)
  auto = neighbours.build_neighbour_graph(points, k=5, backend="auto")
  exact = neighbours.build_neighbour_graph(points, k=5, backend="exact")
  np.testing.assert_array_equal(auto.indices, exact.indices)


# ----------------------------------------------------------------------------
# Background graph rebuild, swapped at a step boundary.


def _slow_builder(monkeypatch, gate, built):
  """build_neighbour_graph that fills its rows one at a time, waiting on
  ``gate`` halfway: a graph object exists only once every row is written."""
  from nngk_jax import neighbours as neighbourlib
  real = neighbourlib.build_neighbour_graph

  def build(centres, **kwargs):
    full = real(centres, **kwargs)
    indices = np.full_like(full.indices, -1)
    for row in range(len(indices)):
      if row == len(indices) // 2:
        gate.wait(timeout=30)
      indices[row] = full.indices[row]
    built.append(indices)
    return neighbourlib.NeighbourGraph(indices, full.mask,
                                       full.num_same_class)

  monkeypatch.setattr(neighbourlib, "build_neighbour_graph", build)


def test_background_rebuild_swaps_whole_graphs_at_a_step_boundary(
    monkeypatch):
  import threading
  bank, _ = _bank(background_graph=True)
  state, record = bank.refresh(bank.init_state(), 0, lambda: _points(seed=0))
  old = bank.graph.indices.copy()
  gate, built = threading.Event(), []
  _slow_builder(monkeypatch, gate, built)
  state, record = bank.refresh(state, 1, lambda: _points(seed=1))
  assert record["graph_seconds"] == 0.0  # nothing exposed
  np.testing.assert_array_equal(np.asarray(state.centres), _points(seed=1))
  every_row = np.arange(30)
  # While the build is half done, every batch gets the old graph's rows.
  for _ in range(5):
    rows = bank.batch_extras(every_row)["neighbour_idx"]
    np.testing.assert_array_equal(rows, old)
  gate.set()
  bank._pending.result(timeout=30)  # built, not yet installed
  rows = bank.batch_extras(every_row)["neighbour_idx"]  # the boundary
  new = built[0]
  assert not np.array_equal(new, old) and np.all(new >= 0)
  np.testing.assert_array_equal(rows, new)
  stats = bank.statistics({"bank": bank.init_params()})
  assert stats["graph_swap_step"] == 5
  assert stats["graph_seconds_background"] > 0
  assert "graph_swap_step" not in bank.statistics(
      {"bank": bank.init_params()})  # reported once


def test_background_graph_equals_the_graph_built_in_line():
  background, _ = _bank(background_graph=True)
  inline, _ = _bank(background_graph=False)
  for bank in (background, inline):
    state, _ = bank.refresh(bank.init_state(), 0, lambda: _points(seed=0))
    bank.refresh(state, 1, lambda: _points(seed=3))
  background.wait_for_graph()
  np.testing.assert_array_equal(background.graph.indices, inline.graph.indices)
  np.testing.assert_array_equal(
      background.batch_extras(np.arange(30))["has_positive"],
      inline.batch_extras(np.arange(30))["has_positive"])


def test_a_failed_background_build_is_raised_at_the_next_batch(monkeypatch):
  from nngk_jax import neighbours as neighbourlib
  bank, _ = _bank(background_graph=True)
  state, _ = bank.refresh(bank.init_state(), 0, lambda: _points(seed=0))

  def broken(*args, **kwargs):
    raise MemoryError("graph too large")

  monkeypatch.setattr(neighbourlib, "build_neighbour_graph", broken)
  bank.refresh(state, 1, lambda: _points(seed=1))
  bank._pending.exception(timeout=30)
  with pytest.raises(MemoryError, match="graph too large"):
    bank.batch_extras(np.array([0]))


def test_background_graph_auto_follows_the_backend_and_the_device(
    monkeypatch):
  assert not _bank(background_graph="auto")[0].background_graph  # exact
  labels = np.arange(30) % 5

  def approx():
    return banklib.CentreBank(labels, 4, k=6, graph_backend="pynndescent",
                              background_graph="auto", warm_up=False)

  assert not approx().background_graph  # the step runs on this CPU
  monkeypatch.setattr(banklib.jax, "default_backend", lambda: "gpu")
  assert approx().background_graph
  with pytest.raises(ValueError, match="background_graph must be"):
    _bank(background_graph="yes")


def test_a_build_slower_than_an_epoch_is_installed_before_the_next(
    monkeypatch):
  import threading
  bank, _ = _bank(background_graph=True)
  state, _ = bank.refresh(bank.init_state(), 0, lambda: _points(seed=0))
  gate, built = threading.Event(), []
  _slow_builder(monkeypatch, gate, built)
  state, _ = bank.refresh(state, 1, lambda: _points(seed=1))
  threading.Timer(0.2, gate.set).start()  # finishes while refresh 2 waits
  state, _ = bank.refresh(state, 2, lambda: _points(seed=2))
  # The epoch-1 graph arrived before the epoch-2 build was started.
  assert bank._pending is not None
  np.testing.assert_array_equal(bank.graph.indices, built[0])
  bank.wait_for_graph()
  np.testing.assert_array_equal(bank.graph.indices, built[1])

"""Tests of the centre bank component (nngk_jax.bank)."""

import jax.numpy as jnp
import numpy as np
import pytest

from nngk_jax import bank as banklib
from nngk_jax import checks


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
                         "missing_positive_fraction"}
  state, record = bank.refresh(state, 1, embed(1))  # not due: nothing to do
  assert record == {} and calls == [0]
  state, record = bank.refresh(state, 2, embed(2))
  assert calls == [0, 2] and "graph_seconds" in record
  np.testing.assert_array_equal(np.asarray(state.centres), _points(seed=2))


def test_resumed_bank_rebuilds_its_graph_without_embedding():
  bank, _ = _bank(refresh_every=3)
  state = bank.init_state().replace(centres=jnp.asarray(_points()))
  state, record = bank.refresh(state, 1, lambda: pytest.fail("no refresh"))
  assert set(record) == {"graph_seconds", "missing_positive_fraction"}
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

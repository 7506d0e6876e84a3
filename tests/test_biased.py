"""Tests of nngk_jax.biased: the NNGK layer, its gate, early exit, training."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.test_util import check_grads

from nngk_jax import biased
from nngk_jax import configs
from nngk_jax import data


def numpy_layer(phi, stored_phi, stored_z, k, sigma, exclude=None):
  """The NNGK layer, query by query, neighbour by neighbour, in float64."""
  z1 = np.zeros((len(phi), stored_z.shape[1]))
  gate = np.zeros(len(phi))
  for b, query in enumerate(phi):
    candidates = []
    for i, row in enumerate(stored_phi):
      if exclude is not None and i == exclude[b]:
        continue
      candidates.append((sum((q - r) ** 2 for q, r in zip(query, row)), i))
    candidates.sort()
    total = 0.0
    for distance, i in candidates[:k]:
      kernel = np.exp(-distance / (2 * sigma ** 2))
      z1[b] += kernel * stored_z[i]
      total += kernel
    z1[b] /= total
    gate[b] = total / k
  return z1, gate


@pytest.fixture(name="bank")
def fixture_bank():
  rng = np.random.default_rng(0)
  return {"phi": rng.normal(size=(5, 3)), "stored_phi": rng.normal(size=(12, 3)),
          "stored_z": rng.normal(size=(12, 4))}


@pytest.mark.parametrize("with_exclude", [False, True])
def test_layer_matches_numpy_loop_in_float64(bank, with_exclude):
  exclude = np.array([0, 3, 11, 5, 7]) if with_exclude else None
  expected_z1, expected_gate = numpy_layer(
      bank["phi"], bank["stored_phi"], bank["stored_z"], 4, 0.8, exclude)
  with jax.enable_x64(True):
    layer = jax.jit(lambda p, s, z, e: biased.nngk_layer(
        p, s, z, k=4, sigma=0.8, exclude=e))
    z1, gate, idx = layer(jnp.asarray(bank["phi"]),
                          jnp.asarray(bank["stored_phi"]),
                          jnp.asarray(bank["stored_z"]),
                          None if exclude is None else jnp.asarray(exclude))
    assert z1.dtype == jnp.float64
  np.testing.assert_allclose(np.asarray(z1), expected_z1, rtol=1e-12)
  np.testing.assert_allclose(np.asarray(gate), expected_gate, rtol=1e-12)
  if exclude is not None:
    assert not np.any(np.asarray(idx) == exclude[:, None])


def test_layer_gradient_matches_finite_differences(bank):
  with jax.enable_x64(True):
    stored_phi = jnp.asarray(bank["stored_phi"])
    stored_z = jnp.asarray(bank["stored_z"])

    def f(phi):
      z1, gate, _ = biased.nngk_layer(phi, stored_phi, stored_z, k=4,
                                      sigma=0.8)
      return jnp.sum(jnp.sin(z1)) + jnp.sum(gate ** 2)

    check_grads(f, (jnp.asarray(bank["phi"]),), order=2, modes=("rev",),
                eps=1e-5)
    grad = jax.grad(f)(jnp.asarray(bank["phi"]))
    assert float(jnp.max(jnp.abs(grad))) > 1e-3  # the gradient is not zero


def test_gate_in_unit_interval_and_one_on_coincident_neighbours():
  rng = np.random.default_rng(1)
  phi = rng.normal(size=(6, 2)).astype(np.float32) * 3
  stored = rng.normal(size=(20, 2)).astype(np.float32)
  _, gate, _ = biased.nngk_layer(phi, stored, rng.normal(size=(20, 3)),
                                 k=5, sigma=0.5)
  assert np.all((np.asarray(gate) >= 0) & (np.asarray(gate) <= 1))
  # Five stored copies of the query (and one far row): g = 1 exactly, and
  # z1 is the mean of their z.
  query = np.array([[0.3, -0.2]], np.float32)
  coincident = np.concatenate([np.repeat(query, 5, 0), [[9.0, 9.0]]])
  stored_z = np.arange(18, dtype=np.float32).reshape(6, 3)
  z1, gate, _ = biased.nngk_layer(query, coincident, stored_z, k=5, sigma=0.1)
  assert float(gate[0]) == 1.0
  np.testing.assert_allclose(np.asarray(z1[0]), stored_z[:5].mean(0),
                             rtol=1e-6)


def test_far_away_phi_gives_zero_gate_finite_z_and_gradient():
  stored_phi = jnp.array([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]])
  stored_z = jnp.array([[1.0], [2.0], [3.0]])
  far = jnp.array([[1e4, 1e4]])
  z1, gate, _ = biased.nngk_layer(far, stored_phi, stored_z, k=3, sigma=0.1)
  assert float(gate[0]) < 1e-30
  assert np.all(np.isfinite(np.asarray(z1)))
  # A convex combination of the neighbours' z, all weight on the nearest.
  assert 1.0 <= float(z1[0, 0]) <= 3.0
  grad = jax.grad(lambda p: jnp.sum(biased.nngk_layer(
      p, stored_phi, stored_z, k=3, sigma=0.1)[0]))(far)
  assert np.all(np.isfinite(np.asarray(grad)))


def test_k_larger_than_bank_is_an_error():
  stored = jnp.zeros((4, 2))
  with pytest.raises(ValueError, match=r"k=5 .* 4 stored"):
    biased.nngk_layer(jnp.zeros((1, 2)), stored, jnp.zeros((4, 3)), k=5,
                      sigma=1.0)
  with pytest.raises(ValueError, match="own row"):
    biased.nearest_stored(jnp.zeros((1, 2)), stored, k=4,
                          exclude=jnp.array([0]))
  with pytest.raises(ValueError, match="2-D but stored_phi is 3-D"):
    biased.nearest_stored(jnp.zeros((1, 2)), jnp.zeros((4, 3)), k=1)


def test_gated_mix_and_loss_reduce_to_cross_entropy():
  z1, z2 = jnp.ones((2, 3)), jnp.zeros((2, 3))
  np.testing.assert_allclose(
      biased.gated_mix(z1, z2, jnp.array([0.0, 1.0])), [[0, 0, 0], [1, 1, 1]])
  logits = jnp.array([[2.0, -1.0], [0.5, 0.3]])
  labels = jnp.array([0, 1])
  expected = -jax.nn.log_softmax(logits)[jnp.arange(2), labels]
  plain = biased.biased_loss({"logits": logits, "logits_z2": logits}, labels,
                             None, num_classes=2, sigma=1.0)
  np.testing.assert_allclose(plain, expected, rtol=1e-6)


def test_build_network_refuses_a_split_that_empties_a_stage():
  for split in (0, 3):
    with pytest.raises(ValueError, match="model.split"):
      biased.build_network(channels=(4, 8, 16), split=split, embed_dim=4,
                           phi_dim=2, projector_hidden=4, num_classes=3)


@pytest.fixture(name="tiny", scope="module")
def fixture_tiny():
  """A random tiny network, stored pairs from random images, a test batch."""
  network = biased.build_network(channels=(4, 8), split=1, embed_dim=6,
                                 phi_dim=3, projector_hidden=8, num_classes=5,
                                 normalize_phi=False)
  variables = network.init(jax.random.key(0), (8, 8, 1))
  rng = np.random.default_rng(0)
  train_images = rng.normal(size=(40, 8, 8, 1)).astype(np.float32)
  embedded = biased.embed_split(network, variables, train_images, 16)
  stored = biased.StoredPairs(phi=jnp.asarray(embedded["phi"]),
                              z=jnp.asarray(embedded["z2"]),
                              labels=jnp.asarray(rng.integers(0, 5, 40)))
  images = rng.normal(size=(21, 8, 8, 1)).astype(np.float32)
  images[:7] = train_images[:7] + 0.01  # close to stored rows: high gates
  return network, variables, stored, images


def test_early_exit_equals_full_model_and_skips_f2(tiny):
  network, variables, stored, images = tiny
  phi_scale = float(jnp.std(stored.phi))
  options = {"k": 4, "sigma": phi_scale}
  full, _ = biased.forward(network, variables, jnp.asarray(images), stored,
                           **options)
  gate = np.asarray(full["gate"])
  tau = float(np.median(gate))
  exit_ = biased.EarlyExit(network, variables, stored, batch_size=8,
                           **options)
  passed = []
  run_f2 = exit_._f2  # pylint: disable=protected-access

  def spy(h, rows):
    passed.append(np.asarray(rows))
    return run_f2(h, rows)

  exit_._f2 = spy  # pylint: disable=protected-access
  ran = gate <= tau
  assert 0 < ran.sum() < len(gate)
  for start in range(0, len(images), 8):
    batch = images[start:start + 8]
    valid = len(batch)
    batch = np.concatenate([batch, np.repeat(batch[-1:], 8 - valid, 0)])
    calls = len(passed)
    logits, exit_gate = exit_.predict_batch(batch, tau, valid)
    logits, exit_gate = logits[:valid], exit_gate[:valid]
    np.testing.assert_allclose(exit_gate, gate[start:start + valid],
                               rtol=1e-6, atol=1e-7)
    here = ran[start:start + valid]
    np.testing.assert_allclose(
        logits[here], np.asarray(full["logits"])[start:start + valid][here],
        rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        logits[~here],
        np.asarray(full["logits_z1"])[start:start + valid][~here],
        rtol=1e-5, atol=1e-5)
    # f2 saw exactly this batch's rows with g <= tau, padded to a bucket
    # by repeating the last one; no call at all when there are none.
    if not here.any():
      assert len(passed) == calls
      continue
    assert len(passed) == calls + 1
    rows = passed[-1]
    assert len(rows) in exit_.buckets
    count = int(here.sum())
    np.testing.assert_array_equal(rows[:count], np.flatnonzero(here))
    assert np.all(rows[count:] == rows[count - 1])
  assert exit_.f2_real_rows == ran.sum()
  assert exit_.f2_rows == sum(len(rows) for rows in passed) < len(images)


def test_early_exit_extreme_thresholds(tiny):
  network, variables, stored, images = tiny
  options = {"k": 4, "sigma": 0.5}
  full, _ = biased.forward(network, variables, jnp.asarray(images), stored,
                           **options)
  exit_ = biased.EarlyExit(network, variables, stored, batch_size=8,
                           **options)
  logits, _ = exit_.predict(images, -1.0)  # every row exits early
  assert exit_.f2_calls == 0 and exit_.f2_rows == 0
  np.testing.assert_allclose(logits, full["logits_z1"], rtol=1e-5, atol=1e-5)
  logits, _ = exit_.predict(images, 1.0)  # no row exits: the full model
  assert exit_.f2_real_rows == len(images)
  np.testing.assert_allclose(logits, full["logits"], rtol=1e-5, atol=1e-5)
  for tau in np.linspace(0, 1, 7):  # many counts, one compile per bucket
    exit_.predict(images, float(tau))
  assert exit_._f2_jit._cache_size() <= len(exit_.buckets)  # pylint: disable=protected-access


def test_stage_flops_split_the_plain_network(tiny):
  network, variables, stored, _ = tiny
  flops = biased.stage_flops(network, variables, stored, (8, 8, 1), k=4,
                             sigma=0.5, batch_size=8)
  assert all(value > 0 for value in flops.values())
  # The first stage adds p and the search to f1; with them, f2 is the rest.
  assert flops["first_stage"] + flops["f2"] > flops["plain"]


def test_short_training_on_digits_beats_chance():
  config = configs.load_config(configs.CONFIG_DIR / "biased.py")
  config.num_epochs = 3
  config.progress = False
  dataset = data.load_dataset(config.dataset, **dict(config.data))
  _, state, history = biased.train(config, dataset)
  final = history[-1]
  # Ten classes: chance is 0.1.
  assert final["accuracy"] > 0.8, final
  assert final["accuracy_z1"] > 0.5, final  # the stored pairs alone
  assert 0.0 <= final["mean_gate"] <= 1.0
  assert state.stored.phi.shape == (len(dataset.train), config.model.phi_dim)
  np.testing.assert_allclose(np.linalg.norm(state.stored.phi, axis=1), 1.0,
                             rtol=1e-5)
  assert np.isfinite(float(optax.global_norm(state.params)))


def test_stored_z_mix_is_each_rows_gated_mix_without_itself(tiny):
  network, variables, _, images = tiny
  config = configs.load_config(configs.CONFIG_DIR / "biased.py")
  config.biased.k, config.biased.sigma = 3, 0.7
  config.eval_batch_size = 8  # several batches, the last one short
  labels = np.zeros(len(images), np.int32)
  config.biased.stored_z = "z2"
  plain = biased.refresh_stored(network, variables, images, labels, config)
  config.biased.stored_z = "z"
  mixed = biased.refresh_stored(network, variables, images, labels, config)
  np.testing.assert_array_equal(mixed.phi, plain.phi)
  expected = []
  for row in range(len(images)):
    others = np.delete(np.arange(len(images)), row)
    z1, gate = numpy_layer(np.asarray(plain.phi[row:row + 1], np.float64),
                           np.asarray(plain.phi, np.float64)[others],
                           np.asarray(plain.z, np.float64)[others], 3, 0.7)
    expected.append(gate[0] * z1[0] + (1 - gate[0]) * np.asarray(plain.z[row]))
  np.testing.assert_allclose(mixed.z, np.array(expected), rtol=1e-4,
                             atol=1e-5)


def test_config_errors_name_the_field():
  config = configs.load_config(configs.CONFIG_DIR / "biased.py")
  config.biased.stored_z = "logits"
  with pytest.raises(ValueError, match="biased.stored_z"):
    biased.make_train_step(None, config, 10)

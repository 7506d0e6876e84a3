"""Impostor networks: the loss, the sparse centre updates and the variants."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from nngk_jax import impostor as impostorlib
from nngk_jax import loss as losses
from nngk_jax import train


def _loop_loss(emb, labels, centres, centre_labels, nbr, own, sigma, tie):
  """Plain-loop impostor loss (float64), every neighbour valid and at least
  one same-class neighbour per row."""
  out = []
  for b in range(len(emb)):
    same, total = 0.0, 0.0
    for j in nbr[b]:
      k = math.exp(-np.sum((emb[b] - centres[j]) ** 2) / (2 * sigma ** 2))
      total += k
      if centre_labels[j] == labels[b]:
        same += k
    out.append(-math.log(same / total)
               + tie * np.sum((emb[b] - centres[own[b]]) ** 2))
  return np.array(out)


def _problem(seed=0, batch=4, n=12, k=5, dim=3):
  rng = np.random.default_rng(seed)
  centres = rng.normal(size=(n, dim))
  centre_labels = np.arange(n) % 3
  own = rng.choice(n, batch, replace=False)
  emb = centres[own] + 0.3 * rng.normal(size=(batch, dim))
  labels = centre_labels[own]
  nbr = np.stack([rng.choice(np.setdiff1d(np.arange(n), [o]), k,
                             replace=False) for o in own])
  for b in range(batch):  # one same-class neighbour at least
    if not (centre_labels[nbr[b]] == labels[b]).any():
      nbr[b, 0] = next(j for j in range(n)
                       if centre_labels[j] == labels[b] and j != own[b])
  return emb, labels, centres, centre_labels, nbr, own


def _jax_loss(emb, labels, centres, centre_labels, nbr, own, sigma, tie):
  return losses.impostor_loss(
      jnp.asarray(emb, jnp.float32), jnp.asarray(labels, jnp.int32),
      jnp.asarray(centres, jnp.float32), jnp.asarray(centre_labels, jnp.int32),
      jnp.asarray(nbr, jnp.int32), jnp.asarray(own, jnp.int32), sigma=sigma,
      tie=tie)


@pytest.mark.parametrize("tie", [0.0, 0.7])
def test_loss_matches_a_loop_reference(tie):
  problem = _problem()
  expected = _loop_loss(*problem, sigma=0.8, tie=tie)
  np.testing.assert_allclose(_jax_loss(*problem, sigma=0.8, tie=tie),
                             expected, rtol=1e-5, atol=1e-6)


def test_gradients_match_finite_differences_of_the_loop_reference():
  emb, labels, centres, centre_labels, nbr, own = _problem(seed=1, batch=3,
                                                         n=20, k=3)
  sigma, tie = 0.9, 0.5

  def total(e, c):
    return _jax_loss(e, labels, c, centre_labels, nbr, own, sigma, tie).sum()

  g_emb, g_centres = jax.grad(total, argnums=(0, 1))(
      jnp.asarray(emb, jnp.float32), jnp.asarray(centres, jnp.float32))

  def numeric(array, which):
    grad, h = np.zeros_like(array), 1e-5
    for idx in np.ndindex(array.shape):
      up, down = array.copy(), array.copy()
      up[idx] += h
      down[idx] -= h
      args = {"emb": emb, "centres": centres}
      f = []
      for value in (up, down):
        args[which] = value
        f.append(_loop_loss(args["emb"], labels, args["centres"],
                            centre_labels, nbr, own, sigma, tie).sum())
      grad[idx] = (f[0] - f[1]) / (2 * h)
    return grad

  np.testing.assert_allclose(g_emb, numeric(emb, "emb"), atol=2e-4)
  np.testing.assert_allclose(g_centres, numeric(centres, "centres"),
                             atol=2e-4)
  # Centres neither a neighbour nor an own centre get no gradient.
  touched = np.union1d(nbr.ravel(), own)
  untouched = np.setdiff1d(np.arange(len(centres)), touched)
  assert untouched.size and not np.any(np.asarray(g_centres)[untouched])


def test_zero_tie_is_the_unweighted_nngk_loss_and_vote_mask_keeps_the_tie():
  emb, labels, centres, centre_labels, nbr, own = _problem(seed=2)
  nngk = losses.gaussian_kernel_loss(
      jnp.asarray(emb, jnp.float32), jnp.asarray(labels), jnp.asarray(
          centres, jnp.float32), jnp.asarray(centre_labels), jnp.asarray(nbr),
      sigma=0.5)
  np.testing.assert_allclose(
      _jax_loss(emb, labels, centres, centre_labels, nbr, own, 0.5, 0.0), nngk,
      rtol=1e-6)
  mask = jnp.array([True, False, True, False])
  masked = losses.impostor_loss(
      jnp.asarray(emb, jnp.float32), jnp.asarray(labels),
      jnp.asarray(centres, jnp.float32), jnp.asarray(centre_labels),
      jnp.asarray(nbr), jnp.asarray(own), sigma=0.5, tie=2.0, vote_mask=mask)
  tie_only = 2.0 * np.sum((emb - centres[own]) ** 2, axis=1)
  np.testing.assert_allclose(np.asarray(masked)[[1, 3]], tie_only[[1, 3]],
                             rtol=1e-5)
  np.testing.assert_allclose(
      np.asarray(masked)[[0, 2]],
      np.asarray(nngk)[[0, 2]] + tie_only[[0, 2]], rtol=1e-5)


@pytest.mark.parametrize("tie", [-1.0, math.inf, math.nan])
def test_loss_refuses_a_tie_that_is_not_finite_and_non_negative(tie):
  with pytest.raises(ValueError, match="tie"):
    _jax_loss(*_problem(), sigma=1.0, tie=tie)


# -- sparse updates ------------------------------------------------------------


def _lazy_adam_loop(centres, mu, nu, count, rows, grads, lr):
  """Numpy loop reference of Adam on the given rows only."""
  centres, mu, nu = centres.copy(), mu.copy(), nu.copy()
  t = count + 1
  for r, g in zip(rows, grads):
    if r >= len(centres):
      continue
    mu[r] = 0.9 * mu[r] + 0.1 * g
    nu[r] = 0.999 * nu[r] + 0.001 * g * g
    m_hat, v_hat = mu[r] / (1 - 0.9 ** t), nu[r] / (1 - 0.999 ** t)
    centres[r] -= lr * m_hat / (np.sqrt(v_hat) + 1e-8)
  return centres, mu, nu


def test_sparse_adam_matches_a_loop_reference_on_its_rows_only():
  rng = np.random.default_rng(0)
  centres, mu = rng.normal(size=(6, 3)), rng.normal(size=(6, 3)) * 0.1
  nu = rng.uniform(size=(6, 3)) * 0.01
  rows, grads = np.array([4, 1, 6]), rng.normal(size=(3, 3))  # 6: padding
  got = impostorlib.sparse_adam_update(
      *(jnp.asarray(a, jnp.float32) for a in (centres, mu, nu)),
      jnp.asarray(4), jnp.asarray(rows), jnp.asarray(grads, jnp.float32),
      learning_rate=0.1)
  want = _lazy_adam_loop(centres, mu, nu, 4, rows, grads, 0.1)
  for g, w in zip(got[:3], want):
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)
  assert int(got[3]) == 5
  np.testing.assert_array_equal(np.asarray(got[0])[[0, 2, 3, 5]],
                                np.asarray(centres, np.float32)[[0, 2, 3, 5]])


def test_sparse_adam_over_every_row_is_optax_adam():
  rng = np.random.default_rng(1)
  params = jnp.asarray(rng.normal(size=(5, 2)), jnp.float32)
  tx = optax.adam(0.05)
  opt_state = tx.init(params)
  mine = (params, jnp.zeros_like(params), jnp.zeros_like(params),
          jnp.asarray(0))
  reference = params
  for step in range(3):
    grads = jnp.asarray(rng.normal(size=(5, 2)), jnp.float32)
    updates, opt_state = tx.update(grads, opt_state)
    reference = optax.apply_updates(reference, updates)
    mine = impostorlib.sparse_adam_update(*mine, jnp.arange(5), grads,
                                          learning_rate=0.05)
    del step
  np.testing.assert_allclose(mine[0], reference, rtol=1e-5, atol=1e-6)


def _loose_bank(optimizer, sparse, n=20, dim=3, k=4):
  labels = np.arange(n) % 4
  bank = impostorlib.ImpostorBank(labels, dim, variant="loose", tie=0.5,
                                  learning_rate=0.1, optimizer=optimizer,
                                  sparse=sparse, k=k, graph_backend="exact")
  centres = np.random.default_rng(3).normal(size=(n, dim)).astype(np.float32)
  state, _ = bank.refresh(bank.init_state(), 0, lambda: centres)
  return bank, state


def _one_step(bank, state, batch, embeddings):
  def loss(rows):
    view = bank.view(state, {}, rows, batch)
    nbr, own = view.rows(batch)
    return losses.impostor_loss(
        embeddings, batch["label"], view.centres, view.labels, nbr, own,
        sigma=1.0, tie=0.5, neighbour_mask=batch["neighbour_mask"]).sum()
  rows = bank.trainable_rows(state, batch)
  return bank.after_step(state, embeddings, batch, jax.grad(loss)(rows))


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_sparse_step_equals_the_dense_step(optimizer):
  """Rows shared by several neighbour lists sum their gradients: the sparse
  update equals the dense one (SGD exactly; Adam too on the first step,
  where no untouched row has a moment to decay)."""
  index = np.array([0, 5, 6, 11])
  results = []
  for sparse in (True, False):
    bank, state = _loose_bank(optimizer, sparse)
    batch = {k: jnp.asarray(v) for k, v in bank.batch_extras(index).items()}
    batch["index"] = jnp.asarray(index, jnp.int32)
    batch["label"] = jnp.asarray(bank.labels[index])
    embeddings = state.centres[index] + 0.1
    results.append(_one_step(bank, state, batch, embeddings))
  rows = np.asarray(
      jnp.concatenate([batch["neighbour_idx"].ravel(), batch["index"]]))
  assert len(np.unique(rows)) < len(rows)  # repeated rows are exercised
  np.testing.assert_allclose(results[0].centres, results[1].centres,
                             rtol=1e-5, atol=1e-6)
  moved = np.any(np.asarray(results[0].centres)
                 != np.asarray(_loose_bank(optimizer, True)[1].centres),
                 axis=1)
  np.testing.assert_array_equal(np.flatnonzero(moved), np.unique(rows))


# -- schedules and variants ----------------------------------------------------


@pytest.mark.parametrize("variant, embeds, graphs", [
    ("tied", [0, 1, 2, 3], [0, 1, 2, 3]),
    ("fixed", [0], [0]),
    ("loose", [0], [0, 1, 2, 3]),
])
def test_variants_embed_and_rebuild_on_their_schedule(variant, embeds, graphs):
  labels = np.arange(30) % 3
  bank = impostorlib.ImpostorBank(labels, 2, variant=variant, k=4,
                                  graph_backend="exact")
  state = bank.init_state()
  rng = np.random.default_rng(0)
  embedded, rebuilt = [], []
  for epoch in range(4):
    state, record = bank.refresh(
        state, epoch, lambda: rng.normal(size=(30, 2)).astype(np.float32))
    if "refresh_seconds" in record:
      embedded.append(epoch)
    if "graph_seconds" in record:
      rebuilt.append(epoch)
  assert (embedded, rebuilt) == (embeds, graphs)
  assert (bank.evaluation_centres(state) is None) == (variant == "tied")


@pytest.mark.parametrize("kwargs, match", [
    ({"variant": "wobbly"}, "impostor.variant"),
    ({"tie": -1.0}, "impostor.tie"),
    ({"optimizer": "lbfgs"}, "impostor.optimizer"),
    ({"learning_rate": 0.0}, "impostor.learning_rate"),
    ({"k": None}, "nngk.k"),
])
def test_bad_settings_are_clear_errors(kwargs, match):
  options = {"variant": "loose", "k": 4, "graph_backend": "exact", **kwargs}
  with pytest.raises(ValueError, match=match):
    impostorlib.ImpostorBank(np.arange(20) % 2, 2, **options)


def _history(workdir):
  return [json.loads(line) for line in
          (workdir / "history.jsonl").read_text().splitlines()]


def test_tied_is_nngk_without_weights_and_an_infinite_tie_is_tied(
    tmp_path, tiny_config):
  runs = {
      "nngk": tiny_config(num_epochs=1, **{"nngk.learn_weights": False}),
      "tied": tiny_config(num_epochs=1, objective="impostor",
                          **{"impostor.variant": "tied"}),
      "inf": tiny_config(num_epochs=1, objective="impostor",
                         **{"impostor.variant": "loose",
                            "impostor.tie": math.inf}),
  }
  losses_seen = {}
  for name, config in runs.items():
    metrics = train.train_and_evaluate(config, tmp_path / name)
    losses_seen[name] = (_history(tmp_path / name)[0]["train_loss"],
                         metrics["map@r"])
  assert losses_seen["tied"] == losses_seen["nngk"]
  assert losses_seen["inf"] == losses_seen["tied"]


def test_loose_run_moves_its_centres_and_resumes_exactly(tmp_path,
                                                         tiny_config):
  def config(epochs):
    return tiny_config(num_epochs=epochs, objective="impostor",
                       **{"impostor.variant": "loose", "impostor.tie": 0.5,
                          "impostor.learning_rate": 0.01})
  straight = train.train_and_evaluate(config(2), tmp_path / "straight")
  train.train_and_evaluate(config(1), tmp_path / "resumed")
  resumed = train.train_and_evaluate(config(2), tmp_path / "resumed")
  assert resumed["map@r"] == straight["map@r"]
  assert ([r["train_loss"] for r in _history(tmp_path / "resumed")]
          == [r["train_loss"] for r in _history(tmp_path / "straight")])
  _, dataset, state = train.load_trained(tmp_path / "straight")
  assert isinstance(state.bank, impostorlib.ImpostorState)
  assert int(state.bank.count) > 0
  # The impostors left the initial network's embeddings, but the tie keeps
  # them near the trained network's.
  from nngk_jax import evaluation
  embedded, _ = evaluation.embed_split(state, dataset.train, 256)
  gap = np.linalg.norm(np.asarray(state.bank.centres) - embedded, axis=1)
  spread = np.linalg.norm(embedded - embedded.mean(0), axis=1).mean()
  assert gap.mean() < spread


def test_on_sphere_centres_are_seen_normalised_but_stored_free():
  labels = np.arange(20) % 4
  bank = impostorlib.ImpostorBank(labels, 3, variant="loose", k=4,
                                  graph_backend="exact", on_sphere=True)
  centres = 3.0 * np.random.default_rng(0).normal(size=(20, 3))
  state, _ = bank.refresh(bank.init_state(), 0,
                          lambda: centres.astype(np.float32))
  index = np.array([1, 7])
  batch = {k: jnp.asarray(v) for k, v in bank.batch_extras(index).items()}
  batch["index"] = jnp.asarray(index, jnp.int32)
  view = bank.view(state, {}, bank.trainable_rows(state, batch), batch)
  np.testing.assert_allclose(np.linalg.norm(view.centres, axis=1), 1.0,
                             rtol=1e-5)
  nbr, own = view.rows(batch)
  np.testing.assert_allclose(
      view.centres[own], centres[index] / np.linalg.norm(
          centres[index], axis=1, keepdims=True), rtol=1e-5)
  np.testing.assert_allclose(np.linalg.norm(bank.evaluation_centres(state),
                                            axis=1), 1.0, rtol=1e-5)
  assert np.allclose(np.asarray(state.centres), centres)  # stored free
  del nbr

"""Tests of batch NCA and semi-hard triplet losses against loop references."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from nngk_jax.geometry import pairwise_squared_distances
from nngk_jax.loss.nngk import gaussian_kernel_loss
from nngk_jax.loss.pairwise import nca_loss
from nngk_jax.loss.pairwise import triplet_semihard_loss


def distance(a, b, squared):
  d2 = sum((float(u) - float(v)) ** 2 for u, v in zip(a, b))
  return d2 if squared else math.sqrt(d2)


def reference_nca(emb, labels, sigma, where=None):
  """Goldberger's p_i, one pair at a time, with a hand max-shift, float64."""
  batch = len(labels)
  keep = np.ones(batch, bool) if where is None else where
  out = np.zeros(batch)
  for i in range(batch):
    if not keep[i]:
      continue
    log_k, same = [], []
    for j in range(batch):
      if j == i or not keep[j]:
        continue
      log_k.append(-distance(emb[i], emb[j], True) / (2 * sigma**2))
      same.append(labels[j] == labels[i])
    if not any(same):
      continue  # no positive: left out, loss 0
    out[i] = (log_sum_exp(log_k)
              - log_sum_exp([v for v, s in zip(log_k, same) if s]))
  return out


def log_sum_exp(values):
  shift = max(values)
  return shift + math.log(sum(math.exp(v - shift) for v in values))


def semihard_negative(emb, labels, keep, a, p, squared):
  """TF Addons' choice for the pair (a, p), or None without negatives."""
  d_ap = distance(emb[a], emb[p], squared)
  negatives = [distance(emb[a], emb[n], squared) for n in range(len(labels))
               if keep[n] and labels[n] != labels[a]]
  if not negatives:
    return None
  farther = [d for d in negatives if d > d_ap]
  return min(farther) if farther else max(negatives)


def reference_triplet(emb, labels, margin, squared, where=None):
  """Per-anchor mean over positives of the semi-hard hinge, pair by pair."""
  batch = len(labels)
  keep = np.ones(batch, bool) if where is None else where
  out = np.zeros(batch)
  for a in range(batch):
    if not keep[a]:
      continue
    hinges = []
    for p in range(batch):
      if p == a or not keep[p] or labels[p] != labels[a]:
        continue
      d_an = semihard_negative(emb, labels, keep, a, p, squared)
      if d_an is None:
        continue
      hinges.append(max(0.0, distance(emb[a], emb[p], squared) - d_an
                        + margin))
    out[a] = sum(hinges) / len(hinges) if hinges else 0.0
  return out


def reference_tf_scalar(emb, labels, margin, squared):
  """TF Addons' scalar: all anchor-positive pairs' hinges over their count."""
  total, count = 0.0, 0
  keep = np.ones(len(labels), bool)
  for a in range(len(labels)):
    for p in range(len(labels)):
      if p == a or labels[p] != labels[a]:
        continue
      d_an = semihard_negative(emb, labels, keep, a, p, squared)
      total += max(0.0, distance(emb[a], emb[p], squared) - d_an + margin)
      count += 1
  return total / count


# Tests of edge cases call jitted losses: one compilation per shape is far
# cheaper than compiling each primitive of an eager call for a new shape.
jit_nca_loss = jax.jit(nca_loss)
jit_triplet_semihard_loss = jax.jit(triplet_semihard_loss,
                                    static_argnames="squared")


def make_problem(seed, batch=10, dim=3, num_classes=3, scale=1.0):
  rng = np.random.default_rng(seed)
  emb = (scale * rng.normal(size=(batch, dim))).astype(np.float32)
  labels = rng.integers(0, num_classes, batch).astype(np.int32)
  where = rng.random(batch) > 0.3
  return dict(emb=emb, labels=labels, where=where)


# --- NCA ---------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("sigma", [0.5, 1.0, 3.0])
@pytest.mark.parametrize("use_where", [False, True])
def test_nca_matches_loop_reference(seed, sigma, use_where):
  p = make_problem(seed)
  where = p["where"] if use_where else None
  got = nca_loss(p["emb"], p["labels"], sigma=sigma, where=where)
  want = reference_nca(p["emb"], p["labels"], sigma, where)
  assert got.shape == (10,)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_nca_equals_nngk_with_all_others_as_neighbours():
  p = make_problem(3, num_classes=2)
  others = np.array([[j for j in range(10) if j != i] for i in range(10)],
                    np.int32)
  assert all(np.sum(p["labels"] == c) >= 2 for c in p["labels"])
  got = nca_loss(p["emb"], p["labels"], sigma=0.8)
  want = gaussian_kernel_loss(p["emb"], p["labels"], p["emb"], p["labels"],
                              others, sigma=0.8)
  np.testing.assert_allclose(got, want, rtol=1e-5)


def test_nca_goldberger_form():
  """sigma = 1/sqrt(2) is Goldberger's exp(-||x_i - x_j||^2)."""
  p = make_problem(4, num_classes=2)
  x = p["emb"].astype(np.float64)
  d2 = ((x[:, None] - x[None]) ** 2).sum(-1)
  np.fill_diagonal(d2, np.inf)
  p_ij = np.exp(-d2) / np.exp(-d2).sum(axis=1, keepdims=True)
  same = p["labels"][:, None] == p["labels"][None]
  want = -np.log((p_ij * same).sum(axis=1))
  got = nca_loss(p["emb"], p["labels"], sigma=1 / math.sqrt(2))
  np.testing.assert_allclose(got, want, rtol=1e-5)


def test_nca_example_without_positive_is_left_out():
  emb = np.array([[0.0, 0.0], [0.5, 0.0], [0.2, 1.0], [3.0, 1.0]], np.float32)
  labels = np.array([0, 0, 1, 2], np.int32)  # 2 and 3 are alone
  fn = lambda e: jit_nca_loss(e, labels)
  loss = fn(emb)
  np.testing.assert_array_equal(loss[2:], 0.0)
  assert np.all(np.asarray(loss[:2]) > 0)
  grads = jax.jit(jax.grad(lambda e: fn(e)[2:].sum()))(emb)
  np.testing.assert_array_equal(grads, 0.0)
  # A batch of one has no neighbours at all.
  np.testing.assert_array_equal(jit_nca_loss(emb[:1], labels[:1]), 0.0)


# --- Semi-hard triplet --------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("squared", [False, True])
@pytest.mark.parametrize("margin", [0.0, 0.2, 1.0])
def test_triplet_matches_loop_reference(seed, squared, margin):
  p = make_problem(seed)
  got = triplet_semihard_loss(p["emb"], p["labels"], margin=margin,
                              squared=squared)
  want = reference_triplet(p["emb"], p["labels"], margin, squared)
  assert got.shape == (10,)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("seed", [3, 4])
@pytest.mark.parametrize("squared", [False, True])
def test_triplet_with_where_matches_loop_reference(seed, squared):
  p = make_problem(seed)
  got = triplet_semihard_loss(p["emb"], p["labels"], margin=0.5,
                              squared=squared, where=p["where"])
  want = reference_triplet(p["emb"], p["labels"], 0.5, squared, p["where"])
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_triplet_ties_are_not_farther():
  """Integer grid: many negatives exactly as far as the positive."""
  rng = np.random.default_rng(5)
  emb = rng.integers(0, 3, size=(12, 2)).astype(np.float32)
  labels = rng.integers(0, 3, 12).astype(np.int32)
  for squared in (False, True):
    got = jit_triplet_semihard_loss(emb, labels, margin=1.0, squared=squared)
    want = reference_triplet(emb, labels, 1.0, squared)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("squared", [False, True])
def test_triplet_balanced_batch_mean_equals_tf_addons_scalar(squared):
  rng = np.random.default_rng(6)
  labels = np.repeat(np.arange(3), 4).astype(np.int32)  # P=3 classes, K=4
  emb = rng.normal(size=(12, 3)).astype(np.float32)
  got = jit_triplet_semihard_loss(emb, labels, margin=1.0, squared=squared)
  tf_value = reference_tf_scalar(emb, labels, 1.0, squared)
  np.testing.assert_allclose(float(jnp.mean(got)), tf_value, rtol=1e-5)
  # Unbalanced: weight each anchor by its number of positives.
  labels = np.array([0, 0, 0, 0, 0, 1, 1, 2, 2, 2, 1, 0], np.int32)
  got = np.asarray(jit_triplet_semihard_loss(emb, labels, margin=1.0,
                                             squared=squared))
  num_pos = np.array([np.sum(labels == y) - 1 for y in labels])
  np.testing.assert_allclose((got * num_pos).sum() / num_pos.sum(),
                             reference_tf_scalar(emb, labels, 1.0, squared),
                             rtol=1e-5)


def test_triplet_anchor_without_positive_gets_zero():
  emb = np.array([[0.0, 0.0], [0.1, 0.0], [2.0, 0.0]], np.float32)
  labels = np.array([0, 0, 1], np.int32)  # example 2 has no positive
  loss = jit_triplet_semihard_loss(emb, labels, margin=3.0)
  # Anchor 0: positive at 0.1, negative at 2.0: 0.1 - 2 + 3; anchor 1: 1.9.
  np.testing.assert_allclose(loss, [1.1, 1.2, 0.0], rtol=1e-6)
  np.testing.assert_allclose(
      jit_triplet_semihard_loss(emb, labels, margin=1.0), 0.0, atol=1e-7)


# --- Both losses: edge cases, masks, gradients, transforms --------------------

LOSSES = {
    "nca": lambda e, y, where=None: nca_loss(e, y, sigma=0.7, where=where),
    "triplet": lambda e, y, where=None: triplet_semihard_loss(
        e, y, margin=0.3, where=where),
    "triplet_squared": lambda e, y, where=None: triplet_semihard_loss(
        e, y, margin=0.3, squared=True, where=where),
}
JIT_LOSSES = {name: jax.jit(fn) for name, fn in LOSSES.items()}
# Gradient of the summed loss w.r.t. the embeddings, compiled once a shape.
JIT_GRADS = {
    name: jax.jit(jax.grad(lambda e, y, where=None, fn=fn: fn(e, y, where)
                           .sum()))
    for name, fn in LOSSES.items()}
REFERENCES = {
    "nca": lambda e, y, where=None: reference_nca(e, y, 0.7, where),
    "triplet": lambda e, y, where=None: reference_triplet(e, y, 0.3, False,
                                                          where),
    "triplet_squared": lambda e, y, where=None: reference_triplet(
        e, y, 0.3, True, where),
}


def assert_finite_value_and_grad(name, emb, labels, where=None):
  fn = JIT_LOSSES[name]
  loss = fn(emb, labels, where)
  grads = JIT_GRADS[name](emb, labels, where)
  assert np.all(np.isfinite(loss)), loss
  assert np.all(np.isfinite(grads)), grads
  return loss, grads


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_single_class_batch(name):
  p = make_problem(7)
  labels = np.zeros(10, np.int32)
  loss, grads = assert_finite_value_and_grad(name, p["emb"], labels)
  np.testing.assert_allclose(loss, 0.0, atol=1e-6)  # p_i = 1; no negatives
  np.testing.assert_allclose(grads, 0.0, atol=1e-6)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_all_equal_embeddings(name):
  p = make_problem(8)
  emb = np.tile(np.array([[0.3, -1.0, 2.0]], np.float32), (10, 1))
  loss, _ = assert_finite_value_and_grad(name, emb, p["labels"])
  np.testing.assert_allclose(loss, REFERENCES[name](emb, p["labels"]),
                             rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_far_apart_embeddings(name):
  """Norms of 1e4: every NCA kernel underflows; distances stay accurate."""
  p = make_problem(9, scale=1e4)
  loss, _ = assert_finite_value_and_grad(name, p["emb"], p["labels"])
  want = REFERENCES[name](p["emb"], p["labels"])
  np.testing.assert_allclose(loss, want, rtol=1e-4, atol=1e-2)
  sq = np.asarray(pairwise_squared_distances(p["emb"]))
  assert np.all(sq >= 0) and np.all(np.diag(sq) == 0)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_where_equals_slicing(name):
  p = make_problem(10, batch=12)
  where = p["where"]
  fn = JIT_LOSSES[name]
  masked = np.asarray(fn(p["emb"], p["labels"], where))
  sliced = fn(p["emb"][where], p["labels"][where])
  np.testing.assert_allclose(masked[where], sliced, rtol=1e-6, atol=1e-7)
  np.testing.assert_array_equal(masked[~where], 0.0)
  grads = JIT_GRADS[name](p["emb"], p["labels"], where)
  np.testing.assert_array_equal(grads[~where], 0.0)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_nan_input_is_visible(name):
  p = make_problem(11, num_classes=2)
  emb = p["emb"].copy()
  emb[1, 0] = np.nan
  loss = np.asarray(JIT_LOSSES[name](emb, p["labels"]))
  assert np.isnan(loss[1])


def test_gradients_match_finite_differences():
  p = make_problem(12, batch=8, num_classes=2)
  with jax.enable_x64(True):
    emb = p["emb"].astype(np.float64)

    # All three losses in one jitted function: one compilation.
    @jax.jit
    def f(e):
      return sum(fn(e, p["labels"], p["where"]).sum()
                 for fn in LOSSES.values())

    check_grads(f, (emb,), order=2, modes=("rev",), eps=1e-5)


def test_jit_equals_eager_and_vmap_over_problems():
  problems = [make_problem(s) for s in (20, 21, 22)]
  stacked = {k: np.stack([p[k] for p in problems]) for k in problems[0]}
  for name, fn in LOSSES.items():
    loss = lambda p: fn(p["emb"], p["labels"], p["where"])
    eager = [loss(p) for p in problems]
    jitted = jax.jit(loss)
    for p, e in zip(problems, eager):
      np.testing.assert_allclose(jitted(p), e, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(jax.vmap(loss)(stacked), np.stack(eager),
                               rtol=1e-5, atol=1e-7)
  traced = jax.jit(lambda s, m: (
      nca_loss(problems[0]["emb"], problems[0]["labels"], sigma=s),
      triplet_semihard_loss(problems[0]["emb"], problems[0]["labels"],
                            margin=m)))(0.5, 0.25)
  np.testing.assert_allclose(
      traced[0], reference_nca(problems[0]["emb"], problems[0]["labels"], 0.5),
      rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(
      traced[1], reference_triplet(problems[0]["emb"], problems[0]["labels"],
                                   0.25, False), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("fn", [nca_loss, triplet_semihard_loss])
@pytest.mark.parametrize("change, match", [
    (dict(emb=np.zeros((10,), np.float32)),
     r"embeddings must be \[batch, dim\]"),
    (dict(emb=np.zeros((10, 3), np.int32)), "embeddings must have a float"),
    (dict(labels=np.zeros((9,), np.int32)), "labels has 9 entries"),
    (dict(labels=np.zeros((10,), np.float32)), "labels must have a int"),
    (dict(where=np.ones((10,), np.int32)), "where must have a bool"),
    (dict(where=np.ones((9,), bool)), r"where must be \[batch\] = \(10,\)"),
])
def test_bad_input_raises_naming_it(fn, change, match):
  p = make_problem(0)
  p.update(change)
  with pytest.raises(ValueError, match=match):
    fn(p["emb"], p["labels"], where=p["where"])


@pytest.mark.parametrize("call, match", [
    (lambda e, y: nca_loss(e, y, sigma=0.0), "sigma must be a positive"),
    (lambda e, y: nca_loss(e, y, sigma=-2.0), "sigma must be a positive"),
    (lambda e, y: triplet_semihard_loss(e, y, margin=-0.1),
     "margin must be a non-negative"),
    (lambda e, y: triplet_semihard_loss(e, y, squared=1),
     "squared must be a Python bool"),
])
def test_bad_hyperparameter_raises(call, match):
  p = make_problem(0)
  with pytest.raises(ValueError, match=match):
    call(p["emb"], p["labels"])

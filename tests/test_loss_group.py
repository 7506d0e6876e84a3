"""Tests of the Group Loss against plain loop-based numpy references."""

import math

import jax
import numpy as np
import pytest
from jax.test_util import check_grads

from nngk_jax.loss.group import GROUP_LOSS_EPSILON
from nngk_jax.loss.group import choose_anchors
from nngk_jax.loss.group import group_log_probs
from nngk_jax.loss.group import group_loss
from nngk_jax.loss.group import group_loss_with_ce
from nngk_jax.loss.group import pearson_affinity


def reference_affinity(emb, zero_diagonal=True):
  """ReLU of the Pearson correlation, one pair at a time, in float64."""
  batch, dim = emb.shape
  w = np.zeros((batch, batch))
  for i in range(batch):
    for j in range(batch):
      a = [float(v) for v in emb[i]]
      b = [float(v) for v in emb[j]]
      mean_a, mean_b = sum(a) / dim, sum(b) / dim
      a = [v - mean_a for v in a]
      b = [v - mean_b for v in b]
      norm_a = math.sqrt(sum(v * v for v in a))
      norm_b = math.sqrt(sum(v * v for v in b))
      if norm_a == 0 or norm_b == 0:
        continue
      corr = sum(u * v for u, v in zip(a, b)) / (norm_a * norm_b)
      w[i, j] = max(corr, 0.0)
    if zero_diagonal:
      w[i, i] = 0.0
  return w


def reference_probs(emb, logits, labels, anchors, temperature, iterations,
                    zero_diagonal=True):
  """The paper's replicator dynamics, entry by entry, in float64."""
  batch, num_classes = logits.shape
  w = reference_affinity(emb, zero_diagonal)
  x = np.zeros((batch, num_classes))
  for i in range(batch):
    if anchors[i]:
      x[i, labels[i]] = 1.0
      continue
    z = [float(v) / temperature for v in logits[i]]
    top = max(z)
    total = sum(math.exp(v - top) for v in z)
    for c in range(num_classes):
      x[i, c] = math.exp(z[c] - top) / total
  for _ in range(iterations):
    new = np.zeros_like(x)
    for i in range(batch):
      for c in range(num_classes):
        support = sum(w[i, j] * x[j, c] for j in range(batch))
        new[i, c] = x[i, c] * support
    for i in range(batch):
      total = new[i].sum()
      if total > 0:  # an all-zero row keeps its previous value
        x[i] = new[i] / total
  return x


def reference_loss(emb, logits, labels, anchors, temperature, iterations,
                   zero_diagonal=True):
  x = reference_probs(emb, logits, labels, anchors, temperature, iterations,
                      zero_diagonal)
  return np.array([
      0.0 if anchors[i] else -math.log(x[i, labels[i]] + GROUP_LOSS_EPSILON)
      for i in range(len(labels))])


# Edge-case tests call the jitted loss: one compilation per shape is far
# cheaper than compiling each primitive of an eager call for a new shape.
jit_group_loss = jax.jit(group_loss,
                         static_argnames=("num_iterations", "zero_diagonal"))


@jax.jit
def loss_grads(emb, logits, labels, anchors):
  """Gradients of the summed loss (T = 1, two steps), compiled once a shape."""
  return jax.grad(lambda e, z: group_loss(
      e, z, labels, anchors, temperature=1.0, num_iterations=2).sum(),
                  argnums=(0, 1))(emb, logits)


def assert_finite_grads(emb, logits, labels, anchors):
  grads = loss_grads(emb, logits, labels, anchors)
  assert all(np.all(np.isfinite(g)) for g in grads), grads


# Most tests share one shape ([12, 12] embeddings, 5 classes), so the
# primitives JAX compiles for the first eager call are reused by the rest.
def make_problem(seed, num_classes_in_batch=3, per_class=4, num_anchors=1,
                 dim=12, num_classes=5, logit_scale=2.0):
  rng = np.random.default_rng(seed)
  labels = np.repeat(rng.choice(num_classes, num_classes_in_batch,
                                replace=False), per_class).astype(np.int32)
  # Class-dependent means so that same-class rows tend to correlate.
  means = rng.normal(size=(num_classes, dim))
  emb = (means[labels] + 0.8 * rng.normal(size=(len(labels), dim)))
  logits = logit_scale * rng.normal(size=(len(labels), num_classes))
  anchors = choose_anchors(labels, num_anchors, seed=seed)
  return dict(emb=emb.astype(np.float32), logits=logits.astype(np.float32),
              labels=labels, anchors=anchors)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("iterations", [0, 1, 3])
@pytest.mark.parametrize("zero_diagonal", [True, False])
def test_loss_matches_loop_reference(seed, iterations, zero_diagonal):
  p = make_problem(seed)
  got = group_loss(p["emb"], p["logits"], p["labels"], p["anchors"],
                   temperature=1.5, num_iterations=iterations,
                   zero_diagonal=zero_diagonal)
  want = reference_loss(p["emb"], p["logits"], p["labels"], p["anchors"], 1.5,
                        iterations, zero_diagonal)
  assert got.shape == (12,)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("seed", [3, 4])
def test_probs_match_loop_reference_and_sum_to_one(seed):
  p = make_problem(seed, num_anchors=2)
  got = np.exp(group_log_probs(p["emb"], p["logits"], p["labels"],
                               p["anchors"], temperature=0.7,
                               num_iterations=2))
  want = reference_probs(p["emb"], p["logits"], p["labels"], p["anchors"],
                         0.7, 2)
  np.testing.assert_allclose(got, want, atol=1e-6)
  np.testing.assert_allclose(got.sum(axis=1), 1.0, rtol=1e-5)
  one_hot = np.eye(5)[p["labels"]]
  np.testing.assert_array_equal(got[p["anchors"]], one_hot[p["anchors"]])


def test_affinity_matches_loop_reference():
  p = make_problem(5)
  for zero_diagonal in (True, False):
    got = pearson_affinity(p["emb"], zero_diagonal=zero_diagonal)
    want = reference_affinity(p["emb"], zero_diagonal)
    np.testing.assert_allclose(got, want, atol=1e-6)
  np.testing.assert_allclose(
      pearson_affinity(p["emb"]),
      np.maximum(np.corrcoef(p["emb"].astype(np.float64)), 0)
      * (1 - np.eye(12)), atol=1e-6)


def test_extreme_logits_match_reference():
  """Priors of e^-80 and below: log space keeps them; the floor applies."""
  p = make_problem(6, logit_scale=60.0)
  got = jit_group_loss(p["emb"], p["logits"], p["labels"], p["anchors"],
                       temperature=1.0, num_iterations=2)
  want = reference_loss(p["emb"], p["logits"], p["labels"], p["anchors"], 1.0,
                        2)
  assert np.all(np.isfinite(got))
  assert np.all(np.asarray(got) <= -math.log(GROUP_LOSS_EPSILON) + 1e-4)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def one_hot_embeddings(batch):
  # Pearson correlation of e_i and e_j (i != j) is -1 / (batch - 1) < 0.
  return np.eye(batch, dtype=np.float32)


def test_zero_affinity_reduces_to_tempered_cross_entropy():
  p = make_problem(7)
  emb = one_hot_embeddings(12)
  np.testing.assert_array_equal(pearson_affinity(emb), 0.0)
  temperature = 3.0
  log_prior = jax.nn.log_softmax(p["logits"] / temperature, axis=1)
  cross_entropy = -np.take_along_axis(np.asarray(log_prior),
                                      p["labels"][:, None], 1)[:, 0]
  for iterations in (1, 4):
    got = group_loss(emb, p["logits"], p["labels"], p["anchors"],
                     temperature=temperature, num_iterations=iterations)
    want = np.where(p["anchors"], 0.0, cross_entropy)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
  assert_finite_grads(emb, p["logits"], p["labels"], p["anchors"])


def test_official_diagonal_with_zero_affinity_squares_the_prior():
  """W = I (official diagonal, no other correlation): x <- x^2 / sum x^2."""
  p = make_problem(8)
  temperature = 2.0
  got = group_loss(one_hot_embeddings(12), p["logits"], p["labels"],
                   p["anchors"], temperature=temperature, zero_diagonal=False)
  log_sharp = jax.nn.log_softmax(2 * p["logits"] / temperature, axis=1)
  want = -np.take_along_axis(np.asarray(log_sharp), p["labels"][:, None],
                             1)[:, 0]
  np.testing.assert_allclose(got, np.where(p["anchors"], 0.0, want),
                             rtol=1e-5, atol=1e-6)


def test_no_iterations_is_tempered_cross_entropy():
  p = make_problem(9)
  got = group_loss(p["emb"], p["logits"], p["labels"], p["anchors"],
                   temperature=5.0, num_iterations=0)
  log_prior = np.asarray(jax.nn.log_softmax(p["logits"] / 5.0, axis=1))
  want = -np.take_along_axis(log_prior, p["labels"][:, None], 1)[:, 0]
  np.testing.assert_allclose(got, np.where(p["anchors"], 0.0, want),
                             rtol=1e-6)


def test_with_ce_adds_plain_cross_entropy():
  p = make_problem(10)
  kwargs = dict(temperature=2.0, num_iterations=1)
  nll = group_loss(p["emb"], p["logits"], p["labels"], p["anchors"], **kwargs)
  both = group_loss_with_ce(p["emb"], p["logits"], p["labels"], p["anchors"],
                            nll_weight=0.5, **kwargs)
  log_probs = np.asarray(jax.nn.log_softmax(p["logits"], axis=1))
  ce = -np.take_along_axis(log_probs, p["labels"][:, None], 1)[:, 0]
  np.testing.assert_allclose(both, 0.5 * np.asarray(nll) + ce, rtol=1e-6)


def test_anchors_pull_correlated_examples():
  """A non-anchor perfectly correlated only with anchors of its class."""
  emb = np.array([[1., 2., 3.], [2., 4., 6.], [3., 2., 1.], [6., 4., 2.]],
                 np.float32)
  labels = np.array([0, 0, 1, 1], np.int32)
  anchors = np.array([True, False, True, False])
  logits = np.zeros((4, 2), np.float32)
  loss = jit_group_loss(emb, logits, labels, anchors, temperature=1.0)
  np.testing.assert_allclose(loss, 0.0, atol=1e-6)
  prior_only = jit_group_loss(emb, logits, labels, anchors, temperature=1.0,
                              num_iterations=0)
  np.testing.assert_allclose(prior_only, [0, math.log(2), 0, math.log(2)],
                             rtol=1e-6)


def test_single_class_batch():
  p = make_problem(11, num_classes_in_batch=1, per_class=12, num_anchors=2)
  fn = lambda e, z: jit_group_loss(e, z, p["labels"], p["anchors"],
                                   temperature=1.0, num_iterations=2)
  loss = fn(p["emb"], p["logits"])
  want = reference_loss(p["emb"], p["logits"], p["labels"], p["anchors"], 1.0,
                        2)
  np.testing.assert_allclose(loss, want, rtol=1e-5, atol=1e-6)
  assert_finite_grads(p["emb"], p["logits"], p["labels"], p["anchors"])


@pytest.mark.parametrize("constant_features", [False, True])
def test_all_equal_embeddings(constant_features):
  """Equal rows: W = 1 - I; equal constant rows: no variance, W = 0."""
  p = make_problem(12)
  row = np.full(12, 0.3) if constant_features else np.arange(12.0)
  emb = np.tile(row, (12, 1)).astype(np.float32)
  fn = lambda e, z: jit_group_loss(e, z, p["labels"], p["anchors"],
                                   temperature=1.0, num_iterations=2)
  loss = fn(emb, p["logits"])
  want = reference_loss(emb, p["logits"], p["labels"], p["anchors"], 1.0, 2)
  np.testing.assert_allclose(loss, want, rtol=1e-5, atol=1e-6)
  expected_w = 0.0 if constant_features else 1.0 - np.eye(12)
  np.testing.assert_allclose(pearson_affinity(emb), expected_w, atol=1e-6)
  assert_finite_grads(emb, p["logits"], p["labels"], p["anchors"])


def test_small_but_real_variance_is_kept():
  base = np.random.default_rng(16).normal(size=(4, 12))
  emb = (100.0 + 1e-3 * base).astype(np.float32)  # spread 1e-5 relative
  got = pearson_affinity(emb)
  want = reference_affinity(emb)
  assert np.all(np.asarray(got).sum(axis=1) > 0)
  np.testing.assert_allclose(got, want, atol=5e-3)


@pytest.mark.parametrize("norm", [1e4, 1e30])
def test_far_apart_embeddings(norm):
  """Correlations do not depend on scale; nothing overflows at any norm."""
  p = make_problem(13)
  unit = p["emb"] / np.linalg.norm(p["emb"], axis=1, keepdims=True)
  far = (norm * unit).astype(np.float32)
  fn = lambda e: jit_group_loss(e, p["logits"], p["labels"], p["anchors"],
                                temperature=1.0, num_iterations=2)
  np.testing.assert_allclose(fn(far), fn(unit), rtol=1e-4, atol=1e-5)
  assert_finite_grads(far, p["logits"], p["labels"], p["anchors"])


def test_nan_embedding_is_visible():
  p = make_problem(14)
  emb = p["emb"].copy()
  emb[1, 0] = np.nan
  loss = np.asarray(jit_group_loss(emb, p["logits"], p["labels"],
                                   p["anchors"], temperature=1.0))
  non_anchor = ~p["anchors"]
  assert np.any(np.isnan(loss[non_anchor]))


def test_gradients_match_finite_differences():
  p = make_problem(15, num_classes_in_batch=2, per_class=3, dim=4,
                   num_classes=3)
  with jax.enable_x64(True):
    emb = p["emb"].astype(np.float64)
    logits = p["logits"].astype(np.float64)

    # Both diagonals in one function, jitted: one compilation, not one per op.
    @jax.jit
    def f(e, z):
      kwargs = dict(temperature=1.3, num_iterations=2)
      return (group_loss_with_ce(e, z, p["labels"], p["anchors"], **kwargs)
              + 0.5 * group_loss(e, z, p["labels"], p["anchors"],
                                 zero_diagonal=False, **kwargs)).sum()

    check_grads(f, (emb, logits), order=2, modes=("rev",), eps=1e-5)


def test_jit_equals_eager_and_vmap_over_problems():
  problems = [make_problem(s) for s in (20, 21, 22)]
  loss = lambda p, t: group_loss(p["emb"], p["logits"], p["labels"],
                                 p["anchors"], temperature=t,
                                 num_iterations=2)
  eager = [loss(p, 1.5) for p in problems]
  jitted = jax.jit(loss)
  for p, e in zip(problems, eager):
    np.testing.assert_allclose(jitted(p, 1.5), e, rtol=1e-6, atol=1e-7)
  stacked = {k: np.stack([p[k] for p in problems]) for k in problems[0]}
  batched = jax.vmap(loss, in_axes=(0, None))(stacked, 1.5)
  np.testing.assert_allclose(batched, np.stack(eager), rtol=1e-6, atol=1e-7)
  log_probs = jax.jit(group_log_probs,
                      static_argnames=("num_iterations", "zero_diagonal"))(
      problems[0]["emb"], problems[0]["logits"], problems[0]["labels"],
      problems[0]["anchors"], temperature=1.5, num_iterations=3)
  assert log_probs.shape == (12, 5)


def test_choose_anchors():
  labels = np.array([4, 1, 4, 4, 1, 9, 4, 1], np.int32)
  first = choose_anchors(labels, 2)
  np.testing.assert_array_equal(
      first, [True, True, True, False, True, True, False, False])
  for seed in range(5):
    mask = choose_anchors(labels, 2, seed=seed)
    assert mask.dtype == bool and mask.shape == (8,)
    counts = {c: int(mask[labels == c].sum()) for c in (1, 4, 9)}
    assert counts == {1: 2, 4: 2, 9: 1}
  np.testing.assert_array_equal(choose_anchors(labels, 2, seed=3),
                                choose_anchors(labels, 2, seed=3))
  assert len({tuple(choose_anchors(labels, 2, seed=s)) for s in range(10)}) > 1
  np.testing.assert_array_equal(choose_anchors(labels, 0), False)
  assert choose_anchors(np.zeros(0, np.int64), 2).shape == (0,)


@pytest.mark.parametrize("labels, count, match", [
    (np.zeros((2, 3), np.int32), 1, r"labels must be a 1-D integer array"),
    (np.zeros(3, np.float32), 1, r"labels must be a 1-D integer array"),
    (np.zeros(3, np.int32), -1, "num_anchors_per_class must be"),
    (np.zeros(3, np.int32), 1.5, "num_anchors_per_class must be"),
])
def test_choose_anchors_bad_input(labels, count, match):
  with pytest.raises(ValueError, match=match):
    choose_anchors(labels, count)


@pytest.mark.parametrize("change, match", [
    (dict(emb=np.zeros((12,), np.float32)),
     r"embeddings must be \[batch, dim\]"),
    (dict(emb=np.zeros((12, 6), np.int32)), "embeddings must have a float"),
    (dict(logits=np.zeros((11, 5), np.float32)), r"logits has 11 rows"),
    (dict(logits=np.zeros((12,), np.float32)),
     r"logits must be \[batch, num_classes\]"),
    (dict(labels=np.zeros((12,), np.float32)), "labels must have a int"),
    (dict(labels=np.zeros((10,), np.int32)), "labels has 10 rows"),
    (dict(labels=np.full((12,), 5, np.int32)), r"labels must lie in \[0, 5\)"),
    (dict(anchors=np.ones((12,), np.int32)), "anchor_mask must have a bool"),
    (dict(anchors=np.ones((13,), bool)), "anchor_mask has 13 rows"),
    (dict(temperature=0.0), "temperature must be a positive"),
    (dict(iterations=-1), "num_iterations must be a non-negative"),
    (dict(iterations=1.0), "num_iterations must be a non-negative"),
])
def test_bad_input_raises_naming_it(change, match):
  p = make_problem(0)
  p.update(change)
  with pytest.raises(ValueError, match=match):
    group_loss(p["emb"], p["logits"], p["labels"], p["anchors"],
               temperature=p.get("temperature", 1.0),
               num_iterations=p.get("iterations", 1))

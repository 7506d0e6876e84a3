"""Tests of the smooth-rank loss against plain loop-based numpy references."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from nngk_jax.loss.rank import rank_approximation_loss
from nngk_jax.loss.rank import rank_transfer
from nngk_jax.loss.rank import smooth_ranks

# Most tests call these module-level jitted versions: eager dispatch of the
# O(batch^3) graph and its gradient, op by op, is many times slower, and a
# jit built inside a test is compiled afresh on every call. Hyperparameters
# are traced (one compile per shape and transfer); their value checks run in
# the eager calls of the bad-input tests.
_jit_loss = jax.jit(rank_approximation_loss, static_argnames=("transfer",))
LOSS_DEFAULTS = dict(temperature=0.01, transfer="power", gamma=2.0, margin=0.0)
jit_ranks = jax.jit(smooth_ranks)
jit_transfer = jax.jit(rank_transfer, static_argnames=("transfer",))


def _weighted_loss_sum(emb, labels, query_weights, **options):
  return jnp.sum(rank_approximation_loss(emb, labels, **options)
                 * query_weights)


_loss_grad = jax.jit(jax.grad(_weighted_loss_sum),
                     static_argnames=("transfer",))


def _all_options(labels, options):
  """Every option given, ``where`` as an array: all calls share compiles."""
  options = {**LOSS_DEFAULTS, **options}
  if options.get("where") is None:
    options["where"] = np.ones(len(labels), bool)
  return options


def jit_loss(emb, labels, **options):
  return _jit_loss(emb, labels, **_all_options(labels, options))


def loss_grad(emb, labels, query_weights=None, **options):
  """d/d emb of sum_i w_i loss_i (all w_i = 1 when query_weights is None)."""
  if query_weights is None:
    query_weights = np.ones(len(labels), emb.dtype)
  return _loss_grad(emb, labels, query_weights, **_all_options(labels, options))


ranks_grad = jax.jit(jax.grad(
    lambda sims, where, temperature: jnp.sum(
        smooth_ranks(sims, temperature=temperature, where=where))))
transfer_grad = jax.jit(
    jax.grad(lambda ranks, transfer, gamma: jnp.sum(
        rank_transfer(ranks, transfer=transfer, gamma=gamma))),
    static_argnums=(1,))


@jax.jit
def batched_loss(stacked_emb, labels, temperature, gamma, margin):
  """Power-transfer loss of each of a stack of ``[batch, dim]`` problems."""
  return jax.vmap(lambda e: rank_approximation_loss(
      e, labels, temperature=temperature, gamma=gamma, margin=margin))(
          stacked_emb)


@jax.jit
def batched_exp_loss(stacked_emb, labels, temperature, gamma, margin):
  return jax.vmap(lambda e: rank_approximation_loss(
      e, labels, temperature=temperature, transfer="exp", gamma=gamma,
      margin=margin))(stacked_emb)


def sigmoid(x):
  if x >= 0:
    return 1.0 / (1.0 + math.exp(-x))
  return math.exp(x) / (1.0 + math.exp(x))


def reference_smooth_ranks(sims, temperature, valid=None):
  """Normalised smooth ranks by the docstring's formula, one loop per entry."""
  n = sims.shape[0]
  valid = np.ones(n, bool) if valid is None else valid
  items = [i for i in range(n) if valid[i]]
  out = np.zeros((n, n))
  for i in items:
    for j in items:
      if j == i:
        continue
      rank = 1.0
      for k in items:
        if k not in (i, j):
          rank += sigmoid((float(sims[i, k]) - float(sims[i, j])) / temperature)
      out[i, j] = (rank - 1.0) / (len(items) - 2) if len(items) > 2 else 0.0
  return out


def reference_transfer(rank, transfer, gamma):
  rank = min(max(rank, 0.0), 1.0)
  if transfer == "power":
    return (1.0 - rank) ** gamma
  if transfer == "exp":
    return ((math.exp(-gamma * rank) - math.exp(-gamma))
            / (1.0 - math.exp(-gamma)))
  return float(transfer(np.float64(rank)))


def cosine(a, b):
  na = math.sqrt(sum(float(v) ** 2 for v in a))
  nb = math.sqrt(sum(float(v) ** 2 for v in b))
  if na == 0 or nb == 0:
    return 0.0
  return sum(float(x) * float(y) for x, y in zip(a, b)) / (na * nb)


def reference_loss(emb, labels, temperature=0.01, transfer="power", gamma=2.0,
                   margin=0.0, valid=None):
  """The loss pair by pair: pull on positives, push on negatives."""
  n = len(labels)
  valid = np.ones(n, bool) if valid is None else valid
  out = np.zeros(n)
  for i in range(n):
    if not valid[i]:
      continue
    pos = [j for j in range(n)
           if valid[j] and j != i and labels[j] == labels[i]]
    neg = [k for k in range(n) if valid[k] and labels[k] != labels[i]]
    if not pos or not neg:
      continue
    s = {j: cosine(emb[i], emb[j]) for j in pos + neg}
    pull = 0.0
    for j in pos:
      rho = sum(sigmoid((s[k] - s[j]) / temperature) for k in neg) / len(neg)
      pull += (1.0 - reference_transfer(rho, transfer, gamma)) * (1.0 - s[j])
    push = 0.0
    for k in neg:
      rho = sum(sigmoid((s[j] - s[k]) / temperature) for j in pos) / len(pos)
      push += reference_transfer(rho, transfer, gamma) * max(s[k] - margin, 0.0)
    out[i] = pull / len(pos) + push / len(neg)
  return out


def hard_normalised_ranks(sims):
  """Ranks from argsort (distinct similarities), normalised by (n - 2)."""
  n = sims.shape[0]
  out = np.zeros((n, n))
  for i in range(n):
    others = [j for j in range(n) if j != i]
    order = sorted(others, key=lambda j: -sims[i, j])
    for position, j in enumerate(order):
      out[i, j] = position / (n - 2)
  return out


def make_problem(seed, batch=8, dim=3, num_classes=3):
  rng = np.random.default_rng(seed)
  emb = rng.normal(size=(batch, dim)).astype(np.float32)
  labels = rng.integers(0, num_classes, batch).astype(np.int32)
  where = rng.random(batch) > 0.25
  return dict(emb=emb, labels=labels, where=where)


def cosine_matrix(emb):
  unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)
  return (unit @ unit.T).astype(emb.dtype)


# --- smooth_ranks ------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("temperature", [0.01, 0.2])
@pytest.mark.parametrize("use_mask", [False, True])
def test_smooth_ranks_match_loop_reference(seed, temperature, use_mask):
  p = make_problem(seed, batch=7)
  sims = cosine_matrix(p["emb"])
  where = p["where"] if use_mask else None
  got = jit_ranks(sims, temperature=temperature, where=where)
  want = reference_smooth_ranks(sims, temperature, where)
  assert got.shape == (7, 7)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_smooth_ranks_approach_hard_ranks_as_temperature_falls():
  rng = np.random.default_rng(3)
  sims = cosine_matrix(rng.normal(size=(9, 5)).astype(np.float32))
  off_diagonal = sims[~np.eye(9, dtype=bool)].reshape(9, 8)
  gaps = np.diff(np.sort(off_diagonal, axis=1), axis=1)
  assert gaps.min() > 1e-3  # distinct similarities in every row
  hard = hard_normalised_ranks(sims)
  errors = [float(np.abs(jit_ranks(sims, temperature=t) - hard).max())
            for t in (0.3, 0.03, 3e-3, 1e-5)]
  assert all(a > b for a, b in zip(errors, errors[1:])), errors
  assert errors[-1] < 1e-6


def test_smooth_ranks_are_in_unit_interval_and_average_one_half():
  p = make_problem(4, batch=10)
  sims = cosine_matrix(p["emb"])
  ranks = np.asarray(jit_ranks(sims, temperature=0.05, where=p["where"]))
  valid = p["where"]
  n = valid.sum()
  assert ranks.min() >= 0.0 and ranks.max() <= 1.0
  # sigma(a) + sigma(-a) = 1 per pair: the mean rank of every query is 1/2.
  np.testing.assert_allclose(ranks[valid].sum(axis=1) / (n - 1), 0.5,
                             rtol=1e-5)
  assert np.all(ranks[~valid] == 0.0) and np.all(ranks[:, ~valid] == 0.0)
  assert np.all(np.diag(ranks) == 0.0)


def test_smooth_ranks_ties_and_small_batches():
  ties = jit_ranks(np.ones((4, 4), np.float32), temperature=0.01)
  np.testing.assert_allclose(ties, 0.5 * (1 - np.eye(4)), atol=1e-7)
  for n in (1, 2):
    got = jit_ranks(np.eye(n, dtype=np.float32), temperature=0.1)
    np.testing.assert_array_equal(got, np.zeros((n, n)))
  # Two valid rows of five: each is the other's only item, at rank 1 -> 0.
  where = np.array([False, True, False, True, False])
  got = jit_ranks(np.full((5, 5), 0.3, np.float32), temperature=0.1,
                  where=where)
  np.testing.assert_array_equal(got, np.zeros((5, 5)))


def test_smooth_ranks_mask_equals_slicing_even_with_nan_padding():
  p = make_problem(5, batch=8)
  sims = cosine_matrix(p["emb"])
  where = p["where"]
  padded = sims.copy()
  padded[~where, :] = np.nan
  padded[:, ~where] = np.nan
  np.fill_diagonal(padded, np.nan)  # the diagonal is never used either
  masked = jit_ranks(padded, temperature=0.05, where=where)
  sliced = jit_ranks(sims[where][:, where], temperature=0.05)
  np.testing.assert_allclose(np.asarray(masked)[where][:, where], sliced,
                             rtol=1e-6)
  grads = ranks_grad(padded, where, 0.05)
  assert np.all(np.isfinite(grads))


# --- rank_transfer -----------------------------------------------------------


@pytest.mark.parametrize("transfer, gamma", [("power", 2.0), ("power", 0.5),
                                             ("exp", 3.0), ("exp", 200.0)])
def test_transfers_are_decreasing_from_one_to_zero(transfer, gamma):
  ranks = np.linspace(0.0, 1.0, 101).astype(np.float32)
  phi = np.asarray(jit_transfer(ranks, transfer=transfer, gamma=gamma))
  want = [reference_transfer(float(r), transfer, gamma) for r in ranks]
  np.testing.assert_allclose(phi, want, rtol=1e-5, atol=1e-7)
  assert phi[0] == pytest.approx(1.0) and phi[-1] == 0.0
  assert np.all(np.diff(phi) <= 0)
  grads = transfer_grad(ranks, transfer, gamma)
  assert np.all(np.isfinite(grads))  # gamma < 1 at r = 1 included


def test_small_gamma_exp_and_unit_power_are_linear():
  ranks = np.linspace(0.0, 1.0, 11)
  np.testing.assert_allclose(jit_transfer(ranks, gamma=1.0), 1 - ranks,
                             atol=1e-6)
  np.testing.assert_allclose(jit_transfer(ranks, transfer="exp", gamma=1e-4),
                             1 - ranks, atol=1e-4)


# --- rank_approximation_loss -------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("options, use_mask", [
    (dict(), False),
    (dict(), True),
    (dict(temperature=0.2, transfer="exp", gamma=3.0), True),
    (dict(temperature=0.05, gamma=0.5, margin=-0.3), True),
    (dict(temperature=0.1, transfer=lambda r: 1.0 - r * r, margin=0.2), True),
])
def test_loss_matches_loop_reference(seed, options, use_mask):
  p = make_problem(seed)
  where = p["where"] if use_mask else None
  # where=None compiled as such (the helper would fill in an all-True mask).
  got = _jit_loss(p["emb"], p["labels"], where=where,
                  **{**LOSS_DEFAULTS, **options})
  want = reference_loss(p["emb"], p["labels"], valid=where, **options)
  assert got.shape == (8,)
  assert np.any(want > 0)
  np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-6)


def slerp_towards(start, target, t):
  """Unit vector a fraction t of the way along the arc from start to target."""
  a = start / np.linalg.norm(start)
  b = target / np.linalg.norm(target)
  angle = math.acos(np.clip(a @ b, -1.0, 1.0))
  return (math.sin((1 - t) * angle) * a + math.sin(t * angle) * b) / math.sin(
      angle)


def path_losses(emb, labels, query, mover, options, steps=25):
  """Query's loss as `mover` slides along the arc towards the query."""
  emb = emb.astype(np.float64)
  stack = []
  for t in np.linspace(0.0, 0.97, steps):
    moved = emb.copy()
    moved[mover] = slerp_towards(emb[mover], emb[query], t)
    stack.append(moved)
  with jax.enable_x64(True):
    options = {"temperature": 0.01, "gamma": 2.0, "margin": 0.0, **options}
    fn = batched_exp_loss if options.pop("transfer", "power") == "exp" else (
        batched_loss)
    losses = fn(np.stack(stack), labels, **options)
    return np.asarray(losses[:, query])


@pytest.mark.parametrize("options", [
    dict(temperature=0.05), dict(temperature=0.01, transfer="exp", gamma=4.0),
    dict(temperature=0.1, gamma=0.5, margin=-0.5)])
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_moving_a_positive_closer_never_raises_its_query_loss(options, seed):
  rng = np.random.default_rng(seed)
  labels = np.array([0, 0, 0, 1, 1, 2, 2, 1], np.int32)
  emb = rng.normal(size=(8, 3))
  for mover in (1, 2):
    losses = path_losses(emb, labels, 0, mover, options)
    assert np.all(np.diff(losses) <= 1e-12), np.diff(losses).max()
    assert losses[-1] < losses[0]


@pytest.mark.parametrize("options", [
    dict(temperature=0.05), dict(temperature=0.01, transfer="exp", gamma=4.0),
    dict(temperature=0.1, gamma=0.5, margin=-0.5)])
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_moving_a_negative_closer_never_lowers_its_query_loss(options, seed):
  rng = np.random.default_rng(seed)
  labels = np.array([0, 0, 0, 1, 1, 2, 2, 1], np.int32)
  emb = rng.normal(size=(8, 3))
  for mover in (3, 5):
    losses = path_losses(emb, labels, 0, mover, options)
    assert np.all(np.diff(losses) >= -1e-12), np.diff(losses).min()
    assert losses[-1] > losses[0]


def test_overtaking_matters_most():
  """A positive's loss falls fastest where it overtakes a negative."""
  labels = np.array([0, 0, 1], np.int32)
  negative_angle = 0.6

  def loss_with_positive_at(angle):
    emb = np.array([[1.0, 0.0], [math.cos(angle), math.sin(angle)],
                    [math.cos(negative_angle), math.sin(negative_angle)]],
                   np.float32)
    return float(jit_loss(emb, labels, temperature=0.01)[0])

  def drop(start):  # loss saved by moving 0.1 rad closer to the query
    return loss_with_positive_at(start) - loss_with_positive_at(start - 0.1)

  crossing = drop(negative_angle + 0.05)
  assert crossing > 5 * drop(1.0)  # far behind the negative
  assert crossing > 5 * drop(0.3)  # already ahead of it
  assert drop(1.0) > 0 and drop(0.3) >= 0
  assert loss_with_positive_at(0.2) < 1e-6  # ranked well apart: nothing to do


def test_well_ranked_batch_costs_less_than_shuffled_labels():
  rng = np.random.default_rng(9)
  centres = np.eye(4)[:3] * 5.0
  labels = np.repeat(np.arange(3), 4).astype(np.int32)
  emb = (centres[labels] + rng.normal(scale=0.3, size=(12, 4))).astype(
      np.float32)
  good = jit_loss(emb, labels)
  bad = jit_loss(emb, rng.permutation(labels))
  assert float(good.mean()) < 1e-3 < float(bad.mean())


def test_gradients_match_finite_differences():
  p = make_problem(8, batch=6)

  # Both transfers in one jitted function, so check_grads compiles a handful
  # of functions once instead of transforming op by op (first order only, to
  # keep the test fast). Gradients flow into embeddings and temperature.
  @jax.jit
  def f(emb, temperature):
    options = dict(temperature=temperature, margin=-0.2, where=p["where"])
    power = rank_approximation_loss(emb, p["labels"], gamma=2.0, **options)
    exp = rank_approximation_loss(emb, p["labels"], transfer="exp", gamma=3.0,
                                  **options)
    return power.sum() + 0.5 * exp.sum()

  with jax.enable_x64(True):
    check_grads(f, (p["emb"].astype(np.float64), 0.1), order=1,
                modes=("rev",), eps=1e-4)


def test_jit_equals_eager_and_vmap_over_problems():
  problems = [make_problem(s) for s in (10, 11, 12)]
  loss = lambda p: rank_approximation_loss(p["emb"], p["labels"],
                                           temperature=0.05, where=p["where"])
  ranks = lambda s, where: smooth_ranks(s, temperature=0.05, where=where)
  sims = np.stack([cosine_matrix(p["emb"]) for p in problems])
  # Eager (op by op, slow) once; jit on every problem.
  np.testing.assert_allclose(jax.jit(loss)(problems[0]), loss(problems[0]),
                             rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(jax.jit(ranks)(sims[0], problems[0]["where"]),
                             ranks(sims[0], problems[0]["where"]), rtol=1e-6)
  jitted = [jit_loss(p["emb"], p["labels"], temperature=0.05,
                     where=p["where"]) for p in problems]
  stacked = {k: np.stack([p[k] for p in problems]) for k in problems[0]}
  np.testing.assert_allclose(jax.jit(jax.vmap(loss))(stacked),
                             np.stack(jitted), rtol=1e-6, atol=1e-7)
  batched_ranks = jax.jit(jax.vmap(ranks))(sims, stacked["where"])
  for r, s, p in zip(batched_ranks, sims, problems):
    np.testing.assert_allclose(r, jit_ranks(s, temperature=0.05,
                                            where=p["where"]), rtol=1e-6)


def test_hyperparameters_traced_under_jit():
  p = make_problem(13)
  # jit_loss traces temperature, gamma and margin (they are not static).
  np.testing.assert_allclose(
      jit_loss(p["emb"], p["labels"], temperature=0.2, gamma=3.0, margin=-0.1),
      reference_loss(p["emb"], p["labels"], 0.2, gamma=3.0, margin=-0.1),
      rtol=2e-5, atol=1e-6)


def test_mask_equals_slicing_even_with_nan_padding():
  p = make_problem(14, batch=9)
  where = p["where"]
  padded = p["emb"].copy()
  padded[~where] = np.nan
  masked = np.asarray(jit_loss(padded, p["labels"], temperature=0.05,
                               where=where))
  sliced = jit_loss(p["emb"][where], p["labels"][where], temperature=0.05)
  np.testing.assert_allclose(masked[where], sliced, rtol=1e-6)
  assert np.all(masked[~where] == 0.0)
  grads = np.asarray(loss_grad(padded, p["labels"], temperature=0.05,
                               where=where))
  assert np.all(np.isfinite(grads))
  assert np.all(grads[~where] == 0.0)


def test_queries_without_positives_or_negatives_get_zero():
  rng = np.random.default_rng(15)
  emb = rng.normal(size=(5, 3)).astype(np.float32)
  labels = np.array([0, 0, 1, 1, 2], np.int32)  # 4 has no positive
  loss = jit_loss(emb, labels, temperature=0.1)
  assert loss[4] == 0.0 and np.all(np.asarray(loss[:4]) > 0)
  grads = loss_grad(emb, labels, np.eye(5, dtype=np.float32)[4],
                    temperature=0.1)
  np.testing.assert_array_equal(grads, 0.0)
  # Single-class batch: nobody has a negative.
  single = jit_loss(emb, np.zeros(5, np.int32))
  np.testing.assert_array_equal(single, 0.0)
  grads = loss_grad(emb, np.zeros(5, np.int32))
  np.testing.assert_array_equal(grads, 0.0)
  # Everything masked, or a batch of one.
  none = jit_loss(emb, labels, where=np.zeros(5, bool))
  np.testing.assert_array_equal(none, 0.0)
  np.testing.assert_array_equal(jit_loss(emb[:1], labels[:1]), 0.0)


def finite_with_finite_grads(emb, labels, **options):
  loss = np.asarray(jit_loss(emb, labels, **options))
  grads = np.asarray(loss_grad(emb, labels, **options))
  assert np.all(np.isfinite(loss)) and np.all(np.isfinite(grads))
  return loss


def test_all_equal_and_zero_embeddings_are_finite():
  labels = np.array([0, 0, 1, 1, 2], np.int32)
  equal = np.tile(np.array([[0.3, -1.2, 2.0]], np.float32), (5, 1))
  loss = finite_with_finite_grads(equal, labels)
  # All ties: every rank is 1/2, s = 1, so the push is (1/2)^2 * 1.
  np.testing.assert_allclose(loss, [0.25, 0.25, 0.25, 0.25, 0.0], rtol=1e-6)
  np.testing.assert_allclose(loss, reference_loss(equal, labels), rtol=1e-6)
  zeros = np.zeros((5, 3), np.float32)
  loss = finite_with_finite_grads(zeros, labels)
  np.testing.assert_allclose(loss, reference_loss(zeros, labels), atol=1e-7)


@pytest.mark.parametrize("scale", [1e-30, 1e-10, 1e10, 1e30])
def test_extreme_scales_give_the_unit_scale_loss(scale):
  p = make_problem(16)
  unit = jit_loss(p["emb"], p["labels"])
  emb = (p["emb"].astype(np.float64) * scale).astype(np.float32)
  loss = finite_with_finite_grads(emb, p["labels"])
  np.testing.assert_allclose(loss, unit, rtol=1e-5, atol=1e-6)


def test_far_apart_classes_and_extreme_temperatures_are_finite():
  labels = np.array([0, 0, 1, 1], np.int32)
  far = np.array([[1e20, 1.0], [1e20, -1.0], [-1e20, 1.0], [-1e20, -1.0]],
                 np.float32)
  loss = finite_with_finite_grads(far, labels)
  np.testing.assert_allclose(loss, 0.0, atol=1e-7)  # perfect ranking
  p = make_problem(17)
  for temperature in (1e-7, 1e3):
    loss = finite_with_finite_grads(p["emb"], p["labels"],
                                    temperature=temperature, gamma=0.5)
    np.testing.assert_allclose(
        loss, reference_loss(p["emb"], p["labels"], temperature, gamma=0.5),
        rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("change, match", [
    (dict(emb=np.zeros((8,), np.float32)),
     r"embeddings must be \[batch, dim\]"),
    (dict(emb=np.zeros((8, 3), np.int32)), "embeddings must have a float"),
    (dict(labels=np.zeros((7,), np.int32)), "labels has 7 entries for a batch"),
    (dict(labels=np.zeros((8,), np.float32)), "labels must have a int dtype"),
    (dict(labels=np.zeros((8, 1), np.int32)), r"labels must be \[batch\]"),
    (dict(where=np.ones((5,), bool)), "where has 5 entries for a batch of 8"),
    (dict(where=np.ones((8,), np.int32)), "where must have a bool dtype"),
    (dict(temperature=0.0), "temperature must be a positive scalar"),
    (dict(temperature=-0.1), "temperature must be a positive scalar"),
    (dict(gamma=0.0), "gamma must be a positive scalar"),
    (dict(transfer="cubic"), r"transfer must be one of \('power', 'exp'\)"),
    (dict(margin=1.0), r"margin must be a scalar in \[-1, 1\)"),
    (dict(margin=-1.5), r"margin must be a scalar in \[-1, 1\)"),
])
def test_loss_bad_input_raises_naming_it(change, match):
  p = make_problem(0)
  args = dict(emb=p["emb"], labels=p["labels"], where=p["where"])
  options = {k: v for k, v in change.items() if k not in args}
  args.update({k: v for k, v in change.items() if k in args})
  with pytest.raises(ValueError, match=match):
    rank_approximation_loss(args["emb"], args["labels"], where=args["where"],
                            **options)


@pytest.mark.parametrize("sims, options, match", [
    (np.zeros((4,), np.float32), {}, r"similarities must be \[batch, batch\]"),
    (np.zeros((4, 5), np.float32), {}, r"must be square \[batch, batch\], got "
                                       r"shape \(4, 5\)"),
    (np.zeros((4, 4), np.int32), {}, "similarities must have a float dtype"),
    (np.zeros((4, 4), np.float32), dict(temperature=0.0),
     "temperature must be a positive scalar"),
    (np.zeros((4, 4), np.float32), dict(temperature=np.ones(2)),
     "temperature must be a positive scalar"),
    (np.zeros((4, 4), np.float32), dict(where=np.ones(3, bool)),
     "where has 3 entries for a batch of 4"),
])
def test_smooth_ranks_bad_input_raises_naming_it(sims, options, match):
  options = {"temperature": 0.1, **options}
  with pytest.raises(ValueError, match=match):
    smooth_ranks(sims, **options)

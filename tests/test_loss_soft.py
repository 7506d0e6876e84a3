"""Soft-label NNGK: the kernel vote and loss with probability rows per centre."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nngk_jax import loss as losses


def _problem(seed, batch=6, num_centres=20, dim=3, k=5, num_classes=4,
             soft=True):
  rng = np.random.default_rng(seed)
  emb = rng.normal(size=(batch, dim)).astype(np.float32)
  centres = rng.normal(size=(num_centres, dim)).astype(np.float32)
  hard = rng.integers(0, num_classes, num_centres)
  probs = np.eye(num_classes, dtype=np.float32)[hard]
  if soft:
    probs = rng.dirichlet(np.ones(num_classes), num_centres).astype(np.float32)
    probs[rng.random(probs.shape) < 0.3] = 0.0  # some exact zeros
    probs[:, 0] += (probs.sum(1) == 0)  # no all-zero rows
    probs /= probs.sum(1, keepdims=True)
  idx = np.stack([rng.choice(num_centres, k, replace=False)
                  for _ in range(batch)]).astype(np.int32)
  labels = rng.integers(0, num_classes, batch).astype(np.int32)
  log_w = rng.normal(scale=0.3, size=num_centres).astype(np.float32)
  mask = rng.random((batch, k)) < 0.8
  return emb, labels, centres, hard.astype(np.int32), probs, idx, log_w, mask


def _loop_log_probs(emb, centres, probs, idx, sigma, log_w, mask):
  """float64 loop: p(c|x) = sum_j k_j y_jc / sum_j k_j."""
  out = np.zeros((len(emb), probs.shape[1]))
  for b in range(len(emb)):
    kernels, votes = [], []
    for j, c in enumerate(idx[b]):
      if not mask[b, j]:
        continue
      d2 = np.sum((emb[b].astype(np.float64) - centres[c]) ** 2)
      kernels.append(math.exp(log_w[c] - d2 / (2 * sigma ** 2)))
      votes.append(probs[c].astype(np.float64))
    if not kernels:
      out[b] = -math.log(probs.shape[1])
      continue
    p = sum(kv * v for kv, v in zip(kernels, votes)) / sum(kernels)
    with np.errstate(divide="ignore"):
      out[b] = np.log(p)
  return out


def _loop_loss(emb, labels, centres, probs, idx, sigma, log_w, mask,
               num_classes):
  """float64 loop of the soft loss with the authors' no-positive rule."""
  out = np.zeros(len(emb))
  for b in range(len(emb)):
    s_all, s_pos, present = 0.0, 0.0, set()
    for j, c in enumerate(idx[b]):
      if not mask[b, j]:
        continue
      d2 = np.sum((emb[b].astype(np.float64) - centres[c]) ** 2)
      kern = math.exp(log_w[c] - d2 / (2 * sigma ** 2))
      s_all += kern
      s_pos += kern * probs[c, labels[b]]
      present |= set(np.flatnonzero(probs[c] > 0).tolist())
    if any(mask[b, j] and probs[c, labels[b]] > 0
           for j, c in enumerate(idx[b])):
      out[b] = -math.log(s_pos / s_all)
    else:
      m = max(num_classes - len(present), 1)
      eps = losses.MIN_PROBABILITY
      out[b] = -math.log(eps / (s_all + m * eps))
  return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_soft_equals_hard_on_one_hot_rows(seed):
  emb, labels, centres, hard, probs, idx, log_w, mask = _problem(seed,
                                                                 soft=False)
  kw = dict(sigma=0.8, centre_log_weights=jnp.asarray(log_w),
            neighbour_mask=jnp.asarray(mask))
  hard_lp = losses.kernel_class_log_probs(emb, centres, hard, idx,
                                          num_classes=4, **kw)
  soft_lp = losses.soft_kernel_class_log_probs(emb, centres, probs, idx, **kw)
  np.testing.assert_allclose(np.exp(soft_lp), np.exp(hard_lp), atol=1e-6)
  for num_classes in (None, 4):
    hard_loss = losses.gaussian_kernel_loss(emb, labels, centres, hard, idx,
                                            num_classes=num_classes, **kw)
    soft_loss = losses.soft_gaussian_kernel_loss(
        emb, labels, centres, probs, idx, num_classes=num_classes, **kw)
    np.testing.assert_allclose(soft_loss, hard_loss, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_soft_matches_float64_loop(seed):
  emb, labels, centres, _, probs, idx, log_w, mask = _problem(seed)
  mask[0] = False  # a row with no neighbour at all
  sigma = 0.9
  kw = dict(sigma=sigma, centre_log_weights=jnp.asarray(log_w),
            neighbour_mask=jnp.asarray(mask))
  log_p = losses.soft_kernel_class_log_probs(emb, centres, probs, idx, **kw)
  expected = _loop_log_probs(emb, centres, probs, idx, sigma, log_w, mask)
  finite = np.isfinite(expected)
  assert np.array_equal(np.isfinite(np.asarray(log_p)), finite)
  np.testing.assert_allclose(np.asarray(log_p)[finite], expected[finite],
                             rtol=1e-4, atol=1e-5)
  loss = losses.soft_gaussian_kernel_loss(emb, labels, centres, probs, idx,
                                          num_classes=4, **kw)
  np.testing.assert_allclose(
      loss, _loop_loss(emb, labels, centres, probs, idx, sigma, log_w, mask, 4),
      rtol=1e-4, atol=1e-4)


def test_soft_loss_gradient_matches_finite_differences():
  emb, labels, centres, _, probs, idx, log_w, _ = _problem(5)
  mask = np.ones(idx.shape, bool)
  sigma = 1.1

  def f(e):
    return jnp.sum(losses.soft_gaussian_kernel_loss(
        e, labels, centres, probs, idx, sigma=sigma,
        centre_log_weights=jnp.asarray(log_w)))

  grad = np.asarray(jax.grad(f)(jnp.asarray(emb)))
  h = 1e-4
  numeric = np.zeros_like(emb, dtype=np.float64)
  for b in range(emb.shape[0]):
    for d in range(emb.shape[1]):
      plus, minus = emb.astype(np.float64), emb.astype(np.float64)
      plus[b, d] += h
      minus[b, d] -= h
      numeric[b, d] = (
          _loop_loss(plus, labels, centres, probs, idx, sigma, log_w, mask,
                     4).sum()
          - _loop_loss(minus, labels, centres, probs, idx, sigma, log_w, mask,
                       4).sum()) / (2 * h)
  np.testing.assert_allclose(grad, numeric, rtol=2e-3, atol=2e-3)


def test_soft_far_away_points_stay_exact_and_finite():
  centres = jnp.array([[0.0, 0.0], [1.0, 0.0]])
  probs = jnp.array([[0.25, 0.75], [1.0, 0.0]])
  far = jnp.array([[1e4, 0.0]])  # every kernel underflows in linear space
  idx = jnp.array([[0, 1]])
  log_p = losses.soft_kernel_class_log_probs(far, centres, probs, idx,
                                             sigma=1.0)
  # The nearer centre (1) dominates completely: p = its row.
  np.testing.assert_allclose(np.exp(log_p[0]), [1.0, 0.0], atol=1e-6)
  loss, grad = jax.value_and_grad(lambda e: losses.soft_gaussian_kernel_loss(
      e, jnp.array([1]), centres, probs, idx, sigma=1.0).sum())(far)
  assert np.isfinite(loss) and np.all(np.isfinite(grad))


def test_soft_nan_input_poisons_only_its_row():
  emb, labels, centres, _, probs, idx, _, _ = _problem(7)
  emb[2, 0] = np.nan
  loss = np.asarray(losses.soft_gaussian_kernel_loss(
      emb, labels, centres, probs, idx, sigma=1.0))
  assert np.isnan(loss[2]) and np.all(np.isfinite(np.delete(loss, 2)))


@pytest.mark.parametrize("change, message", [
    (dict(probs=np.ones((20,), np.float32)), "centre_label_probs must be"),
    (dict(probs=np.ones((19, 4), np.float32)), "centre_label_probs has 19"),
    (dict(probs=np.ones((20, 4), np.int32)), "centre_label_probs must have a float"),
    (dict(num_classes=5), "num_classes=5 but centre_label_probs has 4"),
])
def test_soft_bad_input_raises_naming_it(change, message):
  emb, labels, centres, _, probs, idx, _, _ = _problem(0)
  probs = change.get("probs", probs)
  with pytest.raises(ValueError, match=message):
    losses.soft_gaussian_kernel_loss(emb, labels, centres, probs, idx,
                                     sigma=1.0,
                                     num_classes=change.get("num_classes"))

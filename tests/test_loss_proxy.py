"""Tests of the proxy losses against plain loop-based numpy references."""

import inspect
import math

import jax
import numpy as np
import optax
import pytest
from jax.test_util import check_grads

from nngk_jax.geometry import NORM_EPSILON
from nngk_jax.loss.proxy import normalized_softmax_loss
from nngk_jax.loss.proxy import proxy_anchor_loss
from nngk_jax.loss.proxy import proxy_nca_loss
from nngk_jax.loss.vmf import vmf_loss


def reference_normalize(v):
  """One vector to unit norm, in float64, the zero vector kept at zero."""
  norm = math.sqrt(sum(float(a) ** 2 for a in v))
  return [float(a) / max(norm, NORM_EPSILON) for a in v]


def reference_log_sum_exp(values):
  """log(sum(exp(values))) with the max shifted out; -inf when empty."""
  if not values:
    return -math.inf
  shift = max(values)
  return shift + math.log(sum(math.exp(v - shift) for v in values))


def reference_log1p_exp(v):
  """log(1 + e^v), exact for any v including -inf."""
  if v == -math.inf:
    return 0.0
  return max(v, 0.0) + math.log1p(math.exp(-abs(v)))


def cosine(a, b):
  a, b = reference_normalize(a), reference_normalize(b)
  return sum(x * y for x, y in zip(a, b))


def reference_normalized_softmax(emb, labels, weights, temperature):
  out = []
  for b in range(len(labels)):
    logits = [cosine(emb[b], w) / temperature for w in weights]
    out.append(reference_log_sum_exp(logits) - logits[labels[b]])
  return np.array(out)


def reference_proxy_nca(emb, labels, proxies, scale):
  """Movshovitz-Attias et al. eq. (with s-scaled unit vectors), by loops."""
  out = []
  for b in range(len(labels)):
    x = [scale * a for a in reference_normalize(emb[b])]
    neg_dist = []
    for p in proxies:
      p = [scale * a for a in reference_normalize(p)]
      neg_dist.append(-sum((u - v) ** 2 for u, v in zip(x, p)))
    others = [v for c, v in enumerate(neg_dist) if c != labels[b]]
    out.append(reference_log_sum_exp(others) - neg_dist[labels[b]])
  return np.array(out)


def reference_proxy_anchor(emb, labels, proxies, margin, alpha, where=None):
  """Kim et al. 2020, eq. (4): one loop per proxy and example."""
  batch = len(labels)
  where = np.ones(batch, bool) if where is None else where
  pos_total, neg_total, num_with_positive = 0.0, 0.0, 0
  for c, p in enumerate(proxies):
    pos, neg = [], []
    for b in range(batch):
      if not where[b]:
        continue
      s = cosine(emb[b], p)
      if labels[b] == c:
        pos.append(-alpha * (s - margin))
      else:
        neg.append(alpha * (s + margin))
    if pos:
      num_with_positive += 1
      pos_total += reference_log1p_exp(reference_log_sum_exp(pos))
    neg_total += reference_log1p_exp(reference_log_sum_exp(neg))
  return pos_total / max(num_with_positive, 1) + neg_total / len(proxies)


# Jitted once: the many eager calls below would each compile dozens of small
# per-op kernels. The eager path is compared with these in
# test_jit_equals_eager_and_vmap_over_problems.
jit_normalized_softmax = jax.jit(normalized_softmax_loss)
jit_proxy_nca = jax.jit(proxy_nca_loss)
jit_proxy_anchor = jax.jit(proxy_anchor_loss)
jit_proxy_anchor_grads = jax.jit(jax.grad(proxy_anchor_loss, argnums=(0, 2)))


def make_problem(seed, batch=6, num_classes=4, dim=5, scale=1.0):
  rng = np.random.default_rng(seed)
  emb = (rng.normal(size=(batch, dim)) * scale).astype(np.float32)
  proxies = rng.normal(size=(num_classes, dim)).astype(np.float32)
  labels = rng.integers(0, num_classes, batch).astype(np.int32)
  where = rng.random(batch) > 0.3
  return dict(emb=emb, labels=labels, proxies=proxies, where=where)


# ------------------------------------------------------------------ shared --


def test_edge_cases_are_finite():
  """Single-class batch, equal, far-apart and near-zero embeddings."""
  rng = np.random.default_rng(0)
  proxies = rng.normal(size=(3, 4)).astype(np.float32)
  cases = {
      "single_class_batch": (rng.normal(size=(5, 4)), np.zeros(5)),
      "all_equal_embeddings": (np.ones((5, 4)), np.array([0, 1, 2, 0, 1])),
      "far_apart_embeddings": (np.concatenate([1e6 * np.eye(4)[:3],
                                               -1e6 * np.eye(4)[:2]]),
                               np.array([0, 1, 2, 0, 1])),
      "zero_embeddings": (np.zeros((5, 4)), np.array([0, 1, 2, 0, 1])),
  }

  def all_losses(emb, labels, proxies, hyper):
    return (normalized_softmax_loss(emb, labels, proxies,
                                    temperature=1 / hyper).sum(),
            proxy_nca_loss(emb, labels, proxies, scale=hyper ** 0.5).sum(),
            proxy_anchor_loss(emb, labels, proxies, alpha=hyper))

  # One compilation for every case: same shapes, traced hyperparameter.
  loss_and_grads = jax.jit(lambda *args: (
      all_losses(*args), jax.jacrev(all_losses, argnums=(0, 2))(*args)))
  for name, (emb, labels) in cases.items():
    for hyper in (1.0, 1e3):
      losses, grads = loss_and_grads(emb.astype(np.float32),
                                     labels.astype(np.int32), proxies, hyper)
      assert np.all(np.isfinite(losses)), (name, hyper)
      assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads)), (
          name, hyper)


def test_jit_equals_eager_and_vmap_over_problems():
  problems = [make_problem(s) for s in (10, 11, 12)]
  stacked = {k: np.stack([p[k] for p in problems]) for k in problems[0]}
  losses = [
      (normalized_softmax_loss, jit_normalized_softmax,
       lambda p: dict(temperature=0.1)),
      (proxy_nca_loss, jit_proxy_nca, lambda p: dict(scale=3.0)),
      (proxy_anchor_loss, jit_proxy_anchor,  # the mask is vmapped too
       lambda p: dict(margin=0.1, alpha=32.0, where=p["where"])),
  ]
  for eager_fn, jit_fn, kwargs in losses:
    eager = [eager_fn(p["emb"], p["labels"], p["proxies"], **kwargs(p))
             for p in problems]
    for p, e in zip(problems, eager):
      np.testing.assert_allclose(
          jit_fn(p["emb"], p["labels"], p["proxies"], **kwargs(p)), e,
          rtol=1e-5)
    one = lambda p, f=eager_fn, kw=kwargs: f(p["emb"], p["labels"],
                                             p["proxies"], **kw(p))
    batched = jax.jit(jax.vmap(one))(stacked)
    np.testing.assert_allclose(batched, np.stack(eager), rtol=1e-5)


def test_gradients_match_finite_differences():
  p = make_problem(8, batch=5, num_classes=3, dim=3)
  with jax.enable_x64(True):
    emb = p["emb"].astype(np.float64)
    proxies = p["proxies"].astype(np.float64)
    # Jitted and first order: each compilation costs a second here.
    for f in [
        lambda e, q: normalized_softmax_loss(
            e, p["labels"], q, temperature=0.5).sum(),
        lambda e, q: proxy_nca_loss(e, p["labels"], q).sum(),
        lambda e, q: proxy_anchor_loss(
            e, p["labels"], q, alpha=4.0, where=p["where"]),
    ]:
      check_grads(jax.jit(f), (emb, proxies), order=1, modes=("rev",),
                  eps=1e-4)


def test_out_of_range_label_under_jit_gives_nan():
  p = make_problem(14)
  labels = p["labels"].copy()
  labels[1], labels[3] = 4, -1
  for loss in (
      jit_normalized_softmax(p["emb"], labels, p["proxies"], temperature=0.1),
      jit_proxy_nca(p["emb"], labels, p["proxies"], scale=3.0)):
    loss = np.asarray(loss)
    assert np.isnan(loss[1]) and np.isnan(loss[3])
    assert np.all(np.isfinite(np.delete(loss, [1, 3])))
  anchor = lambda l, w: jit_proxy_anchor(p["emb"], l, p["proxies"], where=w)
  assert np.isnan(anchor(labels, np.ones(6, bool)))
  # Padded rows' labels are ignored.
  where = np.ones(6, bool)
  where[[1, 3]] = False
  np.testing.assert_allclose(anchor(labels, where),
                             anchor(p["labels"], where), rtol=1e-6)


# ------------------------------------------------------- normalized softmax --


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("scale", [1.0, 1e4, 1e-6])
@pytest.mark.parametrize("temperature", [0.05, 1.0])
def test_normalized_softmax_matches_loop_reference(seed, scale, temperature):
  p = make_problem(seed, scale=scale)
  got = jit_normalized_softmax(p["emb"], p["labels"], p["proxies"],
                               temperature=temperature)
  want = reference_normalized_softmax(p["emb"], p["labels"], p["proxies"],
                                      temperature)
  assert got.shape == (6,)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_normalized_softmax_special_cases():
  """Cross-entropy of cosine / T logits; the vMF loss with kappa = 1 / T."""
  p = make_problem(2)
  unit_emb = p["emb"] / np.linalg.norm(p["emb"], axis=1, keepdims=True)
  unit_w = p["proxies"] / np.linalg.norm(p["proxies"], axis=1, keepdims=True)
  want = optax.softmax_cross_entropy_with_integer_labels(
      unit_emb @ unit_w.T / 0.05, p["labels"])
  got = jit_normalized_softmax(p["emb"], p["labels"], p["proxies"],
                               temperature=0.05)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(
      got, jax.jit(vmf_loss)(p["emb"], p["labels"], p["proxies"], kappa=20.0),
      rtol=1e-6)
  assert inspect.signature(normalized_softmax_loss).parameters[
      "temperature"].default == 0.05


def test_normalized_softmax_tiny_temperature_is_exact():
  p = make_problem(3)
  loss = jit_normalized_softmax(p["emb"], p["labels"], p["proxies"],
                                temperature=1e-4)  # logits up to 1e4
  want = reference_normalized_softmax(p["emb"], p["labels"], p["proxies"],
                                      1e-4)
  np.testing.assert_allclose(loss, want, rtol=1e-5, atol=1e4 * 1e-6)


# --------------------------------------------------------------- proxy NCA --


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("scale", [1.0, 1e4, 1e-6])
@pytest.mark.parametrize("proxy_scale", [1.0, 3.0])
def test_proxy_nca_matches_loop_reference(seed, scale, proxy_scale):
  p = make_problem(seed, scale=scale)
  got = jit_proxy_nca(p["emb"], p["labels"], p["proxies"], scale=proxy_scale)
  want = reference_proxy_nca(p["emb"], p["labels"], p["proxies"], proxy_scale)
  assert got.shape == (6,)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_defaults():
  params = lambda f: {k: v.default
                      for k, v in inspect.signature(f).parameters.items()}
  assert params(proxy_nca_loss)["scale"] == 3.0
  assert params(proxy_anchor_loss)["margin"] == 0.1
  assert params(proxy_anchor_loss)["alpha"] == 32.0


def test_proxy_nca_is_cross_entropy_without_the_positive():
  """Excluding p_y from the sum: CE(-d) + log(1 - softmax(-d)_y)."""
  p = make_problem(5)
  unit_emb = p["emb"] / np.linalg.norm(p["emb"], axis=1, keepdims=True)
  unit_p = p["proxies"] / np.linalg.norm(p["proxies"], axis=1, keepdims=True)
  neg_dist = -9.0 * ((unit_emb[:, None] - unit_p[None]) ** 2).sum(-1)
  cross_entropy = optax.softmax_cross_entropy_with_integer_labels(
      neg_dist, p["labels"])
  prob_y = np.exp(-np.asarray(cross_entropy, np.float64))
  got = jit_proxy_nca(p["emb"], p["labels"], p["proxies"], scale=3.0)
  np.testing.assert_allclose(got, cross_entropy + np.log1p(-prob_y),
                             rtol=1e-4, atol=1e-5)


def test_proxy_nca_two_classes_is_distance_difference_and_can_be_negative():
  emb = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
  proxies = np.array([[1.0, 0.0], [-1.0, 0.0]], np.float32)
  loss = jit_proxy_nca(emb, np.array([0, 0], np.int32), proxies, scale=3.0)
  # d_y - d_other: (0 - 36) and (18 - 18).
  np.testing.assert_allclose(loss, [-36.0, 0.0], atol=1e-5)


def test_proxy_nca_large_scale_is_exact():
  """scale 100: distances up to 4e4, so every exp(-d) underflows."""
  p = make_problem(6)
  loss = jit_proxy_nca(p["emb"], p["labels"], p["proxies"], scale=100.0)
  want = reference_proxy_nca(p["emb"], p["labels"], p["proxies"], 100.0)
  np.testing.assert_allclose(loss, want, rtol=1e-5, atol=2e4 * 1e-6)


# ------------------------------------------------------------ proxy anchor --


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("scale", [1.0, 1e4, 1e-6])
@pytest.mark.parametrize("use_where", [False, True])
def test_proxy_anchor_matches_loop_reference(seed, scale, use_where):
  p = make_problem(seed, batch=6, scale=scale)
  where = p["where"] if use_where else None
  got = jit_proxy_anchor(p["emb"], p["labels"], p["proxies"], where=where)
  want = reference_proxy_anchor(p["emb"], p["labels"], p["proxies"], 0.1,
                                32.0, where)
  assert got.shape == ()
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_proxy_anchor_huge_alpha_is_exact():
  p = make_problem(7, batch=6)
  got = jit_proxy_anchor(p["emb"], p["labels"], p["proxies"], alpha=1e4,
                         margin=0.2)
  want = reference_proxy_anchor(p["emb"], p["labels"], p["proxies"], 0.2,
                                1e4)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e4 * 1e-6)


def test_proxy_anchor_mask_equals_slicing():
  p = make_problem(8, batch=10)
  where = np.zeros(10, bool)
  where[:6] = True
  sliced = {k: p[k][:6] for k in ("emb", "labels")}
  masked_loss = jit_proxy_anchor(p["emb"], p["labels"], p["proxies"],
                                 where=where)
  sliced_loss = jit_proxy_anchor(sliced["emb"], sliced["labels"],
                                 p["proxies"], where=None)
  np.testing.assert_allclose(masked_loss, sliced_loss, rtol=1e-6)
  grad_masked = jit_proxy_anchor_grads(p["emb"], p["labels"], p["proxies"],
                                       where=where)
  grad_sliced = jit_proxy_anchor_grads(sliced["emb"], sliced["labels"],
                                       p["proxies"], where=np.ones(6, bool))
  np.testing.assert_allclose(grad_masked[0][:6], grad_sliced[0], rtol=1e-5,
                             atol=1e-7)
  np.testing.assert_array_equal(grad_masked[0][6:], 0.0)
  # float32 sums over 10 vs 6 rows round differently: tolerance relative to
  # the gradient's scale (a masking bug would be off by the gradient itself).
  scale = float(np.abs(grad_sliced[1]).max())
  np.testing.assert_allclose(grad_masked[1], grad_sliced[1], rtol=1e-5,
                             atol=1e-4 * scale)


def test_proxy_anchor_fully_masked_batch_is_zero():
  p = make_problem(9, batch=10)
  where = np.zeros(10, bool)
  loss = jit_proxy_anchor(p["emb"], p["labels"], p["proxies"], where=where)
  assert float(loss) == 0.0
  for g in jit_proxy_anchor_grads(p["emb"], p["labels"], p["proxies"],
                                  where=where):
    np.testing.assert_array_equal(g, 0.0)


def test_proxy_anchor_closed_forms():
  proxies = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]], np.float32)
  # Single-class batch: one proxy with positives, all three have negatives
  # only through the other two.
  emb = np.array([[2.0, 0.0], [0.0, 5.0]], np.float32)
  labels = np.array([0, 0], np.int32)
  alpha, margin = 2.0, 0.1
  pos = math.log1p(math.exp(-alpha * (1 - margin))
                   + math.exp(-alpha * (0 - margin)))
  neg = (0.0  # proxy 0: no negatives
         + math.log1p(math.exp(alpha * (0 + margin))
                      + math.exp(alpha * (1 + margin)))
         + math.log1p(math.exp(alpha * (-1 + margin))
                      + math.exp(alpha * (0 + margin))))
  got = jit_proxy_anchor(emb, labels, proxies, margin=margin, alpha=alpha)
  np.testing.assert_allclose(got, pos / 1 + neg / 3, rtol=1e-6)
  np.testing.assert_allclose(
      got, reference_proxy_anchor(emb, labels, proxies, margin, alpha),
      rtol=1e-6)


# -------------------------------------------------------------- bad inputs --


@pytest.mark.parametrize("loss_name", ["normalized_softmax", "proxy_nca",
                                       "proxy_anchor"])
@pytest.mark.parametrize("change, match", [
    (dict(emb=np.zeros((6, 3), np.float32)),
     "embeddings are 3-D but .* are 5-D"),
    (dict(emb=np.zeros((6,), np.float32)), r"embeddings must be \[batch, dim\]"),
    (dict(emb=np.zeros((6, 5), np.int32)), "embeddings must have a float"),
    (dict(proxies=np.zeros((4, 5), np.int32)), "must have a float dtype"),
    (dict(proxies=np.zeros((5,), np.float32)),
     r"must be \[num_classes, dim\]"),
    (dict(labels=np.zeros((5,), np.int32)), "labels has 5 entries"),
    (dict(labels=np.zeros((6,), np.float32)), "labels must have a int dtype"),
    (dict(labels=np.full((6,), 4, np.int32)), r"labels must lie in \[0, 4\)"),
    (dict(hyper=0.0), "must be a positive scalar"),
    (dict(hyper=-1.0), "must be a positive scalar"),
])
def test_bad_input_raises_naming_it(loss_name, change, match):
  p = make_problem(0)
  p.update(change)
  hyper = change.get("hyper", 1.0)
  fn = {
      "normalized_softmax": lambda: normalized_softmax_loss(
          p["emb"], p["labels"], p["proxies"], temperature=hyper),
      "proxy_nca": lambda: proxy_nca_loss(
          p["emb"], p["labels"], p["proxies"], scale=hyper),
      "proxy_anchor": lambda: proxy_anchor_loss(
          p["emb"], p["labels"], p["proxies"], alpha=hyper),
  }[loss_name]
  with pytest.raises(ValueError, match=match):
    fn()


@pytest.mark.parametrize("call, match", [
    (lambda p: normalized_softmax_loss(p["emb"], p["labels"], p["proxies"],
                                       temperature=0.0),
     "temperature must be a positive scalar"),
    (lambda p: proxy_nca_loss(p["emb"], p["labels"], p["proxies"],
                              scale=np.ones(2)),
     "scale must be a positive scalar"),
    (lambda p: proxy_anchor_loss(p["emb"], p["labels"], p["proxies"],
                                 alpha=-3.0),
     "alpha must be a positive scalar"),
    (lambda p: proxy_nca_loss(p["emb"], p["labels"] * 0, p["proxies"][:1]),
     r"at least 2 proxies, got shape \(1, 5\)"),
    (lambda p: proxy_anchor_loss(p["emb"], p["labels"], p["proxies"],
                                 where=np.ones(5, bool)),
     r"where must be \[batch\] = \(6,\), got shape \(5,\)"),
    (lambda p: proxy_anchor_loss(p["emb"], p["labels"], p["proxies"],
                                 where=np.ones(6, np.int32)),
     "where must have a bool dtype"),
])
def test_specific_errors(call, match):
  with pytest.raises(ValueError, match=match):
    call(make_problem(0))

"""Tests of the von Mises-Fisher loss against plain loop-based numpy references
and of the class mean directions."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.test_util import check_grads

from nngk_jax.geometry import NORM_EPSILON
from nngk_jax.geometry import l2_normalize
from nngk_jax.loss.vmf import vmf_class_means
from nngk_jax.loss.vmf import vmf_loss


def reference_normalize(v):
  """One vector to unit norm, in float64, the zero vector kept at zero."""
  norm = math.sqrt(sum(float(a) ** 2 for a in v))
  return [float(a) / max(norm, NORM_EPSILON) for a in v]


def reference_log_sum_exp(values):
  shift = max(values)
  return shift + math.log(sum(math.exp(v - shift) for v in values))


def reference_vmf_loss(emb, labels, means, kappa):
  """-log(e^{k mu_y.z} / sum_c e^{k mu_c.z}) by the paper, one loop each."""
  unit_means = [reference_normalize(m) for m in means]
  out = []
  for b in range(len(labels)):
    z = reference_normalize(emb[b])
    logits = [kappa * sum(m[d] * z[d] for d in range(len(z)))
              for m in unit_means]
    out.append(reference_log_sum_exp(logits) - logits[labels[b]])
  return np.array(out)


def reference_class_means(emb, labels, num_classes):
  dim = emb.shape[1]
  out = np.zeros((num_classes, dim))
  for c in range(num_classes):
    total = [0.0] * dim
    for i in range(len(labels)):
      if labels[i] == c:
        z = reference_normalize(emb[i])
        total = [t + a for t, a in zip(total, z)]
    out[c] = reference_normalize(total)
  return out


# Jitted once per shape: an eager call compiles dozens of per-op kernels, which
# costs seconds here. The eager path is compared with these in
# test_jit_equals_eager_and_vmap_over_problems.
jit_vmf_loss = jax.jit(vmf_loss)
jit_vmf_loss_and_grads = jax.jit(jax.value_and_grad(
    lambda e, l, m, k: vmf_loss(e, l, m, kappa=k).sum(), argnums=(0, 2)))
jit_class_means = jax.jit(vmf_class_means, static_argnames="num_classes")


def make_problem(seed, batch=6, num_classes=4, dim=5, scale=1.0):
  rng = np.random.default_rng(seed)
  emb = (rng.normal(size=(batch, dim)) * scale).astype(np.float32)
  means = rng.normal(size=(num_classes, dim)).astype(np.float32)
  labels = rng.integers(0, num_classes, batch).astype(np.int32)
  return dict(emb=emb, labels=labels, means=means)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("scale", [1.0, 1e4, 1e-6])
@pytest.mark.parametrize("kappa", [1.0, 16.0])
def test_loss_matches_loop_reference(seed, scale, kappa):
  p = make_problem(seed, scale=scale)
  got = jit_vmf_loss(p["emb"], p["labels"], p["means"], kappa=kappa)
  want = reference_vmf_loss(p["emb"], p["labels"], p["means"], kappa)
  assert got.shape == (6,)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_loss_is_invariant_to_norms():
  p = make_problem(3)
  base = jit_vmf_loss(p["emb"], p["labels"], p["means"], kappa=8.0)
  scaled = jit_vmf_loss(p["emb"] * 1e4, p["labels"], p["means"] * 1e-5,
                        kappa=8.0)
  np.testing.assert_allclose(scaled, base, rtol=1e-5)


def test_huge_kappa_is_exact_where_exp_overflows():
  p = make_problem(4)
  kappa = 1e4  # e^{1e4} overflows even float64
  loss = jit_vmf_loss(p["emb"], p["labels"], p["means"], kappa=kappa)
  want = reference_vmf_loss(p["emb"], p["labels"], p["means"], kappa)
  # float32 cosines carry ~1e-7 error, times kappa.
  np.testing.assert_allclose(loss, want, rtol=1e-5, atol=kappa * 1e-6)
  _, grads = jit_vmf_loss_and_grads(p["emb"], p["labels"], p["means"], kappa)
  assert all(np.all(np.isfinite(g)) for g in grads)


def test_zero_embedding_and_zero_mean_are_finite():
  emb = np.array([[0.0, 0.0, 0.0], [1.0, 2.0, 0.0]], np.float32)
  means = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0]],
                   np.float32)
  labels = np.array([0, 2], np.int32)
  loss = jit_vmf_loss(emb, labels, means, kappa=5.0)
  # Zero embedding: all cosines 0, so the uniform log(C).
  np.testing.assert_allclose(loss[0], math.log(3), rtol=1e-6)
  np.testing.assert_allclose(loss, reference_vmf_loss(emb, labels, means, 5.0),
                             rtol=1e-6)
  _, grads = jit_vmf_loss_and_grads(emb, labels, means, 5.0)
  assert all(np.all(np.isfinite(g)) for g in grads)


def test_edge_cases_are_finite():
  rng = np.random.default_rng(5)
  means = rng.normal(size=(3, 4)).astype(np.float32)
  cases = {
      "single_class_batch": (rng.normal(size=(5, 4)), np.zeros(5)),
      "all_equal_embeddings": (np.ones((5, 4)), np.array([0, 1, 2, 0, 1])),
      "far_apart_embeddings": (np.concatenate([1e6 * np.eye(4)[:3],
                                               -1e6 * np.eye(4)[:2]]),
                               np.array([0, 1, 2, 0, 1])),
      "near_zero_embeddings": (1e-30 * np.ones((5, 4)), np.zeros(5)),
  }
  for name, (emb, labels) in cases.items():
    for kappa in (1.0, 1e3):  # one compilation: same shapes, traced kappa
      loss, grads = jit_vmf_loss_and_grads(emb.astype(np.float32),
                                           labels.astype(np.int32), means,
                                           kappa)
      assert np.isfinite(loss), name
      assert all(np.all(np.isfinite(g)) for g in grads), name


def test_single_class_loss_is_zero():
  p = make_problem(6, num_classes=1)
  loss = jit_vmf_loss(p["emb"], p["labels"], p["means"], kappa=3.0)
  np.testing.assert_allclose(loss, 0.0, atol=1e-6)


def test_special_case_equals_softmax_cross_entropy():
  """kappa * (normalised means) as a bias-free linear layer on unit inputs."""
  p = make_problem(7)
  kappa = 12.0
  unit_emb = p["emb"] / np.linalg.norm(p["emb"], axis=1, keepdims=True)
  weights = kappa * p["means"] / np.linalg.norm(p["means"], axis=1,
                                                keepdims=True)
  logits = unit_emb @ weights.T
  want = optax.softmax_cross_entropy_with_integer_labels(logits, p["labels"])
  got = jit_vmf_loss(p["emb"], p["labels"], p["means"], kappa=kappa)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_gradients_match_finite_differences():
  p = make_problem(8, batch=4, num_classes=3, dim=3)
  with jax.enable_x64(True):
    emb = p["emb"].astype(np.float64)
    means = p["means"].astype(np.float64)

    # Jitted: check_grads calls them many times, eager dispatch is slow.
    @jax.jit
    def f(e, m):
      return vmf_loss(e, p["labels"], m, kappa=4.0).sum()

    check_grads(f, (emb, means), order=1, modes=("rev",), eps=1e-4)
    check_grads(jax.jit(lambda e: vmf_class_means(e, p["labels"],
                                                  num_classes=3)),
                (emb,), order=1, modes=("rev",), eps=1e-4)


def test_jit_equals_eager_and_vmap_over_problems():
  problems = [make_problem(s) for s in (10, 11, 12)]
  eager = [vmf_loss(p["emb"], p["labels"], p["means"], kappa=6.0)
           for p in problems]
  for p, e in zip(problems, eager):
    np.testing.assert_allclose(
        jit_vmf_loss(p["emb"], p["labels"], p["means"], kappa=6.0), e,
        rtol=1e-6)
  stacked = {k: np.stack([p[k] for p in problems]) for k in problems[0]}
  batched = jax.jit(jax.vmap(lambda e, l, m: vmf_loss(e, l, m, kappa=6.0)))(
      stacked["emb"], stacked["labels"], stacked["means"])
  np.testing.assert_allclose(batched, np.stack(eager), rtol=1e-6)


def test_kappa_traced_under_jit():
  p = make_problem(13)
  f = jax.jit(lambda k: vmf_loss(p["emb"], p["labels"], p["means"], kappa=k))
  np.testing.assert_allclose(
      f(2.5), reference_vmf_loss(p["emb"], p["labels"], p["means"], 2.5),
      rtol=1e-5)


def test_out_of_range_label_under_jit_poisons_only_its_row():
  p = make_problem(14)
  labels = p["labels"].copy()
  labels[1], labels[3] = 4, -1
  loss = np.asarray(jit_vmf_loss(p["emb"], labels, p["means"], kappa=1.0))
  assert np.isnan(loss[1]) and np.isnan(loss[3])
  assert np.all(np.isfinite(np.delete(loss, [1, 3])))


def test_class_means_match_loop_reference():
  rng = np.random.default_rng(15)
  emb = (rng.normal(size=(30, 4)) * rng.uniform(1e-3, 1e3, (30, 1))).astype(
      np.float32)
  labels = np.repeat(np.arange(5), 6).astype(np.int32)
  rng.shuffle(labels)
  got = vmf_class_means(emb, labels, num_classes=5)
  np.testing.assert_allclose(got, reference_class_means(emb, labels, 5),
                             rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, rtol=1e-6)
  np.testing.assert_allclose(jit_class_means(emb, labels, num_classes=5), got,
                             rtol=1e-6)


def test_class_means_count_directions_not_magnitudes():
  emb = np.array([[1e6, 0.0], [0.0, 1.0]], np.float32)
  means = vmf_class_means(emb, np.array([0, 0], np.int32), num_classes=1)
  np.testing.assert_allclose(means, [[math.sqrt(0.5), math.sqrt(0.5)]],
                             rtol=1e-6)


def test_class_means_empty_class():
  emb = np.ones((3, 2), np.float32)
  labels = np.array([0, 0, 2], np.int32)
  with pytest.raises(ValueError, match=r"classes \[1\] \(1 in all\) have none"):
    vmf_class_means(emb, labels, num_classes=3)
  # Under jit the labels are traced: the empty class gets a zero row.
  means = jit_class_means(emb, labels, num_classes=3)
  np.testing.assert_array_equal(means[1], 0.0)
  np.testing.assert_allclose(np.asarray(means)[[0, 2]], math.sqrt(0.5),
                             rtol=1e-6)
  loss = jit_vmf_loss(emb, labels, means, kappa=2.0)
  assert np.all(np.isfinite(loss))


def test_l2_normalize():
  x = np.array([[3.0, 4.0], [0.0, 0.0], [1e-30, 0.0], [1e4, -1e4]],
               np.float32)
  got = l2_normalize(x)
  np.testing.assert_allclose(got[0], [0.6, 0.8], rtol=1e-6)
  np.testing.assert_array_equal(got[1], 0.0)
  assert np.linalg.norm(got[2]) < 1.0
  np.testing.assert_allclose(got[3], [math.sqrt(0.5), -math.sqrt(0.5)],
                             rtol=1e-6)
  grads = jax.jit(jax.grad(lambda v: l2_normalize(v).sum()))(x)
  assert np.all(np.isfinite(grads))
  half = l2_normalize(np.zeros((1, 3), jnp.bfloat16))
  assert half.dtype == jnp.float32 and np.all(half == 0.0)


@pytest.mark.parametrize("change, match", [
    (dict(kappa=0.0), "kappa must be a positive scalar"),
    (dict(kappa=-2.0), "kappa must be a positive scalar"),
    (dict(kappa=np.ones(2)), "kappa must be a positive scalar"),
    (dict(emb=np.zeros((6, 3), np.float32)),
     "embeddings are 3-D but class_means are 5-D"),
    (dict(emb=np.zeros((6,), np.float32)), r"embeddings must be \[batch, dim\]"),
    (dict(emb=np.zeros((6, 5), np.int32)), "embeddings must have a float"),
    (dict(means=np.zeros((5,), np.float32)),
     r"class_means must be \[num_classes, dim\]"),
    (dict(means=np.zeros((0, 5), np.float32)), "at least one class"),
    (dict(labels=np.zeros((5,), np.int32)), "labels has 5 entries"),
    (dict(labels=np.zeros((6,), np.float32)), "labels must have a int dtype"),
    (dict(labels=np.full((6,), 4, np.int32)), r"labels must lie in \[0, 4\)"),
    (dict(labels=np.full((6,), -1, np.int32)), r"labels must lie in \[0, 4\)"),
])
def test_bad_input_raises_naming_it(change, match):
  p = make_problem(0)
  p.update(change)
  with pytest.raises(ValueError, match=match):
    vmf_loss(p["emb"], p["labels"], p["means"], kappa=change.get("kappa", 1.0))


@pytest.mark.parametrize("kwargs, match", [
    (dict(num_classes=0), "num_classes must be a positive int"),
    (dict(num_classes=2.0), "num_classes must be a positive int"),
    (dict(num_classes=3, labels=np.array([0, 1, 3], np.int32)),
     r"labels must lie in \[0, 3\)"),
    (dict(num_classes=3, emb=np.ones((3,), np.float32)),
     r"embeddings must be \[num_examples, dim\]"),
    (dict(num_classes=3, labels=np.array([0, 1], np.int32)),
     "labels has 2 entries"),
])
def test_class_means_bad_input_raises(kwargs, match):
  emb = kwargs.pop("emb", np.ones((3, 2), np.float32))
  labels = kwargs.pop("labels", np.array([0, 1, 2], np.int32))
  with pytest.raises(ValueError, match=match):
    vmf_class_means(emb, labels, **kwargs)

"""Tests for nngk_jax.ewc against plain numpy loops."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nngk_jax import ewc


def _tree(rng, scale=1.0):
  return {"dense": {"w": scale * rng.normal(size=(3, 4)).astype(np.float32),
                    "b": scale * rng.normal(size=(4,)).astype(np.float32)},
          "log_weights": scale * rng.normal(size=(5,)).astype(np.float32)}


def _penalty_loop(params, anchor, fisher, strength):
  total = 0.0
  for p, a, f in zip(jax.tree_util.tree_leaves(params),
                     jax.tree_util.tree_leaves(anchor),
                     jax.tree_util.tree_leaves(fisher)):
    for theta, theta_star, f_i in zip(np.ravel(p), np.ravel(a), np.ravel(f)):
      total += f_i * (float(theta) - float(theta_star)) ** 2
  return strength / 2 * total


def test_penalty_matches_loop_and_jit():
  rng = np.random.default_rng(0)
  params, anchor = _tree(rng), _tree(rng)
  fisher = jax.tree_util.tree_map(np.abs, _tree(rng))
  expected = _penalty_loop(params, anchor, fisher, 3.0)
  np.testing.assert_allclose(ewc.ewc_penalty(params, anchor, fisher, 3.0),
                             expected, rtol=1e-5)
  jitted = jax.jit(ewc.ewc_penalty)(params, anchor, fisher, 3.0)
  np.testing.assert_allclose(jitted, expected, rtol=1e-5)


def test_penalty_is_zero_at_the_anchor():
  rng = np.random.default_rng(1)
  params = _tree(rng)
  fisher = jax.tree_util.tree_map(np.abs, _tree(rng))
  assert float(ewc.ewc_penalty(params, params, fisher, 100.0)) == 0.0
  # ...and only there, for a positive Fisher.
  moved = jax.tree_util.tree_map(lambda p: p + 1e-2, params)
  assert float(ewc.ewc_penalty(moved, params, fisher, 100.0)) > 0.0


def test_penalty_gradient_is_strength_fisher_distance():
  rng = np.random.default_rng(2)
  params, anchor = _tree(rng), _tree(rng)
  fisher = jax.tree_util.tree_map(np.abs, _tree(rng))
  grads = jax.grad(ewc.ewc_penalty)(params, anchor, fisher, 0.7)
  expected = jax.tree_util.tree_map(lambda p, a, f: 0.7 * f * (p - a),
                                    params, anchor, fisher)
  for got, want in zip(jax.tree_util.tree_leaves(grads),
                       jax.tree_util.tree_leaves(expected)):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)


def test_penalty_rejects_bad_inputs():
  params = {"w": jnp.ones(3)}
  with pytest.raises(ValueError, match="strength"):
    ewc.ewc_penalty(params, params, params, -1.0)
  with pytest.raises(ValueError, match="structure"):
    ewc.ewc_penalty(params, {"v": jnp.ones(3)}, params, 1.0)
  with pytest.raises(ValueError, match=r"fisher\['w'\] has shape \(2,\)"):
    ewc.ewc_penalty(params, params, {"w": jnp.ones(2)}, 1.0)


# ----------------------------------------------------------------------------
# The Fisher of a linear softmax model.


def _softmax_nll(params, example):
  logits = example["x"] @ params["w"] + params["b"]
  return -jax.nn.log_softmax(logits)[example["y"]]


def _fisher_loop(params, xs, ys):
  """Per-example gradients of -log softmax(x W + b)[y], written out."""
  w, b = np.asarray(params["w"], np.float64), np.asarray(params["b"],
                                                         np.float64)
  fisher = {"w": np.zeros_like(w), "b": np.zeros_like(b)}
  for x, y in zip(xs.astype(np.float64), ys):
    logits = x @ w + b
    p = np.exp(logits - logits.max())
    p /= p.sum()
    delta = p.copy()
    delta[y] -= 1.0                   # d loss / d logits
    fisher["w"] += np.outer(x, delta) ** 2
    fisher["b"] += delta ** 2
  return {k: v / len(xs) for k, v in fisher.items()}


def test_fisher_of_linear_softmax_matches_loop():
  rng = np.random.default_rng(3)
  params = {"w": rng.normal(size=(4, 3)).astype(np.float32),
            "b": rng.normal(size=(3,)).astype(np.float32)}
  xs = rng.normal(size=(11, 4)).astype(np.float32)
  ys = rng.integers(0, 3, size=11)
  # Uneven batches: the mean is over examples, not over batches.
  batches = [{"x": xs[s], "y": ys[s]}
             for s in (slice(0, 5), slice(5, 7), slice(7, 11))]
  fisher = ewc.fisher_diagonal(_softmax_nll, params, iter(batches))
  expected = _fisher_loop(params, xs, ys)
  assert set(fisher) == {"w", "b"}
  for key in expected:
    assert fisher[key].shape == params[key].shape
    assert fisher[key].dtype == jnp.float32
    np.testing.assert_allclose(fisher[key], expected[key], rtol=1e-5,
                               atol=1e-7)


def test_fisher_rejects_empty_and_ragged_batches():
  params = {"w": jnp.zeros((4, 3)), "b": jnp.zeros(3)}
  with pytest.raises(ValueError, match="batches is empty"):
    ewc.fisher_diagonal(_softmax_nll, params, [])
  ragged = {"x": np.zeros((3, 4), np.float32), "y": np.zeros(2, np.int32)}
  with pytest.raises(ValueError, match="batch 0: .*sizes"):
    ewc.fisher_diagonal(_softmax_nll, params, [ragged])


# ----------------------------------------------------------------------------
# Consolidation over tasks.


def test_consolidate_sums_fishers_and_moves_the_anchor():
  f1, f2, f3 = ({"w": jnp.full(2, v)} for v in (1.0, 2.0, 4.0))
  p1, p2, p3 = ({"w": jnp.full(2, v)} for v in (10.0, 20.0, 30.0))
  state = ewc.consolidate(None, f1, p1)
  assert state.num_tasks == 1
  np.testing.assert_array_equal(state.fisher["w"], [1.0, 1.0])
  state = ewc.consolidate(state, f2, p2)
  state = ewc.consolidate(state, f3, p3)
  assert state.num_tasks == 3
  np.testing.assert_array_equal(state.fisher["w"], [7.0, 7.0])
  np.testing.assert_array_equal(state.anchor_params["w"], [30.0, 30.0])
  decayed = ewc.consolidate(ewc.consolidate(ewc.consolidate(
      None, f1, p1, decay=0.5), f2, p2, decay=0.5), f3, p3, decay=0.5)
  np.testing.assert_array_equal(decayed.fisher["w"], [5.25, 5.25])
  # The state is a pytree: it goes through jit with the penalty.
  penalty = jax.jit(lambda s, p: ewc.ewc_penalty(p, s.anchor_params,
                                                 s.fisher, 2.0))
  np.testing.assert_allclose(penalty(state, {"w": jnp.full(2, 31.0)}), 14.0)


def test_consolidate_rejects_bad_inputs():
  with pytest.raises(ValueError, match="decay"):
    ewc.consolidate(None, {"w": jnp.ones(2)}, {"w": jnp.ones(2)}, decay=1.5)
  with pytest.raises(ValueError, match="fisher"):
    ewc.consolidate(None, {"w": jnp.ones(3)}, {"w": jnp.ones(2)})
  state = ewc.consolidate(None, {"w": jnp.ones(2)}, {"w": jnp.ones(2)})
  with pytest.raises(ValueError, match="old.fisher"):
    ewc.consolidate(state, {"v": jnp.ones(2)}, {"v": jnp.ones(2)})

"""Tests for nngk_jax.geometry against plain loop-based numpy references."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nngk_jax import geometry
from nngk_jax.geometry import l2_normalize
from nngk_jax.geometry import pairwise_squared_distances


def _reference_squared_distances(queries, data):
  """``[Q, N]`` by a double loop over rows, in float64."""
  out = np.zeros((len(queries), len(data)))
  for i, q in enumerate(np.asarray(queries, np.float64)):
    for j, x in enumerate(np.asarray(data, np.float64)):
      out[i, j] = sum((float(a) - float(b)) ** 2 for a, b in zip(q, x))
  return out


def _reference_distance_gradient(points):
  """Gradient of the sum of all ``[N, N]`` squared distances, by a loop.

  ``d/dx_i sum_jk |x_j - x_k|^2 = 4 sum_j (x_i - x_j)``.
  """
  points = np.asarray(points, np.float64)
  grad = np.zeros_like(points)
  for i in range(len(points)):
    for j in range(len(points)):
      grad[i] += 4.0 * (points[i] - points[j])
  return grad


def _reference_normalize(vectors, eps):
  """Each row divided by ``max(norm, eps)``, in float64."""
  out = []
  for v in np.asarray(vectors, np.float64):
    norm = math.sqrt(sum(float(a) ** 2 for a in v))
    out.append([float(a) / max(norm, eps) if norm > 0 else 0.0 for a in v])
  return np.array(out)


def _points(seed=0, n=12, dim=5, scale=1.0, offset=0.0):
  rng = np.random.default_rng(seed)
  return (offset + scale * rng.normal(size=(n, dim))).astype(np.float32)


# ---------------------------------------------------- squared distances


@pytest.mark.parametrize("method", geometry.DISTANCE_METHODS)
def test_distances_match_loop_reference(method):
  queries, data = _points(0, n=7), _points(1, n=12)
  got = pairwise_squared_distances(queries, data, method=method)
  assert got.shape == (7, 12) and got.dtype == jnp.float32
  np.testing.assert_allclose(got, _reference_squared_distances(queries, data),
                             rtol=1e-5, atol=1e-5)
  own = pairwise_squared_distances(data, method=method)
  np.testing.assert_allclose(own, _reference_squared_distances(data, data),
                             rtol=1e-5, atol=1e-5)
  assert np.all(np.diag(own) == 0.0)
  np.testing.assert_array_equal(own, np.asarray(own).T)


def test_difference_distances_are_exact_for_equal_rows():
  """Exact zeros off the diagonal too: the triplet loss's sqrt needs them."""
  points = _points(2, n=6)
  points[4] = points[1]
  points[5] = points[1]
  for data in (None, points):
    got = np.asarray(pairwise_squared_distances(points, data))
    zero = _reference_squared_distances(points, points) == 0
    assert zero.sum() == 6 + 6  # diagonal, and pairs among rows 1, 4, 5
    np.testing.assert_array_equal(got == 0, zero)


@pytest.mark.parametrize("offset", [1e2, 1e4])
def test_difference_distances_are_accurate_far_from_the_origin(offset):
  """Norms of 1e4 with unit spread: the expansion would lose every digit."""
  points = _points(3, n=9, offset=offset)
  want = _reference_squared_distances(points, points)
  got = pairwise_squared_distances(points)
  np.testing.assert_allclose(got, want, rtol=1e-6 * offset)
  # The expansion keeps only about eps * (|q|^2 + |x|^2) of absolute accuracy.
  expanded = pairwise_squared_distances(points, method="matmul")
  largest = float(np.max(np.sum(points.astype(np.float64) ** 2, axis=1)))
  bound = 8 * 2.0**-23 * largest
  assert np.all(np.abs(np.asarray(expanded) - want) <= bound)
  assert np.all(np.asarray(expanded) >= 0)


def test_difference_distances_of_very_close_points():
  base = _points(4, n=1, dim=8)
  steps = np.array([0.0, 1e-3, 1e-5, 1e-7], np.float32)[:, None]
  points = (base + steps * np.ones((1, 8), np.float32)).astype(np.float32)
  want = _reference_squared_distances(points, points)
  got = np.asarray(pairwise_squared_distances(points))
  np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-30)
  assert np.all(got[~np.eye(4, dtype=bool)] > 0)  # distinct rows stay apart


@pytest.mark.parametrize("method", geometry.DISTANCE_METHODS)
def test_distance_gradients_are_finite_at_zero_distance(method):
  points = _points(5, n=6, dim=3)
  points[3] = points[0]  # A zero distance off the diagonal.
  grad = jax.jit(jax.grad(
      lambda x: pairwise_squared_distances(x, method=method).sum()))(points)
  assert np.all(np.isfinite(grad))
  np.testing.assert_allclose(grad, _reference_distance_gradient(points),
                             rtol=1e-4, atol=1e-4)
  if method == "difference":
    # The gradient of a zero distance is exactly zero.
    pair_grad = jax.grad(
        lambda x: pairwise_squared_distances(x)[0, 3])(points)
    np.testing.assert_array_equal(pair_grad, 0.0)


def test_distances_under_jit_and_vmap():
  batches = np.stack([_points(6, n=5), _points(7, n=5)])
  got = jax.jit(jax.vmap(pairwise_squared_distances))(batches)
  for b in range(2):
    np.testing.assert_allclose(
        got[b], _reference_squared_distances(batches[b], batches[b]),
        rtol=1e-5, atol=1e-5)


def test_distance_errors_name_the_argument():
  x = np.zeros((3, 2), np.float32)
  with pytest.raises(ValueError, match="unknown method 'cosine'"):
    pairwise_squared_distances(x, method="cosine")
  with pytest.raises(ValueError, match=r"queries must be \[num_queries, dim\]"):
    pairwise_squared_distances(np.zeros(3, np.float32))
  with pytest.raises(ValueError, match="data must have a float dtype"):
    pairwise_squared_distances(x, np.zeros((3, 2), np.int32))
  with pytest.raises(ValueError, match="queries are 2-D but data are 3-D"):
    pairwise_squared_distances(x, np.zeros((4, 3), np.float32))


# ------------------------------------------------------------ normalisation


@pytest.mark.parametrize("scale", [1e-30, 1e-10, 1.0, 1e10, 1e30])
def test_l2_normalize_matches_loop_reference_at_any_scale(scale):
  vectors = _points(8, n=10, dim=6).astype(np.float64) * scale
  vectors = vectors.astype(np.float32)
  vectors[3] = 0.0
  # eps=0: every nonzero vector to unit norm, however short or long.
  got = l2_normalize(vectors, eps=0.0)
  np.testing.assert_allclose(got, _reference_normalize(vectors, 0.0),
                             rtol=1e-6, atol=1e-7)
  # The default eps: vectors shorter than 1e-12 are divided by it.
  got = l2_normalize(vectors)
  np.testing.assert_allclose(
      got, _reference_normalize(vectors, geometry.NORM_EPSILON),
      rtol=1e-6, atol=1e-7)


def test_l2_normalize_short_vectors_and_axis():
  x = np.array([[3e-13, 4e-13], [3.0, 4.0], [0.0, 0.0]], np.float32)
  got = np.asarray(l2_normalize(x))
  np.testing.assert_allclose(got[0], [0.3, 0.4], rtol=1e-6)  # |x| / eps
  np.testing.assert_allclose(got[1], [0.6, 0.8], rtol=1e-6)
  np.testing.assert_array_equal(got[2], 0.0)
  columns = np.asarray(l2_normalize(x.T, axis=0))
  np.testing.assert_allclose(columns, got.T, rtol=1e-6)
  np.testing.assert_allclose(l2_normalize(x, eps=1.0)[1:], [[0.6, 0.8], [0, 0]],
                             rtol=1e-6)
  np.testing.assert_allclose(l2_normalize(x, eps=10.0)[1], [0.3, 0.4],
                             rtol=1e-6)


def test_l2_normalize_gradient_is_finite_at_zero():
  x = np.array([[0.0, 0.0, 0.0], [1.0, 2.0, 2.0]], np.float32)
  for eps, slope in ((geometry.NORM_EPSILON, 1.0 / geometry.NORM_EPSILON),
                     (0.0, 1.0)):
    grad = jax.jit(jax.grad(lambda v, e=eps: l2_normalize(v, eps=e).sum()))(x)
    assert np.all(np.isfinite(grad))
    np.testing.assert_allclose(grad[0], slope, rtol=1e-6)
    # d/dx sum(x / |x|) = (1 - x sum(x) / |x|^2) / |x|, at x = (1, 2, 2).
    want = (1.0 - np.array([1.0, 2.0, 2.0]) * 5.0 / 9.0) / 3.0
    np.testing.assert_allclose(grad[1], want, rtol=1e-5, atol=1e-7)


def test_l2_normalize_dtypes_numpy_and_nan():
  half = l2_normalize(np.array([[3.0, 4.0]], jnp.bfloat16))
  assert half.dtype == jnp.float32
  np.testing.assert_allclose(half, [[0.6, 0.8]], rtol=1e-6)
  assert isinstance(np.asarray(l2_normalize(np.ones((2, 2)))), np.ndarray)
  nan = np.asarray(l2_normalize(np.array([[np.nan, 1.0], [1.0, 0.0]],
                                         np.float32)))
  assert np.all(np.isnan(nan[0])) and nan[1].tolist() == [1.0, 0.0]
  with pytest.raises(ValueError, match="eps must be >= 0"):
    l2_normalize(np.ones((1, 2)), eps=-1.0)

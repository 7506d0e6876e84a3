"""Tests for nngk_jax.neighbours against plain loop references."""

from __future__ import annotations

import numpy as np
import pytest

from nngk_jax import neighbours


def _loop_knn(queries: np.ndarray, data: np.ndarray, k: int,
              exclude_self: bool) -> np.ndarray:
  """Reference: one query at a time, float64 distances, argsort."""
  rows = []
  for q, query in enumerate(queries.astype(np.float64)):
    d2 = ((data.astype(np.float64) - query) ** 2).sum(axis=1)
    if exclude_self:
      d2[q] = np.inf
    rows.append(np.argsort(d2, kind="stable")[:k])
  return np.array(rows)


def _clustered(num_points: int, dim: int, num_clusters: int,
               seed: int) -> tuple[np.ndarray, np.ndarray]:
  rng = np.random.default_rng(seed)
  means = rng.normal(scale=4.0, size=(num_clusters, dim))
  labels = rng.integers(num_clusters, size=num_points)
  points = means[labels] + rng.normal(size=(num_points, dim))
  return points.astype(np.float32), labels


def _assert_valid_graph(indices: np.ndarray, num_centres: int, k: int) -> None:
  assert indices.shape == (num_centres, k)
  assert indices.dtype == np.int32
  assert indices.min() >= 0 and indices.max() < num_centres
  assert not (indices == np.arange(num_centres)[:, None]).any(), "self in a row"
  for row in indices:
    assert len(set(row.tolist())) == k, "duplicate in a row"


# --------------------------------------------------------------------------
# Exact backend.
# --------------------------------------------------------------------------


def test_exact_graph_matches_loop_reference():
  points = np.random.default_rng(0).normal(size=(70, 6)).astype(np.float32)
  graph = neighbours.build_neighbour_graph(points, k=8, backend="exact")
  _assert_valid_graph(graph.indices, 70, 8)
  np.testing.assert_array_equal(graph.indices, _loop_knn(points, points, 8, True))
  assert graph.mask.dtype == bool and graph.mask.all()
  assert graph.num_centres == 70 and graph.width == 8


def test_query_neighbours_exact_matches_loop_reference():
  rng = np.random.default_rng(1)
  data = rng.normal(size=(50, 5)).astype(np.float32)
  queries = rng.normal(size=(13, 5)).astype(np.float32)
  got = neighbours.query_neighbours(data, queries, k=6)
  assert got.shape == (13, 6) and got.dtype == np.int32
  np.testing.assert_array_equal(got, _loop_knn(queries, data, 6, False))
  # k = N is allowed at query time (no self to exclude).
  everything = neighbours.query_neighbours(data, queries, k=50)
  np.testing.assert_array_equal(everything, _loop_knn(queries, data, 50, False))


def test_first_valid_neighbours_repairs_rows():
  raw = np.array([
      [0, 5, 6, 7],    # self first: dropped.
      [5, 1, 5, 6],    # self inside, repeat of 5: both dropped.
      [5, 6, 7, 8],    # self absent: last column dropped.
      [3, -1, 4, 4],   # self, unfilled slot and a repeat: too few left.
  ])
  indices, short = neighbours._first_valid_neighbours(raw, np.arange(4), 3)
  assert indices.dtype == np.int32
  np.testing.assert_array_equal(indices[[0, 2]], [[5, 6, 7], [5, 6, 7]])
  np.testing.assert_array_equal(indices[1, :2], [5, 6])  # Short: 2 of 3.
  np.testing.assert_array_equal(short, [False, True, False, True])


def test_graph_recall_matches_set_loop():
  rng = np.random.default_rng(0)
  for _ in range(100):
    q, k, ka = (int(v) for v in rng.integers(1, [5, 7, 9]))
    exact = np.stack([rng.permutation(12)[:k] for _ in range(q)])
    approx = rng.integers(-1, 12, size=(q, ka))  # repeats and -1 padding
    want = np.mean([len(set(approx[i]) & set(exact[i])) / k
                    for i in range(q)])
    assert neighbours.graph_recall(approx, exact) == pytest.approx(want)


def test_graph_recall():
  exact = np.array([[1, 2, 3], [4, 5, 6]])
  assert neighbours.graph_recall(exact, exact) == 1.0
  assert neighbours.graph_recall(exact[:, ::-1], exact) == 1.0
  approx = np.array([[3, 9, 9], [-1, 4, 8]])  # Repeats count once.
  assert neighbours.graph_recall(approx, exact) == pytest.approx(2 / 6)


# --------------------------------------------------------------------------
# Same-class columns.
# --------------------------------------------------------------------------


def test_same_class_columns_match_loop_reference():
  points, labels = _clustered(90, 4, 6, seed=2)
  labels[7] = 100    # A class of one: nothing to supply.
  labels[[8, 9]] = 101  # A class of two: supplies one of the two columns.
  k, extra = 5, 2
  graph = neighbours.build_neighbour_graph(
      points, k=k, backend="exact", centre_labels=labels, num_same_class=extra)
  assert graph.indices.shape == graph.mask.shape == (90, k + extra)
  assert graph.indices.dtype == np.int32 and graph.num_same_class == extra
  np.testing.assert_array_equal(graph.indices[:, :k],
                                _loop_knn(points, points, k, True))
  assert graph.mask[:, :k].all()
  num_repeats = 0
  for i in range(90):
    same = np.flatnonzero((labels == labels[i]) & (np.arange(90) != i))
    d2 = ((points[same].astype(np.float64) - points[i]) ** 2).sum(axis=1)
    expected = same[np.argsort(d2, kind="stable")][:extra]
    got_idx = graph.indices[i, k:]
    got_mask = graph.mask[i, k:]
    np.testing.assert_array_equal(got_idx[:len(expected)], expected)
    for j, centre in enumerate(expected):
      repeat = centre in graph.indices[i, :k]
      num_repeats += repeat
      assert got_mask[j] == (not repeat), (i, j)
    # Padding: a valid index (not self), masked out.
    assert not got_mask[len(expected):].any()
    assert (got_idx[len(expected):] == graph.indices[i, 0]).all()
  assert num_repeats > 0  # Clustered data: the case was exercised.
  assert not graph.mask[7, k:].any()
  assert graph.indices[8, k] == 9 and not graph.mask[8, k + 1]


def test_rows_returns_slices():
  points, labels = _clustered(30, 3, 3, seed=3)
  graph = neighbours.build_neighbour_graph(
      points, k=4, backend="exact", centre_labels=labels, num_same_class=1)
  batch = np.array([3, 0, 29, 3])
  idx, mask = graph.rows(batch)
  np.testing.assert_array_equal(idx, graph.indices[batch])
  np.testing.assert_array_equal(mask, graph.mask[batch])
  assert idx.shape == mask.shape == (4, 5)


# --------------------------------------------------------------------------
# Validation.
# --------------------------------------------------------------------------


_POINTS = np.random.default_rng(4).normal(size=(150, 3)).astype(np.float32)


@pytest.mark.parametrize("kwargs, match", [
    (dict(k=200), r"k=200 .*N=150"),
    (dict(k=150), r"k=150 .*N=150"),
    (dict(k=0), r"k must be a positive integer, got 0"),
    (dict(k=2.5), r"k must be a positive integer, got 2.5"),
    (dict(k=3, backend="faiss"), r"'faiss'.*'exact', 'pynndescent'"),
    (dict(k=3, centre_labels=np.zeros(149, int)), r"\(149,\)"),
    (dict(k=3, num_same_class=2), r"num_same_class=2 needs centre_labels"),
    (dict(k=3, centre_labels=np.zeros(150, int), num_same_class=-1),
     r"num_same_class must be a non-negative integer, got -1"),
])
def test_build_rejects_bad_arguments(kwargs, match):
  with pytest.raises(ValueError, match=match):
    neighbours.build_neighbour_graph(_POINTS, backend=kwargs.pop("backend", "exact"),
                                     **kwargs)


def test_build_rejects_non_finite_centres():
  points = _POINTS.copy()
  points[[4, 9], 1] = np.nan
  points[11, 0] = np.inf
  with pytest.raises(ValueError,
                     match=r"3 of 150 centres are NaN or infinite \(first bad row: 4\)"):
    neighbours.build_neighbour_graph(points, k=3, backend="exact")
  with pytest.raises(ValueError, match=r"2-D.*\(150,\)"):
    neighbours.build_neighbour_graph(_POINTS[:, 0], k=3, backend="exact")
  with pytest.raises(ValueError, match=r"float dtype, got int64"):
    neighbours.build_neighbour_graph(np.ones((5, 2), np.int64), k=3,
                                     backend="exact")


def test_query_rejects_bad_arguments():
  with pytest.raises(ValueError, match=r"k=151 .*N=150"):
    neighbours.query_neighbours(_POINTS, _POINTS[:2], k=151)
  with pytest.raises(ValueError, match=r"k must be a positive integer, got 0"):
    neighbours.query_neighbours(_POINTS, _POINTS[:2], k=0)
  with pytest.raises(ValueError, match=r"4-D but data are 3-D"):
    neighbours.query_neighbours(_POINTS, np.zeros((2, 4), np.float32), k=1)
  with pytest.raises(ValueError, match=r"1 of 2 queries are NaN or infinite"):
    neighbours.query_neighbours(
        _POINTS, np.array([[0, 0, 0], [0, np.nan, 0]], np.float32), k=1)
  with pytest.raises(ValueError, match=r"'annoy'"):
    neighbours.query_neighbours(_POINTS, _POINTS[:2], k=1, backend="annoy")


# --------------------------------------------------------------------------
# PyNNDescent backend.
#
# Each process pays ~45 s of numba compilation for NN-descent (not
# disk-cacheable), so every PyNNDescent check lives in ONE test: under
# `pytest -n 2` separate tests can land on different workers and each would
# compile. (tests/conftest.py sends this test and
# test_metrics.py::test_pynndescent_search_close_to_exact to the same worker.) On a cold numba cache (fresh clone) the first run also pays ~25 s
# of import and ~90 s for the query search's compilation (both cached after).
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def clustered_graphs():
  """A PyNNDescent graph and the exact graph over 2000 clustered points."""
  points, labels = _clustered(2000, 16, 40, seed=5)
  approx = neighbours.build_neighbour_graph(
      points, k=10, backend="pynndescent", centre_labels=labels,
      num_same_class=2, seed=0)
  exact = neighbours.build_neighbour_graph(
      points, k=10, backend="exact", centre_labels=labels, num_same_class=2)
  return points, approx, exact


def _check_clustered_graph(approx, exact):
  _assert_valid_graph(approx.indices[:, :10], 2000, 10)
  assert approx.indices.shape == approx.mask.shape == (2000, 12)
  assert approx.indices.dtype == np.int32 and approx.mask.dtype == bool
  assert approx.mask[:, :10].all()
  recall = neighbours.graph_recall(approx.indices[:, :10], exact.indices[:, :10])
  assert recall >= 0.9, recall
  # Same-class columns are exact whatever the backend.
  np.testing.assert_array_equal(approx.indices[:, 10:][approx.mask[:, 10:]],
                                exact.indices[:, 10:][approx.mask[:, 10:]])


def _check_tiny_banks():
  # With k = N - 1 every other centre is a neighbour: any slot NN-descent
  # leaves unfilled must have been repaired.
  rng = np.random.default_rng(6)
  for num_centres, k in [(2, 1), (12, 11), (40, 39), (40, 5)]:
    points = rng.normal(size=(num_centres, 3)).astype(np.float32)
    approx = neighbours.build_neighbour_graph(points, k=k, backend="pynndescent")
    exact = neighbours.build_neighbour_graph(points, k=k, backend="exact")
    _assert_valid_graph(approx.indices, num_centres, k)
    assert neighbours.graph_recall(approx.indices, exact.indices) >= 0.95


def _check_query(points):
  queries = points[:200] + 0.05
  approx = neighbours.query_neighbours(points, queries, k=10,
                                       backend="pynndescent")
  exact = neighbours.query_neighbours(points, queries, k=10)
  assert approx.shape == (200, 10) and approx.dtype == np.int32
  assert neighbours.graph_recall(approx, exact) >= 0.9
  small = neighbours.query_neighbours(points[:10], queries[:3], k=10,
                                      backend="pynndescent")  # Exact below 16.
  np.testing.assert_array_equal(
      small, neighbours.query_neighbours(points[:10], queries[:3], k=10))


def test_pynndescent_backend(clustered_graphs):
  points, approx, exact = clustered_graphs
  _check_clustered_graph(approx, exact)
  _check_tiny_banks()
  _check_query(points)


def test_backends_always_receive_writable_arrays(monkeypatch):
  # numba compiles NN-descent again for a read-only array (a JAX array seen
  # through np.asarray is one), so every backend must get the same array
  # type that warm_up() compiled for: writable, C-contiguous float32.
  seen = []

  def knn_graph(centres, k, seed):
    seen.append(centres)
    return neighbours.GRAPH_BACKENDS["exact"].knn_graph(centres, k, seed)

  def query(data, queries, k, seed):
    seen.extend([data, queries])
    return neighbours.GRAPH_BACKENDS["exact"].query(data, queries, k, seed)

  spy = neighbours.GraphBackend("spy", knn_graph, query)
  monkeypatch.setitem(neighbours.GRAPH_BACKENDS, "spy", spy)
  frozen = _POINTS.astype(np.float64)[:, ::-1]  # wrong dtype, not contiguous
  frozen.flags.writeable = False
  frozen32 = _POINTS.copy()
  frozen32.flags.writeable = False
  expected = neighbours.build_neighbour_graph(_POINTS, k=3, backend="exact")
  for points in (frozen32, frozen[:, ::-1]):
    graph = neighbours.build_neighbour_graph(points, k=3, backend="spy")
    np.testing.assert_array_equal(graph.indices, expected.indices)
  neighbours.query_neighbours(frozen32, frozen32[:4], k=3, backend="spy")
  assert len(seen) == 4
  for array in seen:
    assert array.flags.writeable and array.flags.c_contiguous
    assert array.dtype == np.float32
  assert frozen32.flags.writeable is False  # the caller's array is untouched

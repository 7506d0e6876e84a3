"""Tests for nngk_jax.metrics.self_retrieval against loop-based references."""

from __future__ import annotations

import numpy as np
import pytest

from nngk_jax import knn
from nngk_jax import metrics
from nngk_jax.metrics import self_retrieval as srlib


def _problem(seed, num_points, dim, num_classes, integer):
  """Points and class codes; integer points make exact distance ties."""
  rng = np.random.default_rng(seed)
  if integer:  # small integers: every distance exact, many ties
    points = rng.integers(-2, 3, (num_points, dim)).astype(np.float32)
  else:
    points = rng.normal(size=(num_points, dim)).astype(np.float32)
  codes = rng.integers(0, num_classes, num_points)
  return points, codes


def _loop_ranking(points):
  """For each point, every other index by (squared distance, index)."""
  x = points.astype(np.float64)
  ranking = []
  for q in range(len(x)):
    scored = []
    for j in range(len(x)):
      if j != q:
        scored.append((float(np.sum((x[q] - x[j]) ** 2)), j))
    scored.sort()
    ranking.append([j for _, j in scored])
  return np.array(ranking)


def _loop_first_positive(ranking, codes):
  """How many others come before each point's first same-class one; -1: none."""
  ahead = []
  for q, order in enumerate(ranking):
    found = -1
    for position, j in enumerate(order):
      if codes[j] == codes[q]:
        found = position
        break
    ahead.append(found)
  return np.array(ahead)


@pytest.mark.parametrize(
    "seed, num_points, dim, num_classes, integer, block_size",
    [
        (0, 40, 3, 6, True, 7),     # ties everywhere, blocks not dividing N
        (1, 57, 5, 12, False, 16),
        (2, 33, 2, 4, True, 1),     # one point per block
        (3, 50, 4, 40, False, 50),  # one block; many singletons
        (4, 61, 3, 3, True, None),  # the default block (all of N)
    ])
def test_matches_loop_reference(seed, num_points, dim, num_classes, integer,
                                block_size):
  points, codes = _problem(seed, num_points, dim, num_classes, integer)
  ranking = _loop_ranking(points)
  k = int((np.bincount(codes)[codes] - 1).max())
  neighbours, ahead = srlib.self_retrieval(points, codes, k=k,
                                           block_size=block_size)
  np.testing.assert_array_equal(neighbours, ranking[:, :k])
  np.testing.assert_array_equal(ahead, _loop_first_positive(ranking, codes))


@pytest.mark.parametrize("k", [1, 3, 8])
def test_two_level_smallest_matches_sort(k):
  # Rows long enough for the grouped top-k, with many ties: the positions
  # are those of a sort by (value, position).
  rng = np.random.default_rng(k)
  d2 = rng.integers(0, 20, (1024, 1024)).astype(np.float32)
  d2[0] = 7.0  # one row all ties
  d2[1, 900:] = -1.0  # the smallest all in the last groups
  d2[:, 2] = 7.0  # one column all ties
  d2[950:, 3] = -1.0
  for axis in (1, 0):  # rows; columns, read in place
    # pylint: disable-next=protected-access
    values, got = map(np.asarray, knn._smallest(d2, k, axis=axis))
    lines = d2 if axis == 1 else d2.T
    for row in range(len(lines)):
      want = np.lexsort((np.arange(lines.shape[1]), lines[row]))[:k]
      np.testing.assert_array_equal(got[row], want)
      np.testing.assert_array_equal(values[row], lines[row, want])


def test_grouped_blocks_with_padding_match_sort():
  # 1,000 points in pairs, blocks of 512 (the last one padded): the
  # two-level top-k path, against a sort by (distance, index) in float64.
  rng = np.random.default_rng(7)
  points = rng.integers(-2, 3, (1000, 3)).astype(np.float32)
  codes = np.arange(1000) // 2
  neighbours, ahead = srlib.self_retrieval(points, codes, k=1, block_size=512)
  x = points.astype(np.float64)
  d2 = np.sum((x[:, None, :] - x[None, :, :]) ** 2, axis=2)
  np.fill_diagonal(d2, np.inf)
  ids = np.arange(1000)
  for q in range(1000):
    order = np.lexsort((ids, d2[q]))[:-1]  # self (inf) last
    assert neighbours[q, 0] == order[0]
    assert ahead[q] == int(np.flatnonzero(codes[order] == codes[q])[0])


def test_duplicates_across_classes_are_ordered_by_index():
  # Points 0 (class 0) and 1, 2 (class 1) coincide; query 3 (class 1) sees
  # all three at the same distance: point 0 comes first, so one item is
  # ahead of its nearest positive. Query 2's nearest positive is its
  # duplicate 1, with 0 at the same distance and a lower index ahead of it.
  points = np.array([[1.], [1.], [1.], [0.], [5.]], np.float32)
  codes = np.array([0, 1, 1, 1, 0])
  neighbours, ahead = srlib.self_retrieval(points, codes, k=2, block_size=2)
  assert neighbours.tolist() == [[1, 2], [0, 2], [0, 1], [0, 1], [0, 1]]
  assert ahead.tolist() == [3, 1, 1, 1, 0]


def test_nearest_positives_large_class_path(monkeypatch):
  # Classes too large for one batched piece are done a block of rows at a
  # time; both paths agree with the loop.
  points, codes = _problem(5, 70, 3, 3, integer=True)
  small = srlib.nearest_positives(points, codes)
  monkeypatch.setattr(srlib, "_POSITIVE_PASS_ELEMENTS", 50)
  large = srlib.nearest_positives(points, codes)
  x = points.astype(np.float64)
  for q in range(len(points)):
    same = [(float(np.sum((x[q] - x[j]) ** 2)), j)
            for j in range(len(points)) if j != q and codes[j] == codes[q]]
    want_d2, want_j = min(same)
    for d2, index in (small, large):
      assert d2[q] == pytest.approx(want_d2, abs=1e-5)
      assert index[q] == want_j
  np.testing.assert_array_equal(small[1], large[1])


def test_singletons_have_no_positive():
  points = np.arange(4, dtype=np.float32)[:, None]
  d2, index = srlib.nearest_positives(points, np.array([0, 1, 1, 2]))
  assert np.isinf(d2[[0, 3]]).all() and d2[1] == d2[2] == 1.0
  assert index.tolist() == [np.iinfo(np.int32).max, 2, 1,
                            np.iinfo(np.int32).max]
  _, ahead = srlib.self_retrieval(points, np.array([0, 1, 1, 2]), k=1)
  assert ahead.tolist() == [-1, 1, 0, -1]  # 0 ties 2, lower index


@pytest.mark.parametrize("integer", [True, False])
def test_retrieval_metrics_same_from_list_and_symmetric_pass(integer):
  # With a K above every R the default exact search takes the symmetric
  # pass; any other search callable (here the exact search as a plain
  # list) gives a neighbour list of max(K, R). Both must give the same
  # metrics, K = 1000 beyond N too.
  points, codes = _problem(6, 90, 4, 15, integer)
  ks = (1, 2, 5, 20, 1000)

  def listed(queries, data, k, query_ids=None):
    return _loop_ranking(data)[:, :k]

  symmetric = metrics.retrieval_metrics(points, codes, recall_ks=ks,
                                        nmi=False)
  blocked = metrics.retrieval_metrics(
      points, codes, recall_ks=ks, nmi=False,
      knn_func=metrics.knn_function("exact", chunk_size=8))
  from_list = metrics.retrieval_metrics(points, codes, recall_ks=ks,
                                        nmi=False, knn_func=listed)
  assert symmetric == from_list == blocked
  assert symmetric["recall@1000"] == 1.0
  # K <= R: the exact search gives its list; the same metrics again.
  short = metrics.retrieval_metrics(points, codes, recall_ks=(1, 2), nmi=False)
  assert short == {name: symmetric[name] for name in short}


def test_symmetric_pass_only_when_k_exceeds_r(monkeypatch):
  points, codes = _problem(8, 40, 3, 8, integer=False)
  calls = []
  original = srlib.self_retrieval

  def counted(*args, **kwargs):
    calls.append(kwargs["k"])
    return original(*args, **kwargs)

  # The globals of the function called (a module named on pytest's command
  # line may be imported twice under --import-mode=importlib).
  monkeypatch.setitem(metrics.retrieval_metrics.__globals__, "self_retrieval",
                      counted)
  max_r = int((np.bincount(codes)[codes] - 1).max())
  metrics.retrieval_metrics(points, codes, recall_ks=(max_r,), nmi=False)
  assert not calls
  metrics.retrieval_metrics(points, codes, recall_ks=(1, max_r + 1), nmi=False)
  assert calls == [max_r]


def test_errors():
  points = np.zeros((4, 2), np.float32)
  with pytest.raises(ValueError, match="only 3 others"):
    srlib.self_retrieval(points, np.zeros(4), k=4)
  with pytest.raises(ValueError, match=r"codes \[N\]"):
    srlib.self_retrieval(points, np.zeros(3), k=1)
  with pytest.raises(ValueError, match="block_size"):
    srlib.self_retrieval(points, np.zeros(4), k=1, block_size=0)
  with pytest.raises(ValueError, match="k"):
    srlib.self_retrieval(points, np.zeros(4), k=0)

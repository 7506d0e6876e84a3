"""Tests for nngk_jax.metrics against plain loop-based numpy references."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.cluster import KMeans

from nngk_jax import metrics
from nngk_jax import neighbours
from nngk_jax.metrics import clustering

# Classes of different sizes, including a singleton (label 5).
_CLASS_SIZES = {0: 7, 1: 4, 2: 9, 3: 2, 4: 6, 5: 1}


def _random_problem(seed: int = 0, dim: int = 4) -> tuple[np.ndarray, np.ndarray]:
  rng = np.random.default_rng(seed)
  labels = np.concatenate([np.full(n, c) for c, n in _CLASS_SIZES.items()])
  labels = rng.permutation(labels)
  embeddings = rng.normal(size=(len(labels), dim)).astype(np.float32)
  return embeddings, labels


def _separated_clusters(
    num_classes: int = 5, per_class: int = 6, dim: int = 3, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
  rng = np.random.default_rng(seed)
  centres = 100.0 * rng.normal(size=(num_classes, dim))
  labels = np.repeat(np.arange(num_classes), per_class)
  embeddings = centres[labels] + 0.01 * rng.normal(size=(len(labels), dim))
  return embeddings.astype(np.float32), labels


# ---------------------------------------------------------------- references


def _reference_ranking(embeddings: np.ndarray) -> list[list[int]]:
  """For each query, the other indices sorted by Euclidean distance."""
  x = embeddings.astype(np.float64)
  ranking = []
  for q in range(len(x)):
    others = []
    for j in range(len(x)):
      if j != q:
        others.append((math.sqrt(float(np.sum((x[q] - x[j]) ** 2))), j))
    others.sort()
    ranking.append([j for _, j in others])
  return ranking


def _reference_metrics(embeddings, labels, ks):
  """Recall@K, MAP@R, R-precision by double loops over queries and ranks."""
  ranking = _reference_ranking(embeddings)
  recalls = {k: [] for k in ks}
  aps, rps = [], []
  for q, order in enumerate(ranking):
    r = sum(1 for j in range(len(labels)) if j != q and labels[j] == labels[q])
    if r == 0:
      continue
    for k in ks:
      hit = False
      for i in range(min(k, len(order))):
        if labels[order[i]] == labels[q]:
          hit = True
      recalls[k].append(1.0 if hit else 0.0)
    num_relevant, ap = 0, 0.0
    for i in range(r):
      if labels[order[i]] == labels[q]:
        num_relevant += 1
        ap += num_relevant / (i + 1)
    aps.append(ap / r)
    rps.append(num_relevant / r)
  out = {f"recall@{k}": float(np.mean(v)) for k, v in recalls.items()}
  out["map@r"] = float(np.mean(aps))
  out["r_precision"] = float(np.mean(rps))
  return out


def _reference_nmi(labels: np.ndarray, clusters: np.ndarray) -> float:
  """NMI with arithmetic-mean normalisation, from loop-built counts."""
  n = len(labels)
  joint, label_count, cluster_count = {}, {}, {}
  for y, c in zip(labels.tolist(), clusters.tolist()):
    joint[(y, c)] = joint.get((y, c), 0) + 1
    label_count[y] = label_count.get(y, 0) + 1
    cluster_count[c] = cluster_count.get(c, 0) + 1
  mutual_info = 0.0
  for (y, c), nyc in joint.items():
    mutual_info += nyc / n * math.log(n * nyc / (label_count[y] * cluster_count[c]))
  h_labels = -sum(m / n * math.log(m / n) for m in label_count.values())
  h_clusters = -sum(m / n * math.log(m / n) for m in cluster_count.values())
  if h_labels == 0.0 and h_clusters == 0.0:
    return 1.0
  return mutual_info / (0.5 * (h_labels + h_clusters))


# ---------------------------------------------------- against the references


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_retrieval_metrics_match_loop_reference(seed):
  embeddings, labels = _random_problem(seed)
  ks = (1, 2, 4, 8, 16)
  got = metrics.retrieval_metrics(embeddings, labels, recall_ks=ks, nmi=False)
  want = _reference_metrics(embeddings, labels, ks)
  assert set(got) == set(want)
  for name in want:
    assert got[name] == pytest.approx(want[name], abs=1e-12), name


def test_ranked_label_functions_match_loop_reference():
  embeddings, labels = _random_problem(3)
  ranking = np.array(_reference_ranking(embeddings))
  counts = np.array([np.sum(labels == y) - 1 for y in labels])
  keep = counts > 0
  neighbour_labels = labels[ranking][keep]
  want = _reference_metrics(embeddings, labels, (1, 3, 5))
  got = metrics.recall_at_k(neighbour_labels, labels[keep], (1, 3, 5))
  assert got == pytest.approx({k: want[k] for k in got})
  got_map = metrics.map_at_r(neighbour_labels, labels[keep], counts[keep])
  got_rp = metrics.r_precision(neighbour_labels, labels[keep], counts[keep])
  assert got_map == pytest.approx(want["map@r"])
  assert got_rp == pytest.approx(want["r_precision"])
  # Singleton queries (R = 0) passed in are left out, not counted as zero.
  assert metrics.map_at_r(labels[ranking], labels, counts) == pytest.approx(want["map@r"])
  assert metrics.r_precision(labels[ranking], labels, counts) == pytest.approx(want["r_precision"])


def test_nmi_matches_loop_reference():
  embeddings, labels = _random_problem(4)
  clusters = KMeans(n_clusters=6, n_init=10, random_state=0).fit_predict(embeddings)
  assert metrics.nmi_kmeans(embeddings, labels, seed=0) == pytest.approx(
      _reference_nmi(labels, clusters), abs=1e-10)


def test_accuracy_matches_loop_reference():
  rng = np.random.default_rng(0)
  predicted, labels = rng.integers(0, 3, 50), rng.integers(0, 3, 50)
  correct = 0
  for p, y in zip(predicted, labels):
    correct += int(p == y)
  assert metrics.accuracy(predicted, labels) == correct / 50


def test_chunk_size_does_not_change_result():
  embeddings, labels = _random_problem(5)
  whole = metrics.retrieval_metrics(embeddings, labels, nmi=False)
  chunked = metrics.retrieval_metrics(
      embeddings, labels, nmi=False,
      knn_func=metrics.knn_function("exact", chunk_size=7))
  assert whole == chunked


def _loop_knn(queries, data, k, query_ids=None):
  """A search written as a loop: ties to the lower index, self excluded."""
  indices = []
  for q, query in enumerate(queries.astype(np.float64)):
    scored = sorted(
        (float(np.sum((query - row) ** 2)), j)
        for j, row in enumerate(data.astype(np.float64))
        if query_ids is None or j != query_ids[q])
    indices.append([j for _, j in scored[:k]])
  return np.array(indices)


def test_callables_replace_search_and_clustering():
  embeddings, labels = _random_problem(11)
  ks = (1, 2, 4)
  calls = []

  def clusters(x, num_clusters, seed):
    calls.append((x.dtype, num_clusters, seed))
    return np.arange(len(x)) % num_clusters

  got = metrics.retrieval_metrics(embeddings, labels, recall_ks=ks, seed=5,
                                  knn_func=_loop_knn, kmeans_func=clusters)
  want = _reference_metrics(embeddings, labels, ks)
  for name in want:
    assert got[name] == pytest.approx(want[name], abs=1e-12), name
  assert calls == [(np.float32, len(_CLASS_SIZES), 5)]
  assert got["nmi"] == pytest.approx(
      _reference_nmi(labels, np.arange(len(labels)) % len(_CLASS_SIZES)))
  assert "search_recall" not in got


def test_named_functions_and_deprecated_names_agree():
  embeddings, labels = _random_problem(12)
  default = metrics.retrieval_metrics(embeddings, labels)
  named = metrics.retrieval_metrics(
      embeddings, labels, knn_func=metrics.knn_function("exact"),
      kmeans_func=metrics.kmeans_function("auto"))
  with pytest.warns(DeprecationWarning, match="knn_function"):
    old = metrics.retrieval_metrics(embeddings, labels, search="exact",
                                    nmi_method="auto")
  assert default == named == old
  jax_nmi = metrics.retrieval_metrics(
      embeddings, labels, kmeans_func=metrics.kmeans_function("jax"))["nmi"]
  assert jax_nmi == metrics.nmi_kmeans(embeddings, labels, method="jax")
  with pytest.warns(DeprecationWarning, match="kmeans_function"):
    assert metrics.retrieval_metrics(
        embeddings, labels, nmi_method="jax")["nmi"] == jax_nmi


# ---------------------------------------------------------- hand-worked cases


def test_map_at_r_and_r_precision_hand_worked():
  # Ranked labels [same, diff, same]. With R = 2 only the first 2 ranks count
  # (Musgrave et al.: sum over i = 1..R): MAP@R = (1/2)(1 + 0). The ordinary
  # average precision (1/2)(1 + 2/3), which also credits the hit at rank 3,
  # is *not* MAP@R.
  neighbour_labels = np.array([[4, 9, 4]])
  query_labels = np.array([4])
  r = np.array([2])
  assert metrics.map_at_r(neighbour_labels, query_labels, r) == pytest.approx(0.5)
  assert metrics.r_precision(neighbour_labels, query_labels, r) == pytest.approx(0.5)
  # With R = 3 the third rank counts: MAP@R = (1/3)(1 + 2/3), R-precision 2/3.
  r = np.array([3])
  assert metrics.map_at_r(neighbour_labels, query_labels, r) == pytest.approx((1 + 2 / 3) / 3)
  assert metrics.r_precision(neighbour_labels, query_labels, r) == pytest.approx(2 / 3)
  # Columns beyond R are ignored: [diff, same | same] with R = 2.
  r = np.array([2])
  assert metrics.r_precision(np.array([[9, 4, 4]]), query_labels, r) == pytest.approx(0.5)
  assert metrics.map_at_r(np.array([[9, 4, 4]]), query_labels, r) == pytest.approx(0.25)


def test_recall_hand_worked():
  neighbour_labels = np.array([[1, 0, 0], [1, 1, 0], [2, 2, 2]])
  query_labels = np.array([0, 0, 2])
  assert metrics.recall_at_k(neighbour_labels, query_labels, (1, 2, 3)) == pytest.approx(
      {"recall@1": 1 / 3, "recall@2": 2 / 3, "recall@3": 1.0})


def test_no_countable_queries_gives_nan():
  assert math.isnan(metrics.map_at_r(np.zeros((2, 0), int), np.array([0, 1]), np.array([0, 0])))
  m = metrics.retrieval_metrics(np.eye(3), np.array([0, 1, 2]), recall_ks=(1,), nmi=False)
  assert all(math.isnan(v) for v in m.values())


def test_perfect_clustering_gives_one_everywhere():
  embeddings, labels = _separated_clusters()
  m = metrics.retrieval_metrics(embeddings, labels)
  assert set(m) == {"recall@1", "recall@2", "recall@4", "recall@8", "map@r", "r_precision", "nmi"}
  for name, value in m.items():
    assert isinstance(value, float)
    assert value == pytest.approx(1.0), name


def test_recall_is_monotone_in_k():
  embeddings, labels = _random_problem(6)
  ks = tuple(range(1, len(labels)))
  m = metrics.retrieval_metrics(embeddings, labels, recall_ks=ks, nmi=False)
  values = [m[f"recall@{k}"] for k in ks]
  assert all(a <= b for a, b in zip(values, values[1:]))
  assert values[-1] == 1.0  # every non-singleton query finds its class eventually


def test_k_beyond_data_is_capped():
  embeddings, labels = _separated_clusters(num_classes=2, per_class=2)
  m = metrics.retrieval_metrics(embeddings, labels, recall_ks=(1, 100), nmi=False)
  assert m["recall@100"] == 1.0


def test_random_labels_give_low_map_at_r():
  rng = np.random.default_rng(0)
  embeddings = rng.normal(size=(400, 8)).astype(np.float32)
  labels = rng.integers(0, 20, 400)
  m = metrics.retrieval_metrics(embeddings, labels, nmi=False)
  assert m["map@r"] < 0.15
  assert m["r_precision"] < 0.15


def test_string_labels_work():
  embeddings, labels = _separated_clusters(num_classes=3, per_class=3)
  names = np.array(["a", "b", "c"])[labels]
  assert metrics.retrieval_metrics(embeddings, names, nmi=False)["map@r"] == 1.0


# -------------------------------------------------------------------- errors


def test_retrieval_metrics_errors():
  x = np.zeros((4, 2), np.float32)
  with pytest.raises(ValueError, match=r"shape mismatch.*\(4, 2\).*\(3,\)"):
    metrics.retrieval_metrics(x, np.zeros(3, int))
  with pytest.raises(ValueError, match="at least 2 embeddings"):
    metrics.retrieval_metrics(x[:1], np.zeros(1, int))
  bad = x.copy()
  bad[0, 0], bad[2, 1] = np.nan, np.inf
  with pytest.raises(ValueError,
                     match="2 of 4 embeddings are NaN or infinite in float32"):
    metrics.retrieval_metrics(bad, np.zeros(4, int))
  with pytest.raises(ValueError, match="recall_ks"):
    metrics.retrieval_metrics(x, np.zeros(4, int), recall_ks=(0,))


def test_bad_callables_are_caught():
  embeddings, labels = _random_problem(13)
  with_self = lambda q, d, k, query_ids=None: _loop_knn(q, d, k)  # noqa: E731
  with pytest.raises(ValueError, match="own neighbours .*query_ids"):
    metrics.retrieval_metrics(embeddings, labels, nmi=False,
                              knn_func=with_self)
  short = lambda q, d, k, query_ids=None: _loop_knn(q, d, k - 1, query_ids)  # noqa: E731
  with pytest.raises(ValueError, match=r"knn_func must return \[N, k\]"):
    metrics.retrieval_metrics(embeddings, labels, nmi=False, knn_func=short)
  outside = lambda q, d, k, query_ids=None: np.full((len(q), k), len(d))  # noqa: E731
  with pytest.raises(ValueError, match="outside"):
    metrics.retrieval_metrics(embeddings, labels, nmi=False, knn_func=outside)
  with pytest.raises(ValueError, match=r"kmeans_func must return \[N\]"):
    metrics.retrieval_metrics(embeddings, labels,
                              kmeans_func=lambda x, n, seed: np.zeros(3, int))
  with pytest.raises(ValueError, match="knn_func must be callable"):
    metrics.retrieval_metrics(embeddings, labels, knn_func="exact")
  with pytest.raises(ValueError, match="not both"):
    metrics.retrieval_metrics(embeddings, labels, search="exact",
                              knn_func=metrics.knn_function("exact"))
  with pytest.raises(ValueError, match="not both"):
    metrics.retrieval_metrics(embeddings, labels, nmi_method="jax",
                              kmeans_func=metrics.kmeans_function("jax"))


def test_ranked_label_errors():
  with pytest.raises(ValueError, match=r"shapes \(2, 3\) and \(3,\)"):
    metrics.recall_at_k(np.zeros((2, 3)), np.zeros(3), (1,))
  with pytest.raises(ValueError, match=r"ks must .* \[1, 3\]"):
    metrics.recall_at_k(np.zeros((2, 3)), np.zeros(2), (4,))
  with pytest.raises(ValueError, match="R=3 relevant items but only 2 neighbours"):
    metrics.map_at_r(np.zeros((1, 2)), np.zeros(1), np.array([3]))
  with pytest.raises(ValueError, match="class_counts_per_query must be"):
    metrics.r_precision(np.zeros((1, 2)), np.zeros(1), np.array([1, 1]))
  with pytest.raises(ValueError, match="non-negative integers"):
    metrics.r_precision(np.zeros((1, 2)), np.zeros(1), np.array([-1]))


def test_nmi_and_accuracy_errors():
  with pytest.raises(ValueError, match="num_clusters=5"):
    metrics.nmi_kmeans(np.zeros((3, 2)), np.zeros(3), num_clusters=5)
  with pytest.raises(ValueError, match="embeddings must be"):
    metrics.nmi_kmeans(np.zeros((3, 2)), np.zeros(4))
  with pytest.raises(ValueError, match=r"shapes \(3,\) and \(4,\)"):
    metrics.accuracy(np.zeros(3, int), np.zeros(4, int))
  with pytest.raises(ValueError, match="no examples"):
    metrics.accuracy(np.zeros(0, int), np.zeros(0, int))


# ------------------------------------------------------ k-means and NMI (JAX)


def _reference_lloyd_step(points, centroids):
  """Assignment then update, point by point; empty clusters take the farthest.

  Returns ``(assignments to the given centroids, new centroids)``.
  """
  points = points.astype(np.float64)
  nearest, distance = [], []
  for x in points:
    best, best_d2 = 0, math.inf
    for j, c in enumerate(centroids.astype(np.float64)):
      d2 = float(np.sum((x - c) ** 2))
      if d2 < best_d2:
        best, best_d2 = j, d2
    nearest.append(best)
    distance.append(best_d2)
  farthest_first = sorted(range(len(points)), key=lambda n: (-distance[n], n))
  new, next_far = [], 0
  for j in range(len(centroids)):
    members = [x for x, c in zip(points, nearest) if c == j]
    if members:
      new.append(np.mean(members, axis=0))
    else:
      new.append(points[farthest_first[next_far]])
      next_far += 1
  return np.array(nearest), np.array(new)


def test_kmeans_assignment_and_update_match_loop_reference():
  rng = np.random.default_rng(0)
  points = rng.normal(size=(40, 3)).astype(np.float32)
  centroids = rng.normal(size=(6, 3)).astype(np.float32)
  centroids[4] = 50.0  # Far from every point: an empty cluster, relocated.
  want_nearest, want_centroids = _reference_lloyd_step(points, centroids)
  assert 4 not in want_nearest
  got_nearest, got_centroids = metrics.kmeans(points, 6, init=centroids, max_iter=0)
  np.testing.assert_array_equal(got_nearest, want_nearest)
  np.testing.assert_array_equal(got_centroids, centroids)
  # One update, then the assignment to the new centroids.
  got_nearest, got_centroids = metrics.kmeans(points, 6, init=centroids, max_iter=1)
  np.testing.assert_allclose(got_centroids, want_centroids, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(
      got_nearest, _reference_lloyd_step(points, want_centroids)[0])


def test_kmeans_chunking_does_not_change_result():
  rng = np.random.default_rng(1)
  points = rng.normal(size=(101, 5)).astype(np.float32)
  whole = metrics.kmeans(points, 9, seed=3)
  for chunk_size in (7,):  # Each chunk size is a new compilation.
    chunked = metrics.kmeans(points, 9, seed=3, chunk_size=chunk_size)
    np.testing.assert_array_equal(chunked[0], whole[0])
    np.testing.assert_allclose(chunked[1], whole[1], rtol=1e-5, atol=1e-6)


def test_kmeans_converges_to_a_fixed_point():
  embeddings, _ = _random_problem(7)
  assignments, centroids = metrics.kmeans(embeddings, 5, max_iter=100)
  # Converged: another Lloyd step changes nothing.
  again, _ = metrics.kmeans(embeddings, 5, init=centroids, max_iter=0)
  np.testing.assert_array_equal(again, assignments)
  for j in range(5):
    np.testing.assert_allclose(
        centroids[j], embeddings[assignments == j].mean(axis=0), atol=1e-5)


@pytest.mark.parametrize("num_classes", [3, 50])
def test_jax_nmi_is_one_on_separated_clusters_like_sklearn(num_classes):
  embeddings, labels = _separated_clusters(num_classes=num_classes, per_class=4,
                                           dim=8, seed=num_classes)
  assert metrics.nmi_kmeans(embeddings, labels, method="sklearn") == 1.0
  assert metrics.nmi_kmeans(embeddings, labels, method="jax") == 1.0
  # With at most 129 clusters the seeding is plain greedy k-means++: one
  # seed per separated cluster before any Lloyd step.
  assignments, _ = metrics.kmeans(embeddings, num_classes, max_iter=0)
  assert len(set(zip(labels.tolist(), assignments.tolist()))) == num_classes


def test_auto_nmi_uses_jax_kmeans_for_many_clusters(monkeypatch):
  embeddings, labels = _separated_clusters(num_classes=300, per_class=3, dim=8)
  # 300 > 200 clusters: "auto" must not reach scikit-learn's KMeans.
  monkeypatch.setattr(clustering, "KMeans", None)
  nmi = metrics.nmi_kmeans(embeddings, labels)
  # Batched seeding (3 centres a round) may seed a cluster twice; close to 1.
  assert 0.99 <= nmi <= 1.0
  assert metrics.retrieval_metrics(
      embeddings, labels, recall_ks=(1,),
      kmeans_func=metrics.kmeans_function("jax", max_iter=5))["nmi"] >= 0.99
  assert metrics.retrieval_metrics(embeddings, labels, recall_ks=(1,))["nmi"] == nmi


def test_random_init_is_distinct_points():
  embeddings, _ = _random_problem(8)
  assignments, centroids = metrics.kmeans(embeddings, 6, init="random", max_iter=0)
  assert len({tuple(c) for c in centroids.tolist()}) == 6
  assert all(any(np.array_equal(c, x) for x in embeddings) for c in centroids)
  np.testing.assert_array_equal(np.sort(np.unique(assignments)), np.arange(6))


# --------------------------------------------------- approximate neighbours


class _FakeIndex:
  """Stands in for a PyNNDescent index: exact neighbours, then damaged."""

  def __init__(self, points, n_neighbors, seed):
    del n_neighbors, seed
    self.points = points

  def prepare(self):
    pass

  def query(self, queries, k):
    from nngk_jax.knn import exact_knn
    idx, d2 = exact_knn(queries, self.points, k=k)
    idx = idx.copy()
    idx[0, 0], idx[0, 1] = idx[0, 1], idx[0, 0]  # Self not first.
    idx[1, 2] = -1  # An unfilled slot: too few left, repaired exactly.
    idx[2, 3] = idx[2, 1]  # A repeat: repaired exactly.
    idx[3] = np.roll(idx[3], -1)  # Self not found: its k + 1 others.
    idx[4, 1] = np.argmax(np.sum((self.points - queries[4]) ** 2, axis=1))
    return idx, d2  # Only row 4 is wrong: one neighbour replaced.


def test_approximate_search_rows_are_cleaned_and_recall_reported(monkeypatch):
  monkeypatch.setattr(neighbours, "_pynndescent_index", _FakeIndex)
  embeddings, labels = _random_problem(9)
  ks = (1, 2, 4, 8)
  exact = metrics.retrieval_metrics(embeddings, labels, recall_ks=ks, nmi=False)
  search = metrics.knn_function("pynndescent", search_recall_queries=1000)
  approx = metrics.retrieval_metrics(
      embeddings, labels, recall_ks=ks, nmi=False, knn_func=search)
  # Every query is sampled; one of the N k neighbours is missed (row 4).
  k = 8  # max(max K, max R) with the largest class of 9.
  assert approx.pop("search_recall") == pytest.approx(1 - 1 / (len(labels) * k))
  assert search.search_recall == pytest.approx(1 - 1 / (len(labels) * k))
  for name in exact:
    assert approx[name] == pytest.approx(exact[name], abs=1 / len(labels)), name
  without = metrics.retrieval_metrics(
      embeddings, labels, recall_ks=ks, nmi=False,
      knn_func=metrics.knn_function("pynndescent", search_recall_queries=0))
  assert "search_recall" not in without
  with pytest.warns(DeprecationWarning):
    old = metrics.retrieval_metrics(embeddings, labels, recall_ks=ks,
                                    nmi=False, search="pynndescent")
  assert old == {**approx, "search_recall": old["search_recall"]}
  # Queries that are not the data: no self exclusion, recall still measured.
  queries = embeddings[:10] + 0.01
  found = search(queries, embeddings, 5)
  want = _loop_knn(queries, embeddings, 5)
  for row in (1, 2, 5, 6, 7, 8, 9):  # 1 and 2 repaired exactly
    np.testing.assert_array_equal(found[row], want[row])
  assert search.search_recall == pytest.approx(1 - 1 / (10 * 5))  # row 4
  with pytest.raises(ValueError, match="query_ids = arange"):
    search(queries, embeddings, 3, query_ids=np.arange(10))


# NN-descent's numba compilation: about 45 s per process (under xdist, run on
# the worker of test_neighbours.py::test_pynndescent_backend: tests/conftest.py).
@pytest.mark.slow
def test_pynndescent_search_close_to_exact():
  rng = np.random.default_rng(10)
  labels = np.repeat(np.arange(120), 5)
  means = rng.normal(size=(120, 16))
  embeddings = (means[labels] + 0.5 * rng.normal(size=(600, 16))).astype(np.float32)
  ks = (1, 10, 100)
  exact = metrics.retrieval_metrics(embeddings, labels, recall_ks=ks, nmi=False)
  approx = metrics.retrieval_metrics(
      embeddings, labels, recall_ks=ks, nmi=False,
      knn_func=metrics.knn_function("pynndescent", search_recall_queries=200))
  assert approx.pop("search_recall") >= 0.95
  for name in exact:
    assert approx[name] == pytest.approx(exact[name], abs=0.02), name
  # k = N - 1: every other point is a neighbour, whatever NN-descent finds.
  search = metrics.knn_function("pynndescent")
  tiny = metrics.retrieval_metrics(embeddings[:20], labels[:20], recall_ks=(19,),
                                   nmi=False, knn_func=search)
  assert tiny.pop("search_recall") == 1.0
  assert tiny == metrics.retrieval_metrics(embeddings[:20], labels[:20],
                                           recall_ks=(19,), nmi=False)
  # Fewer than 16 points: searched exactly.
  small = metrics.retrieval_metrics(embeddings[:12], labels[:12], recall_ks=(1,),
                                    nmi=False, knn_func=search)
  assert small.pop("search_recall") == 1.0
  assert small == metrics.retrieval_metrics(embeddings[:12], labels[:12],
                                            recall_ks=(1,), nmi=False)


def test_string_labels_with_jax_nmi():
  embeddings, labels = _separated_clusters(num_classes=3, per_class=3)
  names = np.array(["a", "b", "c"])[labels]
  m = metrics.retrieval_metrics(embeddings, names,
                                kmeans_func=metrics.kmeans_function("jax"))
  assert m["map@r"] == 1.0 and m["nmi"] == 1.0


def test_kmeans_and_option_errors():
  x = np.zeros((4, 2), np.float32)
  labels = np.zeros(4, int)
  with pytest.raises(ValueError, match="num_clusters=5 must be in"):
    metrics.kmeans(x, 5)
  with pytest.raises(ValueError, match="num_clusters must be a positive integer"):
    metrics.kmeans(x, 0)
  with pytest.raises(ValueError, match="unknown init 'kmeans'"):
    metrics.kmeans(x, 2, init="kmeans")
  with pytest.raises(ValueError, match=r"\[2, 2\]; got shape \(3, 2\)"):
    metrics.kmeans(x, 2, init=np.zeros((3, 2)))
  with pytest.raises(ValueError, match="max_iter must be a non-negative integer"):
    metrics.kmeans(x, 2, max_iter=-1)
  with pytest.raises(ValueError, match="chunk_size must be"):
    metrics.kmeans(x, 2, chunk_size=0)
  bad = x.copy()
  bad[1, 0] = np.nan
  with pytest.raises(ValueError, match="1 of 4 embeddings are NaN or infinite"):
    metrics.kmeans(bad, 2)
  with pytest.raises(ValueError, match=r"non-empty \[N, D\]"):
    metrics.kmeans(np.zeros(4), 2)
  with pytest.raises(ValueError, match="unknown method 'faiss'"):
    metrics.nmi_kmeans(x, labels, method="faiss")
  with pytest.raises(ValueError, match="max_iter must be a positive integer"):
    metrics.nmi_kmeans(x, labels, max_iter=0)
  with pytest.raises(ValueError, match="unknown search 'faiss'"):
    metrics.knn_function("faiss")
  with pytest.raises(ValueError, match="unknown search 'faiss'"):
    metrics.retrieval_metrics(x, labels, search="faiss")
  with pytest.raises(ValueError, match="unknown method 'kmeans'"):
    metrics.kmeans_function("kmeans")
  with pytest.raises(ValueError, match="unknown nmi_method 'kmeans'"):
    metrics.retrieval_metrics(x, labels, nmi_method="kmeans")
  with pytest.raises(ValueError, match="search_recall_queries must be"):
    metrics.knn_function("pynndescent", search_recall_queries=-1)
  with pytest.raises(ValueError, match="chunk_size must be a positive integer"):
    metrics.knn_function("exact", chunk_size=0)
  with pytest.raises(ValueError, match="max_iter must be a positive integer"):
    metrics.kmeans_function("jax", max_iter=0)
  with pytest.raises(ValueError, match="n_init must be a positive integer"):
    metrics.kmeans_function("sklearn", n_init=0)

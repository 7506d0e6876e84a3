"""Tests for nngk_jax.metrics against plain loop-based numpy references."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.cluster import KMeans

from nngk_jax import metrics

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
  chunked = metrics.retrieval_metrics(embeddings, labels, nmi=False, chunk_size=7)
  assert whole == chunked


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
  with pytest.raises(ValueError, match="2 of 4 embedding rows contain NaN or inf"):
    metrics.retrieval_metrics(bad, np.zeros(4, int))
  with pytest.raises(ValueError, match="recall_ks"):
    metrics.retrieval_metrics(x, np.zeros(4, int), recall_ks=(0,))


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

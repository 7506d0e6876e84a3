"""Retrieval and classification metrics, computed on the host.

The metric-learning protocol (``methods.md``, "Evaluation protocol"): on the
class-disjoint test split, every test embedding is a query against all *other*
test embeddings (itself excluded), by Euclidean distance. From the ranked
neighbours come Recall@K, MAP@R and R-precision (Musgrave et al., 2020); NMI
comes from k-means with as many clusters as classes.

Everything here takes NumPy arrays and returns Python floats. The neighbour
search is :func:`nngk_jax.knn.exact_knn` (chunked brute force in JAX), called
once per :func:`retrieval_metrics`; the other functions work on the labels of
already-ranked neighbours, so they can be reused with any search.

Queries whose class has no other member (``R = 0``, a singleton class) cannot
retrieve anything relevant; they are left out of Recall@K, MAP@R and
R-precision, but their embeddings still serve as neighbours of other queries
and still count for NMI.

References:
  Musgrave, Belongie, Lim, `A Metric Learning Reality Check
  <https://arxiv.org/abs/2003.08505>`_, ECCV 2020.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.cluster import KMeans
from sklearn.metrics import normalized_mutual_info_score

from nngk_jax.knn import exact_knn

__all__ = [
    "accuracy",
    "map_at_r",
    "nmi_kmeans",
    "r_precision",
    "recall_at_k",
    "retrieval_metrics",
]


def _check_ranked(
    name: str, neighbour_labels: np.ndarray, query_labels: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
  """Checks ``[Q, K]`` neighbour labels against ``[Q]`` query labels."""
  neighbour_labels = np.asarray(neighbour_labels)
  query_labels = np.asarray(query_labels)
  if (neighbour_labels.ndim != 2 or query_labels.ndim != 1
      or neighbour_labels.shape[0] != query_labels.shape[0]):
    raise ValueError(
        f"{name}: neighbour_labels must be [Q, K] and query_labels [Q]; got"
        f" shapes {neighbour_labels.shape} and {query_labels.shape}")
  return neighbour_labels, query_labels


def _relevant_within_r(
    name: str,
    neighbour_labels: np.ndarray,
    query_labels: np.ndarray,
    class_counts_per_query: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
  """Relevance of each rank ``<= R`` for the queries with ``R > 0``.

  Returns ``(relevant [Q', Rmax] bool, R [Q'])`` over the ``Q'`` queries with
  ``R > 0``; ranks beyond a query's own ``R`` are False.
  """
  neighbour_labels, query_labels = _check_ranked(
      name, neighbour_labels, query_labels)
  counts = np.asarray(class_counts_per_query)
  if counts.shape != query_labels.shape:
    raise ValueError(
        f"{name}: class_counts_per_query must be [Q] = {query_labels.shape};"
        f" got shape {counts.shape}")
  if not np.issubdtype(counts.dtype, np.integer) or np.any(counts < 0):
    raise ValueError(
        f"{name}: class_counts_per_query must be non-negative integers; got"
        f" dtype {counts.dtype}, min {counts.min() if counts.size else None}")
  keep = counts > 0
  counts = counts[keep].astype(np.int64)
  max_r = int(counts.max()) if counts.size else 0
  if max_r > neighbour_labels.shape[1]:
    raise ValueError(
        f"{name}: a query has R={max_r} relevant items but only"
        f" {neighbour_labels.shape[1]} neighbours are given; pass at least"
        f" max(R) neighbours per query")
  ranks = np.arange(max_r)
  relevant = neighbour_labels[keep, :max_r] == query_labels[keep, None]
  relevant &= ranks[None, :] < counts[:, None]
  return relevant, counts


def recall_at_k(
    neighbour_labels: np.ndarray,
    query_labels: np.ndarray,
    ks: Sequence[int],
) -> dict[str, float]:
  r"""Recall@K: the fraction of queries with a same-label item in the top K.

  .. math::
    \text{Recall@}K = \frac{1}{Q} \sum_{q=1}^{Q}
      \mathbb{1}\Big[\exists\, i \le K:\ y_{n_{q,i}} = y_q\Big]

  This is the "Recall@K" of the metric-learning literature (a hit rate), not
  the information-retrieval recall. Every row counts: drop the queries of
  singleton classes (``R = 0``) before calling, as :func:`retrieval_metrics`
  does, since they can never score a hit.

  Args:
    neighbour_labels: ``[num_queries, max_k]`` labels of each query's
      neighbours, nearest first.
    query_labels: ``[num_queries]`` label of each query.
    ks: the values of K, each in ``[1, max_k]``.

  Returns:
    ``{"recall@K": value}`` for each K in ``ks``, values in ``[0, 1]``; NaN
    when there are no queries.

  Raises:
    ValueError: on mismatched shapes, an empty ``ks`` or a K out of range.

  Examples:
    >>> import numpy as np
    >>> recall_at_k(np.array([[1, 0], [0, 0]]), np.array([0, 1]), ks=(1, 2))
    {'recall@1': 0.0, 'recall@2': 0.5}
  """
  neighbour_labels, query_labels = _check_ranked(
      "recall_at_k", neighbour_labels, query_labels)
  ks = [int(k) for k in ks]
  max_k = neighbour_labels.shape[1]
  if not ks or any(not 1 <= k <= max_k for k in ks):
    raise ValueError(
        f"recall_at_k: ks must be a non-empty list of values in [1, {max_k}]"
        f" (the neighbours given); got {ks}")
  hits = neighbour_labels == query_labels[:, None]
  # first_hit[q, i]: some same-label item among the first i + 1 neighbours.
  first_hit = np.logical_or.accumulate(hits, axis=1)
  result = {}
  for k in ks:
    value = first_hit[:, k - 1].mean() if len(query_labels) else np.nan
    result[f"recall@{k}"] = float(value)
  return result


def map_at_r(
    neighbour_labels: np.ndarray,
    query_labels: np.ndarray,
    class_counts_per_query: np.ndarray,
) -> float:
  r"""Mean average precision at R (MAP@R), after Musgrave et al. (2020).

  For a query with :math:`R` other items of its class,

  .. math::
    \text{MAP@R} = \frac{1}{R} \sum_{i=1}^{R} P(i)\, \text{rel}(i), \qquad
    P(i) = \frac{1}{i} \sum_{j=1}^{i} \text{rel}(j),

  where :math:`\text{rel}(i) = 1` when the i-th neighbour has the query's
  label. Only the first :math:`R` ranks count, so unlike ordinary average
  precision a relevant item found after rank :math:`R` earns nothing. It is
  averaged over the queries with :math:`R > 0`; queries of singleton classes
  (:math:`R = 0`) are left out.

  Args:
    neighbour_labels: ``[num_queries, max_k]`` labels of each query's
      neighbours, nearest first (self excluded); ``max_k`` must be at least
      the largest R among the counted queries.
    query_labels: ``[num_queries]`` label of each query.
    class_counts_per_query: ``[num_queries]`` int R: how many *other* items
      share the query's label.

  Returns:
    MAP@R in ``[0, 1]``; NaN when no query has ``R > 0``.

  Raises:
    ValueError: on mismatched shapes, negative R, or fewer than R neighbours.

  Examples:
    >>> import numpy as np
    >>> ranked = np.array([[0, 1, 0]])  # [same, diff, same]
    >>> map_at_r(ranked, np.array([0]), np.array([2]))  # (1 + 0) / 2
    0.5
    >>> round(map_at_r(ranked, np.array([0]), np.array([3])), 4)  # (1 + 2/3) / 3
    0.5556

  References:
    Musgrave, Belongie, Lim, A Metric Learning Reality Check, ECCV 2020.
  """
  relevant, counts = _relevant_within_r(
      "map_at_r", neighbour_labels, query_labels, class_counts_per_query)
  if counts.size == 0:
    return float("nan")
  precision_at_i = np.cumsum(relevant, axis=1) / np.arange(1, relevant.shape[1] + 1)
  per_query = np.sum(precision_at_i * relevant, axis=1) / counts
  return float(per_query.mean())


def r_precision(
    neighbour_labels: np.ndarray,
    query_labels: np.ndarray,
    class_counts_per_query: np.ndarray,
) -> float:
  r"""R-precision: the fraction of the first R neighbours that are relevant.

  .. math::
    \text{R-precision} = \frac{1}{R} \sum_{i=1}^{R} \text{rel}(i)

  with :math:`R` the number of other items of the query's class, averaged
  over the queries with :math:`R > 0` (singleton classes are left out).

  Args:
    neighbour_labels: ``[num_queries, max_k]`` labels of each query's
      neighbours, nearest first (self excluded); ``max_k`` must be at least
      the largest R among the counted queries.
    query_labels: ``[num_queries]`` label of each query.
    class_counts_per_query: ``[num_queries]`` int R: how many *other* items
      share the query's label.

  Returns:
    R-precision in ``[0, 1]``; NaN when no query has ``R > 0``.

  Raises:
    ValueError: on mismatched shapes, negative R, or fewer than R neighbours.

  Examples:
    >>> import numpy as np
    >>> r_precision(np.array([[0, 1, 0]]), np.array([0]), np.array([2]))
    0.5

  References:
    Musgrave, Belongie, Lim, A Metric Learning Reality Check, ECCV 2020.
  """
  relevant, counts = _relevant_within_r(
      "r_precision", neighbour_labels, query_labels, class_counts_per_query)
  if counts.size == 0:
    return float("nan")
  return float(np.mean(relevant.sum(axis=1) / counts))


def nmi_kmeans(
    embeddings: np.ndarray,
    labels: np.ndarray,
    *,
    num_clusters: int | None = None,
    seed: int = 0,
    n_init: int = 10,
) -> float:
  r"""NMI between the labels and a k-means clustering of the embeddings.

  .. math::
    \text{NMI}(Y, C) = \frac{I(Y; C)}{\tfrac{1}{2}\,(H(Y) + H(C))}

  (scikit-learn's ``normalized_mutual_info_score``, arithmetic mean). The
  clustering is scikit-learn ``KMeans`` with k-means++ seeding; ``n_init``
  restarts (default 10, keeping the lowest inertia) make the score far less
  dependent on one unlucky seeding than scikit-learn's ``"auto"`` (a single
  run) at ten times the cost. With thousands of clusters (Stanford Online
  Products) lower it, or skip NMI.

  Args:
    embeddings: ``[num_examples, dim]`` float.
    labels: ``[num_examples]`` class labels.
    num_clusters: number of k-means clusters; by default the number of
      distinct labels.
    seed: ``random_state`` of k-means.
    n_init: number of k-means restarts.

  Returns:
    NMI in ``[0, 1]``.

  Raises:
    ValueError: on mismatched shapes or more clusters than examples.

  Examples:
    >>> import numpy as np
    >>> x = np.array([[0.], [0.1], [5.], [5.1]])
    >>> nmi_kmeans(x, np.array([3, 3, 7, 7]))
    1.0
  """
  embeddings = np.asarray(embeddings)
  labels = np.asarray(labels)
  if (embeddings.ndim != 2 or labels.ndim != 1
      or embeddings.shape[0] != labels.shape[0]):
    raise ValueError(
        f"nmi_kmeans: embeddings must be [N, D] and labels [N]; got shapes"
        f" {embeddings.shape} and {labels.shape}")
  if num_clusters is None:
    num_clusters = len(np.unique(labels))
  if not 1 <= num_clusters <= embeddings.shape[0]:
    raise ValueError(
        f"nmi_kmeans: num_clusters={num_clusters} must be in [1, N={embeddings.shape[0]}]")
  kmeans = KMeans(n_clusters=num_clusters, n_init=n_init, random_state=seed)
  clusters = kmeans.fit_predict(embeddings)
  return float(normalized_mutual_info_score(labels, clusters))


def retrieval_metrics(
    embeddings: np.ndarray,
    labels: np.ndarray,
    *,
    recall_ks: Sequence[int] = (1, 2, 4, 8),
    nmi: bool = True,
    seed: int = 0,
    chunk_size: int | None = None,
) -> dict[str, float]:
  r"""Recall@K, MAP@R, R-precision and NMI of a set of labelled embeddings.

  Each embedding is a query against all the others (itself excluded), ranked
  by Euclidean distance with one :func:`~nngk_jax.knn.exact_knn` call for
  :math:`k = \min(\max(\max K, \max R),\, N - 1)` neighbours. Queries of
  singleton classes (:math:`R = 0`) are left out of the retrieval metrics
  but still act as neighbours; NMI uses every embedding. A K beyond the
  :math:`N - 1` neighbours that exist is evaluated at :math:`N - 1`.

  Args:
    embeddings: ``[num_examples, dim]`` finite float.
    labels: ``[num_examples]`` class labels.
    recall_ks: the values of K for Recall@K (1, 2, 4, 8 for CUB and Cars;
      1, 10, 100, 1000 for Stanford Online Products).
    nmi: whether to compute NMI (k-means with one cluster per class; the slow
      part with many classes).
    seed: k-means seed.
    chunk_size: queries per chunk of the neighbour search (see ``exact_knn``).

  Returns:
    ``{"recall@1": .., "recall@2": .., ..., "map@r": .., "r_precision": ..,
    "nmi": ..}`` as Python floats (``"nmi"`` only when ``nmi``). Retrieval
    metrics are NaN when every class is a singleton.

  Raises:
    ValueError: on mismatched shapes, fewer than 2 embeddings, non-finite
      embeddings (the count of bad rows is given), or a K below 1.

  Examples:
    >>> import numpy as np
    >>> x = np.array([[0.], [0.1], [5.], [5.1]])
    >>> m = retrieval_metrics(x, np.array([0, 0, 1, 1]), recall_ks=(1, 2))
    >>> {name: round(value, 3) for name, value in m.items()}
    {'recall@1': 1.0, 'recall@2': 1.0, 'map@r': 1.0, 'r_precision': 1.0, 'nmi': 1.0}

  References:
    Musgrave, Belongie, Lim, A Metric Learning Reality Check, ECCV 2020.
  """
  embeddings = np.asarray(embeddings)
  labels = np.asarray(labels)
  if (embeddings.ndim != 2 or labels.ndim != 1
      or embeddings.shape[0] != labels.shape[0]):
    raise ValueError(
        f"retrieval_metrics: shape mismatch: embeddings must be [N, D] and"
        f" labels [N]; got shapes {embeddings.shape} and {labels.shape}")
  num_examples = embeddings.shape[0]
  if num_examples < 2:
    raise ValueError(
        f"retrieval_metrics: need at least 2 embeddings (each query is ranked"
        f" against the others); got {num_examples}")
  recall_ks = [int(k) for k in recall_ks]
  if not recall_ks or min(recall_ks) < 1:
    raise ValueError(
        f"retrieval_metrics: recall_ks must be a non-empty list of K >= 1;"
        f" got {recall_ks}")
  # Checked after the float32 cast that the search uses, so an overflow shows.
  embeddings32 = embeddings.astype(np.float32)
  bad_rows = int(np.sum(~np.all(np.isfinite(embeddings32), axis=1)))
  if bad_rows:
    raise ValueError(
        f"retrieval_metrics: {bad_rows} of {num_examples} embedding rows"
        f" contain NaN or inf (in float32)")

  _, inverse, class_sizes = np.unique(
      labels, return_inverse=True, return_counts=True)
  counts = (class_sizes[inverse.reshape(-1)] - 1).astype(np.int64)
  k = min(max(max(recall_ks), int(counts.max())), num_examples - 1)
  neighbour_idx, _ = exact_knn(
      embeddings32, embeddings32, k=k,
      query_ids=np.arange(num_examples), chunk_size=chunk_size)

  keep = counts > 0
  neighbour_labels = labels[neighbour_idx[keep]]
  query_labels = labels[keep]
  query_counts = counts[keep]
  # A K beyond the N - 1 neighbours that exist is evaluated at N - 1.
  evaluated_ks = sorted({min(recall_k, k) for recall_k in recall_ks})
  capped = recall_at_k(neighbour_labels, query_labels, evaluated_ks)
  result = {
      f"recall@{recall_k}": capped[f"recall@{min(recall_k, k)}"]
      for recall_k in recall_ks}
  result["map@r"] = map_at_r(neighbour_labels, query_labels, query_counts)
  result["r_precision"] = r_precision(neighbour_labels, query_labels, query_counts)
  if nmi:
    result["nmi"] = nmi_kmeans(embeddings32, labels, seed=seed)
  return result


def accuracy(predicted: np.ndarray, labels: np.ndarray) -> float:
  r"""Classification accuracy: the fraction of correct predictions.

  .. math::
    \text{accuracy} = \frac{1}{N} \sum_{n=1}^{N} \mathbb{1}[\hat y_n = y_n]

  Args:
    predicted: ``[num_examples]`` int predicted labels.
    labels: ``[num_examples]`` int true labels.

  Returns:
    Accuracy in ``[0, 1]``.

  Raises:
    ValueError: on mismatched or non-1-D shapes, or no examples.

  Examples:
    >>> import numpy as np
    >>> accuracy(np.array([0, 1, 2, 2]), np.array([0, 1, 1, 2]))
    0.75
  """
  predicted = np.asarray(predicted)
  labels = np.asarray(labels)
  if predicted.ndim != 1 or predicted.shape != labels.shape:
    raise ValueError(
        f"accuracy: predicted and labels must both be [N]; got shapes"
        f" {predicted.shape} and {labels.shape}")
  if predicted.size == 0:
    raise ValueError("accuracy: no examples (N = 0)")
  return float(np.mean(predicted == labels))

"""Retrieval and classification metrics, computed on the host.

The metric-learning protocol (``methods.md``, "Evaluation protocol"): on the
class-disjoint test split, every test embedding is a query against all *other*
test embeddings (itself excluded), by Euclidean distance. From the ranked
neighbours come Recall@K, MAP@R and R-precision (Musgrave et al., 2020); NMI
comes from k-means with as many clusters as classes
(:mod:`nngk_jax.metrics.clustering`).

Everything here takes NumPy arrays and returns Python floats.
:func:`retrieval_metrics` takes its neighbour search and its clustering as
callables, as pytorch-metric-learning's ``AccuracyCalculator(knn_func=...,
kmeans_func=...)``; :func:`knn_function` and
:func:`~nngk_jax.metrics.clustering.kmeans_function` look them up by the
names a config holds. The searches: :func:`nngk_jax.knn.exact_knn` (chunked
brute force in JAX; memory bounded by the chunk, never ``N x N``), the
default, or a PyNNDescent index. The other functions work on the labels of
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

import dataclasses
import warnings
from collections.abc import Sequence
from typing import Protocol

import numpy as np
from sklearn.metrics import normalized_mutual_info_score

from nngk_jax import neighbours as neighbourlib
from nngk_jax.checks import non_negative_int
from nngk_jax.checks import positive_int
from nngk_jax.knn import exact_knn
from nngk_jax.metrics.clustering import NMI_METHODS
from nngk_jax.metrics.clustering import KmeansFunction
from nngk_jax.metrics.clustering import _check_embeddings
from nngk_jax.metrics.clustering import kmeans_function
from nngk_jax.metrics.self_retrieval import self_retrieval

__all__ = [
    "SEARCH_METHODS",
    "ExactKnn",
    "KnnFunction",
    "PyNNDescentKnn",
    "accuracy",
    "knn_function",
    "map_at_r",
    "r_precision",
    "recall_at_k",
    "retrieval_metrics",
]

#: Neighbour searches of :func:`knn_function`.
SEARCH_METHODS = ("exact", "pynndescent")


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


# ------------------------------------------------------- neighbour search


class KnnFunction(Protocol):
  """A neighbour search: ``(queries, data, k, query_ids=None) -> indices``.

  Called with ``[Q, D]`` float32 queries, ``[N, D]`` float32 data, the
  number of neighbours ``k`` and, for a search of a set among itself,
  ``query_ids``: ``[Q]`` int, the row of ``data`` that each query *is*,
  which must not be among its own neighbours (self exclusion). Returns
  ``[Q, k]`` int indices into ``data``, nearest first, no repeats.
  :func:`retrieval_metrics` calls it once, as
  ``knn_func(x, x, k, query_ids=np.arange(N))``.

  A search may expose ``search_recall`` (a float, or None when not
  measured): :func:`retrieval_metrics` then reports it.
  """

  def __call__(self, queries: np.ndarray, data: np.ndarray, k: int,
               query_ids: np.ndarray | None = None) -> np.ndarray:
    ...


@dataclasses.dataclass(frozen=True)
class ExactKnn:
  r"""Exact search by chunked brute force (:func:`nngk_jax.knn.exact_knn`).

  Memory :math:`O(\text{chunk} \cdot N + Q k)`, never :math:`Q \times N`.
  Distances come from the ``|q|^2 + |x|^2 - 2 q.x`` expansion; ties
  (equal distances, e.g. duplicate embeddings) go to the lower data index,
  and with ``query_ids`` a query's own row is excluded by index (a
  duplicate of the query is still found).

  Attributes:
    chunk_size: queries per chunk (see ``exact_knn``); None for its
      default.

  Examples:
    >>> import numpy as np
    >>> x = np.array([[0.], [1.], [3.]], np.float32)
    >>> ExactKnn()(x, x, 1, query_ids=np.arange(3)).tolist()
    [[1], [0], [1]]
  """

  chunk_size: int | None = None

  def __call__(self, queries: np.ndarray, data: np.ndarray, k: int,
               query_ids: np.ndarray | None = None) -> np.ndarray:
    return exact_knn(queries, data, k=k, query_ids=query_ids,
                     chunk_size=self.chunk_size)[0]


@dataclasses.dataclass
class PyNNDescentKnn:
  """Approximate search with a PyNNDescent index; measures its own recall.

  With ``query_ids = arange(N)`` (every point among the others, as
  :func:`retrieval_metrics` asks) it is
  :func:`nngk_jax.neighbours.approximate_self_neighbours`: an index of
  ``index_neighbours`` per point, searched for ``k + 1`` neighbours of
  every point, the point itself dropped (by index), rows left short
  repaired exactly. Without ``query_ids`` it is
  :func:`nngk_jax.neighbours.query_neighbours` with the ``"pynndescent"``
  backend. Other ``query_ids`` are refused.

  After each call ``search_recall`` holds the fraction of the exact
  :math:`k` nearest neighbours that the search found, averaged over
  ``search_recall_queries`` queries drawn at random with ``seed`` (their
  exact neighbours cost that many rows of exact search), or None when
  ``search_recall_queries`` is 0. On a 2-core CPU at Stanford Online
  Products scale (60,502 points, :math:`k = 1000`) exact search is the
  faster by far: 80 s as a list of 1,000 neighbours (less as
  :func:`retrieval_metrics`' symmetric pass) against 14 minutes, since
  PyNNDescent's search for 1,001 neighbours runs on one core
  (``docs/benchmarks.md``).

  Attributes:
    seed: seed of NN-descent and of the recall sample.
    index_neighbours: degree of the searched graph (PyNNDescent's default
      30).
    chunk_size: queries per chunk of any exact search.
    search_recall_queries: queries sampled to measure ``search_recall``;
      0 skips it.
    search_recall: set by each call (not an argument).
  """

  seed: int = 0
  index_neighbours: int = 30
  chunk_size: int | None = None
  search_recall_queries: int = 1000
  search_recall: float | None = dataclasses.field(default=None, init=False)

  def __call__(self, queries: np.ndarray, data: np.ndarray, k: int,
               query_ids: np.ndarray | None = None) -> np.ndarray:
    self.search_recall = None
    queries = np.asarray(queries)
    data = np.asarray(data)
    if query_ids is None:
      indices = neighbourlib.query_neighbours(
          data, queries, k=k, backend="pynndescent", seed=self.seed)
    else:
      query_ids = np.asarray(query_ids)
      if (queries.shape != data.shape
          or not np.array_equal(query_ids, np.arange(len(data)))):
        raise ValueError(
            "PyNNDescentKnn: with query_ids, the queries must be the data"
            " themselves (query_ids = arange(N)); got queries"
            f" {queries.shape}, data {data.shape}")
      indices = neighbourlib.approximate_self_neighbours(
          data, k=k, index_neighbours=self.index_neighbours, seed=self.seed,
          chunk_size=self.chunk_size)
    if self.search_recall_queries:
      num_queries = len(queries)
      sample = np.sort(np.random.default_rng(self.seed).choice(
          num_queries, min(self.search_recall_queries, num_queries),
          replace=False))
      exact_idx, _ = exact_knn(
          queries[sample], data, k=k,
          query_ids=None if query_ids is None else query_ids[sample],
          chunk_size=self.chunk_size)
      self.search_recall = neighbourlib.graph_recall(indices[sample],
                                                     exact_idx)
    return indices


def knn_function(
    name: str = "exact",
    *,
    seed: int = 0,
    chunk_size: int | None = None,
    search_recall_queries: int = 1000,
) -> KnnFunction:
  """The neighbour search named ``name``, for configs and command lines.

  Args:
    name: ``"exact"`` (:class:`ExactKnn`) or ``"pynndescent"``
      (:class:`PyNNDescentKnn`) (``SEARCH_METHODS``).
    seed: seed of PyNNDescent and of its recall sample (the exact search
      has no randomness and ignores it).
    chunk_size: queries per chunk of the exact searches.
    search_recall_queries: queries sampled to measure the
      ``"search_recall"`` of an approximate search; 0 skips it (ignored by
      the exact search).

  Returns:
    ``knn_func(queries, data, k, query_ids=None) -> [Q, k]`` indices (see
    :class:`KnnFunction`).

  Raises:
    ValueError: on an unknown name, a ``chunk_size`` that is not a positive
      integer or a negative ``search_recall_queries``.

  Examples:
    >>> knn_function("exact", chunk_size=256)
    ExactKnn(chunk_size=256)
    >>> search = knn_function("pynndescent", seed=1)
    >>> type(search).__name__, search.seed, search.search_recall_queries
    ('PyNNDescentKnn', 1, 1000)
  """
  if name not in SEARCH_METHODS:
    raise ValueError(
        f"knn_function: unknown search {name!r}; use one of {SEARCH_METHODS}")
  if chunk_size is not None:
    chunk_size = positive_int("knn_function: chunk_size", chunk_size)
  search_recall_queries = non_negative_int(
      "knn_function: search_recall_queries", search_recall_queries)
  if name == "exact":
    return ExactKnn(chunk_size=chunk_size)
  return PyNNDescentKnn(seed=seed, chunk_size=chunk_size,
                        search_recall_queries=search_recall_queries)


def _check_neighbours(indices: np.ndarray, num_examples: int,
                      k: int) -> np.ndarray:
  """``knn_func``'s self-excluded ``[N, k]`` answer, or a ValueError."""
  indices = np.asarray(indices)
  if indices.shape != (num_examples, k) or not np.issubdtype(
      indices.dtype, np.integer):
    raise ValueError(
        f"retrieval_metrics: knn_func must return [N, k] = [{num_examples},"
        f" {k}] int indices; got shape {indices.shape}, dtype {indices.dtype}")
  if indices.size and (indices.min() < 0 or indices.max() >= num_examples):
    raise ValueError(
        f"retrieval_metrics: knn_func returned indices outside [0,"
        f" {num_examples})")
  own = np.flatnonzero(
      np.any(indices == np.arange(num_examples)[:, None], axis=1))
  if own.size:
    raise ValueError(
        f"retrieval_metrics: knn_func listed {own.size} queries among their"
        f" own neighbours (first: row {own[0]}); it must leave out row"
        " query_ids[i] of data for query i")
  return indices


# ---------------------------------------------------------------- metrics


def retrieval_metrics(
    embeddings: np.ndarray,
    labels: np.ndarray,
    *,
    recall_ks: Sequence[int] = (1, 2, 4, 8),
    knn_func: KnnFunction | None = None,
    kmeans_func: KmeansFunction | None = None,
    nmi: bool = True,
    seed: int = 0,
    search: str | None = None,
    nmi_method: str | None = None,
) -> dict[str, float]:
  r"""Recall@K, MAP@R, R-precision and NMI of a set of labelled embeddings.

  Each embedding is a query against all the others (itself excluded), ranked
  by Euclidean distance, for
  :math:`k = \min(\max(\max K, \max R),\, N - 1)` neighbours. Queries of
  singleton classes (:math:`R = 0`) are left out of the retrieval metrics
  but still act as neighbours; NMI uses every embedding. A K beyond the
  :math:`N - 1` neighbours that exist is evaluated at :math:`N - 1`.

  The neighbours come from one call
  ``knn_func(x, x, k, query_ids=np.arange(N))`` (``x`` the embeddings in
  float32; see :class:`KnnFunction`); :func:`knn_function` looks one up by
  name. A search that measures itself (:class:`PyNNDescentKnn`) adds its
  ``"search_recall"``. When the largest K exceeds every R, the default
  exact search (:class:`ExactKnn`) is not asked for a list of :math:`k`
  neighbours but run as one symmetric pass
  (:func:`nngk_jax.metrics.self_retrieval.self_retrieval`): the first
  :math:`\max R` neighbours for MAP@R and R-precision, and for Recall@K
  only the rank of each query's nearest positive. The metrics are the
  same; at Stanford Online Products scale (K = 1000, R at most 11) it does
  half the matmuls and lists 11 neighbours per query instead of 1,000
  (``docs/benchmarks.md``). NMI clusters ``x`` into as many clusters as
  classes with ``kmeans_func(x, num_classes, seed)``, by default
  ``kmeans_function("auto")`` (scikit-learn up to 200 classes, the JAX
  k-means above; see :func:`~nngk_jax.metrics.clustering.kmeans_function`).

  Args:
    embeddings: ``[num_examples, dim]`` finite float.
    labels: ``[num_examples]`` class labels.
    recall_ks: the values of K for Recall@K (1, 2, 4, 8 for CUB and Cars;
      1, 10, 100, 1000 for Stanford Online Products).
    knn_func: the neighbour search; None for ``knn_function("exact")``
      (whose ``chunk_size``, if set, is also the side of the symmetric
      pass's blocks).
    kmeans_func: the clustering of NMI; None for
      ``kmeans_function("auto")``.
    nmi: whether to compute NMI.
    seed: the seed passed to ``kmeans_func`` (a search's own seed is
      given to :func:`knn_function`).
    search: deprecated: ``knn_func=knn_function(search, seed=seed)``
      instead (the name of a search, ``"exact"`` or ``"pynndescent"``).
    nmi_method: deprecated: ``kmeans_func=kmeans_function(nmi_method)``
      instead (``"auto"``, ``"sklearn"`` or ``"jax"``).

  Returns:
    ``{"recall@1": .., "recall@2": .., ..., "map@r": .., "r_precision": ..,
    "nmi": .., "search_recall": ..}`` as Python floats (``"nmi"`` only when
    ``nmi``, ``"search_recall"`` only when ``knn_func`` reports one).
    Retrieval metrics are NaN when every class is a singleton.

  Raises:
    ValueError: on mismatched shapes, fewer than 2 embeddings, non-finite
      embeddings (the count of bad rows is given), a K below 1, a
      ``knn_func`` answer that is not ``[N, k]`` self-excluded indices, an
      unknown ``search`` or ``nmi_method``, or one of them given with the
      callable it stands for.

  Examples:
    >>> import numpy as np
    >>> x = np.array([[0.], [0.1], [5.], [5.1]])
    >>> m = retrieval_metrics(x, np.array([0, 0, 1, 1]), recall_ks=(1, 2))
    >>> {name: round(value, 3) for name, value in m.items()}
    {'recall@1': 1.0, 'recall@2': 1.0, 'map@r': 1.0, 'r_precision': 1.0, 'nmi': 1.0}
    >>> m = retrieval_metrics(x, np.array([0, 0, 1, 1]), recall_ks=(1,),
    ...                       knn_func=knn_function("exact", chunk_size=2),
    ...                       kmeans_func=kmeans_function("jax"))
    >>> m["recall@1"], m["nmi"]
    (1.0, 1.0)

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
  knn_func, kmeans_func = _resolve_deprecated(
      knn_func, kmeans_func, search, nmi_method, seed)
  if knn_func is None:
    knn_func = knn_function("exact")
  if kmeans_func is None:
    kmeans_func = kmeans_function("auto")
  for name, func in (("knn_func", knn_func), ("kmeans_func", kmeans_func)):
    if not callable(func):
      raise ValueError(f"retrieval_metrics: {name} must be callable, got"
                       f" {func!r}")
  embeddings32 = _check_embeddings("retrieval_metrics", embeddings)

  # Integer codes stand in for the labels: [N, k] of them stays small even
  # for string labels.
  _, codes, class_sizes = np.unique(
      labels, return_inverse=True, return_counts=True)
  codes = codes.reshape(-1).astype(np.int32)
  counts = (class_sizes[codes] - 1).astype(np.int64)
  keep = counts > 0
  query_labels = codes[keep]
  query_counts = counts[keep]
  max_r = int(counts.max())
  search_recall = None
  if isinstance(knn_func, ExactKnn) and 0 < max_r < max(recall_ks):
    # One symmetric pass: the first R neighbours for MAP@R, and for
    # Recall@K only the rank of each query's nearest positive, however
    # large K (nngk_jax.metrics.self_retrieval). Where K <= R the list
    # below is no longer, and cheaper (docs/benchmarks.md).
    neighbour_idx, ahead = self_retrieval(
        embeddings32, codes, k=max_r, block_size=knn_func.chunk_size)
    neighbour_labels = codes[neighbour_idx[keep]]
    # Fewer than K items ahead of the nearest positive: a hit within K (a
    # K beyond the N - 1 neighbours that exist counts every query).
    result = {
        f"recall@{recall_k}": float(np.mean(ahead[keep] < recall_k))
        for recall_k in recall_ks}
  else:
    k = min(max(max(recall_ks), max_r), num_examples - 1)
    neighbour_idx = _check_neighbours(
        knn_func(embeddings32, embeddings32, k,
                 query_ids=np.arange(num_examples)),
        num_examples, k)
    search_recall = getattr(knn_func, "search_recall", None)
    neighbour_labels = codes[neighbour_idx[keep]]
    # A K beyond the N - 1 neighbours that exist is evaluated at N - 1.
    evaluated_ks = sorted({min(recall_k, k) for recall_k in recall_ks})
    capped = recall_at_k(neighbour_labels, query_labels, evaluated_ks)
    result = {
        f"recall@{recall_k}": capped[f"recall@{min(recall_k, k)}"]
        for recall_k in recall_ks}
  del neighbour_idx
  result["map@r"] = map_at_r(neighbour_labels, query_labels, query_counts)
  result["r_precision"] = r_precision(neighbour_labels, query_labels, query_counts)
  del neighbour_labels
  if nmi:
    clusters = np.asarray(kmeans_func(embeddings32, len(class_sizes), seed))
    if clusters.shape != (num_examples,):
      raise ValueError(
          f"retrieval_metrics: kmeans_func must return [N] = [{num_examples}]"
          f" cluster labels; got shape {clusters.shape}")
    result["nmi"] = float(normalized_mutual_info_score(labels, clusters))
  if search_recall is not None:
    result["search_recall"] = float(search_recall)
  return result


def _resolve_deprecated(
    knn_func: KnnFunction | None,
    kmeans_func: KmeansFunction | None,
    search: str | None,
    nmi_method: str | None,
    seed: int,
) -> tuple[KnnFunction | None, KmeansFunction | None]:
  """``knn_func`` and ``kmeans_func`` from the deprecated names, if given."""
  if search is not None:
    if knn_func is not None:
      raise ValueError("retrieval_metrics: give knn_func or (deprecated)"
                       " search, not both")
    if search not in SEARCH_METHODS:
      raise ValueError(
          f"retrieval_metrics: unknown search {search!r}; use one of"
          f" {SEARCH_METHODS}")
    warnings.warn(
        "retrieval_metrics(search=...) is deprecated; pass"
        " knn_func=metrics.knn_function(name, seed=seed)",
        DeprecationWarning, stacklevel=3)
    knn_func = knn_function(search, seed=seed)
  if nmi_method is not None:
    if kmeans_func is not None:
      raise ValueError("retrieval_metrics: give kmeans_func or (deprecated)"
                       " nmi_method, not both")
    if nmi_method not in NMI_METHODS:
      raise ValueError(
          f"retrieval_metrics: unknown nmi_method {nmi_method!r}; use one of"
          f" {NMI_METHODS}")
    warnings.warn(
        "retrieval_metrics(nmi_method=...) is deprecated; pass"
        " kmeans_func=metrics.kmeans_function(name)",
        DeprecationWarning, stacklevel=3)
    kmeans_func = kmeans_function(nmi_method)
  return knn_func, kmeans_func


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

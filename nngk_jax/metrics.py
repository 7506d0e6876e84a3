"""Retrieval and classification metrics, computed on the host.

The metric-learning protocol (``methods.md``, "Evaluation protocol"): on the
class-disjoint test split, every test embedding is a query against all *other*
test embeddings (itself excluded), by Euclidean distance. From the ranked
neighbours come Recall@K, MAP@R and R-precision (Musgrave et al., 2020); NMI
comes from k-means with as many clusters as classes.

Everything here takes NumPy arrays and returns Python floats. The neighbour
search is :func:`nngk_jax.knn.exact_knn` (chunked brute force in JAX; memory
bounded by the chunk, never ``N x N``) or, as an option, a PyNNDescent index,
called once per :func:`retrieval_metrics`; the other functions work on the
labels of already-ranked neighbours, so they can be reused with any search.

At Stanford Online Products scale (60,502 test embeddings, 11,316 classes,
Recall@1000) scikit-learn's k-means cannot produce NMI in useful time; with
more than 200 classes NMI comes from :func:`kmeans`, Lloyd's algorithm in JAX
with batched greedy k-means++ seeding. Measured times, memory and the
accuracy of both approximations are in ``docs/benchmarks.md``.

Queries whose class has no other member (``R = 0``, a singleton class) cannot
retrieve anything relevant; they are left out of Recall@K, MAP@R and
R-precision, but their embeddings still serve as neighbours of other queries
and still count for NMI.

References:
  Musgrave, Belongie, Lim, `A Metric Learning Reality Check
  <https://arxiv.org/abs/2003.08505>`_, ECCV 2020.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from sklearn.cluster import KMeans
from sklearn.metrics import normalized_mutual_info_score

from nngk_jax import neighbours as neighbourlib
from nngk_jax.knn import _DEFAULT_MAX_ELEMENTS, exact_knn

__all__ = [
    "KMEANS_INITS",
    "NMI_METHODS",
    "SEARCH_METHODS",
    "accuracy",
    "kmeans",
    "map_at_r",
    "nmi_kmeans",
    "r_precision",
    "recall_at_k",
    "retrieval_metrics",
]

#: Neighbour searches of :func:`retrieval_metrics`.
SEARCH_METHODS = ("exact", "pynndescent")
#: Clusterings of :func:`nmi_kmeans`.
NMI_METHODS = ("auto", "sklearn", "jax")
#: Named seedings of :func:`kmeans`.
KMEANS_INITS = ("k-means++", "random")
# nmi_kmeans(method="auto") uses scikit-learn up to this many clusters.
_SKLEARN_MAX_CLUSTERS = 200


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


# ------------------------------------------------------------------- k-means


@functools.partial(jax.jit, static_argnames=("chunk_size",))
def _nearest_centroid(
    points: jax.Array, centroids: jax.Array, *, chunk_size: int
) -> tuple[jax.Array, jax.Array]:
  """Nearest centroid of each point, ``chunk_size`` points at a time.

  Args:
    points: ``[P, D]``, ``P`` a multiple of ``chunk_size``.
    centroids: ``[K, D]``.
    chunk_size: points per chunk; the largest array is ``[chunk_size, K]``.

  Returns:
    ``(nearest, squared_distance)``, ``[P]`` int32 and float32. Ties go to
    the lower centroid index.
  """
  dim = points.shape[1]
  centroid_sq = jnp.sum(centroids * centroids, axis=1)

  def assign_chunk(chunk):
    # ||x||^2 is the same for every centroid, so it stays out of the argmin.
    scores = centroid_sq[None, :] - 2.0 * (chunk @ centroids.T)
    nearest = jnp.argmin(scores, axis=1)
    best = jnp.take_along_axis(scores, nearest[:, None], axis=1)[:, 0]
    squared = jnp.maximum(best + jnp.sum(chunk * chunk, axis=1), 0.0)
    return nearest.astype(jnp.int32), squared

  nearest, squared = jax.lax.map(
      assign_chunk, points.reshape(-1, chunk_size, dim))
  return nearest.reshape(-1), squared.reshape(-1)


@jax.jit
def _lloyd_update(
    points: jax.Array,
    valid: jax.Array,
    nearest: jax.Array,
    squared_distance: jax.Array,
    centroids: jax.Array,
) -> jax.Array:
  """New centroids: the mean of each cluster's points.

  A cluster with no point moves to a point far from its current centroid:
  the empty clusters take the farthest points, farthest first (as
  scikit-learn's ``KMeans``). Rows with ``valid`` False (padding) count for
  nothing.
  """
  num_clusters = centroids.shape[0]
  member = jnp.where(valid, nearest, num_clusters)  # Out of range: dropped.
  sums = jax.ops.segment_sum(points, member, num_segments=num_clusters)
  counts = jax.ops.segment_sum(
      valid.astype(points.dtype), member, num_segments=num_clusters)
  empty = counts == 0
  farthest_first = jnp.argsort(jnp.where(valid, -squared_distance, jnp.inf))
  rank = jnp.clip(jnp.cumsum(empty) - 1, 0, points.shape[0] - 1)
  relocated = points[farthest_first[rank]]
  means = sums / jnp.maximum(counts, 1.0)[:, None]
  return jnp.where(empty[:, None], relocated, means)


@functools.partial(
    jax.jit,
    static_argnames=("num_clusters", "batch", "trials", "chunk_size"))
def _greedy_kmeans_plus_plus(
    points: jax.Array,
    num_valid: jax.Array,
    key: jax.Array,
    *,
    num_clusters: int,
    batch: int,
    trials: int,
    chunk_size: int,
) -> jax.Array:
  """Batched greedy k-means++ seeding; see :func:`kmeans`.

  Args:
    points: ``[P, D]``, the first ``num_valid`` rows real, the rest padding;
      ``P`` a multiple of ``chunk_size``.
    num_valid: scalar int, ``N``.
    key: PRNG key.
    num_clusters: ``K``.
    batch: centres added per round.
    trials: candidates per centre; ``batch * trials <= N``.
    chunk_size: points per chunk of the distance computations.

  Returns:
    ``[K, D]`` initial centroids, all rows of ``points``.
  """
  num_rows, dim = points.shape
  valid = jnp.arange(num_rows) < num_valid
  points_sq = jnp.sum(points * points, axis=1)
  point_chunks = points.reshape(-1, chunk_size, dim)
  sq_chunks = points_sq.reshape(-1, chunk_size)

  def chunked(fn, potential):  # fn(points, squared norms, potential) per chunk
    return jax.lax.map(
        fn, (point_chunks, sq_chunks, potential.reshape(-1, chunk_size)))

  key, first_key = jax.random.split(key)
  first = points[jax.random.randint(first_key, (), 0, num_valid)]
  # potential[n]: squared distance of point n to its nearest chosen centre
  # (D^2 of k-means++); 0 for padding, which is never drawn.
  potential = points_sq - 2.0 * (points @ first) + first @ first
  potential = jnp.where(valid, jnp.maximum(potential, 0.0), 0.0)
  num_rounds = -(-(num_clusters - 1) // batch)
  centres = jnp.zeros((1 + num_rounds * batch, dim), points.dtype)
  centres = centres.at[0].set(first)

  def one_round(round_index, state):
    centres, potential, key = state
    key, draw_key = jax.random.split(key)
    # Draw batch * trials distinct points with probability proportional to
    # D^2 (Gumbel top-k). Points with D^2 = 0 (chosen centres, duplicates)
    # come after all others, padding last.
    log_weight = jnp.where(
        potential > 0, jnp.log(jnp.where(potential > 0, potential, 1.0)),
        jnp.where(valid, -1e30, -jnp.inf))
    _, drawn = jax.lax.top_k(
        log_weight + jax.random.gumbel(draw_key, (num_rows,)), batch * trials)
    candidates = points[drawn]
    candidates_sq = jnp.sum(candidates * candidates, axis=1)

    def potential_with_each(args):
      chunk, chunk_sq, chunk_potential = args
      d2 = chunk_sq[:, None] - 2.0 * (chunk @ candidates.T) + candidates_sq
      return jnp.sum(
          jnp.minimum(chunk_potential[:, None], jnp.maximum(d2, 0.0)), axis=0)

    # Greedy step: in each group of `trials` candidates keep the one that
    # lowers the total potential most.
    total = chunked(potential_with_each, potential).sum(axis=0)
    best = jnp.argmin(total.reshape(batch, trials), axis=1)
    chosen = candidates.reshape(batch, trials, dim)[jnp.arange(batch), best]
    chosen_sq = jnp.sum(chosen * chosen, axis=1)

    def lowered(args):
      chunk, chunk_sq, chunk_potential = args
      d2 = chunk_sq[:, None] - 2.0 * (chunk @ chosen.T) + chosen_sq
      return jnp.minimum(chunk_potential, jnp.maximum(d2.min(axis=1), 0.0))

    potential = jnp.where(valid, chunked(lowered, potential).reshape(-1), 0.0)
    centres = jax.lax.dynamic_update_slice(
        centres, chosen, (1 + round_index * batch, 0))
    return centres, potential, key

  centres, _, _ = jax.lax.fori_loop(
      0, num_rounds, one_round, (centres, potential, key))
  return centres[:num_clusters]


def _check_embeddings(name: str, embeddings: np.ndarray) -> np.ndarray:
  """``[N, D]`` finite embeddings as float32, or a ValueError."""
  embeddings = np.asarray(embeddings)
  if embeddings.ndim != 2 or 0 in embeddings.shape:
    raise ValueError(
        f"{name}: embeddings must be a non-empty [N, D] array; got shape"
        f" {embeddings.shape}")
  embeddings32 = embeddings.astype(np.float32)
  bad_rows = int(np.sum(~np.all(np.isfinite(embeddings32), axis=1)))
  if bad_rows:
    raise ValueError(
        f"{name}: {bad_rows} of {embeddings.shape[0]} embedding rows contain"
        f" NaN or inf (in float32)")
  return embeddings32


def _check_count(name: str, what: str, value, minimum: int) -> int:
  if isinstance(value, (bool, np.bool_)) or not isinstance(
      value, (int, np.integer)) or value < minimum:
    raise ValueError(f"{name}: {what} must be an integer >= {minimum}; got {value!r}")
  return int(value)


def kmeans(
    embeddings: np.ndarray,
    num_clusters: int,
    *,
    init: str | np.ndarray = "k-means++",
    max_iter: int = 20,
    seed: int = 0,
    chunk_size: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
  r"""Lloyd's k-means in JAX, fast with thousands of clusters.

  Lowers the within-cluster sum of squares

  .. math::
    \sum_{n=1}^{N} \|x_n - \mu_{c_n}\|^2, \qquad
    c_n = \operatorname{arg\,min}_j \|x_n - \mu_j\|^2,

  by alternating the assignment step (every point to its nearest centroid,
  by one matmul ``chunk_size`` points at a time, so the largest array is
  ``[chunk_size, K]``) and the update step (every centroid to the mean of its
  points; a cluster left empty moves to the point farthest from its
  centroid, as in scikit-learn). It stops when no assignment changes, or
  after ``max_iter`` updates. One run, no restarts.

  Seeding:

  * ``"k-means++"`` (default): greedy k-means++ as in scikit-learn (each new
    centre is the best of :math:`2 + \lfloor\ln K\rfloor` candidates drawn
    with probability :math:`\propto D(x)^2`, the one lowering the total
    :math:`\sum_n D(x_n)^2` most), *batched*: each round adds
    :math:`B = \lceil (K - 1) / 128 \rceil` centres, one per independent
    group of candidates, all drawn against the same :math:`D^2`, so there are
    at most 128 sequential rounds. It costs about :math:`3 + \ln K`
    assignment passes. Two groups of a round may seed the same cluster, a
    small loss against sequential seeding; on the SOP-like sets of
    ``docs/benchmarks.md`` the NMI still matched scikit-learn's ``KMeans``
    (k-means++, 10 restarts). With :math:`B = 1` (up to 129 clusters) it is
    sequential greedy k-means++.
  * ``"random"``: :math:`K` distinct points drawn uniformly (as faiss); no
    seeding cost but, with many small classes, clearly lower NMI.
  * a ``[K, D]`` array of initial centroids.

  Args:
    embeddings: ``[num_examples, dim]`` finite float (computed in float32).
    num_clusters: ``K``, in ``[1, num_examples]``.
    init: ``"k-means++"``, ``"random"`` or a ``[K, D]`` array.
    max_iter: most update steps, ``>= 0`` (0: assign to the initial
      centroids only).
    seed: seed of the seeding.
    chunk_size: points per chunk; by default chosen so that one chunk holds
      at most 32M distances.

  Returns:
    ``(assignments, centroids)``: ``[num_examples]`` int32, each point's
    nearest centroid (ties to the lower index), and ``[K, dim]`` float32.

  Raises:
    ValueError: on bad shapes or non-finite values, ``num_clusters`` outside
      ``[1, N]``, an unknown ``init``, a negative ``max_iter`` or a
      ``chunk_size`` below 1.

  Examples:
    >>> import numpy as np
    >>> x = np.array([[0.], [0.1], [5.], [5.1]], np.float32)
    >>> assignments, centroids = kmeans(x, 2)
    >>> [round(float(c), 2) for c in np.sort(centroids[:, 0])]
    [0.05, 5.05]
    >>> bool(assignments[0] == assignments[1] != assignments[2] == assignments[3])
    True

  References:
    Lloyd, `Least squares quantization in PCM
    <https://doi.org/10.1109/TIT.1982.1056489>`_, IEEE Trans. Inf. Theory
    1982.

    Arthur and Vassilvitskii, `k-means++: The Advantages of Careful Seeding
    <https://dl.acm.org/doi/10.5555/1283383.1283494>`_, SODA 2007.
  """
  points = _check_embeddings("kmeans", embeddings)
  num_examples, dim = points.shape
  num_clusters = _check_count("kmeans", "num_clusters", num_clusters, 1)
  if num_clusters > num_examples:
    raise ValueError(
        f"kmeans: num_clusters={num_clusters} must be in [1, N={num_examples}]")
  max_iter = _check_count("kmeans", "max_iter", max_iter, 0)
  if chunk_size is None:
    chunk_size = max(1, _DEFAULT_MAX_ELEMENTS // num_clusters)
  chunk_size = min(_check_count("kmeans", "chunk_size", chunk_size, 1),
                   num_examples)
  padded = np.zeros((-(-num_examples // chunk_size) * chunk_size, dim), np.float32)
  padded[:num_examples] = points
  padded = jnp.asarray(padded)
  valid = jnp.arange(padded.shape[0]) < num_examples

  if isinstance(init, str):
    if init not in KMEANS_INITS:
      raise ValueError(
          f"kmeans: unknown init {init!r}; use one of {KMEANS_INITS} or a"
          f" [{num_clusters}, {dim}] array")
    if init == "random":
      chosen = np.random.default_rng(seed).choice(
          num_examples, num_clusters, replace=False)
      centroids = jnp.asarray(points[np.sort(chosen)])
    else:
      batch = -(-(num_clusters - 1) // 128) or 1
      trials = 2 + int(np.log(num_clusters))
      trials = max(1, min(trials, num_examples // batch))
      centroids = _greedy_kmeans_plus_plus(
          padded, jnp.int32(num_examples), jax.random.PRNGKey(seed),
          num_clusters=num_clusters, batch=batch, trials=trials,
          chunk_size=chunk_size)
  else:
    init = np.asarray(init)
    if init.shape != (num_clusters, dim):
      raise ValueError(
          f"kmeans: init centroids must be [num_clusters, dim] ="
          f" [{num_clusters}, {dim}]; got shape {init.shape}")
    if not np.all(np.isfinite(init)):
      raise ValueError("kmeans: init centroids contain NaN or inf")
    centroids = jnp.asarray(init, jnp.float32)

  nearest, squared = _nearest_centroid(padded, centroids, chunk_size=chunk_size)
  for _ in range(max_iter):
    centroids = _lloyd_update(padded, valid, nearest, squared, centroids)
    previous = nearest
    nearest, squared = _nearest_centroid(
        padded, centroids, chunk_size=chunk_size)
    if bool(jnp.all((nearest == previous) | ~valid)):
      break
  return np.asarray(nearest[:num_examples]), np.asarray(centroids)


def nmi_kmeans(
    embeddings: np.ndarray,
    labels: np.ndarray,
    *,
    num_clusters: int | None = None,
    seed: int = 0,
    n_init: int = 10,
    method: str = "auto",
    max_iter: int | None = None,
) -> float:
  r"""NMI between the labels and a k-means clustering of the embeddings.

  .. math::
    \text{NMI}(Y, C) = \frac{I(Y; C)}{\tfrac{1}{2}\,(H(Y) + H(C))}

  (scikit-learn's ``normalized_mutual_info_score``, arithmetic mean), with
  the clustering chosen by ``method``:

  * ``"sklearn"``: scikit-learn ``KMeans`` with greedy k-means++ seeding and
    ``n_init`` restarts (default 10, keeping the lowest inertia), far less
    dependent on one unlucky seeding than a single run, at ten times the
    cost. Its seeding is sequential over the K centres: hopeless with
    thousands of clusters (95 s for 1,122 clusters of 6,000 points; hours,
    by extrapolation, for Stanford Online Products' 11,316 clusters of
    60,502).
  * ``"jax"``: :func:`kmeans`, one run of Lloyd's algorithm in JAX with
    batched greedy k-means++ seeding (``n_init`` is ignored). It is an
    approximation of the former: batched seeding and a single run. On an
    SOP-like synthetic set of 6,000 points in 1,122 classes it scored 0.928
    against scikit-learn's 0.927 (1.8 s against 95 s); at full SOP scale it
    takes about 75 s on a 2-core CPU (``docs/benchmarks.md``).
  * ``"auto"`` (default): ``"sklearn"`` up to 200 clusters (digits,
    CUB-200, Cars196: the scores of earlier versions), ``"jax"`` above.

  Args:
    embeddings: ``[num_examples, dim]`` finite float.
    labels: ``[num_examples]`` class labels.
    num_clusters: number of k-means clusters; by default the number of
      distinct labels.
    seed: ``random_state`` of scikit-learn, seed of :func:`kmeans`.
    n_init: number of scikit-learn restarts.
    method: ``"auto"``, ``"sklearn"`` or ``"jax"``.
    max_iter: most Lloyd iterations per run; by default 300 for
      ``"sklearn"`` (its default) and 20 for ``"jax"`` (both stop earlier on
      convergence).

  Returns:
    NMI in ``[0, 1]``.

  Raises:
    ValueError: on mismatched shapes, non-finite embeddings, more clusters
      than examples, an unknown method or a bad ``max_iter``.

  Examples:
    >>> import numpy as np
    >>> x = np.array([[0.], [0.1], [5.], [5.1]])
    >>> nmi_kmeans(x, np.array([3, 3, 7, 7]))
    1.0
    >>> nmi_kmeans(x, np.array([3, 3, 7, 7]), method="jax")
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
  if method not in NMI_METHODS:
    raise ValueError(
        f"nmi_kmeans: unknown method {method!r}; use one of {NMI_METHODS}")
  if max_iter is not None:
    max_iter = _check_count("nmi_kmeans", "max_iter", max_iter, 1)
  if method == "auto":
    method = "sklearn" if num_clusters <= _SKLEARN_MAX_CLUSTERS else "jax"
  if method == "sklearn":
    clusters = KMeans(
        n_clusters=num_clusters, n_init=n_init, random_state=seed,
        max_iter=300 if max_iter is None else max_iter,
    ).fit_predict(embeddings)
  else:
    clusters, _ = kmeans(
        embeddings, num_clusters, seed=seed,
        max_iter=20 if max_iter is None else max_iter)
  return float(normalized_mutual_info_score(labels, clusters))


# ------------------------------------------------------- neighbour search


def retrieval_metrics(
    embeddings: np.ndarray,
    labels: np.ndarray,
    *,
    recall_ks: Sequence[int] = (1, 2, 4, 8),
    nmi: bool = True,
    seed: int = 0,
    chunk_size: int | None = None,
    search: str = "exact",
    search_recall_queries: int = 1000,
    nmi_method: str = "auto",
    nmi_max_iter: int | None = None,
) -> dict[str, float]:
  r"""Recall@K, MAP@R, R-precision and NMI of a set of labelled embeddings.

  Each embedding is a query against all the others (itself excluded), ranked
  by Euclidean distance, for
  :math:`k = \min(\max(\max K, \max R),\, N - 1)` neighbours. Queries of
  singleton classes (:math:`R = 0`) are left out of the retrieval metrics
  but still act as neighbours; NMI uses every embedding. A K beyond the
  :math:`N - 1` neighbours that exist is evaluated at :math:`N - 1`.

  The search is either exact (:func:`~nngk_jax.knn.exact_knn`, chunked brute
  force: memory :math:`O(\text{chunk} \cdot N + N k)`, never
  :math:`N \times N`) or approximate (``"pynndescent"``: a PyNNDescent index
  searched for every query). The approximate search adds
  ``"search_recall"``: the fraction of the exact :math:`k` nearest
  neighbours that it found, averaged over ``search_recall_queries`` queries
  drawn at random (their exact neighbours cost that many rows of exact
  search). On a 2-core CPU at Stanford Online Products scale (60,502
  points, :math:`k = 1000`) exact search is the faster by far: 80 s against
  14 minutes, since PyNNDescent's search for 1,001 neighbours runs on one
  core (``docs/benchmarks.md``).

  Args:
    embeddings: ``[num_examples, dim]`` finite float.
    labels: ``[num_examples]`` class labels.
    recall_ks: the values of K for Recall@K (1, 2, 4, 8 for CUB and Cars;
      1, 10, 100, 1000 for Stanford Online Products).
    nmi: whether to compute NMI (k-means with one cluster per class).
    seed: seed of k-means, of PyNNDescent and of the recall sample.
    chunk_size: queries per chunk of the exact search (see ``exact_knn``).
    search: ``"exact"`` or ``"pynndescent"``.
    search_recall_queries: queries sampled to measure ``"search_recall"``
      of an approximate search; 0 skips it.
    nmi_method: k-means of NMI, ``"auto"``, ``"sklearn"`` or ``"jax"`` (see
      :func:`nmi_kmeans`; ``"auto"`` takes the JAX k-means above 200
      classes).
    nmi_max_iter: most k-means iterations (``nmi_kmeans``'s ``max_iter``);
      None for the method's default.

  Returns:
    ``{"recall@1": .., "recall@2": .., ..., "map@r": .., "r_precision": ..,
    "nmi": .., "search_recall": ..}`` as Python floats (``"nmi"`` only when
    ``nmi``, ``"search_recall"`` only for an approximate search with
    ``search_recall_queries > 0``). Retrieval metrics are NaN when every
    class is a singleton.

  Raises:
    ValueError: on mismatched shapes, fewer than 2 embeddings, non-finite
      embeddings (the count of bad rows is given), a K below 1, an unknown
      ``search`` or ``nmi_method``, or a negative ``search_recall_queries``.

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
  if search not in SEARCH_METHODS:
    raise ValueError(
        f"retrieval_metrics: unknown search {search!r}; use one of"
        f" {SEARCH_METHODS}")
  if nmi_method not in NMI_METHODS:
    raise ValueError(
        f"retrieval_metrics: unknown nmi_method {nmi_method!r}; use one of"
        f" {NMI_METHODS}")
  search_recall_queries = _check_count(
      "retrieval_metrics", "search_recall_queries", search_recall_queries, 0)
  if nmi_max_iter is not None:
    _check_count("retrieval_metrics", "nmi_max_iter", nmi_max_iter, 1)
  # Checked after the float32 cast that the search uses, so an overflow shows.
  embeddings32 = _check_embeddings("retrieval_metrics", embeddings)

  # Integer codes stand in for the labels: [N, k] of them stays small even
  # for string labels.
  _, codes, class_sizes = np.unique(
      labels, return_inverse=True, return_counts=True)
  codes = codes.reshape(-1).astype(np.int32)
  counts = (class_sizes[codes] - 1).astype(np.int64)
  k = min(max(max(recall_ks), int(counts.max())), num_examples - 1)
  result_extra = {}
  if search == "exact":
    neighbour_idx = exact_knn(  # The distances are dropped at once.
        embeddings32, embeddings32, k=k,
        query_ids=np.arange(num_examples), chunk_size=chunk_size)[0]
  else:
    neighbour_idx = neighbourlib.approximate_self_neighbours(
        embeddings32, k=k, seed=seed, chunk_size=chunk_size)
    if search_recall_queries:
      sample = np.sort(np.random.default_rng(seed).choice(
          num_examples, min(search_recall_queries, num_examples),
          replace=False))
      exact_idx, _ = exact_knn(
          embeddings32[sample], embeddings32, k=k, query_ids=sample,
          chunk_size=chunk_size)
      result_extra["search_recall"] = neighbourlib.graph_recall(
          neighbour_idx[sample], exact_idx)

  keep = counts > 0
  neighbour_labels = codes[neighbour_idx[keep]]
  del neighbour_idx
  query_labels = codes[keep]
  query_counts = counts[keep]
  # A K beyond the N - 1 neighbours that exist is evaluated at N - 1.
  evaluated_ks = sorted({min(recall_k, k) for recall_k in recall_ks})
  capped = recall_at_k(neighbour_labels, query_labels, evaluated_ks)
  result = {
      f"recall@{recall_k}": capped[f"recall@{min(recall_k, k)}"]
      for recall_k in recall_ks}
  result["map@r"] = map_at_r(neighbour_labels, query_labels, query_counts)
  result["r_precision"] = r_precision(neighbour_labels, query_labels, query_counts)
  del neighbour_labels
  if nmi:
    result["nmi"] = nmi_kmeans(
        embeddings32, labels, seed=seed, method=nmi_method,
        max_iter=nmi_max_iter)
  result.update(result_extra)
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

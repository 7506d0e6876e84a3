"""k-means clustering and the NMI of the retrieval protocol, on the host.

NMI (normalised mutual information) compares the class labels with a
k-means clustering of the embeddings into as many clusters as classes. Two
k-means implementations serve it:

* scikit-learn's ``KMeans`` (greedy k-means++, 10 restarts): the reference,
  and the scores of earlier versions;
* :func:`kmeans`: Lloyd's algorithm in JAX with batched greedy k-means++
  seeding, for thousands of clusters (Stanford Online Products' 11,316),
  where scikit-learn's sequential seeding cannot finish in useful time.

:func:`kmeans_function` looks one up by name (``"auto"``, ``"sklearn"``,
``"jax"``) as a callable ``(embeddings, num_clusters, seed) -> cluster
labels``, the ``kmeans_func`` of
:func:`nngk_jax.metrics.retrieval.retrieval_metrics`. Measured times,
memory and the accuracy of the approximation are in ``docs/benchmarks.md``.
"""

from __future__ import annotations

import functools
from typing import Protocol

import jax
import jax.numpy as jnp
import numpy as np
from sklearn.cluster import KMeans
from sklearn.metrics import normalized_mutual_info_score

from nngk_jax.checks import check_finite_rows
from nngk_jax.checks import non_negative_int
from nngk_jax.checks import positive_int
from nngk_jax.knn import _DEFAULT_MAX_ELEMENTS

__all__ = [
    "KMEANS_INITS",
    "NMI_METHODS",
    "KmeansFunction",
    "kmeans",
    "kmeans_function",
    "nmi_kmeans",
]

#: Clusterings of :func:`kmeans_function` and :func:`nmi_kmeans`.
NMI_METHODS = ("auto", "sklearn", "jax")
#: Named seedings of :func:`kmeans`.
KMEANS_INITS = ("k-means++", "random")
# kmeans_function("auto") uses scikit-learn up to this many clusters.
_SKLEARN_MAX_CLUSTERS = 200


class KmeansFunction(Protocol):
  """A clustering for NMI: ``(embeddings, num_clusters, seed) -> labels``.

  Called with ``[N, D]`` float32 embeddings, the number of clusters
  ``K`` (the number of classes, ``1 <= K <= N``) and an int seed; returns
  ``[N]`` int cluster labels. :func:`kmeans_function` gives the named ones.
  """

  def __call__(self, embeddings: np.ndarray, num_clusters: int,
               seed: int) -> np.ndarray:
    ...


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
  """``[N, D]`` finite embeddings as float32, or a ValueError.

  Checked after the float32 cast, so that an overflow shows.
  """
  embeddings = np.asarray(embeddings)
  if embeddings.ndim != 2 or 0 in embeddings.shape:
    raise ValueError(
        f"{name}: embeddings must be a non-empty [N, D] array; got shape"
        f" {embeddings.shape}")
  embeddings32 = embeddings.astype(np.float32)
  check_finite_rows("embeddings", embeddings32, where=f"in float32, in {name}")
  return embeddings32


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
  num_clusters = positive_int("kmeans: num_clusters", num_clusters)
  if num_clusters > num_examples:
    raise ValueError(
        f"kmeans: num_clusters={num_clusters} must be in [1, N={num_examples}]")
  max_iter = non_negative_int("kmeans: max_iter", max_iter)
  if chunk_size is None:
    chunk_size = max(1, _DEFAULT_MAX_ELEMENTS // num_clusters)
  chunk_size = min(positive_int("kmeans: chunk_size", chunk_size),
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

def _sklearn_kmeans(embeddings: np.ndarray, num_clusters: int, seed: int, *,
                    n_init: int, max_iter: int) -> np.ndarray:
  """scikit-learn ``KMeans`` (greedy k-means++, ``n_init`` restarts)."""
  return KMeans(
      n_clusters=num_clusters, n_init=n_init, random_state=seed,
      max_iter=max_iter,
  ).fit_predict(embeddings)


def _jax_kmeans(embeddings: np.ndarray, num_clusters: int, seed: int, *,
                max_iter: int) -> np.ndarray:
  """:func:`kmeans`, one run, its assignments."""
  return kmeans(embeddings, num_clusters, seed=seed, max_iter=max_iter)[0]


def _auto_kmeans(embeddings: np.ndarray, num_clusters: int, seed: int, *,
                 n_init: int, max_iter: int | None) -> np.ndarray:
  """scikit-learn up to ``_SKLEARN_MAX_CLUSTERS`` clusters, JAX above."""
  if num_clusters <= _SKLEARN_MAX_CLUSTERS:
    return _sklearn_kmeans(embeddings, num_clusters, seed, n_init=n_init,
                           max_iter=300 if max_iter is None else max_iter)
  return _jax_kmeans(embeddings, num_clusters, seed,
                     max_iter=20 if max_iter is None else max_iter)


def kmeans_function(
    name: str = "auto",
    *,
    n_init: int = 10,
    max_iter: int | None = None,
) -> KmeansFunction:
  """The clustering of NMI named ``name``, for configs and command lines.

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
    name: ``"auto"``, ``"sklearn"`` or ``"jax"`` (``NMI_METHODS``).
    n_init: number of scikit-learn restarts.
    max_iter: most Lloyd iterations per run; by default 300 for
      ``"sklearn"`` (its default) and 20 for ``"jax"`` (both stop earlier on
      convergence).

  Returns:
    ``kmeans_func(embeddings [N, D], num_clusters, seed) -> [N]`` int
    cluster labels; the seed is scikit-learn's ``random_state``, or the
    seed of :func:`kmeans`.

  Raises:
    ValueError: on an unknown name, or an ``n_init`` or ``max_iter`` that
      is not a positive integer.

  Examples:
    >>> import numpy as np
    >>> cluster = kmeans_function("jax", max_iter=5)
    >>> labels = cluster(np.array([[0.], [0.1], [5.], [5.1]], np.float32), 2, 0)
    >>> bool(labels[0] == labels[1] != labels[2] == labels[3])
    True
  """
  if name not in NMI_METHODS:
    raise ValueError(
        f"kmeans_function: unknown method {name!r}; use one of {NMI_METHODS}")
  n_init = positive_int("kmeans_function: n_init", n_init)
  if max_iter is not None:
    max_iter = positive_int("kmeans_function: max_iter", max_iter)
  if name == "sklearn":
    return functools.partial(_sklearn_kmeans, n_init=n_init,
                             max_iter=300 if max_iter is None else max_iter)
  if name == "jax":
    return functools.partial(_jax_kmeans,
                             max_iter=20 if max_iter is None else max_iter)
  return functools.partial(_auto_kmeans, n_init=n_init, max_iter=max_iter)


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
  the clustering ``kmeans_function(method, n_init=n_init,
  max_iter=max_iter)`` (see :func:`kmeans_function` for the methods).

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
    max_iter = positive_int("nmi_kmeans: max_iter", max_iter)
  cluster = kmeans_function(method, n_init=n_init, max_iter=max_iter)
  clusters = cluster(embeddings, num_clusters, seed)
  return float(normalized_mutual_info_score(labels, clusters))

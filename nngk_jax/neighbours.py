"""The neighbour graph over the centre bank, for the NNGK loss.

Every training embedding is a kernel centre. Each training example scores its
own embedding against the ``k`` centres nearest to *its centre* (its own centre
excluded), so after every centre refresh the trainer builds a k-nearest
neighbour graph over the ``N`` centres and hands the jitted train step the
rows of that graph for each batch (``NeighbourGraph.rows``).

Host-side only: NumPy in, NumPy out, never called inside ``jax.jit``.

Backends are looked up by name in ``GRAPH_BACKENDS``; a new backend is a new
entry. Two ship:

* ``"pynndescent"``: approximate, by nearest neighbour descent (PyNNDescent).
  Each new process pays a one-off numba compilation of NN-descent (about 45 s
  on a 2-core machine; the core NN-descent kernel is not disk-cacheable, see
  ``warm_up``). After that a graph over 10k centres takes about a second.
* ``"auto"`` (not a backend but a choice, :func:`resolve_backend`):
  ``"exact"`` on an accelerator or for banks up to
  ``AUTO_EXACT_MAX_CENTRES`` centres, ``"pynndescent"`` above.
* ``"exact"``: chunked brute force (``nngk_jax.knn.exact_knn``), the
  reference; quadratic in ``N`` but fast for banks of a few tens of thousands
  and free of compile cost beyond XLA's.

The optional *same-class* columns address missing positives (methods.md §1):
when none of a centre's ``k`` neighbours has its label, ``p(y|x)`` is zero and
the loss has no useful gradient. ``num_same_class > 0`` appends each centre's
nearest same-label centres, found exactly within each class.
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from nngk_jax.checks import check_finite_rows
from nngk_jax.checks import non_negative_int
from nngk_jax.checks import positive_int
from nngk_jax.knn import exact_knn

__all__ = [
    "GRAPH_BACKENDS",
    "GraphBackend",
    "NeighbourGraph",
    "approximate_self_neighbours",
    "build_neighbour_graph",
    "graph_recall",
    "query_neighbours",
    "resolve_backend",
    "warm_up",
]

# graph_backend="auto" builds the exact graph on a CPU up to this many
# centres. Measured on the 2-core CPU (experiments/bench_graph.py, graph
# rebuild seconds, exact / PyNNDescent): D 128, K 128: 1.0 / 2.9 at 10k,
# 3.3 / 6.5 at 20k, 17.7 / 14.8 at 40k; D 64, K 30: 1.5 / 1.8 at 10k, 93 /
# 13 at 100k; D 512, K 200: 57 / 72 at 60k. Exact also skips PyNNDescent's
# 33-45 s numba compilation in every new process.
AUTO_EXACT_MAX_CENTRES = 30_000


# --------------------------------------------------------------------------
# Backends.
# --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class GraphBackend:
  """A named nearest-neighbour search method.

  Attributes:
    name: the key in ``GRAPH_BACKENDS``.
    knn_graph: ``(centres [N, D] float32, k, seed) -> [N, k] int32``; row ``i``
      holds the ``k`` nearest centres to centre ``i``, nearest first, never
      ``i`` itself, no duplicates.
    query: ``(data [N, D] float32, queries [Q, D] float32, k, seed) ->
      [Q, k] int32``; the ``k`` nearest rows of ``data`` to each query,
      nearest first (no self exclusion).

  Examples:
    >>> sorted(GRAPH_BACKENDS)
    ['exact', 'pynndescent']
    >>> GRAPH_BACKENDS["exact"].name
    'exact'
  """

  name: str
  knn_graph: Callable[[np.ndarray, int, int], np.ndarray]
  query: Callable[[np.ndarray, np.ndarray, int, int], np.ndarray]


def _exact_knn_graph(centres: np.ndarray, k: int, seed: int) -> np.ndarray:
  del seed  # Deterministic.
  num_centres = centres.shape[0]
  indices, _ = exact_knn(centres, centres, k=k, query_ids=np.arange(num_centres))
  return indices


def _exact_query(data: np.ndarray, queries: np.ndarray, k: int,
                 seed: int) -> np.ndarray:
  del seed  # Deterministic.
  indices, _ = exact_knn(queries, data, k=k)
  return indices


def _first_valid_neighbours(
    candidates: np.ndarray, self_ids: np.ndarray | None, k: int
) -> tuple[np.ndarray, np.ndarray]:
  """The first ``k`` usable entries of each candidate row, order kept.

  An entry is unusable when it is negative (a slot PyNNDescent left unfilled),
  equals the row's own id (self), or repeats an earlier entry of the row.

  Args:
    candidates: ``[num_rows, width]`` int, ``width >= k``, nearest first.
    self_ids: ``[num_rows]`` int, the id each row must not contain, or None.
    k: entries wanted per row.

  Returns:
    ``(indices, short)``: ``[num_rows, k]`` int32, and ``[num_rows]`` bool,
    True where a row had fewer than ``k`` usable entries (its ``indices`` row
    is then incomplete and must be replaced by the caller).
  """
  candidates = np.asarray(candidates, np.int64)
  usable = candidates >= 0
  if self_ids is not None:
    usable &= candidates != np.asarray(self_ids)[:, None]
  # Repeats: after a stable sort of each row, an entry equal to its left
  # neighbour is a later occurrence of the same id.
  order = np.argsort(candidates, axis=1, kind="stable")
  in_order = np.take_along_axis(candidates, order, axis=1)
  repeat_in_order = np.zeros(candidates.shape, bool)
  repeat_in_order[:, 1:] = in_order[:, 1:] == in_order[:, :-1]
  repeat = np.empty_like(repeat_in_order)
  np.put_along_axis(repeat, order, repeat_in_order, axis=1)
  usable &= ~repeat
  # Move usable entries to the front, keeping their order.
  front = np.argsort(~usable, axis=1, kind="stable")[:, :k]
  indices = np.take_along_axis(candidates, front, axis=1).astype(np.int32)
  short = usable.sum(axis=1) < k
  return indices, short


def _pynndescent_index(data: np.ndarray, n_neighbors: int, seed: int) -> Any:
  """A PyNNDescent index over ``data`` with this project's settings.

  Settings: ``metric="euclidean"``; ``n_jobs=None`` (numba's thread count,
  all cores unless ``NUMBA_NUM_THREADS`` says otherwise); ``low_memory=True``
  (PyNNDescent's default, and the cheaper path for graphs of 1e5-1e6
  centres); ``compressed=False`` (the k-NN graph must stay readable);
  other parameters (trees, iterations, ``delta``) at PyNNDescent's
  size-dependent defaults. Its warning about unfilled slots is silenced: the
  callers repair those rows exactly.
  """
  import pynndescent  # Imported lazily: the import alone costs seconds.

  with warnings.catch_warnings():
    warnings.filterwarnings(
        "ignore", message="Failed to correctly find n_neighbors")
    return pynndescent.NNDescent(
        data,
        n_neighbors=n_neighbors,
        metric="euclidean",
        random_state=seed,
        n_jobs=None,
        low_memory=True,
        compressed=False,
        verbose=False,
    )


def _pynndescent_knn_graph(centres: np.ndarray, k: int, seed: int) -> np.ndarray:
  """Approximate k-NN graph by NN-descent, self excluded.

  PyNNDescent is asked for ``k + 1`` neighbours, since its
  ``neighbor_graph`` lists each point as its own first neighbour. Each row
  then keeps its first ``k`` entries that are not self, not ``-1`` (an
  unfilled slot) and not a repeat. A row left with fewer than ``k`` such
  entries (self absent and a ``-1`` or repeat present, which approximate
  search can produce, mostly on tiny or degenerate banks) is replaced by its
  exact neighbours, so every row is complete and valid.
  """
  num_centres = centres.shape[0]
  index = _pynndescent_index(centres, k + 1, seed)
  raw = index.neighbor_graph[0]
  self_ids = np.arange(num_centres)
  indices, short = _first_valid_neighbours(raw, self_ids, k)
  if short.any():
    rows = np.flatnonzero(short)
    indices[rows], _ = exact_knn(centres[rows], centres, k=k, query_ids=rows)
  return indices


def _pynndescent_query(data: np.ndarray, queries: np.ndarray, k: int,
                       seed: int) -> np.ndarray:
  """Approximate neighbours of new points among ``data``.

  The index graph uses ``max(k, 15)`` neighbours (capped at ``N - 1``);
  ``epsilon=0.1`` (PyNNDescent's default search breadth). Rows with an
  unfilled slot or a repeat are replaced by exact search. Banks of fewer than
  16 points are searched exactly: NN-descent has nothing to gain there.
  """
  num_data = data.shape[0]
  if num_data < 16:
    return _exact_query(data, queries, k, seed)
  index = _pynndescent_index(data, min(max(k, 15), num_data - 1), seed)
  index.prepare()
  raw, _ = index.query(queries, k=k)
  indices, short = _first_valid_neighbours(raw, None, k)
  if short.any():
    rows = np.flatnonzero(short)
    indices[rows], _ = exact_knn(queries[rows], data, k=k)
  return indices


GRAPH_BACKENDS: dict[str, GraphBackend] = {
    "pynndescent": GraphBackend(
        "pynndescent", _pynndescent_knn_graph, _pynndescent_query),
    "exact": GraphBackend("exact", _exact_knn_graph, _exact_query),
}


# --------------------------------------------------------------------------
# The graph.
# --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class NeighbourGraph:
  """Neighbour lists of every centre, fixed width, with a validity mask.

  Row ``i`` lists the neighbours of centre ``i`` (never ``i`` itself): the
  ``k`` nearest centres, nearest first, then ``num_same_class`` columns of
  nearest same-label centres. ``mask`` is False for entries the loss must
  drop (padding, or a same-label centre already among the ``k``).

  Attributes:
    indices: ``[num_centres, width]`` int32, every entry a valid centre index.
    mask: ``[num_centres, width]`` bool.
    num_same_class: how many of the last columns are same-class columns.

  Examples:
    >>> import numpy as np
    >>> graph = NeighbourGraph(np.array([[1], [0]], np.int32), np.ones((2, 1), bool))
    >>> graph.num_centres, graph.width
    (2, 1)
    >>> idx, mask = graph.rows(np.array([1, 1]))
    >>> idx.tolist(), mask.tolist()
    ([[0], [0]], [[True], [True]])
  """

  indices: np.ndarray
  mask: np.ndarray
  num_same_class: int = 0

  def __post_init__(self):
    if self.indices.ndim != 2 or self.mask.shape != self.indices.shape:
      raise ValueError(
          "NeighbourGraph: indices and mask must be [num_centres, width] of"
          f" the same shape, got {self.indices.shape} and {self.mask.shape}")

  @property
  def num_centres(self) -> int:
    """Number of centres ``N`` (rows)."""
    return self.indices.shape[0]

  @property
  def width(self) -> int:
    """Neighbours per row, ``k + num_same_class``."""
    return self.indices.shape[1]

  def rows(self, example_idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The neighbour lists of some examples (e.g. a batch).

    Args:
      example_idx: ``[batch]`` int, example (= centre) indices.

    Returns:
      ``(indices, mask)``, ``[batch, width]`` int32 and bool.
    """
    example_idx = np.asarray(example_idx)
    return self.indices[example_idx], self.mask[example_idx]


def _check_points(name: str, points: Any) -> np.ndarray:
  """``points`` as a writable C-contiguous float32 ``[N, D]`` array, or a
  ValueError.

  Always writable: numba compiles a separate specialisation of PyNNDescent's
  NN-descent for read-only arrays (another ~17 s on a 2-core machine), and a
  JAX array seen through ``np.asarray`` is read-only, so without the copy
  the first graph of training would compile again what :func:`warm_up`
  compiled.
  """
  points = np.asarray(points)
  if points.ndim != 2 or points.shape[0] == 0 or points.shape[1] == 0:
    raise ValueError(
        f"{name} must be a non-empty 2-D [N, D] array, got shape {points.shape}")
  if not np.issubdtype(points.dtype, np.floating):
    raise ValueError(f"{name} must have a float dtype, got {points.dtype}")
  check_finite_rows(name, points)
  points = np.ascontiguousarray(points, np.float32)
  return points if points.flags.writeable else points.copy()


def resolve_backend(backend: str, num_centres: int) -> str:
  """The backend ``"auto"`` stands for (any other name is returned as is).

  Examples:
    >>> resolve_backend("auto", 5_000)
    'exact'
    >>> resolve_backend("auto", 100_000)  # on a CPU
    'pynndescent'
    >>> resolve_backend("pynndescent", 10)
    'pynndescent'
  """
  if backend != "auto":
    return backend
  if jax.default_backend() != "cpu":  # matmuls: exact is seconds at any N here
    return "exact"
  return "exact" if num_centres <= AUTO_EXACT_MAX_CENTRES else "pynndescent"


def _check_backend(backend: str) -> GraphBackend:
  if backend not in GRAPH_BACKENDS:
    raise ValueError(
        f"unknown graph backend {backend!r}; known backends:"
        f" {', '.join(repr(name) for name in sorted(GRAPH_BACKENDS))}")
  return GRAPH_BACKENDS[backend]


def _same_class_neighbours(
    centres: np.ndarray, labels: np.ndarray, num_same_class: int
) -> tuple[np.ndarray, np.ndarray]:
  """Each centre's nearest same-label centres, exactly, self excluded.

  Returns:
    ``(indices, found)``: ``[N, num_same_class]`` int32 (-1 where the class
    has too few other members) and bool (True where an entry was found).
  """
  num_centres = centres.shape[0]
  indices = np.full((num_centres, num_same_class), -1, np.int32)
  _, inverse = np.unique(labels, return_inverse=True)
  order = np.argsort(inverse, kind="stable")
  boundaries = np.flatnonzero(np.diff(inverse[order])) + 1
  for members in np.split(order, boundaries):
    available = min(num_same_class, members.size - 1)
    if available < 1:
      continue
    local, _ = exact_knn(centres[members], centres[members], k=available,
                         query_ids=np.arange(members.size))
    indices[members, :available] = members[local]
  return indices, indices >= 0


def build_neighbour_graph(
    centres: np.ndarray,
    *,
    k: int,
    backend: str = "pynndescent",
    centre_labels: np.ndarray | None = None,
    num_same_class: int = 0,
    seed: int = 0,
) -> NeighbourGraph:
  r"""The k-nearest-neighbour graph over the centres, self excluded.

  Row ``i`` holds the ``k`` centres nearest to centre ``i`` in Euclidean
  distance (approximately, for an approximate backend), nearest first:

  .. math::
    N_K(i) = \operatorname{arg\,top}k_{j \neq i}\, -\|c_i - c_j\|^2

  With ``num_same_class = m > 0`` the row continues with the ``m`` exact
  nearest centres of label ``y_i`` (self excluded), so every example sees some
  positives even when none is among its ``k`` ("missing positives"). A
  same-label centre already among the ``k`` gets ``mask`` False (it must not
  be counted twice); a class with fewer than ``m + 1`` members pads the rest
  of its rows' same-class columns with the row's first neighbour and
  ``mask`` False. All other entries have ``mask`` True.

  Args:
    centres: ``[N, D]`` float, all finite.
    k: neighbours per centre, ``1 <= k < N``.
    backend: a key of ``GRAPH_BACKENDS`` (``"pynndescent"`` or ``"exact"``).
    centre_labels: ``[N]`` int labels; needed when ``num_same_class > 0``.
    num_same_class: same-label columns to append, ``>= 0``.
    seed: seed of the backend's randomness (PyNNDescent's ``random_state``;
      with several numba threads its result can still differ slightly from
      run to run).

  Returns:
    A ``NeighbourGraph`` with ``indices`` and ``mask`` of shape
    ``[N, k + num_same_class]``.

  Raises:
    ValueError: on non-2-D, non-float or non-finite centres, on ``k`` outside
      ``[1, N)``, an unknown backend, labels that are not ``[N]``, or
      ``num_same_class > 0`` without labels.

  Examples:
    >>> import numpy as np
    >>> centres = np.array([[0.], [1.], [3.], [10.]], np.float32)
    >>> graph = build_neighbour_graph(
    ...     centres, k=1, backend="exact", centre_labels=np.array([0, 1, 1, 2]),
    ...     num_same_class=1)
    >>> graph.indices.tolist()
    [[1, 1], [0, 2], [1, 1], [2, 2]]
    >>> graph.mask.tolist()
    [[True, False], [True, True], [True, False], [True, False]]

  References:
    Dong, Charikar and Li, `Efficient k-nearest neighbor graph construction
    for generic similarity measures <https://doi.org/10.1145/1963405.1963487>`_,
    WWW 2011 (NN-descent).

    Meyer, Harwood and Drummond, `Deep Metric Learning and Image
    Classification with Nearest Neighbour Gaussian Kernels
    <https://arxiv.org/abs/1705.09780>`_, ICIP 2018.
  """
  centres = _check_points("centres", centres)
  num_centres = centres.shape[0]
  k = positive_int("k", k)
  if k >= num_centres:
    raise ValueError(
        f"k={k} neighbours need a bank of more than {k} centres,"
        f" got N={num_centres}")
  graph_backend = _check_backend(resolve_backend(backend, num_centres))
  num_same_class = non_negative_int("num_same_class", num_same_class)
  if centre_labels is not None:
    centre_labels = np.asarray(centre_labels)
    if centre_labels.shape != (num_centres,):
      raise ValueError(
          f"centre_labels must have shape [N]=({num_centres},) to match"
          f" centres {centres.shape}, got shape {centre_labels.shape}")
  if num_same_class > 0 and centre_labels is None:
    raise ValueError(
        f"num_same_class={num_same_class} needs centre_labels, got None")

  nearest = np.asarray(graph_backend.knn_graph(centres, k, seed), np.int32)
  if nearest.shape != (num_centres, k):
    raise ValueError(
        f"backend {backend!r} returned shape {nearest.shape},"
        f" expected {(num_centres, k)}")
  if num_same_class == 0:
    return NeighbourGraph(nearest, np.ones(nearest.shape, bool), 0)

  same, found = _same_class_neighbours(centres, centre_labels, num_same_class)
  repeated = (same[:, :, None] == nearest[:, None, :]).any(axis=-1)
  same = np.where(found, same, nearest[:, :1])  # Pad with a valid index.
  indices = np.concatenate([nearest, same], axis=1)
  mask = np.concatenate(
      [np.ones(nearest.shape, bool), found & ~repeated], axis=1)
  return NeighbourGraph(indices, mask, num_same_class)


def query_neighbours(
    data: np.ndarray,
    queries: np.ndarray,
    *,
    k: int,
    backend: str = "exact",
    seed: int = 0,
) -> np.ndarray:
  """The ``k`` nearest rows of ``data`` to each query (test-time lookup).

  No self exclusion: a query equal to a data row finds that row first.

  Args:
    data: ``[N, D]`` float, all finite (e.g. the training centres).
    queries: ``[Q, D]`` float, all finite (e.g. test embeddings).
    k: neighbours per query, ``1 <= k <= N``.
    backend: a key of ``GRAPH_BACKENDS``.
    seed: seed of the backend's randomness.

  Returns:
    ``[Q, k]`` int32 indices into ``data``, nearest first.

  Raises:
    ValueError: on bad arrays (as ``build_neighbour_graph``), mismatched
      ``D``, ``k`` outside ``[1, N]`` or an unknown backend.

  Examples:
    >>> import numpy as np
    >>> data = np.array([[0.], [1.], [3.]], np.float32)
    >>> query_neighbours(data, np.array([[2.9], [0.2]], np.float32), k=2).tolist()
    [[2, 1], [0, 1]]
  """
  data = _check_points("data", data)
  queries = _check_points("queries", queries)
  if queries.shape[1] != data.shape[1]:
    raise ValueError(
        f"queries are {queries.shape[1]}-D but data are {data.shape[1]}-D"
        f" (shapes {queries.shape} and {data.shape})")
  num_data = data.shape[0]
  k = positive_int("k", k)
  if k > num_data:
    raise ValueError(
        f"k={k} neighbours need a bank of at least {k} data points,"
        f" got N={num_data}")
  graph_backend = _check_backend(resolve_backend(backend, num_data))
  return np.asarray(graph_backend.query(data, queries, k, seed), np.int32)


def approximate_self_neighbours(
    points: np.ndarray, *, k: int, index_neighbours: int = 30, seed: int = 0,
    chunk_size: int | None = None) -> np.ndarray:
  """Approximate ``[N, k]`` neighbours of every point among the others.

  For evaluation at large ``k`` (Recall@1000 on Stanford Online Products):
  unlike :func:`build_neighbour_graph`, whose NN-descent graph has ``k``
  neighbours per node, a graph of ``index_neighbours`` is built and then
  searched for ``k + 1`` neighbours of every point (``epsilon=0.1``,
  PyNNDescent's default). Each row keeps its first ``k`` entries that are
  not the point itself, not unfilled and not repeated; a row left short is
  replaced by exact search. Sets of fewer than 16 points are searched
  exactly.

  Args:
    points: ``[N, D]`` float32, finite.
    k: neighbours per point, ``1 <= k <= N - 1``.
    index_neighbours: degree of the searched graph (PyNNDescent's default 30).
    seed: NN-descent's seed.
    chunk_size: queries per chunk of any exact search.

  Returns:
    ``[N, k]`` int32, nearest first as PyNNDescent ranks them.
  """
  points = _check_points("points", points)
  num_points = points.shape[0]
  k = positive_int("k", k)
  if k >= num_points:
    raise ValueError(f"k={k} neighbours need more than {k} points, got "
                     f"{num_points}")
  if num_points < 16:
    return exact_knn(points, points, k=k, query_ids=np.arange(num_points),
                     chunk_size=chunk_size)[0]
  index = _pynndescent_index(points, min(index_neighbours, num_points - 1),
                             seed)
  index.prepare()
  raw, _ = index.query(points, k=k + 1)
  indices = np.empty((num_points, k), np.int32)
  short = np.empty(num_points, bool)
  for start in range(0, num_points, 4096):  # Bounds the [rows, k] temporaries.
    rows = slice(start, start + 4096)
    indices[rows], short[rows] = _first_valid_neighbours(
        raw[rows], np.arange(num_points)[rows], k)
  del raw
  if short.any():
    rows = np.flatnonzero(short)
    indices[rows], _ = exact_knn(points[rows], points, k=k, query_ids=rows,
                                 chunk_size=chunk_size)
  return indices


def graph_recall(approx_indices: np.ndarray, exact_indices: np.ndarray) -> float:
  r"""Recall@k of an approximate neighbour graph against the exact one.

  .. math::
    \text{recall} = \frac{1}{Q} \sum_q \frac{|A_q \cap E_q|}{k}

  where ``A_q`` and ``E_q`` are the sets in row ``q`` (order ignored; repeats
  in ``approx_indices`` count once; ``exact_indices`` rows hold distinct,
  non-negative indices).

  Args:
    approx_indices: ``[Q, k_a]`` int, rows of the approximate graph.
    exact_indices: ``[Q, k]`` int, the same rows of the exact graph.

  Returns:
    The mean recall, a float in ``[0, 1]``.

  Examples:
    >>> import numpy as np
    >>> graph_recall(np.array([[1, 2], [3, 4]]), np.array([[2, 1], [3, 5]]))
    0.75
  """
  approx_indices = np.asarray(approx_indices)
  exact_indices = np.asarray(exact_indices)
  if (approx_indices.ndim != 2 or exact_indices.ndim != 2
      or approx_indices.shape[0] != exact_indices.shape[0]
      or exact_indices.shape[1] == 0):
    raise ValueError(
        "graph_recall: need [Q, k] arrays with the same Q, got"
        f" {approx_indices.shape} and {exact_indices.shape}")
  # By sorting, in O(Q (k + k_a)) memory (k = 1000 at SOP scale): repeats
  # within an approximate row become distinct negative sentinels, then an
  # index in both rows shows as two equal neighbours in the sorted union.
  approx = np.sort(approx_indices.astype(np.int64), axis=1)
  repeat = np.zeros(approx.shape, bool)
  repeat[:, 1:] = approx[:, 1:] == approx[:, :-1]
  sentinels = -1 - np.arange(approx.shape[1], dtype=np.int64)
  approx = np.where(repeat, sentinels, approx)
  exact = exact_indices.astype(np.int64)
  both = np.sort(np.concatenate([approx, exact], axis=1), axis=1)
  found = int(np.sum((both[:, 1:] == both[:, :-1]) & (both[:, 1:] >= 0)))
  return found / exact_indices.size


def warm_up(backend: str = "pynndescent") -> float:
  """Builds a tiny graph so that the backend's compilation is paid now.

  For ``"pynndescent"`` this is numba compiling NN-descent: about 45 s in
  each new process on a 2-core machine, plus, in a process whose numba cache
  is cold, about 25 s for PyNNDescent's import. Only part of it is cached on
  disk (numba's ``cache=True`` kernels, kept in ``NUMBA_CACHE_DIR``, which the
  Makefile sets to ``.numba_cache``): the import-time kernels and the query
  search (``prepare``, about 90 s cold) are cached, but ``nn_descent`` takes
  its distance function as an argument, which numba cannot cache, so its
  roughly 45 s recur in every process. Call it once at start-up, so that the
  first graph rebuild of training (and any timing of it) does not pay it.

  Args:
    backend: a key of ``GRAPH_BACKENDS``.

  Returns:
    Seconds taken.

  Examples:
    >>> warm_up("exact") >= 0.0
    True
  """
  graph_backend = _check_backend(backend)
  points = np.random.default_rng(0).normal(size=(300, 8)).astype(np.float32)
  start = time.perf_counter()
  graph_backend.knn_graph(points, 5, 0)
  return time.perf_counter() - start

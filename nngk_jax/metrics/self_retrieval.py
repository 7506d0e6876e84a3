r"""Exact retrieval of a labelled set against itself, in one symmetric pass.

:func:`~nngk_jax.metrics.retrieval.retrieval_metrics` ranks every embedding
against all the others. Of that ranking the metrics need two things:

* MAP@R and R-precision: the labels of each query's first :math:`R`
  neighbours, :math:`R` the number of other members of its class (at most
  11 on Stanford Online Products, 59 on CUB-200);
* Recall@K: only the rank of the query's *nearest positive* (its nearest
  same-class item). Recall@K is the fraction of queries whose nearest
  positive has fewer than :math:`K` items ahead of it.

So the 1,000 neighbours per query that SOP's Recall@1000 would ask of a
neighbour list are never listed. The number of items ahead of the nearest
positive :math:`p` of query :math:`i` is a count over the other classes,

.. math::
  \text{ahead}_i = \#\{\, l : y_l \ne y_i,\ (d_{il}, l) < (d_{ip}, p) \,\}

(pairs compared in order: a tie in distance goes to the lower index, as
``jax.lax.top_k`` breaks it), where :math:`d_{ip}` and :math:`p` come from a
first, cheap pass over each class's own members. Items of the query's own
class are never ahead of its nearest positive, so they need no test.

The second saving is symmetry: :math:`d_{il} = d_{li}`, so the ``[N, N]``
squared distances are computed in blocks :math:`(I, J)` with :math:`I \le J`
only, each serving the queries of block :math:`I` (its rows) and those of
block :math:`J` (its columns): half the matmuls of a row-by-row search. The
pass, which also counts, is :func:`nngk_jax.knn.exact_self_knn`.

Memory: a few ``[block, block]`` float32 arrays (64 MiB each at the CPU's
block of 4,096) and ``[N, k]`` lists, never ``[N, N]``. Time at SOP scale
(60,502 x 512) on the 2-core CPU: ``docs/benchmarks.md``, "Evaluation at
Stanford Online Products scale".

The distances of the two passes come from float32 matmuls of different
shapes, so the nearest positive's distance of the first pass and the other
classes' distances of the second can differ in the last bits: an item of
another class at the same distance as the nearest positive, to within
float32 rounding, may be counted on either side of it. Exact ties (as in
duplicated embeddings, or integer-valued ones) are ordered as top-k orders
them.
"""

from __future__ import annotations

import numpy as np

from nngk_jax.knn import _NO_INDEX
from nngk_jax.knn import exact_self_knn

__all__ = ["nearest_positives", "self_retrieval"]

# Largest [classes, size, size] distance array of the first pass (64 MiB).
_POSITIVE_PASS_ELEMENTS = 1 << 24


def nearest_positives(
    points: np.ndarray, codes: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
  r"""Each point's nearest other member of its own class (its positive).

  Classes are handled by size: all classes of one size at once, as a batch
  of ``[size, size]`` distance matrices (in pieces of at most 16M
  distances), so SOP's 11,316 classes of 2 to 12 images take a dozen NumPy
  matmuls. A class too large for one piece is done a block of rows at a
  time.

  Args:
    points: ``[N, D]`` float32.
    codes: ``[N]`` int class codes.

  Returns:
    ``(squared_distance, index)``: ``[N]`` float32 and int32, the squared
    distance (by the matmul expansion, clipped at 0) to the nearest other
    point of the same class and that point's index (the lowest index among
    equally near ones); ``inf`` and ``2**31 - 1`` for a point alone in its
    class.
  """
  points = np.asarray(points, np.float32)
  codes = np.asarray(codes)
  num_points = points.shape[0]
  squared_norms = np.einsum("nd,nd->n", points, points)
  best_d2 = np.full((num_points,), np.inf, np.float32)
  best_index = np.full((num_points,), _NO_INDEX, np.int32)
  order = np.argsort(codes, kind="stable")  # members by ascending index
  starts = np.flatnonzero(np.r_[True, codes[order][1:] != codes[order][:-1]])
  sizes = np.diff(np.r_[starts, num_points])
  for size in np.unique(sizes[sizes > 1]):
    members = order[starts[sizes == size][:, None] + np.arange(size)]
    rows = max(1, _POSITIVE_PASS_ELEMENTS // (size * size))
    if size * size <= _POSITIVE_PASS_ELEMENTS:
      for begin in range(0, len(members), rows):
        group = members[begin:begin + rows]  # [classes, size]
        x = points[group]
        norms = squared_norms[group]
        d2 = (norms[:, :, None] + norms[:, None, :]
              - 2.0 * np.matmul(x, x.transpose(0, 2, 1)))
        np.maximum(d2, 0.0, out=d2)
        d2[:, np.arange(size), np.arange(size)] = np.inf
        nearest = np.argmin(d2, axis=2)  # first of equals: lowest index
        best_d2[group] = np.take_along_axis(d2, nearest[..., None], 2)[..., 0]
        best_index[group] = np.take_along_axis(group, nearest, 1)
    else:  # one large class at a time, a block of rows at a time
      block = max(1, _POSITIVE_PASS_ELEMENTS // size)
      for group in members:
        x = points[group]
        for begin in range(0, size, block):
          rows_of = group[begin:begin + block]
          d2 = (squared_norms[rows_of][:, None] + squared_norms[group][None, :]
                - 2.0 * (points[rows_of] @ x.T))
          np.maximum(d2, 0.0, out=d2)
          local = np.arange(len(rows_of))
          d2[local, begin + local] = np.inf
          nearest = np.argmin(d2, axis=1)
          best_d2[rows_of] = d2[local, nearest]
          best_index[rows_of] = group[nearest]
  return best_d2, best_index


def self_retrieval(
    points: np.ndarray,
    codes: np.ndarray,
    *,
    k: int,
    block_size: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
  r"""Each point's ``k`` nearest others and the rank of its nearest positive.

  Every point is a query against all the others (itself excluded by index),
  by squared Euclidean distance, exactly; see the module docstring for the
  method.

  Args:
    points: ``[N, D]`` finite float32.
    codes: ``[N]`` int class codes.
    k: neighbours listed per point, in ``[1, N - 1]``.
    block_size: side of the square blocks of distances; None for 4,096 on
      a CPU and 16,384 on a GPU or TPU.

  Returns:
    ``(neighbours, ahead)``: ``[N, k]`` int32 indices, nearest first (ties
    to the lower index), as :func:`nngk_jax.knn.exact_knn` with
    ``query_ids=arange(N)`` lists them; and ``[N]`` int64, the number of
    other points ranked before each point's nearest positive (0: it is the
    first neighbour), or -1 for a point alone in its class.

  Raises:
    ValueError: on bad shapes, or a ``k`` or ``block_size`` outside its
      range (from :func:`nngk_jax.knn.exact_self_knn`).

  Examples:
    >>> import numpy as np
    >>> x = np.array([[0.], [1.], [3.], [4.]], np.float32)
    >>> neighbours, ahead = self_retrieval(x, np.array([0, 1, 0, 1]), k=1)
    >>> neighbours[:, 0].tolist(), ahead.tolist()
    ([1, 0, 3, 2], [1, 2, 2, 1])
  """
  points = np.asarray(points, np.float32)
  codes = np.asarray(codes).reshape(-1)
  if points.ndim != 2 or codes.shape != (points.shape[0],):
    raise ValueError(
        f"self_retrieval: points must be [N, D] and codes [N]; got shapes"
        f" {points.shape} and {codes.shape}")
  codes = np.unique(codes, return_inverse=True)[1].reshape(-1).astype(np.int32)
  positive_d2, positive_id = nearest_positives(points, codes)
  neighbours, _, ahead = exact_self_knn(
      points, k=k, block_size=block_size,
      ahead_of=(codes, positive_d2, positive_id))
  ahead[positive_id == _NO_INDEX] = -1
  return neighbours, ahead

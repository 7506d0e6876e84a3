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
running top-k lists of the two blocks are merged with each block pair's
(by distance, then index), so every list equals a top-k over the whole row.

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

import functools

import jax
import jax.numpy as jnp
import numpy as np

from nngk_jax.checks import positive_int

__all__ = ["nearest_positives", "self_retrieval"]

# Block side of the symmetric pass: [4096, 4096] float32 distances (64 MiB)
# on a CPU; [16384, 16384] (1 GiB) on an accelerator, whose launches are
# otherwise too small to keep it busy.
_CPU_BLOCK = 4096
_ACCELERATOR_BLOCK = 16384
# Largest [classes, size, size] distance array of the first pass (64 MiB).
_POSITIVE_PASS_ELEMENTS = 1 << 24
_NO_INDEX = np.iinfo(np.int32).max


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
        d2 = (squared_norms[group][:, :, None] + squared_norms[group][:, None, :]
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


# Width of the groups of the two-level top-k (_smallest).
_GROUP = 64


def _distances(x_a, x_b, squared_a, squared_b):
  """``[A, B]`` squared distances by the matmul expansion, clipped at 0.

  A padding row's squared norm is ``inf``, so its distances are ``inf``:
  never listed, never counted, with no mask to build.
  """
  d2 = squared_a[:, None] + squared_b[None, :] - 2.0 * (x_a @ x_b.T)
  return jnp.maximum(d2, 0.0)


def _ahead(d2, codes_q, codes_d, ids_d, positive_d2, positive_id, *, axis):
  """Items of other classes ahead of each query's nearest positive.

  ``d2`` holds the queries along ``1 - axis`` and the items along ``axis``
  (``axis=0``: the queries are the columns, so no transpose is built).
  """
  def query(v):  # a per-query vector, broadcast along the items' axis
    return jnp.expand_dims(v, axis)

  def item(v):
    return jnp.expand_dims(v, 1 - axis)

  before = (d2 < query(positive_d2)) | (
      (d2 == query(positive_d2)) & (item(ids_d) < query(positive_id)))
  other = query(codes_q) != item(codes_d)
  return jnp.sum(other & before, axis=axis, dtype=jnp.int32)


def _smallest(d2, k, *, axis):
  """The ``k`` smallest entries of each line of ``d2``, ties to the lower.

  A line is a row (``axis=1``) or a column (``axis=0``, read in place: no
  transpose is built). Returns ``(values, positions)``, ``[lines, k]``.

  Two levels when the lines are long: the ``k`` smallest entries lie in the
  ``k`` groups (of 64 neighbouring positions) with the smallest minima,
  comparing (value, position), so ``top_k`` runs on those ``64 k``
  positions only. On a 2-core CPU at 4,096 x 4,096 and k = 11 that is 3-4
  times faster than ``top_k`` over whole rows, and 3 times faster again
  for the columns than a transpose.
  """
  length = d2.shape[axis]
  lines = d2.shape[1 - axis]
  line = jnp.arange(lines)[:, None]
  if length % _GROUP or 2 * k * _GROUP > length:
    rows = d2 if axis == 1 else d2.T
    negative, positions = jax.lax.top_k(-rows, k)
    return -negative, positions
  if axis == 1:
    groups = d2.reshape(lines, length // _GROUP, _GROUP)
    minima = groups.min(axis=2)
  else:
    groups = d2.reshape(length // _GROUP, _GROUP, lines)
    minima = groups.min(axis=1).T
  _, chosen = jax.lax.top_k(-minima, k)
  chosen = jnp.sort(chosen, axis=1)  # ascending: ties stay with the lower
  if axis == 1:
    candidates = groups[line, chosen]  # [lines, k, group]
  else:
    candidates = groups[chosen, :, line]
  negative, position = jax.lax.top_k(
      -candidates.reshape(lines, k * _GROUP), k)
  group = jnp.take_along_axis(chosen, position // _GROUP, axis=1)
  return -negative, group * _GROUP + position % _GROUP


def _merge(lists, d2, ids_d, k, *, axis):
  """Running ``(d2 [lines, k], ids [lines, k])`` merged with a block's."""
  values, local = _smallest(d2, min(k, d2.shape[axis]), axis=axis)
  d2s = jnp.concatenate([lists[0], values], axis=1)
  ids = jnp.concatenate([lists[1], ids_d[local]], axis=1)
  d2s, ids = jax.lax.sort((d2s, ids), dimension=1, num_keys=2)
  return d2s[:, :k], ids[:, :k]


@functools.partial(jax.jit, static_argnames=("k",), donate_argnums=(0,))
def _diagonal_block(state, x, squared, ids, codes, positive_d2, positive_id,
                    *, k):
  """Block ``(I, I)``: its rows against themselves, self excluded."""
  lists, ahead = state
  d2 = _distances(x, x, squared, squared)
  d2 = jnp.where(ids[:, None] == ids[None, :], jnp.inf, d2)
  ahead = ahead + _ahead(d2, codes, codes, ids, positive_d2, positive_id,
                         axis=1)
  return _merge(lists, d2, ids, k, axis=1), ahead


@functools.partial(jax.jit, static_argnames=("k",), donate_argnums=(0, 1))
def _block_pair(state_a, state_b, x_a, x_b, squared_a, squared_b, ids_a,
                ids_b, codes_a, codes_b, positive_d2_a, positive_id_a,
                positive_d2_b, positive_id_b, *, k):
  """Block pair ``(I, J)``, ``I < J``: rows serve I, columns serve J."""
  d2 = _distances(x_a, x_b, squared_a, squared_b)
  lists_a, ahead_a = state_a
  lists_b, ahead_b = state_b
  ahead_a = ahead_a + _ahead(d2, codes_a, codes_b, ids_b, positive_d2_a,
                             positive_id_a, axis=1)
  ahead_b = ahead_b + _ahead(d2, codes_b, codes_a, ids_a, positive_d2_b,
                             positive_id_b, axis=0)
  lists_a = _merge(lists_a, d2, ids_b, k, axis=1)
  lists_b = _merge(lists_b, d2, ids_a, k, axis=0)
  return (lists_a, ahead_a), (lists_b, ahead_b)


def _default_block() -> int:
  return _CPU_BLOCK if jax.default_backend() == "cpu" else _ACCELERATOR_BLOCK


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
      range.

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
  num_points, dim = points.shape
  k = positive_int("self_retrieval: k", k)
  if k > num_points - 1:
    raise ValueError(
        f"self_retrieval: k={k} neighbours requested but each of the"
        f" {num_points} points has only {num_points - 1} others")
  block = positive_int("self_retrieval: block_size",
                       _default_block() if block_size is None else block_size)
  block = min(block, num_points)
  codes = np.unique(codes, return_inverse=True)[1].reshape(-1).astype(np.int32)
  positive_d2, positive_id = nearest_positives(points, codes)

  num_blocks = -(-num_points // block)
  padded = num_blocks * block

  def blocks(values, fill):
    out = np.full((padded,) + values.shape[1:], fill, values.dtype)
    out[:num_points] = values
    return [jnp.asarray(out[b * block:(b + 1) * block])
            for b in range(num_blocks)]

  x = blocks(points, 0.0)
  squared = blocks(np.einsum("nd,nd->n", points, points), np.inf)
  ids = blocks(np.arange(num_points, dtype=np.int32), _NO_INDEX)
  code_blocks = blocks(codes, -1)
  pos_d2 = blocks(positive_d2, np.inf)
  pos_id = blocks(positive_id, _NO_INDEX)
  state = [((jnp.full((block, k), jnp.inf, jnp.float32),
             jnp.full((block, k), _NO_INDEX, jnp.int32)),
            jnp.zeros((block,), jnp.int32)) for _ in range(num_blocks)]
  for i in range(num_blocks):
    state[i] = _diagonal_block(state[i], x[i], squared[i], ids[i],
                               code_blocks[i], pos_d2[i], pos_id[i], k=k)
    for j in range(i + 1, num_blocks):
      state[i], state[j] = _block_pair(
          state[i], state[j], x[i], x[j], squared[i], squared[j], ids[i],
          ids[j], code_blocks[i], code_blocks[j], pos_d2[i], pos_id[i],
          pos_d2[j], pos_id[j], k=k)
  neighbours = np.concatenate(
      [np.asarray(s[0][1]) for s in state])[:num_points]
  ahead = np.concatenate([np.asarray(s[1]) for s in state])[:num_points]
  ahead = np.where(positive_id == _NO_INDEX, -1, ahead).astype(np.int64)
  return neighbours, ahead

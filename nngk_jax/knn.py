"""Exact k-nearest-neighbour search by chunked brute force in JAX.

This is the reference every approximate search in the project is measured
against, and the exact search of the neighbour graphs. (The retrieval
metrics rank a set against itself with a symmetric pass of their own,
:mod:`nngk_jax.metrics.self_retrieval`.) Memory stays bounded: the
queries are processed ``chunk_size`` at a time, so the largest array built is
``[chunk_size, num_data]`` squared distances, never ``[num_queries,
num_data]``.

Memory is ``O(chunk_size * num_data + num_queries * k)``: at Stanford Online
Products scale (60,502 x 512 queries against themselves, ``k = 1000``) the
search with the metrics peaks at about 1.5 GB of resident memory, where the
full distance matrix alone would take 14.6 GB. ``jax.lax.top_k`` is the
selection even at ``k = 1000``: on a 2-core CPU it adds about 0.5 ms per
query to the 0.6-0.8 ms of the distance matmul (chunks of 554 queries
against 60,502 points), ``jax.lax.approx_max_k`` is no faster (it is exact
off TPU), and NumPy's ``argpartition`` on the host adds 1.2-1.4 ms
(``experiments/bench_eval.py``, ``docs/benchmarks.md``).

Runs on the host's default JAX device (a GPU when there is one); the inputs
and outputs are NumPy arrays, so it is host-side code that happens to use a
jitted kernel, not something to call inside ``jax.jit``.
"""

from __future__ import annotations

import collections
import functools

import jax
import jax.numpy as jnp
import numpy as np

from nngk_jax.checks import positive_int
from nngk_jax.geometry import pairwise_squared_distances

__all__ = ["exact_knn", "exact_self_knn"]

# Largest number of squared distances held at once (float32: 4 bytes each):
# on a CPU 32M (128 MiB), or 4M (16 MiB) for points of at most 128
# dimensions; 256M (1 GiB) on an accelerator, where a chunk of a few dozen
# queries against a million points would leave the device idle between the
# many small launches (docs/benchmarks.md, "On a GPU").
_DEFAULT_MAX_ELEMENTS = 1 << 25
_ACCELERATOR_MAX_ELEMENTS = 1 << 28
# Measured on the 2-core CPU (docs/benchmarks.md, "Training graph"): for
# narrow points a distance costs little to compute and as much as ever to
# write and reduce, and chunks of 4M ran 1.5-2x faster than 32M (50,000 x
# 64 and 40,000 x 128); from 256 dimensions the matmul dominates and 32M
# ran faster (30,000 x 256: 6.5 s against 8.7-10.0 s).
_NARROW_MAX_ELEMENTS = 1 << 22
_NARROW_MAX_DIM = 128


def _default_max_elements(dim: int | None = None) -> int:
  """Distances per chunk of the exact search for ``dim``-wide points."""
  if jax.default_backend() != "cpu":
    return _ACCELERATOR_MAX_ELEMENTS
  if dim is not None and dim <= _NARROW_MAX_DIM:
    return _NARROW_MAX_ELEMENTS
  return _DEFAULT_MAX_ELEMENTS


@functools.partial(jax.jit, static_argnames=("k", "exclude_self"))
def _knn_chunk(queries, data, query_ids, *, k, exclude_self):
  # The expansion (one matmul, [chunk, N] memory), clipped at 0.
  d2 = pairwise_squared_distances(queries, data, method="matmul")
  if exclude_self:
    own = query_ids[:, None] == jnp.arange(data.shape[0])[None, :]
    d2 = jnp.where(own, jnp.inf, d2)
  neg_d2, idx = jax.lax.top_k(-d2, k)
  return idx.astype(jnp.int32), -neg_d2


def exact_knn(
    queries: np.ndarray,
    data: np.ndarray,
    *,
    k: int,
    query_ids: np.ndarray | None = None,
    chunk_size: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
  """The ``k`` nearest rows of ``data`` to each query, by brute force.

  Args:
    queries: ``[num_queries, dim]`` float array.
    data: ``[num_data, dim]`` float array.
    k: number of neighbours; must be at most ``num_data`` (``num_data - 1``
      when ``query_ids`` is given).
    query_ids: optional ``[num_queries]`` int: the row of ``data`` that each
      query *is*; that row is excluded from its own neighbours (self
      exclusion, as for a graph over ``data`` itself).
    chunk_size: queries per chunk; by default chosen so that one chunk holds
      at most 32M distances on a CPU, 4M for points of at most 128
      dimensions (256M on a GPU or TPU).

  Returns:
    ``(indices, squared_distances)``, ``[num_queries, k]`` int32 and float32,
    nearest first. Ties are broken towards the lower index.

  Raises:
    ValueError: on mismatched shapes, a ``k`` or ``chunk_size`` that is not
      a positive integer, or a ``k`` the data cannot supply.

  Examples:
    >>> import numpy as np
    >>> x = np.array([[0.], [1.], [3.]], np.float32)
    >>> idx, d2 = exact_knn(x, x, k=1, query_ids=np.arange(3))
    >>> idx[:, 0].tolist(), d2[:, 0].tolist()
    ([1, 0, 1], [1.0, 1.0, 4.0])
  """
  queries = np.asarray(queries, np.float32)
  data = np.asarray(data, np.float32)
  if queries.ndim != 2 or data.ndim != 2 or queries.shape[1] != data.shape[1]:
    raise ValueError(
        f"exact_knn: queries and data must be [Q, D] and [N, D] with the same D;"
        f" got {queries.shape} and {data.shape}")
  num_data = data.shape[0]
  k = positive_int("exact_knn: k", k)
  exclude_self = query_ids is not None
  available = num_data - 1 if exclude_self else num_data
  if k > available:
    raise ValueError(
        f"exact_knn: k={k} neighbours requested but only {available} are"
        f" available among {num_data} data points"
        + (" (self excluded)" if exclude_self else ""))
  num_queries = queries.shape[0]
  if query_ids is None:
    query_ids = np.full((num_queries,), -1, np.int32)
  query_ids = np.asarray(query_ids, np.int32)
  if query_ids.shape != (num_queries,):
    raise ValueError(
        f"exact_knn: query_ids must be [{num_queries}], got {query_ids.shape}")
  if chunk_size is None:
    chunk_size = max(1, min(
        num_queries,
        _default_max_elements(data.shape[1]) // max(num_data, 1)))
  chunk_size = positive_int("exact_knn: chunk_size", chunk_size)
  # The chunks go round the local devices (one per CPU core where the CPU
  # is split, parallel.split_cpu; several GPUs), each holding a copy of the
  # data; data larger than _SPREAD_MAX_BYTES stays on the first device only.
  devices = jax.local_devices()
  if data.nbytes > _SPREAD_MAX_BYTES:
    devices = devices[:1]
  data_on = [jax.device_put(data, device) for device in devices]
  out_idx = np.empty((num_queries, k), np.int32)
  out_d2 = np.empty((num_queries, k), np.float32)
  pending = collections.deque()  # dispatched chunks, copied out in order

  def copy_out(chunk):
    begin, end, idx, d2 = chunk
    out_idx[begin:end] = np.asarray(idx)[: end - begin]
    out_d2[begin:end] = np.asarray(d2)[: end - begin]

  for number, start in enumerate(range(0, num_queries, chunk_size)):
    stop = min(start + chunk_size, num_queries)
    q = queries[start:stop]
    ids = query_ids[start:stop]
    pad = chunk_size - (stop - start)
    if pad:  # keep one compiled shape for every chunk
      q = np.concatenate([q, np.zeros((pad, q.shape[1]), q.dtype)])
      ids = np.concatenate([ids, np.full((pad,), -1, np.int32)])
    device = number % len(devices)
    idx, d2 = _knn_chunk(jax.device_put(q, devices[device]), data_on[device],
                         jax.device_put(ids, devices[device]), k=k,
                         exclude_self=exclude_self)
    if len(pending) == len(devices):  # every device has a chunk meanwhile
      copy_out(pending.popleft())
    pending.append((start, stop, idx, d2))
  while pending:
    copy_out(pending.popleft())
  return out_idx, out_d2


# exact_knn copies the data to every local device up to this size (1 GiB:
# SOP's 60,502 x 512 float32 is 124 MB); beyond it, one copy, one device.
_SPREAD_MAX_BYTES = 1 << 30

# Widest group of the two-level top-k (_smallest), and the narrowest worth
# the second level.
_GROUP = 64
_MIN_GROUP = 8
_NO_INDEX = np.iinfo(np.int32).max
# Block side of the symmetric pass: [4096, 4096] float32 distances (64 MiB)
# on a CPU; [16384, 16384] (1 GiB) on an accelerator, whose launches are
# otherwise too small to keep it busy.
_CPU_BLOCK = 4096
_ACCELERATOR_BLOCK = 16384


def _distances(x_a, x_b, squared_a, squared_b):
  """``[A, B]`` squared distances by the matmul expansion, clipped at 0.

  A padding row's squared norm is ``inf``, so its distances are ``inf``:
  never listed, never counted, with no mask to build.
  """
  d2 = squared_a[:, None] + squared_b[None, :] - 2.0 * (x_a @ x_b.T)
  return jnp.maximum(d2, 0.0)


def _ahead(d2, codes_q, codes_d, ids_d, positive_d2, positive_id, *, axis):
  """Items of other codes before each query's ``(positive_d2, positive_id)``.

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
  ``k`` groups (of ``g`` neighbouring positions) with the smallest minima,
  comparing (value, position), so ``top_k`` runs on those ``g k``
  positions only (``g`` the widest power of two up to 64 that divides the
  line with ``2 g k`` at most its length). On a 2-core CPU at 4,096 x
  4,096 and k = 11 that is 3-4 times faster than ``top_k`` over whole
  rows, and 3 times faster again for the columns than a transpose.
  """
  length = d2.shape[axis]
  lines = d2.shape[1 - axis]
  line = jnp.arange(lines)[:, None]
  size = _GROUP
  while size >= _MIN_GROUP and (length % size or 2 * k * size > length):
    size //= 2
  if size < _MIN_GROUP:
    rows = d2 if axis == 1 else d2.T
    negative, positions = jax.lax.top_k(-rows, k)
    return -negative, positions
  if axis == 1:
    groups = d2.reshape(lines, length // size, size)
    minima = groups.min(axis=2)
  else:
    groups = d2.reshape(length // size, size, lines)
    minima = groups.min(axis=1).T
  _, chosen = jax.lax.top_k(-minima, k)
  chosen = jnp.sort(chosen, axis=1)  # ascending: ties stay with the lower
  if axis == 1:
    candidates = groups[line, chosen]  # [lines, k, size]
  else:
    candidates = groups[chosen, :, line]
  negative, position = jax.lax.top_k(-candidates.reshape(lines, k * size), k)
  group = jnp.take_along_axis(chosen, position // size, axis=1)
  return -negative, group * size + position % size


def _merge(lists, d2, ids_d, k, *, axis):
  """Running ``(d2 [lines, k], ids [lines, k])`` merged with a block's."""
  values, local = _smallest(d2, min(k, d2.shape[axis]), axis=axis)
  d2s = jnp.concatenate([lists[0], values], axis=1)
  ids = jnp.concatenate([lists[1], ids_d[local]], axis=1)
  d2s, ids = jax.lax.sort((d2s, ids), dimension=1, num_keys=2)
  return d2s[:, :k], ids[:, :k]


@functools.partial(jax.jit, static_argnames=("k", "count"),
                   donate_argnums=(0,))
def _diagonal_block(state, x, squared, ids, codes, positive_d2, positive_id,
                    *, k, count):
  """Block ``(I, I)``: its rows against themselves, self excluded."""
  lists, ahead = state
  d2 = _distances(x, x, squared, squared)
  d2 = jnp.where(ids[:, None] == ids[None, :], jnp.inf, d2)
  if count:
    ahead = ahead + _ahead(d2, codes, codes, ids, positive_d2, positive_id,
                           axis=1)
  return _merge(lists, d2, ids, k, axis=1), ahead


@functools.partial(jax.jit, static_argnames=("k", "count"),
                   donate_argnums=(0, 1))
def _block_pair(state_a, state_b, x_a, x_b, squared_a, squared_b, ids_a,
                ids_b, codes_a, codes_b, positive_d2_a, positive_id_a,
                positive_d2_b, positive_id_b, *, k, count):
  """Block pair ``(I, J)``, ``I < J``: rows serve I, columns serve J."""
  d2 = _distances(x_a, x_b, squared_a, squared_b)
  lists_a, ahead_a = state_a
  lists_b, ahead_b = state_b
  if count:
    ahead_a = ahead_a + _ahead(d2, codes_a, codes_b, ids_b, positive_d2_a,
                               positive_id_a, axis=1)
    ahead_b = ahead_b + _ahead(d2, codes_b, codes_a, ids_a, positive_d2_b,
                               positive_id_b, axis=0)
  lists_a = _merge(lists_a, d2, ids_b, k, axis=1)
  lists_b = _merge(lists_b, d2, ids_a, k, axis=0)
  return (lists_a, ahead_a), (lists_b, ahead_b)


def _default_block() -> int:
  return _CPU_BLOCK if jax.default_backend() == "cpu" else _ACCELERATOR_BLOCK


def exact_self_knn(
    points: np.ndarray,
    *,
    k: int,
    block_size: int | None = None,
    ahead_of: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
  r"""The ``k`` nearest other points of every point, in one symmetric pass.

  The same answer as ``exact_knn(points, points, k=k,
  query_ids=arange(N))`` (nearest first, ties to the lower index), with
  half its matmuls: :math:`d_{ij} = d_{ji}`, so the ``[N, N]`` squared
  distances are computed in square blocks :math:`(I, J)`, :math:`I \le J`
  only, each serving the points of block :math:`I` (its rows) and those of
  block :math:`J` (its columns). Each block's ``k`` nearest per row and per
  column come from a two-level top-k (the ``k`` smallest entries lie in the
  ``k`` groups of neighbouring columns with the smallest minima) and are
  merged into running lists by (distance, index), so every list equals a
  top-k over its whole row. Memory: a few ``[block, block]`` float32
  arrays and the ``[N, k]`` lists.

  Half the matmuls is not always half the time. It pays where the matmul
  dominates: wide embeddings and short lists (at 60,502 x 512, k = 11, the
  retrieval metrics' pass took 31.5 s against 69.2 s for ``exact_knn``'s
  list of 1,000 on the quiet 2-core CPU). With narrow embeddings or long
  lists, writing and reducing the distances costs more than computing
  them, and the pass reduces each block twice (rows and columns): on the
  2-core CPU, 40,000 x 128 at k = 128 took 38.6 s against ``exact_knn``'s
  23.6 s, and 50,000 x 64 at k = 30 30.0 s against 24.1 s. So the neighbour graphs keep ``exact_knn``
  (``docs/benchmarks.md``).

  With ``ahead_of = (codes, positive_d2, positive_index)`` it also counts,
  for each point :math:`i`, the points of *other* codes that come before
  :math:`(d, p)` = ``(positive_d2[i], positive_index[i])`` in
  (distance, index) order:

  .. math::
    \text{ahead}_i = \#\{\, l : c_l \ne c_i,\ (d_{il}, l) < (d, p) \,\}

  which is how :func:`nngk_jax.metrics.self_retrieval.self_retrieval`
  ranks each query's nearest positive for Recall@K at any K.

  Args:
    points: ``[N, D]`` finite float.
    k: neighbours per point, in ``[1, N - 1]``.
    block_size: side of the blocks; None for 4,096 on a CPU and 16,384 on
      a GPU or TPU.
    ahead_of: optional ``([N] int codes, [N] float32 squared distances,
      [N] int indices)``.

  Returns:
    ``(indices, squared_distances, ahead)``: ``[N, k]`` int32 and float32,
    nearest first, and ``[N]`` int64 counts (None without ``ahead_of``).

  Raises:
    ValueError: on a non-2-D ``points``, a ``k`` outside ``[1, N - 1]``, a
      ``block_size`` below 1, or ``ahead_of`` arrays not of length N.

  Examples:
    >>> import numpy as np
    >>> x = np.array([[0.], [1.], [3.]], np.float32)
    >>> idx, d2, _ = exact_self_knn(x, k=1)
    >>> idx[:, 0].tolist(), d2[:, 0].tolist()
    ([1, 0, 1], [1.0, 1.0, 4.0])
  """
  points = np.asarray(points, np.float32)
  if points.ndim != 2:
    raise ValueError(
        f"exact_self_knn: points must be [N, D]; got shape {points.shape}")
  num_points = points.shape[0]
  k = positive_int("exact_self_knn: k", k)
  if k > num_points - 1:
    raise ValueError(
        f"exact_self_knn: k={k} neighbours requested but each of the"
        f" {num_points} points has only {num_points - 1} others")
  block = positive_int("exact_self_knn: block_size",
                       _default_block() if block_size is None else block_size)
  block = min(block, num_points)
  count = ahead_of is not None
  if count:
    codes, positive_d2, positive_id = (np.asarray(a).reshape(-1)
                                       for a in ahead_of)
    if not codes.shape == positive_d2.shape == positive_id.shape == (
        num_points,):
      raise ValueError(
          f"exact_self_knn: ahead_of must be three [N] = [{num_points}]"
          f" arrays; got shapes {codes.shape}, {positive_d2.shape},"
          f" {positive_id.shape}")
    codes = codes.astype(np.int32)
    positive_d2 = positive_d2.astype(np.float32)
    positive_id = positive_id.astype(np.int32)
  else:  # placeholders the compiled blocks ignore
    codes = np.zeros((num_points,), np.int32)
    positive_d2 = np.zeros((num_points,), np.float32)
    positive_id = np.zeros((num_points,), np.int32)

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
                               code_blocks[i], pos_d2[i], pos_id[i], k=k,
                               count=count)
    for j in range(i + 1, num_blocks):
      state[i], state[j] = _block_pair(
          state[i], state[j], x[i], x[j], squared[i], squared[j], ids[i],
          ids[j], code_blocks[i], code_blocks[j], pos_d2[i], pos_id[i],
          pos_d2[j], pos_id[j], k=k, count=count)
  neighbours = np.concatenate(
      [np.asarray(s[0][1]) for s in state])[:num_points]
  lists = np.concatenate([np.asarray(s[0][0]) for s in state])[:num_points]
  ahead = (np.concatenate([np.asarray(s[1]) for s in state])[:num_points]
           .astype(np.int64) if count else None)
  return neighbours, lists, ahead

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

import functools

import jax
import jax.numpy as jnp
import numpy as np

from nngk_jax.checks import positive_int
from nngk_jax.geometry import pairwise_squared_distances

__all__ = ["exact_knn"]

# Largest number of squared distances held at once (float32: 4 bytes each):
# 32M (128 MiB) on a CPU; 256M (1 GiB) on an accelerator, where a chunk of a
# few dozen queries against a million points would leave the device idle
# between the many small launches (docs/benchmarks.md, "On a GPU").
_DEFAULT_MAX_ELEMENTS = 1 << 25
_ACCELERATOR_MAX_ELEMENTS = 1 << 28


def _default_max_elements() -> int:
  if jax.default_backend() == "cpu":
    return _DEFAULT_MAX_ELEMENTS
  return _ACCELERATOR_MAX_ELEMENTS


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
      at most 32M distances (256M on a GPU or TPU).

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
    chunk_size = max(1, min(num_queries,
                            _default_max_elements() // max(num_data, 1)))
  chunk_size = positive_int("exact_knn: chunk_size", chunk_size)
  data_dev = jnp.asarray(data)
  out_idx = np.empty((num_queries, k), np.int32)
  out_d2 = np.empty((num_queries, k), np.float32)
  pending = None  # the last chunk dispatched, copied out after the next one

  def copy_out(chunk):
    begin, end, idx, d2 = chunk
    out_idx[begin:end] = np.asarray(idx)[: end - begin]
    out_d2[begin:end] = np.asarray(d2)[: end - begin]

  for start in range(0, num_queries, chunk_size):
    stop = min(start + chunk_size, num_queries)
    q = queries[start:stop]
    ids = query_ids[start:stop]
    pad = chunk_size - (stop - start)
    if pad:  # keep one compiled shape for every chunk
      q = np.concatenate([q, np.zeros((pad, q.shape[1]), q.dtype)])
      ids = np.concatenate([ids, np.full((pad,), -1, np.int32)])
    idx, d2 = _knn_chunk(q, data_dev, ids, k=k, exclude_self=exclude_self)
    if pending is not None:  # the device works on this chunk meanwhile
      copy_out(pending)
    pending = (start, stop, idx, d2)
  if pending is not None:
    copy_out(pending)
  return out_idx, out_d2

r"""An OPQ-compressed centre bank: a few bytes of code in place of each centre.

Impostor Networks (Lebedev, Babenko and Lempitsky, arXiv:1806.05217) keep
their kernel centres compressed with Optimized Product Quantization (OPQ; Ge,
He, Ke and Sun, TPAMI 2014). A centre :math:`c \in \mathbb{R}^D` is rotated
by a learned orthogonal :math:`R` and its rotated copy is cut into ``M``
sub-vectors of ``D / M`` dimensions; sub-vector ``m`` is replaced by the
index :math:`b_m` of its nearest entry in a codebook :math:`C_m` of
:math:`2^{\text{nbits}}` entries:

.. math::
  \hat c = R^\top \left[ C_1[b_1], \dots, C_M[b_M] \right]

At 8 bits per code and 16 bytes per centre, CUB's 5,994 centres of 512
dimensions take 95,904 bytes of codes, against 12.3 MB in float32 (plus a
fixed 1 MiB rotation and 0.5 MiB of codebooks, whatever ``N``).

A query is never compressed. Its squared distance to every compressed centre
is the *asymmetric distance* (ADC) of Jégou, Douze and Schmid (TPAMI 2011):
the rotated query's sub-vectors are compared once with every codebook entry
(``[Q, M, 2^nbits]`` lookup tables), and a centre's distance is the sum of
``M`` table entries picked by its code. Since :math:`R` is orthogonal this is
exactly the squared distance to the decoded centre, :math:`\lVert q - \hat c
\rVert^2`, computed without decoding.

Training the quantizer (the OPQ rotation and the k-means codebooks) is
faiss's (``faiss.OPQMatrix``, ``faiss.ProductQuantizer``). Everything after
training, decoding, ADC distances, search and the kernel vote, is NumPy and
JAX; :meth:`CompressedBank.search` also runs through faiss
(``backend="faiss"``) as a cross-check.

Host-side, like ``nngk_jax.knn``: NumPy in, NumPy out (``distances`` returns
a JAX array); the ADC kernel itself (:func:`adc_squared_distances`) is pure
and jit-able.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import io
import json
import math
import os
import pathlib
import zipfile
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from nngk_jax.checks import check_dtype
from nngk_jax.checks import check_finite_rows
from nngk_jax.checks import check_positive_scalar
from nngk_jax.checks import check_rank
from nngk_jax.checks import positive_int
from nngk_jax.loss import kernel_class_log_probs
from nngk_jax.workdir import read_metadata
from nngk_jax.workdir import write_atomically

__all__ = [
    "ARRAYS_FILE",
    "CompressedBank",
    "CompressedBankFileError",
    "DEFAULT_MAX_TRAINING_POINTS",
    "FORMAT_VERSION",
    "METADATA_FILE",
    "adc_squared_distances",
    "adc_tables",
    "compress",
]

# What ``CompressedBank.save`` writes into its directory.
ARRAYS_FILE = "compressed_bank.npz"
METADATA_FILE = "compressed_bank.json"
FORMAT_NAME = "nngk_jax.compress.CompressedBank"
FORMAT_VERSION = 1

# ``compress(max_training_points=None)`` trains on at most this many centres
# (faiss's own cap for OPQ training, ``OPQMatrix.max_train_points``).
DEFAULT_MAX_TRAINING_POINTS = 256 * 256

# Queries per ADC chunk: at most 1024, and at most this many distances held
# at once (float32: 4 bytes each; 64M = 256 MiB, 1024 queries at N = 60k).
_MAX_QUERY_CHUNK = 1024
_MAX_DISTANCES = 1 << 26
# ``classify`` decodes ``[chunk, k, D]`` neighbours at a time, at most this
# many floats (16M = 64 MiB).
_MAX_DECODED = 1 << 24

SEARCH_BACKENDS = ("jax", "faiss")

# Largest entry of |R R^T - I| accepted for a rotation (faiss's float32 OPQ
# rotations are orthogonal to about 1e-6).
_ORTHOGONALITY_TOLERANCE = 1e-3


class CompressedBankFileError(ValueError):
  """A saved compressed bank is corrupt, incomplete or of another format."""


def _import_faiss():
  try:
    import faiss  # Imported lazily: only training and backend="faiss" need it.
  except ImportError as error:  # pragma: no cover - faiss is a dependency.
    raise ImportError(
        "nngk_jax.compress needs faiss to train a quantizer or search with "
        "backend='faiss': pip install faiss-cpu") from error
  return faiss


# --------------------------------------------------------------------------
# ADC: asymmetric distances, pure and jit-able.
# --------------------------------------------------------------------------


def _check_quantizer(rotation, codebooks) -> tuple[int, int, int, int]:
  """Shape checks; returns ``(dim, num_subquantizers, codebook_size, sub_dim)``."""
  check_rank("rotation", rotation, 2, "[dim, dim]")
  check_rank("codebooks", codebooks, 3,
             "[num_subquantizers, codebook_size, dim // num_subquantizers]")
  dim = jnp.shape(rotation)[1]
  num_subquantizers, codebook_size, sub_dim = jnp.shape(codebooks)
  if jnp.shape(rotation)[0] != dim or num_subquantizers * sub_dim != dim:
    raise ValueError(
        f"rotation {jnp.shape(rotation)} and codebooks "
        f"{jnp.shape(codebooks)} do not describe one dim: rotation must be "
        f"[D, D] and codebooks [M, K, D // M]")
  return dim, num_subquantizers, codebook_size, sub_dim


def adc_tables(queries: jax.Array, rotation: jax.Array,
               codebooks: jax.Array) -> jax.Array:
  r"""ADC lookup tables: each rotated query sub-vector against each codeword.

  .. math::
    T_{qmk} = \lVert (R\, x_q)^{(m)} - C_{mk} \rVert^2

  where :math:`(R x)^{(m)}` is the ``m``-th of the ``M`` consecutive
  sub-vectors of the rotated query (``x @ rotation.T``). Computed from the
  differences (exact, never negative); XLA fuses the difference, square and
  sum, so nothing of size ``[Q, M, K, D / M]`` is built.

  Args:
    queries: ``[num_queries, dim]`` float, uncompressed.
    rotation: ``[dim, dim]`` float, orthogonal :math:`R`.
    codebooks: ``[M, K, dim // M]`` float, codeword ``k`` of sub-quantizer
      ``m`` is ``codebooks[m, k]`` (in the rotated space).

  Returns:
    ``[num_queries, M, K]`` float32 squared distances.

  Examples:
    >>> import jax.numpy as jnp
    >>> codebooks = jnp.array([[[0.], [2.]], [[1.], [5.]]])  # M=2, K=2
    >>> adc_tables(jnp.array([[1., 1.]]), jnp.eye(2), codebooks).tolist()
    [[[1.0, 1.0], [0.0, 16.0]]]
  """
  check_rank("queries", queries, 2, "[num_queries, dim]")
  dim, num_subquantizers, _, sub_dim = _check_quantizer(rotation, codebooks)
  if jnp.shape(queries)[1] != dim:
    raise ValueError(
        f"queries are {jnp.shape(queries)[1]}-D but the quantizer is {dim}-D")
  queries = jnp.asarray(queries, jnp.float32)
  rotated = queries @ jnp.asarray(rotation, jnp.float32).T
  sub_queries = rotated.reshape(-1, num_subquantizers, 1, sub_dim)
  diff = sub_queries - jnp.asarray(codebooks, jnp.float32)[None]
  return jnp.sum(diff * diff, axis=-1)


def adc_squared_distances(queries: jax.Array, rotation: jax.Array,
                          codebooks: jax.Array, codes: jax.Array) -> jax.Array:
  r"""Asymmetric (ADC) squared distances from raw queries to coded centres.

  .. math::
    d_{qn} = \sum_{m=1}^{M} T_{q\,m\,b_{nm}}
           = \sum_{m=1}^{M} \lVert (R\, x_q)^{(m)} - C_m[b_{nm}] \rVert^2
           = \lVert x_q - \hat c_n \rVert^2,
    \qquad \hat c_n = R^\top [C_1[b_{n1}], \dots, C_M[b_{nM}]]

  with :math:`T` from :func:`adc_tables`; the last equality holds because
  :math:`R` is orthogonal. The sum runs over the sub-quantizers one at a
  time (``jax.lax.scan``), so memory is ``O(Q N + Q M K)``: no ``[Q, N, M]``
  gather and no decoded centre. Pure and jit-able.

  Args:
    queries: ``[num_queries, dim]`` float, uncompressed.
    rotation: ``[dim, dim]`` float, orthogonal :math:`R`.
    codebooks: ``[M, K, dim // M]`` float.
    codes: ``[num_centres, M]`` integer (``uint8``) in ``[0, K)``, the
      :math:`b_{nm}`.

  Returns:
    ``[num_queries, num_centres]`` float32 squared distances.

  Examples:
    >>> import jax.numpy as jnp
    >>> codebooks = jnp.array([[[0.], [2.]], [[1.], [5.]]])
    >>> codes = jnp.array([[0, 0], [1, 1]], jnp.uint8)  # (0, 1) and (2, 5)
    >>> adc_squared_distances(jnp.array([[1., 1.]]), jnp.eye(2), codebooks,
    ...                       codes).tolist()
    [[1.0, 17.0]]

  References:
    Jégou, Douze and Schmid, "Product Quantization for Nearest Neighbor
    Search", TPAMI 2011; Ge, He, Ke and Sun, "Optimized Product
    Quantization", TPAMI 2014.
  """
  check_rank("codes", codes, 2, "[num_centres, num_subquantizers]")
  check_dtype("codes", codes, "int")
  tables = adc_tables(queries, rotation, codebooks)  # [Q, M, K]
  if jnp.shape(codes)[1] != tables.shape[1]:
    raise ValueError(
        f"codes have {jnp.shape(codes)[1]} columns for "
        f"{tables.shape[1]} sub-quantizers")
  codes = jnp.asarray(codes).astype(jnp.int32)

  def add_subquantizer(total, table_and_codes):
    table, sub_codes = table_and_codes  # [Q, K], [N]
    return total + jnp.take(table, sub_codes, axis=1), None

  start = jnp.zeros((tables.shape[0], codes.shape[0]), jnp.float32)
  total, _ = jax.lax.scan(add_subquantizer, start,
                          (jnp.swapaxes(tables, 0, 1), codes.T))
  return total


_adc_squared_distances_jit = jax.jit(adc_squared_distances)


@functools.partial(jax.jit, static_argnames=("k",))
def _search_chunk(queries, rotation, codebooks, codes, *, k):
  distances = adc_squared_distances(queries, rotation, codebooks, codes)
  neg_distances, indices = jax.lax.top_k(-distances, k)
  return indices.astype(jnp.int32), -neg_distances


@functools.partial(jax.jit, static_argnames=("num_classes",))
def _kernel_vote(queries, neighbours, neighbour_labels, neighbour_log_weights,
                 sigma, *, num_classes):
  """``[B]`` argmax of the NNGK vote over ``[B, k, D]`` decoded neighbours.

  The neighbours are laid out as a local bank of ``B * k`` centres, row
  ``b`` voting with its own ``k``.
  """
  batch, k, dim = neighbours.shape
  local_idx = jnp.arange(batch * k, dtype=jnp.int32).reshape(batch, k)
  log_probs = kernel_class_log_probs(
      queries, neighbours.reshape(batch * k, dim),
      neighbour_labels.reshape(batch * k), local_idx,
      num_classes=num_classes, sigma=sigma,
      centre_log_weights=(None if neighbour_log_weights is None
                          else neighbour_log_weights.reshape(batch * k)))
  return jnp.argmax(log_probs, axis=1).astype(jnp.int32)


# --------------------------------------------------------------------------
# Code packing (faiss's layout for nbits < 8: little-endian bit stream).
# --------------------------------------------------------------------------


def _code_bytes(num_subquantizers: int, nbits: int) -> int:
  return -(-num_subquantizers * nbits // 8)


def _pack_codes(codes: np.ndarray, nbits: int) -> np.ndarray:
  """``[N, M]`` codes -> ``[N, ceil(M nbits / 8)]`` uint8, faiss's layout."""
  if nbits == 8:
    return np.ascontiguousarray(codes, np.uint8)
  shifts = np.arange(nbits, dtype=np.uint8)
  bits = (codes[..., None] >> shifts) & 1  # [N, M, nbits], low bit first
  return np.packbits(bits.reshape(len(codes), -1), axis=1, bitorder="little")


def _unpack_codes(packed: np.ndarray, num_subquantizers: int,
                  nbits: int) -> np.ndarray:
  """Inverse of :func:`_pack_codes`."""
  if nbits == 8:
    return np.ascontiguousarray(packed, np.uint8)
  bits = np.unpackbits(packed, axis=1, bitorder="little",
                       count=num_subquantizers * nbits)
  bits = bits.reshape(len(packed), num_subquantizers, nbits)
  return np.sum(bits << np.arange(nbits, dtype=np.uint8), axis=2,
                dtype=np.uint8)


# --------------------------------------------------------------------------
# The compressed bank.
# --------------------------------------------------------------------------


def _per_centre(name: str, value: Any, kind: str,
                num_centres: int) -> np.ndarray:
  """``value`` as a ``[num_centres]`` array of ``kind``, or a ValueError."""
  value = np.asarray(value)
  check_rank(name, value, 1, "[num_centres]")
  check_dtype(name, value, kind)
  if value.shape[0] != num_centres:
    raise ValueError(
        f"{name} has {value.shape[0]} entries for {num_centres} centres")
  return value


@dataclasses.dataclass(frozen=True, eq=False)
class CompressedBank:
  r"""Centres as OPQ codes, their labels and optional NNGK log-weights.

  Made by :func:`compress` (or :meth:`load`). The arrays are checked (shapes,
  code range, an orthogonal rotation) and converted to the dtypes below on
  construction. Compared by identity (``eq=False``), as arrays have no
  single truth value.

  Attributes:
    rotation: ``[D, D]`` float32 orthogonal OPQ rotation :math:`R` (the
      identity when trained with ``opq=False``); a vector is rotated as
      ``x @ rotation.T``.
    codebooks: ``[M, 2**nbits, D // M]`` float32 sub-quantizer codebooks, in
      the rotated space.
    codes: ``[N, M]`` uint8, ``codes[n, m]`` the codeword of centre ``n`` in
      sub-quantizer ``m`` (one byte per code in memory, whatever ``nbits``;
      packed to ``nbits`` on disk).
    labels: ``[N]`` int32 centre labels.
    log_weights: optional ``[N]`` float32 per-centre NNGK log-weights
      :math:`\theta_n`, kept uncompressed.

  Examples:
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> centres = rng.normal(size=(300, 8)).astype(np.float32)
    >>> bank = compress(centres, np.arange(300) % 3, bytes_per_centre=2)
    >>> bank.codes.shape, bank.codes.dtype, bank.bytes_per_centre
    ((300, 2), dtype('uint8'), 2)
    >>> bank.decode([0, 1]).shape
    (2, 8)
    >>> indices, distances = bank.search(centres[:3], k=2)
    >>> indices.shape, distances.dtype
    ((3, 2), dtype('float32'))
  """

  rotation: np.ndarray
  codebooks: np.ndarray
  codes: np.ndarray
  labels: np.ndarray
  log_weights: np.ndarray | None = None

  def __post_init__(self):
    rotation = np.asarray(self.rotation, np.float32)
    codebooks = np.asarray(self.codebooks, np.float32)
    dim, num_subquantizers, codebook_size, _ = _check_quantizer(
        rotation, codebooks)
    deviation = np.abs(rotation @ rotation.T - np.eye(dim)).max(initial=0.0)
    if not deviation <= _ORTHOGONALITY_TOLERANCE:  # also catches NaN
      raise ValueError(
          f"rotation must be orthogonal: |R R^T - I| reaches {deviation:.3g}")
    nbits = int(round(math.log2(codebook_size))) if codebook_size > 0 else 0
    if codebook_size < 2 or 2**nbits != codebook_size or nbits > 8:
      raise ValueError(
          f"codebooks must hold 2**nbits codewords with 1 <= nbits <= 8, got "
          f"{codebook_size}")
    codes = np.asarray(self.codes)
    check_rank("codes", codes, 2, "[num_centres, num_subquantizers]")
    check_dtype("codes", codes, "int")
    if codes.shape[1] != num_subquantizers:
      raise ValueError(f"codes have {codes.shape[1]} columns for "
                       f"{num_subquantizers} sub-quantizers")
    if codes.size and (codes.min() < 0 or codes.max() >= codebook_size):
      raise ValueError(
          f"codes must lie in [0, {codebook_size}), found "
          f"[{codes.min()}, {codes.max()}]")
    num_centres = codes.shape[0]
    labels = _per_centre("labels", self.labels, "int", num_centres)
    object.__setattr__(self, "rotation", rotation)
    object.__setattr__(self, "codebooks", codebooks)
    object.__setattr__(self, "codes", codes.astype(np.uint8, copy=False))
    object.__setattr__(self, "labels", labels.astype(np.int32, copy=False))
    if self.log_weights is not None:
      log_weights = _per_centre("log_weights", self.log_weights, "float",
                                num_centres)
      object.__setattr__(self, "log_weights",
                         log_weights.astype(np.float32, copy=False))

  # ------------------------------------------------------------------ sizes

  @property
  def num_centres(self) -> int:
    """``N``, the number of compressed centres."""
    return self.codes.shape[0]

  @property
  def dim(self) -> int:
    """``D``, the dimension of the centres."""
    return self.rotation.shape[0]

  @property
  def num_subquantizers(self) -> int:
    """``M``, codes per centre."""
    return self.codebooks.shape[0]

  @property
  def nbits(self) -> int:
    """Bits per code, ``log2`` of the codebook size."""
    return int(round(math.log2(self.codebooks.shape[1])))

  @property
  def opq(self) -> bool:
    """Whether the rotation is a learned one (not the identity)."""
    return not np.array_equal(self.rotation, np.eye(self.dim, dtype=np.float32))

  @property
  def bytes_per_centre(self) -> int:
    """Code bytes per centre, ``ceil(M nbits / 8)`` (as saved, and as faiss)."""
    return _code_bytes(self.num_subquantizers, self.nbits)

  @property
  def nbytes(self) -> int:
    """Bytes of everything the bank stores, as saved.

    Counted: the packed codes (``N * bytes_per_centre``), the rotation
    (``4 D^2``), the codebooks (``4 * 2**nbits * D``), the labels (``4 N``)
    and the log-weights when present (``4 N``). Not counted: the JSON
    metadata and the ``.npz`` container's headers.
    """
    total = (self.num_centres * self.bytes_per_centre + self.rotation.nbytes
             + self.codebooks.nbytes + self.labels.nbytes)
    if self.log_weights is not None:
      total += self.log_weights.nbytes
    return total

  # ------------------------------------------------------------ reconstruct

  def decode(self, rows: Any = None) -> np.ndarray:
    r"""Reconstructed centres :math:`\hat c_n`, in the original space.

    Args:
      rows: optional int array of any shape, the centres to decode
        (``None``: all).

    Returns:
      ``[N, D]`` float32 (or ``[*rows.shape, D]``).
    """
    codes = self.codes if rows is None else self.codes[np.asarray(rows)]
    lead_shape = codes.shape[:-1]
    codes = codes.reshape(-1, self.num_subquantizers)
    sub_vectors = self.codebooks[np.arange(self.num_subquantizers), codes]
    rotated = sub_vectors.reshape(len(codes), self.dim)
    return (rotated @ self.rotation).reshape(*lead_shape, self.dim)

  # ----------------------------------------------------------------- search

  def _check_queries(self, queries: Any) -> np.ndarray:
    queries = np.asarray(queries, np.float32)
    if queries.ndim != 2 or queries.shape[1] != self.dim:
      raise ValueError(
          f"queries must be [num_queries, {self.dim}], got {queries.shape}")
    check_finite_rows("queries", queries)
    return queries

  def distances(self, queries: Any) -> jax.Array:
    """``[Q, N]`` ADC squared distances (:func:`adc_squared_distances`).

    Builds the whole matrix at once: for many queries against a large bank,
    use :meth:`search`, which works in chunks.

    Args:
      queries: ``[Q, D]`` float, uncompressed.

    Returns:
      ``[Q, N]`` float32 JAX array, on the default device.
    """
    queries = self._check_queries(queries)
    return _adc_squared_distances_jit(
        queries, self.rotation, self.codebooks, self.codes)

  def search(self, queries: Any, k: int, *, backend: str = "jax",
             chunk_size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` compressed centres nearest to each query, by ADC.

    Args:
      queries: ``[Q, D]`` float, uncompressed.
      k: neighbours per query, ``1 <= k <= N``.
      backend: ``"jax"``: ADC and ``jax.lax.top_k`` in JAX, on the default
        device (a GPU when there is one), in chunks of queries; ties go to
        the lower index. ``"faiss"``: the same search through a faiss
        ``IndexPreTransform`` + ``IndexPQ`` on the host (:meth:`to_faiss`).
      chunk_size: queries per chunk for ``"jax"``; by default at most 1024
        and at most 64M distances per chunk.

    Returns:
      ``(indices, squared_distances)``: ``[Q, k]`` int32 and float32,
      nearest first.

    Raises:
      ValueError: on queries of the wrong shape or not finite, a ``k`` out
        of range or an unknown backend.
    """
    queries = self._check_queries(queries)
    k = positive_int("k", k)
    if k > self.num_centres:
      raise ValueError(
          f"k={k} neighbours requested from a bank of {self.num_centres}")
    if backend == "faiss":
      squared, indices = self.to_faiss().search(queries, k)
      return indices.astype(np.int32), squared.astype(np.float32)
    if backend != "jax":
      raise ValueError(
          f"unknown search backend {backend!r}; choose from {SEARCH_BACKENDS}")
    num_queries = len(queries)
    if chunk_size is None:
      chunk_size = min(_MAX_QUERY_CHUNK,
                       max(1, _MAX_DISTANCES // self.num_centres))
    chunk_size = min(positive_int("chunk_size", chunk_size),
                     max(num_queries, 1))
    quantizer = (jnp.asarray(self.rotation), jnp.asarray(self.codebooks),
                 jnp.asarray(self.codes))
    out_indices = np.empty((num_queries, k), np.int32)
    out_squared = np.empty((num_queries, k), np.float32)
    for start in range(0, num_queries, chunk_size):
      stop = min(start + chunk_size, num_queries)
      chunk = queries[start:stop]
      if stop - start < chunk_size:  # one compiled shape for every chunk
        chunk = np.concatenate(
            [chunk, np.zeros((chunk_size - len(chunk), self.dim), np.float32)])
      indices, squared = _search_chunk(chunk, *quantizer, k=k)
      out_indices[start:stop] = np.asarray(indices)[:stop - start]
      out_squared[start:stop] = np.asarray(squared)[:stop - start]
    return out_indices, out_squared

  def to_faiss(self) -> Any:
    """The bank as a faiss index: ``IndexPreTransform(rotation, IndexPQ)``.

    Built anew on each call from the bank's arrays (no training). Its
    ``search`` is the ADC search of :meth:`search`; its ``sa_decode`` of the
    packed codes is :meth:`decode`.
    """
    faiss = _import_faiss()
    pq_index = faiss.IndexPQ(self.dim, self.num_subquantizers, self.nbits)
    faiss.copy_array_to_vector(self.codebooks.ravel(), pq_index.pq.centroids)
    pq_index.is_trained = True
    pq_index.add_sa_codes(_pack_codes(self.codes, self.nbits))
    rotation = faiss.LinearTransform(self.dim, self.dim, False)
    faiss.copy_array_to_vector(self.rotation.ravel(), rotation.A)
    rotation.is_trained = True
    rotation.is_orthonormal = True  # reverse_transform multiplies by A^T
    return faiss.IndexPreTransform(rotation, pq_index)

  # --------------------------------------------------------------- classify

  def classify(self, queries: Any, *, num_classes: int, k: int,
               sigma: float, backend: str = "jax") -> np.ndarray:
    r"""NNGK kernel classifier over the ``k`` nearest compressed centres.

    The neighbours are found by ADC (:meth:`search`); the vote is
    :func:`nngk_jax.loss.kernel_class_log_probs` over the decoded neighbours
    :math:`\hat c_j`, whose distances to the query are the ADC distances
    (up to float rounding):

    .. math::
      \hat y(x) = \arg\max_c \sum_{j \in N_K(x),\, y_j = c}
        e^{\theta_j} \exp\left(-\frac{\lVert x - \hat c_j \rVert^2}
                                     {2 \sigma^2}\right)

    with the bank's ``log_weights`` as :math:`\theta` when present.

    Args:
      queries: ``[Q, D]`` float embeddings to classify.
      num_classes: number of classes; every label must lie below it.
      k: neighbours per query (capped at ``N``, as
        ``nngk_jax.evaluation.kernel_classify``).
      sigma: positive kernel width.
      backend: search backend (see :meth:`search`).

    Returns:
      ``[Q]`` int32 predicted classes.
    """
    queries = self._check_queries(queries)
    num_classes = positive_int("num_classes", num_classes)
    if self.labels.size and (self.labels.min() < 0
                             or self.labels.max() >= num_classes):
      raise ValueError(
          f"labels must lie in [0, {num_classes}), found "
          f"[{self.labels.min()}, {self.labels.max()}]")
    check_positive_scalar("sigma", sigma)
    k = min(positive_int("k", k), self.num_centres)
    neighbours, _ = self.search(queries, k, backend=backend)  # [Q, k]
    num_queries = len(queries)
    chunk_size = min(max(1, _MAX_DECODED // (k * self.dim)),
                     max(num_queries, 1))
    predicted = np.empty(num_queries, np.int32)
    for start in range(0, num_queries, chunk_size):
      stop = min(start + chunk_size, num_queries)
      rows = neighbours[start:stop]
      chunk = queries[start:stop]
      if stop - start < chunk_size:  # one compiled shape for every chunk
        pad = chunk_size - (stop - start)
        rows = np.concatenate([rows, np.zeros((pad, k), rows.dtype)])
        chunk = np.concatenate([chunk, np.zeros((pad, self.dim), np.float32)])
      votes = _kernel_vote(
          chunk, self.decode(rows), self.labels[rows],
          None if self.log_weights is None else self.log_weights[rows],
          np.float32(sigma), num_classes=num_classes)
      predicted[start:stop] = np.asarray(votes)[:stop - start]
    return predicted

  # ------------------------------------------------------------ persistence

  def save(self, directory: str | os.PathLike) -> pathlib.Path:
    """Writes the bank to ``directory`` (created if missing), no pickle.

    Two files: ``compressed_bank.npz`` (``rotation``, ``codebooks``, the
    packed ``codes``, ``labels`` and ``log_weights`` if any, by
    ``np.savez``) and ``compressed_bank.json`` (format and version, shapes,
    ``nbits``, the OPQ flag and the SHA-256 of the ``.npz``). Each is
    written to a temporary file and renamed; the JSON last, so an
    interrupted save is refused by :meth:`load`, never half-read.

    Returns:
      The directory.
    """
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    arrays = {"rotation": self.rotation, "codebooks": self.codebooks,
              "codes": _pack_codes(self.codes, self.nbits),
              "labels": self.labels}
    if self.log_weights is not None:
      arrays["log_weights"] = self.log_weights
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    payload = buffer.getvalue()
    metadata = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "num_centres": self.num_centres,
        "dim": self.dim,
        "num_subquantizers": self.num_subquantizers,
        "nbits": self.nbits,
        "bytes_per_centre": self.bytes_per_centre,
        "opq": self.opq,
        "has_log_weights": self.log_weights is not None,
        "arrays_file": ARRAYS_FILE,
        "arrays_sha256": hashlib.sha256(payload).hexdigest(),
    }
    write_atomically(directory / ARRAYS_FILE, payload)
    write_atomically(directory / METADATA_FILE,
                     (json.dumps(metadata, indent=2) + "\n").encode())
    return directory

  @classmethod
  def load(cls, directory: str | os.PathLike) -> CompressedBank:
    """Reads a bank written by :meth:`save`.

    Raises:
      FileNotFoundError: when either file is missing.
      CompressedBankFileError: (a ``ValueError``) when the metadata is not
        this format's, the arrays do not match its checksum (corrupt, or
        from another save), or an array is missing or of the wrong shape.
    """
    directory = pathlib.Path(directory)
    metadata_path = directory / METADATA_FILE
    if not metadata_path.is_file():
      raise FileNotFoundError(
          f"no compressed bank in {directory}: {METADATA_FILE} is missing")
    metadata = read_metadata(
        metadata_path, format_name=FORMAT_NAME, version=FORMAT_VERSION,
        what="a compressed bank's metadata", error=CompressedBankFileError)
    arrays_path = directory / ARRAYS_FILE
    if not arrays_path.is_file():
      raise FileNotFoundError(
          f"compressed bank in {directory} is incomplete: {ARRAYS_FILE} is "
          f"missing")
    payload = arrays_path.read_bytes()
    if hashlib.sha256(payload).hexdigest() != metadata.get("arrays_sha256"):
      raise CompressedBankFileError(
          f"{arrays_path} does not match the checksum in {METADATA_FILE}: the "
          f"file is corrupt or from another save")
    try:
      num_centres = int(metadata["num_centres"])
      dim = int(metadata["dim"])
      num_subquantizers = int(metadata["num_subquantizers"])
      nbits = int(metadata["nbits"])
      has_log_weights = bool(metadata["has_log_weights"])
    except (KeyError, TypeError, ValueError) as error:
      raise CompressedBankFileError(
          f"{metadata_path} lacks a valid field: {error!r}") from None
    names = ["rotation", "codebooks", "codes", "labels"]
    names += ["log_weights"] if has_log_weights else []
    try:
      with np.load(io.BytesIO(payload), allow_pickle=False) as npz:
        arrays = {name: npz[name] for name in names}
    except (KeyError, ValueError, OSError, zipfile.BadZipFile) as error:
      raise CompressedBankFileError(
          f"{arrays_path} cannot be read as this bank's arrays: "
          f"{error}") from None
    expected = {
        "rotation": (dim, dim),
        "codebooks": (num_subquantizers, 2**nbits,
                      dim // max(num_subquantizers, 1)),
        "codes": (num_centres, _code_bytes(num_subquantizers, nbits)),
        "labels": (num_centres,),
        "log_weights": (num_centres,),
    }
    for name in names:
      if arrays[name].shape != expected[name]:
        raise CompressedBankFileError(
            f"{arrays_path}: {name} has shape {arrays[name].shape}, the "
            f"metadata says {expected[name]}")
    arrays["codes"] = _unpack_codes(arrays["codes"], num_subquantizers, nbits)
    return cls(**arrays)


# --------------------------------------------------------------------------
# Training.
# --------------------------------------------------------------------------


def _valid_byte_budgets(dim: int, nbits: int) -> list[int]:
  """Byte budgets whose ``M = bytes * 8 / nbits`` divides ``dim``."""
  return [size for size in range(1, dim * nbits // 8 + 1)
          if size * 8 % nbits == 0 and dim % (size * 8 // nbits) == 0]


def _rotation_matrix(transform: Any) -> np.ndarray:
  """The ``[d_out, d_in]`` matrix ``A`` of a faiss ``LinearTransform``.

  faiss applies it as ``x @ A.T`` (``LinearTransform::apply_noalloc``);
  tested against ``apply_py``.
  """
  faiss = _import_faiss()
  matrix = faiss.vector_to_array(transform.A)
  return matrix.reshape(transform.d_out, transform.d_in).astype(np.float32)


def _product_quantizer(dim: int, num_subquantizers: int, nbits: int,
                       seed: int) -> Any:
  faiss = _import_faiss()
  quantizer = faiss.ProductQuantizer(dim, num_subquantizers, nbits)
  quantizer.cp.seed = seed
  # faiss warns below 39 training points per codeword; a bank of a few
  # thousand centres (CUB: 5,994) is the normal case here, not a mistake.
  quantizer.cp.min_points_per_centroid = 1
  return quantizer


def compress(
    centres: np.ndarray,
    labels: np.ndarray,
    *,
    bytes_per_centre: int = 16,
    nbits: int = 8,
    opq: bool = True,
    log_weights: np.ndarray | None = None,
    seed: int = 0,
    max_training_points: int | None = None,
    opq_iterations: int = 50,
) -> CompressedBank:
  r"""Compresses a centre bank with (optimized) product quantization.

  ``M = bytes_per_centre * 8 / nbits`` sub-quantizers of ``2**nbits``
  codewords each. With ``opq=True`` the rotation :math:`R` and the codebooks
  :math:`C` minimise the reconstruction error jointly (faiss's
  ``OPQMatrix``: ``opq_iterations`` alternations of product k-means, 4
  iterations each, 40 the first, and an orthogonal Procrustes step, started
  from a random rotation drawn from ``seed``):

  .. math::
    \min_{R^\top R = I,\; C} \sum_n \min_{b}
      \lVert R\, c_n - [C_1[b_1], \dots, C_M[b_M]] \rVert^2

  then a fresh product quantizer (faiss's ``ProductQuantizer``, k-means
  seeded with ``seed``) is trained on the rotated centres and every centre
  is encoded by its nearest codeword per sub-space. With ``opq=False``,
  :math:`R = I` (plain PQ).

  Training uses at most ``max_training_points`` centres, drawn with
  ``seed``; all are encoded. Fewer than 39 centres per codeword (faiss's
  comfort level, 9,984 at 8 bits) is fine: k-means still runs, with noisier
  codebooks. Fewer than ``2**nbits`` is refused: k-means cannot place that
  many codewords.

  Args:
    centres: ``[N, D]`` float, finite.
    labels: ``[N]`` int centre labels.
    bytes_per_centre: code bytes per centre; ``bytes_per_centre * 8`` must
      be a multiple of ``nbits`` and ``M`` must divide ``D``.
    nbits: bits per code, 1 to 8 (8: one byte per sub-quantizer).
    opq: learn the rotation (OPQ); False: identity (PQ).
    log_weights: optional ``[N]`` float NNGK log-weights, kept as they are.
    seed: seed of the subsample, the initial rotation and k-means.
    max_training_points: cap on the training subsample (``None``:
      ``DEFAULT_MAX_TRAINING_POINTS``, 65,536); at least ``2**nbits``.
    opq_iterations: alternations of the OPQ training (faiss's default, 50),
      which dominate its cost: 6,000 centres of 128 dimensions at 16 bytes
      took 24-50 s on a shared 2-core CPU, against 1-11 s with
      ``opq=False``.

  Returns:
    A :class:`CompressedBank`.

  Raises:
    ValueError: on non-finite centres, labels or log-weights of the wrong
      length, a byte budget that does not fit ``D`` (the message lists the
      ones that do), fewer centres (or training points) than ``2**nbits``.

  Examples:
    >>> import numpy as np
    >>> centres = np.random.default_rng(0).normal(size=(500, 16))
    >>> bank = compress(centres, np.zeros(500, int), bytes_per_centre=4)
    >>> bank.num_centres, bank.dim, bank.num_subquantizers, bank.nbits
    (500, 16, 4, 8)
    >>> bool(np.allclose(bank.rotation @ bank.rotation.T, np.eye(16),
    ...                  atol=1e-5))
    True
    >>> compress(centres, np.zeros(500, int), bytes_per_centre=3)
    Traceback (most recent call last):
    ...
    ValueError: bytes_per_centre=3 at nbits=8 gives M=3 sub-quantizers, which does not divide D=16; valid budgets: [1, 2, 4, 8, 16]

  References:
    Ge, He, Ke and Sun, "Optimized Product Quantization", TPAMI 2014;
    Lebedev, Babenko and Lempitsky, "Impostor Networks for Fast
    Fine-Grained Recognition", arXiv:1806.05217.
  """
  centres = np.asarray(centres)
  check_rank("centres", centres, 2, "[num_centres, dim]")
  check_dtype("centres", centres, "float")
  check_finite_rows("centres", centres)
  centres = np.ascontiguousarray(centres, np.float32)
  num_centres, dim = centres.shape
  labels = np.asarray(labels)
  check_rank("labels", labels, 1, "[num_centres]")
  check_dtype("labels", labels, "int")
  if labels.shape[0] != num_centres:
    raise ValueError(
        f"labels has {labels.shape[0]} entries for {num_centres} centres")
  if log_weights is not None:
    log_weights = np.asarray(log_weights)
    check_rank("log_weights", log_weights, 1, "[num_centres]")
    check_dtype("log_weights", log_weights, "float")
    if log_weights.shape[0] != num_centres:
      raise ValueError(f"log_weights has {log_weights.shape[0]} entries for "
                       f"{num_centres} centres")
    check_finite_rows("log_weights", log_weights)
  bytes_per_centre = positive_int("bytes_per_centre", bytes_per_centre)
  nbits = positive_int("nbits", nbits)
  if nbits > 8:
    raise ValueError(f"nbits must be between 1 and 8, got {nbits}")
  if bytes_per_centre * 8 % nbits:
    raise ValueError(
        f"bytes_per_centre * 8 = {bytes_per_centre * 8} bits is not a "
        f"multiple of nbits={nbits}")
  num_subquantizers = bytes_per_centre * 8 // nbits
  if dim % num_subquantizers:
    raise ValueError(
        f"bytes_per_centre={bytes_per_centre} at nbits={nbits} gives "
        f"M={num_subquantizers} sub-quantizers, which does not divide D={dim};"
        f" valid budgets: {_valid_byte_budgets(dim, nbits)}")
  codebook_size = 2**nbits
  if num_centres < codebook_size:
    raise ValueError(
        f"compress needs at least 2**nbits = {codebook_size} centres to train "
        f"{codebook_size} codewords per sub-quantizer, got {num_centres}; "
        f"lower nbits or keep this bank uncompressed")
  if max_training_points is None:
    max_training_points = DEFAULT_MAX_TRAINING_POINTS
  max_training_points = positive_int("max_training_points",
                                     max_training_points)
  if max_training_points < codebook_size:
    raise ValueError(
        f"max_training_points={max_training_points} is below the "
        f"{codebook_size} codewords per sub-quantizer (2**nbits)")
  opq_iterations = positive_int("opq_iterations", opq_iterations)
  if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool):
    raise ValueError(f"seed must be an integer, got {seed!r}")
  faiss = _import_faiss()
  rng = np.random.default_rng(seed)
  training = centres
  if num_centres > max_training_points:
    rows = np.sort(rng.choice(num_centres, max_training_points, replace=False))
    training = np.ascontiguousarray(centres[rows])
  faiss_seed = int(seed) % (1 << 31)

  rotation = np.eye(dim, dtype=np.float32)
  if opq:
    transform = faiss.OPQMatrix(dim, num_subquantizers)
    transform.max_train_points = len(training)  # subsampled above, by seed
    transform.niter = opq_iterations
    # The alternation's product quantizer: ours, for its seed and silence.
    inner = _product_quantizer(dim, num_subquantizers, nbits, faiss_seed)
    transform.pq = inner
    # Its starting rotation: random orthogonal from ``seed`` (faiss's own
    # start is a fixed seed, 1234).
    start, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
    faiss.copy_array_to_vector(start.astype(np.float32).ravel(), transform.A)
    transform.train(training)
    rotation = _rotation_matrix(transform)
    del inner  # referenced by ``transform`` until here

  quantizer = _product_quantizer(dim, num_subquantizers, nbits, faiss_seed)
  quantizer.train(np.ascontiguousarray(training @ rotation.T))
  codebooks = faiss.vector_to_array(quantizer.centroids).reshape(
      num_subquantizers, codebook_size, dim // num_subquantizers)
  packed = quantizer.compute_codes(np.ascontiguousarray(centres @ rotation.T))
  return CompressedBank(
      rotation=rotation,
      codebooks=codebooks.astype(np.float32),
      codes=_unpack_codes(packed, num_subquantizers, nbits),
      labels=labels.astype(np.int32),
      log_weights=(None if log_weights is None
                   else log_weights.astype(np.float32)))

"""Euclidean geometry of embeddings: squared distances and L2 normalisation.

The one home of the two operations that the losses, the neighbour searches
and the metrics share:

* :func:`pairwise_squared_distances`: every query against every data point
  (or a batch against itself), either from explicit differences (exact,
  ``[Q, N, D]`` memory: the losses) or from the ``|q|^2 + |x|^2 - 2 q.x``
  expansion (one matmul, ``[Q, N]`` memory: the exact k-NN search over
  tens of thousands of points).
* :func:`l2_normalize`: vectors scaled to unit norm, finite in value and
  gradient at the zero vector and free of overflow and underflow at any
  scale.

Both are pure and jit-able; they take JAX or NumPy arrays and return JAX
arrays (callers on the host wrap them in ``np.asarray``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from nngk_jax.checks import check_dtype
from nngk_jax.checks import check_rank

__all__ = [
    "DISTANCE_METHODS",
    "NORM_EPSILON",
    "l2_normalize",
    "pairwise_squared_distances",
]

#: Formulations of :func:`pairwise_squared_distances`.
DISTANCE_METHODS = ("difference", "matmul")

# Vectors shorter than this are divided by it instead of by their norm (as in
# torch.nn.functional.normalize), so a zero vector maps to zero, not NaN.
NORM_EPSILON = 1e-12


def pairwise_squared_distances(
    queries: jax.Array,
    data: jax.Array | None = None,
    *,
    method: str = "difference",
) -> jax.Array:
  r"""Squared Euclidean distances between every query and every data point.

  .. math::
    d_{ij} = \lVert q_i - x_j \rVert_2^2 = \sum_k (q_{ik} - x_{jk})^2

  With ``data=None`` the queries are measured against themselves (a batch's
  ``[B, B]`` distance matrix). Two formulations:

  * ``"difference"`` (default): summed over explicit differences. Exact for
    equal rows (0, with gradient 0, which the triplet loss's safe square
    root relies on), never negative, and accurate far from the origin
    (norms of 1e4 in float32), at the cost of a ``[Q, N, D]``
    intermediate. For the losses, over one batch.
  * ``"matmul"``: the expansion
    :math:`\lVert q_i \rVert^2 + \lVert x_j \rVert^2 - 2\, q_i \cdot x_j`,
    one matmul and ``[Q, N]`` memory, clipped at zero (rounding can take it
    slightly negative). It loses about :math:`\epsilon (\lVert q \rVert^2
    + \lVert x \rVert^2)` of absolute accuracy (float32
    :math:`\epsilon \approx 6 \cdot 10^{-8}`), so equal rows may come out
    slightly positive; with ``data=None`` the diagonal is set to exactly 0.
    For the exact k-NN search, where ``[Q, N, D]`` would not fit.

  Gradients are finite everywhere in both (no square root is taken).

  Args:
    queries: ``[num_queries, dim]`` float.
    data: ``[num_data, dim]`` float, or None for ``queries`` itself.
    method: ``"difference"`` or ``"matmul"`` (a Python string).

  Returns:
    ``[num_queries, num_data]`` squared distances, ``>= 0``; symmetric with
    a zero diagonal when ``data`` is None.

  Raises:
    ValueError: on non-2-D or non-float arrays, different ``dim``, or an
      unknown ``method``.

  Examples:
    >>> import jax.numpy as jnp
    >>> pairwise_squared_distances(jnp.array([[0., 0.], [3., 4.]])).tolist()
    [[0.0, 25.0], [25.0, 0.0]]
    >>> d = pairwise_squared_distances(jnp.zeros((1, 2)), jnp.array([[3., 4.]]),
    ...                                method="matmul")
    >>> d.tolist()
    [[25.0]]
  """
  if method not in DISTANCE_METHODS:
    raise ValueError(
        f"pairwise_squared_distances: unknown method {method!r}; use one of"
        f" {DISTANCE_METHODS}")
  check_rank("queries", queries, 2, "[num_queries, dim]")
  check_dtype("queries", queries, "float")
  if data is not None:
    check_rank("data", data, 2, "[num_data, dim]")
    check_dtype("data", data, "float")
    if jnp.shape(data)[1] != jnp.shape(queries)[1]:
      raise ValueError(
          f"queries are {jnp.shape(queries)[1]}-D but data are"
          f" {jnp.shape(data)[1]}-D (shapes {jnp.shape(queries)} and"
          f" {jnp.shape(data)})")
  queries = jnp.asarray(queries)
  others = queries if data is None else jnp.asarray(data)
  if method == "difference":
    diff = queries[:, None, :] - others[None, :, :]
    return jnp.sum(diff * diff, axis=-1)
  q2 = jnp.sum(queries * queries, axis=-1)[:, None]
  x2 = jnp.sum(others * others, axis=-1)[None, :]
  cross = queries @ others.T
  squared = jnp.maximum(q2 + x2 - 2.0 * cross, 0.0)
  if data is None:
    squared = jnp.where(jnp.eye(squared.shape[0], dtype=bool), 0.0, squared)
  return squared


def l2_normalize(x: jax.Array, axis: int = -1,
                 eps: float = NORM_EPSILON) -> jax.Array:
  r"""Scales vectors to unit L2 norm; finite value and gradient at 0.

  .. math::
    \hat x = \frac{x}{\max(\lVert x \rVert_2, \epsilon)}

  Each vector is first divided by the power of two :math:`2^e` with
  :math:`\max_k |x_k| / 2^e \in [1, 2)`. The division is exact, and the
  squared norm is then summed over numbers of at most 4, so neither
  overflows nor underflows at any scale (1e-30 or 1e30 in float32); in the
  ordinary range the result is that of ``x * rsqrt(sum(x^2))``. The scale
  carries no gradient (the result does not depend on it).

  A vector of norm below ``eps`` is divided by ``eps`` (as
  ``torch.nn.functional.normalize``): it comes out with norm below 1, the
  zero vector stays zero, and the gradient there is the finite
  ``1 / eps`` (the norm itself has a NaN gradient at 0). ``eps=0`` gives
  every nonzero vector unit norm, however short, and keeps the zero vector
  zero, with gradient 1. ``eps**2`` is formed in the working dtype: in
  float32 keep ``eps`` above about 1e-19.

  The computation is done in at least float32, so half-precision inputs do
  not underflow ``eps**2``; the result has that promoted dtype.

  Args:
    x: float array of vectors along ``axis``, e.g. ``[batch, dim]``; a
      NumPy array works (the result is a JAX array).
    axis: the vector axis.
    eps: smallest norm divided by, ``>= 0`` (a Python float).

  Returns:
    Array of the shape of ``x``; every vector of norm at least ``eps`` (any
    nonzero vector when ``eps=0``) has unit norm.

  Raises:
    ValueError: on a negative ``eps``.

  Examples:
    >>> import jax.numpy as jnp
    >>> l2_normalize(jnp.array([[3., 4.], [0., 0.]])).tolist()
    [[0.6000000238418579, 0.800000011920929], [0.0, 0.0]]
    >>> tiny = l2_normalize(jnp.array([3e-30, 4e-30]), eps=0.)
    >>> [round(float(v), 4) for v in tiny]
    [0.6, 0.8]
  """
  if not eps >= 0:
    raise ValueError(f"l2_normalize: eps must be >= 0, got {eps!r}")
  x = jnp.asarray(x)
  x = x.astype(jnp.promote_types(x.dtype, jnp.float32))
  largest = jax.lax.stop_gradient(jnp.max(jnp.abs(x), axis=axis, keepdims=True))
  _, exponent = jnp.frexp(largest)  # largest = m 2^exponent, m in [0.5, 1)
  scale = jnp.ldexp(jnp.ones_like(largest), exponent - 1)
  # The zero vector (or a subnormal one, flushed): no scaling.
  scale = jnp.where((largest > 0) & (scale > 0), scale, 1.0)
  scaled = x / scale
  sq_norm = jnp.sum(scaled * scaled, axis=axis, keepdims=True)
  # sq_norm >= 1 for a nonzero vector; the floor only guards the zero vector.
  unit = scaled * jax.lax.rsqrt(jnp.maximum(sq_norm, 1.0))
  if eps == 0:
    return unit
  # |x|^2 = sq_norm * scale^2: exact, or over/underflowing only far from eps^2.
  short = sq_norm * (scale * scale) < eps * eps
  return jnp.where(short, x * jax.lax.rsqrt(jnp.asarray(eps * eps, x.dtype)),
                   unit)

"""Batch losses over all pairs: NCA and FaceNet's semi-hard triplet loss.

Both are baselines for the kernel losses of this package and use only the
embeddings and labels of one batch. They are pure, jit-able and vmap-able,
return one value per example, and take an optional ``where`` mask (``[B]``
bool) so that padded rows of a fixed-shape batch drop out: a masked row is
neither an anchor (its loss is 0) nor anyone's neighbour, positive or
negative, exactly as if it had been sliced away.

Distances are computed from differences (``[B, B, D]`` memory,
:func:`nngk_jax.geometry.pairwise_squared_distances`), not from the
``|a|^2 + |b|^2 - 2 a.b`` expansion, which loses every digit for embeddings
far from the origin (norms of 1e4 in float32) and can go negative.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

# Shared with nngk.py so that every loss words its errors the same way.
from nngk_jax.checks import check_dtype as _check_dtype
from nngk_jax.checks import (
    check_non_negative_scalar as _check_non_negative_scalar)
from nngk_jax.checks import check_positive_scalar as _check_positive_scalar
from nngk_jax.checks import check_rank as _check_rank
from nngk_jax.geometry import pairwise_squared_distances

__all__ = [
    "nca_loss",
    "triplet_semihard_loss",
]


def _check_batch_inputs(embeddings, labels, where) -> None:
  _check_rank("embeddings", embeddings, 2, "[batch, dim]")
  _check_rank("labels", labels, 1, "[batch]")
  _check_dtype("embeddings", embeddings, "float")
  _check_dtype("labels", labels, "int")
  batch = jnp.shape(embeddings)[0]
  if jnp.shape(labels)[0] != batch:
    raise ValueError(
        f"labels has {jnp.shape(labels)[0]} entries for a batch of {batch} "
        f"embeddings (shapes {jnp.shape(labels)} and {jnp.shape(embeddings)})")
  if where is not None:
    _check_dtype("where", where, "bool")
    if jnp.shape(where) != (batch,):
      raise ValueError(
          f"where must be [batch] = ({batch},), got shape {jnp.shape(where)}")


def _pair_masks(labels, where):
  """``(same_class, valid_pair)``, both ``[B, B]``; the diagonal is invalid."""
  batch = labels.shape[0]
  valid = jnp.ones((batch,), bool) if where is None else where
  valid_pair = valid[:, None] & valid[None, :] & ~jnp.eye(batch, dtype=bool)
  same_class = labels[:, None] == labels[None, :]
  return same_class, valid_pair


def nca_loss(
    embeddings: jax.Array,
    labels: jax.Array,
    *,
    sigma: float | jax.Array = 1.0,
    where: jax.Array | None = None,
) -> jax.Array:
  r"""Per-example Neighbourhood Components Analysis loss over a batch.

  .. math::
    p_i = \frac{\sum_{j \ne i,\, y_j = y_i} \exp(-\lVert x_i - x_j \rVert^2
        / 2\sigma^2)}
      {\sum_{j \ne i} \exp(-\lVert x_i - x_j \rVert^2 / 2\sigma^2)},
    \qquad \ell_i = -\log p_i

  the probability that example :math:`i` picks a neighbour of its own class
  when it picks one at random with Gaussian weights. Goldberger et al. use
  :math:`\exp(-\lVert A x_i - A x_j \rVert^2)`, i.e.
  :math:`\sigma = 1/\sqrt 2` with the projection :math:`A` folded into
  :math:`x`. This is also the NNGK loss with every other batch example as a
  neighbour and unit kernel weights.

  Computed as a difference of two logsumexps, so it is exact and finite at
  any distance (where every kernel underflows in linear space). An example
  with no same-class example among the valid others (alone in its class, or
  a batch of one) has no defined :math:`p_i`: its loss is 0 with zero
  gradient, so it is simply left out (a ``.mean()`` still counts it in the
  denominator; divide by the number of examples with a positive if that
  matters).

  Args:
    embeddings: ``[batch, dim]`` float, :math:`x_i`.
    labels: ``[batch]`` int.
    sigma: positive kernel width :math:`\sigma`.
    where: optional ``[batch]`` bool; ``False`` removes that row from the
      batch (loss 0, not a neighbour of anyone).

  Returns:
    ``[batch]`` losses, each :math:`\ge 0`.

  Raises:
    ValueError: on inconsistent shapes, wrong dtypes or ``sigma <= 0``.

  Examples:
    >>> import jax.numpy as jnp
    >>> loss = nca_loss(jnp.array([[0.], [1.], [2.]]), jnp.array([0, 0, 1]))
    >>> [round(float(v), 4) for v in loss]  # the third is alone in its class
    [0.2014, 0.6931, 0.0]

  References:
    Goldberger, Roweis, Hinton and Salakhutdinov, "Neighbourhood Components
    Analysis", Advances in Neural Information Processing Systems 17
    (NIPS 2004), 2005.
  """
  _check_batch_inputs(embeddings, labels, where)
  _check_positive_scalar("sigma", sigma)
  same_class, valid_pair = _pair_masks(labels, where)
  log_kernel = -pairwise_squared_distances(embeddings) / (2.0 * sigma**2)
  # `where=` gives -inf with a zero (not NaN) gradient on an empty set.
  log_num = jax.nn.logsumexp(log_kernel, axis=1, where=valid_pair & same_class)
  log_den = jax.nn.logsumexp(log_kernel, axis=1, where=valid_pair)
  has_positive = log_num != -jnp.inf  # NaN counts, so NaN stays visible
  return jnp.where(has_positive,
                   log_den - jnp.where(has_positive, log_num, 0.0), 0.0)


def _safe_sqrt(x: jax.Array) -> jax.Array:
  """``sqrt`` with value and gradient 0 at 0 (the subgradient TF uses).

  Tests ``x == 0`` (``x`` is never negative here), so NaN stays NaN.
  """
  zero = x == 0
  return jnp.where(zero, 0.0, jnp.sqrt(jnp.where(zero, 1.0, x)))


def triplet_semihard_loss(
    embeddings: jax.Array,
    labels: jax.Array,
    *,
    margin: float | jax.Array = 0.2,
    squared: bool = False,
    where: jax.Array | None = None,
) -> jax.Array:
  r"""Per-anchor triplet loss with FaceNet's semi-hard negative mining.

  .. math::
    \ell_a = \frac{1}{|P_a|} \sum_{p \in P_a}
      \max\left(0,\ d_{ap} - d_{a n(a,p)} + m\right), \qquad
    n(a, p) = \begin{cases}
      \arg\min_{n \in N_a:\ d_{an} > d_{ap}} d_{an} & \text{if one exists} \\
      \arg\max_{n \in N_a} d_{an} & \text{otherwise}
    \end{cases}

  with :math:`P_a` the other examples of the anchor's class and :math:`N_a`
  the examples of other classes. This is the mining of TensorFlow Addons'
  ``triplet_semihard_loss`` (and ``tf.contrib``'s before it): for each
  anchor-positive pair the negative is the closest one *strictly* farther
  than the positive (if it is farther than :math:`d_{ap} + m` the hinge is 0
  anyway, so that is FaceNet's semi-hard band), and when every negative is
  at most as far as the positive, the farthest negative. Differences from
  TF Addons:

  * TF returns one scalar, the sum over all anchor-positive pairs divided by
    their number. Here each anchor averages over its own positives, so for
    balanced batches (``P`` classes times ``K`` examples) ``.mean()`` equals
    TF's value; in general TF's value is
    :math:`\sum_a |P_a| \ell_a / \sum_a |P_a|`.
  * An anchor with positives but no negative (a single-class batch) has no
    triplet and gets 0; TF falls back to a "negative" at the smallest
    distance in the row, the anchor itself (0), giving
    :math:`d_{ap} + m`.
  * An anchor without positives gets 0 (as in TF, where it has no pairs).

  Distances: ``squared=False`` (default) uses the Euclidean distance, TF
  Addons' default ``distance_metric="L2"``; ``squared=True`` uses its square,
  as FaceNet (margin 0.2 on unit-norm embeddings) and ``tf.contrib`` do. TF
  Addons' default margin is 1.0. At coincident points the Euclidean distance
  has gradient 0 (TF's choice too), so it is finite everywhere. Memory is
  ``O(batch^2 dim)`` (distances) plus a sort of each row, not the
  ``O(batch^3)`` of TF's tiled masks.

  Args:
    embeddings: ``[batch, dim]`` float (FaceNet and TF assume unit norm;
      this function does not normalise).
    labels: ``[batch]`` int.
    margin: non-negative margin :math:`m`.
    squared: use squared Euclidean distances (static bool).
    where: optional ``[batch]`` bool; ``False`` removes that row from the
      batch (loss 0, never a positive or a negative).

  Returns:
    ``[batch]`` losses, each :math:`\ge 0`.

  Raises:
    ValueError: on inconsistent shapes, wrong dtypes or ``margin < 0``.

  Examples:
    >>> import jax.numpy as jnp
    >>> loss = triplet_semihard_loss(
    ...     jnp.array([[0.], [1.], [1.5], [3.]]), jnp.array([0, 0, 1, 1]),
    ...     margin=1.)
    >>> # Anchor 2: its negatives (1.5, 0.5) are no farther than its positive
    >>> # (1.5), so the farthest one is used: 1.5 - 1.5 + 1.
    >>> [round(float(v), 4) for v in loss]
    [0.5, 0.0, 1.0, 0.5]

  References:
    Schroff, Kalenichenko and Philbin, "FaceNet: A Unified Embedding for
    Face Recognition and Clustering", CVPR 2015, arXiv:1503.03832.
    TensorFlow Addons, ``tfa.losses.triplet_semihard_loss``.
  """
  _check_batch_inputs(embeddings, labels, where)
  _check_non_negative_scalar("margin", margin)
  if not isinstance(squared, bool):
    raise ValueError(f"squared must be a Python bool, got {squared!r}")
  same_class, valid_pair = _pair_masks(labels, where)
  positive = valid_pair & same_class
  negative = valid_pair & ~same_class
  sq_dist = pairwise_squared_distances(embeddings)
  dist = sq_dist if squared else _safe_sqrt(sq_dist)
  # Each anchor's negative distances in increasing order, non-negatives last.
  negative_sorted = jnp.sort(jnp.where(negative, dist, jnp.inf), axis=1)
  num_negatives = jnp.sum(negative, axis=1)
  # First negative strictly farther than each positive: searchsorted "right".
  first_farther = jax.vmap(
      lambda row, queries: jnp.searchsorted(row, queries, side="right"))(
          negative_sorted, dist)
  has_farther = first_farther < num_negatives[:, None]
  batch = dist.shape[0]
  farther = jnp.take_along_axis(
      negative_sorted, jnp.minimum(first_farther, batch - 1), axis=1)
  farthest = jnp.take_along_axis(
      negative_sorted, jnp.maximum(num_negatives - 1, 0)[:, None], axis=1)
  chosen_negative = jnp.where(has_farther, farther, farthest)
  in_triplet = positive & (num_negatives > 0)[:, None]
  # Non-triplet entries may hold inf - inf; keep them out of value and grad.
  hinge = jnp.where(
      in_triplet,
      jax.nn.relu(dist - jnp.where(in_triplet, chosen_negative, 0.0) + margin),
      0.0)
  count = jnp.sum(in_triplet, axis=1)
  return jnp.sum(hinge, axis=1) / jnp.maximum(count, 1)

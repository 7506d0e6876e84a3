"""Smooth ranks and a loss built on nonlinear rank approximations.

After Schall, Barthel, Hezel and Jung, "Deep Metric Learning using
Similarities from Nonlinear Rank Approximations" (MMSP 2019,
arXiv:1909.09427). Within a batch, every sample ranks every other sample by
cosine similarity; the rank is made differentiable by replacing each
comparison with a sigmoid of the similarity difference, normalised to
``[0, 1]``, and mapped through a nonlinear transfer function to a
rank-based similarity. The loss then contracts same-class pairs and disperses
other pairs, each pair weighted by how far its rank-based similarity is from
its label's target (1 for the same class, 0 otherwise).

The paper's exact formulas are not public to this project; the loss here is
our own design of that description, and every choice is stated in the
docstring of :func:`rank_approximation_loss`. The functions are pure,
jit-able and vmap-able. Time and memory are ``O(batch^3)``: every query
compares every pair of items (one float32 ``[batch, batch, batch]`` array is
8 MB at batch 128, 512 MB at batch 512).
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from nngk_jax.checks import check_dtype as _check_dtype
from nngk_jax.checks import check_positive_scalar as _check_positive_scalar
from nngk_jax.checks import check_rank as _check_rank
from nngk_jax.checks import is_concrete as _is_concrete
from nngk_jax.geometry import l2_normalize

__all__ = [
    "TRANSFERS",
    "rank_approximation_loss",
    "rank_transfer",
    "smooth_ranks",
]

# Names accepted by `transfer=`; a callable is accepted too.
TRANSFERS = ("power", "exp")










def _check_where(where: Any, batch: int) -> None:
  if where is None:
    return
  _check_rank("where", where, 1, "[batch]")
  _check_dtype("where", where, "bool")
  if jnp.shape(where)[0] != batch:
    raise ValueError(
        f"where has {jnp.shape(where)[0]} entries for a batch of {batch}")


def _valid_mask(where: jax.Array | None, batch: int) -> jax.Array:
  return jnp.ones((batch,), bool) if where is None else jnp.asarray(where)


def _ahead_probabilities(similarities: jax.Array,
                         temperature: float | jax.Array) -> jax.Array:
  """``[B, B, B]``: entry ``[i, j, k]`` is ``sigmoid((s_ik - s_ij) / T)``.

  The smooth indicator that query ``i`` ranks item ``k`` ahead of item ``j``.
  ``jax.nn.sigmoid`` saturates to exactly 0 or 1 without overflow, with a
  finite gradient, at any temperature.
  """
  diff = similarities[:, None, :] - similarities[:, :, None]
  return jax.nn.sigmoid(diff / temperature)


def smooth_ranks(
    similarities: jax.Array,
    *,
    temperature: float | jax.Array,
    where: jax.Array | None = None,
) -> jax.Array:
  r"""Normalised smooth rank of every item for every query in a batch.

  For query :math:`i`, the rank of item :math:`j` among the other valid
  items :math:`V` (rank 1 = most similar) is approximated by replacing the
  step function of each comparison with a sigmoid of temperature
  :math:`\tau`, then mapped to :math:`[0, 1]`:

  .. math::
    r_{ij} = 1 + \sum_{k \in V,\ k \ne i,\ k \ne j}
      \operatorname{sigmoid}\left(\frac{s_{ik} - s_{ij}}{\tau}\right),
    \qquad
    \hat r_{ij} = \frac{r_{ij} - 1}{n - 2}, \quad n = |V|

  so :math:`\hat r = 0` is the top of the ranking and :math:`\hat r = 1` its
  bottom. As :math:`\tau \to 0` the ranks become the hard ranks of distinct
  similarities; tied items share the average rank (each tie contributes
  ``sigmoid(0) = 1/2``), so for example all-equal similarities give
  :math:`\hat r = 1/2` everywhere. For every query the normalised ranks of
  its :math:`n - 1` items average exactly :math:`1/2`.

  Small cases: with :math:`n \le 2` a query has at most one other item,
  which is at rank 1, and :math:`\hat r = 0` (instead of ``0 / 0``). The
  diagonal (:math:`j = i`) and every entry of a masked row or column hold no
  rank and are returned as 0.

  Memory is ``O(batch^3)``.

  Args:
    similarities: ``[batch, batch]`` float, :math:`s_{ij}` is the similarity
      of item :math:`j` to query :math:`i` (larger = closer). Only the
      off-diagonal entries are used.
    temperature: positive scalar :math:`\tau`, in units of similarity; the
      sigmoids are sharp over similarity differences of a few :math:`\tau`.
    where: optional ``[batch]`` bool; ``False`` marks a padded row, which is
      then neither a query nor an item (exactly as if it were sliced away,
      whatever it holds).

  Returns:
    ``[batch, batch]`` normalised ranks :math:`\hat r_{ij} \in [0, 1]`, row
    ``i`` for query ``i``.

  Raises:
    ValueError: on a non-square or non-float ``similarities``, a bad
      ``where``, or a ``temperature`` that is not positive.

  Examples:
    >>> import jax.numpy as jnp
    >>> s = jnp.array([[1.0, 0.9, 0.1], [0.9, 1.0, 0.5], [0.1, 0.5, 1.0]])
    >>> ranks = smooth_ranks(s, temperature=0.01)
    >>> [[round(float(v), 3) for v in row] for row in ranks]
    [[0.0, 0.0, 1.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]]

  References:
    Schall, Barthel, Hezel and Jung, "Deep Metric Learning using
    Similarities from Nonlinear Rank Approximations", MMSP 2019,
    arXiv:1909.09427.
  """
  _check_rank("similarities", similarities, 2, "[batch, batch]")
  _check_dtype("similarities", similarities, "float")
  batch, other = jnp.shape(similarities)
  if batch != other:
    raise ValueError(
        f"similarities must be square [batch, batch], got shape "
        f"{jnp.shape(similarities)}")
  _check_where(where, batch)
  _check_positive_scalar("temperature", temperature)
  valid = _valid_mask(where, batch)
  not_self = ~jnp.eye(batch, dtype=bool)
  has_rank = valid[:, None] & valid[None, :] & not_self
  # Unused entries (diagonal, padding) may hold anything, NaN included; zero
  # them so that neither the ranks nor their gradients see it.
  similarities = jnp.where(has_rank, similarities, 0.0)
  # Items k counted for entry [i, j]: valid, not the query, not j itself.
  counted = (valid[None, None, :] & not_self[:, None, :]
             & not_self[None, :, :])
  ahead = jnp.sum(
      jnp.where(counted, _ahead_probabilities(similarities, temperature), 0.0),
      axis=-1)
  num_valid = jnp.sum(valid)
  denominator = jnp.maximum(num_valid - 2, 1).astype(ahead.dtype)
  return jnp.where(has_rank, ahead / denominator, 0.0)


def _power_transfer(ranks: jax.Array, gamma: float | jax.Array) -> jax.Array:
  """``(1 - r)^gamma`` with a finite gradient at ``r = 1`` for any gamma."""
  remaining = 1.0 - ranks
  positive = remaining > 0
  safe = jnp.where(positive, remaining, 1.0)
  return jnp.where(positive, safe**gamma, 0.0)


def _exp_transfer(ranks: jax.Array, gamma: float | jax.Array) -> jax.Array:
  """``(e^{-g r} - e^{-g}) / (1 - e^{-g})``, overflow-free for large gamma."""
  return (jnp.exp(-gamma * ranks) * jnp.expm1(-gamma * (1.0 - ranks))
          / jnp.expm1(-gamma))


def rank_transfer(
    ranks: jax.Array,
    *,
    transfer: str | Callable[[jax.Array], jax.Array] = "power",
    gamma: float | jax.Array = 2.0,
) -> jax.Array:
  r"""Rank-based similarity: a nonlinear map of normalised ranks.

  Both transfers map :math:`[0, 1]` onto :math:`[1, 0]`, decreasing, with
  :math:`\gamma > 0` setting how sharply they favour the top of the
  ranking (:math:`\gamma = 1` power is linear, :math:`\gamma \to 0` exp is
  linear):

  .. math::
    \phi_{\text{power}}(r) = (1 - r)^{\gamma}, \qquad
    \phi_{\text{exp}}(r) = \frac{e^{-\gamma r} - e^{-\gamma}}{1 - e^{-\gamma}}

  Ranks are clipped to :math:`[0, 1]` first, so rounding cannot produce a
  negative base.

  Args:
    ranks: float array of any shape, normalised ranks in :math:`[0, 1]`.
    transfer: ``"power"`` or ``"exp"``, or a callable ``phi(ranks)`` that is
      decreasing with ``phi(0) = 1`` and ``phi(1) = 0`` (``gamma`` is then
      ignored).
    gamma: positive sharpness :math:`\gamma`.

  Returns:
    Rank-based similarities in :math:`[0, 1]`, the shape of ``ranks``.

  Raises:
    ValueError: on an unknown ``transfer`` or a ``gamma`` that is not
      positive.

  Examples:
    >>> import jax.numpy as jnp
    >>> [round(float(v), 4) for v in rank_transfer(jnp.array([0., .5, 1.]))]
    [1.0, 0.25, 0.0]
  """
  _check_transfer(transfer, gamma)
  ranks = jnp.clip(ranks, 0.0, 1.0)
  if callable(transfer):
    return transfer(ranks)
  if transfer == "power":
    return _power_transfer(ranks, gamma)
  return _exp_transfer(ranks, gamma)


def _check_transfer(transfer: Any, gamma: Any) -> None:
  if callable(transfer):
    return
  if transfer not in TRANSFERS:
    raise ValueError(
        f"transfer must be one of {TRANSFERS} or a callable, got {transfer!r}")
  _check_positive_scalar("gamma", gamma)


def _check_loss_inputs(embeddings, labels, where, temperature, transfer, gamma,
                       margin) -> None:
  _check_rank("embeddings", embeddings, 2, "[batch, dim]")
  _check_dtype("embeddings", embeddings, "float")
  _check_rank("labels", labels, 1, "[batch]")
  _check_dtype("labels", labels, "int")
  batch = jnp.shape(embeddings)[0]
  if jnp.shape(labels)[0] != batch:
    raise ValueError(
        f"labels has {jnp.shape(labels)[0]} entries for a batch of {batch} "
        f"embeddings")
  _check_where(where, batch)
  _check_positive_scalar("temperature", temperature)
  _check_transfer(transfer, gamma)
  if _is_concrete(margin):
    value = np.asarray(margin)
    if value.ndim != 0 or not -1.0 <= value < 1.0:
      raise ValueError(f"margin must be a scalar in [-1, 1), got {margin!r}")


def rank_approximation_loss(
    embeddings: jax.Array,
    labels: jax.Array,
    *,
    temperature: float | jax.Array = 0.01,
    transfer: str | Callable[[jax.Array], jax.Array] = "power",
    gamma: float | jax.Array = 2.0,
    margin: float | jax.Array = 0.0,
    where: jax.Array | None = None,
) -> jax.Array:
  r"""Per-query loss from similarities of nonlinear rank approximations.

  Each valid sample :math:`i` (``where``) is a query against the other valid
  samples :math:`V` of the batch, with cosine similarities
  :math:`s_{ij} = \langle \hat e_i, \hat e_j \rangle` of the L2-normalised
  embeddings, positives :math:`P_i = \{j \in V : j \ne i,\ y_j = y_i\}` and
  negatives :math:`N_i = \{k \in V : y_k \ne y_i\}`. With
  :math:`\sigma_\tau(x) = \operatorname{sigmoid}(x / \tau)`, each pair gets a
  smooth normalised rank against the opposite set,

  .. math::
    \rho^+_{ij} = \frac{1}{|N_i|} \sum_{k \in N_i}
      \sigma_\tau(s_{ik} - s_{ij}) \quad (j \in P_i), \qquad
    \rho^-_{ik} = \frac{1}{|P_i|} \sum_{j \in P_i}
      \sigma_\tau(s_{ij} - s_{ik}) \quad (k \in N_i),

  the share of negatives ranked ahead of positive :math:`j`, and of
  positives ranked ahead of negative :math:`k` (0 = top). A nonlinear
  transfer :math:`\phi` (:func:`rank_transfer`: ``"power"``
  :math:`(1 - \rho)^\gamma` or ``"exp"``) turns a rank into a rank-based
  similarity :math:`q = \phi(\rho) \in [0, 1]`. Each pair is weighted by the
  gap between that similarity and its label's target (1 for positives, 0
  for negatives), and the loss contracts positives and disperses negatives:

  .. math::
    \ell_i = \frac{1}{|P_i|} \sum_{j \in P_i}
        \bigl(1 - \phi(\rho^+_{ij})\bigr) (1 - s_{ij})
      + \frac{1}{|N_i|} \sum_{k \in N_i}
        \phi(\rho^-_{ik}) \, [s_{ik} - m]_+

  So a positive ranked behind many negatives is pulled hard and one ranked
  ahead of all of them hardly at all; a negative ranked ahead of all
  positives is pushed with weight 1 and one behind them all not at all. Like
  other ranking losses it goes to 0 once every positive of a query is ranked
  ahead of every negative by several :math:`\tau`: what counts is the
  retrieval order, not how tight the classes are.

  Design choices (the paper's formulas are not public here):

  * Ranks are taken against the opposite set, not among all items as in
    :func:`smooth_ranks`: :math:`|N_i| \rho^+_{ij}` is the full smooth rank
    :math:`r_{ij} - 1` minus the positives ahead of :math:`j`. With full
    ranks a positive's pull weight grows when another positive overtakes it
    (and a negative's push weight when another negative falls behind it), so
    near such crossings, within a few :math:`\tau`, moving a positive closer
    can raise the loss, and moving a negative closer can lower it. Against
    the opposite set that cannot happen: raising :math:`s_{ij}` of a
    positive never increases :math:`\ell_i`, and raising :math:`s_{ik}` of
    a negative never decreases it, in any configuration.
  * The sums are divided by the counts :math:`|P_i|, |N_i|`, not by the
    sums of the weights, for the same monotonicity.
  * Gradients flow through the weights as well as the similarities.

  Edge cases, all finite for finite inputs:

  * A query with no positive or no negative among the valid samples has no
    ranking to improve: loss 0, zero gradient (a single-class batch gives
    all zeros). A plain ``.mean()`` counts such queries as zeros; to average
    over the others, divide the sum by their number instead.
  * A masked query gets 0.
  * Embeddings of any scale are normalised without overflow; an all-zero
    embedding has similarity 0 to everything.
  * Ties (e.g. all-equal embeddings) give average ranks.
  * ``temperature`` may be as small as you like: the sigmoids saturate
    without overflow.

  Memory is ``O(batch^3)``.

  Args:
    embeddings: ``[batch, dim]`` float, unnormalised.
    labels: ``[batch]`` int class labels.
    temperature: positive sigmoid temperature :math:`\tau`, in units of
      cosine similarity.
    transfer: ``"power"``, ``"exp"`` or a callable :math:`\phi` (see
      :func:`rank_transfer`); static, so name it in ``static_argnames``
      when you ``jax.jit`` this function directly.
    gamma: positive sharpness :math:`\gamma` of the transfer.
    margin: :math:`m \in [-1, 1)`; negatives with :math:`s_{ik} \le m` are
      not pushed (:math:`m = -1` pushes every negative).
    where: optional ``[batch]`` bool; ``False`` marks a padded row, which is
      then neither a query (loss 0) nor an item of any other query, exactly
      as if it were sliced away (whatever it holds, NaN included; it gets a
      zero gradient).

  Returns:
    ``[batch]`` losses, one per query; reduce them (``.mean()``) as you see
    fit.

  Raises:
    ValueError: on inconsistent shapes or dtypes, a ``temperature`` or
      ``gamma`` that is not positive, an unknown ``transfer``, or a
      ``margin`` outside ``[-1, 1)``.

  Examples:
    >>> import jax.numpy as jnp
    >>> labels = jnp.array([0, 0, 1])
    >>> good = rank_approximation_loss(                  # positive ahead
    ...     jnp.array([[1., 0.], [.8, .6], [.6, .8]]), labels)
    >>> bad = rank_approximation_loss(                   # negative ahead
    ...     jnp.array([[1., 0.], [.6, .8], [.8, .6]]), labels)
    >>> round(float(good[0]), 4), round(float(bad[0]), 4)
    (0.0, 1.2)

  References:
    Schall, Barthel, Hezel and Jung, "Deep Metric Learning using
    Similarities from Nonlinear Rank Approximations", MMSP 2019,
    arXiv:1909.09427.
  """
  _check_loss_inputs(embeddings, labels, where, temperature, transfer, gamma,
                     margin)
  batch = jnp.shape(embeddings)[0]
  labels = jnp.asarray(labels)
  valid = _valid_mask(where, batch)
  # Padded rows may hold anything, NaN included: zero them first.
  # eps=0: every nonzero row gets unit norm at any scale (cosines are scale
  # free); an all-zero row stays zero (cosine 0 with anything).
  unit = l2_normalize(jnp.where(valid[:, None], embeddings, 0.0), eps=0.0)
  similarities = jnp.matmul(unit, unit.T,
                            precision=jax.lax.Precision.HIGHEST)
  pair_valid = valid[:, None] & valid[None, :]
  same = labels[:, None] == labels[None, :]
  positive = pair_valid & same & ~jnp.eye(batch, dtype=bool)
  negative = pair_valid & ~same
  num_positive = jnp.sum(positive, axis=1)
  num_negative = jnp.sum(negative, axis=1)
  dtype = similarities.dtype

  ahead = _ahead_probabilities(similarities, temperature)  # [i, j, k]
  # Negatives ahead of each item, and positives ahead of each item. For
  # j in P_i the first never counts j itself (j is no negative); likewise the
  # second for k in N_i.
  negatives_ahead = jnp.einsum("ijk,ik->ij", ahead, negative.astype(dtype),
                               precision=jax.lax.Precision.HIGHEST)
  positives_ahead = jnp.einsum("ijk,ik->ij", ahead, positive.astype(dtype),
                               precision=jax.lax.Precision.HIGHEST)
  safe_pos = jnp.maximum(num_positive, 1).astype(dtype)[:, None]
  safe_neg = jnp.maximum(num_negative, 1).astype(dtype)[:, None]
  positive_rank = negatives_ahead / safe_neg  # rho^+, used where positive
  negative_rank = positives_ahead / safe_pos  # rho^-, used where negative

  pull_weight = 1.0 - rank_transfer(positive_rank, transfer=transfer,
                                    gamma=gamma)
  push_weight = rank_transfer(negative_rank, transfer=transfer, gamma=gamma)
  pull = jnp.where(positive, pull_weight * (1.0 - similarities), 0.0)
  push = jnp.where(negative,
                   push_weight * jax.nn.relu(similarities - margin), 0.0)
  loss = (jnp.sum(pull, axis=1) / safe_pos[:, 0]
          + jnp.sum(push, axis=1) / safe_neg[:, 0])
  has_ranking = valid & (num_positive > 0) & (num_negative > 0)
  return jnp.where(has_ranking, loss, 0.0)

"""The Group Loss: label propagation by replicator dynamics inside a batch.

Elezi, Vascon, Torcinovich, Pelillo and Leal-Taixe (ECCV 2020) treat a batch
as a graph whose edge weights are the (non-negative) Pearson correlations of
the embeddings. Each example starts from a class distribution: the softmax of
a linear classifier's logits at temperature ``T`` for most examples, the
one-hot label for a few labelled "anchors" per class. Replicator dynamics
(a graph transduction game) then let every example's distribution be pulled
towards those of the examples it is correlated with, and the loss is the
negative log-probability of the true class after refinement. The released
recipe adds the plain cross-entropy of the logits (:func:`group_loss_with_ce`).

The functions here are pure, jit-able and vmap-able; the anchors are a fixed-
shape boolean mask chosen on the host (:func:`choose_anchors`).

Numerics. The dynamics run in log space: ``log x`` is updated by adding
``log (W x)`` and subtracting a logsumexp over classes, and ``W x`` is a
matrix product of ``exp(log x - m_c)`` with a per-class shift ``m_c``, so
tiny probabilities do not underflow to 0 in the product and no ``[B, B, C]``
tensor is built (memory ``O(B^2 + B C)``). The Pearson correlation is
computed on rows divided by their largest centred entry first, so it is
exact and finite for embeddings of any norm.

Choices, each documented where it applies:

* Diagonal of ``W``. The official code (``dvl-tum/group_loss``, ``gtg.py``,
  ``_get_W``) keeps the self-correlation of 1 on the diagonal, although its
  ``dynamics.py`` says "with zero diagonal" and graph transduction games have
  none. The default here is the zero diagonal (an example does not vote for
  itself); ``zero_diagonal=False`` reproduces the official code, where
  ``W = I`` sharpens the prior to ``softmax(2 z / T)`` in one step.
* A row of ``x * (W x)`` that is all zero (the example is correlated with
  nothing, or only with examples that give its classes no mass) cannot be
  renormalised; that example keeps its previous distribution for that step
  (with a zero diagonal and ``W = 0`` the loss is then the tempered
  cross-entropy). With the official diagonal of 1 this only happens to rows
  with zero variance (below); a plain ``x / x.sum()`` would give 0 / 0 = NaN.
* Anchors keep their one-hot row (the dynamics cannot move it) and their
  loss is reported as exactly 0 (the official ``-log(1 + 1e-12)``).
* Embeddings with zero variance across their features have no Pearson
  correlation; they are given correlation 0 with every example, including
  themselves (the official code gives NaN).
* NaN is never hidden: a NaN embedding makes the correlations, and so the
  losses, of every example connected to it NaN (anchors still report 0).
"""

from __future__ import annotations

import math
import operator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

# Shared with nngk.py so that every loss words its errors the same way.
from nngk_jax.checks import check_dtype as _check_dtype
from nngk_jax.checks import check_positive_scalar as _check_positive_scalar
from nngk_jax.checks import check_rank as _check_rank
from nngk_jax.checks import is_concrete as _is_concrete
from nngk_jax.checks import non_negative_int
from nngk_jax.geometry import l2_normalize

__all__ = [
    "GROUP_LOSS_EPSILON",
    "choose_anchors",
    "group_log_probs",
    "group_loss",
    "group_loss_with_ce",
    "pearson_affinity",
]

# The official code takes log(x + 1e-12) before the NLL (loss <= 27.63).
GROUP_LOSS_EPSILON = 1e-12

_HIGHEST = jax.lax.Precision.HIGHEST


def _check_group_inputs(embeddings, logits, labels, anchor_mask) -> None:
  """Cheap shape, dtype and (when concrete) label-range checks."""
  _check_rank("embeddings", embeddings, 2, "[batch, dim]")
  _check_rank("logits", logits, 2, "[batch, num_classes]")
  _check_rank("labels", labels, 1, "[batch]")
  _check_rank("anchor_mask", anchor_mask, 1, "[batch]")
  _check_dtype("embeddings", embeddings, "float")
  _check_dtype("logits", logits, "float")
  _check_dtype("labels", labels, "int")
  _check_dtype("anchor_mask", anchor_mask, "bool")
  batch = jnp.shape(embeddings)[0]
  for name, x in (("logits", logits), ("labels", labels),
                  ("anchor_mask", anchor_mask)):
    if jnp.shape(x)[0] != batch:
      raise ValueError(
          f"{name} has {jnp.shape(x)[0]} rows for a batch of {batch} "
          f"embeddings (shapes {jnp.shape(x)} and {jnp.shape(embeddings)})")
  num_classes = jnp.shape(logits)[1]
  if num_classes < 1:
    raise ValueError(f"logits must have at least one class, got shape "
                     f"{jnp.shape(logits)}")
  if _is_concrete(labels) and jnp.size(labels):
    values = np.asarray(labels)
    if values.min() < 0 or values.max() >= num_classes:
      raise ValueError(
          f"labels must lie in [0, {num_classes}) for logits of shape "
          f"{jnp.shape(logits)}, got values in [{values.min()}, "
          f"{values.max()}]")


def pearson_affinity(embeddings: jax.Array, *,
                     zero_diagonal: bool = True) -> jax.Array:
  r"""Non-negative Pearson correlations between the embeddings of a batch.

  .. math::
    W_{ij} = \max\left(0, \frac{(f_i - \bar f_i) \cdot (f_j - \bar f_j)}
      {\lVert f_i - \bar f_i \rVert \, \lVert f_j - \bar f_j \rVert}\right),
    \qquad \bar f_i = \frac{1}{D} \sum_d f_{id}

  (the correlation across features of two embeddings, as in the official
  code), with :math:`W_{ii} = 0` when ``zero_diagonal``. Each centred row is
  normalised by :func:`nngk_jax.geometry.l2_normalize` (scaled by a power
  of two before its norm is taken), so nothing overflows at any norm. A row
  with zero variance gets correlation 0 with every row, and
  a zero (not NaN) gradient; "zero" means that its largest centred entry is
  within rounding error, ``dim * eps * max_d |f_id|``, of 0 (so a constant
  row of 0.3 in float32 is constant, not a pattern of rounding noise).

  Args:
    embeddings: ``[batch, dim]`` float.
    zero_diagonal: set :math:`W_{ii} = 0` (default). ``False`` keeps the
      self-correlation (1 for rows with non-zero variance), as the official
      code does.

  Returns:
    ``[batch, batch]`` symmetric matrix with entries in ``[0, 1]``.

  Raises:
    ValueError: if ``embeddings`` is not a 2-D float array.

  Examples:
    >>> import jax.numpy as jnp
    >>> w = pearson_affinity(jnp.array([[1., 2., 3.], [2., 4., 7.],
    ...                                 [3., 2., 1.]]))
    >>> [[round(float(v), 3) for v in row] for row in w]
    [[0.0, 0.993, 0.0], [0.993, 0.0, 0.0], [0.0, 0.0, 0.0]]

  References:
    Elezi et al., "The Group Loss for Deep Metric Learning", ECCV 2020,
    arXiv:1912.00385.
  """
  _check_rank("embeddings", embeddings, 2, "[batch, dim]")
  _check_dtype("embeddings", embeddings, "float")
  centred = embeddings - jnp.mean(embeddings, axis=1, keepdims=True)
  scale = jax.lax.stop_gradient(
      jnp.max(jnp.abs(centred), axis=1, keepdims=True))
  # A constant row leaves rounding noise of about dim * eps * |f| after
  # centring, which normalising would blow up into a spurious +-1 pattern.
  dim = embeddings.shape[1]
  noise = (dim * jnp.finfo(centred.dtype).eps) * jax.lax.stop_gradient(
      jnp.max(jnp.abs(embeddings), axis=1, keepdims=True))
  # `~(a <= b)` rather than `a > b`, here and below, so NaN stays NaN.
  has_variance = ~(scale <= noise)
  # eps=0: any row with variance gets unit norm, at any scale; the others
  # are zero, with zero gradient.
  unit = l2_normalize(jnp.where(has_variance, centred, 0.0), axis=1, eps=0.0)
  affinity = jax.nn.relu(jnp.matmul(unit, unit.T, precision=_HIGHEST))
  if zero_diagonal:
    affinity = jnp.where(jnp.eye(affinity.shape[0], dtype=bool), 0.0,
                         affinity)
  return affinity


def _replicator_step(affinity: jax.Array, log_x: jax.Array) -> jax.Array:
  """One step ``x <- x * (W x) / sum_c (x * (W x))`` in log space."""
  # W x with a per-class shift: exp(log_x - shift) has a 1 in every column
  # that has any mass, so a term of the product is lost to underflow only
  # when it is below ~1e-38 of that column's largest one.
  shift = jax.lax.stop_gradient(jnp.max(log_x, axis=0))  # [C]
  shift = jnp.where(jnp.isfinite(shift), shift, 0.0)
  support = jnp.matmul(affinity, jnp.exp(log_x - shift), precision=_HIGHEST)
  has_support = support != 0  # support >= 0; NaN stays NaN
  log_support = jnp.where(
      has_support, jnp.log(jnp.where(has_support, support, 1.0)) + shift,
      -jnp.inf)
  log_unnormalised = log_x + log_support
  # `where=` gives -inf with a zero (not NaN) gradient on an all-zero row;
  # NaN entries are kept so that NaN inputs stay visible.
  log_norm = jax.nn.logsumexp(log_unnormalised, axis=1, keepdims=True,
                              where=log_unnormalised != -jnp.inf)
  alive = log_norm != -jnp.inf
  return jnp.where(alive, log_unnormalised - jnp.where(alive, log_norm, 0.0),
                   log_x)


def group_log_probs(
    embeddings: jax.Array,
    logits: jax.Array,
    labels: jax.Array,
    anchor_mask: jax.Array,
    *,
    temperature: float | jax.Array,
    num_iterations: int = 1,
    zero_diagonal: bool = True,
) -> jax.Array:
  r"""Class log-probabilities of the batch after the Group Loss dynamics.

  .. math::
    x_i^{(0)} = \begin{cases} e_{y_i} & i \text{ an anchor} \\
      \operatorname{softmax}(z_i / T) & \text{otherwise} \end{cases}
    \qquad
    x_{ic}^{(t+1)} = \frac{x_{ic}^{(t)} (W x^{(t)})_{ic}}
      {\sum_{c'} x_{ic'}^{(t)} (W x^{(t)})_{ic'}}

  with :math:`W` from :func:`pearson_affinity`, iterated ``num_iterations``
  times (1 in the released configs). A row whose update is all zero keeps its
  previous value for that step (see the module docstring). Anchors stay
  one-hot. Computed in log space: ``-inf`` marks an exact 0.

  Args:
    embeddings: ``[batch, dim]`` float, :math:`f_i` (only their correlations
      matter, so any scale works).
    logits: ``[batch, num_classes]`` float, :math:`z_i`, the classifier
      outputs over all training classes (as in the official code).
    labels: ``[batch]`` int in ``[0, num_classes)``; only the anchors' labels
      are read.
    anchor_mask: ``[batch]`` bool, ``True`` for the labelled anchors (see
      :func:`choose_anchors`).
    temperature: positive softmax temperature :math:`T` (24 / 79 / 54 for
      CUB / Cars / SOP in the official configs).
    num_iterations: number of replicator steps, a static non-negative int.
    zero_diagonal: see :func:`pearson_affinity`; ``False`` is the official
      code's choice.

  Returns:
    ``[batch, num_classes]`` log-probabilities; ``exp`` sums to 1 per row.

  Raises:
    ValueError: on inconsistent shapes, wrong dtypes, labels out of range
      (checked when concrete), ``temperature <= 0`` or a bad
      ``num_iterations``.

  Examples:
    >>> import jax.numpy as jnp
    >>> log_x = group_log_probs(
    ...     jnp.array([[1., 2., 3.], [2., 4., 7.], [3., 2., 1.]]),
    ...     jnp.zeros((3, 2)), jnp.array([0, 0, 1]),
    ...     jnp.array([True, False, False]), temperature=1.)
    >>> print(jnp.round(jnp.exp(log_x), 3))  # row 2 sees nobody: prior kept
    [[1.  0. ]
     [1.  0. ]
     [0.5 0.5]]

  References:
    Elezi et al., "The Group Loss for Deep Metric Learning", ECCV 2020,
    arXiv:1912.00385. Official code: github.com/dvl-tum/group_loss.
  """
  _check_group_inputs(embeddings, logits, labels, anchor_mask)
  _check_positive_scalar("temperature", temperature)
  num_iterations = non_negative_int("num_iterations", num_iterations)
  num_classes = jnp.shape(logits)[1]
  affinity = pearson_affinity(embeddings, zero_diagonal=zero_diagonal)
  log_prior = jax.nn.log_softmax(logits / temperature, axis=1)
  is_label = labels[:, None] == jnp.arange(num_classes)
  log_one_hot = jnp.where(is_label, 0.0, -jnp.inf).astype(log_prior.dtype)
  log_x = jnp.where(anchor_mask[:, None], log_one_hot, log_prior)
  for _ in range(int(num_iterations)):
    log_x = _replicator_step(affinity.astype(log_x.dtype), log_x)
  return log_x


def group_loss(
    embeddings: jax.Array,
    logits: jax.Array,
    labels: jax.Array,
    anchor_mask: jax.Array,
    *,
    temperature: float | jax.Array,
    num_iterations: int = 1,
    zero_diagonal: bool = True,
) -> jax.Array:
  r"""Per-example Group Loss: NLL of the true class after the dynamics.

  .. math::
    \ell_i = -\log\left(x_{i y_i}^{(\tau)} + 10^{-12}\right)

  with :math:`x^{(\tau)}` from :func:`group_log_probs` after
  :math:`\tau` = ``num_iterations`` replicator steps; evaluated as
  ``-logaddexp(log x, log 1e-12)``, so it is finite (at most 27.63) even where
  :math:`x_{iy_i} = 0`. Anchors get exactly 0. This is the official code's
  ``NLLLoss(log(x + 1e-12))`` term only; the recipe adds the cross-entropy
  of the logits (:func:`group_loss_with_ce`). The official reduction is the
  mean over the whole batch, anchors included: ``group_loss(...).mean()``.

  Special cases: with ``num_iterations=0``, or when :math:`W = 0` (zero
  diagonal, all correlations :math:`\le 0`), a non-anchor's loss is the
  cross-entropy of ``logits / temperature`` (up to the :math:`10^{-12}`
  floor).

  Args:
    embeddings: ``[batch, dim]`` float.
    logits: ``[batch, num_classes]`` float.
    labels: ``[batch]`` int in ``[0, num_classes)``.
    anchor_mask: ``[batch]`` bool, ``True`` for the labelled anchors.
    temperature: positive softmax temperature :math:`T`.
    num_iterations: replicator steps (static int, default 1 as released).
    zero_diagonal: ``True`` (default) sets :math:`W_{ii} = 0`; ``False``
      keeps the self-correlation as the official code does.

  Returns:
    ``[batch]`` losses; reduce them (``.mean()``) as you see fit.

  Raises:
    ValueError: as :func:`group_log_probs`.

  Examples:
    >>> import jax.numpy as jnp
    >>> embeddings = jnp.array([[1., 2., 3.], [2., 4., 7.], [3., 2., 1.],
    ...                         [1., 3., 4.]])
    >>> loss = group_loss(
    ...     embeddings, jnp.zeros((4, 2)), jnp.array([0, 0, 1, 1]),
    ...     jnp.array([True, False, False, True]), temperature=1.)
    >>> [round(float(v), 4) for v in loss]  # rows 0 and 3 are anchors
    [0.0, 0.673, 0.6931, 0.0]

  References:
    Elezi et al., "The Group Loss for Deep Metric Learning", ECCV 2020,
    arXiv:1912.00385. Official code: github.com/dvl-tum/group_loss.
  """
  log_x = group_log_probs(
      embeddings, logits, labels, anchor_mask, temperature=temperature,
      num_iterations=num_iterations, zero_diagonal=zero_diagonal)
  log_picked = jnp.take_along_axis(log_x, labels[:, None], axis=1)[:, 0]
  nll = -jnp.logaddexp(log_picked, math.log(GROUP_LOSS_EPSILON))
  return jnp.where(anchor_mask, 0.0, nll)


def group_loss_with_ce(
    embeddings: jax.Array,
    logits: jax.Array,
    labels: jax.Array,
    anchor_mask: jax.Array,
    *,
    temperature: float | jax.Array,
    num_iterations: int = 1,
    zero_diagonal: bool = True,
    nll_weight: float | jax.Array = 1.0,
) -> jax.Array:
  r"""Per-example training objective of the Group Loss recipe.

  .. math::
    L_i = \lambda \, \ell_i + \left(-\log \operatorname{softmax}(z_i)_{y_i}
    \right)

  where :math:`\ell_i` is :func:`group_loss` and the second term is the plain
  cross-entropy of the logits at temperature 1 (the official ``loss =
  scaling_loss * NLL + CE``, ``scaling_loss`` = :math:`\lambda` = 1 by
  default). The cross-entropy is counted for every example, anchors included.

  Args:
    embeddings: ``[batch, dim]`` float.
    logits: ``[batch, num_classes]`` float.
    labels: ``[batch]`` int in ``[0, num_classes)``.
    anchor_mask: ``[batch]`` bool.
    temperature: positive softmax temperature for the dynamics' priors.
    num_iterations: replicator steps (static int).
    zero_diagonal: see :func:`group_loss`.
    nll_weight: :math:`\lambda`, the weight of the Group Loss term.

  Returns:
    ``[batch]`` losses.

  Raises:
    ValueError: as :func:`group_log_probs`.

  Examples:
    >>> import jax.numpy as jnp
    >>> embeddings = jnp.array([[1., 2., 3.], [2., 4., 7.], [3., 2., 1.],
    ...                         [1., 3., 4.]])
    >>> loss = group_loss_with_ce(
    ...     embeddings, jnp.zeros((4, 2)), jnp.array([0, 0, 1, 1]),
    ...     jnp.array([True, False, False, True]), temperature=1.)
    >>> [round(float(v), 4) for v in loss]  # group_loss + log 2 (uniform)
    [0.6931, 1.3662, 1.3863, 0.6931]

  References:
    Elezi et al., "The Group Loss for Deep Metric Learning", ECCV 2020,
    arXiv:1912.00385.
  """
  nll = group_loss(embeddings, logits, labels, anchor_mask,
                   temperature=temperature, num_iterations=num_iterations,
                   zero_diagonal=zero_diagonal)
  log_probs = jax.nn.log_softmax(logits, axis=1)
  cross_entropy = -jnp.take_along_axis(log_probs, labels[:, None], axis=1)[:, 0]
  return nll_weight * nll + cross_entropy


def choose_anchors(labels: Any, num_anchors_per_class: int,
                   seed: int | np.random.Generator | None = None) -> np.ndarray:
  """Host-side choice of the labelled anchors of a batch, as a boolean mask.

  For each class present in ``labels``, ``min(num_anchors_per_class, count)``
  of its examples become anchors: a random choice drawn from ``seed``, or,
  with ``seed=None``, the first ones in batch order (what the official
  ``get_labeled_and_unlabeled_points`` does). A class with no more examples
  than ``num_anchors_per_class`` is all anchors and so contributes no loss.
  Plain numpy, not jit-able; call it in the data pipeline and pass the mask
  to :func:`group_loss`.

  Args:
    labels: ``[batch]`` integer labels (any array-like).
    num_anchors_per_class: non-negative int (2 / 3 / 2 for CUB / Cars / SOP
      in the official configs).
    seed: ``None`` (first in order), an int seed or a
      ``numpy.random.Generator``.

  Returns:
    ``[batch]`` numpy bool array, ``True`` for anchors.

  Raises:
    ValueError: if ``labels`` is not a 1-D integer array or
      ``num_anchors_per_class`` is negative or not an int.

  Examples:
    >>> choose_anchors([3, 3, 3, 1, 1, 7], 2).tolist()
    [True, True, False, True, True, True]
    >>> int(choose_anchors([3, 3, 3, 1, 1, 7], 1, seed=0).sum())
    3

  References:
    Elezi et al., "The Group Loss for Deep Metric Learning", ECCV 2020,
    arXiv:1912.00385.
  """
  labels = np.asarray(labels)
  if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(
        f"labels must be a 1-D integer array, got shape {labels.shape} and "
        f"dtype {labels.dtype}")
  try:
    count = operator.index(num_anchors_per_class)
  except TypeError:
    count = -1
  if isinstance(num_anchors_per_class, bool) or count < 0:
    raise ValueError("num_anchors_per_class must be a non-negative int, got "
                     f"{num_anchors_per_class!r}")
  rng = None if seed is None else np.random.default_rng(seed)
  mask = np.zeros(labels.shape, bool)
  for label in np.unique(labels):
    members = np.flatnonzero(labels == label)
    take = min(count, members.size)
    if rng is not None:
      members = rng.permutation(members)
    mask[members[:take]] = True
  return mask

"""Nearest Neighbour Gaussian Kernel (NNGK) loss and softmax ratio.

Every training embedding is the centre of a Gaussian kernel. A sample's class
probability is the kernel-weighted vote of its K nearest centres and the loss
is its negative log (Meyer, Harwood and Drummond, ICIP 2018). Both functions
here are pure, jit-able and vmap-able; the neighbour indices come from a
host-side graph (``nngk_jax.neighbours``) and are plain integer arrays by the
time they get here.

Everything is computed in log space. With
``log k_j = theta_j - ||f(x) - c_j||^2 / (2 sigma^2)`` the class
log-probability is a difference of two logsumexps, which stays finite and
accurate when every kernel underflows (distances of thousands of sigma), where
the naive ratio of sums is ``0 / 0``.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp

from nngk_jax.checks import check_dtype as _check_dtype
from nngk_jax.checks import check_positive_scalar as _check_positive_scalar
from nngk_jax.checks import check_rank as _check_rank
from nngk_jax.checks import positive_int

__all__ = [
    "MIN_PROBABILITY",
    "gaussian_kernel_loss",
    "kernel_class_log_probs",
    "neighbour_log_kernels",
    "soft_gaussian_kernel_loss",
    "soft_kernel_class_log_probs",
]

# The authors' code stands in this value for the kernel sum of a class with
# no centre among the neighbours (``p_ii[p_ii == 0] = 1e-10``, then it
# normalises). ``gaussian_kernel_loss`` uses it in that case only.
MIN_PROBABILITY = 1e-10


def _check_sigma(sigma: Any) -> None:
  _check_positive_scalar("sigma", sigma)


def _check_bank_inputs(embeddings, centres, centre_labels, neighbour_idx,
                       centre_log_weights, neighbour_mask) -> None:
  """Cheap shape and dtype checks shared by the public functions.

  ``centre_labels`` is ``[num_centres]`` int labels, or, for the soft-label
  functions, ``[num_centres, num_classes]`` float probability rows.
  """
  _check_rank("embeddings", embeddings, 2, "[batch, dim]")
  _check_rank("centres", centres, 2, "[num_centres, dim]")
  _check_rank("neighbour_idx", neighbour_idx, 2, "[batch, k]")
  _check_dtype("embeddings", embeddings, "float")
  _check_dtype("centres", centres, "float")
  _check_dtype("neighbour_idx", neighbour_idx, "int")
  if jnp.ndim(centre_labels) == 2:
    _check_dtype("centre_label_probs", centre_labels, "float")
  else:
    _check_rank("centre_labels", centre_labels, 1, "[num_centres]")
    _check_dtype("centre_labels", centre_labels, "int")
  batch, dim = jnp.shape(embeddings)
  num_centres, centre_dim = jnp.shape(centres)
  if centre_dim != dim:
    raise ValueError(
        f"embeddings are {dim}-D but centres are {centre_dim}-D "
        f"(shapes {jnp.shape(embeddings)} and {jnp.shape(centres)})")
  if jnp.shape(centre_labels)[0] != num_centres:
    name = ("centre_label_probs" if jnp.ndim(centre_labels) == 2
            else "centre_labels")
    raise ValueError(
        f"{name} has {jnp.shape(centre_labels)[0]} entries for "
        f"{num_centres} centres")
  if jnp.shape(neighbour_idx)[0] != batch:
    raise ValueError(
        f"neighbour_idx has {jnp.shape(neighbour_idx)[0]} rows for a batch of "
        f"{batch} embeddings")
  if jnp.shape(neighbour_idx)[1] < 1:
    raise ValueError("neighbour_idx must hold at least one neighbour per row")
  if centre_log_weights is not None:
    _check_rank("centre_log_weights", centre_log_weights, 1, "[num_centres]")
    _check_dtype("centre_log_weights", centre_log_weights, "float")
    if jnp.shape(centre_log_weights)[0] != num_centres:
      raise ValueError(
          f"centre_log_weights has {jnp.shape(centre_log_weights)[0]} entries "
          f"for {num_centres} centres")
  if neighbour_mask is not None:
    _check_dtype("neighbour_mask", neighbour_mask, "bool")
    if jnp.shape(neighbour_mask) != jnp.shape(neighbour_idx):
      raise ValueError(
          f"neighbour_mask has shape {jnp.shape(neighbour_mask)} but "
          f"neighbour_idx has shape {jnp.shape(neighbour_idx)}")


def _check_example_labels(labels, embeddings) -> None:
  """``labels`` is ``[batch]`` int, one per embedding (both losses)."""
  _check_rank("labels", labels, 1, "[batch]")
  _check_dtype("labels", labels, "int")
  if jnp.shape(labels)[0] != jnp.shape(embeddings)[0]:
    raise ValueError(
        f"labels has {jnp.shape(labels)[0]} entries for a batch of "
        f"{jnp.shape(embeddings)[0]} embeddings")


def neighbour_log_kernels(
    embeddings: jax.Array,
    centres: jax.Array,
    neighbour_idx: jax.Array,
    *,
    sigma: float | jax.Array,
    centre_log_weights: jax.Array | None = None,
) -> jax.Array:
  r"""Log Gaussian kernel values between each embedding and its neighbours.

  .. math::
    \log k_{bj} = \theta_{n(b,j)}
      - \frac{\lVert f_b - c_{n(b,j)} \rVert^2}{2 \sigma^2}

  where :math:`n(b, j)` is ``neighbour_idx[b, j]``. The squared distance is
  computed from the difference (not the ``|a|^2 + |b|^2 - 2ab`` expansion),
  so it is exact near zero and its gradient is well defined there.

  Args:
    embeddings: ``[batch, dim]`` float, the :math:`f_b`.
    centres: ``[num_centres, dim]`` float.
    neighbour_idx: ``[batch, k]`` int, indices into ``centres``.
    sigma: positive kernel width.
    centre_log_weights: optional ``[num_centres]`` float :math:`\theta`
      (``None``: all zero, i.e. unit weights).

  Returns:
    ``[batch, k]`` log kernel values.

  Examples:
    >>> import jax.numpy as jnp
    >>> log_k = neighbour_log_kernels(
    ...     jnp.zeros((1, 2)), jnp.array([[3., 4.]]), jnp.array([[0]]), sigma=5.)
    >>> float(log_k[0, 0])
    -0.5
  """
  neighbours = jnp.take(centres, neighbour_idx, axis=0)  # [B, K, D]
  diff = embeddings[:, None, :] - neighbours
  sq_dist = jnp.sum(diff * diff, axis=-1)
  log_k = -sq_dist / (2.0 * jnp.square(sigma))
  if centre_log_weights is not None:
    log_k = log_k + jnp.take(centre_log_weights, neighbour_idx, axis=0)
  return log_k


def _log_numerator_denominator(embeddings, centres, neighbour_idx, same_class,
                               sigma, centre_log_weights, neighbour_mask):
  """``logsumexp`` of the kernels over ``same_class`` and over all valid."""
  log_k = neighbour_log_kernels(
      embeddings, centres, neighbour_idx, sigma=sigma,
      centre_log_weights=centre_log_weights)
  valid = (jnp.ones(log_k.shape, bool) if neighbour_mask is None
           else neighbour_mask)
  # `where=` gives -inf (with a zero, not NaN, gradient) on empty sets.
  if same_class.ndim == 3:  # [B, K, C]: one numerator per class
    log_num = jax.nn.logsumexp(
        log_k[..., None], axis=1, where=same_class & valid[..., None])
  else:
    log_num = jax.nn.logsumexp(log_k, axis=1, where=same_class & valid)
  log_den = jax.nn.logsumexp(log_k, axis=1, where=valid)
  return log_num, log_den


def kernel_class_log_probs(
    embeddings: jax.Array,
    centres: jax.Array,
    centre_labels: jax.Array,
    neighbour_idx: jax.Array,
    *,
    num_classes: int,
    sigma: float | jax.Array,
    centre_log_weights: jax.Array | None = None,
    neighbour_mask: jax.Array | None = None,
) -> jax.Array:
  r"""Class log-probabilities of the NNGK kernel vote (the softmax ratio).

  .. math::
    k_j(x) = w_j \exp\left(-\frac{\lVert f(x) - c_j \rVert^2}{2\sigma^2}\right),
    \qquad w_j = e^{\theta_j}

    p(c \mid x) = \frac{\sum_{j \in N_K(x),\, y_j = c} k_j(x)}
                       {\sum_{j \in N_K(x)} k_j(x)}

  computed as :math:`\log p(c|x) = \operatorname{logsumexp}_{j: y_j = c}
  \log k_j - \operatorname{logsumexp}_j \log k_j`.

  A class with no centre among the (unmasked) neighbours gets probability 0,
  i.e. log-probability ``-inf``. A row whose neighbours are all masked out
  holds no evidence at all and gets the uniform ``-log(num_classes)``. Every
  other entry is finite for finite inputs, at any distance. NaN inputs make
  that row NaN (and only that row), so callers can detect them.

  Memory is ``O(batch * k * num_classes)``.

  Args:
    embeddings: ``[batch, dim]`` float, :math:`f(x)`.
    centres: ``[num_centres, dim]`` float, :math:`c_j`.
    centre_labels: ``[num_centres]`` int in ``[0, num_classes)``.
    neighbour_idx: ``[batch, k]`` int, row ``b`` lists the centres in
      :math:`N_K(x_b)`.
    num_classes: number of classes ``C`` (static).
    sigma: positive kernel width :math:`\sigma`.
    centre_log_weights: optional ``[num_centres]`` float :math:`\theta_j`;
      ``None`` means :math:`w_j = 1`.
    neighbour_mask: optional ``[batch, k]`` bool; ``False`` drops that
      neighbour (exactly as if it were not in the row).

  Returns:
    ``[batch, num_classes]`` log-probabilities; ``exp`` sums to 1 over classes.

  Raises:
    ValueError: on inconsistent shapes, non-float embeddings or centres,
      non-integer labels or indices, or a ``sigma`` that is not positive.

  Examples:
    >>> import jax.numpy as jnp
    >>> centres = jnp.array([[0., 0.], [1., 0.], [5., 5.]])
    >>> log_p = kernel_class_log_probs(
    ...     jnp.array([[0.2, 0.]]), centres, jnp.array([0, 0, 1]),
    ...     jnp.array([[0, 1, 2]]), num_classes=2, sigma=1.)
    >>> [round(float(p), 4) for p in jnp.exp(log_p[0])]
    [1.0, 0.0]

  References:
    Meyer, Harwood and Drummond, "Deep Metric Learning and Image
    Classification with Nearest Neighbour Gaussian Kernels", ICIP 2018,
    arXiv:1705.09780.
  """
  _check_bank_inputs(embeddings, centres, centre_labels, neighbour_idx,
                     centre_log_weights, neighbour_mask)
  _check_sigma(sigma)
  num_classes = positive_int("num_classes", num_classes)
  neighbour_labels = jnp.take(centre_labels, neighbour_idx, axis=0)  # [B, K]
  one_hot = neighbour_labels[..., None] == jnp.arange(num_classes)  # [B,K,C]
  log_num, log_den = _log_numerator_denominator(
      embeddings, centres, neighbour_idx, one_hot, sigma, centre_log_weights,
      neighbour_mask)
  has_evidence = jnp.isfinite(log_den) | jnp.isnan(log_den)
  safe_den = jnp.where(has_evidence, log_den, 0.0)
  log_probs = log_num - safe_den[:, None]
  uniform = -math.log(num_classes)
  return jnp.where(has_evidence[:, None], log_probs, uniform)


def _count_distinct(labels: jax.Array, valid: jax.Array) -> jax.Array:
  """``[batch]`` number of distinct labels among the valid entries of a row."""
  keyed = jnp.sort(jnp.where(valid, labels, -1), axis=1)  # invalid sort first
  first = (keyed[:, :1] >= 0).astype(jnp.int32)[:, 0]
  changes = (keyed[:, 1:] != keyed[:, :-1]) & (keyed[:, 1:] >= 0)
  return first + jnp.sum(changes, axis=1, dtype=jnp.int32)


def gaussian_kernel_loss(
    embeddings: jax.Array,
    labels: jax.Array,
    centres: jax.Array,
    centre_labels: jax.Array,
    neighbour_idx: jax.Array,
    *,
    sigma: float | jax.Array,
    centre_log_weights: jax.Array | None = None,
    neighbour_mask: jax.Array | None = None,
    num_classes: int | None = None,
) -> jax.Array:
  r"""Per-example NNGK loss, the negative log of the kernel vote for the label.

  .. math::
    \ell(x, y) = -\log p(y \mid x), \qquad
    p(y \mid x) = \frac{s_y(x)}{\sum_c s_c(x)}, \qquad
    s_c(x) = \sum_{j \in N_K(x),\, y_j = c} w_j
        e^{-\lVert f(x) - c_j \rVert^2 / 2\sigma^2}

  evaluated in log space (see :func:`kernel_class_log_probs`), without
  building the ``[batch, k, num_classes]`` tensor. No finite log-probability
  is ever clipped: a hard example with ``p(y|x) = 1e-30`` gets loss ``69.1``
  and its full gradient.

  When no centre of class ``y`` is among the unmasked neighbours
  (:math:`s_y = 0`), the loss follows the authors' code, which replaces the
  kernel sum of every class absent from the neighbours by
  :math:`\epsilon = 10^{-10}` (``MIN_PROBABILITY``) before normalising:

  .. math::
    \ell(x, y) = -\log \frac{\epsilon}{S(x) + m(x)\,\epsilon}
      = \log\left(S(x) + m(x)\,\epsilon\right) - \log \epsilon,
    \qquad S(x) = \sum_{j \in N_K(x)} k_j(x)

  with :math:`m(x)` the number of classes absent from the neighbours
  (``num_classes`` minus the distinct neighbour labels; ``1``, the label's
  own class, when ``num_classes`` is not given). Its gradient pushes
  :math:`f(x)` away from its neighbours and lowers their weights
  :math:`\theta_j`, in proportion to :math:`S / (S + m\epsilon)`: strongly
  while the neighbours' kernels are well above :math:`\epsilon`, hardly at
  all once they are far. The value lies between ``log m`` and
  ``log(K max_j w_j + m eps) - log eps`` (``23.03 + log K`` for unit weights).

  Edge cases, all finite for finite inputs:

  * Every neighbour masked out: :math:`S = 0`, loss :math:`\log m` (the
    uniform ``log num_classes`` when ``num_classes`` is given), no gradient.
  * Far-away points: the logsumexp shift keeps ``p(y|x)`` exact even when
    every kernel underflows in linear space.
  * NaN inputs give a NaN loss in that row only.

  Args:
    embeddings: ``[batch, dim]`` float, :math:`f(x)`.
    labels: ``[batch]`` int, the true class :math:`y` of each example.
    centres: ``[num_centres, dim]`` float, :math:`c_j` (the caller decides
      whether they receive gradients; the trainer stops them).
    centre_labels: ``[num_centres]`` int.
    neighbour_idx: ``[batch, k]`` int indices into ``centres``; for a
      training example its own centre must not be among them.
    sigma: positive kernel width :math:`\sigma`.
    centre_log_weights: optional ``[num_centres]`` float :math:`\theta_j`
      (:math:`w_j = e^{\theta_j}`); ``None`` means unit weights.
    neighbour_mask: optional ``[batch, k]`` bool; ``False`` drops that
      neighbour.
    num_classes: optional number of classes ``C`` (static), used only to count
      the absent classes :math:`m` of the no-positive case as the authors'
      code does; ``None`` counts the label's own class only.

  Returns:
    ``[batch]`` losses; reduce them (``.mean()``) as you see fit.

  Raises:
    ValueError: on inconsistent shapes or dtypes, or ``sigma <= 0``.

  Examples:
    >>> import jax.numpy as jnp
    >>> centres = jnp.array([[0., 0.], [1., 0.], [0., 1.]])
    >>> loss = gaussian_kernel_loss(
    ...     jnp.array([[0., 0.]]), jnp.array([0]), centres, jnp.array([0, 0, 1]),
    ...     jnp.array([[0, 1, 2]]), sigma=1.)
    >>> round(float(loss[0]), 4)  # -log((1 + e^-0.5) / (1 + 2 e^-0.5))
    0.3203
    >>> no_positive = gaussian_kernel_loss(  # S = 1 + e^-0.5, m = 1
    ...     jnp.array([[0., 0.]]), jnp.array([1]), centres, jnp.array([0, 0, 2]),
    ...     jnp.array([[0, 1]]), sigma=1.)
    >>> round(float(no_positive[0]), 4)  # log(1 + e^-0.5 + 1e-10) + 23.0259
    23.4999

  References:
    Meyer, Harwood and Drummond, "Deep Metric Learning and Image
    Classification with Nearest Neighbour Gaussian Kernels", ICIP 2018,
    arXiv:1705.09780; the authors' code, ``classifier.py`` of
    github.com/bjmey/gaussian_kernel_metric_learning.
  """
  _check_bank_inputs(embeddings, centres, centre_labels, neighbour_idx,
                     centre_log_weights, neighbour_mask)
  _check_sigma(sigma)
  _check_example_labels(labels, embeddings)
  if num_classes is not None:
    num_classes = positive_int("num_classes", num_classes)
  neighbour_labels = jnp.take(centre_labels, neighbour_idx, axis=0)  # [B, K]
  same_class = neighbour_labels == labels[:, None]
  log_num, log_den = _log_numerator_denominator(
      embeddings, centres, neighbour_idx, same_class, sigma,
      centre_log_weights, neighbour_mask)
  if num_classes is None:
    present = None
  else:
    valid = (jnp.ones(neighbour_labels.shape, bool) if neighbour_mask is None
             else neighbour_mask)
    present = _count_distinct(neighbour_labels, valid)
  return _ratio_or_empty_loss(log_num, log_den, present, num_classes)


def _ratio_or_empty_loss(log_num, log_den, present, num_classes):
  """``log_den - log_num``, or the authors' stand-in where ``log_num = -inf``.

  The stand-in is ``-log(eps / (S + m eps))`` with ``m = num_classes -
  present`` classes absent from the neighbours (at least 1; 1 when
  ``num_classes`` is None).
  """
  # log_num = -inf exactly when no unmasked neighbour votes for the label.
  has_positive = jnp.isfinite(log_num) | jnp.isnan(log_num)
  ratio_loss = log_den - jnp.where(has_positive, log_num, 0.0)
  if num_classes is None:
    absent = jnp.ones(jnp.shape(log_num), jnp.float32)
  else:
    absent = jnp.maximum(num_classes - present, 1).astype(jnp.float32)
  log_eps = math.log(MIN_PROBABILITY)
  safe_den = jnp.where(has_positive, -jnp.inf, log_den)
  empty_loss = jnp.logaddexp(safe_den, jnp.log(absent) + log_eps) - log_eps
  return jnp.where(has_positive, ratio_loss, empty_loss.astype(ratio_loss.dtype))


# ----------------------------------------------------------------------------
# Soft centre labels (continual NNGK, seed 002 eq. 13 makes labels soft).


def _check_soft_inputs(embeddings, centres, centre_label_probs, neighbour_idx,
                       centre_log_weights, neighbour_mask, sigma) -> None:
  _check_rank("centre_label_probs", centre_label_probs, 2,
              "[num_centres, num_classes]")
  _check_bank_inputs(embeddings, centres, centre_label_probs, neighbour_idx,
                     centre_log_weights, neighbour_mask)
  _check_sigma(sigma)


def _soft_neighbour_terms(embeddings, centres, centre_label_probs,
                          neighbour_idx, sigma, centre_log_weights,
                          neighbour_mask):
  """``(log_k [B,K], probs [B,K,C], log_probs [B,K,C], valid [B,K])``.

  ``log_probs`` is ``log y_jc`` where ``y_jc > 0`` and 0 elsewhere (a safe
  value: those entries are excluded with ``where=``, so neither the value
  nor its gradient is ever ``-inf`` times zero).
  """
  log_k = neighbour_log_kernels(
      embeddings, centres, neighbour_idx, sigma=sigma,
      centre_log_weights=centre_log_weights)
  probs = jnp.take(centre_label_probs, neighbour_idx, axis=0)  # [B, K, C]
  safe_log = jnp.log(jnp.where(probs > 0, probs, 1.0))
  valid = (jnp.ones(log_k.shape, bool) if neighbour_mask is None
           else neighbour_mask)
  return log_k, probs, safe_log, valid


def soft_kernel_class_log_probs(
    embeddings: jax.Array,
    centres: jax.Array,
    centre_label_probs: jax.Array,
    neighbour_idx: jax.Array,
    *,
    sigma: float | jax.Array,
    centre_log_weights: jax.Array | None = None,
    neighbour_mask: jax.Array | None = None,
) -> jax.Array:
  r"""Class log-probabilities of the kernel vote with soft centre labels.

  Each centre carries a probability row :math:`y_j \in \Delta^{C-1}` instead
  of one class; its kernel votes for every class in proportion:

  .. math::
    p(c \mid x) = \frac{\sum_{j \in N_K(x)} k_j(x)\, y_{jc}}
                       {\sum_{j \in N_K(x)} k_j(x)}

  computed as :math:`\operatorname{logsumexp}_{j: y_{jc} > 0}(\log k_j +
  \log y_{jc}) - \operatorname{logsumexp}_j \log k_j`. On one-hot rows it
  equals :func:`kernel_class_log_probs` (tested). Rows that do not sum to 1
  are used as given (the probabilities then sum to the kernel-weighted mean
  row sum). The edge cases are those of :func:`kernel_class_log_probs`: a
  class with no mass among the neighbours gets ``-inf``; a row whose
  neighbours are all masked gets the uniform ``-log C``.

  Args:
    embeddings: ``[batch, dim]`` float, :math:`f(x)`.
    centres: ``[num_centres, dim]`` float.
    centre_label_probs: ``[num_centres, num_classes]`` float, non-negative
      rows :math:`y_j` (one-hot for hard labels).
    neighbour_idx: ``[batch, k]`` int indices into ``centres``.
    sigma: positive kernel width.
    centre_log_weights: optional ``[num_centres]`` float :math:`\theta_j`.
    neighbour_mask: optional ``[batch, k]`` bool; ``False`` drops that
      neighbour.

  Returns:
    ``[batch, num_classes]`` log-probabilities.

  Examples:
    >>> import jax.numpy as jnp
    >>> centres = jnp.array([[0., 0.], [5., 5.]])
    >>> y = jnp.array([[0.75, 0.25], [0., 1.]])
    >>> log_p = soft_kernel_class_log_probs(
    ...     jnp.array([[0., 0.]]), centres, y, jnp.array([[0, 1]]), sigma=1.)
    >>> [round(float(p), 4) for p in jnp.exp(log_p[0])]
    [0.75, 0.25]
  """
  _check_soft_inputs(embeddings, centres, centre_label_probs, neighbour_idx,
                     centre_log_weights, neighbour_mask, sigma)
  num_classes = jnp.shape(centre_label_probs)[1]
  log_k, probs, safe_log, valid = _soft_neighbour_terms(
      embeddings, centres, centre_label_probs, neighbour_idx, sigma,
      centre_log_weights, neighbour_mask)
  log_num = jax.nn.logsumexp(log_k[..., None] + safe_log, axis=1,
                             where=(probs > 0) & valid[..., None])
  log_den = jax.nn.logsumexp(log_k, axis=1, where=valid)
  has_evidence = jnp.isfinite(log_den) | jnp.isnan(log_den)
  safe_den = jnp.where(has_evidence, log_den, 0.0)
  return jnp.where(has_evidence[:, None], log_num - safe_den[:, None],
                   -math.log(num_classes))


def soft_gaussian_kernel_loss(
    embeddings: jax.Array,
    labels: jax.Array,
    centres: jax.Array,
    centre_label_probs: jax.Array,
    neighbour_idx: jax.Array,
    *,
    sigma: float | jax.Array,
    centre_log_weights: jax.Array | None = None,
    neighbour_mask: jax.Array | None = None,
    num_classes: int | None = None,
) -> jax.Array:
  r"""Per-example NNGK loss against centres with soft labels.

  .. math::
    \ell(x, y) = -\log \frac{\sum_{j \in N_K(x)} k_j(x)\, y_{j,y}}
                             {\sum_{j \in N_K(x)} k_j(x)}

  the soft-label form of :func:`gaussian_kernel_loss` (the example's own
  label ``y`` stays hard; the centres' rows :math:`y_j` are probability
  vectors). On one-hot rows it equals :func:`gaussian_kernel_loss` exactly,
  including its no-positive case: when no unmasked neighbour has mass on
  ``y`` the loss is the authors' :math:`\log(S + m\epsilon) - \log
  \epsilon`, with :math:`m` the classes with no mass among the neighbours
  (``num_classes`` minus those with mass; 1 when ``num_classes`` is None).
  The label rows are constants of the loss: no gradient flows into them.

  Args:
    embeddings: ``[batch, dim]`` float.
    labels: ``[batch]`` int, the examples' classes.
    centres: ``[num_centres, dim]`` float.
    centre_label_probs: ``[num_centres, num_classes]`` float, non-negative.
    neighbour_idx: ``[batch, k]`` int indices into ``centres`` (the
      example's own centre excluded by the caller).
    sigma: positive kernel width.
    centre_log_weights: optional ``[num_centres]`` float :math:`\theta_j`.
    neighbour_mask: optional ``[batch, k]`` bool.
    num_classes: optional, counts the absent classes of the no-positive case
      as :func:`gaussian_kernel_loss` does (it must then equal the label
      rows' width).

  Returns:
    ``[batch]`` losses.

  Examples:
    >>> import jax.numpy as jnp
    >>> centres = jnp.array([[0., 0.], [1., 0.]])
    >>> y = jnp.array([[0.5, 0.5], [0., 1.]])
    >>> loss = soft_gaussian_kernel_loss(jnp.array([[0., 0.]]), jnp.array([0]),
    ...     centres, y, jnp.array([[0, 1]]), sigma=1.)
    >>> round(float(loss[0]), 4)  # -log(0.5 / (1 + e^-0.5))
    1.1672
  """
  _check_soft_inputs(embeddings, centres, centre_label_probs, neighbour_idx,
                     centre_log_weights, neighbour_mask, sigma)
  _check_example_labels(labels, embeddings)
  width = jnp.shape(centre_label_probs)[1]
  if num_classes is not None:
    num_classes = positive_int("num_classes", num_classes)
    if num_classes != width:
      raise ValueError(f"num_classes={num_classes} but centre_label_probs "
                       f"has {width} columns")
  log_k, probs, safe_log, valid = _soft_neighbour_terms(
      embeddings, centres, centre_label_probs, neighbour_idx, sigma,
      centre_log_weights, neighbour_mask)
  rows = jnp.arange(jnp.shape(labels)[0])
  own = probs[rows, :, labels]  # [B, K]: y_{j, y}
  own_log = safe_log[rows, :, labels]
  log_num = jax.nn.logsumexp(log_k + own_log, axis=1, where=(own > 0) & valid)
  log_den = jax.nn.logsumexp(log_k, axis=1, where=valid)
  present = jnp.sum(jnp.any((probs > 0) & valid[..., None], axis=1), axis=1)
  return _ratio_or_empty_loss(log_num, log_den, present, num_classes)

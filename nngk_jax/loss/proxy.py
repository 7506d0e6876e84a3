"""Proxy and normalised-classifier losses: baselines for metric learning.

Each class owns one trainable vector (a proxy, or a row of a normalised
linear classifier); an embedding is pulled towards its class's vector and
pushed from the others, so no pairs or triplets need mining.

* :func:`normalized_softmax_loss`: cross-entropy on cosine logits divided by
  a temperature (Zhai and Wu 2018).
* :func:`proxy_nca_loss`: NCA against proxies with squared Euclidean
  distances between scaled unit vectors (Movshovitz-Attias et al. 2017).
* :func:`proxy_anchor_loss`: proxies as anchors of a batch-level soft
  contrastive loss (Kim et al. 2020). It is not a sum over examples, so it
  returns a scalar and takes a ``where`` mask for padded batches.

All three L2-normalise embeddings and class vectors inside (with
``nngk_jax.geometry.l2_normalize``, finite at the zero vector), compute cosines
with one full-precision ``[batch, num_classes]`` matmul (never a
``[batch, num_classes, dim]`` tensor, which would not fit for Stanford Online
Products' 11,318 classes) and stay in log space. They are pure, jit-able and
vmap-able.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from nngk_jax.checks import check_dtype as _check_dtype
from nngk_jax.loss.vmf import _check_embeddings_and_classes
from nngk_jax.loss.vmf import _check_labels
from nngk_jax.checks import check_positive_scalar as _check_positive_scalar
from nngk_jax.loss.vmf import _cosine_similarities
from nngk_jax.loss.vmf import _picked_cross_entropy

__all__ = [
    "normalized_softmax_loss",
    "proxy_anchor_loss",
    "proxy_nca_loss",
]


def normalized_softmax_loss(
    embeddings: jax.Array,
    labels: jax.Array,
    class_weights: jax.Array,
    *,
    temperature: float | jax.Array = 0.05,
) -> jax.Array:
  r"""Per-example normalised softmax loss (cosine logits over a temperature).

  .. math::
    \ell(x, y) = -\log \frac{\exp(\hat w_y^\top \hat z / T)}
                            {\sum_{c=1}^{C} \exp(\hat w_c^\top \hat z / T)},
    \qquad \hat z = \frac{f(x)}{\lVert f(x) \rVert},\
           \hat w_c = \frac{w_c}{\lVert w_c \rVert}

  i.e. softmax cross-entropy of a bias-free linear classifier whose rows
  and inputs are L2-normalised. Computed with ``log_softmax``, so it is
  exact for any temperature. It is the vMF loss
  (``nngk_jax.loss.vmf.vmf_loss``) with ``kappa = 1 / T``, except that here
  the class vectors are trained by gradient descent.

  The default ``T = 0.05`` is the temperature Zhai and Wu recommend (and the
  default of pytorch-metric-learning's ``NormalizedSoftmaxLoss``); the
  cosine logits then span ``[-20, 20]``.

  Args:
    embeddings: ``[batch, dim]`` float, :math:`f(x)` (any norm).
    labels: ``[batch]`` int in ``[0, num_classes)``; under ``jit`` an
      out-of-range label makes its row NaN.
    class_weights: ``[num_classes, dim]`` float, the trainable :math:`w_c`
      (any norm).
    temperature: positive :math:`T` (a traced value is not checked).

  Returns:
    ``[batch]`` losses; reduce them (``.mean()``) as you see fit.

  Raises:
    ValueError: on inconsistent shapes, non-float embeddings or weights,
      non-integer or (when concrete) out-of-range labels, or
      ``temperature <= 0``.

  Examples:
    >>> import jax.numpy as jnp
    >>> weights = jnp.array([[2., 0.], [0., 3.]])
    >>> loss = normalized_softmax_loss(
    ...     jnp.array([[1., 1.]]), jnp.array([1]), weights, temperature=1.)
    >>> round(float(loss[0]), 4)  # equal cosines: -log(1/2)
    0.6931

  References:
    Zhai and Wu, "Classification is a Strong Baseline for Deep Metric
    Learning", BMVC 2019, arXiv:1811.12649.
  """
  _check_embeddings_and_classes(embeddings, class_weights, "class_weights")
  _check_labels(labels, jnp.shape(embeddings)[0], jnp.shape(class_weights)[0])
  _check_positive_scalar("temperature", temperature)
  logits = _cosine_similarities(embeddings, class_weights) / temperature
  return _picked_cross_entropy(logits, labels)


def proxy_nca_loss(
    embeddings: jax.Array,
    labels: jax.Array,
    proxies: jax.Array,
    *,
    scale: float | jax.Array = 3.0,
) -> jax.Array:
  r"""Per-example Proxy-NCA loss, positive proxy excluded from the denominator.

  .. math::
    \ell(x, y) = -\log \frac{\exp(-d(x, p_y))}
                            {\sum_{c \ne y} \exp(-d(x, p_c))}
               = d(x, p_y) + \operatorname{logsumexp}_{c \ne y} -d(x, p_c),

    d(x, p) = \left\lVert s \frac{f(x)}{\lVert f(x) \rVert}
                         - s \frac{p}{\lVert p \rVert} \right\rVert^2
            = 2 s^2 (1 - \cos(f(x), p)).

  Choices, as the paper leaves them open:

  * Denominator over the other proxies only, as in the paper's equation
    (NCA's :math:`z \in Z \setminus \{y\}`). Most public code, e.g.
    pytorch-metric-learning's ``ProxyNCALoss`` and Proxy-NCA++, keeps the
    positive in, which is plain cross-entropy on ``-d``; this loss equals
    that cross-entropy plus :math:`\log(1 - p(y \mid x))`. With the
    positive excluded the loss can be negative; it is bounded below by
    :math:`\log(C - 1) - 4 s^2` and needs ``num_classes >= 2``.
  * Scale ``s = 3`` on both the unit embeddings and the unit proxies, from
    Proxy-NCA++ (Teh, DeVries and Taylor, ECCV 2020; code
    euwern/proxynca_pp: ``scale = sqrt(1 / T)`` with softmax temperature
    ``T = 1/9``). The dichotomies/proxy-nca reimplementation scales only
    the proxies by 3; pytorch-metric-learning uses ``softmax_scale = 1``.
    Distances then lie in ``[0, 4 s^2] = [0, 36]``.

  The distance is computed as ``2 s^2 (1 - cos)`` from one matmul; it is
  exact for unit vectors, and for a zero embedding or proxy (normalised to
  zero, see ``nngk_jax.geometry.l2_normalize``) it gives the same loss as
  the true distance up to a constant that cancels.

  Args:
    embeddings: ``[batch, dim]`` float, :math:`f(x)` (any norm).
    labels: ``[batch]`` int in ``[0, num_classes)``; under ``jit`` an
      out-of-range label makes its row NaN.
    proxies: ``[num_classes, dim]`` float, the trainable :math:`p_c` (any
      norm), ``num_classes >= 2``.
    scale: positive :math:`s` (a traced value is not checked).

  Returns:
    ``[batch]`` losses; reduce them (``.mean()``) as you see fit.

  Raises:
    ValueError: on inconsistent shapes, non-float embeddings or proxies,
      fewer than 2 proxies, non-integer or (when concrete) out-of-range
      labels, or ``scale <= 0``.

  Examples:
    >>> import jax.numpy as jnp
    >>> proxies = jnp.array([[1., 0.], [-1., 0.]])
    >>> loss = proxy_nca_loss(
    ...     jnp.array([[2., 0.]]), jnp.array([0]), proxies, scale=1.)
    >>> float(loss[0])  # d(x, p_0) - d(x, p_1) = 0 - 4
    -4.0

  References:
    Movshovitz-Attias, Toshev, Leung, Ioffe and Singh, "No Fuss Distance
    Metric Learning using Proxies", ICCV 2017, arXiv:1703.07464.

    Teh, DeVries and Taylor, "ProxyNCA++: Revisiting and Revitalizing Proxy
    Neighborhood Component Analysis", ECCV 2020, arXiv:2004.01113.
  """
  _check_embeddings_and_classes(embeddings, proxies, "proxies")
  num_classes = jnp.shape(proxies)[0]
  if num_classes < 2:
    raise ValueError(
        "proxy_nca_loss excludes the positive proxy from the denominator, so "
        f"it needs at least 2 proxies, got shape {jnp.shape(proxies)}")
  _check_labels(labels, jnp.shape(embeddings)[0], num_classes)
  _check_positive_scalar("scale", scale)
  cosines = _cosine_similarities(embeddings, proxies)
  neg_distances = 2.0 * jnp.square(scale) * (cosines - 1.0)  # -d, [B, C]
  others = jnp.arange(num_classes) != labels[:, None]
  log_denominator = jax.nn.logsumexp(neg_distances, axis=1, where=others)
  valid = (labels >= 0) & (labels < num_classes)
  safe_labels = jnp.where(valid, labels, 0)
  positive = jnp.take_along_axis(neg_distances, safe_labels[:, None], 1)[:, 0]
  return jnp.where(valid, log_denominator - positive, jnp.nan)


def proxy_anchor_loss(
    embeddings: jax.Array,
    labels: jax.Array,
    proxies: jax.Array,
    *,
    margin: float | jax.Array = 0.1,
    alpha: float | jax.Array = 32.0,
    where: jax.Array | None = None,
) -> jax.Array:
  r"""Proxy-Anchor loss of a whole batch (a scalar, not per example).

  .. math::
    \ell(X) = \frac{1}{|P^+|} \sum_{p \in P^+}
        \log\left(1 + \sum_{x \in X_p^+} e^{-\alpha (s(x, p) - \delta)}\right)
      + \frac{1}{|P|} \sum_{p \in P}
        \log\left(1 + \sum_{x \in X_p^-} e^{\alpha (s(x, p) + \delta)}\right)

  with :math:`s` the cosine similarity, :math:`\delta` the margin,
  :math:`P` all ``num_classes`` proxies, :math:`P^+` the proxies with at
  least one positive (same-class, unmasked) example in the batch,
  :math:`X_p^+` / :math:`X_p^-` the unmasked examples of / not of the
  class of :math:`p`. Each proxy's example-to-example weighting goes through
  the log-sum, so the loss does not decompose into per-example terms: it is
  returned as a scalar. Each ``log(1 + sum exp)`` is
  ``softplus(logsumexp(...))`` and is exact for any ``alpha``; an empty sum
  contributes 0 with zero gradient. A batch with every row masked out
  returns 0.

  Defaults ``margin = 0.1`` and ``alpha = 32`` are the paper's and its
  code's (tjddus9597/Proxy-Anchor-CVPR2020).

  Args:
    embeddings: ``[batch, dim]`` float (any norm).
    labels: ``[batch]`` int in ``[0, num_classes)``. Under ``jit`` an
      out-of-range label of an unmasked row makes the loss NaN; masked rows'
      labels are ignored (concrete labels are checked in full).
    proxies: ``[num_classes, dim]`` float, trainable (any norm).
    margin: the margin :math:`\delta`.
    alpha: positive scaling :math:`\alpha` (a traced value is not checked).
    where: optional ``[batch]`` bool; ``False`` drops that row exactly as if
      it were not in the batch (for padded batches).

  Returns:
    Scalar loss of the batch.

  Raises:
    ValueError: on inconsistent shapes or dtypes, (when concrete)
      out-of-range labels, or ``alpha <= 0``.

  Examples:
    >>> import jax.numpy as jnp
    >>> proxies = jnp.array([[1., 0.], [0., 1.]])
    >>> loss = proxy_anchor_loss(jnp.array([[1., 0.]]), jnp.array([0]),
    ...                          proxies, margin=0., alpha=1.)
    >>> round(float(loss), 4)  # log(1 + e^-1) / 1 + log(1 + e^0) / 2
    0.6598

  References:
    Kim, Kim, Cho and Kwak, "Proxy Anchor Loss for Deep Metric Learning",
    CVPR 2020, arXiv:2003.13911.
  """
  _check_embeddings_and_classes(embeddings, proxies, "proxies")
  batch = jnp.shape(embeddings)[0]
  num_classes = jnp.shape(proxies)[0]
  _check_labels(labels, batch, num_classes)
  _check_positive_scalar("alpha", alpha)
  if where is None:
    where = jnp.ones((batch,), bool)
  else:
    _check_dtype("where", where, "bool")
    if jnp.shape(where) != (batch,):
      raise ValueError(
          f"where must be [batch] = ({batch},), got shape {jnp.shape(where)}")
  cosines = _cosine_similarities(embeddings, proxies)  # [B, C]
  same_class = labels[:, None] == jnp.arange(num_classes)  # [B, C]
  positive = same_class & where[:, None]
  negative = ~same_class & where[:, None]
  log_pos_sum = jax.nn.logsumexp(-alpha * (cosines - margin), axis=0,
                                 where=positive)  # [C], -inf if none
  log_neg_sum = jax.nn.logsumexp(alpha * (cosines + margin), axis=0,
                                 where=negative)
  num_with_positive = jnp.sum(jnp.any(positive, axis=0))
  pos_term = (jnp.sum(jax.nn.softplus(log_pos_sum))
              / jnp.maximum(num_with_positive, 1))
  neg_term = jnp.sum(jax.nn.softplus(log_neg_sum)) / num_classes
  valid = (labels >= 0) & (labels < num_classes)
  return jnp.where(jnp.all(valid | ~where), pos_term + neg_term, jnp.nan)

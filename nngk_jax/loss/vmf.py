"""von Mises-Fisher (vMF) mixture loss on the unit sphere.

Zhe, Chen and Yan (arXiv:1802.09662) model each class ``c`` as a vMF
distribution on the unit sphere with mean direction ``mu_c`` and one shared
concentration ``kappa``. The vMF normalising constant depends only on
``kappa`` and the dimension, so with a shared ``kappa`` it cancels and the
posterior of the mixture is a softmax over cosine similarities scaled by
``kappa``. The loss is its negative log.

The mean directions are not learned by gradient descent: they are the
maximum-likelihood mean directions of all training embeddings, recomputed
periodically (:func:`vmf_class_means`) and passed to :func:`vmf_loss` as
constants (the trainer wraps them in ``jax.lax.stop_gradient``).

Both functions are pure and jit-able; :func:`vmf_loss` is vmap-able. The
cosines (:func:`_cosine_similarities`, shared with ``nngk_jax.loss.proxy``)
are those of vectors normalised by :func:`nngk_jax.geometry.l2_normalize`.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

# Shared with nngk.py so that every loss words its errors the same way.
from nngk_jax.checks import check_dtype as _check_dtype
from nngk_jax.checks import check_positive_scalar as _check_positive_scalar
from nngk_jax.checks import check_rank as _check_rank
from nngk_jax.checks import is_concrete as _is_concrete
from nngk_jax.checks import positive_int
from nngk_jax.geometry import l2_normalize

__all__ = [
    "vmf_class_means",
    "vmf_loss",
]


def _check_labels(labels: Any, batch: int, num_classes: int) -> None:
  """Rank, dtype and length; the range too when the labels are concrete."""
  _check_rank("labels", labels, 1, "[batch]")
  _check_dtype("labels", labels, "int")
  if jnp.shape(labels)[0] != batch:
    raise ValueError(
        f"labels has {jnp.shape(labels)[0]} entries for a batch of {batch} "
        "embeddings")
  if _is_concrete(labels):
    values = np.asarray(labels)
    bad = (values < 0) | (values >= num_classes)
    if bad.any():
      raise ValueError(
          f"labels must lie in [0, {num_classes}), got {values[bad][:5]}")


def _check_embeddings_and_classes(embeddings: Any, classes: Any,
                                  classes_name: str) -> None:
  """``embeddings [batch, dim]`` and ``classes [num_classes, dim]``, floats."""
  _check_rank("embeddings", embeddings, 2, "[batch, dim]")
  _check_rank(classes_name, classes, 2, "[num_classes, dim]")
  _check_dtype("embeddings", embeddings, "float")
  _check_dtype(classes_name, classes, "float")
  dim = jnp.shape(embeddings)[1]
  class_dim = jnp.shape(classes)[1]
  if class_dim != dim:
    raise ValueError(
        f"embeddings are {dim}-D but {classes_name} are {class_dim}-D "
        f"(shapes {jnp.shape(embeddings)} and {jnp.shape(classes)})")
  if jnp.shape(classes)[0] < 1:
    raise ValueError(f"{classes_name} must hold at least one class, got shape "
                     f"{jnp.shape(classes)}")


def _cosine_similarities(embeddings: jax.Array,
                        classes: jax.Array) -> jax.Array:
  """``[batch, num_classes]`` cosines of L2-normalised rows, full precision.

  ``precision=HIGHEST`` keeps float32 matmuls out of TF32 / bfloat16 passes
  on accelerators: the cosines are multiplied by up to ``alpha = 32`` or
  ``1 / temperature = 20`` before the softmax, where a 1e-3 error would show.
  """
  return jnp.matmul(l2_normalize(embeddings), l2_normalize(classes).T,
                    precision=jax.lax.Precision.HIGHEST)


def _picked_cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """``-log_softmax(logits)[b, labels[b]]``; NaN where a label is out of range.

  A label outside ``[0, num_classes)`` (possible only under ``jit``, where
  it cannot be checked) makes its own row NaN rather than silently picking a
  wrapped-around class.
  """
  num_classes = logits.shape[-1]
  log_probs = jax.nn.log_softmax(logits, axis=-1)
  valid = (labels >= 0) & (labels < num_classes)
  safe_labels = jnp.where(valid, labels, 0)
  picked = jnp.take_along_axis(log_probs, safe_labels[:, None], axis=1)[:, 0]
  return jnp.where(valid, -picked, jnp.nan)


def vmf_loss(
    embeddings: jax.Array,
    labels: jax.Array,
    class_means: jax.Array,
    *,
    kappa: float | jax.Array,
) -> jax.Array:
  r"""Per-example von Mises-Fisher mixture loss (negative log posterior).

  .. math::
    \ell(x, y) = -\log \frac{C_D(\kappa)\, e^{\kappa \hat\mu_y^\top \hat z}}
                            {\sum_{c=1}^{C} C_D(\kappa)\,
                             e^{\kappa \hat\mu_c^\top \hat z}}
               = -\kappa \hat\mu_y^\top \hat z
                 + \operatorname{logsumexp}_c \kappa \hat\mu_c^\top \hat z,
    \qquad \hat z = \frac{f(x)}{\lVert f(x) \rVert},\
           \hat\mu_c = \frac{\mu_c}{\lVert \mu_c \rVert}

  The vMF normaliser :math:`C_D(\kappa)` is shared by all classes and cancels.
  Both the embeddings and the class means are L2-normalised here (with
  :func:`~nngk_jax.geometry.l2_normalize`: a zero vector becomes the zero
  vector, so a zero embedding or mean gives cosine 0 and finite values and
  gradients). The log-softmax keeps the loss exact for any ``kappa``, e.g.
  ``kappa = 1e4`` where ``exp`` overflows.

  Args:
    embeddings: ``[batch, dim]`` float, :math:`f(x)` (any norm).
    labels: ``[batch]`` int in ``[0, num_classes)``; under ``jit`` an
      out-of-range label makes its row NaN.
    class_means: ``[num_classes, dim]`` float mean directions :math:`\mu_c`
      (any norm), e.g. from :func:`vmf_class_means`. They are constants of
      the method: the trainer passes them through ``jax.lax.stop_gradient``.
    kappa: positive concentration :math:`\kappa` shared by all classes (a
      traced value is not checked).

  Returns:
    ``[batch]`` losses; reduce them (``.mean()``) as you see fit.

  Raises:
    ValueError: on inconsistent shapes, non-float embeddings or means,
      non-integer or (when concrete) out-of-range labels, or ``kappa <= 0``.

  Examples:
    >>> import jax.numpy as jnp
    >>> means = jnp.array([[1., 0.], [0., 1.]])
    >>> loss = vmf_loss(jnp.array([[5., 0.]]), jnp.array([0]), means, kappa=1.)
    >>> round(float(loss[0]), 4)  # -log(e / (e + 1))
    0.3133

  References:
    Zhe, Chen and Yan, "Directional Statistics-based Deep Metric Learning for
    Image Classification and Retrieval", arXiv:1802.09662, 2018.
  """
  _check_embeddings_and_classes(embeddings, class_means, "class_means")
  _check_labels(labels, jnp.shape(embeddings)[0], jnp.shape(class_means)[0])
  _check_positive_scalar("kappa", kappa)
  logits = kappa * _cosine_similarities(embeddings, class_means)
  return _picked_cross_entropy(logits, labels)


def vmf_class_means(
    embeddings: jax.Array,
    labels: jax.Array,
    *,
    num_classes: int,
) -> jax.Array:
  r"""Maximum-likelihood vMF mean direction of each class.

  .. math::
    \hat\mu_c = \frac{\sum_{i: y_i = c} \hat z_i}
                     {\lVert \sum_{i: y_i = c} \hat z_i \rVert},
    \qquad \hat z_i = \frac{f(x_i)}{\lVert f(x_i) \rVert}

  Each embedding is normalised first, so every example counts as one
  direction whatever its norm. Works on host arrays and under ``jit``
  (``num_classes`` static).

  A class without any embedding has no mean direction. With concrete labels
  this raises ``ValueError``; under ``jit`` (traced labels, not checked) its
  row is the zero vector, which :func:`vmf_loss` treats as cosine 0 with
  every embedding. A class whose unit vectors sum to (nearly) zero also
  gets a (nearly) zero row.

  Args:
    embeddings: ``[num_examples, dim]`` float, typically the whole training
      set embedded in eval mode.
    labels: ``[num_examples]`` int in ``[0, num_classes)``; under ``jit`` an
      out-of-range label is dropped.
    num_classes: number of classes ``C`` (a static Python int).

  Returns:
    ``[num_classes, dim]`` unit mean directions (zero rows for empty classes
    under ``jit``).

  Raises:
    ValueError: on inconsistent shapes or dtypes, a bad ``num_classes``, or
      (concrete labels only) out-of-range labels or a class with no example.

  Examples:
    >>> import jax.numpy as jnp
    >>> emb = jnp.array([[2., 0.], [0., 0.5], [0., -3.]])
    >>> vmf_class_means(emb, jnp.array([0, 0, 1]), num_classes=2).round(4)
    Array([[ 0.7071,  0.7071],
           [ 0.    , -1.    ]], dtype=float32)

  References:
    Zhe, Chen and Yan, "Directional Statistics-based Deep Metric Learning for
    Image Classification and Retrieval", arXiv:1802.09662, 2018.
  """
  num_classes = positive_int("num_classes", num_classes)
  _check_rank("embeddings", embeddings, 2, "[num_examples, dim]")
  _check_dtype("embeddings", embeddings, "float")
  _check_labels(labels, jnp.shape(embeddings)[0], num_classes)
  if _is_concrete(labels):
    counts = np.bincount(np.asarray(labels), minlength=num_classes)
    empty = np.flatnonzero(counts == 0)
    if empty.size:
      raise ValueError(
          f"vmf_class_means needs at least one embedding per class; classes "
          f"{empty[:10].tolist()} ({empty.size} in all) have none")
  directions = l2_normalize(embeddings)
  sums = jax.ops.segment_sum(directions, labels, num_segments=num_classes)
  return l2_normalize(sums)

"""Impostor networks: the NNGK vote over trainable centres tied to the data.

Lebedev, Babenko and Lempitsky (arXiv:1806.05217) replace NNGK's stored
embeddings by free parameters, the *impostors* :math:`c_i`, one per
training example, and tie each to its example's embedding by an L2 term.
The vote itself is NNGK's without per-centre weights
(:func:`nngk_jax.loss.gaussian_kernel_loss` with ``centre_log_weights=None``).
The function here is pure and jit-able; which centres are trainable and how
they are updated is the bank's business (:mod:`nngk_jax.impostor`).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from nngk_jax.checks import check_rank as _check_rank
from nngk_jax.loss.nngk import gaussian_kernel_loss

__all__ = ["impostor_loss"]


def impostor_loss(
    embeddings: jax.Array,
    labels: jax.Array,
    centres: jax.Array,
    centre_labels: jax.Array,
    neighbour_idx: jax.Array,
    own_idx: jax.Array,
    *,
    sigma: float | jax.Array,
    tie: float,
    neighbour_mask: jax.Array | None = None,
    num_classes: int | None = None,
    vote_mask: jax.Array | None = None,
) -> jax.Array:
  r"""Per-example impostor-network loss: kernel vote plus the L2 tie.

  .. math::
    \ell(x_b, y_b) = -\log p(y_b \mid x_b; c)
      + \lambda \lVert f(x_b) - c_{i_b} \rVert^2,
    \qquad
    p(y \mid x; c) = \frac{\sum_{j \in N_K(x),\, y_j = y}
                           e^{-\lVert f(x) - c_j \rVert^2 / 2\sigma^2}}
                          {\sum_{j \in N_K(x)}
                           e^{-\lVert f(x) - c_j \rVert^2 / 2\sigma^2}}

  where :math:`i_b` (``own_idx[b]``) is the centre of example ``b`` itself.
  Averaged over a batch this is the paper's
  :math:`\mathrm{CE} + \frac{\lambda}{N}\sum_i \lVert f(x_i) - c_i \rVert^2`
  with the sum estimated on the batch's own examples. Gradients reach the
  embedding through both terms, the neighbours' centres through the vote
  and the example's own centre through the tie. ``tie = 0`` is the free
  vote; an infinite tie pins :math:`c_i = f(x_i)`, the *tied* variant,
  which the bank runs as stored centres (the term is then not computed
  here: ``tie`` must be finite).

  Args:
    embeddings: ``[batch, dim]`` float, :math:`f(x)`.
    labels: ``[batch]`` int.
    centres: ``[num_centres, dim]`` float, the impostors :math:`c`.
    centre_labels: ``[num_centres]`` int.
    neighbour_idx: ``[batch, k]`` int rows of ``centres`` (the example's
      own centre is not among them).
    own_idx: ``[batch]`` int, the row of each example's own centre.
    sigma: positive kernel width.
    tie: finite :math:`\lambda \ge 0`.
    neighbour_mask: optional ``[batch, k]`` bool; ``False`` drops that
      neighbour.
    num_classes: as in :func:`nngk_jax.loss.gaussian_kernel_loss` (the
      no-positive case).
    vote_mask: optional ``[batch]`` bool; ``False`` drops that example's
      vote term and keeps its tie (NNGK's ``no_positive="skip"`` rule for
      an example with no same-class neighbour).

  Returns:
    ``[batch]`` losses.

  Examples:
    >>> import jax.numpy as jnp
    >>> centres = jnp.array([[0., 0.], [1., 0.], [0., 2.]])
    >>> loss = impostor_loss(
    ...     jnp.array([[0., 1.]]), jnp.array([0]), centres,
    ...     jnp.array([0, 0, 1]), jnp.array([[1, 2]]), jnp.array([0]),
    ...     sigma=1., tie=0.5)
    >>> round(float(loss[0]), 4)  # -log(e^-1 / (e^-1 + e^-0.5)) + 0.5 * 1
    1.4741
  """
  if not (isinstance(tie, (int, float)) and math.isfinite(tie) and tie >= 0):
    raise ValueError(f"impostor tie must be a finite number >= 0, got {tie!r}")
  _check_rank("own_idx", own_idx, 1, "[batch]")
  if jnp.shape(own_idx)[0] != jnp.shape(embeddings)[0]:
    raise ValueError(f"own_idx has {jnp.shape(own_idx)[0]} entries for a batch "
                     f"of {jnp.shape(embeddings)[0]} embeddings")
  vote = gaussian_kernel_loss(
      embeddings, labels, centres, centre_labels, neighbour_idx, sigma=sigma,
      neighbour_mask=neighbour_mask, num_classes=num_classes)
  if vote_mask is not None:
    vote = jnp.where(vote_mask, vote, 0.0)
  if tie == 0:
    return vote
  diff = embeddings - jnp.take(centres, own_idx, axis=0)
  return vote + tie * jnp.sum(diff * diff, axis=-1)

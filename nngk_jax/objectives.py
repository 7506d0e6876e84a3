"""Training objectives, looked up by the config's ``objective`` name.

An :class:`Objective` tells the trainer what a loss needs (a centre bank and
neighbour graph, a classifier head) and how to turn one batch's network
outputs into per-example losses. Adding one is a new entry in
:data:`OBJECTIVES`; the training loop has no per-loss branches.

The maths lives in :mod:`nngk_jax.loss`; objectives only wire config fields
and batch arrays into those pure functions.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple

import jax
import optax

from nngk_jax import loss as losses

__all__ = ["OBJECTIVES", "LossInputs", "Objective", "get_objective"]


class LossInputs(NamedTuple):
  """What a loss may read in one train step.

  Attributes:
    embeddings: ``[batch, D]`` network embeddings (train mode).
    logits: ``[batch, C]`` classifier logits, or ``None`` without a head.
    batch: the batch dict: ``image``, ``label`` ``[batch]``, ``index``
      ``[batch]``, ``valid`` ``[batch]`` and, with a centre bank,
      ``neighbour_idx`` / ``neighbour_mask`` ``[batch, k']``.
    centres: ``[N, D]`` centre bank (gradient stopped), or ``None``.
    centre_labels: ``[N]`` int, or ``None``.
    centre_log_weights: ``[N]`` trainable theta, or ``None``.
  """

  embeddings: jax.Array
  logits: jax.Array | None
  batch: dict[str, jax.Array]
  centres: jax.Array | None
  centre_labels: jax.Array | None
  centre_log_weights: jax.Array | None


@dataclasses.dataclass(frozen=True)
class Objective:
  """A named loss and what it needs from the trainer.

  Attributes:
    name: the config name.
    per_example_loss: ``(LossInputs, config) -> [batch]`` losses.
    uses_centre_bank: the trainer keeps centres of the whole training split,
      refreshes them every ``nngk.refresh_every`` epochs, builds the
      neighbour graph and adds ``neighbour_idx`` / ``neighbour_mask`` to each
      batch.
    uses_classifier_head: the network gets a linear classifier head.
  """

  name: str
  per_example_loss: Callable[[LossInputs, Any], jax.Array]
  uses_centre_bank: bool = False
  uses_classifier_head: bool = False


def _nngk_loss(inputs: LossInputs, config: Any) -> jax.Array:
  log_weights = (inputs.centre_log_weights if config.nngk.learn_weights
                 else None)
  return losses.gaussian_kernel_loss(
      inputs.embeddings, inputs.batch["label"],
      jax.lax.stop_gradient(inputs.centres), inputs.centre_labels,
      inputs.batch["neighbour_idx"], sigma=config.nngk.sigma,
      centre_log_weights=log_weights,
      neighbour_mask=inputs.batch["neighbour_mask"])


def _softmax_loss(inputs: LossInputs, config: Any) -> jax.Array:
  del config
  return optax.softmax_cross_entropy_with_integer_labels(
      inputs.logits, inputs.batch["label"])


OBJECTIVES: dict[str, Objective] = {
    "nngk": Objective("nngk", _nngk_loss, uses_centre_bank=True),
    "softmax": Objective("softmax", _softmax_loss, uses_classifier_head=True),
}


def get_objective(name: str) -> Objective:
  """The objective registered as ``name``.

  Examples:
    >>> get_objective("nngk").uses_centre_bank
    True
  """
  if name not in OBJECTIVES:
    raise ValueError(
        f"unknown objective {name!r}; known: {', '.join(sorted(OBJECTIVES))}")
  return OBJECTIVES[name]

"""Training objectives, looked up by the config's ``objective`` name.

An :class:`Objective` tells the trainer what a loss needs and how to turn
one batch's network outputs into losses. Adding one is a new entry in
:data:`OBJECTIVES`; the training loop has no per-loss branches. What a loss
can ask for:

* ``uses_centre_bank``: embeddings of the whole training split, refreshed
  every ``nngk.refresh_every`` epochs (NNGK's centres; vMF's class means are
  computed from them).
* ``uses_neighbour_graph``: the neighbour graph over that bank; each batch
  then carries ``neighbour_idx`` / ``neighbour_mask`` rows.
* ``uses_classifier_head``: a linear classifier on the embedding (logits).
* ``uses_proxies``: a trainable ``[num_classes, D]`` matrix ``proxies`` in
  the network's parameters.
* ``sampler``: ``"random"`` batches or ``"class_balanced"`` (m per class).
* ``prepare_batch``: host-side additions to each batch (e.g. Group Loss
  anchors).

The maths lives in :mod:`nngk_jax.loss`; objectives only wire config fields
and batch arrays into those pure functions. A loss returns ``[batch]``
per-example values (the trainer averages the valid rows) or, when it does not
decompose per example (Proxy-Anchor), a scalar that honours ``batch["valid"]``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple

import jax
import numpy as np
import optax

from nngk_jax import loss as losses

__all__ = ["OBJECTIVES", "LossInputs", "Objective", "get_objective"]


class LossInputs(NamedTuple):
  """What a loss may read in one train step.

  Attributes:
    embeddings: ``[batch, D]`` network embeddings (train mode).
    logits: ``[batch, C]`` classifier logits, or ``None`` without a head.
    batch: the batch dict: ``image``, ``label`` ``[batch]``, ``index``
      ``[batch]``, ``valid`` ``[batch]``, plus what the trainer and
      ``prepare_batch`` add (``neighbour_idx``, ``neighbour_mask``,
      ``anchor_mask``).
    centres: ``[N, D]`` centre bank, or ``None``.
    centre_labels: ``[N]`` int, or ``None``.
    centre_log_weights: ``[N]`` trainable theta, or ``None``.
    params: the network parameters (``params["proxies"]`` with proxies).
  """

  embeddings: jax.Array
  logits: jax.Array | None
  batch: dict[str, jax.Array]
  centres: jax.Array | None
  centre_labels: jax.Array | None
  centre_log_weights: jax.Array | None
  params: Any = None


@dataclasses.dataclass(frozen=True)
class Objective:
  """A named loss and what it needs from the trainer (see module doc)."""

  name: str
  per_example_loss: Callable[[LossInputs, Any], jax.Array]
  uses_centre_bank: bool = False
  uses_neighbour_graph: bool = False
  uses_classifier_head: bool = False
  uses_proxies: bool = False
  sampler: str = "random"
  prepare_batch: Callable[[dict, Any, int], dict] | None = None


def _options(config, name: str):
  return config.losses[name]


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
    "nngk": Objective("nngk", _nngk_loss, uses_centre_bank=True,
                      uses_neighbour_graph=True),
    "softmax": Objective("softmax", _softmax_loss, uses_classifier_head=True),
}


def get_objective(name: str) -> Objective:
  """The objective registered as ``name``.

  Examples:
    >>> get_objective("nngk").uses_neighbour_graph
    True
  """
  if name not in OBJECTIVES:
    raise ValueError(
        f"unknown objective {name!r}; known: {', '.join(sorted(OBJECTIVES))}")
  return OBJECTIVES[name]


def register(objective: Objective) -> Objective:
  """Adds ``objective`` to :data:`OBJECTIVES` (a new loss is one call)."""
  if objective.sampler not in ("random", "class_balanced"):
    raise ValueError(f"unknown sampler {objective.sampler!r}")
  OBJECTIVES[objective.name] = objective
  return objective

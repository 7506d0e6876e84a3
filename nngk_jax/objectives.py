"""Training objectives, looked up by the config's ``objective`` name.

An :class:`Objective` tells the trainer what a loss needs and how to turn
one batch's network outputs into the loss. Adding one is a new entry in
:data:`OBJECTIVES` (:func:`register`); the training loop has no per-loss
branches. What a loss can ask for:

* ``make_bank``: a centre bank (:class:`nngk_jax.bank.CentreBank`): the
  whole training split's embeddings, refreshed every ``nngk.refresh_every``
  epochs, with its neighbour graph and per-centre weights as the loss needs
  (NNGK: graph and weights; vMF: the bank alone, for its class means). The
  loss reads it as ``inputs.bank`` (a :class:`nngk_jax.bank.BankView`), and
  each batch carries the bank's ``batch_extras`` (``neighbour_idx``,
  ``neighbour_mask``, ``has_positive``).
* ``uses_classifier_head``: a linear classifier on the embedding (logits).
* ``uses_proxies``: a trainable ``[num_classes, D]`` matrix ``proxies`` in
  the network's parameters.
* ``sampler``: ``"random"`` batches or ``"class_balanced"`` (m per class).
* ``prepare_batch``: host-side additions to each batch (e.g. Group Loss
  anchors).
* ``geometry``: ``"cosine"`` for a loss that sees only the embeddings'
  directions (proxy, vMF, rank and group losses), ``"euclidean"`` for one
  that uses distances between raw embeddings (NNGK, softmax, NCA, triplet).
  Evaluation scores the embeddings in that geometry (cosine: L2-normalised
  before the Euclidean search, which ranks by cosine similarity); see
  :func:`evaluation_geometry`.

The maths lives in :mod:`nngk_jax.loss`; objectives only wire config fields
and batch arrays into those pure functions. ``Objective.loss`` returns the
scalar the trainer differentiates: a per-example loss averaged over the
batch's valid rows (:func:`masked_mean`), or a loss that is defined over
the whole batch (Proxy-Anchor, NCA, triplet, ...) computed with
``where=batch["valid"]``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from nngk_jax import bank as banklib
from nngk_jax import data as datalib
from nngk_jax import impostor as impostorlib
from nngk_jax import loss as losses

__all__ = ["GEOMETRIES", "OBJECTIVES", "LossInputs", "Objective",
           "evaluation_geometry", "get_objective", "masked_mean", "register"]

GEOMETRIES = ("euclidean", "cosine")


class LossInputs(NamedTuple):
  """What a loss may read in one train step.

  Attributes:
    embeddings: ``[batch, D]`` network embeddings (train mode).
    logits: ``[batch, C]`` classifier logits, or ``None`` without a head.
    batch: the batch dict: ``image``, ``label`` ``[batch]``, ``index``
      ``[batch]``, ``valid`` ``[batch]``, plus the bank's ``batch_extras``
      and ``prepare_batch``'s additions (``anchor_mask``).
    params: the parameters (``params["proxies"]`` with proxies).
    num_classes: number of training classes (static).
    bank: the centre bank's view (centres, labels, log-weights), or ``None``.
  """

  embeddings: jax.Array
  logits: jax.Array | None
  batch: dict[str, jax.Array]
  params: Any = None
  num_classes: int | None = None
  bank: banklib.BankView | None = None


def masked_mean(per_example: jax.Array, valid: jax.Array) -> jax.Array:
  """Mean of ``per_example`` over the rows where ``valid`` is True.

  Examples:
    >>> import jax.numpy as jnp
    >>> float(masked_mean(jnp.array([1.0, 3.0, 100.0]),
    ...                   jnp.array([True, True, False])))
    2.0
  """
  valid = valid.astype(per_example.dtype)
  return jnp.sum(per_example * valid) / jnp.maximum(jnp.sum(valid), 1.0)


BankFactory = Callable[[Any, np.ndarray, int], banklib.CentreBank]


@dataclasses.dataclass(frozen=True)
class Objective:
  """A named loss and what it needs from the trainer (see module doc).

  ``loss(inputs, config)`` returns the scalar to minimise;
  ``make_bank(config, train_labels, embed_dim)`` builds its centre bank.
  """

  name: str
  loss: Callable[[LossInputs, Any], jax.Array]
  make_bank: BankFactory | None = None
  uses_classifier_head: bool = False
  uses_proxies: bool = False
  sampler: str = "random"
  prepare_batch: Callable[[dict, Any, int], dict] | None = None
  defaults: dict[str, Any] = dataclasses.field(default_factory=dict)
  geometry: str = "euclidean"


def loss_options(config, name: str) -> dict[str, Any]:
  """``OBJECTIVES[name].defaults`` updated by ``config.losses[name]``."""
  options = dict(OBJECTIVES[name].defaults)
  given = config.get("losses", {}).get(name, {})
  unknown = set(given) - set(options)
  if unknown:
    raise ValueError(
        f"unknown option(s) {sorted(unknown)} for loss {name!r}; known: "
        f"{sorted(options)}")
  options.update(given)
  return options


NO_POSITIVE_RULES = ("authors", "skip")


def no_positive_rule(config: Any) -> str:
  """``config.nngk.no_positive`` (default ``"authors"``), checked."""
  rule = config.nngk.get("no_positive", "authors")
  if rule not in NO_POSITIVE_RULES:
    raise ValueError(f"nngk.no_positive must be one of {NO_POSITIVE_RULES}, "
                     f"got {rule!r}")
  return rule


def _nngk_loss(inputs: LossInputs, config: Any) -> jax.Array:
  """The NNGK loss of each example against the stored centres, averaged.

  ``config.nngk.no_positive`` decides what an example with no same-class
  centre among its neighbours contributes: ``"authors"`` (the default of
  the loss function) its value and gradient as in the authors' code, which
  push it away from all its neighbours; ``"skip"`` nothing (loss 0, no
  gradient; the bank marks those rows, ``batch["has_positive"]``): its
  neighbourhood holds no evidence about its own class. On L2-normalised
  embeddings the authors' push collapses the embedding (the network turns
  every output away from the stale bank; docs/results.md), so the glyph
  recipe skips. Every other example keeps its exact loss and gradient,
  however small ``p(y|x)`` is.
  """
  bank = inputs.bank
  per_example = losses.gaussian_kernel_loss(
      inputs.embeddings, inputs.batch["label"], bank.centres, bank.labels,
      bank.rows(inputs.batch)[0], sigma=config.nngk.sigma,
      centre_log_weights=bank.log_weights,
      neighbour_mask=inputs.batch["neighbour_mask"],
      num_classes=inputs.num_classes)
  if no_positive_rule(config) == "skip":
    per_example = jnp.where(inputs.batch["has_positive"], per_example, 0.0)
  return masked_mean(per_example, inputs.batch["valid"])


def _impostor_loss(inputs: LossInputs, config: Any) -> jax.Array:
  """Impostor networks: the unweighted kernel vote over the bank's centres,
  plus the loose variant's L2 tie of each example to its own centre
  (:func:`nngk_jax.loss.impostor_loss`; ``nngk.no_positive`` as for NNGK)."""
  bank, batch = inputs.bank, inputs.batch
  tie = impostorlib.tie_weight(config.impostor.variant, config.impostor.tie)
  per_example = losses.impostor_loss(
      inputs.embeddings, batch["label"], bank.centres, bank.labels,
      *bank.rows(batch), sigma=config.nngk.sigma, tie=tie,
      neighbour_mask=batch["neighbour_mask"], num_classes=inputs.num_classes,
      vote_mask=(batch["has_positive"] if no_positive_rule(config) == "skip"
                 else None))
  return masked_mean(per_example, batch["valid"])


def _impostor_bank(config: Any, labels: np.ndarray,
                   dim: int) -> banklib.CentreBank:
  no_positive_rule(config)
  if not config.nngk.sigma > 0:
    raise ValueError(f"nngk.sigma must be positive, got {config.nngk.sigma}")
  if "impostor" not in config:
    raise ValueError("objective 'impostor' needs a config.impostor section "
                     "(variant, tie, learning_rate, optimizer, sparse); see "
                     "nngk_jax/configs/digits.py")
  return impostorlib.ImpostorBank.from_config(config, labels, dim)


def _nngk_bank(config: Any, labels: np.ndarray,
               dim: int) -> banklib.CentreBank:
  no_positive_rule(config)  # checked before any work, not at the first step
  if not config.nngk.sigma > 0:
    raise ValueError(f"nngk.sigma must be positive, got {config.nngk.sigma}")
  return banklib.CentreBank.from_config(config, labels, dim)


def _vmf_bank(config: Any, labels: np.ndarray,
              dim: int) -> banklib.CentreBank:
  return banklib.CentreBank.from_config(config, labels, dim, graph=False,
                                        weights=False)


def _softmax_loss(inputs: LossInputs, config: Any) -> jax.Array:
  del config
  return masked_mean(optax.softmax_cross_entropy_with_integer_labels(
      inputs.logits, inputs.batch["label"]), inputs.batch["valid"])


def _vmf_loss(inputs: LossInputs, config: Any) -> jax.Array:
  # Class means from the whole training split's embeddings, as of the last
  # refresh (every nngk.refresh_every epochs): global and periodic.
  means = losses.vmf_class_means(inputs.bank.centres, inputs.bank.labels,
                                 num_classes=inputs.num_classes)
  return masked_mean(
      losses.vmf_loss(inputs.embeddings, inputs.batch["label"], means,
                      **loss_options(config, "vmf")), inputs.batch["valid"])


def _normalized_softmax_loss(inputs: LossInputs, config: Any) -> jax.Array:
  return masked_mean(losses.normalized_softmax_loss(
      inputs.embeddings, inputs.batch["label"], inputs.params["proxies"],
      **loss_options(config, "normalized_softmax")), inputs.batch["valid"])


def _proxy_nca_loss(inputs: LossInputs, config: Any) -> jax.Array:
  return masked_mean(losses.proxy_nca_loss(
      inputs.embeddings, inputs.batch["label"], inputs.params["proxies"],
      **loss_options(config, "proxy_nca")), inputs.batch["valid"])


def _proxy_anchor_loss(inputs: LossInputs, config: Any) -> jax.Array:
  return losses.proxy_anchor_loss(
      inputs.embeddings, inputs.batch["label"], inputs.params["proxies"],
      where=inputs.batch["valid"], **loss_options(config, "proxy_anchor"))


def _nca_loss(inputs: LossInputs, config: Any) -> jax.Array:
  valid = inputs.batch["valid"]
  return masked_mean(
      losses.nca_loss(inputs.embeddings, inputs.batch["label"], where=valid,
                      **loss_options(config, "nca")), valid)


def _triplet_loss(inputs: LossInputs, config: Any) -> jax.Array:
  valid = inputs.batch["valid"]
  return masked_mean(losses.triplet_semihard_loss(
      inputs.embeddings, inputs.batch["label"], where=valid,
      **loss_options(config, "triplet")), valid)


def _rank_loss(inputs: LossInputs, config: Any) -> jax.Array:
  valid = inputs.batch["valid"]
  return masked_mean(losses.rank_approximation_loss(
      inputs.embeddings, inputs.batch["label"], where=valid,
      **loss_options(config, "rank")), valid)


def _group_anchors(batch: dict, config: Any, epoch: int) -> dict:
  options = loss_options(config, "group")
  rng = np.random.default_rng([config.seed, epoch, int(batch["index"][0])])
  batch["anchor_mask"] = losses.choose_anchors(
      batch["label"], options["num_anchors"], rng)
  return batch


def _group_loss(inputs: LossInputs, config: Any) -> jax.Array:
  options = loss_options(config, "group")
  return masked_mean(losses.group_loss_with_ce(
      inputs.embeddings, inputs.logits, inputs.batch["label"],
      inputs.batch["anchor_mask"], temperature=options["temperature"],
      num_iterations=options["num_iterations"],
      zero_diagonal=options["zero_diagonal"]), inputs.batch["valid"])


OBJECTIVES: dict[str, Objective] = {
    "nngk": Objective("nngk", _nngk_loss, make_bank=_nngk_bank),
    "impostor": Objective("impostor", _impostor_loss,
                          make_bank=_impostor_bank),
    "softmax": Objective("softmax", _softmax_loss, uses_classifier_head=True),
    "vmf": Objective("vmf", _vmf_loss, make_bank=_vmf_bank,
                     defaults={"kappa": 16.0}, geometry="cosine"),
    "normalized_softmax": Objective(
        "normalized_softmax", _normalized_softmax_loss, uses_proxies=True,
        defaults={"temperature": 0.05}, geometry="cosine"),
    "proxy_nca": Objective("proxy_nca", _proxy_nca_loss, uses_proxies=True,
                           defaults={"scale": 3.0}, geometry="cosine"),
    "proxy_anchor": Objective(
        "proxy_anchor", _proxy_anchor_loss, uses_proxies=True,
        defaults={"margin": 0.1, "alpha": 32.0}, geometry="cosine"),
    "nca": Objective("nca", _nca_loss, defaults={"sigma": 0.25}),
    "triplet": Objective("triplet", _triplet_loss, sampler="class_balanced",
                         defaults={"margin": 0.2}),
    "rank": Objective("rank", _rank_loss, sampler="class_balanced",
                      defaults={"temperature": 0.01, "transfer": "power",
                                "gamma": 2.0, "margin": 0.0},
                      geometry="cosine"),
    # Official recipe (CUB): 6 classes x 9 samples, 2 anchors, T = 24. The
    # official code keeps W's self-similarity diagonal (zero_diagonal=False);
    # its comments and the paper's text zero it, which is the default here.
    "group": Objective("group", _group_loss, uses_classifier_head=True,
                       sampler="class_balanced", prepare_batch=_group_anchors,
                       defaults={"temperature": 24.0, "num_anchors": 2,
                                 "num_iterations": 1, "zero_diagonal": True},
                       geometry="cosine"),
}


def get_objective(name: str) -> Objective:
  """The objective registered as ``name``.

  Examples:
    >>> get_objective("proxy_anchor").uses_proxies
    True
  """
  if name not in OBJECTIVES:
    raise ValueError(
        f"unknown objective {name!r}; known: {', '.join(sorted(OBJECTIVES))}")
  return OBJECTIVES[name]


def evaluation_geometry(config: Any) -> str:
  """The geometry the trained embeddings are scored in: its objective's.

  ``"cosine"`` when the objective declares it or when the network already
  L2-normalises its embeddings (``config.model.normalize``: then both
  geometries rank alike); ``"euclidean"`` otherwise.

  Examples:
    >>> import ml_collections
    >>> c = ml_collections.ConfigDict(
    ...     {"objective": "proxy_anchor", "model": {"normalize": False}})
    >>> evaluation_geometry(c)
    'cosine'
    >>> c.objective = "nngk"
    >>> evaluation_geometry(c)
    'euclidean'
  """
  if config.model.get("normalize", False):
    return "cosine"
  return get_objective(config.objective).geometry


def register(objective: Objective) -> Objective:
  """Adds ``objective`` to :data:`OBJECTIVES` (a new loss is one call)."""
  if objective.sampler not in datalib.SAMPLERS:
    raise ValueError(f"unknown sampler {objective.sampler!r}")
  if objective.geometry not in GEOMETRIES:
    raise ValueError(f"unknown geometry {objective.geometry!r}; known: "
                     f"{GEOMETRIES}")
  OBJECTIVES[objective.name] = objective
  return objective

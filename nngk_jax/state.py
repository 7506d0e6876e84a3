"""The train state, in flax's shape: one parameter tree, one optimiser.

``TrainState.params`` holds the network's parameters (with ``proxies`` for
the proxy losses) and, for an objective with a centre bank, its trainable
parameters under ``params["bank"]`` (the per-centre log-weights). One
gradient of the loss with respect to that whole tree goes through one
``optax.multi_transform``: each parameter group (the bank's, and those named
by ``optimizer.lr_multipliers``) has its own learning rate. The bank's
arrays (centres, labels) sit beside them in ``state.bank``; BatchNorm
statistics in ``state.batch_stats``.
"""

from __future__ import annotations

import functools
import pathlib
import re
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax.training import train_state

from nngk_jax import bank as banklib
from nngk_jax import models
from nngk_jax import objectives

__all__ = ["BANK_PARAMS", "TrainState", "build_model", "create_train_state",
           "embedding_dim", "load_pretrained", "make_optimizer",
           "pretrained_weights_path"]

# The key of the bank's parameters in ``TrainState.params``.
BANK_PARAMS = "bank"


class TrainState(train_state.TrainState):
  """Parameters, optimiser state, BatchNorm statistics and the bank's arrays.

  Attributes (beyond flax's ``step``, ``params``, ``tx``, ``opt_state``):
    batch_stats: BatchNorm running statistics.
    bank: the centre bank's arrays (:class:`nngk_jax.bank.BankState`), or
      ``None`` for an objective without a bank.
    rng: raw ``uint32`` PRNG key data (for stochastic layers).
  """

  batch_stats: Any
  bank: banklib.BankState | None
  rng: jax.Array

  def network_variables(self, params: Any = None) -> dict[str, Any]:
    """``{"params", "batch_stats"}`` for ``apply_fn``: the bank's left out."""
    params = self.params if params is None else params
    return {"params": {k: v for k, v in params.items() if k != BANK_PARAMS},
            "batch_stats": self.batch_stats}


def build_model(config, num_classes: int) -> models.EmbeddingNet:
  """The embedding network named by ``config.model``."""
  objective = objectives.get_objective(config.objective)
  # Lists (from JSON) become tuples: module attributes must be hashable.
  kwargs = {k: tuple(v) if isinstance(v, list) else v
            for k, v in dict(config.model.backbone_kwargs).items()}
  backbone = models.get_backbone(config.model.backbone, **kwargs)
  return models.EmbeddingNet(
      backbone=backbone, embed_dim=config.model.embed_dim,
      num_classes=num_classes if objective.uses_classifier_head else None,
      num_proxies=num_classes if objective.uses_proxies else None,
      normalize=config.model.get("normalize", False))


def make_optimizer(config, bank: banklib.CentreBank | None = None
                   ) -> optax.GradientTransformation:
  """``optax.<config.optimizer.name>(**config.optimizer)``, per parameter group.

  ``config.optimizer.lr_multipliers`` (optional) maps a regular expression
  to a learning-rate multiplier, as big_vision's ``lr_mults``: a parameter
  whose ``/``-joined path (e.g. ``"proxies"``, ``"embedding/kernel"``)
  matches the first pattern that ``re.search`` finds in it trains at
  ``learning_rate * multiplier``; every other parameter at
  ``learning_rate``. The bank's parameters (``params["bank"]``) train with
  ``bank.optimizer()`` (Adam at ``nngk.weights_learning_rate``). The groups
  share one optimiser state and one gradient (``optax.multi_transform``).
  The Proxy-Anchor authors train the proxies at 100x the network's rate:
  ``{"proxies": 100.0}``.

  Examples:
    >>> import ml_collections, jax.numpy as jnp
    >>> c = ml_collections.ConfigDict({"optimizer": {
    ...     "name": "sgd", "learning_rate": 0.1, "lr_multipliers": {"p": 10.0}}})
    >>> tx = make_optimizer(c)
    >>> params = {"p": jnp.ones(1), "w": jnp.ones(1)}
    >>> updates, _ = tx.update(params, tx.init(params), params)
    >>> [round(float(updates[k][0]), 3) for k in ("p", "w")]
    [-1.0, -0.1]
  """
  options = dict(config.optimizer)
  name = options.pop("name")
  multipliers = dict(options.pop("lr_multipliers", None) or {})
  factory = getattr(optax, name, None)
  if factory is None or not callable(factory):
    raise ValueError(f"optimizer {name!r} is not an optax optimizer")
  bank_tx = bank.optimizer() if bank is not None and bank.init_params() else None
  if not multipliers and bank_tx is None:
    return factory(**options)
  for pattern, multiplier in multipliers.items():
    try:
      re.compile(pattern)
    except re.error as error:
      raise ValueError(f"optimizer.lr_multipliers: bad pattern {pattern!r}: "
                       f"{error}") from None
    if not isinstance(multiplier, (int, float)) or not multiplier > 0:
      raise ValueError(f"optimizer.lr_multipliers[{pattern!r}] must be a "
                       f"positive number, got {multiplier!r}")
  rate = options.pop("learning_rate")
  transforms = {"default": factory(learning_rate=rate, **options)}
  for pattern, multiplier in multipliers.items():
    transforms[pattern] = factory(learning_rate=rate * multiplier, **options)
  if bank_tx is not None:
    transforms[BANK_PARAMS] = bank_tx

  def label(path, _):
    keys = [str(getattr(key, "key", key)) for key in path]
    if bank_tx is not None and keys[0] == BANK_PARAMS:
      return BANK_PARAMS
    joined = "/".join(keys)
    return next((p for p in multipliers if re.search(p, joined)), "default")

  return optax.multi_transform(
      transforms, lambda params: jax.tree_util.tree_map_with_path(label, params))


def create_train_state(rng: jax.Array, config, model: models.EmbeddingNet,
                       image_shape: tuple[int, ...],
                       bank: banklib.CentreBank | None = None) -> TrainState:
  """Initialises the network, the bank's parameters and arrays, the optimiser."""
  init_rng, state_rng = jax.random.split(rng)
  sample = jnp.zeros((1,) + tuple(image_shape), jnp.float32)
  # One compiled initialisation: called eagerly, every initialiser is its
  # own small XLA compilation (104 for conv4, 5.8 s against 2.7 s jitted
  # on the 2-core CPU; the values are the same).
  variables = jax.jit(functools.partial(model.init, train=False))(init_rng,
                                                                  sample)
  params = dict(variables["params"])
  bank_state = None
  if bank is not None:
    bank_state = bank.init_state()
    bank_params = bank.init_params()
    if bank_params:
      params[BANK_PARAMS] = bank_params
  return TrainState.create(
      apply_fn=model.apply,
      params=params,
      tx=make_optimizer(config, bank),
      batch_stats=variables.get("batch_stats", {}),
      bank=bank_state,
      rng=jax.random.key_data(state_rng),
  )


def pretrained_weights_path(config) -> pathlib.Path | None:
  """``config.model.pretrained`` as a path, checked to exist (None if unset)."""
  path = config.model.get("pretrained")
  if not path:
    return None
  path = pathlib.Path(path).expanduser()
  if not path.is_file():
    raise FileNotFoundError(
        f"model.pretrained: ImageNet weights {str(path)!r} not found. On a "
        f"machine with internet, get them with the one-line command in "
        f"docs/pretrained.md (torchvision or timm {config.model.backbone} "
        f"saved as safetensors) and copy the file there, or pass "
        f"model.pretrained=None to train from random initialisation.")
  return path


def load_pretrained(state: TrainState, config) -> TrainState:
  """The state with its backbone replaced by ``config.model.pretrained``."""
  from nngk_jax import pretrained  # pylint: disable=g-import-not-at-top
  path = pretrained_weights_path(config)
  if path is None:
    return state
  variables = pretrained.load_backbone_weights(
      state.network_variables(), path, arch=config.model.backbone)
  params = dict(variables["params"])
  if BANK_PARAMS in state.params:
    params[BANK_PARAMS] = state.params[BANK_PARAMS]
  return state.replace(params=params, batch_stats=variables["batch_stats"])


def embedding_dim(model: models.EmbeddingNet,
                  image_shape: tuple[int, ...]) -> int:
  """Size of ``model``'s embedding for images of ``image_shape`` (no compute)."""
  sample = jax.ShapeDtypeStruct((1,) + tuple(image_shape), jnp.float32)
  (embeddings, _), _ = jax.eval_shape(
      lambda x: model.init_with_output(jax.random.key(0), x, train=False),
      sample)
  return int(embeddings.shape[-1])

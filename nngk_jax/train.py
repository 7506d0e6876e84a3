"""Training and evaluation: the NNGK loop and the softmax baseline.

The shape of a run (``train_and_evaluate``):

1. Load the dataset by name, build the network and the train state.
2. Resume from the newest checkpoint in the work directory, if any.
3. Each epoch: when due (``nngk.refresh_every``), re-embed the whole training
   split in eval mode and store it as the centre bank; (re)build the
   neighbour graph on the host; then one pass of the jitted, buffer-donating
   ``train_step`` over shuffled batches, each carrying its rows of the graph.
4. Evaluate, append to ``history.jsonl``, checkpoint, redraw the curves.
5. Write ``metrics.json`` with the final evaluation.

Host-side work (data, graph, checkpoints, metrics) stays outside ``jax.jit``;
the step is one jitted function over ``(state, batch)`` with no per-device
Python, ready for sharding annotations.
"""

from __future__ import annotations

import argparse
import ast
import functools
import importlib.util
import inspect
import json
import math
import os
import pathlib
import re
import signal
import sys
import time
from typing import Any, Iterator

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax.training import train_state
from tqdm.auto import tqdm

from nngk_jax import checkpoint as checkpointing
from nngk_jax import data as datalib
from nngk_jax import loss as losses
from nngk_jax import metrics as metriclib
from nngk_jax import models
from nngk_jax import neighbours as neighbourlib
from nngk_jax import objectives
from nngk_jax import plotting

__all__ = [
    "TrainState",
    "TrainingDivergedError",
    "create_train_state",
    "embed_split",
    "evaluate",
    "load_trained",
    "main",
    "make_train_step",
    "train_and_evaluate",
]

# Config fields that may change when a run is resumed from its workdir.
RESUMABLE_FIELDS = ("num_epochs", "eval_every", "progress", "eval_batch_size",
                    "nmi", "eval_search", "nmi_method")
# Test hook: a process whose global step reaches this value kills itself with
# SIGKILL (to test that a killed run resumes to the same result).
FAULT_ENV = "NNGK_JAX_SIGKILL_AT_STEP"
CONFIG_DIR = pathlib.Path(__file__).resolve().parent.parent / "experiments" / "configs"


class TrainingDivergedError(RuntimeError):
  """The loss or the embeddings became NaN or infinite."""


class TrainState(train_state.TrainState):
  """Network state plus the NNGK centre bank.

  Attributes (beyond flax's ``step``, ``params``, ``tx``, ``opt_state``):
    batch_stats: BatchNorm running statistics.
    centres: ``[N, D]`` embeddings of the training split at the last refresh.
    centre_labels: ``[N]`` int labels of the centres.
    centre_log_weights: ``[N]`` trainable theta, ``w = exp(theta)``.
    weights_opt_state: optimizer state of ``centre_log_weights``.
    (These four are ``None`` for objectives without a centre bank.)
    weights_tx: their optimizer (its own learning rate).
    rng: raw ``uint32`` PRNG key data (for stochastic layers).
  """

  batch_stats: Any
  centres: jax.Array
  centre_labels: jax.Array
  centre_log_weights: jax.Array
  weights_opt_state: optax.OptState
  rng: jax.Array
  weights_tx: optax.GradientTransformation = flax.struct.field(
      pytree_node=False)

  def apply_all_gradients(self, grads, weight_grads, batch_stats):
    """One optimizer step for the network and for the centre log-weights."""
    state = self.apply_gradients(grads=grads, batch_stats=batch_stats)
    if self.centre_log_weights is None:
      return state
    updates, weights_opt_state = self.weights_tx.update(
        weight_grads, self.weights_opt_state, self.centre_log_weights)
    return state.replace(
        centre_log_weights=optax.apply_updates(self.centre_log_weights,
                                               updates),
        weights_opt_state=weights_opt_state)


# ----------------------------------------------------------------------------
# Building blocks.


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


def make_optimizer(config) -> optax.GradientTransformation:
  """``optax.<config.optimizer.name>(**config.optimizer)``, per parameter group.

  ``config.optimizer.lr_multipliers`` (optional) maps a regular expression
  to a learning-rate multiplier, as big_vision's ``lr_mults``: a parameter
  whose ``/``-joined path (e.g. ``"proxies"``, ``"embedding/kernel"``)
  matches the first pattern that ``re.search`` finds in it trains at
  ``learning_rate * multiplier``; every other parameter at
  ``learning_rate``. The groups share one optimiser state and one gradient
  (``optax.multi_transform``). The Proxy-Anchor authors train the proxies at
  100x the network's rate: ``{"proxies": 100.0}``.

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
  if not multipliers:
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

  def label(path, _):
    joined = "/".join(str(getattr(key, "key", key)) for key in path)
    return next((p for p in multipliers if re.search(p, joined)), "default")

  return optax.multi_transform(
      transforms, lambda params: jax.tree_util.tree_map_with_path(label, params))


def create_train_state(rng: jax.Array, config, model: models.EmbeddingNet,
                       train_split: datalib.Split) -> TrainState:
  """Initialises the network, optimizers and an empty or zero centre bank."""
  objective = objectives.get_objective(config.objective)
  init_rng, state_rng = jax.random.split(rng)
  sample = jnp.zeros((1,) + train_split.image_shape, jnp.float32)
  # init runs the network once anyway: keep its output for the embedding size.
  (embeddings, _), variables = model.init_with_output(init_rng, sample,
                                                      train=False)
  weights_tx = optax.adam(config.nngk.weights_learning_rate)
  bank = {"centres": None, "centre_labels": None, "centre_log_weights": None,
          "weights_opt_state": None}
  if objective.uses_centre_bank:
    num_centres = len(train_split)
    log_weights = jnp.zeros((num_centres,), jnp.float32)
    bank = {
        "centres": jnp.zeros((num_centres, embeddings.shape[-1]),
                             jnp.float32),
        "centre_labels": jnp.asarray(train_split.labels, jnp.int32),
        "centre_log_weights": log_weights,
        "weights_opt_state": weights_tx.init(log_weights),
    }
  return TrainState.create(
      apply_fn=model.apply,
      params=variables["params"],
      tx=make_optimizer(config),
      batch_stats=variables.get("batch_stats", {}),
      weights_tx=weights_tx,
      rng=jax.random.key_data(state_rng),
      **bank,
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
      {"params": state.params, "batch_stats": state.batch_stats}, path,
      arch=config.model.backbone)
  return state.replace(params=variables["params"],
                       batch_stats=variables["batch_stats"])


def make_train_step(config, num_classes: int | None = None):
  """The jitted ``train_step(state, batch) -> (state, metrics)``.

  The state's buffers are donated: the caller must not reuse the old state.
  ``metrics`` holds the mean loss over valid rows, the global norms of the
  gradient and of the parameters, and the mean L2 norm of the batch's
  (train-mode) embeddings.
  """
  objective = objectives.get_objective(config.objective)

  def loss_fn(params, centre_log_weights, state, batch):
    (embeddings, logits), updates = state.apply_fn(
        {"params": params, "batch_stats": state.batch_stats}, batch["image"],
        train=True, mutable=["batch_stats"])
    inputs = objectives.LossInputs(
        embeddings=embeddings, logits=logits, batch=batch,
        centres=state.centres, centre_labels=state.centre_labels,
        centre_log_weights=centre_log_weights, params=params,
        num_classes=num_classes)
    per_example = objective.per_example_loss(inputs, config)
    valid = batch["valid"].astype(embeddings.dtype)
    num_valid = jnp.maximum(jnp.sum(valid), 1.0)
    norms = jnp.sqrt(jnp.sum(embeddings * embeddings, axis=-1))
    embedding_norm = jax.lax.stop_gradient(jnp.sum(norms * valid) / num_valid)
    aux = (updates["batch_stats"], embedding_norm,
           jax.lax.stop_gradient(embeddings))
    if per_example.ndim == 0:  # a loss that does not decompose per example
      return per_example, aux
    loss = jnp.sum(per_example * valid) / num_valid
    return loss, aux

  momentum = config.nngk.get("batch_centre_momentum")
  update_bank = objective.uses_centre_bank and momentum is not None

  def train_step(state: TrainState, batch):
    grad_fn = jax.value_and_grad(loss_fn, argnums=(0, 1), has_aux=True)
    (loss, (batch_stats, embedding_norm, embeddings)), (
        grads, weight_grads) = grad_fn(state.params, state.centre_log_weights,
                                       state, batch)
    new_state = state.apply_all_gradients(grads, weight_grads, batch_stats)
    if update_bank:
      new_state = new_state.replace(centres=update_batch_centres(
          state.centres, embeddings, batch["index"], batch["valid"],
          momentum=momentum))
    step_metrics = {"loss": loss, "grad_norm": optax.global_norm(grads),
                    "param_norm": optax.global_norm(new_state.params),
                    "embedding_norm": embedding_norm}
    return new_state, step_metrics

  return jax.jit(train_step, donate_argnums=0)


def update_batch_centres(centres: jax.Array, embeddings: jax.Array,
                         index: jax.Array, valid: jax.Array, *,
                         momentum: float) -> jax.Array:
  r"""The bank with the batch's own centres moved toward their new embeddings.

  .. math::
    c_{i_b} \leftarrow m\, c_{i_b} + (1 - m)\, f(x_b)

  for every valid row ``b`` of the batch (``index[b]`` its training
  example). Between full refreshes this keeps the centres of the examples
  just seen current, as the memory banks of scalable NCA (Wu et al., 2018)
  do; ``momentum = 0`` replaces them outright. Config:
  ``nngk.batch_centre_momentum`` (``None``: off, the paper's weak update).

  Args:
    centres: ``[N, D]`` bank.
    embeddings: ``[batch, D]`` the batch's embeddings (no gradient).
    index: ``[batch]`` int rows of ``centres``; distinct among valid rows.
    valid: ``[batch]`` bool; invalid rows leave the bank as it is.
    momentum: weight of the old centre, in ``[0, 1]``.

  Returns:
    ``[N, D]`` the updated bank.

  Examples:
    >>> import jax.numpy as jnp
    >>> bank = update_batch_centres(jnp.zeros((3, 1)), jnp.ones((2, 1)),
    ...     jnp.array([2, 0]), jnp.array([True, False]), momentum=0.5)
    >>> bank[:, 0].tolist()
    [0.0, 0.0, 0.5]
  """
  old = centres[index]
  new = momentum * old + (1.0 - momentum) * embeddings.astype(centres.dtype)
  return centres.at[index].set(jnp.where(valid[:, None], new, old))


@functools.lru_cache(maxsize=8)
def _embed_fn(apply_fn):
  @jax.jit
  def embed(params, batch_stats, images):
    return apply_fn({"params": params, "batch_stats": batch_stats}, images,
                    train=False)
  return embed


def embed_split(state: TrainState, split: datalib.Split,
                batch_size: int) -> tuple[np.ndarray, np.ndarray | None]:
  """Eval-mode embeddings (and logits) of a whole split, in split order.

  Returns:
    ``(embeddings [N, D], logits [N, C] or None)`` as numpy arrays.
  """
  embed = _embed_fn(state.apply_fn)
  batch_size = min(batch_size, len(split))
  embeddings, logits = [], []
  for batch in datalib.iterate_batches(split, batch_size, seed=0, epoch=0,
                                       shuffle=False, drop_last=False):
    emb, lg = embed(state.params, state.batch_stats, batch["image"])
    keep = batch["valid"]
    embeddings.append(np.asarray(emb)[keep])
    if lg is not None:
      logits.append(np.asarray(lg)[keep])
  return (np.concatenate(embeddings),
          np.concatenate(logits) if logits else None)


def _check_finite(name: str, array: np.ndarray, where: str) -> None:
  bad = ~np.isfinite(array).all(axis=tuple(range(1, array.ndim)))
  if bad.any():
    raise TrainingDivergedError(
        f"{int(bad.sum())} of {len(array)} {name} are NaN or infinite {where}"
        f" (first bad row: {int(np.argmax(bad))}); training stopped, the last"
        f" good checkpoint is kept. Lower the learning rate or check the input"
        f" data.")


def refresh_centres(state: TrainState, train_split: datalib.Split, config,
                    epoch: int) -> TrainState:
  """Re-embeds the training split (eval mode) into ``state.centres``."""
  centres, _ = embed_split(state, train_split, config.eval_batch_size)
  _check_finite("centre embeddings", centres, f"at the refresh of epoch {epoch}")
  return state.replace(centres=jnp.asarray(centres))


def build_graph(state: TrainState, config) -> neighbourlib.NeighbourGraph:
  """The neighbour graph over the state's centres (host side)."""
  return neighbourlib.build_neighbour_graph(
      np.asarray(state.centres), k=config.nngk.k,
      backend=config.nngk.graph_backend,
      centre_labels=np.asarray(state.centre_labels),
      num_same_class=config.nngk.num_same_class, seed=config.seed)


def missing_positive_fraction(graph: neighbourlib.NeighbourGraph,
                              centre_labels: np.ndarray) -> float:
  """Share of centres with no same-class centre among their neighbours.

  Those examples get the floored loss (``-log 1e-10``) and no gradient;
  ``nngk.num_same_class > 0`` brings this to zero.

  Examples:
    >>> import numpy as np
    >>> g = neighbourlib.NeighbourGraph(np.array([[1], [0], [0]], np.int32),
    ...                                 np.ones((3, 1), bool))
    >>> missing_positive_fraction(g, np.array([0, 0, 1]))
    0.3333333333333333
  """
  same = centre_labels[graph.indices] == centre_labels[:, None]
  return float(np.mean(~(same & graph.mask).any(axis=1)))


def _in_geometry(embeddings: np.ndarray, geometry: str) -> np.ndarray:
  """``embeddings`` as scored in ``geometry`` (cosine: L2-normalised rows)."""
  if geometry == "euclidean":
    return embeddings
  norms = np.linalg.norm(embeddings, axis=1, keepdims=True)
  return embeddings / np.maximum(norms, 1e-12)


def log_weight_stats(state: TrainState) -> dict[str, float]:
  """Spread of the per-centre log-weights theta (empty without a bank)."""
  if state.centre_log_weights is None:
    return {}
  theta = np.asarray(state.centre_log_weights)
  return {"log_weight_std": float(theta.std()),
          "log_weight_min": float(theta.min()),
          "log_weight_max": float(theta.max())}


def evaluate(state: TrainState, dataset: datalib.Dataset, config) -> dict:
  """Retrieval metrics on the test split, plus accuracies for classification.

  Metric protocol (test classes unseen in training): Recall@K, MAP@R,
  R-precision and NMI, each test embedding queried against the others, in
  the objective's geometry (:func:`nngk_jax.objectives.evaluation_geometry`:
  cosine objectives are scored on L2-normalised embeddings); the result
  records it as ``"geometry"``. Classification protocol: the same retrieval
  metrics, plus the accuracy of the kernel classifier (test embedding
  against freshly embedded training centres, ``classifier_k`` nearest, NNGK
  vote, in the same geometry) and, with a classifier head, of the softmax
  head.
  """
  geometry = objectives.evaluation_geometry(config)
  test_emb, test_logits = embed_split(state, dataset.test,
                                      config.eval_batch_size)
  _check_finite("test embeddings", test_emb, "at evaluation")
  test_emb = _in_geometry(test_emb, geometry)
  results = metriclib.retrieval_metrics(
      test_emb, dataset.test.labels, recall_ks=tuple(config.recall_ks),
      nmi=config.nmi, seed=config.seed,
      search=config.get("eval_search", "exact"),
      nmi_method=config.get("nmi_method", "auto"))
  results["geometry"] = geometry
  if dataset.protocol == "classification":
    train_emb, _ = embed_split(state, dataset.train, config.eval_batch_size)
    predicted = kernel_classify(
        _in_geometry(train_emb, geometry), dataset.train.labels, test_emb,
        num_classes=dataset.train.num_classes, k=config.classifier_k,
        sigma=config.nngk.sigma,
        centre_log_weights=(np.asarray(state.centre_log_weights)
                            if state.centre_log_weights is not None
                            and config.nngk.learn_weights else None))
    results["kernel_accuracy"] = metriclib.accuracy(predicted,
                                                    dataset.test.labels)
    if test_logits is not None:
      results["softmax_accuracy"] = metriclib.accuracy(
          test_logits.argmax(axis=1), dataset.test.labels)
  return results


def kernel_classify(centres: np.ndarray, centre_labels: np.ndarray,
                    queries: np.ndarray, *, num_classes: int, k: int,
                    sigma: float, centre_log_weights: np.ndarray | None = None,
                    backend: str = "exact") -> np.ndarray:
  """NNGK kernel classifier: ``argmax_c p(c|x)`` over the k nearest centres.

  Args:
    centres: ``[N, D]`` training embeddings.
    centre_labels: ``[N]`` int.
    queries: ``[Q, D]`` embeddings to classify.
    num_classes: number of classes.
    k: neighbours per query (capped at ``N``).
    sigma: kernel width.
    centre_log_weights: optional ``[N]`` theta.
    backend: neighbour search backend (``nngk_jax.neighbours``).

  Returns:
    ``[Q]`` int predicted classes.
  """
  k = min(k, len(centres))
  idx = neighbourlib.query_neighbours(centres, queries, k=k, backend=backend)
  log_probs = losses.kernel_class_log_probs(
      jnp.asarray(queries), jnp.asarray(centres),
      jnp.asarray(centre_labels, jnp.int32), jnp.asarray(idx),
      num_classes=num_classes, sigma=sigma,
      centre_log_weights=(None if centre_log_weights is None
                          else jnp.asarray(centre_log_weights)))
  return np.asarray(jnp.argmax(log_probs, axis=1))


SAMPLERS = ("random", "class_balanced")


def sampler_name(config) -> str:
  """``config.sampler`` when set, else the objective's own sampler.

  ``"random"``: shuffled batches. ``"class_balanced"``: ``batch_size /
  samples_per_class`` classes per batch, ``samples_per_class`` images each.
  """
  name = config.get("sampler") or objectives.get_objective(
      config.objective).sampler
  if name not in SAMPLERS:
    raise ValueError(f"sampler must be one of {SAMPLERS} (or None for the "
                     f"objective's own), got {name!r}")
  return name


def validate_config(config, dataset: datalib.Dataset) -> None:
  """Clear errors for settings the data cannot support."""
  objective = objectives.get_objective(config.objective)
  pretrained_weights_path(config)  # a missing weights file stops at once
  n_train = len(dataset.train)
  if config.batch_size > n_train:
    raise ValueError(f"batch_size={config.batch_size} is larger than the "
                     f"training split ({n_train} images)")
  if objective.defaults:
    objectives.loss_options(config, objective.name)  # unknown options raise
  sampler = sampler_name(config)
  if sampler == "class_balanced":
    per_class = config.samples_per_class
    if per_class < 1 or config.batch_size % per_class:
      raise ValueError(
          f"batch_size={config.batch_size} must be a multiple of "
          f"samples_per_class={per_class} for the class-balanced sampler of "
          f"{objective.name!r}")
    if config.batch_size // per_class > dataset.train.num_classes:
      raise ValueError(
          f"batch_size / samples_per_class = {config.batch_size // per_class}"
          f" classes per batch, but the training split has only "
          f"{dataset.train.num_classes}")
  if objective.uses_neighbour_graph:
    if config.nngk.k >= n_train:
      raise ValueError(
          f"nngk.k={config.nngk.k} neighbours need a bank of more than "
          f"{config.nngk.k} centres, but the training split has {n_train} "
          f"images; lower nngk.k")
    if not config.nngk.sigma > 0:
      raise ValueError(f"nngk.sigma must be positive, got {config.nngk.sigma}")
    if config.nngk.refresh_every < 1:
      raise ValueError(f"nngk.refresh_every must be >= 1, got "
                       f"{config.nngk.refresh_every}")
    objectives.no_positive_rule(config)  # before any work, not at the step
  momentum = config.nngk.get("batch_centre_momentum")
  if momentum is not None and not 0.0 <= momentum <= 1.0:
    raise ValueError(f"nngk.batch_centre_momentum must lie in [0, 1] (or be "
                     f"None), got {momentum}")


# ----------------------------------------------------------------------------
# The loop.


def _batches_with_neighbours(split, config, epoch, graph) -> Iterator[dict]:
  """The sampler's batches, plus graph rows and ``prepare_batch`` additions."""
  objective = objectives.get_objective(config.objective)
  if sampler_name(config) == "class_balanced":
    batches = datalib.iterate_class_balanced_batches(
        split, config.batch_size // config.samples_per_class,
        config.samples_per_class, seed=config.seed, epoch=epoch,
        augment=True)
  else:
    batches = datalib.iterate_batches(split, config.batch_size,
                                      seed=config.seed, epoch=epoch,
                                      augment=True)
  for batch in batches:
    if graph is not None:
      batch["neighbour_idx"], batch["neighbour_mask"] = graph.rows(
          batch["index"])
    if objective.prepare_batch is not None:
      batch = objective.prepare_batch(batch, config, epoch)
    yield batch


def train_epoch(state, train_step, split, config, epoch, graph, *,
                workdir) -> tuple[TrainState, dict]:
  """One pass over the training split; returns the state and epoch stats."""
  fault_step = int(os.environ.get(FAULT_ENV, "-1"))
  num_steps = datalib.num_batches(split, config.batch_size)
  bar = tqdm(total=num_steps, desc=f"epoch {epoch + 1}/{config.num_epochs}",
             unit="step", disable=not config.progress, leave=False,
             dynamic_ncols=True)
  losses_seen, norms_seen, pending = [], [], None
  start = time.perf_counter()
  warm_start, warm_images = None, 0

  def check(step_metrics, step_in_epoch):
    loss = float(step_metrics["loss"])
    if not math.isfinite(loss):
      raise TrainingDivergedError(
          f"the loss became {loss} at epoch {epoch + 1}, step "
          f"{step_in_epoch + 1} of {num_steps}; training stopped. The last "
          f"good checkpoint is kept in {workdir}. Lower the learning rate "
          f"(optimizer.learning_rate) or check the input data.")
    losses_seen.append(loss)
    norms_seen.append(float(step_metrics["embedding_norm"]))

  for step_in_epoch, batch in enumerate(
      _batches_with_neighbours(split, config, epoch, graph)):
    if fault_step >= 0 and int(state.step) == fault_step:  # test hook only
      os.kill(os.getpid(), signal.SIGKILL)
    state, step_metrics = train_step(state, batch)
    # Check the previous step while this one runs (no pipeline stall).
    if pending is not None:
      check(*pending)
    pending = (step_metrics, step_in_epoch)
    if step_in_epoch == 0:
      jax.block_until_ready(step_metrics)
      warm_start = time.perf_counter()
    else:
      warm_images += config.batch_size
    if bar.n % 10 == 0 and losses_seen:
      rate = warm_images / max(time.perf_counter() - warm_start, 1e-9)
      bar.set_postfix(loss=f"{losses_seen[-1]:.4f}", img_s=f"{rate:.0f}")
    bar.update()
  if pending is not None:
    check(*pending)
  bar.close()
  end = time.perf_counter()
  stats = {
      "train_loss": float(np.mean(losses_seen)),
      "grad_norm": float(pending[0]["grad_norm"]),
      "param_norm": float(pending[0]["param_norm"]),
      "embedding_norm": float(np.mean(norms_seen)),
      "epoch_seconds": end - start,
      "images_per_second": (warm_images / (end - warm_start)
                            if warm_images else float("nan")),
  }
  return state, stats


def _config_dict(config) -> dict:
  return json.loads(config.to_json_best_effort())


def _read_history(path: pathlib.Path, upto_epoch: int) -> list[dict]:
  if not path.exists():
    return []
  records = [json.loads(line) for line in path.read_text().splitlines()
             if line.strip()]
  return [r for r in records if r["epoch"] <= upto_epoch]


def _write_history(path: pathlib.Path, history: list[dict]) -> None:
  tmp = path.with_suffix(".tmp")
  tmp.write_text("".join(json.dumps(r) + "\n" for r in history))
  tmp.replace(path)


def train_and_evaluate(config: ml_collections.ConfigDict,
                       workdir: str | os.PathLike) -> dict:
  """Trains ``config`` in ``workdir`` (resuming if it holds a checkpoint).

  Writes ``config.json``, ``history.jsonl`` (one record per epoch),
  ``metrics.json`` (final evaluation), ``loss.png`` / ``metrics.png`` and
  Orbax checkpoints under ``checkpoints/``.

  Returns:
    The final metrics (as in ``metrics.json``).
  """
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  objective = objectives.get_objective(config.objective)
  dataset = datalib.load_dataset(config.dataset, **dict(config.data))
  validate_config(config, dataset)

  store = checkpointing.CheckpointStore(
      workdir / "checkpoints", _config_dict(config),
      resumable_fields=RESUMABLE_FIELDS)
  store.check_config()
  (workdir / "config.json").write_text(
      json.dumps(_config_dict(config), indent=2) + "\n")

  model = build_model(config, dataset.train.num_classes)
  state = create_train_state(jax.random.key(config.seed), config, model,
                             dataset.train)
  start_epoch = 0
  if store.latest_epoch() is not None:
    state, start_epoch = store.restore(state)
    print(f"Resuming {workdir} after epoch {start_epoch}.", file=sys.stderr)
  else:
    state = load_pretrained(state, config)
  history_path = workdir / "history.jsonl"
  history = _read_history(history_path, start_epoch)

  train_step = make_train_step(config, dataset.train.num_classes)
  graph = None
  for epoch in range(start_epoch, config.num_epochs):
    record: dict[str, Any] = {"epoch": epoch + 1}
    if objective.uses_centre_bank:
      if epoch % config.nngk.refresh_every == 0:
        t0 = time.perf_counter()
        state = refresh_centres(state, dataset.train, config, epoch + 1)
        record["refresh_seconds"] = time.perf_counter() - t0
        graph = None
      if graph is None and objective.uses_neighbour_graph:
        # after a refresh, or on resume
        t0 = time.perf_counter()
        graph = build_graph(state, config)
        record["graph_seconds"] = time.perf_counter() - t0
        record["missing_positive_fraction"] = missing_positive_fraction(
            graph, np.asarray(state.centre_labels))
    state, stats = train_epoch(state, train_step, dataset.train, config,
                               epoch, graph, workdir=workdir)
    record.update(stats)
    record.update(log_weight_stats(state))
    last = epoch + 1 == config.num_epochs
    if last or (epoch + 1) % config.eval_every == 0:
      record.update(evaluate(state, dataset, config))
    store.save(epoch + 1, state)
    history.append(record)
    _write_history(history_path, history)
    plotting.plot_history(history, str(workdir) + os.sep)
    _print_record(record)

  final = evaluate(state, dataset, config)
  final["epochs"] = config.num_epochs
  baseline = raw_pixel_metrics(dataset, config)
  if baseline is not None:
    final["raw_pixels"] = baseline
    print(f"test retrieval ({final['geometry']}): learned embedding "
          f"Recall@1 {final['recall@1']:.3f}, MAP@R {final['map@r']:.3f}; raw "
          f"pixels Recall@1 {baseline['recall@1']:.3f}, MAP@R "
          f"{baseline['map@r']:.3f}", file=sys.stderr)
  (workdir / "metrics.json").write_text(json.dumps(final, indent=2) + "\n")
  store.close()
  return final


# Raw-pixel baselines are computed for in-memory test splits up to this many
# values (images x pixels x channels): 60 M floats, 240 MB.
RAW_PIXEL_LIMIT = 60_000_000


def raw_pixel_metrics(dataset: datalib.Dataset, config) -> dict | None:
  """The test split's retrieval metrics on its raw pixels (the baseline).

  Each test image, flattened, is a query against the others by Euclidean
  distance, scored as the learned embeddings are (no NMI). ``None`` when
  the test split is not an in-memory array split or holds more than
  ``RAW_PIXEL_LIMIT`` values (decoded benchmarks).
  """
  images = getattr(dataset.test, "images", None)
  if not isinstance(images, np.ndarray) or images.size > RAW_PIXEL_LIMIT:
    return None
  flat = images.reshape(len(images), -1).astype(np.float32)
  return metriclib.retrieval_metrics(
      flat, dataset.test.labels, recall_ks=tuple(config.recall_ks), nmi=False,
      seed=config.seed)


def load_trained(workdir: str | os.PathLike):
  """The config, dataset and newest checkpointed state of a run's workdir.

  Returns:
    ``(config, dataset, state)``; ``train.embed_split(state, dataset.test,
    256)`` then gives the test embeddings.
  """
  workdir = pathlib.Path(workdir)
  config_path = workdir / "config.json"
  if not config_path.exists():
    raise FileNotFoundError(f"{workdir} holds no run (no config.json)")
  config = ml_collections.ConfigDict(json.loads(config_path.read_text()))
  dataset = datalib.load_dataset(config.dataset, **dict(config.data))
  model = build_model(config, dataset.train.num_classes)
  state = create_train_state(jax.random.key(config.seed), config, model,
                             dataset.train)
  store = checkpointing.CheckpointStore(
      workdir / "checkpoints", _config_dict(config),
      resumable_fields=RESUMABLE_FIELDS)
  state, _ = store.restore(state)
  store.close()
  return config, dataset, state


def _print_record(record: dict) -> None:
  keys = ["train_loss", "images_per_second", "recall@1", "map@r", "nmi",
          "kernel_accuracy", "softmax_accuracy"]
  parts = [f"epoch {record['epoch']}"]
  parts += [f"{k}={record[k]:.4g}" for k in keys if k in record]
  print("  ".join(parts), file=sys.stderr)


# ----------------------------------------------------------------------------
# Command line.


def load_config(path: str | os.PathLike,
                recipe: str | None = None) -> ml_collections.ConfigDict:
  """Runs ``get_config()`` (or ``get_config(recipe)``) of a Python config file."""
  path = pathlib.Path(path)
  if not path.exists():
    raise FileNotFoundError(f"config file {path} does not exist")
  root = str(CONFIG_DIR.parent.parent)
  if root not in sys.path:  # configs import each other as experiments.configs
    sys.path.insert(0, root)
  spec = importlib.util.spec_from_file_location(f"_config_{path.stem}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if recipe is None:
    return module.get_config()
  if not inspect.signature(module.get_config).parameters:
    raise ValueError(f"config file {path} has no recipes (its get_config() "
                     f"takes no argument); drop --recipe {recipe}")
  return module.get_config(recipe)


def config_for_dataset(dataset: str) -> pathlib.Path:
  """The default config file for a ``make train DATASET=...`` name."""
  key = dataset.partition(":")[0]
  candidate = CONFIG_DIR / f"{key}.py"
  return candidate if candidate.exists() else CONFIG_DIR / "digits.py"


def apply_overrides(config: ml_collections.ConfigDict,
                    overrides: list[str]) -> None:
  """Applies ``a.b=value`` overrides; values are Python literals or strings.

  Examples:
    >>> import ml_collections
    >>> c = ml_collections.ConfigDict({"nngk": {"k": 3}, "name": "x"})
    >>> apply_overrides(c, ["nngk.k=5", "name=y"])
    >>> c.nngk.k, c.name
    (5, 'y')
  """
  for item in overrides:
    key, eq, raw = item.partition("=")
    if not eq:
      raise ValueError(f"override {item!r} is not of the form key=value")
    try:
      value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
      value = raw
    parent = config
    *path, leaf = key.split(".")
    try:
      for part in path:
        parent = parent[part]
      current = parent[leaf]
    except (KeyError, AttributeError, TypeError):
      raise ValueError(f"unknown config field {key!r}") from None
    if isinstance(current, float) and isinstance(value, int):
      value = float(value)
    if isinstance(current, tuple) and isinstance(value, list):
      value = tuple(value)
    parent[leaf] = value


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
      prog="python -m nngk_jax.train",
      description="Train an NNGK (or baseline) embedding network.")
  parser.add_argument("--config", help="Python config file (get_config())")
  parser.add_argument("--dataset",
                      help="dataset name: digits, folder:PATH, cub, cars196, sop")
  parser.add_argument("--recipe", help="recipe of the config file, e.g. "
                      "'paper' or 'strong' for the benchmarks")
  parser.add_argument("--workdir", required=True,
                      help="output and checkpoint directory; rerun to resume")
  parser.add_argument("overrides", nargs="*", help="config overrides a.b=value")
  args = parser.parse_intermixed_args(argv)
  try:
    config_path = args.config or config_for_dataset(args.dataset or "glyphs")
    config = load_config(config_path, args.recipe or None)
    if args.dataset:
      config.dataset = args.dataset
    apply_overrides(config, args.overrides)
    metrics = train_and_evaluate(config, args.workdir)
  except datalib.DatasetNotAvailableError as error:
    print(f"error: {error}", file=sys.stderr)
    return 2
  except (ValueError, FileNotFoundError, TrainingDivergedError) as error:
    print(f"error: {type(error).__name__}: {error}", file=sys.stderr)
    return 1
  print(json.dumps(metrics, indent=2))
  return 0


if __name__ == "__main__":
  sys.exit(main())

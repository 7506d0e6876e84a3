r"""Continual learning with NNGK (seed 002 §4, Algorithm 1) and its baselines.

A stream of tasks :math:`D_1 .. D_E` (:mod:`nngk_jax.data.tasks`) arrives one
at a time; after task :math:`e` only :math:`D_e`'s images are available. The
NNGK network keeps an **active centre set** :math:`C`: vectors with soft
label rows :math:`y_j \in \Delta^{C-1}` (:class:`ActiveCentres`). Per task
("mega-epoch"):

1. *Seed* the new classes: ``init_per_class`` random training examples of
   each new class become centres with one-hot labels. (Algorithm 1 starts
   from every training embedding; with a stream, a task's classes have no
   centre until some are added, and its loss would have no positive.)
2. Train ``epochs_train`` epochs on :math:`D_e` with the soft-label NNGK loss
   (:func:`nngk_jax.loss.soft_gaussian_kernel_loss`) against :math:`C`. The
   current task's centres are tied to their examples (re-embedded every
   epoch, as NNGK's refresh); earlier tasks' centres are frozen vectors,
   since their images are gone.
3. Freeze the network. Drop the ``num_drop`` centres whose labels their
   neighbourhood predicts best (lowest leave-one-out cross-entropy of the
   soft vote), then add the ``num_add`` training examples of :math:`D_e` not
   in :math:`C` that the vote predicts worst (highest loss). Each dropped or
   added centre :math:`z_0` redistributes its label over its ``k`` nearest
   centres :math:`z_j` by eq. 13 (:func:`redistribute_labels`).
4. Fine-tune ``epochs_finetune`` epochs, as in 2.

Choices where the seed is silent (each an option of ``config.continual``):

* **Eq. 13 for an added centre.** The seed says "same with :math:`S_a`":
  :math:`y_j \leftarrow y_j + \Delta y_j` for added centres as for dropped
  ones (``redistribute="both"``). A dropped centre's vote vanishes, and
  moving its label into its neighbours compensates; an added centre casts
  its own vote, and moving its neighbours' labels toward it as well counts
  it twice (the influence function of eq. 12 says the compensation would
  have the opposite sign). The default is ``"drop"`` (eq. 13 for dropped
  centres only); ``"none"`` applies it to neither. All three are measured
  in ``docs/results.md``: ``"both"`` was the worst on both streams.
* **The kernel sum of eq. 13** runs over :math:`N_K(z_j) \cup \{z_0\}`, so the
  share :math:`c_j = k(z_j, z_0) / \sum_i k(z_j, z_i)` lies in ``[0, 1]`` and
  :math:`y_j + c_j (y_0 - y_j)` stays a probability row.
* **Best / worst predicted**: the cross-entropy :math:`-\sum_c y_{0c} \log
  p(c|z_0)` of a centre's own (soft) label under the vote of its ``k``
  nearest other centres; for a candidate example, the loss of its hard
  label.

Baselines on the same backbone and budget (``epochs_train +
epochs_finetune`` epochs per task): ``finetune`` (softmax, trained task
after task: the lower bound), ``ewc`` (softmax with Elastic Weight
Consolidation, :mod:`nngk_jax.ewc`), ``joint`` (softmax on all tasks at once
for the same number of steps: the upper bound) and ``nngk_static`` (every
training example of a task becomes a centre; no add, drop or
redistribution: the NNGK / impostor network of seed 002 §3 without
Algorithm 1; ``static_per_class`` keeps that many random examples per class
instead, a bank of the size Algorithm 1 ends with, chosen at random).

Where earlier tasks' centres come from (``memory``): ``"vectors"`` (the
default) keeps them as the vectors they were when their task ended, since
their images are gone; ``"images"`` keeps each centre's image (an episodic
memory as large as the bank) and re-embeds every centre at each refresh,
the impostor network's tied centres. The kernel classifier then has no head
to forget, like iCaRL's nearest-mean-of-exemplars classifier; the softmax
baselines store no images, so compare ``"images"`` runs with that in mind.

Evaluation after each task, on every task's test split so far:
class-incremental accuracy (the argmax over every class seen so far) and
task-incremental accuracy (the argmax over the task's own classes, the
multi-head setting of Zenke et al. 2017). :func:`summarize` gives the average
accuracy after the last task and the backward transfer
(:math:`\frac{1}{E-1}\sum_{j<E} R_{E,j} - R_{j,j}`, negative for
forgetting).

Host-side work (neighbour queries, add/drop, evaluation) stays out of jit;
the step is one jitted function per method.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from tqdm.auto import tqdm

from nngk_jax import data as datalib
from nngk_jax import evaluation
from nngk_jax import ewc as ewclib
from nngk_jax import loss as losses
from nngk_jax import neighbours as neighbourlib
from nngk_jax import state as statelib
from nngk_jax.checks import positive_int

__all__ = [
    "MEMORY",
    "METHODS",
    "ActiveCentres",
    "ContinualResult",
    "REDISTRIBUTE",
    "centre_scores",
    "drop_and_add",
    "example_losses",
    "redistribute_labels",
    "run_continual",
    "summarize",
]

METHODS = ("continual_nngk", "nngk_static", "finetune", "ewc", "joint")
NNGK_METHODS = ("continual_nngk", "nngk_static")
REDISTRIBUTE = ("both", "drop", "none")
MEMORY = ("vectors", "images")


# ----------------------------------------------------------------------------
# The active centre set and eq. 13 (host side, numpy).


@dataclasses.dataclass(frozen=True)
class ActiveCentres:
  """The active centre set :math:`C`.

  Attributes:
    centres: ``[N, D]`` float32 vectors.
    label_probs: ``[N, num_classes]`` float32 soft label rows.
    task: ``[N]`` int32, the task whose training example made the centre.
    example: ``[N]`` int32, that example's index in the task's training
      split (so the task's centres can be re-embedded while it is current).
  """

  centres: np.ndarray
  label_probs: np.ndarray
  task: np.ndarray
  example: np.ndarray

  @classmethod
  def empty(cls, dim: int, num_classes: int) -> "ActiveCentres":
    return cls(np.zeros((0, dim), np.float32),
               np.zeros((0, num_classes), np.float32),
               np.zeros(0, np.int32), np.zeros(0, np.int32))

  def __len__(self) -> int:
    return int(self.centres.shape[0])

  def add(self, centres, label_probs, task, example) -> "ActiveCentres":
    """A new set with the rows appended (arrays broadcast per row)."""
    centres = np.asarray(centres, np.float32).reshape(-1, self.centres.shape[1])
    n = len(centres)
    return ActiveCentres(
        np.concatenate([self.centres, centres]),
        np.concatenate([self.label_probs,
                        np.asarray(label_probs, np.float32).reshape(n, -1)]),
        np.concatenate([self.task, np.broadcast_to(task, n).astype(np.int32)]),
        np.concatenate([self.example,
                        np.broadcast_to(example, n).astype(np.int32)]))

  def keep(self, rows: np.ndarray) -> "ActiveCentres":
    """A new set with only ``rows`` (bool mask or indices)."""
    return ActiveCentres(self.centres[rows], self.label_probs[rows],
                         self.task[rows], self.example[rows])

  def with_arrays(self, **arrays) -> "ActiveCentres":
    return dataclasses.replace(self, **arrays)


def _log_kernels(a: np.ndarray, b: np.ndarray, sigma: float) -> np.ndarray:
  """``[len(a), len(b)]`` :math:`-\\|a_i - b_j\\|^2 / 2\\sigma^2` in float64."""
  a = np.asarray(a, np.float64)
  b = np.asarray(b, np.float64)
  sq = (np.sum(a * a, 1)[:, None] + np.sum(b * b, 1)[None, :]
        - 2.0 * a @ b.T)
  return -np.maximum(sq, 0.0) / (2.0 * sigma * sigma)


def redistribute_labels(centres: np.ndarray, label_probs: np.ndarray,
                        z0: np.ndarray, y0: np.ndarray, *, k: int,
                        sigma: float) -> np.ndarray:
  r"""Eq. 13 of seed 002: spread the label of a dropped or added centre.

  For each of the ``k`` centres :math:`z_j` nearest to :math:`z_0`:

  .. math::
    y_j \leftarrow y_j + c_j (y_0 - y_j), \qquad
    c_j = \frac{k(z_j, z_0)}{\sum_{i \in N_K(z_j) \cup \{z_0\}} k(z_j, z_i)}

  with the Gaussian kernel :math:`k(a, b) = e^{-\|a - b\|^2 / 2\sigma^2}`
  and :math:`N_K(z_j)` the ``k`` nearest other centres of :math:`z_j`
  (:math:`z_0` not among them). :math:`c_j \in [0, 1]`, so each row stays a
  probability vector. Computed in log space (the share is a softmax entry).

  Args:
    centres: ``[N, D]`` the set without :math:`z_0`.
    label_probs: ``[N, C]`` their label rows.
    z0: ``[D]`` the dropped or added centre.
    y0: ``[C]`` its label row.
    k: neighbours (capped at ``N`` for :math:`z_0` and ``N - 1`` for
      :math:`z_j`).
    sigma: kernel width.

  Returns:
    ``[N, C]`` new label rows (only the ``k`` neighbours of :math:`z_0`
    change).

  Examples:
    >>> import numpy as np
    >>> centres = np.array([[0.], [10.]], np.float32)
    >>> y = np.array([[1., 0.], [1., 0.]], np.float32)
    >>> new = redistribute_labels(centres, y, np.array([0.], np.float32),
    ...                           np.array([0., 1.]), k=1, sigma=1.)
    >>> new.round(3).tolist()  # z_0 on z_1: share 1 / (1 + e^-50) ~ 1
    [[0.0, 1.0], [1.0, 0.0]]
  """
  n = len(centres)
  label_probs = np.array(label_probs, np.float32, copy=True)
  if n == 0:
    return label_probs
  k = positive_int("k", k)
  z0 = np.asarray(z0, np.float32)[None]
  log_k0 = _log_kernels(centres, z0, sigma)[:, 0]  # [N]
  affected = np.argsort(-log_k0, kind="stable")[:min(k, n)]
  log_kj = _log_kernels(centres[affected], centres, sigma)  # [J, N]
  log_kj[np.arange(len(affected)), affected] = -np.inf  # self excluded
  kk = min(k, n - 1)
  if kk > 0:
    nearest = np.sort(log_kj, axis=1)[:, -kk:]  # N_K(z_j)
  else:
    nearest = np.zeros((len(affected), 0))
  pool = np.concatenate([nearest, log_k0[affected, None]], axis=1)
  top = pool.max(axis=1, keepdims=True)
  log_sum = top[:, 0] + np.log(np.sum(np.exp(pool - top), axis=1))
  share = np.exp(log_k0[affected] - log_sum)  # c_j in [0, 1]
  y0 = np.asarray(y0, np.float32)
  label_probs[affected] += (share[:, None]
                            * (y0[None] - label_probs[affected])
                            ).astype(np.float32)
  return label_probs


def _query(centres: np.ndarray, queries: np.ndarray, k: int,
           backend: str) -> np.ndarray:
  k = min(k, len(centres))
  return neighbourlib.query_neighbours(centres, queries, k=k, backend=backend)


def centre_scores(bank: ActiveCentres, *, k: int, sigma: float,
                  backend: str = "auto") -> np.ndarray:
  r"""``[N]`` how badly each centre's neighbourhood predicts its label.

  The cross-entropy :math:`-\sum_c y_{0c} \log p(c \mid z_0)` of the centre's
  own label row under the soft kernel vote of its ``k`` nearest *other*
  centres: 0 when the neighbours all carry its label, large when they carry
  others. Algorithm 1 drops the centres with the lowest scores. A centre
  whose label has no mass among its neighbours scores ``inf``.
  """
  n = len(bank)
  if n < 2:
    return np.full(n, np.inf)
  idx = _query(bank.centres, bank.centres, k + 1, backend)
  mask = idx != np.arange(n)[:, None]
  log_p = np.asarray(losses.soft_kernel_class_log_probs(
      jnp.asarray(bank.centres), jnp.asarray(bank.centres),
      jnp.asarray(bank.label_probs), jnp.asarray(idx), sigma=sigma,
      neighbour_mask=jnp.asarray(mask)))
  y = bank.label_probs
  with np.errstate(invalid="ignore"):
    terms = np.where(y > 0, -y * log_p, 0.0)
  return terms.sum(axis=1)


def example_losses(bank: ActiveCentres, embeddings: np.ndarray,
                   labels: np.ndarray, *, k: int, sigma: float,
                   backend: str = "auto") -> np.ndarray:
  """``[Q]`` soft-label NNGK loss of each example against the bank's vote."""
  idx = _query(bank.centres, embeddings, k, backend)
  return np.asarray(losses.soft_gaussian_kernel_loss(
      jnp.asarray(embeddings), jnp.asarray(labels, jnp.int32),
      jnp.asarray(bank.centres), jnp.asarray(bank.label_probs),
      jnp.asarray(idx), sigma=sigma,
      num_classes=bank.label_probs.shape[1]))


def drop_and_add(bank: ActiveCentres, candidates: np.ndarray,
                 candidate_labels: np.ndarray, candidate_examples: np.ndarray,
                 *, task: int, num_drop: int, num_add: int, k: int,
                 sigma: float, redistribute: str = "drop",
                 backend: str = "auto") -> tuple[ActiveCentres, dict]:
  """Step 3 of Algorithm 1 on a frozen network.

  Drops the ``num_drop`` best-predicted centres one at a time, then adds the
  ``num_add`` worst-predicted candidates one at a time, each time applying
  eq. 13 (:func:`redistribute_labels`) as ``redistribute`` says.

  Args:
    bank: the active set (its vectors already refreshed).
    candidates: ``[Q, D]`` embeddings of the task's training examples not
      in the bank.
    candidate_labels: ``[Q]`` their hard labels.
    candidate_examples: ``[Q]`` their indices in the task's training split.
    task: the current task's number (recorded on added centres).

  Returns:
    The new set and ``{"dropped", "added"}`` counts.
  """
  if redistribute not in REDISTRIBUTE:
    raise ValueError(f"continual.redistribute must be one of {REDISTRIBUTE}, "
                     f"got {redistribute!r}")
  num_classes = bank.label_probs.shape[1]
  num_drop = min(num_drop, max(len(bank) - k - 1, 0))
  if num_drop > 0:
    order = np.argsort(centre_scores(bank, k=k, sigma=sigma, backend=backend),
                       kind="stable")
    alive = np.ones(len(bank), bool)
    for row in order[:num_drop]:
      alive[row] = False
      rest = bank.keep(alive)
      if redistribute != "none":
        new_probs = redistribute_labels(
            rest.centres, rest.label_probs, bank.centres[row],
            bank.label_probs[row], k=k, sigma=sigma)
        probs = bank.label_probs.copy()
        probs[alive] = new_probs
        bank = bank.with_arrays(label_probs=probs)
    bank = bank.keep(alive)
  num_add = min(num_add, len(candidates))
  if num_add > 0 and len(bank):
    scores = example_losses(bank, candidates, candidate_labels, k=k,
                            sigma=sigma, backend=backend)
    chosen = np.argsort(-scores, kind="stable")[:num_add]
    for q in chosen:
      y0 = np.eye(num_classes, dtype=np.float32)[candidate_labels[q]]
      probs = bank.label_probs
      if redistribute == "both":
        probs = redistribute_labels(bank.centres, probs, candidates[q], y0,
                                    k=k, sigma=sigma)
      bank = bank.with_arrays(label_probs=probs).add(
          candidates[q], y0, task, candidate_examples[q])
  return bank, {"dropped": int(num_drop), "added": int(num_add)}


# ----------------------------------------------------------------------------
# Training.


@dataclasses.dataclass
class ContinualResult:
  """What one method did on one stream and seed.

  ``class_acc[i, j]`` / ``task_acc[i, j]``: accuracy on task ``j``'s test
  split after training task ``i`` (NaN for ``j > i``); ``joint`` has one
  row, after all tasks. ``bank_size[i]``: centres after task ``i`` (0 for
  the softmax methods). ``bank`` and ``state``: the active centres (NNGK
  methods) and the train state at the end.
  """

  method: str
  seed: int
  class_acc: np.ndarray
  task_acc: np.ndarray
  bank_size: np.ndarray
  seconds: float
  bank: ActiveCentres | None = None
  state: Any = None

  def to_dict(self) -> dict:
    return {"method": self.method, "seed": self.seed,
            "class_acc": np.round(self.class_acc, 5).tolist(),
            "task_acc": np.round(self.task_acc, 5).tolist(),
            "bank_size": self.bank_size.tolist(),
            "seconds": round(self.seconds, 2), **summarize(self)}


def summarize(result: ContinualResult) -> dict:
  """Average accuracy after the last task and backward transfer (both modes).

  ``bwt`` is :math:`\\frac{1}{E-1} \\sum_{j < E} (R_{E,j} - R_{j,j})`; NaN
  for a single task or the ``joint`` method (one row).
  """
  out = {}
  for mode, acc in (("class", result.class_acc), ("task", result.task_acc)):
    last = acc[-1]
    out[f"{mode}_avg_acc"] = float(np.nanmean(last))
    if acc.shape[0] > 1:
      out[f"{mode}_bwt"] = float(np.mean(
          [last[j] - acc[j, j] for j in range(acc.shape[0] - 1)]))
    else:
      out[f"{mode}_bwt"] = float("nan")
  out["final_bank_size"] = int(result.bank_size[-1])
  return out


def _model_config(config, method: str):
  model_config = ml_collections.ConfigDict(config.to_dict())
  model_config.objective = "nngk" if method in NNGK_METHODS else "softmax"
  return model_config


def _make_step(config, method: str, num_classes: int):
  """The jitted ``step(state, batch, extras) -> (state, loss)`` of a method."""
  sigma = float(config.nngk.sigma)
  strength = float(config.continual.ewc_strength)

  def loss_fn(params, state, batch, extras):
    (emb, logits), updates = state.apply_fn(
        {"params": params, "batch_stats": state.batch_stats}, batch["image"],
        train=True, mutable=["batch_stats"])
    if method in NNGK_METHODS:
      per = losses.soft_gaussian_kernel_loss(
          emb, batch["label"], extras["centres"], extras["label_probs"],
          extras["neighbour_idx"], sigma=sigma,
          neighbour_mask=extras["neighbour_mask"], num_classes=num_classes)
      # The "skip" rule of the glyph configs: an example none of whose
      # neighbours votes for its class gives no gradient.
      own = jnp.take_along_axis(
          jnp.take(extras["label_probs"], extras["neighbour_idx"], axis=0),
          batch["label"][:, None, None], axis=2)[..., 0]
      valid = jnp.any((own > 0) & extras["neighbour_mask"], axis=1)
    else:
      # Logits of classes not seen yet are masked: a softmax head over the
      # classes met so far, grown task by task.
      logits = jnp.where(extras["seen"], logits, -jnp.inf)
      per = optax.softmax_cross_entropy_with_integer_labels(
          logits, batch["label"])
      valid = jnp.ones(per.shape, bool)
    valid = valid & batch["valid"]
    loss = jnp.sum(jnp.where(valid, per, 0.0)) / jnp.maximum(
        jnp.sum(valid), 1)
    if method == "ewc":
      loss = loss + ewclib.ewc_penalty(params, extras["anchor"],
                                       extras["fisher"], strength)
    return loss, updates

  @jax.jit
  def step(state, batch, extras):
    (loss, updates), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params, state, batch, extras)
    state = state.apply_gradients(grads=grads,
                                  batch_stats=updates["batch_stats"])
    return state, loss

  return step


def _padded_bank_arrays(bank: ActiveCentres, capacity: int) -> dict:
  """The bank padded to ``capacity`` rows (one jit trace per capacity)."""
  pad = capacity - len(bank)
  return {
      "centres": jnp.asarray(np.pad(bank.centres, ((0, pad), (0, 0)))),
      "label_probs": jnp.asarray(np.pad(bank.label_probs, ((0, pad), (0, 0)))),
  }


def _capacity(n: int) -> int:
  return max(256, 1 << math.ceil(math.log2(max(n, 1))))


def _neighbour_table(bank: ActiveCentres, embeddings: np.ndarray,
                     own_rows: np.ndarray, k: int, backend: str
                     ) -> tuple[np.ndarray, np.ndarray]:
  """``[Q, k+1]`` neighbour rows of each example and the mask of its own."""
  idx = _query(bank.centres, embeddings, k + 1, backend)
  mask = idx != own_rows[:, None]
  if idx.shape[1] < k + 1:  # a small bank: pad with masked columns
    pad = k + 1 - idx.shape[1]
    idx = np.pad(idx, ((0, 0), (0, pad)), mode="edge")
    mask = np.pad(mask, ((0, 0), (0, pad)), constant_values=False)
  return idx.astype(np.int32), mask


def _evaluate(state, bank: ActiveCentres | None, stream, datasets,
              upto: int, config, method: str,
              seen_mask: np.ndarray) -> tuple[np.ndarray, ...]:
  """Class- and task-incremental accuracy on tasks ``0..upto``."""
  class_acc = np.full(stream.num_tasks, np.nan)
  task_acc = np.full(stream.num_tasks, np.nan)
  for j in range(upto + 1):
    split = datasets[j].test
    emb, logits = evaluation.embed_split(state, split, config.eval_batch_size)
    labels = np.asarray(split.labels)
    if method in NNGK_METHODS:
      idx = _query(bank.centres, emb, config.nngk.k,
                   config.nngk.graph_backend)
      scores = np.asarray(losses.soft_kernel_class_log_probs(
          jnp.asarray(emb), jnp.asarray(bank.centres),
          jnp.asarray(bank.label_probs), jnp.asarray(idx),
          sigma=config.nngk.sigma))
    else:
      scores = np.asarray(logits, np.float64)
    scores = np.where(seen_mask[None], scores, -np.inf)
    class_acc[j] = np.mean(np.argmax(scores, 1) == labels)
    own = np.zeros_like(seen_mask)
    own[list(stream.task_classes[j])] = True
    task_acc[j] = np.mean(
        np.argmax(np.where(own[None], scores, -np.inf), 1) == labels)
  return class_acc, task_acc


def _retie(bank: ActiveCentres, embeddings: np.ndarray,
           task: int) -> ActiveCentres:
  """The current task's centres set to their examples' new embeddings."""
  current = bank.task == task
  centres = bank.centres.copy()
  centres[current] = embeddings[bank.example[current]]
  return bank.with_arrays(centres=centres)


def _retie_past(state, bank: ActiveCentres, datasets, task: int,
                batch_size: int) -> ActiveCentres:
  """Earlier tasks' centres re-embedded from their stored images.

  ``continual.memory = "images"``: each active centre keeps its image (an
  episodic memory as large as the bank), so every centre stays tied to the
  current network, as in the impostor network's tied variant.
  """
  centres = bank.centres.copy()
  for t in np.unique(bank.task):
    if t == task:
      continue
    rows = np.flatnonzero(bank.task == t)
    train = datasets[t].train
    batch = train.get_batch(bank.example[rows])
    memory = datalib.Split(batch["image"], batch["label"], train.class_names,
                           require_every_class=False)
    centres[rows], _ = evaluation.embed_split(state, memory, batch_size)
  return bank.with_arrays(centres=centres)


def _seed_centres(bank: ActiveCentres, split, embeddings: np.ndarray,
                  task: int, per_class: int | None, num_classes: int,
                  rng: np.random.Generator) -> ActiveCentres:
  """Adds ``per_class`` random examples of each class (``None``: all)."""
  labels = np.asarray(split.labels)
  chosen = []
  for c in np.unique(labels):
    members = np.flatnonzero(labels == c)
    if per_class is not None and per_class < len(members):
      members = np.sort(rng.choice(members, per_class, replace=False))
    chosen.append(members)
  chosen = np.concatenate(chosen)
  return bank.add(embeddings[chosen],
                  np.eye(num_classes, dtype=np.float32)[labels[chosen]],
                  task, chosen)


def run_continual(config, stream, method: str, *, seed: int = 0,
                  progress: bool = False,
                  log: Callable[[str], None] | None = None) -> ContinualResult:
  """Trains ``method`` over the task stream; accuracy after every task.

  Args:
    config: a config with ``model``, ``optimizer``, ``nngk`` (``k``,
      ``sigma``, ``graph_backend``), ``batch_size``, ``eval_batch_size`` and
      ``continual`` (``epochs_train``, ``epochs_finetune``,
      ``init_per_class``, ``num_add``, ``num_drop``, ``redistribute``,
      ``ewc_strength``, ``ewc_samples``).
    stream: a :class:`nngk_jax.data.tasks.TaskStream`.
    method: one of :data:`METHODS`.
    seed: the network's initialisation and the data order.

  Returns:
    A :class:`ContinualResult`.
  """
  if method not in METHODS:
    raise ValueError(f"method must be one of {METHODS}, got {method!r}")
  cc = config.continual
  positive_int("batch_size", config.batch_size)
  for field in ("epochs_train", "init_per_class"):
    positive_int(f"continual.{field}", cc[field])
  for field in ("epochs_finetune", "num_add", "num_drop"):
    if not isinstance(cc[field], int) or cc[field] < 0:
      raise ValueError(f"continual.{field} must be a non-negative integer, "
                       f"got {cc[field]!r}")
  if cc.redistribute not in REDISTRIBUTE:
    raise ValueError(f"continual.redistribute must be one of {REDISTRIBUTE}, "
                     f"got {cc.redistribute!r}")
  if cc.memory not in MEMORY:
    raise ValueError(f"continual.memory must be one of {MEMORY}, got "
                     f"{cc.memory!r}")
  log = log or (lambda message: None)
  start = time.perf_counter()
  config = _model_config(config, method)
  config.seed = seed
  num_classes = stream.num_classes
  model = statelib.build_model(config, num_classes)
  image_shape = stream.full.train.image_shape
  state = statelib.create_train_state(jax.random.key(seed), config, model,
                                      image_shape)
  step = _make_step(config, method, num_classes)
  k, sigma = int(config.nngk.k), float(config.nngk.sigma)
  backend = config.nngk.graph_backend
  epochs_per_task = cc.epochs_train + cc.epochs_finetune
  rng = np.random.default_rng([seed, 7])
  dim = statelib.embedding_dim(model, image_shape)
  bank = ActiveCentres.empty(dim, num_classes)
  anchor = fisher = ewc_state = None
  if method == "ewc":  # no penalty before the first task ends
    zeros = jax.tree_util.tree_map(jnp.zeros_like, state.params)
    anchor, fisher = state.params, zeros
  global_epoch = 0
  datasets = [stream.task(t) for t in range(stream.num_tasks)]

  def run_epochs(state, bank, split, task, count):
    nonlocal global_epoch
    for _ in range(count):
      extras: dict[str, Any] = {}
      if method in NNGK_METHODS:
        bank, emb = refresh(state, bank, task)
        current = bank.task == task
        own_rows = np.full(len(split), -1)
        own_rows[bank.example[current]] = np.flatnonzero(current)
        table, table_mask = _neighbour_table(bank, emb, own_rows, k, backend)
        extras.update(_padded_bank_arrays(bank, _capacity(len(bank))))
      else:
        extras["seen"] = jnp.asarray(seen_so_far)
        if method == "ewc":
          extras["anchor"], extras["fisher"] = anchor, fisher
      batch_size = min(config.batch_size, len(split))
      for batch in datalib.iterate_batches(split, batch_size, seed=seed,
                                           epoch=global_epoch, augment=True):
        if method in NNGK_METHODS:
          extras["neighbour_idx"] = jnp.asarray(table[batch["index"]])
          extras["neighbour_mask"] = jnp.asarray(table_mask[batch["index"]])
        state, loss = step(state, batch, extras)
      global_epoch += 1
    return state, bank

  def refresh(state, bank, task):
    """Re-embeds the task's training split; re-ties the bank to it."""
    emb, _ = evaluation.embed_split(state, datasets[task].train,
                                    config.eval_batch_size)
    bank = _retie(bank, emb, task)
    if cc.memory == "images":
      bank = _retie_past(state, bank, datasets, task, config.eval_batch_size)
    return bank, emb

  seen_so_far = np.zeros(num_classes, bool)
  if method == "joint":
    full = stream.seen(stream.num_tasks - 1)
    seen_so_far[:] = True
    state, _ = run_epochs(state, bank, full.train, -1, epochs_per_task)
    class_acc, task_acc = _evaluate(state, None, stream, datasets,
                                    stream.num_tasks - 1, config, method,
                                    seen_so_far)
    return ContinualResult(method, seed, class_acc[None], task_acc[None],
                           np.zeros(1, np.int64),
                           time.perf_counter() - start, state=state)

  class_rows, task_rows, sizes = [], [], []
  tasks = range(stream.num_tasks)
  for task in tqdm(tasks, desc=method, disable=not progress, leave=False):
    split = datasets[task].train
    seen_so_far[list(stream.task_classes[task])] = True
    if method in NNGK_METHODS:
      emb, _ = evaluation.embed_split(state, split, config.eval_batch_size)
      per_class = (cc.get("static_per_class") if method == "nngk_static"
                   else cc.init_per_class)
      bank = _seed_centres(bank, split, emb, task, per_class, num_classes,
                           rng)
    if method == "continual_nngk":
      state, bank = run_epochs(state, bank, split, task, cc.epochs_train)
      bank, emb = refresh(state, bank, task)  # frozen network
      outside = np.setdiff1d(np.arange(len(split)),
                             bank.example[bank.task == task])
      bank, counts = drop_and_add(
          bank, emb[outside], np.asarray(split.labels)[outside], outside,
          task=task, num_drop=cc.num_drop, num_add=cc.num_add, k=k,
          sigma=sigma, redistribute=cc.redistribute, backend=backend)
      log(f"task {task + 1}: dropped {counts['dropped']}, added "
          f"{counts['added']}, bank {len(bank)}")
      state, bank = run_epochs(state, bank, split, task, cc.epochs_finetune)
    else:
      state, bank = run_epochs(state, bank, split, task, epochs_per_task)
    if method in NNGK_METHODS:  # the centres at the task's final weights
      bank, _ = refresh(state, bank, task)
    if method == "ewc":
      ewc_state = ewclib.consolidate(
          ewc_state, _task_fisher(state, split, config, seen_so_far, rng),
          state.params)
      anchor, fisher = ewc_state.anchor_params, ewc_state.fisher
    class_acc, task_acc = _evaluate(state, bank, stream, datasets, task,
                                    config, method, seen_so_far)
    class_rows.append(class_acc)
    task_rows.append(task_acc)
    sizes.append(len(bank))
    log(f"{method} task {task + 1}/{stream.num_tasks}: class-IL "
        f"{np.nanmean(class_acc):.3f}, task-IL {np.nanmean(task_acc):.3f}")
  return ContinualResult(method, seed, np.stack(class_rows),
                         np.stack(task_rows), np.asarray(sizes),
                         time.perf_counter() - start,
                         bank=bank if method in NNGK_METHODS else None,
                         state=state)


def _task_fisher(state, split, config, seen, rng):
  """Empirical Fisher diagonal of the softmax log-likelihood on a task.

  Over ``continual.ewc_samples`` random training examples of the task,
  at their observed labels, with the head restricted to the classes seen.
  """
  count = min(positive_int("continual.ewc_samples",
                           config.continual.ewc_samples), len(split))
  rows = np.sort(rng.choice(len(split), count, replace=False))
  seen = jnp.asarray(seen)

  def per_example_loss(params, example):
    _, logits = state.apply_fn(
        {"params": params, "batch_stats": state.batch_stats},
        example["image"][None], train=False)
    logits = jnp.where(seen, logits[0], -jnp.inf)
    return optax.softmax_cross_entropy_with_integer_labels(logits,
                                                           example["label"])

  batches = []
  for i in range(0, count, 64):
    batch = split.get_batch(rows[i:i + 64])
    batches.append({"image": batch["image"], "label": batch["label"]})
  return ewclib.fisher_diagonal(per_example_loss, state.params, batches)

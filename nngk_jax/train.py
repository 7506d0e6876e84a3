"""The training loop: one jitted step, one epoch, one run.

The shape of a run (:func:`train_and_evaluate`):

1. Load the dataset by name, build the network, the objective's centre bank
   (if it has one: :mod:`nngk_jax.bank`) and the train state
   (:mod:`nngk_jax.state`).
2. Resume from the newest checkpoint in the work directory, if any.
3. Each epoch: the bank refreshes itself when due (re-embeds the training
   split, rebuilds its neighbour graph on the host); then one pass of the
   jitted, buffer-donating ``train_step`` over the sampler's batches, each
   carrying the bank's rows for it.
4. Evaluate (:mod:`nngk_jax.evaluation`), append to ``history.jsonl``,
   checkpoint, redraw the curves.
5. Write ``metrics.json`` with the final evaluation.

Host-side work (data, graph, checkpoints, metrics) stays outside ``jax.jit``;
the step is one jitted function over ``(state, batch)`` with no per-device
Python, ready for sharding annotations. The command line is
:mod:`nngk_jax.cli` (``python -m nngk_jax.train`` runs it).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import pathlib
import signal
import sys
import time
import warnings
from typing import Any, Iterator

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from tqdm.auto import tqdm

from nngk_jax import bank as banklib
from nngk_jax import checkpoint as checkpointing
from nngk_jax import checks
from nngk_jax import data as datalib
from nngk_jax import evaluation
from nngk_jax import interrupts
from nngk_jax import objectives
from nngk_jax import parallel
from nngk_jax import plotting
from nngk_jax import state as statelib
from nngk_jax import workdir as workdirlib
from nngk_jax.checks import TrainingDivergedError
from nngk_jax.interrupts import TrainingInterrupted

__all__ = [
    "TrainingDivergedError",
    "TrainingInterrupted",
    "batches",
    "build_bank",
    "init_run",
    "load_trained",
    "make_train_step",
    "train_and_evaluate",
    "train_epoch",
    "validate_config",
]

# Several processes: each one's signal flag rides in its rows of the batch
# under this key, and the step's metrics say whether any process had one,
# so that all stop at the same step (train_epoch).
STOP_SIGNAL = "stop_signal"

# Config fields that may change when a run is resumed from its workdir.
# Training stops as diverged when the parameter norm grows past this factor
# times its value at the start of the run (a learning rate of 1e6 takes it
# from ~30 to ~1e9 while the loss stays finite).
DIVERGENCE_FACTOR = 100.0
# The learning rate may change so that a diverged run can be resumed from
# its last good checkpoint with a lower one.
RESUMABLE_FIELDS = ("num_epochs", "eval_every", "progress", "eval_batch_size",
                    "nmi", "eval_search", "nmi_method",
                    "optimizer.learning_rate", "nngk.background_graph",
                    "checkpoint_every_steps", "mesh")


def build_bank(config, dataset: datalib.Dataset,
               model) -> banklib.CentreBank | None:
  """The objective's centre bank over ``dataset.train`` (``None`` if none)."""
  objective = objectives.get_objective(config.objective)
  if objective.make_bank is None:
    return None
  dim = statelib.embedding_dim(model, dataset.train.image_shape)
  return objective.make_bank(config, np.asarray(dataset.train.labels), dim)


def init_run(config, dataset: datalib.Dataset):
  """The network, its objective's centre bank (or ``None``) and a fresh state.

  Examples:
    >>> from nngk_jax import configs, data
    >>> config = configs.load_config(configs.CONFIG_DIR / "digits.py")
    >>> config.model.backbone, config.model.backbone_kwargs = "mlp", {}
    >>> model, bank, state = init_run(config, data.load_dataset("digits"))
    >>> bank.num_centres, sorted(state.params["bank"])
    (901, ['log_weights'])
  """
  model = statelib.build_model(config, dataset.train.num_classes)
  bank = build_bank(config, dataset, model)
  state = statelib.create_train_state(jax.random.key(config.seed), config,
                                      model, dataset.train.image_shape, bank)
  return model, bank, state


def make_train_step(config, num_classes: int | None = None,
                    bank: banklib.CentreBank | None = None, *,
                    mesh=None, state: statelib.TrainState | None = None):
  """The jitted ``train_step(state, batch) -> (state, metrics)``.

  With a ``mesh`` (:func:`nngk_jax.parallel.make_mesh`) the same step runs
  data-parallel: each host batch is split over the devices
  (:func:`nngk_jax.parallel.shard_batch`) and the new state keeps the
  shardings of ``state`` (:func:`nngk_jax.parallel.state_shardings`), which
  must then be given (placed with :func:`nngk_jax.parallel.place_state`).

  One gradient of the objective's loss with respect to ``state.params``
  (network and bank parameters), one optimiser update; then the bank's
  ``after_step``. The state's buffers are donated: the caller must not reuse
  the old state. ``metrics`` holds the loss, the global norms of the
  gradient and of the parameters, and the mean L2 norm of the batch's
  (train-mode) embeddings over its valid rows.
  """
  objective = objectives.get_objective(config.objective)

  def loss_fn(params, rows, state, batch):
    (embeddings, logits), updates = state.apply_fn(
        state.network_variables(params), batch["image"], train=True,
        mutable=["batch_stats"])
    inputs = objectives.LossInputs(
        embeddings=embeddings, logits=logits, batch=batch, params=params,
        num_classes=num_classes,
        bank=None if bank is None else bank.view(state.bank, params, rows,
                                                 batch))
    loss = objective.loss(inputs, config)
    norms = jnp.sqrt(jnp.sum(embeddings * embeddings, axis=-1))
    embedding_norm = objectives.masked_mean(norms, batch["valid"])
    return loss, (updates["batch_stats"], jax.lax.stop_gradient(embeddings),
                  jax.lax.stop_gradient(embedding_norm))

  def train_step(state: statelib.TrainState, batch):
    batch = dict(batch)
    signalled = batch.pop(STOP_SIGNAL, None)
    # The bank's trainable rows (impostors' sparse centres), if any, are
    # differentiated beside the parameters and updated by the bank itself.
    rows = None if bank is None else bank.trainable_rows(state.bank, batch)
    grad_fn = jax.value_and_grad(loss_fn, argnums=(0, 1), has_aux=True)
    (loss, (batch_stats, embeddings, embedding_norm)), (grads, row_grads) = (
        grad_fn(state.params, rows, state, batch))
    new_state = state.apply_gradients(grads=grads, batch_stats=batch_stats)
    if bank is not None:
      new_state = new_state.replace(bank=bank.after_step(
          new_state.bank, embeddings, batch, row_grads))
    step_metrics = {"loss": loss,
                    "grad_norm": optax.global_norm((grads, row_grads)),
                    "param_norm": optax.global_norm(new_state.params),
                    "embedding_norm": embedding_norm}
    if signalled is not None:
      step_metrics[STOP_SIGNAL] = jnp.any(signalled)
    return new_state, step_metrics

  if mesh is None:
    return jax.jit(train_step, donate_argnums=0)
  if state is None:
    raise ValueError("make_train_step(mesh=...) needs the state whose "
                     "shardings the step keeps")
  jitted = jax.jit(train_step, donate_argnums=0, out_shardings=(
      parallel.state_shardings(state, mesh, parallel.bank_layout(config)),
      parallel.replicated(mesh)))

  def sharded_step(state, batch):
    return jitted(state, parallel.shard_batch(batch, mesh))

  return sharded_step


def sampler_name(config) -> str:
  """``config.sampler`` when set, else the objective's own sampler.

  ``"random"``: shuffled batches. ``"class_balanced"``: ``batch_size /
  samples_per_class`` classes per batch, ``samples_per_class`` images each.
  """
  name = config.get("sampler") or objectives.get_objective(
      config.objective).sampler
  if name not in datalib.SAMPLERS:
    raise ValueError(f"sampler must be one of {datalib.SAMPLERS} (or None for "
                     f"the objective's own), got {name!r}")
  return name


def validate_config(config, dataset: datalib.Dataset) -> None:
  """Clear errors for settings the data cannot support, before any work.

  (The bank's own settings are checked when the objective builds it.)
  """
  objective = objectives.get_objective(config.objective)
  statelib.pretrained_weights_path(config)  # a missing file stops at once
  n_train = len(dataset.train)
  for field in ("batch_size", "num_epochs", "eval_every", "eval_batch_size",
                "samples_per_class", "classifier_k"):
    checks.positive_int(field, config.get(field, 1))
  checks.non_negative_int("checkpoint_every_steps",
                          config.get("checkpoint_every_steps", 0))
  if not config.optimizer.learning_rate > 0:
    raise ValueError(f"optimizer.learning_rate must be positive, got "
                     f"{config.optimizer.learning_rate}")
  parallel.bank_layout(config)  # an unknown layout raises
  devices = parallel.num_devices(parallel.make_mesh(config))
  if config.batch_size % devices:
    raise ValueError(f"batch_size={config.batch_size} must be a multiple of "
                     f"the {devices} devices it is split over (config.mesh)")
  if config.batch_size > n_train:
    raise ValueError(f"batch_size={config.batch_size} is larger than the "
                     f"training split ({n_train} images)")
  if objective.defaults:
    objectives.loss_options(config, objective.name)  # unknown options raise
  if objective.prepare_batch is not None and jax.process_count() > 1:
    raise ValueError(
        f"objective {objective.name!r} prepares each batch from all its rows "
        f"on the host, which a multi-process run does not hold in one "
        f"process; train it in one process")
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


def batches(split, config, epoch: int,
            bank: banklib.CentreBank | None = None, *,
            first_batch: int = 0,
            shard: tuple[int, int] = (0, 1)) -> Iterator[dict]:
  """The sampler's batches, plus the bank's and ``prepare_batch``'s arrays.

  ``first_batch`` skips the epoch's first batches without reading them; the
  rest are those of a full pass (a run resumed mid-epoch). ``shard`` yields
  one process's block of each batch's rows
  (:func:`nngk_jax.parallel.process_shard`).
  """
  objective = objectives.get_objective(config.objective)
  if sampler_name(config) == "class_balanced":
    stream = datalib.iterate_class_balanced_batches(
        split, config.batch_size // config.samples_per_class,
        config.samples_per_class, seed=config.seed, epoch=epoch,
        augment=True, first_batch=first_batch, shard=shard)
  else:
    stream = datalib.iterate_batches(split, config.batch_size,
                                     seed=config.seed, epoch=epoch,
                                     augment=True, first_batch=first_batch,
                                     shard=shard)
  for batch in stream:
    if bank is not None:
      batch.update(bank.batch_extras(batch["index"]))
    if objective.prepare_batch is not None:
      batch = objective.prepare_batch(batch, config, epoch)
    yield batch


def train_epoch(state, train_step, split, config, epoch,
                bank: banklib.CentreBank | None = None, *,
                workdir, param_norm_limit: float = math.inf,
                first_step: int = 0, carried: dict | None = None,
                stop: interrupts.StopOnSignal | None = None,
                save_partial=None,
                shard: tuple[int, int] = (0, 1)
                ) -> tuple[statelib.TrainState, dict]:
  """One pass over the training split; returns the state and epoch stats.

  Args:
    first_step: steps of this epoch already done (a run resumed mid-epoch):
      the pass starts at that batch.
    carried: ``partial`` sums of those steps (from the checkpoint), so the
      epoch's mean loss counts them.
    stop: read between steps; once it holds a signal the pass ends at that
      step boundary, after ``save_partial`` (several processes: at the same
      step in all, the one after the first step whose metrics show any
      process's signal).
    save_partial: ``save_partial(state, steps_done, partial)`` saves a
      mid-epoch checkpoint; called on a signal and every
      ``config.checkpoint_every_steps`` steps (never after the last step:
      the epoch's own checkpoint follows).
    shard: this process's block of each global batch (several processes:
      :func:`nngk_jax.parallel.process_shard`); ``train_step`` assembles
      the global batch.

  Returns:
    ``(state, stats)``; a pass ended by a signal returns only
    ``{"stopped_after_step": steps_done}``.

  Raises:
    TrainingDivergedError: the loss or the parameter norm is not finite, or
      the parameter norm passed ``param_norm_limit`` (runaway training whose
      loss stays finite); the message names the epoch and the step.
  """
  num_steps = datalib.num_batches(split, config.batch_size)
  every = config.get("checkpoint_every_steps", 0) or 0
  bar = tqdm(total=num_steps, initial=first_step,
             desc=f"epoch {epoch + 1}/{config.num_epochs}", unit="step",
             disable=not config.progress, leave=False, dynamic_ncols=True)
  carried = carried or {}
  losses_seen, norms_seen, pending = [], [], None
  # Several processes: the signal flags travel with the batches (STOP_SIGNAL).
  signal_in_batch = stop is not None and jax.process_count() > 1
  signalled = False
  start = time.perf_counter()
  warm_start, warm_images = None, 0

  def check(step_metrics, step_in_epoch):
    nonlocal signalled
    if STOP_SIGNAL in step_metrics:
      signalled = signalled or bool(step_metrics[STOP_SIGNAL])
    loss = float(step_metrics["loss"])
    param_norm = float(step_metrics["param_norm"])
    where = f"at epoch {epoch + 1}, step {step_in_epoch + 1} of {num_steps}"
    advice = (f"training stopped. The last good checkpoint is kept in "
              f"{workdir}: rerun with a lower optimizer.learning_rate to "
              f"resume from it, or check the input data.")
    if not math.isfinite(loss):
      raise TrainingDivergedError(f"the loss became {loss} {where}; {advice}")
    if not param_norm <= param_norm_limit:
      raise TrainingDivergedError(
          f"the parameter norm ran away to {param_norm:.3g} {where} (limit "
          f"{param_norm_limit:.3g}, {DIVERGENCE_FACTOR:g}x its value at the "
          f"start); {advice}")
    losses_seen.append(loss)
    norms_seen.append(float(step_metrics["embedding_norm"]))

  def sums():
    return {"loss_sum": carried.get("loss_sum", 0.0) + float(np.sum(losses_seen)),
            "norm_sum": carried.get("norm_sum", 0.0) + float(np.sum(norms_seen)),
            "count": carried.get("count", 0) + len(losses_seen)}

  stream = batches(split, config, epoch, bank, first_batch=first_step,
                   shard=shard)
  for step_in_epoch, batch in enumerate(stream, start=first_step):
    if signal_in_batch:
      batch[STOP_SIGNAL] = np.full(len(batch["index"]), stop.signum is not None)
    state, step_metrics = train_step(state, batch)
    # Check the previous step while this one runs (no pipeline stall).
    if pending is not None:
      check(*pending)
    pending = (step_metrics, step_in_epoch)
    if warm_start is None:
      jax.block_until_ready(step_metrics)
      warm_start = time.perf_counter()
    else:
      warm_images += config.batch_size
    if bar.n % 10 == 0 and losses_seen:
      rate = warm_images / max(time.perf_counter() - warm_start, 1e-9)
      bar.set_postfix(loss=f"{losses_seen[-1]:.4f}", img_s=f"{rate:.0f}")
    bar.update()
    done = step_in_epoch + 1
    # A flag and a counter: no device synchronisation unless saving.
    stopping = signalled if signal_in_batch else (
        stop is not None and stop.signum is not None)
    if save_partial is not None and done < num_steps and (
        stopping or (every and done % every == 0)):
      check(*pending)  # never save a diverged state
      pending = None
      save_partial(state, done, sums())
      if stopping:
        bar.close()
        return state, {"stopped_after_step": done}
  if pending is not None:
    check(*pending)
  bar.close()
  end = time.perf_counter()
  total = sums()
  stats = {
      "train_loss": total["loss_sum"] / total["count"],
      "grad_norm": float(pending[0]["grad_norm"]),
      "param_norm": float(pending[0]["param_norm"]),
      "embedding_norm": total["norm_sum"] / total["count"],
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
  workdirlib.write_atomically(
      path, "".join(json.dumps(r) + "\n" for r in history).encode())


def train_and_evaluate(config: ml_collections.ConfigDict,
                       workdir: str | os.PathLike) -> dict:
  """Trains ``config`` in ``workdir`` (resuming if it holds a checkpoint).

  Writes ``config.json``, ``history.jsonl`` (one record per epoch),
  ``metrics.json`` (final evaluation), ``loss.png`` / ``metrics.png`` and
  Orbax checkpoints under ``checkpoints/``. The whole config is checked
  against the data before any work; the work directory is locked for the
  run (:class:`nngk_jax.workdir.WorkdirLock`: a second run there is
  refused, naming the first); each epoch is checkpointed before it is
  evaluated, so an evaluation error never loses the epoch.

  Returns:
    The final metrics (as in ``metrics.json``).
  """
  workdir = pathlib.Path(workdir)
  dataset = datalib.load_dataset(config.dataset, **dict(config.data))
  validate_config(config, dataset)
  _, bank, state = init_run(config, dataset)  # the bank checks its settings
  # Several processes share the work directory: process 0 holds its lock.
  lock = (workdirlib.WorkdirLock(workdir) if parallel.is_primary()
          else contextlib.nullcontext())
  with lock:
    return _train_locked(config, workdir, dataset, bank, state)


def _train_locked(config, workdir: pathlib.Path, dataset, bank, state) -> dict:
  store = checkpointing.CheckpointStore(
      workdir / "checkpoints", _config_dict(config),
      resumable_fields=RESUMABLE_FIELDS)
  try:
    store.check_config()
    with interrupts.StopOnSignal() as stop:
      return _train_stored(config, workdir, dataset, bank, state, store, stop)
  finally:
    store.close()


def _signalled(stop: interrupts.StopOnSignal) -> bool:
  """Whether a signal arrived here or (several processes) in any process."""
  return parallel.any_process(stop.signum is not None)


def _interrupted(stop: interrupts.StopOnSignal, workdir: pathlib.Path,
                 where: str) -> TrainingInterrupted:
  what = (f"{stop.name} received" if stop.signum is not None
          else "another process received a signal")
  return TrainingInterrupted(
      f"{what}: training stopped {where}; the checkpoint is "
      f"saved in {workdir / 'checkpoints'}. Rerun the same command (same "
      f"--workdir) to resume from there.",
      signal.SIGTERM if stop.signum is None else stop.signum)


def _train_stored(config, workdir: pathlib.Path, dataset, bank, state,
                  store: checkpointing.CheckpointStore,
                  stop: interrupts.StopOnSignal) -> dict:
  # Several processes: process 0 writes the run's files (the checkpoints
  # are written by all, through Orbax).
  primary = parallel.is_primary()
  if primary:
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.json").write_text(
        json.dumps(_config_dict(config), indent=2) + "\n")
  if dataset.unreadable and primary:
    report = workdirlib.write_atomically(
        workdir / "unreadable_files.txt",
        "".join(f"{path}\t{reason}\n"
                for path, reason in dataset.unreadable).encode())
    print(f"warning: {len(dataset.unreadable)} unreadable image file(s) left "
          f"out (data.skip_unreadable=True); listed in {report}",
          file=sys.stderr)
  num_steps = datalib.num_batches(dataset.train, config.batch_size)
  start_epoch, start_step, resumed_extra = 0, 0, {}
  if store.has_checkpoint():
    restored = store.restore_latest(state)
    state, start_epoch = restored.state, restored.epoch
    start_step = restored.step_in_epoch
    if start_step:
      resumed_extra = restored.meta.get("extra", {})
      if bank is not None and restored.graph is not None:
        bank.resume_graph(restored.graph)  # the graph the epoch began with
      print(f"Resuming {workdir} in epoch {start_epoch + 1}, after step "
            f"{start_step} of {num_steps}.", file=sys.stderr)
    else:
      print(f"Resuming {workdir} after epoch {start_epoch}.", file=sys.stderr)
  else:
    state = statelib.load_pretrained(state, config)
  history_path = workdir / "history.jsonl"
  history = _read_history(history_path, start_epoch)
  if start_epoch and len(history) < start_epoch:
    print(f"warning: {history_path} holds {len(history)} of the "
          f"{start_epoch} epochs already trained (deleted or damaged); "
          f"training resumes, and the curves start where it has records",
          file=sys.stderr)
  if start_epoch > config.num_epochs:
    print(f"warning: the run in {workdir} has {start_epoch} epochs, more "
          f"than num_epochs={config.num_epochs}; it is re-evaluated as it "
          f"is, at epoch {start_epoch}", file=sys.stderr)

  mesh = parallel.make_mesh(config)
  layout = parallel.bank_layout(config)
  state = parallel.place_state(state, mesh, layout)
  if mesh is not None and primary:
    print(f"data parallel: each batch of {config.batch_size} split over "
          f"{mesh.devices.size} {mesh.devices.flat[0].platform.upper()} "
          f"devices (config.mesh)", file=sys.stderr)
  shard = parallel.process_shard(mesh, config.batch_size)
  train_step = make_train_step(config, dataset.train.num_classes, bank,
                               mesh=mesh, state=state)
  param_norm_limit = DIVERGENCE_FACTOR * max(
      float(jax.jit(optax.global_norm)(state.params)), 1.0)  # one compile
  final = None
  for epoch in range(start_epoch, config.num_epochs):
    if _signalled(stop):  # arrived during the last evaluation
      raise _interrupted(stop, workdir, f"after epoch {epoch}")
    first_step = start_step if epoch == start_epoch else 0
    record: dict[str, Any] = {"epoch": epoch + 1}
    if first_step:  # the bank was refreshed when this epoch began
      record.update(resumed_extra.get("record", {}))
    elif bank is not None:
      bank_state, bank_record = bank.refresh(
          state.bank, epoch, lambda: evaluation.embed_split(
              state, dataset.train, config.eval_batch_size)[0])
      state = parallel.place_state(state.replace(bank=bank_state), mesh,
                                   layout)
      record.update(bank_record)

    def save_partial(state, done, partial, epoch=epoch, record=record):
      store.save(epoch, state, number=epoch * num_steps + done,
                 step_in_epoch=done,
                 graph=None if bank is None else bank.graph_arrays(),
                 extra={"partial": partial, "record": record})

    state, stats = train_epoch(
        state, train_step, dataset.train, config, epoch, bank,
        workdir=workdir, param_norm_limit=param_norm_limit,
        first_step=first_step,
        carried=resumed_extra.get("partial") if first_step else None,
        stop=stop, save_partial=save_partial, shard=shard)
    if "stopped_after_step" in stats:
      raise _interrupted(stop, workdir, (
          f"in epoch {epoch + 1} after step {stats['stopped_after_step']} "
          f"of {num_steps}"))
    record.update(stats)
    if bank is not None:
      record.update(bank.statistics(state.params))
    # Before evaluating: the epoch is safe.
    store.save(epoch + 1, state, number=(epoch + 1) * num_steps)
    history.append(record)
    if primary:
      _write_history(history_path, history)
    if _signalled(stop):
      raise _interrupted(stop, workdir, f"after epoch {epoch + 1}, before "
                         f"its evaluation")
    last = epoch + 1 == config.num_epochs
    if last or (epoch + 1) % config.eval_every == 0:
      final = evaluation.evaluate(state, dataset, config, bank)
      record.update(final)
      if primary:
        _write_history(history_path, history)
    if primary:
      plotting.plot_history(history, str(workdir) + os.sep)
      _print_record(record)

  if final is None:  # nothing trained now: a finished run, re-evaluated
    final = evaluation.evaluate(state, dataset, config, bank)
  final = dict(final, epochs=max(start_epoch, config.num_epochs))
  baseline = evaluation.raw_pixel_metrics(dataset, config)
  if baseline is not None:
    final["raw_pixels"] = baseline
    print(f"test retrieval ({final['geometry']}): learned embedding "
          f"Recall@1 {final['recall@1']:.3f}, MAP@R {final['map@r']:.3f}; raw "
          f"pixels Recall@1 {baseline['recall@1']:.3f}, MAP@R "
          f"{baseline['map@r']:.3f}", file=sys.stderr)
  if primary:
    (workdir / "metrics.json").write_text(json.dumps(final, indent=2) + "\n")
  return final


def load_trained(workdir: str | os.PathLike):
  """The config, dataset and newest checkpointed state of a run's workdir.

  The newest checkpoint of a run that was stopped (a signal, a crash) is
  from the middle of an epoch: its network has trained past the centres
  of the last refresh. It is loaded all the same, with a warning that
  names the epoch and step and how to finish the run.

  Returns:
    ``(config, dataset, state)``; ``evaluation.embed_split(state,
    dataset.test, 256)`` then gives the test embeddings.
  """
  workdir = pathlib.Path(workdir)
  config_path = workdir / "config.json"
  if not config_path.exists():
    raise FileNotFoundError(f"{workdir} holds no run (no config.json)")
  config = ml_collections.ConfigDict(json.loads(config_path.read_text()))
  dataset = datalib.load_dataset(config.dataset, **dict(config.data))
  _, _, state = init_run(config, dataset)
  store = checkpointing.CheckpointStore(
      workdir / "checkpoints", _config_dict(config),
      resumable_fields=RESUMABLE_FIELDS)
  restored = store.restore_latest(state)
  store.close()
  if restored.step_in_epoch:
    warnings.warn(
        f"{workdir}: the newest checkpoint is from the middle of epoch "
        f"{restored.epoch + 1} (after step {restored.step_in_epoch}): the "
        f"run did not finish. Rerun its training command to finish it; "
        f"this state's network has trained past the centres of the last "
        f"refresh.", stacklevel=2)
  return config, dataset, restored.state


def _print_record(record: dict) -> None:
  keys = ["train_loss", "images_per_second", "recall@1", "map@r", "nmi",
          "kernel_accuracy", "softmax_accuracy"]
  parts = [f"epoch {record['epoch']}"]
  parts += [f"{k}={record[k]:.4g}" for k in keys if k in record]
  print("  ".join(parts), file=sys.stderr)


if __name__ == "__main__":
  # ``python -m nngk_jax.train`` (what ``make train`` and the docs run) is
  # the command line of nngk_jax.cli, under a light main module that the
  # input pipeline's worker processes do not import again.
  from nngk_jax import cli  # pylint: disable=g-import-not-at-top
  cli.run_program("nngk_jax.cli")

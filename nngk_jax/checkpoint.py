"""Orbax checkpoints of the whole train state, in the workdir.

A checkpoint holds everything needed to continue: the parameters (network
and centre bank), the optimiser state, batch statistics, the bank's arrays
(centres and labels), the step and the RNG key; its metadata holds the
number of completed epochs, the steps done in the epoch under way (0 at an
epoch's end; more in a checkpoint taken mid-epoch, on a signal or every
``checkpoint_every_steps``), the config it was written under and the layout
of the state (``FORMAT``): a checkpoint of another layout is refused with a
message, never half-read. Orbax writes each checkpoint to a temporary
directory and renames it when complete, so a process killed mid-save leaves
the previous checkpoint intact. Checkpoints are numbered by the global
training step (epochs before this version: by the epoch), so the newest is
the one with the largest number either way.

In a multi-process run every process calls :meth:`CheckpointStore.save`
and :meth:`~CheckpointStore.restore_latest` (Orbax's ``CheckpointManager``
is multi-process aware: each process writes its own shards, process 0 the
metadata). A checkpoint is restored into the current process's target
shapes and then re-placed for the current mesh, so a run resumes on any
number of processes or devices (resharded, never refused for its count).

At an epoch's end the neighbour graph is not saved: it is a function of the
centres and is rebuilt on resume. A mid-epoch checkpoint saves the graph the
epoch started with, so that the rest of the epoch resumes exactly.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import shutil
import sys
from typing import Any, Iterable

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

__all__ = ["FORMAT", "CheckpointStore", "ConfigMismatchError", "Restored",
           "config_differences"]

# Layout of the saved train state. 1 (absent from the metadata): nngk-jax
# before the centre bank became a component (centres, centre_labels,
# centre_log_weights and a second optimiser state as fields of the state).
# 2: ``params["bank"]`` and ``bank`` (nngk_jax.bank.BankState), one optimiser.
FORMAT = 2


class ConfigMismatchError(ValueError):
  """The work directory holds a checkpoint written under another config."""


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
  if isinstance(tree, dict):
    out = {}
    for key, value in tree.items():
      out.update(_flatten(value, f"{prefix}{key}."))
    return out
  return {prefix[:-1]: tree}


def config_differences(saved: dict, current: dict,
                       ignore: Iterable[str] = ()) -> list[str]:
  """Dotted names of the fields that differ, except those under ``ignore``.

  Examples:
    >>> config_differences({"a": 1, "b": {"c": 2}}, {"a": 1, "b": {"c": 3}})
    ['b.c: 2 -> 3']
  """
  saved_flat, current_flat = _flatten(saved), _flatten(current)
  ignore = tuple(ignore)
  diffs = []
  for key in sorted(set(saved_flat) | set(current_flat)):
    if any(key == name or key.startswith(name + ".") for name in ignore):
      continue
    old = saved_flat.get(key, "<absent>")
    new = current_flat.get(key, "<absent>")
    if _normalise(old) != _normalise(new):
      diffs.append(f"{key}: {old!r} -> {new!r}")
  return diffs


def _normalise(value: Any) -> Any:
  return list(value) if isinstance(value, tuple) else value


@dataclasses.dataclass(frozen=True)
class Restored:
  """A restored checkpoint: the state and where in training it was taken.

  Attributes:
    state: the train state, shaped like the restore target.
    epoch: completed epochs.
    step_in_epoch: steps done in epoch ``epoch + 1`` (0 at an epoch's end).
    meta: the checkpoint's metadata (``epoch``, ``step_in_epoch``,
      ``config``, ``format`` and what the saver added under ``extra``).
    graph: the arrays saved with a mid-epoch checkpoint (``indices``,
      ``mask``) or ``None``.
  """

  state: Any
  epoch: int
  step_in_epoch: int
  meta: dict
  graph: dict[str, np.ndarray] | None = None


def _describe(path: pathlib.Path, meta: dict | None) -> str:
  """``the checkpoint of epoch 2 (PATH)``, or of a step mid-epoch."""
  if meta is None or "epoch" not in meta:
    return f"the checkpoint {path}"
  if meta.get("step_in_epoch"):
    return (f"the checkpoint of epoch {meta['epoch'] + 1}, step "
            f"{meta['step_in_epoch']} ({path})")
  return f"the checkpoint of epoch {meta['epoch']} ({path})"


class CheckpointStore:
  """Per-epoch Orbax checkpoints of a train state, guarded by its config.

  Args:
    directory: where checkpoints live (created if missing).
    config: the run's config as a JSON-able dict.
    resumable_fields: config fields that may change between a run and its
      resumption (e.g. ``num_epochs`` to train longer).
    max_to_keep: how many epochs' checkpoints to keep.
  """

  def __init__(self, directory: str | pathlib.Path, config: dict, *,
               resumable_fields: Iterable[str] = (), max_to_keep: int = 2):
    self.directory = pathlib.Path(directory).absolute()
    self.config = json.loads(json.dumps(config))
    self.resumable_fields = tuple(resumable_fields)
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, create=True,
            enable_async_checkpointing=False))

  def has_checkpoint(self) -> bool:
    """Whether the directory holds any checkpoint (readable or not)."""
    return self._manager.latest_step() is not None

  def latest_epoch(self) -> int | None:
    """Completed epochs in the newest readable checkpoint (``None``: none)."""
    for number in self._numbers_newest_first():
      try:
        return int(self._restore_meta(number)["epoch"])
      except Exception:  # pylint: disable=broad-except
        continue
    return None

  def check_config(self) -> None:
    """Raises :class:`ConfigMismatchError` if the saved config differs.

    Reads the newest checkpoint whose metadata can be read (see
    :meth:`restore` for damaged ones).
    """
    meta = None
    for number in self._numbers_newest_first():
      try:
        meta = self._restore_meta(number)
        break
      except Exception:  # pylint: disable=broad-except
        continue  # restore() says what was wrong when it gets there
    if meta is None:
      return
    epoch = meta.get("epoch")
    saved_format = meta.get("format", 1)
    if saved_format != FORMAT:
      raise ConfigMismatchError(
          f"the work directory {self.directory.parent} holds a checkpoint "
          f"(epoch {epoch}) in the train-state layout {saved_format} of an "
          f"older nngk-jax; this version reads layout {FORMAT}. Use another "
          f"--workdir (or delete that one) to train afresh, or resume it "
          f"with the nngk-jax version that wrote it.")
    saved = meta["config"]
    diffs = config_differences(saved, self.config, self.resumable_fields)
    if diffs:
      raise ConfigMismatchError(
          f"the work directory {self.directory.parent} holds a checkpoint "
          f"(epoch {epoch}) written under a different config: "
          + "; ".join(diffs)
          + ". Use another --workdir, or delete that one to start afresh.")

  def save(self, epoch: int, state: Any, *, number: int | None = None,
           step_in_epoch: int = 0, graph: dict[str, np.ndarray] | None = None,
           extra: dict | None = None) -> None:
    """Saves ``state`` after ``epoch`` epochs and ``step_in_epoch`` steps.

    Args:
      epoch: completed epochs.
      state: the train state.
      number: the checkpoint's number (its directory name), larger than any
        before: the global step; ``None`` takes ``epoch``.
      step_in_epoch: steps done in the epoch under way (0: at an epoch's end).
      graph: arrays to save beside the state (a mid-epoch checkpoint's
        neighbour graph).
      extra: JSON-able metadata restored as ``meta["extra"]``.
    """
    meta = {"epoch": epoch, "step_in_epoch": step_in_epoch,
            "config": self.config, "format": FORMAT, "extra": extra or {},
            "graph": graph is not None}
    items = {"state": ocp.args.StandardSave(state),
             "meta": ocp.args.JsonSave(meta)}
    if graph is not None:
      items["graph"] = ocp.args.StandardSave(graph)
    number = epoch if number is None else number
    self._set_aside_from(number)
    saved = self._manager.save(number, args=ocp.args.Composite(**items))
    self._manager.wait_until_finished()
    if not saved:
      raise RuntimeError(f"Orbax did not save checkpoint {number} in "
                         f"{self.directory}")

  def _set_aside_from(self, number: int) -> None:
    """Moves checkpoints numbered ``number`` or later out of the way.

    There are such checkpoints only when :meth:`restore_latest` fell back
    past them because they cannot be read; Orbax would silently skip a save
    under their numbers. They are moved, not deleted, to a sibling
    directory ``<directory>_unreadable``, now that a good checkpoint
    replaces them.
    """
    later = [n for n in self._manager.all_steps() if n >= number]
    if not later:
      return
    if jax.process_index() != 0:  # several processes: process 0 moves them
      multihost_utils.sync_global_devices("nngk_jax.checkpoint.set_aside")
      self._manager.reload()
      return
    aside = self.directory.with_name(self.directory.name + "_unreadable")
    aside.mkdir(exist_ok=True)
    for n in later:
      target = aside / str(n)
      suffix = 1
      while target.exists():
        target, suffix = aside / f"{n}.{suffix}", suffix + 1
      shutil.move(str(self.directory / str(n)), str(target))
      print(f"warning: the unreadable checkpoint {self.directory / str(n)} "
            f"is replaced by a new one and moved to {target}",
            file=sys.stderr)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices("nngk_jax.checkpoint.set_aside")
    self._manager.reload()

  def _numbers_newest_first(self) -> list[int]:
    return sorted(self._manager.all_steps(), reverse=True)

  def restore(self, target: Any) -> tuple[Any, int]:
    """The newest readable checkpoint, shaped like ``target``, and its epoch.

    See :meth:`restore_latest`, which also says where in the epoch it was
    taken.
    """
    restored = self.restore_latest(target)
    return restored.state, restored.epoch

  def restore_latest(self, target: Any) -> Restored:
    """The newest readable checkpoint, shaped like ``target``.

    A checkpoint that cannot be read (a truncated or missing file) is
    reported on stderr, naming what was wrong, and the one before it is
    tried; nothing is deleted. Raises ``ValueError`` when none can be read.
    """
    numbers = self._numbers_newest_first()
    if not numbers:
      raise FileNotFoundError(f"no checkpoint in {self.directory}")
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    problems = []
    for number in numbers:
      meta = None
      try:
        meta = self._restore_meta(number)
        items = {"state": ocp.args.StandardRestore(abstract)}
        if meta.get("graph"):
          items["graph"] = ocp.args.StandardRestore()
        restored = self._manager.restore(
            number, args=ocp.args.Composite(**items))
      except Exception as error:  # pylint: disable=broad-except
        what = f"{type(error).__name__}: {' '.join(str(error).split())[:300]}"
        name = _describe(self.directory / str(number), meta)
        problems.append(f"{name}: {what}")
        print(f"warning: {name} cannot be read ({what}); trying the one "
              f"before it", file=sys.stderr)
        continue
      graph = restored["graph"] if "graph" in items else None
      return Restored(
          state=restored["state"], epoch=int(meta["epoch"]),
          step_in_epoch=int(meta.get("step_in_epoch", 0)), meta=meta,
          graph=None if graph is None else {
              k: np.asarray(v) for k, v in graph.items()})
    raise ValueError(
        f"no checkpoint in {self.directory} can be read ("
        + "; ".join(problems) + "). Move that directory away to train afresh.")

  def _restore_meta(self, number: int) -> dict:
    restored = self._manager.restore(
        number, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
    return restored["meta"]

  def close(self) -> None:
    self._manager.close()

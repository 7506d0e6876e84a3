"""Orbax checkpoints of the whole train state, one per epoch, in the workdir.

A checkpoint holds everything needed to continue: the parameters (network
and centre bank), the optimiser state, batch statistics, the bank's arrays
(centres and labels), the step and the RNG key; its metadata holds the
number of completed epochs, the config it was written under and the layout
of the state (``FORMAT``): a checkpoint of another layout is refused with a
message, never half-read. Orbax writes each
checkpoint to a temporary directory and renames it when complete, so a
process killed mid-save leaves the previous checkpoint intact.

The neighbour graph is not saved: it is a function of the centres and is
rebuilt on resume.
"""

from __future__ import annotations

import json
import pathlib
import sys
from typing import Any, Iterable

import jax
import orbax.checkpoint as ocp

__all__ = ["FORMAT", "CheckpointStore", "ConfigMismatchError",
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

  def latest_epoch(self) -> int | None:
    """Completed epochs in the newest checkpoint, or ``None`` if there is none."""
    return self._manager.latest_step()

  def check_config(self) -> None:
    """Raises :class:`ConfigMismatchError` if the saved config differs.

    Reads the newest checkpoint whose metadata can be read (see
    :meth:`restore` for damaged ones).
    """
    epoch, meta = None, None
    for epoch in self._epochs_newest_first():
      try:
        meta = self._restore_meta(epoch)
        break
      except Exception:  # pylint: disable=broad-except
        continue  # restore() says what was wrong when it gets there
    if meta is None:
      return
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

  def save(self, epoch: int, state: Any) -> None:
    """Saves ``state`` as the checkpoint after ``epoch`` completed epochs."""
    self._manager.save(
        epoch,
        args=ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            meta=ocp.args.JsonSave({"epoch": epoch, "config": self.config,
                                    "format": FORMAT})))
    self._manager.wait_until_finished()

  def _epochs_newest_first(self) -> list[int]:
    return sorted(self._manager.all_steps(), reverse=True)

  def restore(self, target: Any) -> tuple[Any, int]:
    """The newest readable checkpoint, shaped like ``target``, and its epoch.

    A checkpoint that cannot be read (a truncated or missing file) is
    reported on stderr, naming what was wrong, and the one before it is
    tried; nothing is deleted. Raises ``ValueError`` when none can be read.
    """
    epochs = self._epochs_newest_first()
    if not epochs:
      raise FileNotFoundError(f"no checkpoint in {self.directory}")
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    problems = []
    for epoch in epochs:
      try:
        restored = self._manager.restore(
            epoch,
            args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)))
      except Exception as error:  # pylint: disable=broad-except
        what = " ".join(str(error).split())[:300]
        problems.append(f"epoch {epoch}: {type(error).__name__}: {what}")
        print(f"warning: the checkpoint of epoch {epoch} in {self.directory} "
              f"cannot be read ({type(error).__name__}: {what}); trying the "
              f"one before it", file=sys.stderr)
        continue
      return restored["state"], epoch
    raise ValueError(
        f"no checkpoint in {self.directory} can be read ("
        + "; ".join(problems) + "). Move that directory away to train afresh.")

  def _restore_meta(self, epoch: int) -> dict:
    restored = self._manager.restore(
        epoch, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
    return restored["meta"]

  def close(self) -> None:
    self._manager.close()

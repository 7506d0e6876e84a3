"""Batch samplers: shuffled batches and m-per-class batches of a split.

A sampler chooses index batches on the host, then asks the split for the
examples: an in-memory :class:`~nngk_jax.data.splits.Split` stacks its
arrays, an :class:`~nngk_jax.data.pipeline.ImageSplit` decodes them in
parallel. The order (and every random crop) is a pure function of ``(seed,
epoch)``, so a resumed run replays the same batches.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from nngk_jax import checks
from nngk_jax.data import splits

__all__ = [
    "SAMPLERS",
    "iterate_batches",
    "iterate_class_balanced_batches",
    "num_batches",
]

# Names of the training samplers: "random" is :func:`iterate_batches`
# (shuffled), "class_balanced" :func:`iterate_class_balanced_batches`.
SAMPLERS = ("random", "class_balanced")


def num_batches(split: splits.SplitLike, batch_size: int,
                drop_last: bool = True) -> int:
  """Number of batches :func:`iterate_batches` yields per epoch.

  Args:
    split: the split (only its length is used).
    batch_size: examples per batch.
    drop_last: whether the final partial batch is dropped.

  Returns:
    ``len(split) // batch_size`` if ``drop_last`` else the ceiling.

  Examples:
    >>> import numpy as np
    >>> split = splits.Split(np.zeros((5, 1, 1, 1), np.float32),
    ...                      np.zeros(5, int), ("x",))
    >>> num_batches(split, 2), num_batches(split, 2, drop_last=False)
    (2, 3)
  """
  _check_batch_size(split, batch_size, drop_last)
  if drop_last:
    return len(split) // batch_size
  return -(-len(split) // batch_size)


def _check_batch_size(split: splits.SplitLike, batch_size: int,
                      drop_last: bool) -> None:
  checks.positive_int("batch_size", batch_size)
  if drop_last and batch_size > len(split):
    raise ValueError(
        f"batch_size {batch_size} is larger than the split ({len(split)} "
        f"examples) with drop_last=True: no batch would be produced")


def _check_first_batch(first_batch: int, num: int) -> None:
  if isinstance(first_batch, bool) or not isinstance(
      first_batch, (int, np.integer)) or not 0 <= first_batch <= num:
    raise ValueError(f"first_batch must be an integer in [0, {num}] (the "
                     f"epoch's batches), got {first_batch!r}")


def iterate_batches(split: splits.SplitLike, batch_size: int, *, seed: int,
                    epoch: int, shuffle: bool = True, drop_last: bool = True,
                    augment: bool = False, first_batch: int = 0,
                    shard: tuple[int, int] = (0, 1)
                    ) -> Iterator[dict[str, np.ndarray]]:
  """One epoch of batches over ``split``.

  The order is ``np.random.default_rng([seed, epoch]).permutation(len(split))``
  (or ``0..N-1`` without shuffling): a pure function of ``(seed, epoch)``, so
  a resumed run replays the same batches.

  Every batch has exactly ``batch_size`` rows and always carries a
  ``"valid"`` mask, so all batches share one structure (one jit trace). With
  ``drop_last=False`` the final partial batch is padded with copies of its
  last real example and those rows have ``valid=False``; reduce with the
  mask. With ``drop_last=True`` ``valid`` is all True.

  Args:
    split: the split to iterate.
    batch_size: rows per batch.
    seed: the run's data seed (non-negative).
    epoch: the epoch number (non-negative).
    shuffle: whether to permute the examples.
    drop_last: drop the final partial batch (True) or pad it (False).
    augment: apply the training transform (random crop, flip) of an
      :class:`~nngk_jax.data.pipeline.ImageSplit`; in-memory splits ignore it.
    first_batch: start at this batch of the epoch (a run resumed
      mid-epoch): the batches that follow are exactly those of a full pass.
    shard: ``(index, count)``: yield only block ``index`` of ``count`` equal
      contiguous blocks of each batch's rows
      (:func:`~nngk_jax.data.splits.shard_rows`): one process's share of
      the global batch in a multi-process run, read alone.

  Returns:
    An iterator of ``{"image": [batch, H, W, C] float32, "label": [batch]
    int32, "index": [batch] int32, "valid": [batch] bool}``;
    ``image[j] == split.images[index[j]]``.

  Examples:
    >>> import numpy as np
    >>> split = splits.Split(np.zeros((3, 1, 1, 1), np.float32),
    ...                      np.arange(3), ("a", "b", "c"))
    >>> batches = list(iterate_batches(split, 2, seed=0, epoch=0,
    ...                                shuffle=False, drop_last=False))
    >>> [b["index"].tolist() for b in batches], batches[-1]["valid"].tolist()
    ([[0, 1], [2, 2]], [True, False])
  """
  _check_batch_size(split, batch_size, drop_last)
  for value, what in ((seed, "seed"), (epoch, "epoch")):
    if isinstance(value, bool) or not isinstance(
        value, (int, np.integer)) or value < 0:
      raise ValueError(f"{what} must be a non-negative integer, got {value!r}")
  n = len(split)
  if shuffle:
    order = np.random.default_rng([int(seed), int(epoch)]).permutation(n)
  else:
    order = np.arange(n)
  index_batches, valid = [], []
  for b in range(num_batches(split, batch_size, drop_last)):
    indices = order[b * batch_size:(b + 1) * batch_size]
    num_valid = len(indices)
    if num_valid < batch_size:
      indices = np.concatenate(
          [indices, np.full(batch_size - num_valid, indices[-1])])
    index_batches.append(indices)
    valid.append(np.arange(batch_size) < num_valid)
  _check_first_batch(first_batch, len(index_batches))
  rows = splits.shard_rows(shard, batch_size)
  batches = split.load_batches(index_batches, augment=augment, seed=seed,
                               epoch=epoch, first_batch=first_batch,
                               shard=shard)
  for batch, batch_valid in zip(batches, valid[first_batch:]):
    batch["valid"] = batch_valid[rows]
    yield batch


def iterate_class_balanced_batches(
    split: splits.SplitLike, classes_per_batch: int, samples_per_class: int, *,
    seed: int, epoch: int, augment: bool = False, first_batch: int = 0,
    shard: tuple[int, int] = (0, 1)) -> Iterator[dict[str, np.ndarray]]:
  """One epoch of m-per-class batches (``classes_per_batch`` x ``samples_per_class``).

  Each batch draws ``classes_per_batch`` distinct classes and
  ``samples_per_class`` images of each (without replacement within a batch
  when the class has enough images, with replacement otherwise). An epoch has
  ``len(split) // (classes_per_batch * samples_per_class)`` batches, as many
  as :func:`iterate_batches` would give for that batch size. The draw is a
  pure function of ``(seed, epoch)``. Batches are grouped by class, in the
  order the classes were drawn, and carry ``valid`` (all True).

  Args:
    split: the split to sample from.
    classes_per_batch: distinct classes per batch (at most ``num_classes``).
    samples_per_class: images per class per batch.
    seed: the run's data seed.
    epoch: the epoch number.
    augment: as in :func:`iterate_batches`.
    first_batch: as in :func:`iterate_batches`.
    shard: as in :func:`iterate_batches`.

  Returns:
    An iterator of batch dicts as :func:`iterate_batches` yields.

  Examples:
    >>> import numpy as np
    >>> split = splits.Split(np.zeros((12, 1, 1, 1), np.float32),
    ...                      np.repeat(np.arange(3), 4), ("a", "b", "c"))
    >>> batch = next(iterate_class_balanced_batches(split, 2, 2, seed=0, epoch=0))
    >>> labels = batch["label"].tolist()
    >>> len(set(labels)), labels[0] == labels[1], labels[2] == labels[3]
    (2, True, True)
  """
  if not 1 <= classes_per_batch <= split.num_classes:
    raise ValueError(
        f"classes_per_batch={classes_per_batch} must be between 1 and the "
        f"split's {split.num_classes} classes")
  if samples_per_class < 1:
    raise ValueError(f"samples_per_class must be >= 1, got {samples_per_class}")
  batch_size = classes_per_batch * samples_per_class
  rng = np.random.default_rng([int(seed), int(epoch), 7])
  by_class = [np.flatnonzero(split.labels == c) for c in range(split.num_classes)]
  present = np.array([c for c, idx in enumerate(by_class) if len(idx)])
  if len(present) < classes_per_batch:
    raise ValueError(
        f"classes_per_batch={classes_per_batch} but only {len(present)} "
        f"classes have images")
  index_batches = []
  for _ in range(num_batches(split, batch_size)):
    classes = rng.choice(present, classes_per_batch, replace=False)
    index_batches.append(np.concatenate([
        rng.choice(by_class[c], samples_per_class,
                   replace=len(by_class[c]) < samples_per_class)
        for c in classes]))
  _check_first_batch(first_batch, len(index_batches))
  rows = splits.shard_rows(shard, batch_size)
  for batch in split.load_batches(index_batches, augment=augment, seed=seed,
                                  epoch=epoch, first_batch=first_batch,
                                  shard=shard):
    batch["valid"] = np.ones(rows.stop - rows.start, bool)
    yield batch

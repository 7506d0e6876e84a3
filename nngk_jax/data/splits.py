"""Splits and datasets: the types every data source builds.

Every dataset is a :class:`Dataset` holding a ``train`` and a ``test``
split. A :class:`Split` holds its images in memory; a split is a
random-access source: ``split[i]`` is one example and
``split.get_batch(indices)`` a batch. Each example carries its index in the
split, so the trainer can look up its row in the neighbour graph built over
the training centres, and its own centre.

:func:`build_dataset` splits one labelled pool into a :class:`Dataset` under
an evaluation protocol (class-disjoint halves or a stratified split); the
loaders of the other modules of :mod:`nngk_jax.data` call it.

This module is the bottom of :mod:`nngk_jax.data`: it imports no other
module of the package. Everything here is host-side NumPy; nothing is meant
to run inside ``jax.jit``.
"""

from __future__ import annotations

import dataclasses
import operator
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from nngk_jax import checks

__all__ = [
    "DataError",
    "Dataset",
    "DatasetNotAvailableError",
    "PROTOCOLS",
    "Split",
    "SplitLike",
    "UnreadableImagesError",
    "build_dataset",
    "check_fraction",
    "check_labels",
    "shard_rows",
    "remap_labels",
]

PROTOCOLS = ("metric", "classification")


class DataError(ValueError):
  """A data file could not be read (corrupt, truncated, not an image)."""


class UnreadableImagesError(DataError):
  """Image files that cannot be read, found before any work, all at once.

  The message lists every file and why, one per line after the first.

  Attributes:
    files: ``[(path, reason), ...]``.
  """

  def __init__(self, files, where: str):
    self.files = list(files)
    listing = "".join(f"\n  {path}: {reason}" for path, reason in self.files)
    super().__init__(
        f"{len(self.files)} image file(s) in {where} cannot be read (fix or "
        f"remove them, or set data.skip_unreadable=True to train without "
        f"them and list them in unreadable_files.txt in the work "
        f"directory):{listing}")


class DatasetNotAvailableError(RuntimeError):
  """A recognised dataset whose files are not on this machine.

  The message says how to get them (e.g. ``make data DATASET=cub``).
  """


def check_labels(labels: Sequence[int] | np.ndarray, class_names: Sequence[str],
                 *, require_every_class: bool = True
                 ) -> tuple[np.ndarray, tuple[str, ...]]:
  """Checks a split's labels against its class names.

  Args:
    labels: ``[num_examples]`` integers in ``[0, len(class_names))``.
    class_names: distinct names, at least one.
    require_every_class: every class must have at least one example.

  Returns:
    ``(labels, class_names)``: a read-only int32 copy-free view and a tuple.

  Raises:
    ValueError: naming the first bad label, duplicate names or empty classes.

  Examples:
    >>> check_labels([1, 0], ["a", "b"])
    (array([1, 0], dtype=int32), ('a', 'b'))
  """
  labels = np.asarray(labels)
  class_names = tuple(str(name) for name in class_names)
  if labels.ndim != 1:
    raise ValueError(f"labels must be 1-d [num_examples], got shape "
                     f"{labels.shape}")
  if labels.size and not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(f"labels must be integers, got dtype {labels.dtype}")
  if not class_names:
    raise ValueError("class_names is empty; a split needs at least one class")
  if len(set(class_names)) != len(class_names):
    raise ValueError(f"class_names has duplicates: {class_names}")
  num_classes = len(class_names)
  bad = (labels < 0) | (labels >= num_classes)
  if np.any(bad):
    first = int(np.flatnonzero(bad)[0])
    raise ValueError(
        f"label {int(labels[first])} (example {first}) is out of range "
        f"[0, {num_classes}) for {num_classes} class names")
  counts = np.bincount(labels.astype(np.int64), minlength=num_classes)
  if require_every_class and np.any(counts == 0):
    empty = [class_names[c] for c in np.flatnonzero(counts == 0)]
    raise ValueError(f"classes with no images: {empty[:10]}"
                     f"{' ...' if len(empty) > 10 else ''} ({len(empty)} in all)")
  labels = labels.astype(np.int32, copy=False).view()
  labels.flags.writeable = False
  return labels, class_names


def shard_rows(shard: tuple[int, int], batch_size: int) -> slice:
  """The rows of a ``batch_size``-row batch that ``shard`` reads.

  ``shard = (index, count)``: block ``index`` of ``count`` equal contiguous
  blocks (one process's share of a global batch); ``(0, 1)`` is the whole
  batch.

  Raises:
    ValueError: ``count`` does not divide ``batch_size``, or ``index`` is
      not in ``[0, count)``.

  Examples:
    >>> shard_rows((1, 2), 8)
    slice(4, 8, None)
  """
  index, count = (int(v) for v in shard)
  if count < 1 or not 0 <= index < count or batch_size % count:
    raise ValueError(
        f"shard={tuple(shard)} must be (index, count) with 0 <= index < "
        f"count and count dividing the batch size {batch_size}")
  block = batch_size // count
  return slice(index * block, (index + 1) * block)


@runtime_checkable
class SplitLike(Protocol):
  """What the samplers and the trainer use of a split.

  Both the in-memory :class:`Split` and the decoded-on-demand
  :class:`~nngk_jax.data.pipeline.ImageSplit` satisfy it;
  ``isinstance(x, SplitLike)`` checks that ``x`` has these members.
  """

  @property
  def labels(self) -> np.ndarray:
    """``[num_examples]`` int32 in ``[0, num_classes)``, read-only."""

  @property
  def class_names(self) -> tuple[str, ...]:
    """One name per class; ``class_names[c]`` names label ``c``."""

  @property
  def num_classes(self) -> int:
    """Number of classes, ``len(class_names)``."""

  @property
  def image_shape(self) -> tuple[int, int, int]:
    """``(height, width, channels)`` of every image the split yields."""

  def __len__(self) -> int:
    """Number of examples."""

  def __getitem__(self, i: int) -> dict[str, Any]:
    """One example: ``{"image": [H, W, C], "label": int, "index": int}``."""

  def get_batch(self, indices: Sequence[int] | np.ndarray
                ) -> dict[str, np.ndarray]:
    """The examples at ``indices``: ``{"image", "label", "index"}``."""

  def load_batches(self, index_batches: Iterable[np.ndarray], *,
                   augment: bool, seed: int, epoch: int,
                   first_batch: int = 0,
                   shard: tuple[int, int] = (0, 1)
                   ) -> Iterator[dict[str, np.ndarray]]:
    """The batches at ``index_batches``, in order (the samplers' path).

    ``augment`` asks for the training transform (random crop, flip) where
    the split has one; its random choices are a function of ``(seed,
    epoch, position in the epoch)``. ``first_batch`` skips that many
    batches without reading them; the rest are as they would have been (a
    run resumed mid-epoch). ``shard`` reads only the rows
    :func:`shard_rows` names of each batch (one process's block of a
    global batch), with the random choices they have in the whole batch.
    """


@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class Split:
  """One split of a dataset, held in memory: images, labels and class names.

  The arrays are stored read-only (``float32`` images, ``int32`` labels), so
  a split cannot be changed behind the back of a neighbour graph built on it.

  Attributes:
    images: ``[num_examples, height, width, channels]`` float32 in
      ``[-1, 1]``.
    labels: ``[num_examples]`` int32 in ``[0, num_classes)``.
    class_names: ``num_classes`` names; ``class_names[c]`` names label ``c``.
    require_every_class: when True (the default) every class must have at
      least one example. A classification test split may set it False: a
      class with a single image keeps it for training.

  Examples:
    >>> import numpy as np
    >>> split = Split(np.zeros((3, 2, 2, 1), np.float32),
    ...               np.array([0, 1, 1]), ("cat", "dog"))
    >>> len(split), split.num_classes, split.image_shape
    (3, 2, (2, 2, 1))
    >>> split[2]["label"], split[2]["index"]
    (1, 2)
    >>> split.get_batch([2, 0])["index"]
    array([2, 0], dtype=int32)
  """

  images: np.ndarray
  labels: np.ndarray
  class_names: tuple[str, ...]
  require_every_class: bool = True

  def __post_init__(self) -> None:
    images = np.asarray(self.images)
    labels = np.asarray(self.labels)
    if images.ndim != 4:
      raise ValueError(
          f"images must be [num_examples, height, width, channels], got shape "
          f"{images.shape}")
    if not np.issubdtype(images.dtype, np.floating):
      raise ValueError(f"images must be floating point in [-1, 1], got dtype "
                       f"{images.dtype}")
    if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
      raise ValueError(
          f"labels must be [num_examples] = [{images.shape[0]}] to match "
          f"images {images.shape}, got shape {labels.shape}")
    labels, class_names = check_labels(
        labels, self.class_names, require_every_class=self.require_every_class)
    images = images.astype(np.float32, copy=False)
    if images.size:  # An empty split has no rows to check (nor reshape).
      bad = checks.non_finite_rows(images)
      if bad.any():
        raise ValueError(f"images are not finite (NaN or inf), first at "
                         f"example {int(np.argmax(bad))}")
    if images.size and (images.min() < -1.0 or images.max() > 1.0):
      raise ValueError(
          f"images must be normalised to [-1, 1], found values in "
          f"[{images.min()}, {images.max()}]")
    # Read-only views: the caller's arrays keep their own flags.
    images = images.view()
    images.flags.writeable = False
    object.__setattr__(self, "images", images)
    object.__setattr__(self, "labels", labels)
    object.__setattr__(self, "class_names", class_names)

  def __len__(self) -> int:
    return int(self.images.shape[0])

  def __repr__(self) -> str:
    return (f"Split(num_examples={len(self)}, image_shape={self.image_shape}, "
            f"num_classes={self.num_classes})")

  @property
  def num_classes(self) -> int:
    """Number of classes, ``len(class_names)``."""
    return len(self.class_names)

  @property
  def image_shape(self) -> tuple[int, int, int]:
    """``(height, width, channels)`` of every image."""
    return tuple(int(d) for d in self.images.shape[1:])  # type: ignore[return-value]

  def __getitem__(self, i: int) -> dict[str, Any]:
    """One example: ``{"image": [H, W, C], "label": int, "index": int}``.

    Negative ``i`` counts from the end; the returned ``"index"`` is always
    the non-negative position in the split.
    """
    n = len(self)
    index = operator.index(i)  # TypeError for slices, floats, arrays.
    if not -n <= index < n:
      raise IndexError(f"index {index} out of range for a split of {n}")
    index %= n
    return {"image": self.images[index], "label": int(self.labels[index]),
            "index": index}

  def get_batch(self, indices: Sequence[int] | np.ndarray) -> dict[str, np.ndarray]:
    """The examples at ``indices``, stacked.

    Args:
      indices: ``[batch]`` integer positions in ``[0, len(self))``.

    Returns:
      ``{"image": [batch, H, W, C] float32, "label": [batch] int32,
      "index": [batch] int32}``; the image array is a fresh writable copy.
    """
    indices = np.asarray(indices)
    if indices.ndim != 1 or (indices.size
                             and not np.issubdtype(indices.dtype, np.integer)):
      raise ValueError(f"indices must be a 1-d integer array, got shape "
                       f"{indices.shape} dtype {indices.dtype}")
    if indices.size and (indices.min() < 0 or indices.max() >= len(self)):
      raise IndexError(
          f"indices must lie in [0, {len(self)}), found "
          f"[{indices.min()}, {indices.max()}]")
    indices = indices.astype(np.int32)
    return {"image": self.images[indices], "label": self.labels[indices],
            "index": indices}

  def load_batches(self, index_batches: Iterable[np.ndarray], *,
                   augment: bool, seed: int, epoch: int,
                   first_batch: int = 0,
                   shard: tuple[int, int] = (0, 1)
                   ) -> Iterator[dict[str, np.ndarray]]:
    """:meth:`get_batch` of each index batch (its ``shard`` rows,
    :func:`shard_rows`) from ``first_batch`` on.

    The images are already decoded and normalised, so there is no
    augmentation: ``augment``, ``seed`` and ``epoch`` are accepted (as
    :class:`SplitLike` asks) and ignored.
    """
    del augment, seed, epoch  # In memory: nothing to decode or augment.
    index_batches = list(index_batches)[first_batch:]
    if tuple(shard) != (0, 1):
      rows = shard_rows(shard, len(index_batches[0]) if index_batches else 0)
      index_batches = [np.asarray(indices)[rows] for indices in index_batches]
    return (self.get_batch(indices) for indices in index_batches)


@dataclasses.dataclass(frozen=True)
class Dataset:
  """A named pair of train and test splits under an evaluation protocol.

  Attributes:
    name: the name it was loaded under, e.g. ``"digits"``.
    train: the training split (its examples become the kernel centres).
    test: the evaluation split.
    protocol: ``"metric"``: the test classes are disjoint from the training
      ones and each split numbers its own classes ``0..C-1`` (``class_names``
      keep the original names); evaluate by retrieval. ``"classification"``:
      both splits share the same classes and label ids; evaluate by accuracy.
    unreadable: ``(path, reason)`` of the files left out because they cannot
      be read (``data.skip_unreadable=True``); the trainer writes them to
      ``unreadable_files.txt`` in the work directory.

  Examples:
    >>> import numpy as np
    >>> images = np.zeros((2, 1, 1, 1), np.float32)
    >>> ds = Dataset("toy", Split(images, [0, 0], ("a",)),
    ...              Split(images, [0, 0], ("b",)), "metric")
    >>> ds.protocol, ds.train.class_names, ds.test.class_names
    ('metric', ('a',), ('b',))
  """

  name: str
  train: SplitLike
  test: SplitLike
  protocol: str
  unreadable: tuple[tuple[str, str], ...] = ()

  def __post_init__(self) -> None:
    if self.protocol not in PROTOCOLS:
      raise ValueError(f"protocol must be one of {PROTOCOLS}, got "
                       f"{self.protocol!r}")
    if self.train.image_shape != self.test.image_shape:
      raise ValueError(
          f"train and test images differ in shape: {self.train.image_shape} vs "
          f"{self.test.image_shape}")
    if self.protocol == "classification":
      if self.train.class_names != self.test.class_names:
        raise ValueError(
            "classification protocol needs the same classes in both splits, "
            f"got train {self.train.class_names} and test "
            f"{self.test.class_names}")
    else:
      shared = set(self.train.class_names) & set(self.test.class_names)
      if shared:
        raise ValueError(
            f"metric protocol needs disjoint train and test classes; shared: "
            f"{sorted(shared)}")


# ----------------------------------------------------------------------------
# Splitting helpers.


def check_fraction(test_fraction: float) -> None:
  """Raises ``ValueError`` unless ``0 < test_fraction < 1``."""
  if not 0.0 < test_fraction < 1.0:
    raise ValueError(f"test_fraction must lie in (0, 1), got {test_fraction}")


def _stratified_split(labels: np.ndarray, test_fraction: float,
                      seed: int) -> tuple[np.ndarray, np.ndarray]:
  """Per-class random split; returns sorted (train_idx, test_idx).

  Each class with ``m`` examples sends ``floor(m * test_fraction)`` of them to
  test, but never all of them: at least one always stays in train.
  """
  check_fraction(test_fraction)
  rng = np.random.default_rng(seed)
  train_parts, test_parts = [], []
  for c in np.unique(labels):
    members = rng.permutation(np.flatnonzero(labels == c))
    n_test = min(int(np.floor(len(members) * test_fraction)), len(members) - 1)
    test_parts.append(members[:n_test])
    train_parts.append(members[n_test:])
  return (np.sort(np.concatenate(train_parts)),
          np.sort(np.concatenate(test_parts)))


def _keep_per_class(labels: np.ndarray, class_names: Sequence[str], n: int,
                    seed: int) -> np.ndarray:
  """Sorted positions of ``n`` examples per class, chosen with ``seed``."""
  n = checks.positive_int("train_per_class", n)
  rng = np.random.default_rng([seed, 1])  # independent of the split's stream
  keep = []
  for c, name in enumerate(class_names):
    members = np.flatnonzero(labels == c)
    if len(members) < n:
      raise ValueError(
          f"train_per_class={n} but class {name!r} has only {len(members)} "
          f"training images")
    keep.append(rng.choice(members, size=n, replace=False))
  return np.sort(np.concatenate(keep))


def remap_labels(labels: Sequence[int] | np.ndarray,
                 classes: Sequence[int] | np.ndarray | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:
  """Renumbers labels ``0..C-1`` by their position in ``classes``.

  Args:
    labels: ``[num_examples]`` integer labels.
    classes: the ``C`` distinct original labels, in the new order; a class
      may have no example. None: the labels present, sorted.

  Returns:
    ``(new_labels, classes)``: int32 labels in ``[0, C)`` and the ``C``
    original labels as an array, so ``classes[new_labels] == labels``.

  Raises:
    ValueError: ``classes`` has duplicates, or a label is not one of them.

  Examples:
    >>> remap_labels(np.array([7, 3, 7]))
    (array([1, 0, 1], dtype=int32), array([3, 7]))
    >>> remap_labels([5, 7], classes=[5, 6, 7])[0]
    array([0, 2], dtype=int32)
  """
  labels = np.asarray(labels)
  if classes is None:
    classes, inverse = np.unique(labels, return_inverse=True)
    return inverse.astype(np.int32).reshape(-1), classes
  classes = np.asarray(classes)
  ordered, position = np.unique(classes, return_index=True)
  if len(ordered) != len(classes):
    raise ValueError(f"classes has duplicates: {classes.tolist()}")
  where = np.searchsorted(ordered, labels)
  known = where < len(ordered)
  known[known] = ordered[where[known]] == labels[known]
  if not np.all(known):
    first = int(np.flatnonzero(~known)[0])
    raise ValueError(f"label {labels[first]} (example {first}) is not one of "
                     f"the classes {classes.tolist()}")
  return position[where].astype(np.int32), classes


def build_dataset(name: str, images: np.ndarray, labels: np.ndarray,
                  class_names: Sequence[str], *, protocol: str,
                  test_fraction: float, seed: int,
                  train_per_class: int | None,
                  make_split: Callable[..., Any] = Split) -> Dataset:
  """Splits one labelled pool into a :class:`Dataset` under ``protocol``.

  Args:
    name: the dataset's name.
    images: the pool, indexed with position arrays: an image array
      ``[N, H, W, C]``, or an object array of records (file paths).
    labels: ``[N]`` integers in ``[0, len(class_names))``.
    class_names: one name per class.
    protocol: ``"metric"``: the first ``ceil(C / 2)`` classes train, the
      rest test, each half numbering its classes ``0..C'-1``.
      ``"classification"``: a stratified split of every class (see
      ``test_fraction``); a class with one example keeps it for training.
    test_fraction: share of each class sent to test (classification only).
    seed: seeds the stratified split and the few-shot choice.
    train_per_class: if given, keep only this many training examples per
      class, chosen with ``seed``; the test split is unchanged.
    make_split: ``make_split(images, labels, class_names[,
      require_every_class=])`` builds each split (default :class:`Split`).

  Returns:
    The :class:`Dataset`.

  Raises:
    ValueError: a bad protocol, fraction or ``train_per_class``, or a
      training class left without examples.

  Examples:
    >>> images = np.zeros((6, 1, 1, 1), np.float32)
    >>> ds = build_dataset("toy", images, [0, 0, 1, 1, 2, 2], ["a", "b", "c"],
    ...                    protocol="metric", test_fraction=0.5, seed=0,
    ...                    train_per_class=None)
    >>> ds.train.class_names, ds.test.class_names, ds.test.labels.tolist()
    (('a', 'b'), ('c',), [0, 0])
  """
  labels = np.asarray(labels, np.int64)
  num_classes = len(class_names)
  if protocol == "metric":
    num_train_classes = (num_classes + 1) // 2
    train_classes = list(range(num_train_classes))
    test_classes = list(range(num_train_classes, num_classes))
    train_idx = np.flatnonzero(labels < num_train_classes)
    test_idx = np.flatnonzero(labels >= num_train_classes)
    train_labels, _ = remap_labels(labels[train_idx], train_classes)
    test_labels, _ = remap_labels(labels[test_idx], test_classes)
    train_names = [class_names[c] for c in train_classes]
    test_names = [class_names[c] for c in test_classes]
    test = make_split(images[test_idx], test_labels, tuple(test_names))
  elif protocol == "classification":
    train_idx, test_idx = _stratified_split(labels, test_fraction, seed)
    train_labels = labels[train_idx]
    train_names = list(class_names)
    # A class with a single image keeps it for training, so the test split
    # may lack a class.
    test = make_split(images[test_idx], labels[test_idx], tuple(class_names),
                      require_every_class=False)
  else:
    raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
  train_images = images[train_idx]
  counts = np.bincount(train_labels, minlength=len(train_names))
  if np.any(counts == 0):
    empty = [train_names[c] for c in np.flatnonzero(counts == 0)]
    raise ValueError(f"{name}: classes with no training image: {empty}")
  if train_per_class is not None:
    keep = _keep_per_class(train_labels, train_names, train_per_class, seed)
    train_images, train_labels = train_images[keep], train_labels[keep]
  train = make_split(train_images, train_labels, tuple(train_names))
  return Dataset(name=name, train=train, test=test, protocol=protocol)


"""Continual-learning task streams: a classification dataset cut into tasks.

A :class:`TaskStream` is one classification
:class:`~nngk_jax.data.splits.Dataset` (``full``: every class, global label
ids ``0..C-1`` shared by its train and test splits) and the classes of each
task, in arrival order (``task_classes``). :meth:`TaskStream.task` is task
``t`` alone, :meth:`TaskStream.seen` the union of tasks ``0..t`` (joint
training, and evaluation on everything seen so far). Both keep the global
label ids and the full tuple of class names, so a model's output layer and
a kernel classifier's label space never change as tasks arrive (the
class-incremental setting; a task-incremental learner masks the logits to
``task_classes[t]`` itself).

The streams, by name (:data:`TASK_STREAMS`, :func:`load_task_stream`):

============== ============================================================
split_digits   scikit-learn digits (bundled), 5 tasks of 2 classes:
               {0, 1}, {2, 3}, ..., {8, 9}.
split_glyphs   the glyph benchmark (:mod:`nngk_jax.data.glyphs`,
               classification protocol), 50 classes in 5 tasks of 10.
split_cifar10  CIFAR-10, 5 tasks of 2 classes (Zenke et al. 2017).
split_cifar100 Split CIFAR-10/100 (Zenke et al. 2017): all of CIFAR-10 as
               task 0, then 5 tasks of 10 CIFAR-100 classes (its first 50),
               6 tasks and 60 classes.
============== ============================================================

Every stream takes ``classes_per_task`` and ``task_order_seed``. With
``task_order_seed=None`` the classes arrive in their natural order (label
id order), ``classes_per_task`` consecutive ids per task. With a seed, the
class ids are permuted with ``numpy.random.default_rng(task_order_seed)``
before being cut into tasks, so which classes share a task and the order of
the tasks both change (the "class order" of the class-incremental
literature); the label ids themselves do not change.

CIFAR is read through tensorflow-datasets (``tfds.data_source``, no
TensorFlow needed to read) from data prepared once by
``make data DATASET=cifar10`` (and ``DATASET=cifar100``); missing data
raises :class:`~nngk_jax.data.splits.DatasetNotAvailableError` naming that
command. The CIFAR splits are :class:`~nngk_jax.data.pipeline.ImageSplit` s
(decoded when read, 32x32, flips in training), the others in-memory
:class:`~nngk_jax.data.splits.Split` s.

References:
  Zenke, Poole and Ganguli, "Continual Learning Through Synaptic
  Intelligence", ICML 2017 (Split MNIST, Split CIFAR-10/100).
"""

from __future__ import annotations

import dataclasses
import operator
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from nngk_jax import checks
from nngk_jax.data import pipeline as pipelib
from nngk_jax.data import registry
from nngk_jax.data import splits

__all__ = [
    "TASK_STREAMS",
    "TaskStream",
    "load_task_stream",
    "split_cifar10",
    "split_cifar100",
    "split_digits",
    "split_glyphs",
]

# Zenke et al. 2017 use CIFAR-100's first 50 classes after CIFAR-10.
ZENKE_CIFAR100_CLASSES = 50


@dataclasses.dataclass(frozen=True)
class TaskStream:
  """A classification dataset as a sequence of tasks with disjoint classes.

  Each call of :meth:`task` or :meth:`seen` builds a new dataset (an
  in-memory split copies the images it keeps; an image split keeps only
  record references), so hold on to one rather than calling it per step.

  Attributes:
    name: the stream's name, e.g. ``"split_digits"``.
    full: the whole dataset, protocol ``"classification"``: every class,
      global label ids ``0..C-1`` in both splits.
    task_classes: the global class ids of each task, in arrival order;
      disjoint, and together every id ``0..C-1`` exactly once.

  Examples:
    >>> stream = load_task_stream("split_digits")
    >>> stream.num_tasks, stream.num_classes, stream.task_classes[1]
    (5, 10, (2, 3))
    >>> sorted(set(stream.task(1).train.labels.tolist()))
    [2, 3]
    >>> sorted(set(stream.seen(1).test.labels.tolist()))
    [0, 1, 2, 3]
  """

  name: str
  full: splits.Dataset
  task_classes: tuple[tuple[int, ...], ...]

  def __post_init__(self) -> None:
    if self.full.protocol != "classification":
      raise ValueError(f"task stream {self.name!r}: the dataset must use the "
                       f"classification protocol, got {self.full.protocol!r}")
    tasks = tuple(tuple(operator.index(c) for c in classes)
                  for classes in self.task_classes)
    if not tasks or any(not classes for classes in tasks):
      raise ValueError(f"task stream {self.name!r}: every task needs at "
                       f"least one class, got task_classes {tasks}")
    flat = [c for classes in tasks for c in classes]
    num_classes = self.full.train.num_classes
    if sorted(flat) != list(range(num_classes)):
      raise ValueError(
          f"task stream {self.name!r}: task_classes {tasks} must hold every "
          f"class id 0..{num_classes - 1} of the dataset exactly once")
    object.__setattr__(self, "task_classes", tasks)

  @property
  def num_tasks(self) -> int:
    """Number of tasks, ``len(task_classes)``."""
    return len(self.task_classes)

  @property
  def num_classes(self) -> int:
    """Number of classes over all tasks, ``C``."""
    return self.full.train.num_classes

  def _check_task(self, t: int) -> int:
    t = operator.index(t)
    if not 0 <= t < self.num_tasks:
      raise IndexError(f"task {t} out of range for {self.name!r}, which has "
                       f"{self.num_tasks} tasks (0..{self.num_tasks - 1})")
    return t

  def task(self, t: int) -> splits.Dataset:
    """Task ``t`` alone: the train and test examples of its classes.

    Args:
      t: the task number, ``0 <= t < num_tasks``.

    Returns:
      A classification :class:`~nngk_jax.data.splits.Dataset` named
      ``"<name>/task<t>"`` whose labels are the global ids of
      ``task_classes[t]`` and whose ``class_names`` are the full tuple (the
      other classes have no example).

    Raises:
      IndexError: ``t`` is out of range.
    """
    t = self._check_task(t)
    return _restrict(self.full, self.task_classes[t], f"{self.name}/task{t}")

  def seen(self, t: int) -> splits.Dataset:
    """Tasks ``0..t`` together (joint training, evaluation so far).

    Args:
      t: the last task included, ``0 <= t < num_tasks``.

    Returns:
      Like :meth:`task`, named ``"<name>/seen<t>"``, over the classes of
      ``task_classes[0]`` to ``task_classes[t]``; ``seen(num_tasks - 1)``
      holds every example of ``full``.

    Raises:
      IndexError: ``t`` is out of range.
    """
    t = self._check_task(t)
    classes = [c for task in self.task_classes[:t + 1] for c in task]
    return _restrict(self.full, classes, f"{self.name}/seen{t}")


# ----------------------------------------------------------------------------
# Restricting and joining splits.


class _Rows:
  """Random access to chosen rows of one or more record sequences.

  ``rows[i]`` is ``parts[refs[i, 0]][refs[i, 1]]``. Picklable when the parts
  are, so worker processes can read it.
  """

  def __init__(self, parts: Sequence[Sequence[Any]], refs: np.ndarray) -> None:
    self._parts = list(parts)
    self._refs = np.asarray(refs, np.int64).reshape(-1, 2)

  def __len__(self) -> int:
    return int(self._refs.shape[0])

  def __getitem__(self, i: int) -> Any:
    i = operator.index(i)
    if not -len(self) <= i < len(self):
      raise IndexError(f"index {i} out of range for {len(self)} records")
    part, row = self._refs[i % len(self)]
    return self._parts[int(part)][int(row)]


def _take(parts: Sequence[splits.SplitLike], refs: np.ndarray,
          labels: np.ndarray, class_names: Sequence[str]) -> splits.SplitLike:
  """The examples ``parts[refs[i, 0]][refs[i, 1]]``, relabelled.

  Args:
    parts: one :class:`~nngk_jax.data.splits.Split`, or
      :class:`~nngk_jax.data.pipeline.ImageSplit` s sharing a transform
      (their records stay undecoded).
    refs: ``[num_examples, 2]`` rows of (part, position in the part).
    labels: ``[num_examples]`` labels in ``[0, len(class_names))``.
    class_names: the new split's class names; a class may have no example.

  Returns:
    A split of the same kind as the parts.
  """
  refs = np.asarray(refs, np.int64).reshape(-1, 2)
  kinds = {type(part) for part in parts}
  if kinds == {splits.Split} and len(parts) == 1:
    return splits.Split(parts[0].images[refs[:, 1]], labels,
                        tuple(class_names), require_every_class=False)
  if kinds == {pipelib.ImageSplit}:
    transforms = {part.transform for part in parts}
    if len(transforms) != 1:
      raise ValueError(f"image splits joined into one need one transform, "
                       f"got {sorted(map(repr, transforms))}")
    return pipelib.ImageSplit(
        _Rows([part.records for part in parts], refs), labels, class_names,
        parts[0].transform, options=parts[0].options,
        require_every_class=False)
  raise TypeError(f"cannot take examples from {[type(p).__name__ for p in parts]}"
                  f"; task streams need one Split or ImageSplits")


def _subset(split: splits.SplitLike, positions: np.ndarray) -> splits.SplitLike:
  """The examples of ``split`` at ``positions``; no class need be present."""
  refs = np.stack([np.zeros_like(positions), positions], axis=1)
  return _take([split], refs, split.labels[positions], split.class_names)


def _restrict(dataset: splits.Dataset, classes: Sequence[int],
              name: str) -> splits.Dataset:
  """``dataset`` restricted to ``classes``, label ids and names unchanged."""
  classes = np.asarray(classes, np.int64)
  train, test = (_subset(s, np.flatnonzero(np.isin(s.labels, classes)))
                 for s in (dataset.train, dataset.test))
  return splits.Dataset(name=name, train=train, test=test,
                        protocol="classification")


# ----------------------------------------------------------------------------
# Cutting classes into tasks.


def _check_divides(classes_per_task: Any, num_classes: int, what: str) -> int:
  """``classes_per_task`` as an int; ValueError unless it divides."""
  classes_per_task = checks.positive_int("classes_per_task", classes_per_task)
  if num_classes % classes_per_task:
    raise ValueError(
        f"classes_per_task={classes_per_task} does not divide the "
        f"{num_classes} classes of {what}; choose a divisor of {num_classes}")
  return classes_per_task


def _class_order(num_classes: int, task_order_seed: Any) -> np.ndarray:
  """``0..num_classes-1``, permuted with ``task_order_seed`` unless None."""
  if task_order_seed is None:
    return np.arange(num_classes)
  seed = checks.non_negative_int("task_order_seed", task_order_seed)
  return np.random.default_rng(seed).permutation(num_classes)


def _cut(classes: Sequence[int], classes_per_task: Any,
         task_order_seed: Any, what: str) -> tuple[tuple[int, ...], ...]:
  """``classes`` (permuted when seeded) cut into tasks of equal size.

  Raises:
    ValueError: ``classes_per_task`` is not a positive int dividing
      ``len(classes)``, or ``task_order_seed`` is not None or an int >= 0.
  """
  classes = list(classes)
  classes_per_task = _check_divides(classes_per_task, len(classes), what)
  classes = [classes[i] for i in _class_order(len(classes), task_order_seed)]
  return tuple(tuple(int(c) for c in classes[i:i + classes_per_task])
               for i in range(0, len(classes), classes_per_task))


def _stream(name: str, full: splits.Dataset, classes_per_task: Any,
            task_order_seed: Any) -> TaskStream:
  """``full`` with all its classes cut into tasks by :func:`_cut`."""
  tasks = _cut(range(full.train.num_classes), classes_per_task,
               task_order_seed, f"{full.name!r}")
  return TaskStream(name=name, full=full, task_classes=tasks)


# ----------------------------------------------------------------------------
# The streams.


def split_digits(*, classes_per_task: int = 2,
                 task_order_seed: int | None = None,
                 **digits_options: Any) -> TaskStream:
  """Split-digits: scikit-learn's digits in 5 tasks of 2 classes.

  Args:
    classes_per_task: classes per task; must divide 10.
    task_order_seed: None: tasks ``{0, 1}, {2, 3}, ...``; an int permutes
      the classes first (module docstring).
    **digits_options: ``test_fraction``, ``seed``, ``train_per_class`` of
      :func:`~nngk_jax.data.digits.load_digits` (classification protocol).

  Returns:
    The :class:`TaskStream` ``"split_digits"``.

  Raises:
    ValueError: a bad option; the message names it.
  """
  full = registry.load_dataset("digits", protocol="classification",
                               **digits_options)
  return _stream("split_digits", full, classes_per_task, task_order_seed)


def split_glyphs(*, num_classes: int = 50, classes_per_task: int = 10,
                 images_per_class: int = 16, seed: int = 0,
                 task_order_seed: int | None = None,
                 **glyph_options: Any) -> TaskStream:
  """Split-glyphs: the glyph benchmark in tasks of ``classes_per_task``.

  Args:
    num_classes: glyph classes in all (the first ``num_classes`` of
      :func:`~nngk_jax.data.glyphs.glyph_classes`).
    classes_per_task: classes per task; must divide ``num_classes``.
    images_per_class: images rendered per class (split into train and test
      by ``test_fraction``, default one half).
    seed: seeds the rendering and the train / test split.
    task_order_seed: None: natural class order; an int permutes the classes
      before they are cut into tasks.
    **glyph_options: other options of
      :func:`~nngk_jax.data.glyphs.load_glyphs` (``image_size``,
      ``test_fraction``, ``train_per_class``, ``cache_dir``).

  Returns:
    The :class:`TaskStream` ``"split_glyphs"``.

  Raises:
    ValueError: a bad option; the message names it.
  """
  num_classes = checks.positive_int("num_classes", num_classes)
  # Before rendering anything.
  _check_divides(classes_per_task, num_classes, "split_glyphs")
  full = registry.load_dataset(
      "glyphs", protocol="classification", num_classes=num_classes,
      images_per_class=images_per_class, seed=seed, **glyph_options)
  return _stream("split_glyphs", full, classes_per_task, task_order_seed)


def split_cifar10(*, classes_per_task: int = 2,
                  task_order_seed: int | None = None,
                  data_dir: str | None = None,
                  pipeline: dict[str, Any] | None = None,
                  check_counts: bool = True) -> TaskStream:
  """Split CIFAR-10: 5 tasks of 2 classes, as in Zenke et al. (2017).

  Args:
    classes_per_task: classes per task; must divide 10.
    task_order_seed: None: tasks ``{airplane, automobile}, {bird, cat},
      ...`` (TFDS label order); an int permutes the classes first.
    data_dir: TFDS data dir (default ``$TFDS_DATA_DIR`` or
      ``~/tensorflow_datasets``).
    pipeline: options of :func:`nngk_jax.data.pipeline.pipeline_from_options`
      (default resize and crop 32: the images as they are, flipped in
      training).
    check_counts: check the 50,000 / 10,000 images and 10 classes.

  Returns:
    The :class:`TaskStream` ``"split_cifar10"``; its splits are
    :class:`~nngk_jax.data.pipeline.ImageSplit` s.

  Raises:
    DatasetNotAvailableError: CIFAR-10 is not prepared; the message gives
      ``make data DATASET=cifar10``.
    ValueError: a bad option; the message names it.
  """
  _check_divides(classes_per_task, 10, "cifar10")  # Before loading.
  full = registry.load_dataset("cifar10", data_dir=data_dir,
                               pipeline=pipeline, check_counts=check_counts)
  return _stream("split_cifar10", full, classes_per_task, task_order_seed)


def split_cifar100(*, classes_per_task: int = 10,
                   cifar100_classes: int = ZENKE_CIFAR100_CLASSES,
                   task_order_seed: int | None = None,
                   data_dir: str | None = None,
                   pipeline: dict[str, Any] | None = None,
                   check_counts: bool = True) -> TaskStream:
  """Split CIFAR-10/100 (Zenke et al. 2017): CIFAR-10, then CIFAR-100 tasks.

  Task 0 is all of CIFAR-10 (10 classes, ids ``0..9``, names
  ``"cifar10/<name>"``); tasks ``1..`` are CIFAR-100 classes
  (``"cifar100/<name>"``, ids ``10..``), ``classes_per_task`` each. Zenke
  et al. use CIFAR-100's first 50 classes in 5 tasks of 10: 6 tasks and 60
  classes, the defaults. ``cifar100_classes=100`` gives the 11-task variant
  of later papers, ``classes_per_task=5`` 20 tasks of 5 for it.

  Args:
    classes_per_task: CIFAR-100 classes per task; must divide
      ``cifar100_classes``. CIFAR-10 is always one task of 10.
    cifar100_classes: how many CIFAR-100 classes, 1 to 100: its first ones
      in label order, or, with ``task_order_seed``, the first of a random
      permutation of all 100.
    task_order_seed: None: CIFAR-100 classes in label order; an int
      permutes them (CIFAR-10 stays task 0).
    data_dir: TFDS data dir.
    pipeline: options of :func:`nngk_jax.data.pipeline.pipeline_from_options`
      (default resize and crop 32).
    check_counts: check each dataset's image and class counts.

  Returns:
    The :class:`TaskStream` ``"split_cifar100"``. The global label ids are
    CIFAR-10's, then the chosen CIFAR-100 classes in increasing CIFAR-100
    label order.

  Raises:
    DatasetNotAvailableError: CIFAR-10 or CIFAR-100 is not prepared; the
      message gives ``make data DATASET=cifar10`` (or ``cifar100``).
    ValueError: a bad option; the message names it.
  """
  cifar100_classes = checks.positive_int("cifar100_classes", cifar100_classes)
  if cifar100_classes > 100:
    raise ValueError(f"cifar100_classes={cifar100_classes}, but CIFAR-100 "
                     f"has 100 classes")
  order = _class_order(100, task_order_seed).tolist()
  chosen = sorted(order[:cifar100_classes])
  _check_divides(classes_per_task, cifar100_classes,  # Before loading.
                 f"cifar100_classes={cifar100_classes}")
  options = dict(data_dir=data_dir, pipeline=pipeline,
                 check_counts=check_counts)
  cifar10 = registry.load_dataset("cifar10", **options)
  cifar100 = registry.load_dataset("cifar100", **options)
  full = _join_cifar(cifar10, cifar100, chosen)
  first = cifar10.train.num_classes
  later = [first + chosen.index(c) for c in order[:cifar100_classes]]
  tasks = (tuple(range(first)),) + _cut(later, classes_per_task, None,
                                        "split_cifar100")
  return TaskStream(name="split_cifar100", full=full, task_classes=tasks)


def _join_cifar(cifar10: splits.Dataset, cifar100: splits.Dataset,
                chosen: Sequence[int]) -> splits.Dataset:
  """All of ``cifar10`` and the ``chosen`` classes of ``cifar100``, one
  label space: CIFAR-10's ids, then ``chosen``'s positions after them."""
  names = ([f"cifar10/{n}" for n in cifar10.train.class_names]
           + [f"cifar100/{cifar100.train.class_names[c]}" for c in chosen])
  lookup = np.full(cifar100.train.num_classes, -1, np.int64)
  lookup[np.asarray(chosen, np.int64)] = (cifar10.train.num_classes
                                          + np.arange(len(chosen)))
  halves = []
  for first, second in ((cifar10.train, cifar100.train),
                        (cifar10.test, cifar100.test)):
    keep = np.flatnonzero(lookup[second.labels] >= 0)
    refs = np.concatenate([
        np.stack([np.zeros(len(first), np.int64), np.arange(len(first))], 1),
        np.stack([np.ones(len(keep), np.int64), keep], 1)])
    labels = np.concatenate([first.labels, lookup[second.labels[keep]]])
    halves.append(_take([first, second], refs, labels, names))
  return splits.Dataset(name="cifar10+cifar100", train=halves[0],
                        test=halves[1], protocol="classification")


# ----------------------------------------------------------------------------
# Streams by name.

_LOADERS: dict[str, Callable[..., TaskStream]] = {
    "split_digits": split_digits,
    "split_glyphs": split_glyphs,
    "split_cifar10": split_cifar10,
    "split_cifar100": split_cifar100,
}
TASK_STREAMS: tuple[str, ...] = tuple(_LOADERS)


def load_task_stream(name: str, **options: Any) -> TaskStream:
  """Loads a task stream by name.

  Args:
    name: one of :data:`TASK_STREAMS`.
    **options: the stream's options (see its function, e.g.
      :func:`split_glyphs`); one it does not take raises ``TypeError``.

  Returns:
    The :class:`TaskStream`.

  Raises:
    ValueError: an unknown name (the message lists the known ones) or a bad
      option.
    DatasetNotAvailableError: a CIFAR stream whose data is not prepared.

  Examples:
    >>> load_task_stream("split_digits", classes_per_task=5).task_classes
    ((0, 1, 2, 3, 4), (5, 6, 7, 8, 9))
  """
  if name not in _LOADERS:
    raise ValueError(f"unknown task stream {name!r}; known: "
                     f"{', '.join(TASK_STREAMS)}")
  return _LOADERS[name](**options)

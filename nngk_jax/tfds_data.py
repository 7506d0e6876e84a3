"""Metric-learning benchmarks read through tensorflow-datasets random access.

CUB-200-2011, Cars196 and Stanford Online Products (SOP) are read with
``tfds.data_source`` (ArrayRecord random access, which needs no TensorFlow for
reading), all TFDS splits merged in TFDS record order, then re-split into
class-disjoint train / test halves as in the evaluation protocol
(``shared/reference/methods.md``): CUB classes 1-100 / 101-200, Cars196
1-98 / 99-196 (TFDS labels are 0-based, so 0-99 / 100-199 and 0-97 /
98-195), SOP its own ``train`` (Ebay_train) / ``test`` (Ebay_test) splits.

The datasets must have been prepared beforehand in the ``array_record`` file
format (``make data DATASET=<name>``); loading never downloads.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from nngk_jax.data import DatasetNotAvailableError

__all__ = [
    "BENCHMARKS",
    "Benchmark",
    "TfdsSource",
    "verify_counts",
    "load_benchmark",
    "remap_labels",
    "split_by_class",
]

_LABEL_CHUNK = 512


@dataclasses.dataclass(frozen=True)
class Benchmark:
  """How one benchmark is read from TFDS and split by class.

  Attributes:
    builder: TFDS builder name.
    label_key: feature holding the fine-grained class label.
    tfds_splits: TFDS splits read and merged, in this order.
    class_rule: ``((train_lo, train_hi), (test_lo, test_hi))`` half-open
      ranges of TFDS labels; None keeps the TFDS ``train`` / ``test`` splits
      as the train / test halves (SOP, already class-disjoint).
    num_images: expected ``(train, test)`` image counts.
    num_classes: expected ``(train, test)`` class counts.
    manual_download: True when the files must be placed by hand.
  """

  builder: str
  label_key: str
  tfds_splits: tuple[str, ...]
  class_rule: tuple[tuple[int, int], tuple[int, int]] | None
  num_images: tuple[int, int]
  num_classes: tuple[int, int]
  manual_download: bool = False


BENCHMARKS: dict[str, Benchmark] = {
    "cub": Benchmark(
        builder="caltech_birds2011", label_key="label",
        tfds_splits=("train", "test"), class_rule=((0, 100), (100, 200)),
        num_images=(5864, 5924), num_classes=(100, 100)),
    "cars196": Benchmark(
        builder="cars196", label_key="label",
        tfds_splits=("train", "test"), class_rule=((0, 98), (98, 196)),
        num_images=(8054, 8131), num_classes=(98, 98), manual_download=True),
    "sop": Benchmark(
        builder="stanford_online_products", label_key="class_id",
        tfds_splits=("train", "test"), class_rule=None,
        num_images=(59551, 60502), num_classes=(11318, 11316)),
}


def split_by_class(
    labels: np.ndarray, rule: tuple[tuple[int, int], tuple[int, int]]
) -> tuple[np.ndarray, np.ndarray]:
  """Splits example positions into class-disjoint train and test sets.

  Args:
    labels: ``[num_examples]`` integer labels.
    rule: ``((train_lo, train_hi), (test_lo, test_hi))`` half-open label
      ranges; they must not overlap.

  Returns:
    ``(train_positions, test_positions)``, int64 arrays in increasing order.

  Raises:
    ValueError: if the ranges overlap or a label is in neither range.

  Examples:
    >>> split_by_class(np.array([0, 3, 1, 2]), ((0, 2), (2, 4)))
    (array([0, 2]), array([1, 3]))
  """
  labels = np.asarray(labels)
  (train_lo, train_hi), (test_lo, test_hi) = rule
  if train_lo < test_hi and test_lo < train_hi:
    raise ValueError(f"class ranges overlap: {rule}")
  in_train = (labels >= train_lo) & (labels < train_hi)
  in_test = (labels >= test_lo) & (labels < test_hi)
  neither = ~(in_train | in_test)
  if np.any(neither):
    first = int(np.flatnonzero(neither)[0])
    raise ValueError(f"label {int(labels[first])} (example {first}) is in "
                     f"neither class range of {rule}")
  return np.flatnonzero(in_train), np.flatnonzero(in_test)


def remap_labels(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Maps labels to ``0..C-1`` in increasing order of the original label.

  Args:
    labels: ``[num_examples]`` integer labels.

  Returns:
    ``(new_labels, classes)``: int32 labels in ``[0, C)`` and the ``C``
    original labels, sorted, so ``classes[new_labels] == labels``.

  Examples:
    >>> remap_labels(np.array([7, 3, 7]))
    (array([1, 0, 1], dtype=int32), array([3, 7]))
  """
  classes, inverse = np.unique(np.asarray(labels), return_inverse=True)
  return inverse.astype(np.int32).reshape(-1), classes


class TfdsSource:
  """A random-access split over one or more TFDS data sources.

  ``source[i]`` is ``{"image": uint8 [H, W, 3], "label": int, "index": i}``;
  images are read (and decoded) on access, labels are held in memory.

  Attributes:
    labels: ``[num_examples]`` int32 in ``[0, num_classes)``, read-only.
    class_names: ``num_classes`` names; ``class_names[c]`` names label ``c``.
    image_size: when set, images are resized to ``(image_size, image_size)``.
  """

  def __init__(self, sources: Sequence[Sequence[Any]], refs: np.ndarray,
               labels: np.ndarray, class_names: Sequence[str],
               image_size: int | None = None) -> None:
    """Builds the split.

    Args:
      sources: the TFDS data sources (one per TFDS split).
      refs: ``[num_examples, 2]`` rows of (source number, record number).
      labels: ``[num_examples]`` labels in ``[0, len(class_names))``.
      class_names: one name per class.
      image_size: optional square size to resize images to.
    """
    self._sources = list(sources)
    self._refs = np.asarray(refs, np.int64).reshape(-1, 2)
    labels = np.asarray(labels, np.int32).copy()
    if labels.shape != (len(self._refs),):
      raise ValueError(f"labels shape {labels.shape} does not match "
                       f"{len(self._refs)} records")
    labels.flags.writeable = False
    self.labels = labels
    self.class_names = tuple(str(n) for n in class_names)
    self.image_size = image_size

  def __len__(self) -> int:
    return int(self._refs.shape[0])

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  def __repr__(self) -> str:
    return (f"TfdsSource(num_examples={len(self)}, "
            f"num_classes={self.num_classes}, image_size={self.image_size})")

  def __getitem__(self, i: int) -> dict[str, Any]:
    i = int(i)
    if not -len(self) <= i < len(self):
      raise IndexError(f"index {i} out of range for {len(self)} examples")
    i %= len(self)
    src, rec = self._refs[i]
    example = self._sources[int(src)][int(rec)]
    image = np.asarray(example["image"], np.uint8)
    if image.ndim == 2:
      image = image[..., None]
    if image.shape[-1] == 1:
      image = np.repeat(image, 3, axis=-1)
    if self.image_size is not None:
      from PIL import Image  # pylint: disable=g-import-not-at-top
      image = np.asarray(Image.fromarray(image).resize(
          (self.image_size, self.image_size), Image.BILINEAR), np.uint8)
    return {"image": image, "label": int(self.labels[i]), "index": i}


def _read_labels(source: Sequence[Any], key: str) -> np.ndarray:
  """Reads one label per record, in record order.

  TFDS can skip image decoding only through ``tfds.decode.SkipDecoding``,
  which needs TensorFlow, so this iterates once over the full records (images
  decoded and dropped), in chunks through ``__getitems__`` when available.
  """
  n = len(source)
  out = np.empty(n, np.int64)
  getitems = getattr(source, "__getitems__", None)
  for start in range(0, n, _LABEL_CHUNK):
    keys = list(range(start, min(n, start + _LABEL_CHUNK)))
    records = None
    if getitems is not None:
      try:
        records = getitems(keys)
      except TypeError:
        # tfds.testing.mock_data patches `__getitems__` with a wrong
        # signature; fall back to one record at a time.
        getitems = None
    if records is None:
      records = [source[k] for k in keys]
    out[start:start + len(keys)] = [int(r[key]) for r in records]
  return out


def verify_counts(name: str, train: TfdsSource, test: TfdsSource) -> None:
  """Raises ValueError when the split sizes differ from the protocol.

  Args:
    name: key in :data:`BENCHMARKS`.
    train: the train split.
    test: the test split.
  """
  bench = BENCHMARKS[name]
  found_images = (len(train), len(test))
  found_classes = (train.num_classes, test.num_classes)
  if found_images != bench.num_images or found_classes != bench.num_classes:
    raise ValueError(
        f"{name}: expected (train, test) images {bench.num_images} and "
        f"classes {bench.num_classes}, found images {found_images} and "
        f"classes {found_classes}")


def _not_prepared(name: str, bench: Benchmark, searched: str) -> str:
  msg = (f"dataset {name!r} (TFDS {bench.builder!r}) is not prepared in the "
         f"array_record format under {searched}; run `make data DATASET={name}`"
         f" to prepare it")
  if bench.manual_download:
    msg += (f". {bench.builder}'s download address is dead upstream: the "
            f"files must be placed by hand under <data_dir>/downloads/manual "
            f"first (see docs)")
  return msg


def load_benchmark(
    name: str, *, data_dir: str | None = None, image_size: int | None = None,
    check_counts: bool = True,
) -> tuple[TfdsSource, TfdsSource]:
  """Loads a benchmark as class-disjoint train and test sources.

  All TFDS splits are read with ``tfds.data_source`` (no download) and
  concatenated in TFDS record order; CUB and Cars196 are re-split by class,
  SOP keeps its TFDS train / test splits. Labels are remapped to ``0..C-1``
  per half, in increasing TFDS label order. Reading the labels decodes every
  record once (see :func:`_read_labels`).

  Args:
    name: ``"cub"``, ``"cars196"`` or ``"sop"``.
    data_dir: TFDS data dir; None uses the TFDS default (``TFDS_DATA_DIR`` or
      ``~/tensorflow_datasets``).
    image_size: optional square size images are resized to on access.
    check_counts: raise ValueError when image or class counts differ from the
      evaluation protocol.

  Returns:
    ``(train_source, test_source)``.

  Raises:
    KeyError: unknown name.
    DatasetNotAvailableError: the dataset is not prepared under the data dir.
    ValueError: counts differ from the protocol (with ``check_counts``).
  """
  if name not in BENCHMARKS:
    raise KeyError(f"unknown benchmark {name!r}; known: {sorted(BENCHMARKS)}")
  bench = BENCHMARKS[name]
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  builder = tfds.builder(bench.builder, data_dir=data_dir)
  try:
    sources = [tfds.data_source(bench.builder, split=split,
                                data_dir=data_dir, download=False)
               for split in bench.tfds_splits]
  except Exception as e:  # pylint: disable=broad-except
    if not builder.is_prepared():
      raise DatasetNotAvailableError(
          _not_prepared(name, bench, str(builder.data_dir))) from e
    raise
  features = builder.info.features
  names = getattr(features[bench.label_key], "names", None)

  refs = np.concatenate([
      np.stack([np.full(len(s), k, np.int64), np.arange(len(s))], axis=1)
      for k, s in enumerate(sources)]).reshape(-1, 2)
  labels = np.concatenate(
      [_read_labels(s, bench.label_key) for s in sources]).astype(np.int64)
  if bench.class_rule is None:
    train_pos = np.flatnonzero(refs[:, 0] == 0)
    test_pos = np.flatnonzero(refs[:, 0] == 1)
  else:
    train_pos, test_pos = split_by_class(labels, bench.class_rule)

  halves = []
  for pos in (train_pos, test_pos):
    new_labels, classes = remap_labels(labels[pos])
    class_names = [names[c] if names else str(c) for c in classes]
    halves.append(TfdsSource(sources, refs[pos], new_labels, class_names,
                             image_size=image_size))
  train, test = halves
  if check_counts:
    verify_counts(name, train, test)
  return train, test

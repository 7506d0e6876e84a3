"""Metric-learning benchmarks read through tensorflow-datasets random access.

CUB-200-2011, Cars196 and Stanford Online Products (SOP) are read with
``tfds.data_source`` (ArrayRecord random access, which needs no TensorFlow for
reading), all TFDS splits merged in TFDS record order, then re-split into
class-disjoint train / test halves as in the evaluation protocol
(``shared/reference/methods.md``): CUB classes 1-100 / 101-200, Cars196
1-98 / 99-196 (TFDS labels are 0-based, so 0-99 / 100-199 and 0-97 /
98-195), SOP its own ``train`` (Ebay_train) / ``test`` (Ebay_test) splits.
CIFAR-10 and CIFAR-100 (classification benchmarks, for the continual-learning
task streams of :mod:`nngk_jax.data.tasks`) keep their TFDS ``train`` /
``test`` splits, which share every class and its TFDS label id.

The datasets must have been prepared beforehand in the ``array_record`` file
format (``make data DATASET=<name>``); loading never downloads, and missing
data raises :class:`~nngk_jax.data.splits.DatasetNotAvailableError` with the
command that prepares it
(:func:`~nngk_jax.data.benchmarks.missing_data_message`). What each benchmark
is (TFDS builder, label feature, class ranges, expected counts) is in
:data:`~nngk_jax.data.benchmarks.BENCHMARKS`.

Images stay encoded on disk: the halves are
:class:`~nngk_jax.data.pipeline.ImageSplit` s whose records are the JPEG bytes
(TFDS ``SkipDecoding``), decoded by the input pipeline when a batch needs
them. Labels are read once at load time without decoding any image.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from nngk_jax.data import benchmarks
from nngk_jax.data import pipeline as pipelib
from nngk_jax.data import splits

__all__ = [
    "TfdsRecords",
    "default_transform",
    "load_benchmark",
    "load_benchmark_dataset",
    "split_by_class",
    "verify_counts",
]

_LABEL_CHUNK = 512


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


class TfdsRecords:
  """Random access to the image records of some rows of TFDS data sources.

  ``records[i]`` is the ``image`` feature of row ``refs[i]``: the encoded
  bytes when the sources were opened with ``SkipDecoding`` (as
  :func:`load_benchmark` does), or a decoded ``uint8`` array otherwise.
  Picklable, so worker processes can read it.
  """

  def __init__(self, sources: Sequence[Sequence[Any]], refs: np.ndarray,
               image_key: str = "image") -> None:
    """Builds the view.

    Args:
      sources: the TFDS data sources (one per TFDS split).
      refs: ``[num_examples, 2]`` rows of (source number, record number).
      image_key: the feature holding the image.
    """
    self._sources = list(sources)
    self._refs = np.asarray(refs, np.int64).reshape(-1, 2)
    self._image_key = image_key

  def __len__(self) -> int:
    return int(self._refs.shape[0])

  def __getitem__(self, i: int) -> Any:
    i = int(i)
    if not -len(self) <= i < len(self):
      raise IndexError(f"index {i} out of range for {len(self)} records")
    source, record = self._refs[i % len(self)]
    return self._sources[int(source)][int(record)][self._image_key]


def _read_labels(source: Sequence[Any], key: str) -> np.ndarray:
  """Reads one label per record, in record order.

  The sources are opened with ``SkipDecoding`` for the image, so this parses
  each record but decodes no image; chunks go through ``__getitems__`` when
  the source has it.
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


def verify_counts(name: str, train, test) -> None:
  """Raises ValueError when the split sizes differ from the protocol.

  Args:
    name: key in :data:`~nngk_jax.data.benchmarks.BENCHMARKS`.
    train: the train split (``len`` and ``num_classes``).
    test: the test split.
  """
  bench = benchmarks.BENCHMARKS[name]
  found_images = (len(train), len(test))
  found_classes = (train.num_classes, test.num_classes)
  if found_images != bench.num_images or found_classes != bench.num_classes:
    raise ValueError(
        f"{name}: expected (train, test) images {bench.num_images} and "
        f"classes {bench.num_classes} (the evaluation protocol), found images "
        f"{found_images} and classes {found_classes}. The prepared TFDS data "
        f"is not the standard release; re-run `make data DATASET={name}`, or "
        f"pass data.check_counts=False to train on it anyway.")


def default_transform(name: str) -> pipelib.ImageTransform:
  """The transform a benchmark is read with when none is given.

  Args:
    name: a key of :data:`~nngk_jax.data.benchmarks.BENCHMARKS`.

  Returns:
    Resize and crop to the benchmark's ``image_size`` when it has one
    (CIFAR: 32, so random crops are the identity and only flips augment),
    else the default :class:`~nngk_jax.data.pipeline.ImageTransform`
    (resize 256, crop 224).

  Examples:
    >>> default_transform("cifar10").output_shape
    (32, 32, 3)
  """
  side = benchmarks.lookup(name).image_size
  if side is None:
    return pipelib.ImageTransform()
  return pipelib.ImageTransform(resize=side, crop=side)


def load_benchmark(
    name: str, *, data_dir: str | None = None,
    transform: pipelib.ImageTransform | None = None,
    options: pipelib.LoaderOptions | None = None, check_counts: bool = True,
) -> tuple[pipelib.ImageSplit, pipelib.ImageSplit]:
  """Loads a benchmark as train and test image splits (class-disjoint: metric).

  All TFDS splits are read with ``tfds.data_source`` (no download) and
  concatenated in TFDS record order; CUB and Cars196 are re-split by class,
  SOP keeps its TFDS train / test splits. Labels are remapped to ``0..C-1``
  per half, in increasing TFDS label order. A classification benchmark
  (CIFAR) keeps its TFDS train / test splits and TFDS label ids in both.

  Args:
    name: a key of :data:`~nngk_jax.data.benchmarks.BENCHMARKS`
      (``"cub"``, ``"cars196"``, ``"sop"``, ``"cifar10"``, ``"cifar100"``).
    data_dir: TFDS data dir; None uses the TFDS default (``TFDS_DATA_DIR`` or
      ``~/tensorflow_datasets``).
    transform: the :class:`~nngk_jax.data.pipeline.ImageTransform` (default:
      :func:`default_transform`).
    options: the :class:`~nngk_jax.data.pipeline.LoaderOptions`.
    check_counts: raise ValueError when image or class counts differ from the
      evaluation protocol.

  Returns:
    ``(train, test)`` :class:`~nngk_jax.data.pipeline.ImageSplit` s.

  Raises:
    KeyError: unknown name.
    DatasetNotAvailableError: the dataset is not prepared under the data dir
      (the message gives the command that prepares it).
    ValueError: counts differ from the protocol (with ``check_counts``).
  """
  if name not in benchmarks.BENCHMARKS:
    raise KeyError(f"unknown benchmark {name!r}; known: "
                   f"{sorted(benchmarks.BENCHMARKS)}")
  bench = benchmarks.BENCHMARKS[name]
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  builder = tfds.builder(bench.builder, data_dir=data_dir)
  try:
    # What tfds.data_source(download=False) does, on the builder at hand.
    sources = [builder.as_data_source(
        split, decoders={"image": tfds.decode.SkipDecoding()})
               for split in bench.tfds_splits]
  except Exception as e:  # pylint: disable=broad-except
    if not builder.is_prepared():
      raise splits.DatasetNotAvailableError(benchmarks.missing_data_message(
          name, builder.data_dir_root)) from e
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

  transform = transform or default_transform(name)
  # Metric: each half numbers its own classes. Classification: both halves
  # keep the TFDS label ids (every class of the features, or those found);
  # the test half may lack a class.
  shared = None
  if bench.protocol == "classification":
    shared = np.arange(len(names)) if names else np.unique(labels)
  halves = []
  for pos in (train_pos, test_pos):
    new_labels, classes = splits.remap_labels(labels[pos], shared)
    class_names = [names[c] if names else str(c) for c in classes]
    halves.append(pipelib.ImageSplit(
        TfdsRecords(sources, refs[pos]), new_labels, class_names, transform,
        options=options, require_every_class=shared is None))
  train, test = halves
  if check_counts:
    verify_counts(name, train, test)
  return train, test


def load_benchmark_dataset(name: str, *, data_dir: str | None = None,
                           pipeline: dict[str, Any] | None = None,
                           check_counts: bool = True) -> splits.Dataset:
  """A benchmark as a :class:`~nngk_jax.data.splits.Dataset`.

  This is what ``load_dataset("cub")`` (and ``"cars196"``, ``"sop"``,
  ``"cifar10"``, ``"cifar100"``) calls, with the config's ``data`` fields as keyword arguments.

  Args:
    name: a key of :data:`~nngk_jax.data.benchmarks.BENCHMARKS`
      (``"cub"``, ``"cars196"``, ``"sop"``, ``"cifar10"``, ``"cifar100"``).
    data_dir: TFDS data dir (default: ``TFDS_DATA_DIR`` or
      ``~/tensorflow_datasets``).
    pipeline: options of :func:`nngk_jax.data.pipeline.pipeline_from_options`.
    check_counts: check the protocol's image and class counts.

  Returns:
    A :class:`~nngk_jax.data.splits.Dataset` with the benchmark's protocol
    (``"metric"``; ``"classification"`` for CIFAR).
  """
  bench = benchmarks.lookup(name)
  if bench.image_size is not None:
    side = bench.image_size
    pipeline = {"resize": side, "crop": side, **(pipeline or {})}
  transform, options = pipelib.pipeline_from_options(pipeline)
  train, test = load_benchmark(name, data_dir=data_dir, transform=transform,
                               options=options, check_counts=check_counts)
  return splits.Dataset(name=name, train=train, test=test,
                        protocol=bench.protocol)

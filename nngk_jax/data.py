"""Datasets as random-access splits of (image, label, example index).

Every dataset is a :class:`Dataset` holding a ``train`` and a ``test``
:class:`Split`. A split is a random-access source: ``split[i]`` is one example
and ``split.get_batch(indices)`` a batch. Each example carries its index in
the split, so the trainer can look up its row in the neighbour graph built
over the training centres, and its own centre.

Datasets are looked up by name in :data:`DATASETS` through
:func:`load_dataset`; a new dataset is a new entry there. Loading never falls
back to other data: an unknown name, a missing folder or an unreadable image
raises.

Batches come from :func:`iterate_batches`, whose shuffle order depends only on
``(seed, epoch)``, so that a resumed run replays the same batches.

Everything here is host-side NumPy; nothing is meant to run inside
``jax.jit``.
"""

from __future__ import annotations

import dataclasses
import operator
import os
import pathlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

__all__ = [
    "DATASETS",
    "DataError",
    "Dataset",
    "DatasetNotAvailableError",
    "IMAGE_EXTENSIONS",
    "PROTOCOLS",
    "Split",
    "iterate_batches",
    "load_dataset",
    "load_digits",
    "load_image_folder",
    "num_batches",
]

PROTOCOLS = ("metric", "classification")
IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif"})


class DataError(ValueError):
  """A data file could not be read (corrupt, truncated, not an image)."""


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
    if not np.all(np.isfinite(images)):
      finite_rows = np.isfinite(images).reshape(len(images), -1).all(axis=1)
      first = int(np.flatnonzero(~finite_rows)[0])
      raise ValueError(f"images are not finite (NaN or inf), first at example "
                       f"{first}")
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

  Examples:
    >>> ds = load_dataset("digits")
    >>> ds.protocol, ds.train.class_names, ds.test.class_names
    ('metric', ('0', '1', '2', '3', '4'), ('5', '6', '7', '8', '9'))
  """

  name: str
  train: Split
  test: Split
  protocol: str

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


def _check_fraction(test_fraction: float) -> None:
  if not 0.0 < test_fraction < 1.0:
    raise ValueError(f"test_fraction must lie in (0, 1), got {test_fraction}")


def _stratified_split(labels: np.ndarray, test_fraction: float,
                      seed: int) -> tuple[np.ndarray, np.ndarray]:
  """Per-class random split; returns sorted (train_idx, test_idx).

  Each class with ``m`` examples sends ``floor(m * test_fraction)`` of them to
  test, but never all of them: at least one always stays in train.
  """
  _check_fraction(test_fraction)
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
  if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
    raise ValueError(f"train_per_class must be a positive integer, got {n!r}")
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


def _remap(labels: np.ndarray, classes: Sequence[int]) -> np.ndarray:
  """Renumber ``labels`` (all in ``classes``) to positions in ``classes``."""
  lookup = np.full(int(max(classes)) + 1, -1, np.int64)
  lookup[np.asarray(classes)] = np.arange(len(classes))
  return lookup[labels]


def _build(name: str, images: np.ndarray, labels: np.ndarray,
           class_names: Sequence[str], *, protocol: str, test_fraction: float,
           seed: int, train_per_class: int | None,
           make_split: Callable[..., Any] = Split) -> Dataset:
  """Split one labelled pool into a Dataset under ``protocol``.

  ``"metric"``: the first ``ceil(C / 2)`` classes train, the rest test.
  ``"classification"``: a stratified split. ``images`` is indexed with
  position arrays (an image array, or an object array of file paths) and
  ``make_split(images, labels, class_names[, require_every_class=])`` builds
  each split.
  """
  labels = np.asarray(labels, np.int64)
  num_classes = len(class_names)
  if protocol == "metric":
    num_train_classes = (num_classes + 1) // 2
    train_classes = list(range(num_train_classes))
    test_classes = list(range(num_train_classes, num_classes))
    train_idx = np.flatnonzero(labels < num_train_classes)
    test_idx = np.flatnonzero(labels >= num_train_classes)
    train_labels = _remap(labels[train_idx], train_classes)
    test_labels = _remap(labels[test_idx], test_classes)
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


# ----------------------------------------------------------------------------
# Loaders.


def load_digits(*, protocol: str = "metric", test_fraction: float = 0.5,
                seed: int = 0, train_per_class: int | None = None) -> Dataset:
  """scikit-learn's bundled handwritten digits: 1797 grey 8x8 images.

  Pixel values ``0..16`` are scaled to ``[-1, 1]``. No download is needed.

  Args:
    protocol: ``"metric"``: train on digits 0-4, test on 5-9 (test labels
      renumbered ``0..4``, class names ``"5".."9"``). ``"classification"``:
      a stratified split of all ten digits.
    test_fraction: share of each class sent to test (classification only).
    seed: seeds the stratified split and the few-shot choice.
    train_per_class: if given, keep only this many training images per class,
      chosen with ``seed`` (few-shot); the test split is unchanged. Larger
      than a class raises ``ValueError``.

  Returns:
    A :class:`Dataset` named ``"digits"`` with images ``[N, 8, 8, 1]``.

  Examples:
    >>> ds = load_digits(protocol="classification", train_per_class=2)
    >>> ds.train.images.shape, ds.train.num_classes
    ((20, 8, 8, 1), 10)
  """
  import sklearn.datasets  # pylint: disable=g-import-not-at-top

  digits = sklearn.datasets.load_digits()
  images = (digits.images.astype(np.float32) / 8.0 - 1.0)[..., None]
  class_names = [str(int(c)) for c in digits.target_names]
  return _build("digits", images, digits.target, class_names,
                protocol=protocol, test_fraction=test_fraction, seed=seed,
                train_per_class=train_per_class)


def _is_hidden(path: pathlib.Path) -> bool:
  return path.name.startswith(".")


def _read_image(path: pathlib.Path, image_size: int) -> np.ndarray:
  """One image as ``[image_size, image_size, 3]`` float32 in ``[-1, 1]``."""
  from PIL import Image  # pylint: disable=g-import-not-at-top

  try:
    with Image.open(path) as image:
      image = image.convert("RGB").resize((image_size, image_size),
                                          Image.Resampling.BILINEAR)
      pixels = np.asarray(image, dtype=np.float32)
  except Exception as err:  # Pillow raises many kinds for a bad file.
    raise DataError(f"cannot read image {path}: {err}") from err
  return pixels / 127.5 - 1.0


def load_image_folder(path: str | os.PathLike[str], *, image_size: int = 32,
                      class_disjoint: bool = False, test_fraction: float = 0.5,
                      seed: int = 0,
                      train_per_class: int | None = None,
                      pipeline: dict[str, Any] | None = None) -> Dataset:
  """A folder with one sub-folder of images per class (``folder:PATH``).

  Images (``.png .jpg .jpeg .bmp .gif``, any case) are read with Pillow.
  Other files, and names starting with ``.``, are ignored. Classes are the
  sorted sub-folder names.

  Without ``pipeline`` (small images, CPU demos) every image is read at once,
  converted to RGB, resized to a square ``image_size`` and scaled to
  ``[-1, 1]`` in memory. With ``pipeline`` the splits are
  :class:`~nngk_jax.pipeline.ImageSplit` s over the files, decoded on demand
  by the same input pipeline as the benchmarks (resize, crop, flip,
  normalise; parallel, prefetching); a file that cannot be read raises when
  its batch is loaded.

  Args:
    path: the folder.
    image_size: side in pixels of the square every image is resized to.
    class_disjoint: True: the first ``ceil(C / 2)`` sorted classes train and
      the rest test (protocol ``"metric"``). False: a stratified split of
      each class (protocol ``"classification"``); each class sends
      ``floor(m * test_fraction)`` of its ``m`` images to test but keeps at
      least one for training, so a one-image class is absent from test.
    test_fraction: share of each class sent to test (classification only).
    seed: seeds the stratified split and the few-shot choice.
    train_per_class: if given, keep only this many training images per class
      (few-shot); the test split is unchanged.
    pipeline: options of :func:`nngk_jax.pipeline.pipeline_from_options`
      (``resize``, ``crop``, ``flip``, ``normalization``, ``num_threads``,
      ...); ``{}`` takes the defaults (resize 256, crop 224).

  Returns:
    A :class:`Dataset` named ``"folder:PATH"`` with images
    ``[N, image_size, image_size, 3]`` (or ``[N, crop, crop, 3]`` with
    ``pipeline``).

  Raises:
    FileNotFoundError: ``path`` does not exist.
    ValueError: no class folders, a class folder with no images, or fewer
      than two classes.
    DataError: an image file cannot be read; the message names the file.

  Examples:
    >>> import pathlib, tempfile
    >>> from PIL import Image
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...   root = pathlib.Path(tmp)
    ...   for name in ("a", "b"):
    ...     (root / name).mkdir()
    ...     for i in range(2):
    ...       Image.new("RGB", (5, 4)).save(root / name / f"{i}.png")
    ...   ds = load_image_folder(root, image_size=6)
    >>> ds.train.images.shape, ds.test.images.shape, ds.protocol
    ((2, 6, 6, 3), (2, 6, 6, 3), 'classification')
  """
  root = pathlib.Path(path).expanduser()
  name = f"folder:{path}"
  if isinstance(image_size, bool) or not isinstance(
      image_size, (int, np.integer)) or image_size < 1:
    raise ValueError(f"image_size must be a positive integer, got "
                     f"{image_size!r}")
  if not root.exists():
    raise FileNotFoundError(f"image folder {str(root)!r} does not exist")
  if not root.is_dir():
    raise NotADirectoryError(f"{str(root)!r} is not a folder")
  class_dirs = sorted(
      (d for d in root.iterdir() if d.is_dir() and not _is_hidden(d)),
      key=lambda d: d.name)
  if not class_dirs:
    raise ValueError(f"image folder {str(root)!r} has no class sub-folders")
  if len(class_dirs) < 2:
    raise ValueError(
        f"image folder {str(root)!r} has {len(class_dirs)} class "
        f"({class_dirs[0].name!r}); at least 2 are needed")
  files, labels = [], []
  for label, class_dir in enumerate(class_dirs):
    class_files = sorted(
        f for f in class_dir.iterdir()
        if f.is_file() and not _is_hidden(f)
        and f.suffix.lower() in IMAGE_EXTENSIONS)
    if not class_files:
      raise ValueError(
          f"class folder {str(class_dir)!r} has no images (looked for "
          f"{sorted(IMAGE_EXTENSIONS)})")
    files.extend(class_files)
    labels.extend([label] * len(class_files))
  protocol = "metric" if class_disjoint else "classification"
  class_names = [d.name for d in class_dirs]
  if pipeline is not None:
    from nngk_jax import pipeline as pipelib  # pylint: disable=g-import-not-at-top
    transform, options = pipelib.pipeline_from_options(pipeline)
    paths = np.empty(len(files), object)
    paths[:] = [str(f) for f in files]

    def make_split(records, split_labels, names, **kwargs):
      return pipelib.ImageSplit(list(records), split_labels, names, transform,
                                options=options, **kwargs)

    return _build(name, paths, np.asarray(labels), class_names,
                  protocol=protocol, test_fraction=test_fraction, seed=seed,
                  train_per_class=train_per_class, make_split=make_split)
  images = np.stack([_read_image(f, int(image_size)) for f in files])
  return _build(name, images, np.asarray(labels), class_names,
                protocol=protocol, test_fraction=test_fraction, seed=seed,
                train_per_class=train_per_class)


def _benchmark(key: str) -> Callable[..., Dataset]:
  def loader(**options: Any) -> Dataset:
    from nngk_jax import tfds_data  # pylint: disable=g-import-not-at-top
    return tfds_data.load_benchmark_dataset(key, **options)
  loader.__name__ = f"load_{key}"
  loader.__doc__ = (f"The {key!r} benchmark from tensorflow-datasets; see "
                    f":func:`nngk_jax.tfds_data.load_benchmark_dataset`.")
  return loader


def _glyphs(**options: Any) -> Dataset:
  """Characters rendered from matplotlib's fonts; see
  :func:`nngk_jax.glyphs.load_glyphs`."""
  from nngk_jax import glyphs  # pylint: disable=g-import-not-at-top
  return glyphs.load_glyphs(**options)


# A new dataset is a new entry: name -> loader(**options) -> Dataset. A name
# "KEY:ARG" passes ARG as the loader's first argument (``folder:PATH``).
DATASETS: dict[str, Callable[..., Dataset]] = {
    "digits": load_digits,
    "folder": load_image_folder,
    "cub": _benchmark("cub"),            # CUB-200-2011
    "cars196": _benchmark("cars196"),    # Stanford Cars
    "sop": _benchmark("sop"),            # Stanford Online Products
    "glyphs": _glyphs,                   # rendered characters, offline
}
_TAKES_ARGUMENT = frozenset({"folder"})


def _known_names() -> str:
  return ", ".join(
      f"'{k}:PATH'" if k in _TAKES_ARGUMENT else repr(k) for k in DATASETS)


def load_dataset(name: str, **options: Any) -> Dataset:
  """Loads a dataset by name from :data:`DATASETS`.

  Args:
    name: ``"digits"``, ``"folder:PATH"``, or another key of
      :data:`DATASETS`.
    **options: passed to the loader (e.g. ``protocol``, ``seed``,
      ``train_per_class``, ``image_size``); an option the loader does not
      take raises ``TypeError``.

  Returns:
    The :class:`Dataset`.

  Raises:
    ValueError: unknown name (the message lists the known ones).
    DatasetNotAvailableError: a benchmark that is not prepared on this
      machine (the message gives the command that prepares it).

  Examples:
    >>> load_dataset("digits", protocol="classification").test.num_classes
    10
  """
  key, colon, argument = name.partition(":")
  if key not in DATASETS:
    raise ValueError(f"unknown dataset {name!r}; known: {_known_names()}")
  if key in _TAKES_ARGUMENT:
    if not colon or not argument:
      raise ValueError(f"dataset {key!r} is used as '{key}:PATH', got "
                       f"{name!r}")
    return DATASETS[key](argument, **options)
  if colon:
    raise ValueError(f"dataset {key!r} takes no ':' argument, got {name!r}; "
                     f"known: {_known_names()}")
  return DATASETS[key](**options)


# ----------------------------------------------------------------------------
# Batches.


def num_batches(split: Split, batch_size: int, drop_last: bool = True) -> int:
  """Number of batches :func:`iterate_batches` yields per epoch.

  Args:
    split: the split (only its length is used).
    batch_size: examples per batch.
    drop_last: whether the final partial batch is dropped.

  Returns:
    ``len(split) // batch_size`` if ``drop_last`` else the ceiling.

  Examples:
    >>> import numpy as np
    >>> split = Split(np.zeros((5, 1, 1, 1), np.float32), np.zeros(5, int),
    ...               ("x",))
    >>> num_batches(split, 2), num_batches(split, 2, drop_last=False)
    (2, 3)
  """
  _check_batch_size(split, batch_size, drop_last)
  if drop_last:
    return len(split) // batch_size
  return -(-len(split) // batch_size)


def _check_batch_size(split: Split, batch_size: int, drop_last: bool) -> None:
  if isinstance(batch_size, bool) or not isinstance(
      batch_size, (int, np.integer)) or batch_size < 1:
    raise ValueError(f"batch_size must be a positive integer, got "
                     f"{batch_size!r}")
  if drop_last and batch_size > len(split):
    raise ValueError(
        f"batch_size {batch_size} is larger than the split ({len(split)} "
        f"examples) with drop_last=True: no batch would be produced")


def _load_batches(split, index_batches: list[np.ndarray], *, augment: bool,
                  seed: int, epoch: int) -> Iterator[dict[str, np.ndarray]]:
  """The examples of each index batch: in parallel for an ``ImageSplit``."""
  load = getattr(split, "load_batches", None)
  if load is not None:
    return load(index_batches, augment=augment, seed=seed, epoch=epoch)
  # In-memory arrays: no decoding, and no augmentation to apply.
  return (split.get_batch(indices) for indices in index_batches)


def iterate_batches(split: Split, batch_size: int, *, seed: int, epoch: int,
                    shuffle: bool = True, drop_last: bool = True,
                    augment: bool = False) -> Iterator[dict[str, np.ndarray]]:
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
      :class:`~nngk_jax.pipeline.ImageSplit`; in-memory splits ignore it.

  Returns:
    An iterator of ``{"image": [batch, H, W, C] float32, "label": [batch]
    int32, "index": [batch] int32, "valid": [batch] bool}``;
    ``image[j] == split.images[index[j]]``.

  Examples:
    >>> import numpy as np
    >>> split = Split(np.zeros((3, 1, 1, 1), np.float32), np.arange(3),
    ...               ("a", "b", "c"))
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
  batches = _load_batches(split, index_batches, augment=augment, seed=seed,
                          epoch=epoch)
  for batch, batch_valid in zip(batches, valid):
    batch["valid"] = batch_valid
    yield batch


def iterate_class_balanced_batches(
    split: Split, classes_per_batch: int, samples_per_class: int, *,
    seed: int, epoch: int,
    augment: bool = False) -> Iterator[dict[str, np.ndarray]]:
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

  Returns:
    An iterator of batch dicts as :func:`iterate_batches` yields.

  Examples:
    >>> import numpy as np
    >>> split = Split(np.zeros((12, 1, 1, 1), np.float32),
    ...               np.repeat(np.arange(3), 4), ("a", "b", "c"))
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
  for batch in _load_batches(split, index_batches, augment=augment,
                             seed=seed, epoch=epoch):
    batch["valid"] = np.ones(batch_size, bool)
    yield batch

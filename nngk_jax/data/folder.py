"""Images in a folder with one sub-folder per class (``folder:PATH``)."""

from __future__ import annotations

import os
import pathlib
from typing import Any

import numpy as np

from nngk_jax import checks
from nngk_jax.data import pipeline as pipelib
from nngk_jax.data import splits

__all__ = ["IMAGE_EXTENSIONS", "load_image_folder"]

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif"})


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
    raise splits.DataError(f"cannot read image {path}: {err}") from err
  return pixels / 127.5 - 1.0


def load_image_folder(path: str | os.PathLike[str], *, image_size: int = 32,
                      class_disjoint: bool = False, test_fraction: float = 0.5,
                      seed: int = 0,
                      train_per_class: int | None = None,
                      pipeline: dict[str, Any] | None = None
                      ) -> splits.Dataset:
  """A folder with one sub-folder of images per class (``folder:PATH``).

  Images (``.png .jpg .jpeg .bmp .gif``, any case) are read with Pillow.
  Other files, and names starting with ``.``, are ignored. Classes are the
  sorted sub-folder names.

  Without ``pipeline`` (small images, CPU demos) every image is read at once,
  converted to RGB, resized to a square ``image_size`` and scaled to
  ``[-1, 1]`` in memory. With ``pipeline`` the splits are
  :class:`~nngk_jax.data.pipeline.ImageSplit` s over the files, decoded on
  demand by the same input pipeline as the benchmarks (resize, crop, flip,
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
    pipeline: options of :func:`nngk_jax.data.pipeline.pipeline_from_options`
      (``resize``, ``crop``, ``flip``, ``normalization``, ``num_threads``,
      ...); ``{}`` takes the defaults (resize 256, crop 224).

  Returns:
    A :class:`~nngk_jax.data.splits.Dataset` named ``"folder:PATH"`` with
    images ``[N, image_size, image_size, 3]`` (or ``[N, crop, crop, 3]``
    with ``pipeline``).

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
  image_size = checks.positive_int("image_size", image_size)
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
    transform, options = pipelib.pipeline_from_options(pipeline)
    paths = np.empty(len(files), object)
    paths[:] = [str(f) for f in files]

    def make_split(records, split_labels, names, **kwargs):
      return pipelib.ImageSplit(list(records), split_labels, names, transform,
                                options=options, **kwargs)

    return splits.build_dataset(
        name, paths, np.asarray(labels), class_names, protocol=protocol,
        test_fraction=test_fraction, seed=seed,
        train_per_class=train_per_class, make_split=make_split)
  images = np.stack([_read_image(f, image_size) for f in files])
  return splits.build_dataset(
      name, images, np.asarray(labels), class_names, protocol=protocol,
      test_fraction=test_fraction, seed=seed, train_per_class=train_per_class)

"""Images in a folder with one sub-folder per class (``folder:PATH``)."""

from __future__ import annotations

import dataclasses
import os
import pathlib
from typing import Any

import numpy as np

from nngk_jax import checks
from nngk_jax.data import pipeline as pipelib
from nngk_jax.data import splits

__all__ = ["IMAGE_EXTENSIONS", "list_image_folder", "load_image_folder",
           "read_image", "readable_image_files"]

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif"})


def _is_hidden(path: pathlib.Path) -> bool:
  return path.name.startswith(".")


def read_image(path: str | os.PathLike[str], image_size: int | tuple[int, int],
               *, channels: int = 3) -> np.ndarray:
  """One image file as ``[height, width, channels]`` float32 in ``[-1, 1]``.

  Decoded by :func:`nngk_jax.data.pipeline.decode_image` (as the pipeline
  decodes: EXIF rotation applied, 16-bit PNGs scaled rather than clipped,
  CMYK / palette / grey+alpha converted; a large JPEG decoded at a reduced
  scale that keeps both sides at least the target's), converted to RGB
  (``channels=3``) or grey (``channels=1``), resized bilinearly and scaled
  from ``0..255``: how :func:`load_image_folder` reads every image without
  ``pipeline``.

  Args:
    path: the image file.
    image_size: side of the square it is resized to, or ``(height, width)``.
    channels: 3 (RGB) or 1 (grey).

  Returns:
    ``[height, width, channels]`` float32.

  Raises:
    DataError: the file cannot be read; the message names it.

  Examples:
    >>> import pathlib, tempfile
    >>> from PIL import Image
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "white.png"
    >>> Image.new("RGB", (5, 4), (255, 255, 255)).save(path)
    >>> image = read_image(path, (3, 2), channels=1)
    >>> image.shape, float(image.max())
    ((3, 2, 1), 1.0)
  """
  from PIL import Image  # pylint: disable=g-import-not-at-top

  if channels not in (1, 3):
    raise ValueError(f"channels must be 1 (grey) or 3 (RGB), got {channels!r}")
  if isinstance(image_size, (tuple, list)):
    height, width = (checks.positive_int("image height", image_size[0]),
                     checks.positive_int("image width", image_size[1]))
  else:
    height = width = checks.positive_int("image_size", image_size)
  image = pipelib.decode_image(path, draft_size=max(height, width),
                               mode="RGB" if channels == 3 else "L")
  try:
    image = image.resize((width, height), Image.Resampling.BILINEAR)
  except Exception as err:  # Pillow raises many kinds for a bad file.
    raise splits.DataError(f"cannot read image {path}: {err}") from err
  pixels = np.asarray(image, dtype=np.float32)
  return (pixels / 127.5 - 1.0).reshape(height, width, channels)


def list_image_folder(path: str | os.PathLike[str]
                      ) -> tuple[list[pathlib.Path], np.ndarray, list[str]]:
  """The image files of a folder with one sub-folder per class, unread.

  The layout :func:`load_image_folder` reads: classes are the sorted
  sub-folder names; images (``.png .jpg .jpeg .bmp .gif``, any case) are
  sorted by name within each; other files, and names starting with ``.``,
  are ignored.

  Args:
    path: the folder.

  Returns:
    ``(files, labels, class_names)``: the ``N`` files, class by class,
    ``[N]`` int64 labels (positions in ``class_names``) and the names.

  Raises:
    FileNotFoundError: ``path`` does not exist.
    ValueError: no class folders, a class folder with no images, or fewer
      than two classes.
  """
  root = pathlib.Path(path).expanduser()
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
  return files, np.asarray(labels, np.int64), [d.name for d in class_dirs]


def readable_image_files(path: str | os.PathLike[str], *,
                         skip_unreadable: bool = False,
                         num_threads: int | None = None):
  """:func:`list_image_folder`, every file's header checked first.

  Every file goes through :func:`nngk_jax.data.pipeline.check_image_file`
  (no decode: about a millisecond per file) before any work.

  Args:
    path: the folder.
    skip_unreadable: drop the files that cannot be read instead of failing.
    num_threads: threads of the scan (default: one per core, at most 16).

  Returns:
    ``(files, labels, class_names, unreadable)``; ``unreadable`` lists
    ``(path, reason)`` of the dropped files (empty unless skipping).

  Raises:
    UnreadableImagesError: some files cannot be read and
      ``skip_unreadable`` is False; the message lists every one.
    ValueError: as :func:`list_image_folder`, or skipping leaves a class
      with no readable image.
  """
  files, labels, class_names = list_image_folder(path)
  unreadable = pipelib.scan_image_files(files, num_threads=num_threads)
  if not unreadable:
    return files, labels, class_names, []
  if not skip_unreadable:
    raise splits.UnreadableImagesError(unreadable, f"folder {str(path)!r}")
  bad = {p for p, _ in unreadable}
  keep = np.array([str(f) not in bad for f in files])
  emptied = sorted(set(class_names[c] for c in np.unique(labels))
                   - set(class_names[c] for c in np.unique(labels[keep])))
  if emptied:
    raise ValueError(
        f"class folder(s) {emptied} of {str(path)!r} have no readable image "
        f"left once the unreadable ones are skipped")
  files = [f for f, k in zip(files, keep) if k]
  return files, labels[keep], class_names, unreadable


def load_image_folder(path: str | os.PathLike[str], *, image_size: int = 32,
                      class_disjoint: bool = False, test_fraction: float = 0.5,
                      seed: int = 0,
                      train_per_class: int | None = None,
                      pipeline: dict[str, Any] | None = None,
                      skip_unreadable: bool = False) -> splits.Dataset:
  """A folder with one sub-folder of images per class (``folder:PATH``).

  Images (``.png .jpg .jpeg .bmp .gif``, any case) are read with Pillow.
  Other files, and names starting with ``.``, are ignored. Classes are the
  sorted sub-folder names.

  Without ``pipeline`` (small images, CPU demos) every image is read at once,
  converted to RGB, resized to a square ``image_size`` and scaled to
  ``[-1, 1]`` in memory. With ``pipeline`` the splits are
  :class:`~nngk_jax.data.pipeline.ImageSplit` s over the files, decoded on
  demand by the same input pipeline as the benchmarks (resize, crop, flip,
  normalise; parallel, prefetching).

  Either way every file's header is checked first
  (:func:`readable_image_files`): the files that cannot be read are all
  named in one error, or with ``skip_unreadable`` left out and listed in
  the dataset's ``unreadable``.

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
    skip_unreadable: leave out the files that cannot be read (listed in
      the dataset's ``unreadable``) instead of refusing the folder.

  Returns:
    A :class:`~nngk_jax.data.splits.Dataset` named ``"folder:PATH"`` with
    images ``[N, image_size, image_size, 3]`` (or ``[N, crop, crop, 3]``
    with ``pipeline``).

  Raises:
    FileNotFoundError: ``path`` does not exist.
    ValueError: no class folders, a class folder with no images, or fewer
      than two classes.
    UnreadableImagesError: files that cannot be read (all named), without
      ``skip_unreadable``.
    DataError: an image that passed the header check fails to decode; the
      message names the file.

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
  name = f"folder:{path}"
  image_size = checks.positive_int("image_size", image_size)
  transform, options = pipelib.pipeline_from_options(pipeline)
  files, labels, class_names, unreadable = readable_image_files(
      path, skip_unreadable=skip_unreadable, num_threads=options.num_threads)
  protocol = "metric" if class_disjoint else "classification"
  dataset = _build_folder_dataset(
      name, files, labels, class_names, protocol=protocol,
      test_fraction=test_fraction, seed=seed, train_per_class=train_per_class,
      image_size=image_size,
      pipeline=None if pipeline is None else (transform, options))
  return dataclasses.replace(dataset, unreadable=tuple(unreadable))


def _build_folder_dataset(name, files, labels, class_names, *, image_size,
                          pipeline, **split_options) -> splits.Dataset:
  if pipeline is not None:
    transform, options = pipeline
    paths = np.empty(len(files), object)
    paths[:] = [str(f) for f in files]

    def make_split(records, split_labels, names, **kwargs):
      return pipelib.ImageSplit(list(records), split_labels, names, transform,
                                options=options, **kwargs)

    return splits.build_dataset(name, paths, np.asarray(labels), class_names,
                                make_split=make_split, **split_options)
  images = np.stack([read_image(f, image_size) for f in files])
  return splits.build_dataset(name, images, np.asarray(labels), class_names,
                              **split_options)

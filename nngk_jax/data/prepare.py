"""Prepares the TFDS benchmarks (CUB-200-2011, Cars196, SOP, CIFAR) for loading.

Command line (``make data DATASET=<name>`` installs ``requirements-data.txt``
and runs it)::

    python -m nngk_jax.data.prepare cub|cars196|sop|cifar10|cifar100
        [--data-dir DIR] [--manual-dir DIR]

Preparation runs the TFDS builder's ``download_and_prepare`` in the
``array_record`` file format, which :func:`nngk_jax.data.tfds.load_benchmark`
reads with ``tfds.data_source``. It needs TensorFlow (TFDS builders read and
write through ``tf.io.gfile``); reading the prepared data afterwards does not.

Where files go, for a data dir ``D`` (``--data-dir``, else ``$TFDS_DATA_DIR``,
else ``~/tensorflow_datasets``): downloads in ``D/downloads``, files placed by
hand in ``D/downloads/manual`` (TFDS 4.9.10 looks there for every download,
by the file name registered in the builder's checksums), the prepared dataset
in ``D/<builder>/<version>``.

Cars196's download address is dead upstream, so its files are placed by hand
in the manual dir, in one of two layouts, checked by
:func:`check_manual_files` before anything is prepared:

* ``archives``: the four original files
  (:data:`~nngk_jax.data.benchmarks.ORIGINAL_FILES`), found by the stock TFDS
  builder, which verifies their SHA-256 checksums.
* ``folders``: the extracted images as unofficial mirrors ship them
  (``cars_train/``, ``cars_test/``, each possibly nested one level as in the
  Kaggle copy), ``devkit/cars_train_annos.mat`` (or ``car_devkit.tgz``) and
  ``cars_test_annos_withlabels.mat``; the stock builder's example generation
  then runs over these folders (:func:`_cars196_folder_builder`). No checksum
  exists for such copies: the check instead requires 8,144 / 8,041 annotated
  images, each present.

What the benchmarks are, where TFDS keeps their files and the messages that
name the command to run are in :mod:`nngk_jax.data.benchmarks`. The functions
above the command line need neither TensorFlow nor the network.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import os
import pathlib
import sys
import tarfile
from collections.abc import Mapping, Sequence
from typing import Any

from nngk_jax.data import benchmarks

__all__ = [
    "CARS196_NUM_ANNOTATIONS",
    "Cars196Folders",
    "ManualFilesError",
    "PrepareError",
    "TensorFlowMissingError",
    "cars196_folders",
    "cars196_layout",
    "check_manual_files",
    "main",
    "prepare",
]

_DOCS = benchmarks.DOCS
_FILE_FORMAT = benchmarks.FILE_FORMAT


class PrepareError(RuntimeError):
  """A benchmark could not be prepared; the message says what to do."""


class TensorFlowMissingError(PrepareError):
  """TensorFlow, which TFDS preparation needs, is not installed."""


class ManualFilesError(PrepareError):
  """Files that must be placed by hand are missing or not the right ones.

  Attributes:
    problems: one line per problem, each naming the path concerned.
  """

  def __init__(self, message: str, problems: Sequence[str]) -> None:
    super().__init__(message)
    self.problems = tuple(problems)




# Annotated images per Cars196 split: devkit/cars_train_annos.mat and
# cars_test_annos_withlabels.mat (16,185 in all).
CARS196_NUM_ANNOTATIONS: dict[str, int] = {"train": 8144, "test": 8041}

_CARS196_IMAGE_SUFFIXES = (".jpg", ".jpeg")


@dataclasses.dataclass(frozen=True)
class Cars196Folders:
  """Where the ``folders`` layout of Cars196 was found in a manual dir.

  Attributes:
    train_images: folder of the 8,144 training images (``00001.jpg``, ...).
    test_images: folder of the 8,041 test images.
    devkit: ``devkit/`` folder holding ``cars_train_annos.mat``, or the
      ``car_devkit.tgz`` archive holding it.
    test_annotations: ``cars_test_annos_withlabels.mat``.
  """

  train_images: pathlib.Path
  test_images: pathlib.Path
  devkit: pathlib.Path
  test_annotations: pathlib.Path

  @property
  def devkit_is_archive(self) -> bool:
    return self.devkit.name.endswith(".tgz")


def _image_folder(manual_dir: pathlib.Path, folder: str) -> pathlib.Path:
  """``manual_dir/folder``, or ``manual_dir/folder/folder`` when the images
  are nested one level, as in the Kaggle copy."""
  outer = manual_dir / folder
  inner = outer / folder
  if inner.is_dir() and not any(
      p.suffix.lower() in _CARS196_IMAGE_SUFFIXES for p in outer.iterdir()):
    return inner
  return outer


def cars196_folders(manual_dir: str | os.PathLike[str]) -> Cars196Folders:
  """Returns where the ``folders`` layout of Cars196 is expected or found.

  The paths need not exist: :func:`check_manual_files` says what is missing.

  Args:
    manual_dir: the manual dir.

  Returns:
    The four paths.
  """
  manual_dir = pathlib.Path(manual_dir)
  devkit = manual_dir / "devkit"
  if not devkit.is_dir() and (manual_dir / "car_devkit.tgz").is_file():
    devkit = manual_dir / "car_devkit.tgz"
  return Cars196Folders(
      train_images=_image_folder(manual_dir, "cars_train"),
      test_images=_image_folder(manual_dir, "cars_test"),
      devkit=devkit,
      test_annotations=manual_dir / "cars_test_annos_withlabels.mat")


def cars196_layout(manual_dir: str | os.PathLike[str]) -> str:
  """Says which Cars196 layout a manual dir holds (or is starting to hold).

  Args:
    manual_dir: the manual dir.

  Returns:
    ``"folders"`` when a ``cars_train`` or ``cars_test`` folder is there,
    else ``"archives"`` (also for an empty or missing dir).
  """
  manual_dir = pathlib.Path(manual_dir)
  if (manual_dir / "cars_train").is_dir() or (manual_dir / "cars_test").is_dir():
    return "folders"
  return "archives"


def _check_original_files(files: Sequence[benchmarks.OriginalFile],
                          manual_dir: pathlib.Path,
                          *, required: bool) -> list[str]:
  """Problems with the original files in ``manual_dir`` (by size)."""
  problems = []
  for f in files:
    path = manual_dir / f.filename
    if not path.exists():
      if required:
        problems.append(f"missing {path} ({f.size:,} bytes; originally "
                        f"{f.url})")
    elif not path.is_file():
      problems.append(f"{path} is not a file")
    elif path.stat().st_size != f.size:
      problems.append(
          f"{path} has {path.stat().st_size:,} bytes, the original "
          f"{f.filename} has {f.size:,} (a truncated download or another "
          f"file; TFDS would reject its checksum)")
  return problems


def _read_annotations(source: Any, what: str) -> tuple[list[str] | None,
                                                       list[str]]:
  """Image names in a Cars196 annotation file, as the TFDS builder reads it.

  Args:
    source: path or binary file object of the ``.mat`` file.
    what: how to name the file in problems.

  Returns:
    ``(names, problems)``; ``names`` (file names without extension) is None
    when the file cannot be used.
  """
  import scipy.io  # pylint: disable=g-import-not-at-top
  try:
    mat = scipy.io.loadmat(source)
    annotations = mat["annotations"][0]
  except Exception as error:  # pylint: disable=broad-except
    return None, [f"cannot read {what} ({type(error).__name__}: {error}); "
                  "is it truncated?"]
  fields = annotations.dtype.names or ()
  # The builder reads the class at position 4 and the file name last.
  if len(fields) < 6 or fields[4] != "class" or fields[-1] != "fname":
    return None, [f"{what} has fields {fields}, not the labelled annotations "
                  "(bbox_x1, bbox_y1, bbox_x2, bbox_y2, class, fname)"]
  names = [str(a[-1].item()).split(".")[0] for a in annotations]
  return names, []


def _check_split(split: str, images: pathlib.Path, names: list[str] | None,
                 expected: int | None) -> list[str]:
  """Problems with one Cars196 split of the ``folders`` layout."""
  if not images.is_dir():
    return [f"missing folder {images} (the {split} images: 00001.jpg, ...)"]
  have = {p.name.split(".")[0] for p in images.iterdir()
          if p.suffix.lower() in _CARS196_IMAGE_SUFFIXES}
  problems = []
  if not have:
    problems.append(f"{images} holds no .jpg images")
  if names is None:
    return problems
  if expected is not None and len(names) != expected:
    problems.append(f"the {split} annotations list {len(names):,} images, "
                    f"the original {expected:,}")
  absent = [n for n in names if n not in have]
  if absent and have:
    problems.append(f"{len(absent):,} annotated {split} images are not in "
                    f"{images}, e.g. {', '.join(absent[:3])}")
  return problems


def _check_cars196_folders(manual_dir: pathlib.Path,
                           expected: Mapping[str, int] | None) -> list[str]:
  """Problems with the ``folders`` layout of Cars196."""
  folders = cars196_folders(manual_dir)
  problems = []
  expected = expected or {}

  train_names = None
  if folders.devkit_is_archive:
    member = "devkit/cars_train_annos.mat"
    what = f"{member} in {folders.devkit}"
    try:
      with tarfile.open(folders.devkit) as archive:
        handle = archive.extractfile(member)
        data = handle.read() if handle is not None else None
    except (tarfile.TarError, KeyError, OSError, EOFError) as error:
      data = None
      problems.append(f"cannot read {what} ({type(error).__name__}: {error})")
    else:
      if data is None:
        problems.append(f"{what} is not a file")
    if data is not None:
      train_names, found = _read_annotations(io.BytesIO(data), what)
      problems += found
  else:
    path = folders.devkit / "cars_train_annos.mat"
    if path.is_file():
      train_names, found = _read_annotations(path, str(path))
      problems += found
    else:
      problems.append(f"missing {path} (from the devkit, car_devkit.tgz; "
                      f"placing car_devkit.tgz in {manual_dir} also works)")

  test_names = None
  if folders.test_annotations.is_file():
    test_names, found = _read_annotations(
        folders.test_annotations, str(folders.test_annotations))
    problems += found
  else:
    problems.append(f"missing {folders.test_annotations} (the test "
                    f"annotations with labels, which the devkit lacks)")

  problems += _check_split("train", folders.train_images, train_names,
                           expected.get("train"))
  problems += _check_split("test", folders.test_images, test_names,
                           expected.get("test"))
  return problems


def check_manual_files(
    name: str, manual_dir: str | os.PathLike[str], *,
    expected_annotations: Mapping[str, int] | None = None,
) -> list[str]:
  """Checks the files placed by hand in the manual dir before preparing.

  Cars196 must have them, in one of two layouts (:func:`cars196_layout`):
  the four original files of
  :data:`~nngk_jax.data.benchmarks.ORIGINAL_FILES` with their original
  sizes, or the extracted folders, whose annotation files must list every
  image (``expected_annotations`` images per split) and the image folders
  hold each one. CUB and SOP need none; a copy of their original files placed
  there must have the original size.

  Args:
    name: a key of :data:`~nngk_jax.data.benchmarks.BENCHMARKS`
      (``"cub"``, ``"cars196"``, ``"sop"``, ``"cifar10"``, ``"cifar100"``).
    manual_dir: the manual dir (``<data_dir>/downloads/manual``).
    expected_annotations: images per split the Cars196 annotation files must
      list; None uses :data:`CARS196_NUM_ANNOTATIONS`.

  Returns:
    One line per problem, each naming the path concerned; empty when
    preparation can go ahead.

  Raises:
    ValueError: ``name`` is not a benchmark that needs preparing.

  Examples:
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as empty:
    ...   problems = check_manual_files("cars196", empty)
    ...   [p.split()[1].rsplit("/", 1)[-1] for p in problems]
    ['cars_train.tgz', 'cars_test.tgz', 'car_devkit.tgz', 'cars_test_annos_withlabels.mat']
    >>> with tempfile.TemporaryDirectory() as empty:
    ...   check_manual_files("cub", empty)
    []
  """
  bench = benchmarks.lookup(name)
  manual_dir = pathlib.Path(manual_dir)
  if manual_dir.exists() and not manual_dir.is_dir():
    return [f"{manual_dir} is not a folder"]
  if not bench.manual_download:
    return _check_original_files(benchmarks.ORIGINAL_FILES[name], manual_dir,
                                 required=False)
  if cars196_layout(manual_dir) == "folders":
    if expected_annotations is None:
      expected_annotations = CARS196_NUM_ANNOTATIONS
    return _check_cars196_folders(manual_dir, expected_annotations)
  return _check_original_files(benchmarks.ORIGINAL_FILES[name], manual_dir,
                               required=True)


def _manual_files_message(name: str, manual_dir: pathlib.Path,
                          problems: Sequence[str]) -> str:
  """The error text for files placed by hand that are missing or wrong."""
  lines = [f"{name}: the files placed by hand in {manual_dir} are not "
           f"ready ({cars196_layout(manual_dir)} layout):"]
  lines += [f"  - {p}" for p in problems]
  originals = ", ".join(f.filename for f in benchmarks.ORIGINAL_FILES[name])
  lines.append(
      f"{name}'s download address is dead upstream. Place in {manual_dir} "
      f"either the four original files "
      f"({originals}) or the "
      f"extracted cars_train/ and cars_test/ image folders with devkit/ (or "
      f"car_devkit.tgz) and cars_test_annos_withlabels.mat. Copies exist on "
      f"unofficial mirrors (e.g. the Kaggle dataset "
      f"jessicali9530/stanford-cars-dataset); {_DOCS} says step by step.")
  return "\n".join(lines)


def _require_tensorflow(name: str) -> None:
  """Raises TensorFlowMissingError unless TensorFlow can be imported."""
  try:
    import tensorflow  # pylint: disable=g-import-not-at-top,unused-import
  except ImportError as error:
    raise TensorFlowMissingError(
        f"preparing {name!r} needs TensorFlow, which is not installed "
        f"({error}); run `make data DATASET={name}`, which installs "
        f"requirements-data.txt into the project's environment and prepares "
        f"the dataset") from error


def _cars196_folder_builder(tfds: Any, data_dir: pathlib.Path,
                            folders: Cars196Folders) -> Any:
  """The stock Cars196 builder, reading extracted folders, not downloads.

  Only ``_split_generators`` changes: it hands the builder's own
  ``_generate_examples`` the folders and annotation files the original
  archives would have been extracted to. Name, version, features and example
  keys are the stock ones, so the prepared data is read as ``cars196``.
  """
  base = tfds.builder_cls("cars196")

  class Cars196FromFolders(base, skip_registration=True):  # pylint: disable=missing-class-docstring
    name = "cars196"

    def _split_generators(self, dl_manager):
      devkit = folders.devkit
      if folders.devkit_is_archive:
        devkit = pathlib.Path(os.fspath(dl_manager.extract(devkit))) / "devkit"
      annotations = {"train": devkit / "cars_train_annos.mat",
                     "test": folders.test_annotations}
      images = {"train": folders.train_images, "test": folders.test_images}
      return [
          tfds.core.SplitGenerator(name=split, gen_kwargs={
              "split_name": split,
              "data_dir_path": os.fspath(images[split]),
              "data_annotations_path": os.fspath(annotations[split]),
          }) for split in ("train", "test")]

  return Cars196FromFolders(data_dir=os.fspath(data_dir))


def _check_prepared(name: str, builder: Any) -> None:
  """Raises PrepareError unless the prepared data is array_record and whole."""
  bench = benchmarks.BENCHMARKS[name]
  formats = {str(getattr(f, "value", f))
             for f in builder.info.available_file_formats()}
  if _FILE_FORMAT not in formats:
    raise PrepareError(
        f"{name} is prepared at {builder.data_dir} in the {sorted(formats)} "
        f"format, but training reads the {_FILE_FORMAT} format: delete that "
        f"folder and rerun `make data DATASET={name}`, or convert it with "
        f"`tfds convert_format --dataset_version_dir={builder.data_dir} "
        f"--out_file_format={_FILE_FORMAT}`")
  found = sum(builder.info.splits[s].num_examples for s in bench.tfds_splits)
  expected = sum(bench.num_images)
  if found != expected:
    raise PrepareError(
        f"{name} prepared at {builder.data_dir} has {found:,} images in "
        f"splits {bench.tfds_splits}, the benchmark {expected:,}: the files "
        f"it was prepared from are incomplete; delete that folder, fix them "
        f"and rerun `make data DATASET={name}`")


def prepare(name: str, data_dir: str | os.PathLike[str] | None = None, *,
            manual_dir: str | os.PathLike[str] | None = None) -> str:
  """Downloads (or takes from the manual dir) and prepares one benchmark.

  Args:
    name: a key of :data:`~nngk_jax.data.benchmarks.BENCHMARKS`
      (``"cub"``, ``"cars196"``, ``"sop"``, ``"cifar10"``, ``"cifar100"``).
    data_dir: TFDS data dir; None uses
      :func:`~nngk_jax.data.benchmarks.default_data_dir`.
    manual_dir: folder of files placed by hand; None uses
      ``<data_dir>/downloads/manual``.

  Returns:
    A one-line report: prepared, or already prepared, and where.

  Raises:
    ValueError: ``name`` is not a benchmark that needs preparing.
    TensorFlowMissingError: TensorFlow is not installed.
    ManualFilesError: Cars196's files are missing or not the right ones.
    PrepareError: a download failed, a file's checksum is wrong, or the
      prepared data is not what training reads.
  """
  bench = benchmarks.lookup(name)
  data_dir = (benchmarks.default_data_dir() if data_dir is None
              else pathlib.Path(data_dir).expanduser())
  manual_dir = (benchmarks.manual_dir_for(data_dir) if manual_dir is None
                else pathlib.Path(manual_dir).expanduser())
  # Neither the check for prepared data nor the one for files placed by hand
  # needs TensorFlow: both run first, so their messages come without it.
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  builder = tfds.builder(bench.builder, data_dir=os.fspath(data_dir))
  if builder.is_prepared():
    _check_prepared(name, builder)
    return f"{name} is already prepared at {builder.data_dir}; nothing to do"

  problems = check_manual_files(name, manual_dir)
  if problems:
    if bench.manual_download:
      raise ManualFilesError(
          _manual_files_message(name, manual_dir, problems), problems)
    raise ManualFilesError(
        "\n".join([f"{name}: files placed by hand in {manual_dir} are not "
                   f"the original ones (remove them to download instead):"]
                  + [f"  - {p}" for p in problems]), problems)
  if bench.manual_download and cars196_layout(manual_dir) == "folders":
    builder = _cars196_folder_builder(tfds, data_dir,
                                      cars196_folders(manual_dir))

  _require_tensorflow(name)
  from tensorflow_datasets.core.download import download_manager  # pylint: disable=g-import-not-at-top

  config = tfds.download.DownloadConfig(manual_dir=os.fspath(manual_dir),
                                        try_download_gcs=False)
  files = ", ".join(f.filename for f in benchmarks.ORIGINAL_FILES[name])
  try:
    builder.download_and_prepare(file_format=_FILE_FORMAT,
                                 download_config=config)
  except download_manager.NonMatchingChecksumError as error:
    raise PrepareError(
        f"{name}: a file's SHA-256 checksum differs from the original's "
        f"({error}); replace it with the original, or for Cars196 use the "
        f"extracted folders instead (see {_DOCS})") from error
  except (tfds.download.DownloadError, OSError) as error:
    raise PrepareError(
        f"{name}: preparation failed ({type(error).__name__}: {error}). If a "
        f"download failed (no network, or the address is dead), place the "
        f"original files ({files}) in {manual_dir} and rerun "
        f"`{benchmarks.prepare_command(name, data_dir)}` (see {_DOCS})"
    ) from error
  _check_prepared(name, builder)
  return f"{name} prepared at {builder.data_dir}"


def main(argv: Sequence[str] | None = None) -> int:
  """Command line: ``python -m nngk_jax.data.prepare NAME [--data-dir DIR]``.

  Args:
    argv: arguments; None reads ``sys.argv``.

  Returns:
    0 when prepared (or already prepared), 1 on an error, which is printed.
  """
  parser = argparse.ArgumentParser(
      prog="python -m nngk_jax.data.prepare",
      description="Download and prepare a TFDS benchmark in the array_record "
                  "format that training reads (needs TensorFlow: use "
                  "`make data DATASET=<name>`).")
  parser.add_argument("name", help="benchmark: " + ", ".join(
      benchmarks.BENCHMARKS))
  parser.add_argument("--data-dir", default=None,
                      help="TFDS data dir (default: $TFDS_DATA_DIR or "
                           "~/tensorflow_datasets)")
  parser.add_argument("--manual-dir", default=None,
                      help="files placed by hand (default: "
                           "<data dir>/downloads/manual)")
  args = parser.parse_args(argv)
  try:
    print(prepare(args.name, args.data_dir, manual_dir=args.manual_dir))
  except (ValueError, PrepareError) as error:
    print(f"error: {error}", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())

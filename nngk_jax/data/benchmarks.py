"""The TFDS benchmarks (CUB-200-2011, Cars196, SOP, CIFAR) and where their files go.

Both sides of a benchmark's life start here: :mod:`nngk_jax.data.tfds` reads
a prepared benchmark (and, when it is not prepared, raises
:class:`~nngk_jax.data.splits.DatasetNotAvailableError` with
:func:`missing_data_message`), and :mod:`nngk_jax.data.prepare` prepares
it. This module holds what they share: how each benchmark is read and split
(:data:`BENCHMARKS`), its original files (:data:`ORIGINAL_FILES`), where TFDS
keeps data (:func:`default_data_dir`, :func:`manual_dir_for`) and the command
that prepares a benchmark (:func:`prepare_command`).

Nothing here needs TensorFlow, tensorflow-datasets or the network.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from collections.abc import Mapping

__all__ = [
    "BENCHMARKS",
    "Benchmark",
    "DOCS",
    "FILE_FORMAT",
    "ORIGINAL_FILES",
    "OriginalFile",
    "default_data_dir",
    "lookup",
    "manual_dir_for",
    "missing_data_message",
    "prepare_command",
]

# Where the data preparation is documented, step by step.
DOCS = "docs/data.md"
# The TFDS file format training reads (random access through
# ``tfds.data_source``) and preparation writes.
FILE_FORMAT = "array_record"


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
    protocol: ``"metric"`` (class-disjoint halves, each numbering its
      classes ``0..C-1``) or ``"classification"`` (the TFDS ``train`` /
      ``test`` splits, sharing every class and its TFDS label id: CIFAR,
      read by the continual-learning task streams of
      :mod:`nngk_jax.data.tasks`).
    image_size: when set, the images are this side already and the default
      transform keeps them so (resize and crop to it), instead of the
      ImageNet-style resize 256, crop 224.
  """

  builder: str
  label_key: str
  tfds_splits: tuple[str, ...]
  class_rule: tuple[tuple[int, int], tuple[int, int]] | None
  num_images: tuple[int, int]
  num_classes: tuple[int, int]
  manual_download: bool = False
  protocol: str = "metric"
  image_size: int | None = None


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
    "cifar10": Benchmark(
        builder="cifar10", label_key="label", tfds_splits=("train", "test"),
        class_rule=None, num_images=(50000, 10000), num_classes=(10, 10),
        protocol="classification", image_size=32),
    "cifar100": Benchmark(
        builder="cifar100", label_key="label", tfds_splits=("train", "test"),
        class_rule=None, num_images=(50000, 10000), num_classes=(100, 100),
        protocol="classification", image_size=32),
}


@dataclasses.dataclass(frozen=True)
class OriginalFile:
  """One original download of a benchmark, as TFDS 4.9.10 registers it.

  Attributes:
    filename: name TFDS looks for in the manual dir.
    size: size in bytes.
    sha256: SHA-256 checksum TFDS verifies.
    url: the address the builder downloads from (dead for Cars196).
  """

  filename: str
  size: int
  sha256: str
  url: str


_CARS_URL = "http://ai.stanford.edu/~jkrause/car196/"

# From TFDS 4.9.10's url_checksums/{caltech_birds2011,cars196,cifar10,
# cifar100}.txt and
# datasets/stanford_online_products/checksums.tsv (tests compare them).
ORIGINAL_FILES: dict[str, tuple[OriginalFile, ...]] = {
    "cub": (
        OriginalFile(
            "CUB_200_2011.tgz", 1150585339,
            "0c685df5597a8b24909f6a7c9db6d11e008733779a671760afef78feb49bf081",
            "https://data.caltech.edu/records/65de6-vp158/files/"
            "CUB_200_2011.tgz?download=1"),
        OriginalFile(
            "segmentations.tgz", 39272883,
            "dc77f6cffea0cbe2e41d4201115c8f29a6320ecb04fffd2444f51b8066e4b84f",
            "https://data.caltech.edu/records/w9d68-gec53/files/"
            "segmentations.tgz?download=1"),
    ),
    "cars196": (
        OriginalFile(
            "cars_train.tgz", 979269282,
            "512b227b30e2f0a8aab9e09485786ab4479582073a144998da74d64b801fd288",
            _CARS_URL + "cars_train.tgz"),
        OriginalFile(
            "cars_test.tgz", 977350468,
            "bffea656d6f425cba3c91c6d83336e4c5f86c6cffd8975b0f375d3a10da8e243",
            _CARS_URL + "cars_test.tgz"),
        OriginalFile(
            "car_devkit.tgz", 330960,
            "b97deb463af7d58b6bfaa18b2a4de9829f0f79e8ce663dfa9261bf7810e9accd",
            "https://ai.stanford.edu/~jkrause/cars/car_devkit.tgz"),
        OriginalFile(
            "cars_test_annos_withlabels.mat", 185758,
            "790f75be8ea34eeded134cc559332baf23e30e91367e9ddca97d26ed9b895f05",
            _CARS_URL + "cars_test_annos_withlabels.mat"),
    ),
    "sop": (
        OriginalFile(
            "Stanford_Online_Products.zip", 3083860082,
            "b04fa78210e69fab050ce73939550e1cd0f96890bdd98ec9fee732c3b756ef48",
            "ftp://cs.stanford.edu/cs/cvgl/Stanford_Online_Products.zip"),
    ),
    "cifar10": (
        OriginalFile(
            "cifar-10-binary.tar.gz", 170052171,
            "c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd",
            "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"),
    ),
    "cifar100": (
        OriginalFile(
            "cifar-100-binary.tar.gz", 168513733,
            "58a81ae192c23a4be8b1804d68e518ed807d710a4eb253b1f2a199162a40d8ec",
            "https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz"),
    ),
}


def lookup(name: str) -> Benchmark:
  """Returns the benchmark called ``name``, or raises a ValueError.

  Args:
    name: a key of :data:`BENCHMARKS` (``"cub"``, ``"cars196"``, ``"sop"``,
      ``"cifar10"``, ``"cifar100"``).

  Returns:
    ``BENCHMARKS[name]``.

  Raises:
    ValueError: ``name`` is not a benchmark that needs preparing; the
      message says so for the datasets that need none (``digits``,
      ``folder:PATH``) and lists the benchmarks otherwise.

  Examples:
    >>> lookup("cub").builder
    'caltech_birds2011'
  """
  if name in BENCHMARKS:
    return BENCHMARKS[name]
  known = ", ".join(BENCHMARKS)
  if name == "digits" or str(name).startswith("folder:"):
    raise ValueError(f"dataset {name!r} needs no preparation; only the TFDS "
                     f"benchmarks do ({known})")
  raise ValueError(f"unknown dataset {name!r}; the datasets to prepare are "
                   f"{known}")


def default_data_dir(environ: Mapping[str, str] | None = None
                     ) -> pathlib.Path:
  """Returns the TFDS default data dir, as TFDS 4.9.10 computes it.

  Args:
    environ: environment to read ``TFDS_DATA_DIR`` from; None reads
      ``os.environ``.

  Returns:
    ``$TFDS_DATA_DIR`` when set and not empty, else ``~/tensorflow_datasets``.

  Examples:
    >>> str(default_data_dir({"TFDS_DATA_DIR": "/data/tfds"}))
    '/data/tfds'
    >>> default_data_dir({}).name
    'tensorflow_datasets'
  """
  environ = os.environ if environ is None else environ
  value = environ.get("TFDS_DATA_DIR")
  if value:
    return pathlib.Path(value).expanduser()
  return pathlib.Path("~", "tensorflow_datasets").expanduser()


def manual_dir_for(data_dir: str | os.PathLike[str] | None = None
                   ) -> pathlib.Path:
  """Returns where TFDS looks for files placed by hand: ``<data_dir>/downloads/manual``.

  Args:
    data_dir: TFDS data dir; None uses :func:`default_data_dir`.

  Returns:
    The manual dir.

  Examples:
    >>> str(manual_dir_for("/data/tfds"))
    '/data/tfds/downloads/manual'
  """
  root = default_data_dir() if data_dir is None else pathlib.Path(data_dir)
  return root.expanduser() / "downloads" / "manual"


def prepare_command(name: str,
                    data_dir: str | os.PathLike[str] | None = None) -> str:
  """Returns the command that prepares a benchmark.

  Args:
    name: a key of :data:`BENCHMARKS` (``"cub"``, ``"cars196"``, ``"sop"``,
      ``"cifar10"``, ``"cifar100"``).
    data_dir: TFDS data dir; included when it is not the default one.

  Returns:
    A ``make data`` command line.

  Raises:
    ValueError: ``name`` is not a benchmark that needs preparing.

  Examples:
    >>> prepare_command("cub")
    'make data DATASET=cub'
    >>> prepare_command("sop", "/data/my tfds")
    "make data DATASET=sop TFDS_DATA_DIR='/data/my tfds'"
  """
  lookup(name)
  command = f"make data DATASET={name}"
  if data_dir is not None:
    data_dir = pathlib.Path(data_dir).expanduser()
    if data_dir != default_data_dir():
      text = str(data_dir)
      quoted = f"'{text}'" if any(c.isspace() for c in text) else text
      command += f" TFDS_DATA_DIR={quoted}"
  return command


def missing_data_message(name: str,
                         data_dir: str | os.PathLike[str] | None = None
                         ) -> str:
  """Says that a benchmark is not prepared and the exact command to run.

  Args:
    name: a key of :data:`BENCHMARKS` (``"cub"``, ``"cars196"``, ``"sop"``,
      ``"cifar10"``, ``"cifar100"``).
    data_dir: the TFDS data dir that was searched (the root holding
      ``<builder>/<version>/``); None means the default one.

  Returns:
    The message, naming ``make data DATASET=<name>`` (with
    ``TFDS_DATA_DIR`` when ``data_dir`` is not the default), for Cars196 the
    folder its files must be placed in first, and for a metric benchmark the
    ``make train`` command to run next.

  Raises:
    ValueError: ``name`` is not a benchmark that needs preparing.

  Examples:
    >>> print(missing_data_message("cub", "/data/tfds"))
    dataset 'cub' (TFDS 'caltech_birds2011') is not prepared in the array_record format under /data/tfds. Run `make data DATASET=cub TFDS_DATA_DIR=/data/tfds` to download (1.2 GB, needs internet) and prepare it once (see docs/data.md), then `make train DATASET=cub` again
  """
  bench = lookup(name)
  root = default_data_dir() if data_dir is None else pathlib.Path(data_dir)
  command = prepare_command(name, data_dir)
  message = (f"dataset {name!r} (TFDS {bench.builder!r}) is not prepared in "
             f"the {FILE_FORMAT} format under {root}. ")
  if bench.manual_download:
    files = ", ".join(f.filename for f in ORIGINAL_FILES[name])
    message += (f"Its download address is dead upstream: place its files by "
                f"hand in {manual_dir_for(root)} (the original {files}, or "
                f"the extracted cars_train/ and cars_test/ image folders with "
                f"devkit/ and cars_test_annos_withlabels.mat; see {DOCS}), "
                f"then run `{command}` to check and prepare them")
  else:
    download = sum(f.size for f in ORIGINAL_FILES[name]) / 1e9
    message += (f"Run `{command}` to download ({download:.1f} GB, needs "
                f"internet) and prepare it once (see {DOCS})")
  if bench.protocol == "classification":
    # Read by the task streams (nngk_jax.data.tasks), not `make train`.
    return message + ", then load it again"
  return message + f", then `make train DATASET={name}` again"

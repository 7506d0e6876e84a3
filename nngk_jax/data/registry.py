"""Datasets by name: :data:`DATASETS` and :func:`load_dataset`.

A new dataset is a new entry in :data:`DATASETS`: a name and a loader that
returns a :class:`~nngk_jax.data.splits.Dataset`. Loading never falls back
to other data: an unknown name, a missing folder or an unreadable image
raises.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from nngk_jax.data import digits
from nngk_jax.data import folder
from nngk_jax.data import glyphs
from nngk_jax.data import splits
from nngk_jax.data import tfds as tfds_data

__all__ = ["DATASETS", "check_dataset_name", "load_dataset"]


def _benchmark(key: str) -> Callable[..., splits.Dataset]:
  def loader(**options: Any) -> splits.Dataset:
    return tfds_data.load_benchmark_dataset(key, **options)
  loader.__name__ = f"load_{key}"
  loader.__doc__ = (f"The {key!r} benchmark from tensorflow-datasets; see "
                    f":func:`nngk_jax.data.tfds.load_benchmark_dataset`.")
  return loader


# A new dataset is a new entry: name -> loader(**options) -> Dataset. A name
# "KEY:ARG" passes ARG as the loader's first argument (``folder:PATH``).
DATASETS: dict[str, Callable[..., splits.Dataset]] = {
    "digits": digits.load_digits,
    "folder": folder.load_image_folder,
    "cub": _benchmark("cub"),            # CUB-200-2011
    "cars196": _benchmark("cars196"),    # Stanford Cars
    "sop": _benchmark("sop"),            # Stanford Online Products
    "cifar10": _benchmark("cifar10"),    # classification; task streams
    "cifar100": _benchmark("cifar100"),
    "glyphs": glyphs.load_glyphs,        # rendered characters, offline
}
_TAKES_ARGUMENT = frozenset({"folder"})


def _known_names() -> str:
  return ", ".join(
      f"'{k}:PATH'" if k in _TAKES_ARGUMENT else repr(k) for k in DATASETS)


def check_dataset_name(name: Any) -> tuple[str, str | None]:
  """``(key, argument)`` of a dataset name, or a ``ValueError`` listing the
  known ones.

  Only keys of :data:`DATASETS` are accepted, and ``KEY:ARG`` only for the
  keys that take an argument (``folder:PATH``): a name is never a path to
  a file that would be imported.

  Examples:
    >>> check_dataset_name("folder:/data/birds")
    ('folder', '/data/birds')
    >>> check_dataset_name("../../x:y")
    Traceback (most recent call last):
    ...
    ValueError: unknown dataset '../../x:y'; known: 'digits', 'folder:PATH', 'cub', 'cars196', 'sop', 'cifar10', 'cifar100', 'glyphs'
  """
  if not isinstance(name, str):
    raise ValueError(f"a dataset name must be a string, got {name!r}; "
                     f"known: {_known_names()}")
  key, colon, argument = name.partition(":")
  if key not in DATASETS:
    raise ValueError(f"unknown dataset {name!r}; known: {_known_names()}")
  if key in _TAKES_ARGUMENT:
    if not colon or not argument:
      raise ValueError(f"dataset {key!r} is used as '{key}:PATH', got "
                       f"{name!r}")
    return key, argument
  if colon:
    raise ValueError(f"dataset {key!r} takes no ':' argument, got {name!r}; "
                     f"known: {_known_names()}")
  return key, None


def load_dataset(name: str, **options: Any) -> splits.Dataset:
  """Loads a dataset by name from :data:`DATASETS`.

  Args:
    name: ``"digits"``, ``"folder:PATH"``, or another key of
      :data:`DATASETS`.
    **options: passed to the loader (e.g. ``protocol``, ``seed``,
      ``train_per_class``, ``image_size``); an option the loader does not
      take raises ``TypeError``.

  Returns:
    The :class:`~nngk_jax.data.splits.Dataset`.

  Raises:
    ValueError: unknown name (the message lists the known ones).
    DatasetNotAvailableError: a benchmark that is not prepared on this
      machine (the message gives the command that prepares it).

  Examples:
    >>> load_dataset("digits", protocol="classification").test.num_classes
    10
  """
  key, argument = check_dataset_name(name)
  if argument is not None:
    return DATASETS[key](argument, **options)
  return DATASETS[key](**options)

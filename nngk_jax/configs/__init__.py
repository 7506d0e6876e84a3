"""Configs as plain Python, shipped with the package.

Each module here has a ``get_config()`` (benchmarks: ``get_config(recipe)``)
returning an ``ml_collections.ConfigDict``. ``make train DATASET=name`` picks
``nngk_jax/configs/<name>.py`` (:func:`config_for_dataset`); ``--config`` takes
any file with a ``get_config``, inside the package or not. Overrides
``a.b=value`` go through ``ConfigDict.update_from_flattened_dict``
(:func:`apply_overrides`).
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import inspect
import os
import pathlib

import ml_collections

__all__ = ["CONFIG_DIR", "apply_overrides", "config_for_dataset",
           "load_config"]

CONFIG_DIR = pathlib.Path(__file__).resolve().parent


def load_config(path: str | os.PathLike,
                recipe: str | None = None) -> ml_collections.ConfigDict:
  """Runs ``get_config()`` (or ``get_config(recipe)``) of a Python config file.

  A file of this package is imported as ``nngk_jax.configs.<name>`` (so the
  configs can import each other); any other file is loaded from its path.
  """
  path = pathlib.Path(path)
  if not path.exists():
    raise FileNotFoundError(f"config file {path} does not exist")
  if path.resolve().parent == CONFIG_DIR:
    module = importlib.import_module(f"{__name__}.{path.stem}")
  else:
    spec = importlib.util.spec_from_file_location(f"_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
  if not hasattr(module, "get_config"):
    raise ValueError(f"config file {path} defines no get_config()")
  if recipe is None:
    return module.get_config()
  if not inspect.signature(module.get_config).parameters:
    raise ValueError(f"config file {path} has no recipes (its get_config() "
                     f"takes no argument); drop --recipe {recipe}")
  return module.get_config(recipe)


def config_for_dataset(dataset: str) -> pathlib.Path:
  """The default config file for a ``make train DATASET=...`` name.

  Examples:
    >>> config_for_dataset("folder:/data/x").name
    'folder.py'
    >>> config_for_dataset("my_tfds_name").name
    'digits.py'
  """
  key = dataset.partition(":")[0]
  if not key.isidentifier():  # "../../x" must never name a file to import
    raise ValueError(f"dataset name {dataset!r} does not start with a "
                     f"dataset key (letters, digits, '_')")
  candidate = CONFIG_DIR / f"{key}.py"
  return candidate if candidate.exists() else CONFIG_DIR / "digits.py"


def _parse(raw: str):
  if raw.strip().lower() in ("inf", "+inf", "-inf", "nan"):
    return float(raw)  # impostor.tie=inf
  try:
    return ast.literal_eval(raw)
  except (ValueError, SyntaxError):
    return raw  # a bare word is a string: sampler=class_balanced


def apply_overrides(config: ml_collections.ConfigDict,
                    overrides: list[str]) -> None:
  """Applies ``a.b=value`` overrides; values are Python literals or strings.

  Unknown fields and values of the wrong type are refused with a
  ``ValueError`` naming the field.

  Examples:
    >>> import ml_collections
    >>> c = ml_collections.ConfigDict({"nngk": {"k": 3}, "name": "x"})
    >>> apply_overrides(c, ["nngk.k=5", "name=y"])
    >>> c.nngk.k, c.name
    (5, 'y')
  """
  flat = {}
  for item in overrides:
    key, eq, raw = item.partition("=")
    if not eq:
      raise ValueError(f"override {item!r} is not of the form key=value")
    parent = config
    *path, leaf = key.split(".")
    try:
      for part in path:
        parent = parent[part]
      parent[leaf]  # pylint: disable=pointless-statement
    except (KeyError, AttributeError, TypeError):
      raise ValueError(f"unknown config field {key!r}") from None
    flat[key] = _parse(raw)
  try:
    config.update_from_flattened_dict(flat)
  except TypeError as error:
    raise ValueError(f"config override: {error}") from None

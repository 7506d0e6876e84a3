"""Input checks, one home for the whole package.

Each raises ``ValueError`` (or the error class passed in) with a message
naming the argument and what was found. The array checks for the loss
functions run only on concrete inputs: under ``jax.jit`` a traced
hyperparameter is not checked.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


class TrainingDivergedError(RuntimeError):
  """The loss or the embeddings became NaN or infinite during training."""


def is_concrete(x: Any) -> bool:
  """False for a tracer (inside ``jit``/``vmap``/``grad``), True otherwise."""
  return not isinstance(x, jax.core.Tracer)


def check_positive_scalar(name: str, value: Any) -> None:
  """``value`` is a scalar > 0 (skipped for tracers)."""
  if is_concrete(value):
    array = np.asarray(value)
    if array.ndim != 0 or not array > 0:
      raise ValueError(f"{name} must be a positive scalar, got {value!r}")


def check_non_negative_scalar(name: str, value: Any) -> None:
  """``value`` is a scalar >= 0 (skipped for tracers)."""
  if is_concrete(value):
    array = np.asarray(value)
    if array.ndim != 0 or not array >= 0:
      raise ValueError(f"{name} must be a non-negative scalar, got {value!r}")


def check_rank(name: str, x: Any, ndim: int, shape_doc: str) -> None:
  """``x`` has ``ndim`` dimensions; ``shape_doc`` reads like ``[batch, dim]``."""
  if jnp.ndim(x) != ndim:
    raise ValueError(
        f"{name} must be {shape_doc} ({ndim}-D), got shape {jnp.shape(x)}")


def check_dtype(name: str, x: Any, kind: str) -> None:
  """``x`` has a ``"float"``, ``"int"`` or ``"bool"`` dtype."""
  dtype = jnp.result_type(x)
  ok = {
      "float": jnp.issubdtype(dtype, jnp.floating),
      "int": jnp.issubdtype(dtype, jnp.integer),
      "bool": dtype == jnp.bool_,
  }[kind]
  if not ok:
    raise ValueError(f"{name} must have a {kind} dtype, got {dtype}")


def positive_int(name: str, value: Any) -> int:
  """``value`` as an ``int`` if it is an integer >= 1 (bools refused).

  Examples:
    >>> positive_int("k", 3)
    3
    >>> positive_int("k", 0)
    Traceback (most recent call last):
    ...
    ValueError: k must be a positive integer, got 0
  """
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or (
      value < 1):
    raise ValueError(f"{name} must be a positive integer, got {value!r}")
  return int(value)


def non_negative_int(name: str, value: Any) -> int:
  """``value`` as an ``int`` if it is an integer >= 0 (bools refused).

  Examples:
    >>> non_negative_int("max_iter", 0)
    0
    >>> non_negative_int("max_iter", -1)
    Traceback (most recent call last):
    ...
    ValueError: max_iter must be a non-negative integer, got -1
  """
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or (
      value < 0):
    raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
  return int(value)


def non_finite_rows(array: Any) -> np.ndarray:
  """``[N]`` bool: rows of ``array`` (any trailing shape) holding a NaN/inf."""
  array = np.asarray(array)
  if array.ndim == 0:
    raise ValueError("non_finite_rows needs an array with a leading axis")
  return ~np.isfinite(array.reshape(len(array), -1)).all(axis=1)


def check_finite_rows(name: str, array: Any, where: str = "",
                      error: type[Exception] = ValueError,
                      advice: str = "") -> None:
  """Raises ``error`` naming how many rows of ``array`` are not finite.

  Examples:
    >>> import numpy as np
    >>> check_finite_rows("embeddings", np.array([[0.0], [np.nan]]))
    Traceback (most recent call last):
    ...
    ValueError: 1 of 2 embeddings are NaN or infinite (first bad row: 1)
  """
  bad = non_finite_rows(array)
  if bad.any():
    where = f" {where}" if where else ""
    advice = f"; {advice}" if advice else ""
    raise error(f"{int(bad.sum())} of {len(bad)} {name} are NaN or infinite"
                f"{where} (first bad row: {int(np.argmax(bad))}){advice}")


# What a user should do when training diverged (the end of such messages).
DIVERGED_ADVICE = ("training stopped, the last good checkpoint is kept. Lower "
                   "the learning rate or check the input data.")

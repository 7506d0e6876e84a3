"""Cheap input checks shared by the loss functions.

Each raises ``ValueError`` naming what it found. Value checks run only on
concrete inputs: under ``jax.jit`` a traced hyperparameter is not checked.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def is_concrete(x: Any) -> bool:
  """False for a tracer (inside ``jit``/``vmap``/``grad``), True otherwise."""
  return not isinstance(x, jax.core.Tracer)


def check_positive_scalar(name: str, value: Any) -> None:
  """``value`` is a scalar > 0 (skipped for tracers)."""
  if is_concrete(value):
    array = np.asarray(value)
    if array.ndim != 0 or not array > 0:
      raise ValueError(f"{name} must be a positive scalar, got {value!r}")


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

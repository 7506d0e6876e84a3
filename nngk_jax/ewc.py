"""Elastic Weight Consolidation (EWC), the continual-learning baseline.

After training on a task, EWC estimates how much each parameter matters to
it with the diagonal of the Fisher information, and while training the next
tasks adds a quadratic penalty pulling the important parameters back to
their values at the end of the earlier tasks:

.. math::
  \\mathcal{L}(\\theta) = \\mathcal{L}_{\\text{task}}(\\theta)
      + \\frac{\\lambda}{2} \\sum_i F_i (\\theta_i - \\theta^*_i)^2 .

Three pure functions: :func:`fisher_diagonal` (the empirical Fisher of one
task, host-side over batches), :func:`ewc_penalty` (jittable, added to the
loss) and :func:`consolidate` (folds a finished task into the
:class:`EWCState` carried to the next).

Several tasks: Kirkpatrick et al. keep one penalty per task, each with its
own anchor :math:`\\theta^*_t` and Fisher :math:`F_t`. This module keeps
one: :func:`consolidate` sums the Fishers and anchors at the latest
parameters (Huszar 2018; "online EWC" of Schwarz et al. 2018 with decay
:math:`\\gamma`, here ``decay=1`` by default). Its memory does not grow
with the number of tasks, and the penalty's gradient, like the sum of
per-task penalties', is zero only where the task losses balance it.

References:
  Kirkpatrick et al., "Overcoming catastrophic forgetting in neural
  networks", PNAS 2017. Schwarz et al., "Progress & Compress: A scalable
  framework for continual learning", ICML 2018. Huszar, "Note on the
  quadratic penalties in elastic weight consolidation", PNAS 2018.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from nngk_jax import checks

__all__ = ["EWCState", "consolidate", "ewc_penalty", "fisher_diagonal"]

PyTree = Any


class EWCState(NamedTuple):
  """What EWC carries from the tasks seen to the next (a pytree).

  Attributes:
    anchor_params: :math:`\\theta^*`, the parameters after the latest task;
      same structure as the model's parameters.
    fisher: :math:`F`, the Fishers of the tasks seen, summed (each earlier
      one times ``decay`` per later task); same structure, non-negative.
    num_tasks: how many tasks were consolidated.
  """

  anchor_params: PyTree
  fisher: PyTree
  num_tasks: int


def _check_same_structure(what: str, tree: PyTree, params: PyTree) -> None:
  """ValueError unless ``tree`` has the structure and shapes of ``params``."""
  tree_def, params_def = (jax.tree_util.tree_structure(tree),
                          jax.tree_util.tree_structure(params))
  if tree_def != params_def:
    raise ValueError(f"{what} must have the structure of params: got "
                     f"{tree_def}, params {params_def}")
  for (path, b), a in zip(jax.tree_util.tree_leaves_with_path(params),
                          jax.tree_util.tree_leaves(tree)):
    if np.shape(a) != np.shape(b):
      raise ValueError(
          f"{what}{jax.tree_util.keystr(path)} has shape {np.shape(a)}, "
          f"params {np.shape(b)}")


def _squared_gradient_sum(loss_per_example_fn: Callable[..., jax.Array]
                          ) -> Callable[[PyTree, PyTree], PyTree]:
  """``(params, batch) -> sum over the batch of grad(loss)**2``, jitted."""
  per_example = jax.vmap(jax.grad(loss_per_example_fn), in_axes=(None, 0))

  def summed(params, batch):
    grads = per_example(params, batch)
    return jax.tree_util.tree_map(lambda g: jnp.sum(jnp.square(g), axis=0),
                                  grads)

  return jax.jit(summed)


def fisher_diagonal(loss_per_example_fn: Callable[[PyTree, PyTree], jax.Array],
                    params: PyTree, batches: Iterable[PyTree]) -> PyTree:
  """The diagonal of the empirical Fisher: mean squared per-example gradient.

  .. math::
    F_i = \\frac{1}{N} \\sum_{n=1}^{N}
          \\left(\\frac{\\partial \\ell(\\theta; x_n, y_n)}
                     {\\partial \\theta_i}\\right)^2

  With :math:`\\ell = -\\log p_\\theta(y_n | x_n)` at the observed labels
  this is the empirical Fisher that EWC implementations use; a loss at
  labels sampled from the model gives the true Fisher instead (the
  caller's choice, inside ``loss_per_example_fn``). Per-example gradients
  come from ``jax.vmap(jax.grad(loss_per_example_fn))``, one jitted call per
  batch; the sums are accumulated on the host in float64.

  Args:
    loss_per_example_fn: ``(params, example) -> scalar`` loss of one
      example; ``example`` is one row of a batch (its leaves without the
      batch axis).
    params: the parameters, a pytree (e.g. after training on the task).
    batches: pytrees whose leaves share a leading ``[batch]`` axis (e.g.
      ``{"image": [batch, H, W, C], "label": [batch]}``); any sizes.

  Returns:
    :math:`F`: a pytree like ``params``, each leaf the mean over all
    examples of the squared gradient, in the leaf's dtype.

  Raises:
    ValueError: ``batches`` is empty, or a batch's leaves disagree on the
      batch size.

  Examples:
    >>> import jax.numpy as jnp
    >>> loss = lambda w, x: 0.5 * jnp.sum(w * x) ** 2
    >>> batches = [jnp.array([[1.0, 0.0], [0.0, 2.0]])]
    >>> fisher_diagonal(loss, jnp.array([1.0, 1.0]), batches)
    Array([0.5, 8. ], dtype=float32)

  References:
    Kirkpatrick et al., "Overcoming catastrophic forgetting in neural
    networks", PNAS 2017 (supplementary, Fisher information).
  """
  squared_sum = _squared_gradient_sum(loss_per_example_fn)
  total = None
  count = 0
  for number, batch in enumerate(batches):
    sizes = {int(np.shape(leaf)[0]) if np.ndim(leaf) else None
             for leaf in jax.tree_util.tree_leaves(batch)}
    if len(sizes) != 1 or None in sizes:
      raise ValueError(f"batch {number}: every leaf needs the same leading "
                       f"batch axis, found sizes {sorted(map(str, sizes))}")
    summed = jax.device_get(squared_sum(params, batch))
    summed = jax.tree_util.tree_map(lambda s: np.asarray(s, np.float64),
                                    summed)
    total = summed if total is None else jax.tree_util.tree_map(
        np.add, total, summed)
    count += sizes.pop()
  if total is None or count == 0:
    raise ValueError("batches is empty: the Fisher needs at least one "
                     "example")
  return jax.tree_util.tree_map(
      lambda s, p: jnp.asarray(s / count, jnp.result_type(p)), total, params)


def ewc_penalty(params: PyTree, anchor_params: PyTree, fisher: PyTree,
                strength: float | jax.Array) -> jax.Array:
  """The EWC penalty: a Fisher-weighted squared distance to the anchor.

  .. math::
    \\Omega(\\theta) = \\frac{\\lambda}{2} \\sum_i F_i
                       (\\theta_i - \\theta^*_i)^2,
    \\qquad
    \\frac{\\partial \\Omega}{\\partial \\theta_i}
        = \\lambda F_i (\\theta_i - \\theta^*_i)

  Pure and jittable; add it to the task loss.

  Args:
    params: :math:`\\theta`, the parameters being trained (a pytree).
    anchor_params: :math:`\\theta^*`, same structure and shapes.
    fisher: :math:`F`, same structure and shapes, non-negative (from
      :func:`fisher_diagonal` or :attr:`EWCState.fisher`).
    strength: :math:`\\lambda \\ge 0`, a scalar.

  Returns:
    The penalty, a float32 scalar ``[]``.

  Raises:
    ValueError: the trees differ in structure or shapes, or ``strength``
      is negative (checked when concrete).

  Examples:
    >>> import jax.numpy as jnp
    >>> ewc_penalty({"w": jnp.array([1.0, 3.0])}, {"w": jnp.zeros(2)},
    ...             {"w": jnp.array([2.0, 1.0])}, strength=0.5)
    Array(2.75, dtype=float32)

  References:
    Kirkpatrick et al., "Overcoming catastrophic forgetting in neural
    networks", PNAS 2017, eq. 3.
  """
  checks.check_non_negative_scalar("strength", strength)
  _check_same_structure("anchor_params", anchor_params, params)
  _check_same_structure("fisher", fisher, params)
  terms = jax.tree_util.tree_map(
      lambda p, a, f: jnp.sum(f * jnp.square(p - a), dtype=jnp.float32),
      params, anchor_params, fisher)
  return 0.5 * strength * sum(jax.tree_util.tree_leaves(terms),
                              jnp.float32(0.0))


def consolidate(old: EWCState | None, fisher: PyTree, params: PyTree, *,
                decay: float = 1.0) -> EWCState:
  """Folds a finished task into the EWC state: sum the Fishers, re-anchor.

  .. math::
    F \\leftarrow \\gamma F_{\\text{old}} + F_t, \\qquad
    \\theta^* \\leftarrow \\theta_t

  One penalty with the summed Fisher at the latest parameters ("online
  EWC", Schwarz et al. 2018; ``decay`` is their :math:`\\gamma`), not
  Kirkpatrick et al.'s one penalty per task: see the module docstring.

  Args:
    old: the state after the earlier tasks, or None before the first.
    fisher: :math:`F_t`, the Fisher of the task just finished
      (:func:`fisher_diagonal`), structured like ``params``.
    params: :math:`\\theta_t`, the parameters at the end of that task.
    decay: :math:`\\gamma \\in [0, 1]`, the weight of the earlier Fishers
      (1: plain sum; 0: only the latest task counts).

  Returns:
    The new :class:`EWCState` (``num_tasks`` one more than ``old``'s).

  Raises:
    ValueError: structures or shapes differ, or ``decay`` is outside
      ``[0, 1]``.

  Examples:
    >>> import jax.numpy as jnp
    >>> state = consolidate(None, jnp.array([1.0]), jnp.array([5.0]))
    >>> state = consolidate(state, jnp.array([2.0]), jnp.array([7.0]))
    >>> state.fisher, state.anchor_params, state.num_tasks
    (Array([3.], dtype=float32), Array([7.], dtype=float32), 2)

  References:
    Schwarz et al., "Progress & Compress: A scalable framework for
    continual learning", ICML 2018, eq. 6.
  """
  if not 0.0 <= float(decay) <= 1.0:
    raise ValueError(f"decay must lie in [0, 1], got {decay!r}")
  _check_same_structure("fisher", fisher, params)
  params = jax.tree_util.tree_map(jnp.asarray, params)
  fisher = jax.tree_util.tree_map(jnp.asarray, fisher)
  if old is None:
    return EWCState(anchor_params=params, fisher=fisher, num_tasks=1)
  _check_same_structure("old.fisher", old.fisher, params)
  summed = jax.tree_util.tree_map(lambda f_old, f: decay * f_old + f,
                                  old.fisher, fisher)
  return EWCState(anchor_params=params, fisher=summed,
                  num_tasks=old.num_tasks + 1)

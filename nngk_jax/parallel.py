"""Data-parallel training over the local devices with ``jax.sharding``.

One mesh with two axes, ``("data", "fsdp")`` (``config.mesh.data``,
``config.mesh.fsdp``; by default every local device on ``data``). The jitted
train step is the single-device one: XLA's SPMD partitioner splits it from
the shardings of its inputs and outputs, so the loss, the BatchNorm
statistics and the gradient are reduced over the whole global batch, as on
one device (tested to float32 tolerance on 8 forced CPU devices):

* the **batch** is split over every device (its leading axis over
  ``("data", "fsdp")``);
* the **parameters** and optimiser state are replicated, or with
  ``mesh.fsdp > 1`` each array's largest axis divisible by it is split over
  ``fsdp`` (ZeRO-3 style; the partitioner gathers them for the step);
* the **centre bank's arrays** (``state.bank``: centres ``[N, D]``,
  labels, impostors' moments) are split by rows over every device when
  ``N`` divides evenly (``jax.Array`` shards must be even), else
  replicated; the step gathers the batch's neighbour rows
  (``jnp.take``) across devices.

The host side is unchanged: the graph, the data and the checkpoints see
plain arrays (:func:`shard_batch` places each batch; :func:`place_state`
re-places the state after a refresh or a restore).

Not here yet (docs/distributed.md): several processes (``jax.distributed``),
each reading its own shard of the data.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from nngk_jax import checks

__all__ = ["AXES", "batch_sharding", "make_mesh", "num_devices",
           "place_state", "replicated", "shard_batch", "state_shardings"]

AXES = ("data", "fsdp")


def make_mesh(config: Any, devices: list | None = None) -> Mesh | None:
  """The ``("data", "fsdp")`` mesh of ``config.mesh``, or ``None`` on one device.

  ``config.mesh.data`` (``None``: the local devices left after ``fsdp``)
  and ``config.mesh.fsdp`` (default 1). ``None`` is returned when the mesh
  would hold one device, so the single-device path stays as it is.

  Raises:
    ValueError: the mesh needs more devices than there are, or a size is
      not a positive integer.
  """
  settings = dict(config.get("mesh") or {})
  devices = list(jax.local_devices() if devices is None else devices)
  fsdp = checks.positive_int("mesh.fsdp", settings.get("fsdp") or 1)
  data = settings.get("data")
  data = (len(devices) // fsdp if data is None
          else checks.positive_int("mesh.data", data))
  if data < 1 or data * fsdp > len(devices):
    raise ValueError(
        f"mesh.data={settings.get('data')} x mesh.fsdp={fsdp} needs "
        f"{max(data, 1) * fsdp} devices, but {len(devices)} are available "
        f"({devices[0].platform})")
  if data * fsdp == 1:
    return None
  grid = np.asarray(devices[:data * fsdp]).reshape(data, fsdp)
  return Mesh(grid, AXES)


def num_devices(mesh: Mesh | None) -> int:
  """Devices a batch is split over (1 without a mesh)."""
  return 1 if mesh is None else int(mesh.devices.size)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading axis split over every device of the mesh."""
  return NamedSharding(mesh, P(AXES))


def _rows_or_replicated(mesh: Mesh, leaf: Any) -> NamedSharding:
  shape = np.shape(leaf)
  if shape and shape[0] % mesh.devices.size == 0:
    return NamedSharding(mesh, P(AXES))
  return replicated(mesh)


def _fsdp_or_replicated(mesh: Mesh, leaf: Any) -> NamedSharding:
  """The largest axis that ``fsdp`` divides, split over it."""
  size = mesh.shape["fsdp"]
  shape = np.shape(leaf)
  if size == 1 or not shape:
    return replicated(mesh)
  for axis in sorted(range(len(shape)), key=lambda a: -shape[a]):
    if shape[axis] % size == 0:
      spec = [None] * len(shape)
      spec[axis] = "fsdp"
      return NamedSharding(mesh, P(*spec))
  return replicated(mesh)


def state_shardings(state: Any, mesh: Mesh) -> Any:
  """A pytree of shardings for a :class:`~nngk_jax.state.TrainState`."""
  shardings = jax.tree_util.tree_map(
      lambda leaf: _fsdp_or_replicated(mesh, leaf), state)
  if getattr(state, "bank", None) is not None:
    shardings = shardings.replace(bank=jax.tree_util.tree_map(
        lambda leaf: _rows_or_replicated(mesh, leaf), state.bank))
  # The step counter and the PRNG key stay whole on every device.
  return shardings.replace(step=replicated(mesh), rng=replicated(mesh))


def place_state(state: Any, mesh: Mesh | None) -> Any:
  """``state`` on the mesh's devices (unchanged without a mesh)."""
  if mesh is None:
    return state
  return jax.device_put(state, state_shardings(state, mesh))


def shard_batch(batch: dict, mesh: Mesh | None) -> dict:
  """A host batch on the mesh: arrays with the batch's leading axis split
  (those whose first axis is the batch's), the rest replicated.

  Raises:
    ValueError: the batch size does not divide evenly over the devices.
  """
  if mesh is None:
    return batch
  size = mesh.devices.size
  rows = np.shape(batch["image"])[0]
  if rows % size:
    raise ValueError(f"a batch of {rows} rows does not split over {size} "
                     f"devices; make batch_size a multiple of {size}")
  split, whole = batch_sharding(mesh), replicated(mesh)
  return {key: jax.device_put(
      value, split if np.ndim(value) and np.shape(value)[0] == rows else whole)
          for key, value in batch.items()}

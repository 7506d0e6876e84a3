"""Data-parallel training over the devices of one or several processes.

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
  labels, impostors' moments) are, on accelerators, split by rows over
  every device when ``N`` divides evenly (``jax.Array`` shards must be
  even), else replicated; the step gathers the batch's neighbour rows
  (``jnp.take``) across devices. ``config.mesh.bank`` chooses
  (:data:`BANK_LAYOUTS`).

On a CPU the devices are the host's cores: the command lines split the
CPU into one JAX device per core (:func:`split_cpu`, before JAX starts;
``config.mesh.cpu_devices``), because XLA:CPU leaves part of a multi-core
CPU idle in one device's train step and the split step keeps the cores busy
(conv4 at batch 64 on 2 cores: 1.6x the images/s; docs/benchmarks.md).
CPU devices share the host's memory, so there the bank stays whole on each
(``config.mesh.bank``: ``"auto"``).

The host side is unchanged: the graph, the data and the checkpoints see
plain arrays (:func:`shard_batch` places each batch; :func:`place_state`
re-places the state after a refresh or a restore).

Several processes (one per host; docs/distributed.md): after
:func:`initialize_distributed` the mesh spans ``jax.devices()`` of every
process, ordered by process, so each process's devices hold one contiguous
block of every global batch's rows. Each process reads only that block
(:func:`process_shard`; the samplers' ``shard``) and :func:`shard_batch`
assembles the global batch from the blocks
(``jax.make_array_from_process_local_data``), in the single-process order.
The refresh embeds each process's block of the training split and
all-gathers the embeddings (:func:`gather_blocks`), so every process holds
the same bank. The exact graph backend then gives the same graph in every
process; PyNNDescent's graph depends on numba's thread count, so process 0
builds it and broadcasts it (:func:`broadcast_from_primary`;
:meth:`nngk_jax.bank.CentreBank.refresh`).
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from nngk_jax import checks

__all__ = ["AXES", "BANK_LAYOUTS", "any_process", "bank_layout",
           "batch_sharding", "broadcast_from_primary", "cpu_device_count",
           "fetch", "gather_blocks",
           "initialize_distributed", "is_primary", "make_mesh",
           "mesh_devices", "num_devices", "place_state", "process_shard",
           "replicated", "shard_batch", "split_cpu", "state_shardings",
           "usable_cores"]

AXES = ("data", "fsdp")

# config.mesh.bank: the bank's arrays split by rows over the devices, kept
# whole on each, or "auto" (whole on CPU devices, which share the host's
# memory; split by rows on accelerators, where the bank may not fit one).
BANK_LAYOUTS = ("auto", "rows", "replicated")

# split_cpu's default leaves each CPU device at least this many of a
# batch's rows.
MIN_ROWS_PER_CPU_DEVICE = 8

# Environment variables read by :func:`initialize_distributed` when its
# arguments are not given (JAX itself reads JAX_COORDINATOR_ADDRESS too).
COORDINATOR_ENV = "JAX_COORDINATOR_ADDRESS"
NUM_PROCESSES_ENV = "JAX_NUM_PROCESSES"
PROCESS_ID_ENV = "JAX_PROCESS_ID"


def _env_int(name: str) -> int | None:
  value = os.environ.get(name)
  if value in (None, ""):
    return None
  try:
    return int(value)
  except ValueError:
    raise ValueError(f"the environment variable {name} must be an integer, "
                     f"got {value!r}") from None


def initialize_distributed(coordinator_address: str | None = None,
                           num_processes: int | None = None,
                           process_id: int | None = None, *,
                           auto_detect: bool = False) -> bool:
  """Joins this process to a multi-process run (``jax.distributed``).

  A thin layer over ``jax.distributed.initialize``, to be called before any
  other JAX work. Arguments left ``None`` are read from
  ``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID``.
  With neither a coordinator nor more than one process (and no
  ``auto_detect``) it does nothing: a single process stays as it is. With
  ``auto_detect`` and nothing given, JAX detects the cluster itself (SLURM,
  Open MPI, TPU pods; on GPUs under SLURM or Open MPI it then gives each
  process one GPU, its local rank's). With the three settings given, JAX's
  cluster detection is switched off, so each process keeps every local
  device (one process per host; ``JAX_LOCAL_DEVICE_IDS`` still restricts
  them). CPU collectives go through gloo (set only when
  ``jax_cpu_collectives_implementation`` is not already chosen; it does
  not affect GPUs).

  Args:
    coordinator_address: ``host:port`` of process 0's coordinator service.
    num_processes: processes in the run.
    process_id: this process, ``0 <= process_id < num_processes``.
    auto_detect: let JAX detect a cluster when nothing is given.

  Returns:
    Whether ``jax.distributed.initialize`` was called.

  Raises:
    ValueError: a number is missing or out of range, an environment
      variable is not an integer, or ``auto_detect`` found no cluster.
  """
  coordinator_address = coordinator_address or os.environ.get(
      COORDINATOR_ENV) or None
  if num_processes is None:
    num_processes = _env_int(NUM_PROCESSES_ENV)
  if process_id is None:
    process_id = _env_int(PROCESS_ID_ENV)
  if num_processes is not None:
    checks.positive_int("num_processes", num_processes)
  explicit = coordinator_address is not None or (num_processes or 1) > 1
  if not explicit and not auto_detect:
    return False
  if explicit and (coordinator_address is None or num_processes is None
                   or process_id is None):
    raise ValueError(
        f"a multi-process run needs the coordinator address, the number of "
        f"processes and this process's id (arguments, or {COORDINATOR_ENV}, "
        f"{NUM_PROCESSES_ENV}, {PROCESS_ID_ENV}); got coordinator="
        f"{coordinator_address!r}, num_processes={num_processes!r}, "
        f"process_id={process_id!r}")
  if process_id is not None and not (
      num_processes is None or 0 <= process_id < num_processes):
    raise ValueError(f"process_id={process_id} must lie in [0, "
                     f"{num_processes}) (num_processes={num_processes})")
  if jax.config.jax_cpu_collectives_implementation in (None, "none"):
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  try:
    jax.distributed.initialize(
        coordinator_address=coordinator_address, num_processes=num_processes,
        process_id=process_id,
        cluster_detection_method="deactivate" if explicit else None)
  except ValueError as error:
    if explicit:
      raise
    raise ValueError(
        f"JAX found no cluster (SLURM, Open MPI, TPU) to read the run's "
        f"processes from ({error}); give the coordinator address, the "
        f"number of processes and this process's id instead (arguments, or "
        f"{COORDINATOR_ENV}, {NUM_PROCESSES_ENV}, {PROCESS_ID_ENV})"
    ) from None
  return True


def usable_cores() -> int:
  """The CPU cores this process may run on (its affinity, where known)."""
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:  # not Linux
    return os.cpu_count() or 1


def cpu_device_count(batch_size: int, cores: int,
                     min_rows: int = MIN_ROWS_PER_CPU_DEVICE) -> int:
  """How many CPU devices a data-parallel step of ``batch_size`` rows uses.

  The most devices, up to one per core, that divide the batch into equal
  blocks of at least ``min_rows`` rows; 1 where none does. More devices
  than cores ran slower (docs/benchmarks.md).

  Examples:
    >>> cpu_device_count(64, cores=2)
    2
    >>> cpu_device_count(64, cores=16)  # blocks of 8 rows at least
    8
    >>> cpu_device_count(30, cores=4)   # 3 blocks of 10
    3
    >>> cpu_device_count(12, cores=2)   # blocks of 6: fewer than 8 rows
    1
  """
  batch_size = checks.positive_int("batch_size", batch_size)
  cores = checks.positive_int("cores", cores)
  for count in range(min(cores, batch_size // min_rows), 1, -1):
    if batch_size % count == 0:
      return count
  return 1


def _cpu_count_chosen() -> bool:
  """Whether the user set the CPU device count (JAX's option or XLA_FLAGS)."""
  return (jax.config.jax_num_cpu_devices >= 0 or
          "xla_force_host_platform_device_count" in os.environ.get(
              "XLA_FLAGS", ""))


def split_cpu(count: int | None, batch_size: int) -> int | None:
  """Splits this process's CPU into ``count`` JAX devices; call before JAX runs.

  The training command line calls it with ``config.mesh.cpu_devices``, so
  that the data-parallel mesh (:func:`make_mesh`) spans the CPU's cores
  when training runs on the CPU (on an accelerator the CPU devices go
  unused). XLA:CPU leaves part of a multi-core CPU idle in one device's
  train step; split in two on the 2-core machine, conv4's step at batch 64
  ran 1.6x the images/s, the same function up to float rounding (the
  batch's BatchNorm statistics and the gradient are reduced over all the
  devices). Results therefore differ in the last bits between machines with
  different core counts.

  Args:
    count: devices; ``None`` (the default config) chooses
      :func:`cpu_device_count` of :func:`usable_cores`, and leaves the CPU
      as it is where the user set the count (``JAX_NUM_CPU_DEVICES``, or
      ``--xla_force_host_platform_device_count`` in ``XLA_FLAGS``) or JAX
      has already started (a notebook, another program's process).
    batch_size: the training batch, which the devices split evenly.

  Returns:
    The count set, or ``None`` where the CPU was left as it is.

  Raises:
    ValueError: ``count`` is not a positive integer, or JAX has already
      started with another number of CPU devices.
  """
  if count is None:
    if _cpu_count_chosen():
      return None
    count = cpu_device_count(batch_size, usable_cores())
    try:
      jax.config.update("jax_num_cpu_devices", count)
    except RuntimeError:  # JAX already runs: best effort only
      return None
    return count
  count = checks.positive_int("mesh.cpu_devices", count)
  try:
    jax.config.update("jax_num_cpu_devices", count)
  except RuntimeError:
    running = len(jax.devices("cpu"))
    if running != count:
      raise ValueError(
          f"mesh.cpu_devices={count}, but JAX already runs with {running} "
          f"CPU device(s) in this process; set it before any JAX work (or "
          f"start Python with JAX_NUM_CPU_DEVICES={count})") from None
  return count


def _checked_layout(layout: Any, name: str) -> str:
  if layout not in BANK_LAYOUTS:
    raise ValueError(f"{name} must be one of {BANK_LAYOUTS}, got {layout!r}")
  return layout


def bank_layout(config: Any) -> str:
  """``config.mesh.bank`` (default ``"auto"``), checked."""
  return _checked_layout((config.get("mesh") or {}).get("bank") or "auto",
                         "mesh.bank")


def is_primary() -> bool:
  """Whether this is process 0, the one that writes the run's files."""
  return jax.process_index() == 0


def mesh_devices() -> list:
  """The devices a mesh spans: the local ones in one process; in several,
  every process's, ordered by process (so that each process holds one
  contiguous block of a batch's rows)."""
  if jax.process_count() == 1:
    return list(jax.local_devices())
  return sorted(jax.devices(), key=lambda d: (d.process_index, d.id))


def make_mesh(config: Any, devices: list | None = None) -> Mesh | None:
  """The ``("data", "fsdp")`` mesh of ``config.mesh``, or ``None`` on one device.

  ``config.mesh.data`` (``None``: the devices left after ``fsdp``) and
  ``config.mesh.fsdp`` (default 1), over :func:`mesh_devices` (every
  process's devices in a multi-process run). ``None`` is returned when the
  mesh would hold one device, so the single-device path stays as it is.

  Raises:
    ValueError: the mesh needs more devices than there are, a size is not
      a positive integer, or (several processes) it leaves devices out.
  """
  settings = dict(config.get("mesh") or {})
  devices = list(mesh_devices() if devices is None else devices)
  fsdp = checks.positive_int("mesh.fsdp", settings.get("fsdp") or 1)
  data = settings.get("data")
  data = (len(devices) // fsdp if data is None
          else checks.positive_int("mesh.data", data))
  if data < 1 or data * fsdp > len(devices):
    raise ValueError(
        f"mesh.data={settings.get('data')} x mesh.fsdp={fsdp} needs "
        f"{max(data, 1) * fsdp} devices, but {len(devices)} are available "
        f"({devices[0].platform})")
  if jax.process_count() > 1 and data * fsdp != len(devices):
    raise ValueError(
        f"mesh.data={data} x mesh.fsdp={fsdp} must use all {len(devices)} "
        f"devices of the {jax.process_count()} processes (leave mesh.data "
        f"unset)")
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


def _bank_rows(mesh: Mesh, layout: str) -> bool:
  if _checked_layout(layout, "bank layout") == "auto":
    return mesh.devices.flat[0].platform != "cpu"
  return layout == "rows"


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


def state_shardings(state: Any, mesh: Mesh, bank: str = "auto") -> Any:
  """A pytree of shardings for a :class:`~nngk_jax.state.TrainState`.

  ``bank``: the layout of ``state.bank``'s arrays (:data:`BANK_LAYOUTS`;
  :func:`bank_layout` reads it from the config). Split by rows, an array
  whose row count the devices do not divide stays whole.
  """
  shardings = jax.tree_util.tree_map(
      lambda leaf: _fsdp_or_replicated(mesh, leaf), state)
  if getattr(state, "bank", None) is not None:
    rows = _bank_rows(mesh, bank)
    shardings = shardings.replace(bank=jax.tree_util.tree_map(
        lambda leaf: (_rows_or_replicated(mesh, leaf) if rows
                      else replicated(mesh)), state.bank))
  # The step counter and the PRNG key stay whole on every device.
  return shardings.replace(step=replicated(mesh), rng=replicated(mesh))


def _put_global(leaf: Any, sharding: NamedSharding) -> Any:
  """``leaf`` (the same value in every process) on a multi-process sharding.

  ``jax.device_put`` takes a host array to a sharding over other processes'
  devices, but not an array on this process's devices: those go through
  the host (a global array is resharded as it is).
  """
  if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
    return jax.device_put(leaf, sharding)
  if isinstance(leaf, jax.Array) and jax.dtypes.issubdtype(
      leaf.dtype, jax.dtypes.prng_key):
    return jax.random.wrap_key_data(
        _put_global(jax.random.key_data(leaf), sharding),
        impl=jax.random.key_impl(leaf))
  return jax.device_put(np.asarray(leaf), sharding)


def place_state(state: Any, mesh: Mesh | None, bank: str = "auto") -> Any:
  """``state`` on the mesh's devices (unchanged without a mesh).

  In a multi-process run every process passes the same values (the same
  seed, the same refreshed bank, the same restored checkpoint). ``bank``:
  as in :func:`state_shardings`.
  """
  if mesh is None:
    return state
  shardings = state_shardings(state, mesh, bank)
  if jax.process_count() == 1:
    return jax.device_put(state, shardings)
  return jax.tree_util.tree_map(_put_global, state, shardings)


def process_shard(mesh: Mesh | None, rows: int) -> tuple[int, int]:
  """``(index, count)``: this process reads block ``index`` of ``count``
  equal contiguous blocks of each ``rows``-row global batch.

  ``(0, 1)`` (the whole batch) in a single process. Otherwise the block is
  the rows the mesh's batch sharding puts on this process's devices.

  Raises:
    ValueError: ``rows`` does not split over the devices, or this process's
      rows are not one such block (a mesh not built by :func:`make_mesh`).
  """
  if mesh is None or jax.process_count() == 1:
    return 0, 1
  size = mesh.devices.size
  if rows % size:
    raise ValueError(f"a batch of {rows} rows does not split over {size} "
                     f"devices; make batch_size a multiple of {size}")
  slices = batch_sharding(mesh).addressable_devices_indices_map((rows,))
  starts = sorted(index[0].start or 0 for index in slices.values())
  per_device = rows // size
  start, block = starts[0], per_device * len(starts)
  if (starts != list(range(start, start + block, per_device))
      or start % block or rows % block):
    raise ValueError(
        f"process {jax.process_index()} holds rows starting at {starts} of "
        f"a {rows}-row batch: not one contiguous block (build the mesh "
        f"with parallel.make_mesh)")
  return start // block, rows // block


def gather_blocks(local: np.ndarray) -> np.ndarray:
  """Every process's ``local`` array, stacked in process order.

  ``local`` must have the same shape in every process
  (``multihost_utils.process_allgather``). In one process: ``local[None]``.

  Returns:
    ``[num_processes, *local.shape]``.
  """
  if jax.process_count() == 1:
    return np.asarray(local)[None]
  return np.asarray(multihost_utils.process_allgather(np.asarray(local)))


def any_process(flag: bool) -> bool:
  """Whether ``flag`` is true in any process (``flag`` itself in one)."""
  if jax.process_count() == 1:
    return bool(flag)
  return bool(np.any(multihost_utils.process_allgather(np.asarray(bool(flag)))))


def broadcast_from_primary(tree: Any) -> Any:
  """Process 0's ``tree`` of NumPy arrays, in every process.

  Every process passes arrays of the same shapes and dtypes (the others'
  values are ignored; ``multihost_utils.broadcast_one_to_all``). In one
  process ``tree`` is returned as it is.
  """
  if jax.process_count() == 1:
    return tree
  received = multihost_utils.broadcast_one_to_all(tree)
  return jax.tree_util.tree_map(
      lambda new, old: np.asarray(new).astype(np.asarray(old).dtype),
      received, tree)


def fetch(tree: Any) -> Any:
  """A host (NumPy) copy of ``tree``'s arrays, whole in every process.

  Arrays split over several processes' devices are all-gathered
  (``multihost_utils.process_allgather``); others are copied
  (``jax.device_get``).
  """
  def one(leaf):
    if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
      return np.asarray(multihost_utils.process_allgather(leaf, tiled=True))
    return jax.device_get(leaf)
  return jax.tree_util.tree_map(one, tree)


def shard_batch(batch: dict, mesh: Mesh | None) -> dict:
  """A host batch on the mesh: arrays with the batch's leading axis split
  (those whose first axis is the batch's), the rest replicated.

  In several processes ``batch`` holds this process's block of the global
  batch's rows (:func:`process_shard`); the global arrays are assembled
  from every process's block (``jax.make_array_from_process_local_data``),
  and the replicated arrays must be the same in every process.

  Raises:
    ValueError: the batch size does not divide evenly over the devices.
  """
  if mesh is None:
    return batch
  size = mesh.devices.size
  rows = np.shape(batch["image"])[0]
  processes = jax.process_count()
  if (rows * processes) % size:
    raise ValueError(f"a batch of {rows * processes} rows does not split "
                     f"over {size} devices; make batch_size a multiple of "
                     f"{size}")
  split, whole = batch_sharding(mesh), replicated(mesh)
  if processes == 1:
    return {key: jax.device_put(
        value, split if np.ndim(value) and np.shape(value)[0] == rows
        else whole) for key, value in batch.items()}
  placed = {}
  for key, value in batch.items():
    value = np.asarray(value)
    if value.ndim and value.shape[0] == rows:
      placed[key] = jax.make_array_from_process_local_data(
          split, value, (rows * processes,) + value.shape[1:])
    else:
      placed[key] = jax.make_array_from_process_local_data(whole, value)
  return placed

r"""The centre bank: NNGK's kernel centres as one component.

Every training embedding is a Gaussian kernel centre (methods.md §1). A
:class:`CentreBank` owns everything about those centres:

* their **arrays**, a :class:`BankState` pytree kept in the train state and
  checkpointed with it: ``centres`` ``[N, D]`` (the training split embedded at
  the last refresh; no gradient flows into them) and ``labels`` ``[N]``;
* their **trainable parameters**, ``params["bank"]`` in the train state:
  the per-centre log-weights :math:`\theta_i` (:math:`w_i = e^{\theta_i}`),
  trained by the one optimiser of the run with their own learning rate
  (:meth:`CentreBank.optimizer`, placed by :func:`nngk_jax.state.make_optimizer`);
* the **neighbour graph** over the centres and its backend (host side,
  PyNNDescent or exact; rebuilt after each refresh and on resume, never
  saved). With ``background_graph``, a rebuild after a refresh runs in a
  worker thread while training goes on with the previous graph; the
  finished graph is swapped in whole at the next step boundary (the next
  :meth:`CentreBank.batch_extras`), never a half-built one;
* its **schedule** (refresh every ``refresh_every`` epochs) and its
  **statistics** (seconds, share of centres without a same-class neighbour,
  spread of the log-weights) for the run's history.

The trainer knows nothing of centres: an objective that needs a bank builds
one through its ``make_bank`` hook (:mod:`nngk_jax.objectives`), and the loop
calls four methods, one data flow each::

    refresh   (host, start of an epoch)  embed train split -> centres -> graph
    batch_extras  (host, every batch)    batch["index"] -> neighbour rows
    view          (in jit, every step)   state.bank, params["bank"] -> BankView
    after_step    (in jit, every step)   optional update of the batch's centres

Room for the review's extensions, each a subclass overriding a method or two:
trainable centres (impostor networks: move ``centres`` into
:meth:`init_params` and read them in :meth:`view`), centres added and dropped
(continual learning: a new :class:`BankState` of another size from
:meth:`refresh`), a compressed store (OPQ: codes in the state, decoded in
:meth:`view`).
"""

from __future__ import annotations

import concurrent.futures
import threading
import time
from typing import Any, Callable, NamedTuple

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from nngk_jax import checks
from nngk_jax import compress as compresslib
from nngk_jax import neighbours as neighbourlib
from nngk_jax import parallel

__all__ = ["BankState", "BankView", "CentreBank", "has_positive",
           "positive_share", "update_batch_centres"]


@flax.struct.dataclass
class BankState:
  """The bank's arrays in the train state (checkpointed, donated by the step).

  Attributes:
    centres: ``[N, D]`` float32 stored embeddings of the training split.
    labels: ``[N]`` int32 their labels.
  """

  centres: jax.Array
  labels: jax.Array


class BankView(NamedTuple):
  """What a loss reads from the bank in one step.

  Attributes:
    centres: ``[N, D]`` kernel centres (gradient stopped for a stored bank).
    labels: ``[N]`` int labels.
    log_weights: ``[N]`` trainable :math:`\\theta`, or ``None`` (all
      weights 1).
    neighbour_idx: ``[batch, width]`` rows of ``centres`` holding each
      example's neighbours, or ``None``: the batch's graph rows
      (``batch["neighbour_idx"]``). A bank that hands the loss only the
      rows a step touches (trainable centres) remaps them here.
    own_idx: ``[batch]`` the row of each example's own centre, or ``None``:
      ``batch["index"]``.
  """

  centres: jax.Array
  labels: jax.Array
  log_weights: jax.Array | None
  neighbour_idx: jax.Array | None = None
  own_idx: jax.Array | None = None

  def rows(self, batch: dict[str, jax.Array]) -> tuple[jax.Array, jax.Array]:
    """``(neighbour rows [batch, width], own rows [batch])`` of ``centres``
    for the batch's examples: the view's remapped rows, else the batch's."""
    return (batch["neighbour_idx"] if self.neighbour_idx is None
            else self.neighbour_idx,
            batch.get("index") if self.own_idx is None else self.own_idx)


def update_batch_centres(centres: jax.Array, embeddings: jax.Array,
                         index: jax.Array, valid: jax.Array, *,
                         momentum: float) -> jax.Array:
  r"""The bank with the batch's own centres moved toward their new embeddings.

  .. math::
    c_{i_b} \leftarrow m\, c_{i_b} + (1 - m)\, f(x_b)

  for every valid row ``b`` of the batch (``index[b]`` its training
  example). Between full refreshes this keeps the centres of the examples
  just seen current, as the memory banks of scalable NCA (Wu et al., 2018)
  do; ``momentum = 0`` replaces them outright. Config:
  ``nngk.batch_centre_momentum`` (``None``: off, the paper's weak update).

  Args:
    centres: ``[N, D]`` bank.
    embeddings: ``[batch, D]`` the batch's embeddings (no gradient).
    index: ``[batch]`` int rows of ``centres``; distinct among valid rows.
    valid: ``[batch]`` bool; invalid rows leave the bank as it is.
    momentum: weight of the old centre, in ``[0, 1]``.

  Returns:
    ``[N, D]`` the updated bank.

  Examples:
    >>> import jax.numpy as jnp
    >>> bank = update_batch_centres(jnp.zeros((3, 1)), jnp.ones((2, 1)),
    ...     jnp.array([2, 0]), jnp.array([True, False]), momentum=0.5)
    >>> bank[:, 0].tolist()
    [0.0, 0.0, 0.5]
  """
  old = centres[index]
  new = momentum * old + (1.0 - momentum) * embeddings.astype(centres.dtype)
  return centres.at[index].set(jnp.where(valid[:, None], new, old))


def has_positive(graph: neighbourlib.NeighbourGraph,
                 centre_labels: np.ndarray) -> np.ndarray:
  """``[N]`` bool: centre ``i`` has a same-class centre among its neighbours.

  Its mean complement is the history's ``missing_positive_fraction``.

  Examples:
    >>> import numpy as np
    >>> g = neighbourlib.NeighbourGraph(np.array([[1], [0], [0]], np.int32),
    ...                                 np.ones((3, 1), bool))
    >>> has_positive(g, np.array([0, 0, 1])).tolist()
    [True, True, False]
  """
  same = centre_labels[graph.indices] == centre_labels[:, None]
  return (same & graph.mask).any(axis=1)


def positive_share(graph: neighbourlib.NeighbourGraph,
                   centre_labels: np.ndarray) -> float:
  r"""Mean share of a centre's same-class centres among its K nearest.

  .. math::
    \frac{1}{|I|} \sum_{i \in I}
      \frac{|\{j \in N_K(i) : y_j = y_i\}|}{n_{y_i} - 1}

  with :math:`n_c` the size of class :math:`c` and :math:`I` the centres
  whose class has another member (``nan`` when there is none). Only the K
  nearest columns count, not the appended same-class ones. It is the reach
  of the loss: a same-class centre outside :math:`N_K(i)` exerts no pull on
  example ``i``. Near 1 when each class is one compact cluster; it falls
  when classes split into groups farther apart than the K-th neighbour
  (the cliff of docs/sigma_cliff.md). The history's ``positive_share``.

  Examples:
    >>> import numpy as np
    >>> g = neighbourlib.NeighbourGraph(np.array([[1], [0], [0]], np.int32),
    ...                                 np.ones((3, 1), bool))
    >>> positive_share(g, np.array([0, 0, 0]))  # 1 of 2 others each
    0.5
  """
  k = graph.indices.shape[1] - graph.num_same_class
  same = ((centre_labels[graph.indices[:, :k]] == centre_labels[:, None])
          & graph.mask[:, :k])
  others = np.bincount(centre_labels)[centre_labels] - 1
  keep = others > 0
  if not keep.any():
    return float("nan")
  return float(np.mean(same.sum(axis=1)[keep] / others[keep]))


class CentreBank:
  """Kernel centres, their labels, weights and neighbour graph (module doc).

  Args:
    labels: ``[N]`` int labels of the training split (one centre each).
    dim: embedding size ``D``.
    k: neighbours per example in each batch (``None``: no graph, e.g. vMF,
      which reads the whole bank).
    graph_backend: ``nngk_jax.neighbours`` backend name, or ``"auto"``
      (:func:`nngk_jax.neighbours.resolve_backend`).
    refresh_every: epochs between refreshes (>= 1).
    num_same_class: nearest same-class centres appended to each graph row.
    batch_centre_momentum: ``None`` (off) or the momentum of
      :func:`update_batch_centres`, applied after every step.
    log_weights: train per-centre log-weights (``False``: all weights 1).
    weights_learning_rate: their Adam learning rate.
    seed: seed of the approximate graph.
    warm_up: with PyNNDescent, compile it in a background thread at once.
    background_graph: rebuild the graph after a refresh in a worker thread
      while training continues on the previous graph, swapped in at a step
      boundary (``"auto"``: with PyNNDescent, where a build takes seconds,
      and only when the step runs on an accelerator; on a CPU the thread
      competes with the step for the same cores).
      The first graph of a run (and of a resumed run) is always built at
      once. Off, a run is reproducible to the bit; on, the step at which the
      new graph arrives depends on timing (it is recorded in the history as
      ``graph_swap_step``).
  """

  def __init__(self, labels: np.ndarray, dim: int, *, k: int | None = None,
               graph_backend: str = "pynndescent", refresh_every: int = 1,
               num_same_class: int = 0,
               batch_centre_momentum: float | None = None,
               log_weights: bool = False,
               weights_learning_rate: float = 1e-3, seed: int = 0,
               warm_up: bool = True, background_graph: bool | str = False):
    self.labels = np.asarray(labels, np.int32)
    self.dim = checks.positive_int("embedding size", dim)
    if k is not None:
      checks.positive_int("nngk.k", k)
      if k >= len(self.labels):
        raise ValueError(
            f"nngk.k={k} neighbours need a bank of more than {k} centres, but "
            f"the training split has {len(self.labels)} images; lower nngk.k")
    self.k = k
    # "auto": exact up to neighbours.AUTO_EXACT_MAX_CENTRES, else PyNNDescent.
    self.graph_backend = neighbourlib.resolve_backend(graph_backend,
                                                      len(self.labels))
    if k is not None and self.graph_backend == "pynndescent" and warm_up:
      # numba compiles NN-descent (~45 s per process) while the first
      # refresh embeds the training split; the first build then waits
      # only for what is left of it.
      threading.Thread(target=neighbourlib.warm_up, daemon=True,
                       name="pynndescent-warm-up").start()
    self.refresh_every = checks.positive_int("nngk.refresh_every",
                                             refresh_every)
    self.num_same_class = num_same_class
    if batch_centre_momentum is not None and not (
        0.0 <= batch_centre_momentum <= 1.0):
      raise ValueError(f"nngk.batch_centre_momentum must lie in [0, 1] (or be "
                       f"None), got {batch_centre_momentum}")
    self.batch_centre_momentum = batch_centre_momentum
    self.learns_weights = bool(log_weights)
    if self.learns_weights and not weights_learning_rate > 0:
      raise ValueError(f"nngk.weights_learning_rate must be positive, got "
                       f"{weights_learning_rate}")
    self.weights_learning_rate = weights_learning_rate
    self.seed = seed
    if background_graph == "auto":
      # Only where the step runs on an accelerator: on a CPU the build's
      # thread takes cores from the step, and the epoch got slower than with
      # the build in line (experiments/bench_graph.py --swap: 17% against
      # 11% exposed at N = 50,000 on 2 cores).
      background_graph = (self.graph_backend == "pynndescent"
                          and jax.default_backend() != "cpu")
    if not isinstance(background_graph, bool):
      raise ValueError(f"nngk.background_graph must be True, False or 'auto', "
                       f"got {background_graph!r}")
    self.background_graph = background_graph and k is not None
    self.graph: neighbourlib.NeighbourGraph | None = None
    self._has_positive: np.ndarray | None = None
    self._pending: concurrent.futures.Future | None = None
    self._executor: concurrent.futures.ThreadPoolExecutor | None = None
    self._steps_since_submit = 0
    self._swap_record: dict[str, float] = {}

  @classmethod
  def from_config(cls, config: Any, labels: np.ndarray, dim: int, *,
                  graph: bool = True, weights: bool = True) -> "CentreBank":
    """The bank of ``config.nngk`` (``graph``/``weights``: what the loss uses)."""
    nngk = config.nngk
    return cls(labels, dim, k=nngk.k if graph else None,
               graph_backend=nngk.graph_backend,
               refresh_every=nngk.refresh_every,
               num_same_class=nngk.get("num_same_class", 0),
               batch_centre_momentum=nngk.get("batch_centre_momentum"),
               log_weights=weights and nngk.get("learn_weights", True),
               weights_learning_rate=nngk.get("weights_learning_rate", 1e-3),
               seed=config.seed,
               background_graph=nngk.get("background_graph", False))

  @property
  def num_centres(self) -> int:
    return len(self.labels)

  # -- state, parameters and optimiser --------------------------------------

  def init_state(self) -> BankState:
    """Zero centres (filled by the first refresh) and the labels."""
    return BankState(
        centres=jnp.zeros((self.num_centres, self.dim), jnp.float32),
        labels=jnp.asarray(self.labels))

  def init_params(self) -> dict[str, jax.Array]:
    """The bank's trainable parameters (``params["bank"]``), maybe empty."""
    if not self.learns_weights:
      return {}
    return {"log_weights": jnp.zeros((self.num_centres,), jnp.float32)}

  def optimizer(self) -> optax.GradientTransformation:
    """The transform of ``params["bank"]``: Adam at its own learning rate."""
    return optax.adam(self.weights_learning_rate)

  # -- host side -------------------------------------------------------------

  def due(self, epoch: int) -> bool:
    """Whether the centres are refreshed at the start of ``epoch`` (0-based)."""
    return epoch % self.refresh_every == 0

  def graph_due(self, epoch: int) -> bool:
    """Whether the graph is rebuilt at ``epoch`` though the centres were not
    re-embedded (centres that move by themselves); here never: the graph
    follows the refreshes."""
    del epoch
    return False

  def refresh(self, state: BankState, epoch: int,
              embed_train: Callable[[], np.ndarray]) -> tuple[BankState, dict]:
    """Start of ``epoch``: refresh the centres when due, then the graph.

    Args:
      state: the bank's arrays.
      epoch: 0-based epoch about to run.
      embed_train: returns the ``[N, D]`` eval-mode embeddings of the
        training split, in split order (called only when a refresh is due).

    Returns:
      ``(state, record)``: the new arrays and what happened, for the
      run's history (``refresh_seconds``, ``graph_seconds``,
      ``missing_positive_fraction``, ``positive_share``).

    Raises:
      checks.TrainingDivergedError: an embedding is NaN or infinite.
    """
    record: dict[str, float] = {}
    rebuild = self.graph_due(epoch)
    if self.due(epoch):
      start = time.perf_counter()
      centres = np.asarray(embed_train())
      checks.check_finite_rows(
          "centre embeddings", centres, f"at the refresh of epoch {epoch + 1}",
          error=checks.TrainingDivergedError, advice=checks.DIVERGED_ADVICE)
      if centres.shape != (self.num_centres, self.dim):
        raise ValueError(f"embed_train returned shape {centres.shape}, "
                         f"expected {(self.num_centres, self.dim)}")
      state = state.replace(centres=jnp.asarray(centres, jnp.float32))
      record["refresh_seconds"] = time.perf_counter() - start
      rebuild = True
    if self.k is None:
      return state, record
    if self.graph is not None and rebuild and self.background_graph:
      # Training goes on with the previous graph; batch_extras swaps.
      self._submit(np.array(state.centres))
      record["graph_seconds"] = 0.0  # exposed: none
    elif self.graph is None or rebuild:  # first graph, resume, or in line
      self._cancel_pending()
      graph, positive, seconds = self._build_shared(np.asarray(state.centres))
      self._install(graph, positive)
      record["graph_seconds"] = seconds
      record.update(self._graph_record(graph, positive))
    return state, record

  def _build(self, centres: np.ndarray):
    """``(graph, has_positive, seconds)`` over ``centres`` (any thread)."""
    start = time.perf_counter()
    graph = neighbourlib.build_neighbour_graph(
        centres, k=self.k, backend=self.graph_backend,
        centre_labels=self.labels, num_same_class=self.num_same_class,
        seed=self.seed)
    return graph, has_positive(graph, self.labels), time.perf_counter() - start

  def _build_shared(self, centres: np.ndarray):
    """:meth:`_build`, the same graph in every process of a multi-process run.

    The exact backend computes the same graph from the same centres in each
    process, so each builds its own. PyNNDescent's graph depends on numba's
    thread count (40,000 random points, k=16: 1 and 2 threads gave two
    graphs; the same count, the same graph), so process 0 builds it and
    broadcasts it. (A background build, :meth:`_submit`, stays per process:
    no collective runs outside the main thread. Each process reads only its
    own rows' neighbours, so graphs that differ by a few approximate
    neighbours leave the run consistent.)
    """
    if jax.process_count() == 1 or self.graph_backend == "exact":
      return self._build(centres)
    start = time.perf_counter()
    shape = (self.num_centres, self.k + self.num_same_class)
    arrays = {"indices": np.zeros(shape, np.int32),
              "mask": np.zeros(shape, bool)}
    if parallel.is_primary():
      graph, _, _ = self._build(centres)
      arrays = {"indices": graph.indices, "mask": graph.mask}
    arrays = parallel.broadcast_from_primary(arrays)
    graph = neighbourlib.NeighbourGraph(arrays["indices"], arrays["mask"],
                                        self.num_same_class)
    return graph, has_positive(graph, self.labels), time.perf_counter() - start

  def _install(self, graph, positive) -> None:
    self.graph, self._has_positive = graph, positive

  def _graph_record(self, graph, positive) -> dict[str, float]:
    """The history's statistics of a newly built graph."""
    return {"missing_positive_fraction": float(np.mean(~positive)),
            "positive_share": positive_share(graph, self.labels)}

  def _submit(self, centres: np.ndarray) -> None:
    """Starts a background build.

    A build still running from the previous refresh is waited for and
    installed first, so the graph never lags more than one refresh behind
    (a build slower than an epoch is then partly exposed).
    """
    self.wait_for_graph()
    if self._executor is None:
      self._executor = concurrent.futures.ThreadPoolExecutor(
          max_workers=1, thread_name_prefix="nngk-graph")
    self._pending = self._executor.submit(self._build, centres)
    self._steps_since_submit = 0

  def _cancel_pending(self) -> None:
    if self._pending is not None:
      self._pending.cancel()  # a running build finishes, unused
      self._pending = None

  def _swap_if_ready(self) -> None:
    """At a step boundary: installs a finished background graph, whole."""
    if self._pending is None:
      return
    if not self._pending.done():
      self._steps_since_submit += 1
      return
    future, self._pending = self._pending, None
    graph, positive, seconds = future.result()  # re-raises a failed build
    self._install(graph, positive)
    self._swap_record = {
        "graph_seconds_background": seconds,
        "graph_swap_step": self._steps_since_submit,
        **self._graph_record(graph, positive)}

  def wait_for_graph(self) -> None:
    """Blocks until a background build (if any) is installed."""
    if self._pending is not None:
      concurrent.futures.wait([self._pending])
      self._swap_if_ready()

  def graph_record(self) -> dict[str, float]:
    """What the last background rebuild did (seconds, the step it arrived
    at), once, for the epoch's record; empty if none arrived."""
    record, self._swap_record = self._swap_record, {}
    return record

  def graph_arrays(self) -> dict[str, np.ndarray] | None:
    """The current graph as arrays (saved with a mid-epoch checkpoint), or
    ``None`` without a graph."""
    if self.graph is None:
      return None
    return {"indices": self.graph.indices, "mask": self.graph.mask,
            "num_same_class": np.asarray(self.graph.num_same_class)}

  def resume_graph(self, arrays: dict[str, np.ndarray]) -> None:
    """Takes back the graph of :meth:`graph_arrays`: a run resumed
    mid-epoch finishes the epoch with the graph it started it with."""
    self._cancel_pending()
    graph = neighbourlib.NeighbourGraph(
        np.asarray(arrays["indices"], np.int32),
        np.asarray(arrays["mask"], bool), int(arrays["num_same_class"]))
    self._install(graph, has_positive(graph, self.labels))

  def batch_extras(self, index: np.ndarray) -> dict[str, np.ndarray]:
    """Per-batch arrays for the loss: graph rows of the batch's examples.

    Returns ``neighbour_idx`` ``[batch, width]`` int32, ``neighbour_mask``
    ``[batch, width]`` bool and ``has_positive`` ``[batch]`` bool (a
    same-class centre is among the row); empty without a graph.
    """
    if self.k is None:
      return {}
    self._swap_if_ready()
    if self.graph is None:
      raise RuntimeError("CentreBank.batch_extras before refresh(): no graph")
    index = np.asarray(index)
    neighbour_idx, neighbour_mask = self.graph.rows(index)
    return {"neighbour_idx": neighbour_idx, "neighbour_mask": neighbour_mask,
            "has_positive": self._has_positive[index]}

  def statistics(self, params: dict[str, Any]) -> dict[str, float]:
    """Spread of the log-weights :math:`\\theta` in ``params["bank"]``, and
    what a background graph rebuild did since the last call."""
    record = self.graph_record()
    theta = self.log_weights(params)
    if theta is None:
      return record
    return {**record, "log_weight_std": float(theta.std()),
            "log_weight_min": float(theta.min()),
            "log_weight_max": float(theta.max())}

  # -- inside jit ------------------------------------------------------------

  def trainable_rows(self, state: BankState,
                     batch: dict[str, jax.Array]) -> Any:
    """Bank arrays the step differentiates besides ``params`` (here none).

    A bank whose centres are trained outside the optimiser of ``params``
    (impostor networks' sparse updates) returns the rows this batch
    touches; the step passes them back to :meth:`view` and their gradient
    to :meth:`after_step`.
    """
    del state, batch
    return None

  def view(self, state: BankState, params: dict[str, Any], rows: Any = None,
           batch: dict[str, jax.Array] | None = None) -> BankView:
    """What the loss reads: stored centres (no gradient) and weights.

    ``rows`` is what :meth:`trainable_rows` returned, ``batch`` the step's
    batch; this bank needs neither.
    """
    del rows, batch
    return BankView(
        centres=jax.lax.stop_gradient(state.centres), labels=state.labels,
        log_weights=(params["bank"]["log_weights"] if self.learns_weights
                     else None))

  def after_step(self, state: BankState, embeddings: jax.Array,
                 batch: dict[str, jax.Array],
                 row_grads: Any = None) -> BankState:
    """The batch's centres after a step (unchanged unless momentum is set).

    ``row_grads`` is the gradient of the loss with respect to
    :meth:`trainable_rows` (``None`` here).
    """
    del row_grads
    if self.batch_centre_momentum is None:
      return state
    return state.replace(centres=update_batch_centres(
        state.centres, jax.lax.stop_gradient(embeddings), batch["index"],
        batch["valid"], momentum=self.batch_centre_momentum))

  def evaluation_centres(self, state: BankState) -> np.ndarray | None:
    """Centres the kernel classifier votes with at evaluation, or ``None``:
    the training split embedded afresh by the trained network (NNGK)."""
    del state
    return None

  def compress(self, state: BankState, params: dict[str, Any], *,
               bytes_per_centre: int = 16, **options):
    """The bank's centres as OPQ codes (:func:`nngk_jax.compress.compress`).

    The stored centres (as of the last refresh; for impostors the trained
    ones), their labels and learned log-weights, compressed to
    ``bytes_per_centre`` bytes each; ``options`` go to
    :func:`nngk_jax.compress.compress`.

    Returns:
      a :class:`nngk_jax.compress.CompressedBank`.
    """
    return compresslib.compress(
        np.asarray(state.centres), self.labels,
        bytes_per_centre=bytes_per_centre,
        log_weights=self.log_weights(params), **options)

  def log_weights(self, params: dict[str, Any]) -> np.ndarray | None:
    """Host copy of the log-weights (``None`` when not learned)."""
    if not self.learns_weights:
      return None
    return np.asarray(parallel.fetch(params["bank"]["log_weights"]))

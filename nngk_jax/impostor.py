r"""Impostor networks: the centre bank strategies of Lebedev et al.

Lebedev, Babenko and Lempitsky (arXiv:1806.05217; methods.md §2) keep one
centre per training example, like NNGK, and vote over its K nearest with
unit weights. What differs is where the centres come from; each is an
:class:`ImpostorBank` ``variant``:

* ``"tied"``: :math:`c_i = f(x_i)`, re-embedded every
  ``nngk.refresh_every`` epochs: NNGK without per-centre weights.
* ``"fixed"``: :math:`c_i = f_{\theta_0}(x_i)`, embedded once by the
  initial network and never refreshed (the graph is built once).
* ``"loose"``: trainable centres initialised from the initial network's
  embeddings and tied to the data by
  :math:`\frac{\lambda}{N}\sum_i \lVert f(x_i) - c_i \rVert^2`
  (:func:`nngk_jax.loss.impostor_loss`); the graph is rebuilt from the
  current impostors every ``nngk.refresh_every`` epochs. The paper reports
  it best. An infinite tie (``impostor.tie=inf``) pins the centres to the
  embeddings: that is the tied variant, and the bank runs it as such.

Loose centres are trained **sparsely**: a step differentiates only the rows
its batch touches (the neighbour lists and the batch's own centres,
``batch * (width + 1)`` rows), sums the gradients of repeated rows, and
updates those rows in place with their own optimiser
(:func:`sparse_adam_update`, Adam's "lazy" form, or plain SGD). The
``[N, D]`` centres, and Adam's two ``[N, D]`` moments, live in the bank's
state (:class:`ImpostorState`), never in ``params``: no dense ``[N, D]``
gradient, optimiser pass or parameter norm is computed per step.
``impostor.sparse=False`` differentiates the whole array instead (the
dense reference, ``experiments/bench_impostor.py`` measures both).

Config (``config.impostor``): ``variant``, ``tie`` (:math:`\lambda`),
``learning_rate`` and ``optimizer`` (``"adam"`` or ``"sgd"``) of the loose
centres, ``sparse``. Kernel width, K, graph backend and refresh schedule
are read from ``config.nngk`` as for NNGK.
"""

from __future__ import annotations

import math
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np

from nngk_jax import bank as banklib
from nngk_jax import geometry
from nngk_jax import parallel

__all__ = ["ImpostorBank", "ImpostorState", "OPTIMIZERS", "VARIANTS",
           "sparse_adam_update", "tie_weight"]

VARIANTS = ("tied", "fixed", "loose")
OPTIMIZERS = ("adam", "sgd")
ADAM_B1, ADAM_B2, ADAM_EPS = 0.9, 0.999, 1e-8


@flax.struct.dataclass
class ImpostorState(banklib.BankState):
  """Loose impostors: the centres and their optimiser's state.

  Attributes:
    centres: ``[N, D]`` the impostors :math:`c_i` (trained).
    labels: ``[N]`` int32.
    mu: ``[N, D]`` Adam's first moment (zeros with SGD).
    nu: ``[N, D]`` Adam's second moment (zeros with SGD).
    count: ``[]`` int32 number of centre updates so far (Adam's bias
      correction uses it, as optax's Adam counts its steps).
  """

  mu: jax.Array
  nu: jax.Array
  count: jax.Array


def sparse_adam_update(centres: jax.Array, mu: jax.Array, nu: jax.Array,
                       count: jax.Array, rows: jax.Array, grads: jax.Array, *,
                       learning_rate: float, b1: float = ADAM_B1,
                       b2: float = ADAM_B2, eps: float = ADAM_EPS):
  r"""Adam on the given rows only (the "lazy" Adam of sparse embeddings).

  For each row :math:`r` in ``rows`` with gradient :math:`g_r`, with
  :math:`t` = ``count + 1``:

  .. math::
    m_r \leftarrow \beta_1 m_r + (1-\beta_1) g_r, \quad
    v_r \leftarrow \beta_2 v_r + (1-\beta_2) g_r^2, \quad
    c_r \leftarrow c_r - \eta\,
      \frac{m_r / (1-\beta_1^t)}{\sqrt{v_r / (1-\beta_2^t)} + \epsilon}

  Other rows, and their moments, are left as they are (dense Adam would
  decay their moments; the two agree when every row is in ``rows``, as in
  ``optax.adam``). Rows must be distinct; a row equal to ``N`` (the fill
  value of :func:`jnp.unique`) is ignored.

  Args:
    centres, mu, nu: ``[N, D]``.
    count: ``[]`` int updates so far.
    rows: ``[R]`` int distinct rows (or ``N``: padding).
    grads: ``[R, D]`` their gradients.
    learning_rate: :math:`\eta`.
    b1, b2, eps: Adam's constants (optax's defaults).

  Returns:
    ``(centres, mu, nu, count + 1)``.
  """
  t = (count + 1).astype(jnp.float32)
  m = b1 * mu.at[rows].get(mode="fill", fill_value=0.0) + (1 - b1) * grads
  v = (b2 * nu.at[rows].get(mode="fill", fill_value=0.0)
       + (1 - b2) * grads * grads)
  m_hat = m / (1 - b1 ** t)
  v_hat = v / (1 - b2 ** t)
  step = learning_rate * m_hat / (jnp.sqrt(v_hat) + eps)
  return (centres.at[rows].add(-step.astype(centres.dtype), mode="drop"),
          mu.at[rows].set(m, mode="drop"), nu.at[rows].set(v, mode="drop"),
          count + 1)


def tie_weight(variant: str, tie: float) -> float:
  """The :math:`\\lambda` the loss applies: a loose bank's finite tie, else
  0 (tied and fixed centres are not trained; an infinite tie is the tied
  variant, run as stored centres)."""
  return float(tie) if variant == "loose" and math.isfinite(tie) else 0.0


def _sum_repeated_rows(rows: jax.Array, grads: jax.Array, num_rows: int):
  """Distinct rows (padded with ``num_rows``) and their summed gradients."""
  unique, inverse = jnp.unique(rows, size=rows.shape[0], fill_value=num_rows,
                               return_inverse=True)
  summed = jax.ops.segment_sum(grads, inverse.reshape(-1),
                               num_segments=rows.shape[0])
  return unique, summed


class ImpostorBank(banklib.CentreBank):
  r"""Centres of an impostor network (module doc), one bank strategy.

  Args:
    labels: ``[N]`` training labels.
    dim: embedding size.
    variant: ``"tied"``, ``"fixed"`` or ``"loose"``.
    tie: :math:`\lambda \ge 0` of the loose variant (``inf``: tied).
    learning_rate: the loose centres' learning rate.
    optimizer: ``"adam"`` (lazy, :func:`sparse_adam_update`) or ``"sgd"``.
    sparse: update only the rows a step touches (``False``: the whole
      ``[N, D]`` array, the dense reference).
    on_sphere: the loss sees the loose centres L2-normalised,
      :math:`c_i / \lVert c_i \rVert`, as the embeddings of a network that
      normalises them (``model.normalize``); the stored parameters are
      free.
    **bank_kwargs: :class:`nngk_jax.bank.CentreBank`'s graph and schedule
      arguments (``k``, ``graph_backend``, ``refresh_every``,
      ``num_same_class``, ``seed``, ``warm_up``).
  """

  def __init__(self, labels: np.ndarray, dim: int, *, variant: str = "loose",
               tie: float = 1.0, learning_rate: float = 1e-3,
               optimizer: str = "adam", sparse: bool = True,
               on_sphere: bool = False, **bank_kwargs):
    if variant not in VARIANTS:
      raise ValueError(f"impostor.variant must be one of {VARIANTS}, got "
                       f"{variant!r}")
    if not (isinstance(tie, (int, float)) and tie >= 0):
      raise ValueError(f"impostor.tie must be a number >= 0 (inf: tied), got "
                       f"{tie!r}")
    if optimizer not in OPTIMIZERS:
      raise ValueError(f"impostor.optimizer must be one of {OPTIMIZERS}, got "
                       f"{optimizer!r}")
    if not learning_rate > 0:
      raise ValueError(f"impostor.learning_rate must be positive, got "
                       f"{learning_rate}")
    if bank_kwargs.get("k") is None:
      raise ValueError("an impostor bank needs a neighbour graph: set nngk.k")
    super().__init__(labels, dim, log_weights=False, **bank_kwargs)
    # An infinite tie pins c_i = f(x_i): the tied variant.
    self.variant = "tied" if variant == "loose" and math.isinf(tie) else variant
    self.tie = float(tie)
    self.learning_rate = learning_rate
    self.optimizer_name = optimizer
    self.sparse = bool(sparse)
    self.on_sphere = bool(on_sphere)

  @classmethod
  def from_config(cls, config: Any, labels: np.ndarray, dim: int,
                  **unused) -> "ImpostorBank":
    """The bank of ``config.impostor`` with ``config.nngk``'s graph."""
    del unused
    nngk, impostor = config.nngk, config.impostor
    return cls(labels, dim, variant=impostor.variant, tie=impostor.tie,
               learning_rate=impostor.learning_rate,
               optimizer=impostor.optimizer, sparse=impostor.sparse,
               on_sphere=config.model.get("normalize", False),
               k=nngk.k, graph_backend=nngk.graph_backend,
               refresh_every=nngk.refresh_every,
               num_same_class=nngk.get("num_same_class", 0), seed=config.seed)

  @property
  def trains_centres(self) -> bool:
    return self.variant == "loose"

  # -- state and schedule -----------------------------------------------------

  def init_state(self) -> banklib.BankState:
    base = super().init_state()
    if not self.trains_centres:
      return base
    zeros = jnp.zeros_like(base.centres)
    return ImpostorState(centres=base.centres, labels=base.labels, mu=zeros,
                         nu=jnp.zeros_like(zeros),
                         count=jnp.zeros((), jnp.int32))

  def due(self, epoch: int) -> bool:
    """Tied: every ``refresh_every`` epochs; fixed and loose: epoch 0 only
    (the initial network's embeddings)."""
    if self.variant == "tied":
      return super().due(epoch)
    return epoch == 0

  def graph_due(self, epoch: int) -> bool:
    """Loose impostors move every step: a new graph every
    ``refresh_every`` epochs."""
    return self.trains_centres and epoch % self.refresh_every == 0

  def evaluation_centres(self, state: banklib.BankState) -> np.ndarray | None:
    """Fixed and loose: the impostors themselves; tied: ``None`` (embed)."""
    if self.variant == "tied":
      return None
    centres = parallel.fetch(state.centres)  # whole, in every process
    if self.trains_centres and self.on_sphere:
      return np.asarray(geometry.l2_normalize(centres))
    return np.asarray(centres)

  # -- inside jit ---------------------------------------------------------------

  def _touched_rows(self, batch: dict[str, jax.Array]) -> jax.Array:
    """``[batch * width + batch]``: neighbour rows, then the own rows."""
    return jnp.concatenate([batch["neighbour_idx"].reshape(-1),
                            batch["index"].astype(jnp.int32)])

  def trainable_rows(self, state, batch):
    if not self.trains_centres:
      return None
    if not self.sparse:
      return state.centres
    return state.centres[self._touched_rows(batch)]

  def view(self, state, params, rows=None, batch=None) -> banklib.BankView:
    if not self.trains_centres:
      return super().view(state, params)
    if self.on_sphere:
      rows = geometry.l2_normalize(rows)
    if not self.sparse:
      return banklib.BankView(centres=rows, labels=state.labels,
                              log_weights=None)
    # The loss sees only the touched rows: neighbours at 0 .. B*W - 1,
    # each example's own centre after them.
    batch_size, width = batch["neighbour_idx"].shape
    touched = self._touched_rows(batch)
    num_neighbours = batch_size * width
    return banklib.BankView(
        centres=rows, labels=state.labels[touched], log_weights=None,
        neighbour_idx=jnp.arange(num_neighbours).reshape(batch_size, width),
        own_idx=num_neighbours + jnp.arange(batch_size))

  def after_step(self, state, embeddings, batch, row_grads=None):
    """Loose: one optimiser step on the centres the batch touched."""
    del embeddings
    if not self.trains_centres:
      return state
    if self.sparse:
      rows, grads = _sum_repeated_rows(self._touched_rows(batch), row_grads,
                                       self.num_centres)
    else:
      rows, grads = jnp.arange(self.num_centres), row_grads
    if self.optimizer_name == "sgd":
      return state.replace(
          centres=state.centres.at[rows].add(
              -self.learning_rate * grads, mode="drop"),
          count=state.count + 1)
    centres, mu, nu, count = sparse_adam_update(
        state.centres, state.mu, state.nu, state.count, rows, grads,
        learning_rate=self.learning_rate)
    return state.replace(centres=centres, mu=mu, nu=nu, count=count)

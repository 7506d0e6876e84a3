r"""The biased network: an NNGK layer inside the feature extractor, with a gate.

Seed 002 §5 (methods.md §4) proposes splitting a network in two, and letting
stored examples stand in for the second half when an input is close to them:

.. math::
  h = f_1(x), \qquad \phi = p(h), \qquad z_2 = f_2(h)

  z_1 = \frac{\sum_{i \in N_K(\phi)} z_i\, k(\phi, \phi_i)}
             {\sum_{i \in N_K(\phi)} k(\phi, \phi_i)}, \qquad
  g = \frac{1}{K} \sum_{i \in N_K(\phi)} k(\phi, \phi_i)

  z = g\, z_1 + (1 - g)\, z_2, \qquad y = \mathrm{clf}(z)

with the Gaussian kernel :math:`k(\phi, \phi_i) = \exp(-\lVert \phi - \phi_i
\rVert^2 / 2\sigma^2) \in (0, 1]`, so :math:`g \in [0, 1]`. (The seed writes
:math:`\phi = p(x)`; read here as :math:`p(h)`, the projector on the low-level
features.) At inference an input whose gate exceeds a threshold
:math:`\tau` skips :math:`f_2` and is classified from :math:`\mathrm{clf}(z_1)`
(:class:`EarlyExit`).

The pieces:

* :class:`BiasedNetwork`: four Flax modules, each with its own variables,
  ``f1`` (the first ``split`` blocks of :class:`nngk_jax.models.ConvNet`, its
  map not pooled), ``p`` (:class:`Projector`), ``f2`` (:class:`DeepStage`:
  the remaining blocks and a linear embedding head) and ``clf`` (linear).
  Separate modules let inference run ``f2`` on a subset of the batch.
* :func:`nearest_stored`, :func:`kernel_mix`, :func:`nngk_layer`,
  :func:`gated_mix`: the NNGK layer as pure, jit-able functions, kernels in
  log space.
* :func:`forward`, :func:`biased_loss`, :func:`make_train_step`,
  :func:`refresh_stored`, :func:`train`: training.
* :class:`EarlyExit` (with :func:`first_stage`, :func:`bucket_sizes`),
  :func:`second_stage`, :func:`plain_forward`, :func:`stage_flops`:
  inference with a real early exit, and its cost.

Choices (each an option of ``config.biased``; the measurements are in
``docs/results.md``, "Biased network"):

* **What** :math:`z_i` **stores** (``stored_z``): ``"z2"`` (default), the
  eval-mode :math:`f_2(f_1(x_i))` of the stored training example, the deep
  descriptor the layer stands in for; or ``"z"``, its gated mix against the
  bank just embedded (own row excluded).
* **Stored pairs are constants**: :math:`(\phi_i, z_i)` are the eval-mode
  outputs of the whole training split, recomputed every ``refresh_every``
  epochs (as NNGK's centres) and held beside the train state; no gradient
  reaches them. Gradients reach :math:`p` and :math:`f_1` through
  :math:`\phi` (in :math:`z_1`'s weights and the NNGK loss), :math:`f_2`
  through :math:`z_2`. A training example's own stored row is excluded
  from its neighbours.
* **The gate's gradient** (``gate_gradient``, default off): with it, the
  cross-entropy reaches :math:`\phi` through :math:`g` too, as the seed's
  formula reads. On the glyphs that pulled every :math:`\phi` onto its
  neighbours until :math:`g = 1` for every input (accuracy 0.007), so the
  default mixes with :math:`\operatorname{sg}(g)`.
* **Auxiliary losses** (``aux_weight``, ``phi_weight``): the main loss is
  the cross-entropy of :math:`\mathrm{clf}(z)`. Where :math:`g \to 1`,
  :math:`f_2` gets :math:`(1-g)` of the gradient and the stored :math:`z_i`
  would decay with it, so ``aux_weight`` adds the cross-entropy of
  :math:`\mathrm{clf}(z_2)`. Where :math:`g \to 0`, :math:`\phi` gets almost
  no gradient (:math:`\partial g / \partial \phi \propto g`), so
  ``phi_weight`` adds the NNGK loss of :math:`\phi` against the stored
  :math:`\phi_i` and their labels (examples with no same-class neighbour
  are skipped).
* ``biased.enabled=False`` trains the plain network :math:`\mathrm{clf}(f_2(f_1(x)))`
  with the same modules, data and budget (the baseline).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from typing import Any, Callable, Iterator, Sequence

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training import train_state
from tqdm.auto import tqdm

from nngk_jax import checks
from nngk_jax import data as datalib
from nngk_jax import geometry
from nngk_jax import models
from nngk_jax.loss import nngk as nngk_loss

__all__ = [
    "BiasedNetwork",
    "BiasedTrainState",
    "DeepStage",
    "EarlyExit",
    "Projector",
    "STORED_Z",
    "StoredPairs",
    "biased_loss",
    "bucket_for",
    "bucket_sizes",
    "build_network",
    "create_train_state",
    "embed_split",
    "evaluate",
    "forward",
    "gated_mix",
    "kernel_mix",
    "make_train_step",
    "nearest_stored",
    "nngk_layer",
    "first_stage",
    "plain_forward",
    "predict_split",
    "refresh_stored",
    "second_stage",
    "stage_flops",
    "train",
]

STORED_Z = ("z2", "z")


# -- the NNGK layer (pure) ------------------------------------------------------


def nearest_stored(phi: jax.Array, stored_phi: jax.Array, *, k: int,
                   exclude: jax.Array | None = None) -> jax.Array:
  r"""Indices of the ``k`` stored rows nearest to each query (exact search).

  .. math::
    N_K(\phi_b) = \operatorname{top\text{-}k}_i
        \left(-\lVert \phi_b - \phi_i \rVert^2\right),
    \qquad i \ne \mathrm{exclude}_b

  An exact on-device search (``jax.lax.top_k`` over ``[batch, N]`` negated
  squared distances): :math:`\phi` is low-dimensional and the bank is the
  training split, so this is cheaper than a host-side graph. No gradient
  flows through the indices.

  Args:
    phi: ``[batch, P]`` float queries.
    stored_phi: ``[N, P]`` float stored :math:`\phi_i`.
    k: neighbours per query, ``1 <= k <= N`` (``N - 1`` with ``exclude``).
    exclude: optional ``[batch]`` int, a stored row each query may not
      return (its own, during training); a value outside ``[0, N)``
      excludes nothing.

  Returns:
    ``[batch, k]`` int32 indices, nearest first.

  Raises:
    ValueError: bad shapes or dtypes, or ``k`` larger than the bank.

  Examples:
    >>> import jax.numpy as jnp
    >>> bank = jnp.array([[0.], [1.], [5.]])
    >>> nearest_stored(jnp.array([[0.9]]), bank, k=2).tolist()
    [[1, 0]]
    >>> nearest_stored(jnp.array([[0.9]]), bank, k=2,
    ...                exclude=jnp.array([1])).tolist()
    [[0, 2]]
  """
  checks.check_rank("phi", phi, 2, "[batch, P]")
  checks.check_rank("stored_phi", stored_phi, 2, "[N, P]")
  checks.check_dtype("phi", phi, "float")
  checks.check_dtype("stored_phi", stored_phi, "float")
  if phi.shape[1] != stored_phi.shape[1]:
    raise ValueError(f"phi is {phi.shape[1]}-D but stored_phi is "
                     f"{stored_phi.shape[1]}-D (shapes {phi.shape} and "
                     f"{stored_phi.shape})")
  k = checks.positive_int("k", k)
  num_stored = stored_phi.shape[0]
  available = num_stored - (exclude is not None)
  if k > available:
    raise ValueError(
        f"k={k} neighbours requested but the bank holds {num_stored} stored "
        f"pairs" + (" (one excluded per query: its own row)"
                    if exclude is not None else ""))
  distances = geometry.pairwise_squared_distances(
      jax.lax.stop_gradient(phi), jax.lax.stop_gradient(stored_phi),
      method="matmul")
  if exclude is not None:
    checks.check_rank("exclude", exclude, 1, "[batch]")
    own = jnp.arange(num_stored)[None, :] == exclude[:, None]
    distances = jnp.where(own, jnp.inf, distances)
  _, indices = jax.lax.top_k(-distances, k)
  return indices.astype(jnp.int32)


def kernel_mix(phi: jax.Array, neighbour_phi: jax.Array,
               neighbour_z: jax.Array, *, sigma: float | jax.Array
               ) -> tuple[jax.Array, jax.Array]:
  r"""Kernel-weighted mean of the neighbours' :math:`z_i`, and the gate.

  .. math::
    \log k_{bi} = -\frac{\lVert \phi_b - \phi_{bi} \rVert^2}{2\sigma^2},
    \qquad
    z_{1,b} = \sum_i \frac{e^{\log k_{bi}}}
                          {\sum_j e^{\log k_{bj}}} z_{bi}
            = \sum_i \operatorname{softmax}_i(\log k_b)\, z_{bi},

    g_b = \frac{1}{K} \sum_i k_{bi}
        = \exp\!\left(\operatorname{logsumexp}_i \log k_{bi} - \log K\right)

  In log space: the weights are a softmax, so :math:`z_1` stays a finite
  convex combination at any distance (where the naive ratio is
  :math:`0/0`), and :math:`g` underflows cleanly to 0.

  Args:
    phi: ``[batch, P]`` float, :math:`\phi`.
    neighbour_phi: ``[batch, K, P]`` float, the stored :math:`\phi_i` of
      :math:`N_K(\phi)`.
    neighbour_z: ``[batch, K, D]`` float, their stored :math:`z_i`.
    sigma: positive kernel width :math:`\sigma`.

  Returns:
    ``(z1 [batch, D], gate [batch])``, the gate in ``[0, 1]``.

  Examples:
    >>> import jax.numpy as jnp
    >>> z1, g = kernel_mix(jnp.zeros((1, 2)), jnp.zeros((1, 3, 2)),
    ...                    jnp.array([[[1.], [2.], [3.]]]), sigma=1.0)
    >>> [round(float(v), 5) for v in (z1[0, 0], g[0])]
    [2.0, 1.0]
  """
  checks.check_rank("phi", phi, 2, "[batch, P]")
  checks.check_rank("neighbour_phi", neighbour_phi, 3, "[batch, K, P]")
  checks.check_rank("neighbour_z", neighbour_z, 3, "[batch, K, D]")
  checks.check_positive_scalar("sigma", sigma)
  if (neighbour_phi.shape[:2] != neighbour_z.shape[:2]
      or neighbour_phi.shape[0] != phi.shape[0]
      or neighbour_phi.shape[2] != phi.shape[1]):
    raise ValueError(
        f"inconsistent shapes: phi {phi.shape}, neighbour_phi "
        f"{neighbour_phi.shape}, neighbour_z {neighbour_z.shape}")
  diff = phi[:, None, :] - neighbour_phi
  log_kernels = -jnp.sum(diff * diff, axis=-1) / (2.0 * sigma ** 2)  # [B, K]
  log_norm = jax.nn.logsumexp(log_kernels, axis=1)
  weights = jnp.exp(log_kernels - log_norm[:, None])
  z1 = jnp.einsum("bk,bkd->bd", weights, neighbour_z)
  gate = jnp.exp(log_norm - math.log(log_kernels.shape[1]))
  return z1, gate


def nngk_layer(phi: jax.Array, stored_phi: jax.Array, stored_z: jax.Array, *,
               k: int, sigma: float | jax.Array,
               exclude: jax.Array | None = None
               ) -> tuple[jax.Array, jax.Array, jax.Array]:
  r"""The NNGK layer: :func:`nearest_stored`, then :func:`kernel_mix`.

  .. math::
    z_1 = \frac{\sum_{i \in N_K(\phi)} z_i k(\phi, \phi_i)}
               {\sum_{i \in N_K(\phi)} k(\phi, \phi_i)}, \qquad
    g = \frac{1}{K}\sum_{i \in N_K(\phi)} k(\phi, \phi_i)

  Gradients flow to ``phi`` (and to the stored arrays, which the training
  code passes as constants).

  Args:
    phi: ``[batch, P]``.
    stored_phi: ``[N, P]``.
    stored_z: ``[N, D]``.
    k: neighbours, at most ``N`` (``N - 1`` with ``exclude``).
    sigma: kernel width.
    exclude: optional ``[batch]`` own stored rows to leave out.

  Returns:
    ``(z1 [batch, D], gate [batch], neighbour_idx [batch, k])``.

  Examples:
    >>> import jax.numpy as jnp
    >>> z1, g, idx = nngk_layer(jnp.zeros((1, 1)), jnp.array([[0.], [9.]]),
    ...                         jnp.array([[1.], [5.]]), k=1, sigma=1.0)
    >>> z1.tolist(), g.tolist(), idx.tolist()
    ([[1.0]], [1.0], [[0]])
  """
  checks.check_rank("stored_z", stored_z, 2, "[N, D]")
  if stored_z.shape[0] != stored_phi.shape[0]:
    raise ValueError(f"stored_z has {stored_z.shape[0]} rows for "
                     f"{stored_phi.shape[0]} stored_phi rows")
  indices = nearest_stored(phi, stored_phi, k=k, exclude=exclude)
  z1, gate = kernel_mix(phi, stored_phi[indices], stored_z[indices],
                        sigma=sigma)
  return z1, gate, indices


def gated_mix(z1: jax.Array, z2: jax.Array, gate: jax.Array) -> jax.Array:
  r""":math:`z = g z_1 + (1 - g) z_2`, row by row.

  Args:
    z1, z2: ``[batch, D]``.
    gate: ``[batch]`` in ``[0, 1]``.

  Returns:
    ``[batch, D]``.

  Examples:
    >>> import jax.numpy as jnp
    >>> gated_mix(jnp.ones((1, 2)), jnp.zeros((1, 2)), jnp.array([0.25])).tolist()
    [[0.25, 0.25]]
  """
  return gate[:, None] * z1 + (1.0 - gate[:, None]) * z2


# -- the network ----------------------------------------------------------------


class Projector(nn.Module):
  r"""The weak projector :math:`p`: ``[batch, H, W, C] -> [batch, phi_dim]``.

  Average-pools the feature map (2x2 steps) until it is at most ``grid``
  pixels wide, flattens it, then ``Dense(hidden) -> ReLU -> Dense(phi_dim)``,
  optionally L2-normalised (then :math:`\lVert\phi-\phi_i\rVert^2 \le 4` and
  ``sigma`` is a temperature).

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> p = Projector(phi_dim=3, hidden=8, grid=2)
    >>> v = p.init(jax.random.key(0), jnp.zeros((2, 8, 8, 4)))
    >>> p.apply(v, jnp.zeros((2, 8, 8, 4))).shape
    (2, 3)
  """

  phi_dim: int = 16
  hidden: int = 64
  grid: int = 4
  normalize: bool = True

  @nn.compact
  def __call__(self, features: jax.Array) -> jax.Array:
    x = features
    while x.shape[1] > self.grid and x.shape[1] >= 2 and x.shape[2] >= 2:
      x = models.pool_2x2(x, "avg")
    x = x.reshape((x.shape[0], -1))
    x = nn.relu(nn.Dense(self.hidden)(x))
    phi = nn.Dense(self.phi_dim)(x)
    return geometry.l2_normalize(phi) if self.normalize else phi


class DeepStage(nn.Module):
  """:math:`f_2`: the remaining conv blocks, global average, linear head.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> f2 = DeepStage(channels=(8,), embed_dim=5)
    >>> v = f2.init(jax.random.key(0), jnp.zeros((2, 4, 4, 3)), train=False)
    >>> f2.apply(v, jnp.zeros((2, 4, 4, 3)), train=False).shape
    (2, 5)
  """

  channels: Sequence[int] = (64, 128, 256)
  embed_dim: int = 128
  pooling: str = "max"

  @nn.compact
  def __call__(self, features: jax.Array, *, train: bool) -> jax.Array:
    x = models.ConvNet(channels=tuple(self.channels),
                       pooling=self.pooling)(features, train=train)
    return nn.Dense(self.embed_dim, name="embedding")(x)


_WITH_BATCH_STATS = ("f1", "f2")


@dataclasses.dataclass(frozen=True)
class BiasedNetwork:
  """The four stages ``f1``, ``p``, ``f2``, ``clf``, each its own module.

  Variables are ``{"params": {stage: ...}, "batch_stats": {"f1": ...,
  "f2": ...}}``; :meth:`apply_stage` runs one stage.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> net = build_network(channels=(4, 8), split=1, embed_dim=6, phi_dim=2,
    ...                     projector_hidden=4, num_classes=3)
    >>> v = net.init(jax.random.key(0), (8, 8, 1))
    >>> sorted(v["params"]), sorted(v["batch_stats"])
    (['clf', 'f1', 'f2', 'p'], ['f1', 'f2'])
    >>> h, _ = net.apply_stage("f1", v, jnp.zeros((2, 8, 8, 1)))
    >>> net.apply_stage("f2", v, h)[0].shape
    (2, 6)
  """

  f1: nn.Module
  p: nn.Module
  f2: nn.Module
  clf: nn.Module

  def init(self, rng: jax.Array, image_shape: Sequence[int]) -> dict:
    """Variables of every stage, for images of ``image_shape`` (H, W, C)."""
    keys = jax.random.split(rng, 4)
    images = jnp.zeros((1,) + tuple(image_shape), jnp.float32)
    stage_vars = {"f1": self.f1.init(keys[0], images, train=False)}
    h = self.f1.apply(stage_vars["f1"], images, train=False)
    stage_vars["p"] = self.p.init(keys[1], h)
    stage_vars["f2"] = self.f2.init(keys[2], h, train=False)
    z2 = self.f2.apply(stage_vars["f2"], h, train=False)
    stage_vars["clf"] = self.clf.init(keys[3], z2)
    variables = {"params": {n: v["params"] for n, v in stage_vars.items()},
                 "batch_stats": {n: stage_vars[n]["batch_stats"]
                                 for n in _WITH_BATCH_STATS}}
    return variables

  def apply_stage(self, name: str, variables: dict, x: jax.Array, *,
                  train: bool = False) -> tuple[jax.Array, Any]:
    """``(output, batch_stats)`` of stage ``name``.

    ``batch_stats`` is the stage's updated statistics in training mode, its
    unchanged ones in eval mode, ``None`` for a stage without BatchNorm.
    """
    module = getattr(self, name)
    stage_vars = {"params": variables["params"][name]}
    if name not in _WITH_BATCH_STATS:
      return module.apply(stage_vars, x), None
    stage_vars["batch_stats"] = variables["batch_stats"][name]
    if not train:
      return module.apply(stage_vars, x, train=False), stage_vars["batch_stats"]
    out, updates = module.apply(stage_vars, x, train=True,
                                mutable=["batch_stats"])
    return out, updates["batch_stats"]


def build_network(*, channels: Sequence[int], split: int, embed_dim: int,
                  phi_dim: int, projector_hidden: int, num_classes: int,
                  projector_grid: int = 4, normalize_phi: bool = True,
                  pooling: str = "max") -> BiasedNetwork:
  """``f1`` = the first ``split`` blocks of ``channels``, ``f2`` the rest.

  Raises:
    ValueError: ``split`` leaves ``f1`` or ``f2`` without a block.
  """
  channels = tuple(int(c) for c in channels)
  if not 1 <= split < len(channels):
    raise ValueError(f"model.split must leave at least one conv block to f1 "
                     f"and one to f2: 1 <= split < {len(channels)} "
                     f"(len(model.channels)), got split={split}")
  return BiasedNetwork(
      f1=models.ConvNet(channels=channels[:split], pooling=pooling,
                        global_pool=False),
      p=Projector(phi_dim=phi_dim, hidden=projector_hidden,
                  grid=projector_grid, normalize=normalize_phi),
      f2=DeepStage(channels=channels[split:], embed_dim=embed_dim,
                   pooling=pooling),
      clf=nn.Dense(num_classes))


def network_from_config(config, num_classes: int) -> BiasedNetwork:
  """:func:`build_network` with ``config.model``'s settings."""
  model = config.model
  return build_network(
      channels=model.channels, split=model.split, embed_dim=model.embed_dim,
      phi_dim=model.phi_dim, projector_hidden=model.projector_hidden,
      projector_grid=model.projector_grid, normalize_phi=model.normalize_phi,
      pooling=model.pooling, num_classes=num_classes)


# -- stored pairs, forward pass and loss ----------------------------------------


@flax.struct.dataclass
class StoredPairs:
  """The bank of the NNGK layer: ``phi [N, P]``, ``z [N, D]``, ``labels [N]``."""

  phi: jax.Array
  z: jax.Array
  labels: jax.Array


def forward(network: BiasedNetwork, variables: dict, images: jax.Array,
            stored: StoredPairs | None, *, k: int, sigma: float,
            train: bool = False, exclude: jax.Array | None = None,
            biased: bool = True, gate_gradient: bool = True
            ) -> tuple[dict, dict]:
  r"""The whole model on a batch (every stage, no early exit).

  ``gate_gradient=False`` mixes with :math:`\operatorname{sg}(g)`: the
  loss of ``clf(z)`` then reaches :math:`\phi` through :math:`z_1`'s
  weights only, not through the gate (``biased.gate_gradient``; the
  outputs are the same).

  Returns:
    ``(outputs, batch_stats)``: ``outputs`` holds ``z2``, ``logits_z2``
    (:math:`\mathrm{clf}(z_2)`) and ``logits``; when ``biased`` also
    ``phi``, ``z1``, ``gate``, ``z``, ``logits_z1`` and ``neighbour_idx``.
    Without ``biased`` ``logits`` is ``logits_z2`` (the plain network) and
    ``stored`` is not read.
  """
  h, stats_f1 = network.apply_stage("f1", variables, images, train=train)
  z2, stats_f2 = network.apply_stage("f2", variables, h, train=train)
  logits_z2, _ = network.apply_stage("clf", variables, z2)
  outputs = {"z2": z2, "logits_z2": logits_z2, "logits": logits_z2}
  if biased:
    phi, _ = network.apply_stage("p", variables, h)
    z1, gate, neighbour_idx = nngk_layer(phi, stored.phi, stored.z, k=k,
                                         sigma=sigma, exclude=exclude)
    z = gated_mix(z1, z2, gate if gate_gradient
                  else jax.lax.stop_gradient(gate))
    outputs.update(
        phi=phi, z1=z1, gate=gate, z=z, neighbour_idx=neighbour_idx,
        logits=network.apply_stage("clf", variables, z)[0],
        logits_z1=network.apply_stage("clf", variables, z1)[0])
  return outputs, {"f1": stats_f1, "f2": stats_f2}


def biased_loss(outputs: dict, labels: jax.Array, stored: StoredPairs | None,
                *, num_classes: int, sigma: float, aux_weight: float = 1.0,
                phi_weight: float = 1.0) -> jax.Array:
  r"""Per-example training loss of :func:`forward`'s outputs.

  .. math::
    \ell = \mathrm{CE}(\mathrm{clf}(z), y)
      + a\, \mathrm{CE}(\mathrm{clf}(z_2), y)
      + b\, [\exists i \in N_K(\phi): y_i = y]\;
        \ell_{\mathrm{NNGK}}(\phi, y; \{\phi_i, y_i\})

  with :math:`a` = ``aux_weight``, :math:`b` = ``phi_weight`` and
  :math:`\ell_\mathrm{NNGK}` :func:`nngk_jax.loss.gaussian_kernel_loss` over
  the layer's own neighbours (an example with no same-class neighbour is
  skipped). For the plain network (no ``phi`` in ``outputs``) only the
  first term.

  Returns:
    ``[batch]`` losses.
  """
  loss = optax.softmax_cross_entropy_with_integer_labels(outputs["logits"],
                                                         labels)
  if "phi" not in outputs:
    return loss
  if aux_weight:
    loss = loss + aux_weight * optax.softmax_cross_entropy_with_integer_labels(
        outputs["logits_z2"], labels)
  if phi_weight:
    idx = outputs["neighbour_idx"]
    has_positive = jnp.any(stored.labels[idx] == labels[:, None], axis=1)
    phi_loss = nngk_loss.gaussian_kernel_loss(
        outputs["phi"], labels, stored.phi, stored.labels, idx, sigma=sigma,
        num_classes=num_classes)
    loss = loss + phi_weight * jnp.where(has_positive, phi_loss, 0.0)
  return loss


# -- training -------------------------------------------------------------------


class BiasedTrainState(train_state.TrainState):
  """flax's ``TrainState`` plus BatchNorm statistics and the stored pairs."""

  batch_stats: Any
  stored: StoredPairs | None


def _options(config) -> dict:
  biased = config.biased
  if biased.stored_z not in STORED_Z:
    raise ValueError(f"biased.stored_z must be one of {STORED_Z}, got "
                     f"{biased.stored_z!r}")
  return {"k": checks.positive_int("biased.k", biased.k),
          "sigma": float(biased.sigma), "biased": bool(biased.enabled),
          "gate_gradient": bool(biased.gate_gradient)}


def create_train_state(network: BiasedNetwork, config,
                       image_shape: Sequence[int]) -> BiasedTrainState:
  """Fresh variables and optimiser (``optax.<optimizer.name>``)."""
  variables = network.init(jax.random.key(config.seed), image_shape)
  factory = getattr(optax, config.optimizer.name)
  return BiasedTrainState.create(
      apply_fn=None, params=variables["params"],
      tx=factory(learning_rate=config.optimizer.learning_rate),
      batch_stats=variables["batch_stats"], stored=None)


def _variables(state: BiasedTrainState) -> dict:
  return {"params": state.params, "batch_stats": state.batch_stats}


def make_train_step(network: BiasedNetwork, config, num_classes: int):
  """The jitted, state-donating ``train_step(state, batch) -> (state, metrics)``.

  ``batch`` holds ``image``, ``label`` and ``index`` (the rows of the
  stored pairs to exclude). ``metrics``: ``loss``, ``accuracy`` of
  ``clf(z)``, mean ``gate`` (0 for the plain network).
  """
  options = _options(config)
  weights = {"aux_weight": float(config.biased.aux_weight),
             "phi_weight": float(config.biased.phi_weight)}

  def loss_fn(params, state, batch):
    outputs, stats = forward(
        network, {"params": params, "batch_stats": state.batch_stats},
        batch["image"], state.stored, train=True, exclude=batch["index"],
        **options)
    per_example = biased_loss(outputs, batch["label"], state.stored,
                              num_classes=num_classes, sigma=options["sigma"],
                              **weights)
    correct = jnp.argmax(outputs["logits"], -1) == batch["label"]
    gate = outputs.get("gate", jnp.zeros_like(per_example))
    return jnp.mean(per_example), (stats, {"accuracy": jnp.mean(correct),
                                           "gate": jnp.mean(gate)})

  def train_step(state, batch):
    (loss, (stats, metrics)), grads = jax.value_and_grad(
        loss_fn, has_aux=True)(state.params, state, batch)
    state = state.apply_gradients(grads=grads, batch_stats=stats)
    return state, dict(metrics, loss=loss)

  return jax.jit(train_step, donate_argnums=0)


def _fixed_batches(images: np.ndarray, batch_size: int
                   ) -> Iterator[tuple[np.ndarray, int]]:
  """``(batch [batch_size, ...], valid rows)``, the last padded with copies."""
  for start in range(0, len(images), batch_size):
    chunk = images[start:start + batch_size]
    valid = len(chunk)
    if valid < batch_size:
      pad = np.repeat(chunk[-1:], batch_size - valid, axis=0)
      chunk = np.concatenate([chunk, pad])
    yield chunk, valid


def _map_split(fn: Callable, images: np.ndarray, batch_size: int
               ) -> dict[str, np.ndarray]:
  """``fn`` (jitted, dict-valued) over fixed-size batches; rows concatenated."""
  batch_size = min(batch_size, len(images))
  parts: dict[str, list] = {}
  for chunk, valid in _fixed_batches(images, batch_size):
    for key, value in fn(chunk).items():
      parts.setdefault(key, []).append(np.asarray(value)[:valid])
  return {key: np.concatenate(value) for key, value in parts.items()}


def embed_split(network: BiasedNetwork, variables: dict, images: np.ndarray,
                batch_size: int) -> dict[str, np.ndarray]:
  """Eval-mode ``phi [N, P]`` and ``z2 [N, D]`` of ``images``, in order."""

  @jax.jit
  def embed(chunk):
    h, _ = network.apply_stage("f1", variables, chunk)
    return {"phi": network.apply_stage("p", variables, h)[0],
            "z2": network.apply_stage("f2", variables, h)[0]}

  return _map_split(embed, images, batch_size)


def refresh_stored(network: BiasedNetwork, variables: dict, images: np.ndarray,
                   labels: np.ndarray, config) -> StoredPairs:
  """The stored pairs over the training ``images``, embedded in eval mode.

  ``biased.stored_z="z2"``: :math:`z_i = f_2(f_1(x_i))`. ``"z"``: the
  example's gated mix :math:`g_i z_{1,i} + (1-g_i) z_{2,i}` against the
  bank of ``(phi, z2)`` just embedded, its own row excluded.
  """
  options = _options(config)
  embedded = embed_split(network, variables, images, config.eval_batch_size)
  phi, z = jnp.asarray(embedded["phi"]), jnp.asarray(embedded["z2"])
  if config.biased.stored_z == "z":

    @jax.jit
    def mix(own_phi, own_z2, own_rows):
      z1, gate, _ = nngk_layer(own_phi, phi, z, k=options["k"],
                               sigma=options["sigma"], exclude=own_rows)
      return gated_mix(z1, own_z2, gate)

    rows = []
    for start in range(0, len(phi), config.eval_batch_size):
      stop = min(start + config.eval_batch_size, len(phi))
      rows.append(mix(phi[start:stop], z[start:stop],
                      jnp.arange(start, stop)))
    z = jnp.concatenate(rows)
  return StoredPairs(phi=phi, z=z, labels=jnp.asarray(labels, jnp.int32))


def predict_split(network: BiasedNetwork, variables: dict,
                  stored: StoredPairs | None, images: np.ndarray, config
                  ) -> dict[str, np.ndarray]:
  """Every output of the full model over ``images`` (no early exit).

  Returns:
    ``pred`` (argmax of ``logits``), ``pred_z2``; when biased also
    ``pred_z1`` and ``gate``; each ``[N]``.
  """
  options = _options(config)

  @jax.jit
  def predict(chunk):
    outputs, _ = forward(network, variables, chunk, stored, **options)
    result = {"pred": jnp.argmax(outputs["logits"], -1),
              "pred_z2": jnp.argmax(outputs["logits_z2"], -1)}
    if options["biased"]:
      result.update(pred_z1=jnp.argmax(outputs["logits_z1"], -1),
                    gate=outputs["gate"])
    return result

  return _map_split(predict, images, config.eval_batch_size)


def evaluate(network: BiasedNetwork, variables: dict,
             stored: StoredPairs | None, split, config) -> dict[str, float]:
  """Test accuracies of ``clf(z)``, ``clf(z2)`` (and ``clf(z1)``, mean gate)."""
  outputs = predict_split(network, variables, stored, split.images, config)
  labels = np.asarray(split.labels)
  record = {"accuracy": float(np.mean(outputs["pred"] == labels)),
            "accuracy_z2": float(np.mean(outputs["pred_z2"] == labels))}
  if "gate" in outputs:
    record.update(accuracy_z1=float(np.mean(outputs["pred_z1"] == labels)),
                  mean_gate=float(np.mean(outputs["gate"])))
  return record


def train(config, dataset) -> tuple[BiasedNetwork, BiasedTrainState, list]:
  """Trains the biased (or, with ``biased.enabled=False``, plain) network.

  Each epoch: refresh the stored pairs when due (every
  ``biased.refresh_every`` epochs, from epoch 0), then one pass of the
  jitted step over shuffled batches of the training split. After the last
  epoch the pairs are refreshed once more, so that inference looks up the
  final network's embeddings.

  Returns:
    ``(network, state, history)``: ``history`` one dict per epoch
    (``train_loss``, ``train_accuracy``, ``train_gate``, ``seconds``, test
    accuracies).
  """
  options = _options(config)
  checks.positive_int("biased.refresh_every", config.biased.refresh_every)
  train_split = dataset.train
  network = network_from_config(config, train_split.num_classes)
  state = create_train_state(network, config, train_split.image_shape)
  step = make_train_step(network, config, train_split.num_classes)
  images = np.asarray(train_split.images)
  labels = np.asarray(train_split.labels)
  history = []
  for epoch in range(config.num_epochs):
    start = time.perf_counter()
    if options["biased"] and epoch % config.biased.refresh_every == 0:
      state = state.replace(stored=refresh_stored(
          network, _variables(state), images, labels, config))
    seen = []
    stream = datalib.iterate_batches(train_split, config.batch_size,
                                     seed=config.seed, epoch=epoch,
                                     augment=True)
    for batch in tqdm(stream, total=len(images) // config.batch_size,
                      desc=f"epoch {epoch + 1}/{config.num_epochs}",
                      disable=not config.progress, leave=False):
      state, metrics = step(state, {key: batch[key] for key in
                                    ("image", "label", "index")})
      seen.append(metrics)
    seen = jax.device_get(seen)
    record = {"epoch": epoch + 1,
              "seconds": time.perf_counter() - start,
              **{f"train_{key}": float(np.mean([m[key] for m in seen]))
                 for key in seen[0]}}
    if not math.isfinite(record["train_loss"]):
      raise checks.TrainingDivergedError(
          f"biased network: the loss became {record['train_loss']} in epoch "
          f"{epoch + 1}; lower optimizer.learning_rate")
    history.append(record)
  if options["biased"]:
    state = state.replace(stored=refresh_stored(
        network, _variables(state), images, labels, config))
  history[-1].update(evaluate(network, _variables(state), state.stored,
                              dataset.test, config))
  return network, state, history


# -- inference with an early exit -----------------------------------------------


def bucket_sizes(batch_size: int, num_buckets: int = 4) -> tuple[int, ...]:
  """Padded sizes for the rows sent to ``f2``: ``batch_size / 2^j``.

  Examples:
    >>> bucket_sizes(256)
    (32, 64, 128, 256)
    >>> bucket_sizes(3)
    (1, 2, 3)
  """
  checks.positive_int("batch_size", batch_size)
  checks.positive_int("num_buckets", num_buckets)
  return tuple(sorted({max(1, -(-batch_size // 2 ** j))
                       for j in range(num_buckets)}))


def bucket_for(count: int, buckets: Sequence[int]) -> int:
  """The smallest bucket holding ``count`` rows (the largest if none does).

  Examples:
    >>> bucket_for(33, (32, 64)), bucket_for(1, (32, 64)), bucket_for(99, (32, 64))
    (64, 32, 64)
  """
  return next((b for b in buckets if b >= count), buckets[-1])


class EarlyExit:
  r"""Inference that runs :math:`f_2` only where the gate is at most ``tau``.

  Per batch of ``batch_size`` images (the last padded):

  1. one jitted pass computes :math:`h = f_1(x)`, :math:`\phi`, the
     neighbours, :math:`z_1`, :math:`g` and :math:`\mathrm{clf}(z_1)`;
  2. on the host, the rows with :math:`g \le \tau` are gathered and padded
     (repeating the last) to the smallest of :func:`bucket_sizes`, so that
     jit compiles once per bucket, not per count;
  3. :math:`f_2` runs on those rows only, then
     :math:`\mathrm{clf}(g z_1 + (1-g) z_2)` replaces their logits.

  Rows with :math:`g > \tau` keep :math:`\mathrm{clf}(z_1)`. ``tau >= 1``
  runs the full model (:math:`g \le 1`); ``tau < 0`` never runs ``f2``.

  Attributes:
    f2_rows: rows passed to ``f2`` so far, padding included.
    f2_real_rows: rows with :math:`g \le \tau` passed to ``f2``.
    f2_calls: calls of ``f2``.
  """

  def __init__(self, network: BiasedNetwork, variables: dict,
               stored: StoredPairs, *, k: int, sigma: float,
               batch_size: int = 256, buckets: Sequence[int] | None = None):
    self.batch_size = checks.positive_int("batch_size", batch_size)
    self.buckets = tuple(buckets or bucket_sizes(batch_size))
    if max(self.buckets) > batch_size:
      raise ValueError(f"buckets {self.buckets} hold more rows than "
                       f"batch_size={batch_size}")
    self.f2_rows = self.f2_real_rows = self.f2_calls = 0

    def f2_rows(variables, h, rows):
      return network.apply_stage("f2", variables, h[rows])[0]

    def finish(variables, z1, gate, z2, rows):
      return network.apply_stage(
          "clf", variables, gated_mix(z1[rows], z2, gate[rows]))[0]

    # Variables and stored pairs are arguments, not constants baked into
    # the compiled code.
    self._variables, self._stored = variables, stored
    self._first_stage_jit = jax.jit(functools.partial(
        first_stage, network, k=k, sigma=sigma))
    self._f2_jit = jax.jit(f2_rows)
    self._finish_jit = jax.jit(finish)

  def _first_stage(self, images):
    return self._first_stage_jit(self._variables, self._stored, images)

  def _f2(self, h, rows):
    return self._f2_jit(self._variables, h, rows)

  def _finish(self, z1, gate, z2, rows):
    return self._finish_jit(self._variables, z1, gate, z2, rows)

  def warm_up(self, image_shape: Sequence[int]) -> None:
    """Compiles the first stage and ``f2`` for every bucket (timing aside).

    The row counters are left as they were.
    """
    images = jnp.zeros((self.batch_size,) + tuple(image_shape), jnp.float32)
    h, z1, gate, _ = self._first_stage(images)
    for size in self.buckets:
      rows = jnp.zeros((size,), jnp.int32)
      jax.block_until_ready(self._finish(z1, gate, self._f2(h, rows), rows))

  def predict_batch(self, images: np.ndarray, tau: float,
                    valid: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(logits [batch, C], gate [batch])`` of one batch of ``batch_size``.

    Only the first ``valid`` rows (all by default) are sent to ``f2``.
    """
    if len(images) != self.batch_size:
      raise ValueError(f"EarlyExit.predict_batch takes batches of "
                       f"batch_size={self.batch_size} images, got "
                       f"{len(images)}")
    h, z1, gate, logits_z1 = self._first_stage(images)
    gate_host = np.asarray(gate)
    logits = np.array(logits_z1)
    valid = len(images) if valid is None else valid
    rows = np.flatnonzero(gate_host[:valid] <= tau)
    largest = self.buckets[-1]
    for start in range(0, len(rows), largest):
      chunk = rows[start:start + largest]
      size = bucket_for(len(chunk), self.buckets)
      padded = np.concatenate(
          [chunk, np.full(size - len(chunk), chunk[-1])]).astype(np.int32)
      z2 = self._f2(h, padded)
      self.f2_calls += 1
      self.f2_rows += size
      self.f2_real_rows += len(chunk)
      logits[chunk] = np.asarray(self._finish(z1, gate, z2, padded))[:len(chunk)]
    return logits, gate_host

  def predict(self, images: np.ndarray, tau: float
              ) -> tuple[np.ndarray, np.ndarray]:
    """``(logits [N, C], gate [N])`` over any number of images."""
    logits, gates = [], []
    for chunk, valid in _fixed_batches(np.asarray(images), self.batch_size):
      batch_logits, gate = self.predict_batch(chunk, tau, valid)
      logits.append(batch_logits[:valid])
      gates.append(gate[:valid])
    return np.concatenate(logits), np.concatenate(gates)


def first_stage(network: BiasedNetwork, variables: dict, stored: StoredPairs,
                images: jax.Array, *, k: int, sigma: float):
  r"""The early exit's first stage: :math:`f_1`, :math:`p`, the NNGK layer.

  Returns:
    ``(h, z1, gate, logits_z1)``: the feature map ``[batch, H, W, C]``,
    ``[batch, D]``, ``[batch]`` and :math:`\mathrm{clf}(z_1)`
    ``[batch, classes]``.
  """
  h, _ = network.apply_stage("f1", variables, images)
  phi, _ = network.apply_stage("p", variables, h)
  z1, gate, _ = nngk_layer(phi, stored.phi, stored.z, k=k, sigma=sigma)
  return h, z1, gate, network.apply_stage("clf", variables, z1)[0]


def second_stage(network: BiasedNetwork, variables: dict, h: jax.Array,
                 z1: jax.Array, gate: jax.Array) -> jax.Array:
  r""":math:`\mathrm{clf}(g z_1 + (1-g) f_2(h))` for every row."""
  z2, _ = network.apply_stage("f2", variables, h)
  return network.apply_stage("clf", variables, gated_mix(z1, z2, gate))[0]


def plain_forward(network: BiasedNetwork, variables: dict,
                  images: jax.Array) -> jax.Array:
  r""":math:`\mathrm{clf}(f_2(f_1(x)))`, the plain network's logits."""
  h, _ = network.apply_stage("f1", variables, images)
  z2, _ = network.apply_stage("f2", variables, h)
  return network.apply_stage("clf", variables, z2)[0]


def _flops(fn: Callable, *args) -> float:
  """XLA's FLOP count of ``jax.jit(fn)`` compiled for ``args``."""
  analysis = jax.jit(fn).lower(*args).compile().cost_analysis()
  if isinstance(analysis, (list, tuple)):
    analysis = analysis[0]
  return float(analysis.get("flops", float("nan")))


def stage_flops(network: BiasedNetwork, variables: dict, stored: StoredPairs,
                image_shape: Sequence[int], *, k: int, sigma: float,
                batch_size: int = 64) -> dict[str, float]:
  """FLOPs per image from XLA's cost analysis, by stage.

  Returns:
    ``first_stage`` (``f1``, ``p``, the search over the stored pairs,
    ``z1``, ``clf(z1)``), ``f2`` (with the gated mix and ``clf``) and
    ``plain`` (``clf(f2(f1(x)))``), each divided by ``batch_size``.
  """
  images = jnp.zeros((batch_size,) + tuple(image_shape), jnp.float32)
  h, z1, gate, _ = first_stage(network, variables, stored, images, k=k,
                               sigma=sigma)
  per_image = {
      "first_stage": _flops(functools.partial(first_stage, network, k=k,
                                              sigma=sigma),
                            variables, stored, images),
      "f2": _flops(functools.partial(second_stage, network), variables, h,
                   z1, gate),
      "plain": _flops(functools.partial(plain_forward, network), variables,
                      images)}
  return {name: flops / batch_size for name, flops in per_image.items()}

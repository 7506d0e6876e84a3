"""Evaluation of a trained state: retrieval metrics and the kernel classifier.

Host side (NumPy around one jitted embedding function): embed a split in
eval mode, score it in the objective's geometry
(:func:`nngk_jax.objectives.evaluation_geometry`), and, for the
classification protocol, classify test images by the NNGK vote of their
nearest training centres (:func:`kernel_classify`).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from nngk_jax import bank as banklib
from nngk_jax import checks
from nngk_jax import data as datalib
from nngk_jax import geometry as geometrylib
from nngk_jax import loss as losses
from nngk_jax import metrics as metriclib
from nngk_jax import neighbours as neighbourlib
from nngk_jax import objectives
from nngk_jax import parallel
from nngk_jax.state import TrainState

__all__ = ["RAW_PIXEL_LIMIT", "embed_split", "evaluate", "in_geometry",
           "kernel_classify", "raw_pixel_metrics"]

# Raw-pixel baselines are computed for in-memory test splits up to this many
# values (images x pixels x channels): 60 M floats, 240 MB.
RAW_PIXEL_LIMIT = 60_000_000


@functools.lru_cache(maxsize=8)
def _embed_fn(apply_fn):
  @jax.jit
  def embed(variables, images):
    return apply_fn(variables, images, train=False)
  return embed


def embed_split(state: TrainState, split: datalib.Split,
                batch_size: int) -> tuple[np.ndarray, np.ndarray | None]:
  """Eval-mode embeddings (and logits) of a whole split, in split order.

  With the parameters on several devices of one process (a data-parallel
  run's mesh) each batch is split over those devices, ``batch_size``
  rounded up to a multiple of their count: every device embeds its block.
  In a multi-process run each process embeds its block of every batch
  (:func:`nngk_jax.parallel.process_shard`'s blocks, ``batch_size``
  rounded up to a multiple of the process count) with a host copy of the
  parameters, and the blocks are all-gathered back into split order: every
  process returns the same whole arrays.

  Returns:
    ``(embeddings [N, D], logits [N, C] or None)`` as numpy arrays.
  """
  embed = _embed_fn(state.apply_fn)
  processes = jax.process_count()
  multiple = processes  # each batch: a multiple of this many rows
  split_over = None  # the batch's sharding over the parameters' devices
  if processes == 1:
    variables = state.network_variables()
    sharding = getattr(jax.tree_util.tree_leaves(variables)[0], "sharding",
                       None)
    if isinstance(sharding, jax.sharding.NamedSharding) and (
        sharding.mesh.devices.size > 1):
      split_over = parallel.batch_sharding(sharding.mesh)
      multiple = sharding.mesh.devices.size
  else:  # the whole parameters on this process's first device, once
    variables = jax.device_put(parallel.fetch(state.network_variables()),
                               jax.local_devices()[0])
  batch_size = -(-min(batch_size, len(split)) // multiple) * multiple
  embeddings, logits = [], []
  for batch in datalib.iterate_batches(split, batch_size, seed=0, epoch=0,
                                       shuffle=False, drop_last=False,
                                       shard=(jax.process_index(), processes)):
    images = batch["image"]
    if split_over is not None:
      images = jax.device_put(images, split_over)
    emb, lg = embed(variables, images)
    embeddings.append(np.asarray(emb))
    if lg is not None:
      logits.append(np.asarray(lg))

  def whole(blocks):
    # [processes, batches * block, ...] -> batches in order; the last
    # batch's padding rows (drop_last=False pads at the end) cut off.
    gathered = parallel.gather_blocks(np.concatenate(blocks))
    per_batch = gathered.reshape(processes, len(blocks), -1,
                                 *gathered.shape[2:]).swapaxes(0, 1)
    return per_batch.reshape(-1, *gathered.shape[2:])[:len(split)]

  return whole(embeddings), whole(logits) if logits else None


def in_geometry(embeddings: np.ndarray, geometry: str) -> np.ndarray:
  """``embeddings`` as scored in ``geometry`` (cosine: L2-normalised rows)."""
  if geometry == "euclidean":
    return embeddings
  return np.asarray(geometrylib.l2_normalize(embeddings))


def evaluate(state: TrainState, dataset: datalib.Dataset, config,
             bank: banklib.CentreBank | None = None) -> dict:
  """Retrieval metrics on the test split, plus accuracies for classification.

  Metric protocol (test classes unseen in training): Recall@K, MAP@R,
  R-precision and NMI, each test embedding queried against the others, in
  the objective's geometry (:func:`nngk_jax.objectives.evaluation_geometry`:
  cosine objectives are scored on L2-normalised embeddings); the result
  records it as ``"geometry"``. Classification protocol: the same retrieval
  metrics, plus the accuracy of the kernel classifier (test embedding
  against freshly embedded training centres, ``classifier_k`` nearest, NNGK
  vote with the ``bank``'s learned weights if any, in the same geometry)
  and, with a classifier head, of the softmax head.
  """
  geometry = objectives.evaluation_geometry(config)
  test_emb, test_logits = embed_split(state, dataset.test,
                                      config.eval_batch_size)
  checks.check_finite_rows("test embeddings", test_emb, "at evaluation",
                           error=checks.TrainingDivergedError,
                           advice=checks.DIVERGED_ADVICE)
  test_emb = in_geometry(test_emb, geometry)
  results = metriclib.retrieval_metrics(
      test_emb, dataset.test.labels, recall_ks=tuple(config.recall_ks),
      nmi=config.nmi, seed=config.seed,
      knn_func=metriclib.knn_function(config.get("eval_search", "exact"),
                                      seed=config.seed),
      kmeans_func=metriclib.kmeans_function(config.get("nmi_method", "auto")))
  results["geometry"] = geometry
  if dataset.protocol == "classification":
    # The bank's own centres where it keeps them (impostors), else the
    # training split embedded by the trained network.
    train_emb = None if bank is None else bank.evaluation_centres(state.bank)
    if train_emb is None:
      train_emb, _ = embed_split(state, dataset.train, config.eval_batch_size)
    predicted = kernel_classify(
        in_geometry(train_emb, geometry), dataset.train.labels, test_emb,
        num_classes=dataset.train.num_classes, k=config.classifier_k,
        sigma=config.nngk.sigma,
        centre_log_weights=(bank.log_weights(state.params)
                            if bank is not None else None))
    results["kernel_accuracy"] = metriclib.accuracy(predicted,
                                                    dataset.test.labels)
    if test_logits is not None:
      results["softmax_accuracy"] = metriclib.accuracy(
          test_logits.argmax(axis=1), dataset.test.labels)
  return results


def kernel_classify(centres: np.ndarray, centre_labels: np.ndarray,
                    queries: np.ndarray, *, num_classes: int, k: int,
                    sigma: float, centre_log_weights: np.ndarray | None = None,
                    backend: str = "exact") -> np.ndarray:
  """NNGK kernel classifier: ``argmax_c p(c|x)`` over the k nearest centres.

  Args:
    centres: ``[N, D]`` training embeddings.
    centre_labels: ``[N]`` int.
    queries: ``[Q, D]`` embeddings to classify.
    num_classes: number of classes.
    k: neighbours per query (capped at ``N``).
    sigma: kernel width.
    centre_log_weights: optional ``[N]`` theta.
    backend: neighbour search backend (``nngk_jax.neighbours``).

  Returns:
    ``[Q]`` int predicted classes.
  """
  k = min(k, len(centres))
  idx = neighbourlib.query_neighbours(centres, queries, k=k, backend=backend)
  log_probs = losses.kernel_class_log_probs(
      jnp.asarray(queries), jnp.asarray(centres),
      jnp.asarray(centre_labels, jnp.int32), jnp.asarray(idx),
      num_classes=num_classes, sigma=sigma,
      centre_log_weights=(None if centre_log_weights is None
                          else jnp.asarray(centre_log_weights)))
  return np.asarray(jnp.argmax(log_probs, axis=1))


def raw_pixel_metrics(dataset: datalib.Dataset, config) -> dict | None:
  """The test split's retrieval metrics on its raw pixels (the baseline).

  Each test image, flattened, is a query against the others by Euclidean
  distance, scored as the learned embeddings are (no NMI). ``None`` when
  the test split is not an in-memory array split or holds more than
  ``RAW_PIXEL_LIMIT`` values (decoded benchmarks).
  """
  if not isinstance(dataset.test, datalib.Split):
    return None
  images = dataset.test.images
  if images.size > RAW_PIXEL_LIMIT:
    return None
  flat = images.reshape(len(images), -1).astype(np.float32)
  return metriclib.retrieval_metrics(
      flat, dataset.test.labels, recall_ks=tuple(config.recall_ks), nmi=False,
      seed=config.seed)

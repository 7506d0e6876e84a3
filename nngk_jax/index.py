r"""A search index over a trained model: embed, search, classify, save.

What pytorch-metric-learning's ``InferenceModel`` and TF Similarity's
index / lookup give their users, the JAX way. An :class:`Index` holds

* a **gallery**: ``[N, D]`` float32 embeddings in the index geometry
  (``"cosine"``: L2-normalised rows; ``"euclidean"``: as the network gives
  them), their ``[N]`` labels and, when the run learned them, the
  per-centre log-weights :math:`\theta` of the NNGK kernel vote;
* the **kernel**: ``sigma``, ``num_classes`` and ``classifier_k``, the
  neighbours of the vote;
* optional **sources**, one per gallery row, saying where its image can be
  shown from: ``"train:ROW"`` (row of the run's training split),
  ``"file:PATH"`` (an image file), or ``None``;
* the **embedder** (:class:`Embedder`): the trained network in eval mode,
  jitted and batched, and the image format it reads (shape, and the
  evaluation transform of a decoded-on-demand dataset).

Build one from a run's work directory (:meth:`Index.from_run`), search it
with images (:meth:`Index.search`) or embeddings
(:meth:`Index.search_embeddings`), classify by the NNGK vote
(:meth:`Index.classify`), grow it (:meth:`Index.add`), and save it as a
self-contained directory (:meth:`Index.save`, :meth:`Index.load`): JSON
metadata, ``.npz`` arrays and the network's variables as flax msgpack; no
pickle anywhere.

Search is exact on the default JAX device up to
``nngk_jax.neighbours.AUTO_EXACT_MAX_CENTRES`` gallery items on a CPU (at any
size on an accelerator), PyNNDescent above
(:func:`nngk_jax.neighbours.resolve_backend`); ``backend=`` overrides. The
PyNNDescent graph is built over the gallery on each call: search many
queries in one call.

The gallery sits behind a small store interface (:class:`GalleryStore`:
``search``, ``decode``, ``labels``, ``log_weights``), held as an array
(``_ArrayStore``) or, after :meth:`Index.compress`, as OPQ codes
(``_CompressedStore``, :mod:`nngk_jax.compress`: asymmetric distances,
a few bytes per item, read-only).

Examples:
  >>> import numpy as np
  >>> gallery = np.array([[0., 0.], [1., 0.], [0., 2.]], np.float32)
  >>> index = Index(gallery, np.array([0, 0, 1]), sigma=1.0)
  >>> result = index.search_embeddings(np.array([[0.9, 0.]], np.float32), k=2)
  >>> result.indices.tolist(), result.labels.tolist()
  ([[1, 0]], [[0, 0]])
  >>> [round(float(d), 2) for d in result.distances[0]]
  [0.01, 0.81]
  >>> index.classify_embeddings(np.array([[0., 1.9]], np.float32), k=1)
  array([1])
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import io
import json
import os
import pathlib
from collections.abc import Sequence
from typing import Any, NamedTuple, Protocol

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from nngk_jax import checks
from nngk_jax import compress as compresslib
from nngk_jax import data as datalib
from nngk_jax import evaluation
from nngk_jax import loss as losses
from nngk_jax import neighbours as neighbourlib
from nngk_jax import objectives
from nngk_jax import state as statelib
from nngk_jax import train
from nngk_jax.data import pipeline as pipelib
from nngk_jax.workdir import read_metadata
from nngk_jax.workdir import write_atomically

__all__ = ["FORMAT", "FORMAT_VERSION", "Embedder", "GalleryStore",
           "ImageFormat", "Index", "IndexFormatError", "SearchResult"]

# What a saved index's index.json says it is, and the layout version written.
FORMAT = "nngk-jax-index"
FORMAT_VERSION = 1
META_FILE = "index.json"
ARRAYS_FILE = "arrays.npz"
NETWORK_FILE = "network.msgpack"

# The kernel vote, jitted: one compiled program per shape, not one per op.
_kernel_class_log_probs = jax.jit(losses.kernel_class_log_probs,
                                  static_argnames=("num_classes",))

# Most float32 values gathered at once ([rows, k, D]) when distances and
# kernel votes are computed over the found neighbours: 64 MiB.
_MAX_GATHERED = 1 << 24

PathLike = str | os.PathLike


class IndexFormatError(ValueError):
  """A saved index that cannot be read: damaged, incomplete or not an index."""


class SearchResult(NamedTuple):
  """The ``k`` nearest gallery items of each query, nearest first.

  Attributes:
    indices: ``[Q, k]`` int32 gallery rows.
    distances: ``[Q, k]`` float32 squared distances in the index geometry
      (cosine: between L2-normalised embeddings, ``2 - 2 cos``).
    labels: ``[Q, k]`` int32 labels of those rows.
  """

  indices: np.ndarray
  distances: np.ndarray
  labels: np.ndarray


# ----------------------------------------------------------------------------
# The gallery store.


class GalleryStore(Protocol):
  """What the index needs of its gallery (a store of ``N`` embeddings).

  Rows are in the index geometry already. ``search`` returns the ``k``
  nearest rows and their squared distances, nearest first; ``decode`` gives
  the (possibly approximate) embeddings of some rows, for the kernel vote.
  """

  labels: np.ndarray
  log_weights: np.ndarray | None

  def __len__(self) -> int:
    """Number of gallery items ``N``."""

  @property
  def dim(self) -> int:
    """Embedding size ``D``."""

  def search(self, queries: np.ndarray, k: int, *,
             backend: str) -> tuple[np.ndarray, np.ndarray]:
    """``([Q, k] int32 rows, [Q, k] float32 squared distances)``."""

  def decode(self, rows: np.ndarray) -> np.ndarray:
    """``[len(rows), D]`` float32 embeddings of ``rows``."""


@dataclasses.dataclass(frozen=True, eq=False)
class _ArrayStore:
  """The gallery as a float32 ``[N, D]`` array (exact distances)."""

  embeddings: np.ndarray
  labels: np.ndarray
  log_weights: np.ndarray | None = None

  def __len__(self) -> int:
    return int(self.embeddings.shape[0])

  @property
  def dim(self) -> int:
    return int(self.embeddings.shape[1])

  def search(self, queries: np.ndarray, k: int, *,
             backend: str) -> tuple[np.ndarray, np.ndarray]:
    """Neighbours by ``query_neighbours``; distances recomputed exactly.

    The backend ranks (exact search by the matmul expansion, which loses
    precision for near-equal points); the squared distances of the ``k``
    found are then computed as sums of squared differences, and each row
    re-sorted by them (stable), so an item equal to a query is at
    distance 0 and comes first.
    """
    indices = neighbourlib.query_neighbours(self.embeddings, queries, k=k,
                                            backend=backend)
    distances = np.empty(indices.shape, np.float32)
    rows_per_chunk = max(1, _MAX_GATHERED // (k * self.dim))
    for start in range(0, len(queries), rows_per_chunk):
      rows = slice(start, start + rows_per_chunk)
      diff = self.embeddings[indices[rows]] - queries[rows, None, :]
      distances[rows] = np.einsum("qkd,qkd->qk", diff, diff)
    order = np.argsort(distances, axis=1, kind="stable")
    return (np.take_along_axis(indices, order, axis=1),
            np.take_along_axis(distances, order, axis=1))

  def decode(self, rows: np.ndarray) -> np.ndarray:
    return self.embeddings[np.asarray(rows)]

  def append(self, embeddings: np.ndarray, labels: np.ndarray,
             log_weights: np.ndarray | None) -> "_ArrayStore":
    """A new store with the rows appended (``log_weights`` ``[n]`` or None)."""
    weights = self.log_weights
    if weights is not None:
      weights = np.concatenate([weights, log_weights])
    return _ArrayStore(np.concatenate([self.embeddings, embeddings]),
                       np.concatenate([self.labels, labels]), weights)

  def arrays(self) -> dict[str, np.ndarray]:
    """The arrays :meth:`Index.save` writes (``np.savez``)."""
    arrays = {"embeddings": self.embeddings, "labels": self.labels}
    if self.log_weights is not None:
      arrays["log_weights"] = self.log_weights
    return arrays



@dataclasses.dataclass(frozen=True, eq=False)
class _CompressedStore:
  """The gallery as OPQ codes (:class:`nngk_jax.compress.CompressedBank`).

  Distances are asymmetric (query uncompressed, gallery decoded); the
  ``"exact"`` backend runs them in JAX, ``"pynndescent"`` (what ``"auto"``
  picks for a large gallery on a CPU) through faiss on the host.
  """

  bank: compresslib.CompressedBank

  @property
  def labels(self) -> np.ndarray:
    return self.bank.labels

  @property
  def log_weights(self) -> np.ndarray | None:
    return self.bank.log_weights

  def __len__(self) -> int:
    return self.bank.num_centres

  @property
  def dim(self) -> int:
    return self.bank.dim

  def search(self, queries: np.ndarray, k: int, *,
             backend: str) -> tuple[np.ndarray, np.ndarray]:
    return self.bank.search(
        queries, k, backend="faiss" if backend == "pynndescent" else "jax")

  def decode(self, rows: np.ndarray) -> np.ndarray:
    return self.bank.decode(np.asarray(rows))


# ----------------------------------------------------------------------------
# The network and its input.


@dataclasses.dataclass(frozen=True)
class ImageFormat:
  """The images a network reads, and how an image file becomes one.

  Attributes:
    image_shape: ``(height, width, channels)``.
    transform: the evaluation transform of a decoded-on-demand dataset
      (:class:`~nngk_jax.data.pipeline.ImageTransform`: resize, centre crop,
      normalise); ``None`` for in-memory datasets, whose files are read by
      :func:`nngk_jax.data.read_image` (resized to ``image_shape``, pixels
      in ``[-1, 1]``).

  Examples:
    >>> ImageFormat((8, 8, 1)).check(np.zeros((2, 8, 8, 1))).dtype
    dtype('float32')
  """

  image_shape: tuple[int, int, int]
  transform: pipelib.ImageTransform | None = None

  @classmethod
  def of_split(cls, split: datalib.SplitLike) -> "ImageFormat":
    """The format of ``split``'s images."""
    transform = getattr(split, "transform", None)
    if not isinstance(transform, pipelib.ImageTransform):
      transform = None
    return cls(tuple(int(d) for d in split.image_shape), transform)

  def read(self, path: PathLike) -> np.ndarray:
    """One image file as the network reads it: ``[H, W, C]`` float32."""
    if self.transform is not None:
      return self.transform.evaluate(pathlib.Path(path))
    height, width, channels = self.image_shape
    return datalib.read_image(path, (height, width), channels=channels)

  def check(self, images: Any, name: str = "images") -> np.ndarray:
    """``images`` as float32 ``[Q, H, W, C]``, or a ValueError naming why."""
    images = np.asarray(images)
    want = "[num_images, " + ", ".join(map(str, self.image_shape)) + "]"
    if images.ndim != 4 or tuple(images.shape[1:]) != self.image_shape:
      one = (" (one image: pass images[None])"
             if tuple(images.shape) == self.image_shape else "")
      raise ValueError(f"{name} must be {want} (the run's image shape), got "
                       f"shape {images.shape}{one}")
    if images.shape[0] == 0:
      raise ValueError(f"{name} is empty: no images to embed")
    if not np.issubdtype(images.dtype, np.floating):
      raise ValueError(
          f"{name} must be float pixels as the run's dataset gives them "
          f"(in [-1, 1]), got dtype {images.dtype}; read image files with "
          f"Index.read_images(paths)")
    checks.check_finite_rows(name, images)
    return images.astype(np.float32, copy=False)

  def to_json(self) -> dict[str, Any]:
    return {"image_shape": list(self.image_shape),
            "transform": (None if self.transform is None
                          else dataclasses.asdict(self.transform))}

  @classmethod
  def from_json(cls, meta: dict[str, Any]) -> "ImageFormat":
    transform = meta.get("transform")
    return cls(tuple(int(d) for d in meta["image_shape"]),
               None if transform is None
               else pipelib.ImageTransform(**transform))


def _batch_sizes(batch_size: int) -> list[int]:
  """Powers of two below ``batch_size``, then ``batch_size``: jit shapes."""
  sizes, size = [], 1
  while size < batch_size:
    sizes.append(size)
    size *= 2
  return sizes + [batch_size]


class Embedder:
  """The trained network in eval mode, jitted and batched, and its input.

  Images go through in chunks of at most ``batch_size``, each padded to the
  next power of two (or ``batch_size``), so a handful of shapes is compiled
  and one query image does not pay for a full batch. Eval mode: BatchNorm
  reads its running statistics, so padding rows change nothing.

  Args:
    config: the run's config (the network is ``state.build_model(config,
      num_classes)``).
    num_classes: the classes of the run's training split (the size of a
      classifier head or of the proxies, if the objective has them).
    variables: the network's ``{"params", "batch_stats"}``
      (``TrainState.network_variables()``).
    image_format: what the network reads.
    batch_size: largest batch per call (the run's ``eval_batch_size``).
  """

  def __init__(self, config: ml_collections.ConfigDict, num_classes: int,
               variables: dict[str, Any], image_format: ImageFormat, *,
               batch_size: int = 256):
    self.config = config
    self.num_classes = checks.positive_int("num_classes", num_classes)
    self.model = statelib.build_model(config, num_classes)
    self.variables = variables
    self.image_format = image_format
    self.batch_size = checks.positive_int("batch_size", batch_size)
    model = self.model
    self._apply = jax.jit(
        lambda variables, images: model.apply(variables, images,
                                              train=False)[0])

  @classmethod
  def from_run(cls, config, dataset: datalib.Dataset,
               state: statelib.TrainState) -> "Embedder":
    """The embedder of a trained state (``train.load_trained``)."""
    return cls(config, dataset.train.num_classes, state.network_variables(),
               ImageFormat.of_split(dataset.train),
               batch_size=config.eval_batch_size)

  def _embed_batch(self, images: np.ndarray) -> np.ndarray:
    return np.asarray(self._apply(self.variables, images), np.float32)

  def __call__(self, images: Any) -> np.ndarray:
    """``[Q, D]`` float32 embeddings of ``[Q, H, W, C]`` images.

    Raises:
      ValueError: images of the wrong shape or dtype, non-finite pixels, or
        non-finite embeddings (naming how many and the first).
    """
    images = self.image_format.check(images)
    sizes = _batch_sizes(self.batch_size)
    parts = []
    for start in range(0, len(images), self.batch_size):
      chunk = images[start:start + self.batch_size]
      size = next(s for s in sizes if s >= len(chunk))
      padded = np.concatenate(
          [chunk, np.zeros((size - len(chunk),) + chunk.shape[1:],
                           np.float32)])
      parts.append(self._embed_batch(padded)[:len(chunk)])
    embeddings = np.concatenate(parts)
    checks.check_finite_rows("embeddings", embeddings,
                             "from the network (the images given)")
    return embeddings

  def embed_split(self, split: datalib.SplitLike) -> np.ndarray:
    """``[N, D]`` embeddings of a whole split, in order (as ``embed_split``)."""
    batch_size = min(self.batch_size, len(split))
    parts = []
    for batch in datalib.iterate_batches(split, batch_size, seed=0, epoch=0,
                                         shuffle=False, drop_last=False):
      parts.append(self._embed_batch(batch["image"])[batch["valid"]])
    embeddings = np.concatenate(parts)
    checks.check_finite_rows("embeddings", embeddings, "of the split")
    return embeddings

  def read_images(self, paths: Sequence[PathLike]) -> np.ndarray:
    """Image files as ``[len(paths), H, W, C]`` network input."""
    if not len(paths):
      raise ValueError("no image files given")
    return np.stack([self.image_format.read(path) for path in paths])

  def embed_files(self, paths: Sequence[PathLike]) -> np.ndarray:
    """``[len(paths), D]`` embeddings of image files, read a batch at a time."""
    return np.concatenate([
        self(self.read_images(paths[start:start + self.batch_size]))
        for start in range(0, len(paths), self.batch_size)])

  # -- files -----------------------------------------------------------------

  def save(self, directory: pathlib.Path) -> dict[str, Any]:
    """Writes the variables (flax msgpack); returns the metadata to keep."""
    write_atomically(directory / NETWORK_FILE,
                     flax.serialization.to_bytes(self.variables))
    return {"config": json.loads(self.config.to_json_best_effort()),
            "network_num_classes": self.num_classes,
            "batch_size": self.batch_size,
            "image_format": self.image_format.to_json()}

  @classmethod
  def load(cls, directory: pathlib.Path, meta: dict[str, Any]) -> "Embedder":
    """The embedder :meth:`save` wrote; ``IndexFormatError`` if it is bad."""
    path = directory / NETWORK_FILE
    config = ml_collections.ConfigDict(meta["config"])
    image_format = ImageFormat.from_json(meta["image_format"])
    try:
      variables = flax.serialization.msgpack_restore(path.read_bytes())
    except Exception as error:  # msgpack raises many kinds on bad bytes
      raise IndexFormatError(f"{path} is damaged: not flax msgpack "
                             f"({type(error).__name__}: {error})") from None
    model = statelib.build_model(config, meta["network_num_classes"])
    sample = jax.ShapeDtypeStruct((1,) + image_format.image_shape,
                                  jnp.float32)
    expected = jax.eval_shape(
        lambda x: model.init(jax.random.key(0), x, train=False), sample)
    _check_variables(path, variables, expected)
    variables.setdefault("batch_stats", {})
    return cls(config, meta["network_num_classes"], variables, image_format,
               batch_size=meta["batch_size"])


def _check_variables(path: pathlib.Path, variables: Any,
                     expected: Any) -> None:
  """``variables`` has ``expected``'s names and shapes, or IndexFormatError."""
  if not isinstance(variables, dict):
    raise IndexFormatError(f"{path} holds no network variables")
  flat = flax.traverse_util.flatten_dict(variables, sep="/")
  want = flax.traverse_util.flatten_dict(dict(expected), sep="/")
  missing, extra = sorted(set(want) - set(flat)), sorted(set(flat) - set(want))
  if missing or extra:
    raise IndexFormatError(
        f"{path} does not match the network of its config: missing "
        f"{missing[:5]}, unexpected {extra[:5]}")
  for name, leaf in want.items():
    if tuple(np.shape(flat[name])) != tuple(leaf.shape):
      raise IndexFormatError(
          f"{path}: variable {name} has shape {np.shape(flat[name])}, the "
          f"network of its config expects {tuple(leaf.shape)}")


# ----------------------------------------------------------------------------
# The index.


def _sha256(path: pathlib.Path) -> str:
  return hashlib.sha256(path.read_bytes()).hexdigest()


def _check_labels(labels: Any, count: int, name: str = "labels") -> np.ndarray:
  labels = np.asarray(labels)
  if labels.shape != (count,):
    raise ValueError(f"{name} must be [{count}] (one per item), got shape "
                     f"{labels.shape}")
  if count and not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(f"{name} must be integers, got dtype {labels.dtype}")
  if count and labels.min() < 0:
    raise ValueError(f"{name} must be non-negative, found {labels.min()}")
  return labels.astype(np.int32)


def _check_sources(sources: Any, count: int) -> list[str | None]:
  if sources is None:
    return [None] * count
  sources = list(sources)
  if len(sources) != count:
    raise ValueError(f"sources must hold one entry per item ({count}), got "
                     f"{len(sources)}")
  for source in sources:
    if source is not None and not (isinstance(source, str) and (
        source.startswith("file:") or source.startswith("train:"))):
      raise ValueError(f"a source is 'train:ROW', 'file:PATH' or None, got "
                       f"{source!r}")
  return sources


class Index:
  """A gallery of embeddings to search and classify against (module doc).

  Args:
    embeddings: ``[N, D]`` float gallery embeddings (as the network gives
      them; the index puts them in its ``geometry``). ``N`` may be 0.
    labels: ``[N]`` non-negative int labels.
    sigma: kernel width of the NNGK vote.
    geometry: ``"euclidean"`` or ``"cosine"`` (gallery and queries
      L2-normalised).
    log_weights: optional ``[N]`` per-item log-weights :math:`\\theta` of
      the vote (``None``: all weights 1).
    num_classes: number of classes ``C`` (default: the largest label + 1,
      or ``len(class_names)``); labels must lie in ``[0, C)``.
    class_names: ``C`` names (default: the labels as text).
    sources: optional ``[N]`` display sources (``"train:ROW"``,
      ``"file:PATH"`` or ``None`` each).
    classifier_k: neighbours of the kernel vote (default 32).
    embedder: the network (:class:`Embedder`); without one only the
      ``*_embeddings`` methods work.
    backend: ``"auto"``, ``"exact"`` or ``"pynndescent"``.

  Raises:
    ValueError: inconsistent shapes, bad labels, non-finite embeddings or
      log-weights, an unknown geometry or backend.
  """

  def __init__(self, embeddings: Any, labels: Any, *, sigma: float,
               geometry: str = "euclidean", log_weights: Any = None,
               num_classes: int | None = None,
               class_names: Sequence[str] | None = None,
               sources: Sequence[str | None] | None = None,
               classifier_k: int = 32, embedder: Embedder | None = None,
               backend: str = "auto"):
    if geometry not in objectives.GEOMETRIES:
      raise ValueError(f"geometry must be one of {objectives.GEOMETRIES}, "
                       f"got {geometry!r}")
    self.geometry = geometry
    self.sigma = float(sigma)
    if not self.sigma > 0:
      raise ValueError(f"sigma must be positive, got {sigma!r}")
    self.classifier_k = checks.positive_int("classifier_k", classifier_k)
    self.backend = self._check_backend(backend)
    self.embedder = embedder
    embeddings = np.asarray(embeddings)
    if embeddings.ndim != 2 or not np.issubdtype(embeddings.dtype,
                                                 np.floating):
      raise ValueError(f"embeddings must be a float [N, D] array, got shape "
                       f"{embeddings.shape} dtype {embeddings.dtype}")
    count = embeddings.shape[0]
    labels = _check_labels(labels, count)
    if log_weights is not None:
      log_weights = np.asarray(log_weights, np.float32)
      if log_weights.shape != (count,):
        raise ValueError(f"log_weights must be [{count}], got shape "
                         f"{log_weights.shape}")
      checks.check_finite_rows("log_weights", log_weights[:, None])
    self.class_names = (None if class_names is None
                        else [str(name) for name in class_names])
    if num_classes is None:
      num_classes = (len(self.class_names) if self.class_names is not None
                     else int(labels.max()) + 1 if count else 1)
    self.num_classes = checks.positive_int("num_classes", num_classes)
    if self.class_names is None:
      self.class_names = [str(c) for c in range(self.num_classes)]
    if len(self.class_names) != self.num_classes:
      raise ValueError(f"class_names holds {len(self.class_names)} names for "
                       f"num_classes={self.num_classes}")
    if count and labels.max() >= self.num_classes:
      raise ValueError(f"labels must lie in [0, {self.num_classes}), found "
                       f"{labels.max()}")
    self.sources = _check_sources(sources, count)
    self._store: GalleryStore = _ArrayStore(
        self._in_geometry(embeddings, "embeddings"), labels, log_weights)
    self._train_split: datalib.SplitLike | None = None

  @staticmethod
  def _check_backend(backend: str) -> str:
    if backend != "auto" and backend not in neighbourlib.GRAPH_BACKENDS:
      known = ", ".join(repr(name)
                        for name in sorted(neighbourlib.GRAPH_BACKENDS))
      raise ValueError(f"unknown search backend {backend!r}; known: 'auto', "
                       f"{known}")
    return backend

  def _in_geometry(self, embeddings: np.ndarray, name: str) -> np.ndarray:
    embeddings = np.asarray(embeddings, np.float32)
    if len(embeddings):
      checks.check_finite_rows(name, embeddings)
      embeddings = evaluation.in_geometry(embeddings, self.geometry)
    return np.ascontiguousarray(embeddings, np.float32)

  # -- construction from a run -------------------------------------------------

  @classmethod
  def from_run(cls, workdir: PathLike, *, images: Any = None,
               labels: Any = None, class_names: Sequence[str] | None = None,
               folder: PathLike | None = None, centres: str = "embed",
               backend: str = "auto") -> "Index":
    """The index of a trained run (``train.load_trained(workdir)``).

    The gallery, one of:

    * by default (``centres="embed"``) the run's training split embedded by
      the trained network, with the run's learned log-weights when its
      objective learns them (NNGK), sources ``"train:ROW"``;
    * ``centres="bank"``: the centres stored in the run's bank
      (``state.bank.centres``: the training split as embedded at the last
      refresh, or trained centres), with the learned log-weights;
    * ``images`` (``[N, H, W, C]``) with ``labels`` (``[N]``) and optional
      ``class_names``: those images embedded, no weights, no sources;
    * ``folder``: every image of a folder with one sub-folder per class (the
      layout of :func:`nngk_jax.data.load_image_folder`), no weights,
      sources ``"file:PATH"`` (absolute paths).

    ``sigma``, ``classifier_k`` and the geometry are the run's
    (:func:`nngk_jax.objectives.evaluation_geometry`).

    Raises:
      FileNotFoundError: no run in ``workdir``, or no ``folder``.
      ValueError: more than one gallery asked for, ``labels`` without
        ``images``, an unknown ``centres``, ``centres="bank"`` for a run
        without a bank, or bad images.
    """
    if centres not in ("embed", "bank"):
      raise ValueError(f"centres must be 'embed' or 'bank', got {centres!r}")
    chosen = [name for name, given in (("images", images is not None),
                                       ("folder", folder is not None),
                                       ("centres='bank'", centres == "bank"))
              if given]
    if len(chosen) > 1:
      raise ValueError(f"give one gallery, got {' and '.join(chosen)}")
    if (labels is not None or class_names is not None) and images is None:
      raise ValueError("labels and class_names describe images=; give the "
                       "images too")
    if images is not None and labels is None:
      raise ValueError("images= needs labels= ([N] int, one per image)")
    config, dataset, state = train.load_trained(workdir)
    embedder = Embedder.from_run(config, dataset, state)
    train_split = dataset.train
    log_weights = state.params.get(statelib.BANK_PARAMS, {}).get(
        "log_weights")
    train_rows = [f"train:{row}" for row in range(len(train_split))]
    num_classes, names = train_split.num_classes, train_split.class_names
    sources: list[str | None] | None = train_rows
    if images is not None:
      gallery = embedder(images)
      labels = _check_labels(labels, len(gallery))
      log_weights, sources, num_classes, names = None, None, None, class_names
    elif folder is not None:
      files, labels, names = datalib.list_image_folder(folder)
      gallery = embedder.embed_files(files)
      num_classes, log_weights = len(names), None
      sources = [f"file:{os.path.abspath(path)}" for path in files]
    elif centres == "bank":
      if state.bank is None:
        raise ValueError(
            f"the run in {workdir} (objective {config.objective!r}) keeps no "
            f"centre bank; centres='bank' needs one (e.g. nngk, vmf): use "
            f"centres='embed'")
      gallery = np.asarray(state.bank.centres)
      labels = np.asarray(state.bank.labels)
    else:
      gallery = embedder.embed_split(train_split)
      labels = np.asarray(train_split.labels)
    index = cls(
        gallery, labels, sigma=config.nngk.sigma,
        geometry=objectives.evaluation_geometry(config),
        log_weights=None if log_weights is None else np.asarray(log_weights),
        num_classes=num_classes, class_names=names, sources=sources,
        classifier_k=config.classifier_k, embedder=embedder, backend=backend)
    index._train_split = train_split
    return index

  # -- the gallery -------------------------------------------------------------

  def __len__(self) -> int:
    return len(self._store)

  def __repr__(self) -> str:
    return (f"Index({len(self)} items, geometry={self.geometry!r}, "
            f"num_classes={self.num_classes}, sigma={self.sigma:g}, "
            f"weights={'learned' if self.log_weights is not None else 'none'}"
            f", network={'yes' if self.embedder is not None else 'no'})")

  @property
  def embeddings(self) -> np.ndarray:
    """``[N, D]`` the gallery in the index geometry (decoded)."""
    return self._store.decode(np.arange(len(self)))

  @property
  def labels(self) -> np.ndarray:
    """``[N]`` int32 gallery labels."""
    return self._store.labels

  @property
  def log_weights(self) -> np.ndarray | None:
    """``[N]`` float32 log-weights of the vote, or ``None`` (all 1)."""
    return self._store.log_weights

  def _need_embedder(self) -> Embedder:
    if self.embedder is None:
      raise ValueError("this index has no network (built from embeddings); "
                       "use the *_embeddings methods")
    return self.embedder

  def embed(self, images: Any) -> np.ndarray:
    """``[Q, D]`` network embeddings of ``[Q, H, W, C]`` float images.

    As the network gives them (the search applies the geometry).
    """
    return self._need_embedder()(images)

  def read_images(self, paths: Sequence[PathLike]) -> np.ndarray:
    """Image files as network input ``[Q, H, W, C]`` (resized, scaled)."""
    return self._need_embedder().read_images(paths)

  def add(self, images: Any, labels: Any, *,
          sources: Sequence[str | None] | None = None) -> None:
    """Embeds ``[n, H, W, C]`` images and appends them with ``[n]`` labels.

    A label at or above ``num_classes`` adds classes (named by their
    number). New items get log-weight 0 (weight 1) if the index has weights.
    """
    self.add_embeddings(self.embed(images), labels, sources=sources)

  def add_embeddings(self, embeddings: Any, labels: Any, *,
                     sources: Sequence[str | None] | None = None) -> None:
    """Appends ``[n, D]`` embeddings (as the network gives them)."""
    embeddings = np.asarray(embeddings)
    if embeddings.ndim != 2 or embeddings.shape[0] == 0 or (
        len(self) and embeddings.shape[1] != self._store.dim):
      raise ValueError(f"embeddings must be [n, {self._store.dim}] with n > 0,"
                       f" got shape {embeddings.shape}")
    if not np.issubdtype(embeddings.dtype, np.floating):
      raise ValueError(f"embeddings must be float, got {embeddings.dtype}")
    count = embeddings.shape[0]
    labels = _check_labels(labels, count)
    sources = _check_sources(sources, count)
    embeddings = self._in_geometry(embeddings, "embeddings")
    weights = (None if self.log_weights is None
               else np.zeros(count, np.float32))
    if isinstance(self._store, _CompressedStore):
      raise ValueError("a compressed index is read-only: add() items before "
                       "compress()")
    if not len(self):  # an empty gallery takes the new rows' size
      self._store = _ArrayStore(embeddings, labels, weights)
    else:
      self._store = self._store.append(embeddings, labels, weights)
    grown = int(labels.max()) + 1
    if grown > self.num_classes:
      self.class_names += [str(c) for c in range(self.num_classes, grown)]
      self.num_classes = grown
    self.sources += sources

  # -- search and classification -----------------------------------------------

  def _queries(self, embeddings: Any) -> np.ndarray:
    embeddings = np.asarray(embeddings)
    if not len(self):
      raise ValueError("the index's gallery is empty: add() items first")
    if embeddings.ndim != 2 or embeddings.shape[1] != self._store.dim or (
        embeddings.shape[0] == 0):
      raise ValueError(f"query embeddings must be [Q, {self._store.dim}] with"
                       f" Q > 0, got shape {embeddings.shape}")
    if not np.issubdtype(embeddings.dtype, np.floating):
      raise ValueError(f"query embeddings must be float, got dtype "
                       f"{embeddings.dtype}")
    return self._in_geometry(embeddings, "query embeddings")

  def _backend(self, backend: str | None) -> str:
    return neighbourlib.resolve_backend(
        self._check_backend(backend or self.backend), len(self))

  def search(self, images: Any, k: int, *,
             backend: str | None = None) -> SearchResult:
    """The ``k`` nearest gallery items of each of ``[Q, H, W, C]`` images.

    See :meth:`search_embeddings`.
    """
    return self.search_embeddings(self.embed(images), k, backend=backend)

  def search_embeddings(self, embeddings: Any, k: int, *,
                        backend: str | None = None) -> SearchResult:
    """The ``k`` nearest gallery items of each of ``[Q, D]`` embeddings.

    Args:
      embeddings: ``[Q, D]`` float query embeddings (as the network gives
        them; cosine indexes normalise them).
      k: neighbours per query, ``1 <= k <= N`` (a larger ``k`` is an
        error, not capped: the caller asked for items that do not exist).
      backend: overrides the index's search backend for this call.

    Returns:
      A :class:`SearchResult`, nearest first.

    Raises:
      ValueError: an empty gallery, ``k`` outside ``[1, N]``, or bad or
        non-finite embeddings.
    """
    queries = self._queries(embeddings)
    k = checks.positive_int("k", k)
    if k > len(self):
      raise ValueError(f"k={k} neighbours asked of a gallery of {len(self)} "
                       f"items; use k <= {len(self)}")
    indices, distances = self._store.search(queries, k,
                                            backend=self._backend(backend))
    return SearchResult(indices.astype(np.int32), distances.astype(np.float32),
                        self.labels[indices])

  def classify(self, images: Any, *, k: int | None = None,
               return_probs: bool = False, backend: str | None = None):
    """Kernel-vote classes of ``[Q, H, W, C]`` images (see
    :meth:`classify_embeddings`)."""
    return self.classify_embeddings(self.embed(images), k=k,
                                    return_probs=return_probs,
                                    backend=backend)

  def classify_embeddings(self, embeddings: Any, *, k: int | None = None,
                          return_probs: bool = False,
                          backend: str | None = None):
    r"""NNGK kernel vote over the ``k`` nearest gallery items.

    .. math::
      p(c \mid x) \propto \sum_{j \in N_k(x),\, y_j = c}
        e^{\theta_j} \exp\left(-\frac{\lVert x - c_j\rVert^2}{2\sigma^2}\right)

    as :func:`nngk_jax.evaluation.kernel_classify` (and
    :func:`nngk_jax.loss.kernel_class_log_probs`), over the decoded
    gallery rows.

    Args:
      embeddings: ``[Q, D]`` float query embeddings.
      k: neighbours of the vote (default ``classifier_k``); capped at ``N``.
      return_probs: also return the ``[Q, C]`` class probabilities.
      backend: overrides the search backend for this call.

    Returns:
      ``[Q]`` int predicted labels, or ``(labels, probs [Q, C])``.
    """
    queries = self._queries(embeddings)
    k = min(checks.positive_int("k", self.classifier_k if k is None else k),
            len(self))
    indices, _ = self._store.search(queries, k, backend=self._backend(backend))
    log_probs = np.empty((len(queries), self.num_classes), np.float32)
    rows_per_chunk = max(1, _MAX_GATHERED // (k * max(queries.shape[1],
                                                      self.num_classes)))
    for start in range(0, len(queries), rows_per_chunk):
      rows = slice(start, start + rows_per_chunk)
      chunk = indices[rows]
      flat = chunk.reshape(-1)
      weights = self.log_weights
      log_probs[rows] = np.asarray(_kernel_class_log_probs(
          jnp.asarray(queries[rows]), jnp.asarray(self._store.decode(flat)),
          jnp.asarray(self.labels[flat]),
          jnp.arange(flat.size, dtype=jnp.int32).reshape(chunk.shape),
          num_classes=self.num_classes, sigma=self.sigma,
          centre_log_weights=(None if weights is None
                              else jnp.asarray(weights[flat]))))
    predicted = np.argmax(log_probs, axis=1)
    if return_probs:
      return predicted, np.exp(log_probs)
    return predicted

  # -- compression -------------------------------------------------------------

  def compress(self, bytes_per_centre: int = 16, **options) -> "Index":
    """A copy of this index whose gallery is OPQ-compressed.

    ``bytes_per_centre`` bytes of codes per item (16: CUB's 5,994 x 512
    float32 gallery, 12 MB, in 96 KB of codes), trained by faiss
    (:func:`nngk_jax.compress.compress`; ``options`` are its keyword
    arguments: ``nbits``, ``opq``, ``seed``, ``opq_iterations``, ...).
    Search and the kernel vote then use asymmetric distances to the
    decoded items; labels, log-weights, sources and the network are kept.
    The compressed index is read-only (:meth:`add` before compressing).

    Raises:
      ValueError: the gallery is already compressed, or the budget does
        not divide the embedding size (the message lists valid budgets).
    """
    if isinstance(self._store, _CompressedStore):
      raise ValueError("this index is already compressed")
    bank = compresslib.compress(
        self._store.decode(np.arange(len(self))), self.labels,
        bytes_per_centre=bytes_per_centre, log_weights=self.log_weights,
        **options)
    return self._with_store(_CompressedStore(bank))

  def _with_store(self, store: GalleryStore) -> "Index":
    """A copy of this index (same settings and sources) over ``store``."""
    index = copy.copy(self)
    index._store = store
    index.sources = list(self.sources)
    index.class_names = list(self.class_names)
    return index

  @property
  def compressed(self) -> bool:
    """Whether the gallery is held as OPQ codes (:meth:`compress`)."""
    return isinstance(self._store, _CompressedStore)

  @property
  def nbytes(self) -> int:
    """Bytes of the gallery store: embeddings, labels and log-weights as
    arrays, or the compressed bank's :attr:`~CompressedBank.nbytes`."""
    if isinstance(self._store, _CompressedStore):
      return self._store.bank.nbytes
    return sum(a.nbytes for a in self._store.arrays().values())

  # -- display sources ---------------------------------------------------------

  def source_images(self, rows: Any) -> np.ndarray:
    """``[n, H, W, C]`` images of gallery ``rows``, from their sources.

    ``"train:ROW"`` reads the run's training split (loaded from the config
    when the index was loaded from disk), ``"file:PATH"`` the file; a row
    without a source is blank (zeros).

    Raises:
      ValueError: no network (nothing says what an image looks like).
      DataError: a source file cannot be read.
    """
    embedder = self._need_embedder()
    rows = np.asarray(rows).reshape(-1)
    images = np.zeros((len(rows),) + embedder.image_format.image_shape,
                      np.float32)
    train_rows = {}
    for position, row in enumerate(rows):
      source = self.sources[int(row)]
      if source is None:
        continue
      kind, _, where = source.partition(":")
      if kind == "file":
        images[position] = embedder.image_format.read(where)
      else:
        train_rows[position] = int(where)
    if train_rows:
      if self._train_split is None:
        config = embedder.config
        self._train_split = datalib.load_dataset(config.dataset,
                                                 **dict(config.data)).train
      batch = self._train_split.get_batch(np.array(list(train_rows.values())))
      images[list(train_rows)] = batch["image"]
    return images

  # -- files -------------------------------------------------------------------

  def save(self, path: PathLike) -> pathlib.Path:
    """Writes the index as a directory, self-contained, without pickle.

    ``index.json`` (format, version, kernel, geometry, classes, sources,
    the run's config and image format, SHA-256 of the other files),
    ``arrays.npz`` (``embeddings`` in the index geometry, ``labels``,
    ``log_weights``) and ``network.msgpack`` (the network's variables,
    ``flax.serialization``), when the index has a network.

    Returns:
      ``path`` as a ``pathlib.Path``.
    """
    directory = pathlib.Path(path)
    directory.mkdir(parents=True, exist_ok=True)
    store = self._store
    if isinstance(store, _CompressedStore):
      store.bank.save(directory)
      kind = "compressed"
      files = {name: _sha256(directory / name) for name in
               (compresslib.ARRAYS_FILE, compresslib.METADATA_FILE)}
    else:
      kind = "array"
      buffer = io.BytesIO()
      np.savez(buffer, **store.arrays())
      payload = buffer.getvalue()
      write_atomically(directory / ARRAYS_FILE, payload)
      files = {ARRAYS_FILE: hashlib.sha256(payload).hexdigest()}
    meta: dict[str, Any] = {
        "format": FORMAT, "version": FORMAT_VERSION, "store": kind,
        "num_items": len(self), "dim": store.dim, "sigma": self.sigma,
        "geometry": self.geometry, "num_classes": self.num_classes,
        "class_names": self.class_names, "classifier_k": self.classifier_k,
        "backend": self.backend, "sources": self.sources,
        "files": files, "network": None,
    }
    if self.embedder is not None:
      meta["network"] = self.embedder.save(directory)
      meta["files"][NETWORK_FILE] = _sha256(directory / NETWORK_FILE)
    write_atomically(directory / META_FILE,
                     (json.dumps(meta, indent=1) + "\n").encode())
    return directory

  @classmethod
  def load(cls, path: PathLike, *, backend: str | None = None) -> "Index":
    """The index :meth:`save` wrote to ``path``.

    ``backend`` overrides the saved search backend.

    Raises:
      FileNotFoundError: no ``index.json`` at ``path``.
      IndexFormatError: a file is damaged (not JSON, not an ``.npz``, a
        checksum or shape that does not match), missing, of another format
        or of a newer version; the message names the file.
    """
    directory = pathlib.Path(path)
    meta_path = directory / META_FILE
    if not meta_path.is_file():
      raise FileNotFoundError(f"no index at {directory} (no {META_FILE}); "
                              f"write one with Index.save(path)")
    meta = read_metadata(meta_path, format_name=FORMAT,
                         version=FORMAT_VERSION, what="an nngk-jax index",
                         error=IndexFormatError)
    try:
      files, store_kind = dict(meta["files"]), meta["store"]
      for name, digest in files.items():
        file_path = directory / name
        if not file_path.is_file():
          raise IndexFormatError(f"{directory} is incomplete: {name} is "
                                 f"missing")
        if _sha256(file_path) != digest:
          raise IndexFormatError(
              f"{file_path} is damaged: its SHA-256 differs from the one "
              f"{META_FILE} recorded when it was saved")
      if store_kind not in ("array", "compressed"):
        raise IndexFormatError(f"{directory}: unknown gallery store "
                               f"{store_kind!r}")
      embedder = (None if meta["network"] is None
                  else Embedder.load(directory, meta["network"]))
      if store_kind == "array":
        arrays = _load_arrays(directory / ARRAYS_FILE, meta)
      else:
        try:
          bank = compresslib.CompressedBank.load(directory)
        except ValueError as error:
          raise IndexFormatError(str(error)) from None
        if (bank.num_centres, bank.dim) != (meta["num_items"], meta["dim"]):
          raise IndexFormatError(
              f"{directory}: the compressed bank holds {bank.num_centres} x "
              f"{bank.dim}, {META_FILE} says {meta['num_items']} x "
              f"{meta['dim']}")
        arrays = {"embeddings": np.zeros((0, bank.dim), np.float32),
                  "labels": np.zeros((0,), np.int32)}
      index = cls(arrays["embeddings"], arrays["labels"],
                  sigma=meta["sigma"], geometry=meta["geometry"],
                  log_weights=arrays.get("log_weights"),
                  num_classes=meta["num_classes"],
                  class_names=meta["class_names"],
                  sources=meta["sources"] if store_kind == "array" else None,
                  classifier_k=meta["classifier_k"], embedder=embedder,
                  backend=backend or meta["backend"])
      if store_kind == "compressed":
        index = index._with_store(_CompressedStore(bank))
        index.sources = _check_sources(meta["sources"], len(bank.labels))
    except KeyError as error:
      raise IndexFormatError(f"{meta_path} is damaged: no {error} entry"
                             ) from None
    return index


def _load_arrays(path: pathlib.Path, meta: dict[str, Any]
                 ) -> dict[str, np.ndarray]:
  """The ``.npz`` arrays of a saved index, checked against its metadata."""
  try:
    with np.load(path, allow_pickle=False) as stored:
      arrays = {name: stored[name] for name in stored.files}
  except Exception as error:  # zipfile, numpy and OS errors alike
    raise IndexFormatError(f"{path} is damaged: not a readable .npz "
                           f"({type(error).__name__}: {error})") from None
  count, dim = meta["num_items"], meta["dim"]
  want = {"embeddings": (count, dim), "labels": (count,)}
  if "log_weights" in arrays:
    want["log_weights"] = (count,)
  for name, shape in want.items():
    if name not in arrays or arrays[name].shape != shape:
      found = arrays[name].shape if name in arrays else "nothing"
      raise IndexFormatError(f"{path}: {name} should be {list(shape)}, found "
                             f"{found}")
  return arrays

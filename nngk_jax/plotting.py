"""Figures for training runs: curves, embeddings, retrievals, comparisons.

Every function builds a :class:`matplotlib.figure.Figure` directly, without
``pyplot``, so nothing global changes: no backend is selected, no figure is
registered, and a notebook's inline backend is left alone. Figures are saved
as PNG (``dpi=120``, tight bounding box) into a path whose parent directories
are created; the figure is then left to the garbage collector.

Inputs are NumPy (or JAX) arrays on the host. Shapes are checked first, and a
mismatch raises ``ValueError`` naming the shapes found.
"""

from __future__ import annotations

import math
import os
import pathlib
import re
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib
import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

__all__ = [
    "plot_bars",
    "plot_continual",
    "plot_embedding_2d",
    "plot_history",
    "plot_retrieval_grid",
    "plot_tradeoff",
]

PathLike = str | os.PathLike

_DPI = 120
_RECALL_KEY = re.compile(r"^recall@(\d+)$")
_SAME_CLASS_COLOUR = "#2ca02c"  # green
_OTHER_CLASS_COLOUR = "#d62728"  # red
_QUERY_COLOUR = "#1f77b4"  # blue


def _save(fig: Figure, path: PathLike) -> pathlib.Path:
  """Saves ``fig`` as a PNG at ``path``, creating parent directories."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(path, dpi=_DPI, bbox_inches="tight")
  return path


def _is_number(value: Any) -> bool:
  """True for a finite real number (not a bool, not None, not NaN)."""
  if isinstance(value, bool) or value is None:
    return False
  try:
    return math.isfinite(float(value))
  except (TypeError, ValueError):
    return False


def _series(history: Sequence[Mapping[str, Any]],
            key: str) -> tuple[list[float], list[float]]:
  """``(epochs, values)`` of the records holding a finite ``key``."""
  epochs, values = [], []
  for i, record in enumerate(history):
    value = record.get(key)
    if _is_number(value):
      epochs.append(float(record.get("epoch", i + 1)))
      values.append(float(value))
  return epochs, values


def _metric_sort_key(key: str) -> tuple[int, int, str]:
  """Orders recall@K by K, then map@r, r_precision, nmi, then accuracies."""
  match = _RECALL_KEY.match(key)
  if match:
    return (0, int(match.group(1)), key)
  fixed = {"map@r": 1, "r_precision": 2, "nmi": 3}
  if key in fixed:
    return (fixed[key], 0, key)
  return (4, 0, key)


def _is_metric_key(key: str) -> bool:
  return (bool(_RECALL_KEY.match(key))
          or key in ("map@r", "r_precision", "nmi")
          or key.endswith("_accuracy"))


def plot_history(history: Sequence[Mapping[str, Any]],
                 path_prefix: PathLike) -> list[pathlib.Path]:
  """Draws the training curves of a run, one record per epoch.

  Writes ``<prefix>loss.png`` (``train_loss`` against epoch, with panels
  for ``embedding_norm`` and for the spread of the centre log-weights,
  ``log_weight_min`` / ``_std`` / ``_max``, and for the share of centres
  with no same-class neighbour, ``missing_positive_fraction``, and of the
  same-class centres among the K nearest, ``positive_share``, when the
  records have them: the curves that show at once whether training is
  drifting) and
  ``<prefix>metrics.png`` (every ``recall@K``, ``map@r``, ``r_precision``,
  ``nmi`` and ``*_accuracy`` found in any record, one line each, y in
  ``[0, 1]``). Keys may be missing from some records (evaluation every few
  epochs): each line joins the epochs that have it. Values that are None or
  not finite are skipped. A figure none of whose keys appears is not written.

  Args:
    history: per-epoch records as in ``history.jsonl``, e.g. ``{"epoch": 1,
      "train_loss": 0.5, "recall@1": 0.9, ...}``; a record without
      ``"epoch"`` counts as epoch ``position + 1``.
    path_prefix: a string prepended to the file names, e.g. ``"runs/x/"``
      (a directory) or ``"runs/x/digits_"``. A ``pathlib.Path``, which cannot
      keep a trailing separator, is taken as a directory.

  Returns:
    The paths written, ``loss.png`` first.

  Examples:
    >>> import tempfile
    >>> prefix = tempfile.mkdtemp() + "/run_"
    >>> paths = plot_history([{"epoch": 1, "train_loss": 0.9},
    ...                       {"epoch": 2, "train_loss": 0.5, "nmi": 0.7}],
    ...                      prefix)
    >>> [p.name for p in paths]
    ['run_loss.png', 'run_metrics.png']
  """
  if isinstance(path_prefix, os.PathLike) and not isinstance(path_prefix, str):
    prefix = os.fspath(path_prefix) + os.sep
  else:
    prefix = str(path_prefix)
  for i, record in enumerate(history):
    if not isinstance(record, Mapping):
      raise ValueError(f"plot_history: history[{i}] must be a dict, got "
                       f"{type(record).__name__}")

  written = []
  epochs, losses = _series(history, "train_loss")
  if epochs:
    panels = [("train_loss", "train loss", "Training loss")]
    if _series(history, "embedding_norm")[0]:
      panels.append(("embedding_norm", "mean L2 norm",
                     "Embedding norm (train mode)"))
    if _series(history, "log_weight_std")[0]:
      panels.append(("log_weight_std", "theta", "Centre log-weights"))
    if _series(history, "missing_positive_fraction")[0]:
      panels.append(("missing_positive_fraction", "share",
                     "Centres with no same-class neighbour"))
    if _series(history, "positive_share")[0]:
      panels.append(("positive_share", "share",
                     "Same-class centres among the K nearest"))
    fig = Figure(figsize=(6, 3 * len(panels) + 1), layout="constrained")
    axes = fig.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
    for ax, (key, ylabel, title) in zip(axes, panels):
      if key == "log_weight_std":
        for name, style in (("log_weight_min", ":"), ("log_weight_std", "-"),
                            ("log_weight_max", ":")):
          if _series(history, name)[0]:
            ax.plot(*_series(history, name), style, marker="o", markersize=3,
                    label=name.replace("log_weight_", ""))
        ax.legend(loc="best", fontsize="small")
      else:
        ax.plot(*_series(history, key), marker="o", markersize=3)
      ax.set_ylabel(ylabel)
      ax.set_title(title)
      ax.grid(alpha=0.3)
    axes[-1].set_xlabel("epoch")
    axes[-1].xaxis.set_major_locator(MaxNLocator(integer=True))
    written.append(_save(fig, prefix + "loss.png"))

  keys = sorted({k for record in history for k in record
                 if _is_metric_key(k) and _is_number(record[k])},
                key=_metric_sort_key)
  if keys:
    fig = Figure(figsize=(6, 4), layout="constrained")
    ax = fig.add_subplot()
    for key in keys:
      ax.plot(*_series(history, key), marker="o", markersize=3, label=key,
              clip_on=False)
    ax.set_ylim(0.0, 1.0)
    ax.set_xlabel("epoch")
    ax.set_ylabel("value")
    ax.set_title("Evaluation metrics")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize="small")
    written.append(_save(fig, prefix + "metrics.png"))
  return written


def _class_colours(num_classes: int) -> np.ndarray:
  """``[num_classes, 4]`` RGBA colours, qualitative while there are few."""
  if num_classes <= 10:
    return matplotlib.colormaps["tab10"](np.arange(num_classes))
  if num_classes <= 20:
    return matplotlib.colormaps["tab20"](np.arange(num_classes))
  return matplotlib.colormaps["turbo"](np.linspace(0.0, 1.0, num_classes))


def _class_name(label: int, class_names: Sequence[str] | None) -> str:
  if class_names is None:
    return str(label)
  if not 0 <= label < len(class_names):
    raise ValueError(f"label {label} has no name in class_names of length "
                     f"{len(class_names)}")
  return str(class_names[label])


def _project_2d(embeddings: np.ndarray, method: str,
                seed: int) -> tuple[np.ndarray, tuple[str, str]]:
  """``[N, 2]`` coordinates and the two axis labels."""
  num, dim = embeddings.shape
  if dim <= 2:
    coords = np.zeros((num, 2))
    coords[:, :dim] = embeddings
    return coords, ("dim 1", "dim 2")
  if method == "tsne":
    if num < 2:
      raise ValueError(f"plot_embedding_2d: t-SNE needs N >= 2 points; got "
                       f"embeddings of shape {embeddings.shape}")
    from sklearn.manifold import TSNE  # Slow to import; only when asked for.
    perplexity = min(30.0, max(1.0, (num - 1) / 3))
    coords = TSNE(n_components=2, perplexity=perplexity, init="pca",
                  random_state=seed).fit_transform(embeddings)
    return coords, ("t-SNE 1", "t-SNE 2")
  centred = embeddings - embeddings.mean(axis=0)
  _, singular, vt = np.linalg.svd(centred, full_matrices=False)
  coords = np.zeros((num, 2))
  components = min(2, vt.shape[0])
  coords[:, :components] = centred @ vt[:components].T
  total = float(np.sum(singular**2))
  share = [float(s**2) / total if total > 0 else 0.0 for s in singular[:2]]
  share += [0.0] * (2 - len(share))
  return coords, (f"PC 1 ({share[0]:.0%})", f"PC 2 ({share[1]:.0%})")


def plot_embedding_2d(embeddings: np.ndarray,
                      labels: np.ndarray,
                      path: PathLike,
                      *,
                      title: str = "",
                      class_names: Sequence[str] | None = None,
                      method: str = "pca",
                      seed: int = 0,
                      max_legend: int = 30) -> pathlib.Path:
  """Scatters a 2-D projection of embeddings, coloured by label.

  With ``D > 2`` the embeddings are projected on their first two principal
  components (``method="pca"``, an SVD of the centred data) or embedded by
  ``sklearn.manifold.TSNE`` (``method="tsne"``); with ``D <= 2`` they are
  drawn as they are. Points are drawn in a random order (from ``seed``) so no
  class hides under another.

  Args:
    embeddings: ``[N, D]`` real, finite.
    labels: ``[N]`` integer class ids; ``class_names[c]`` names class ``c``.
    path: the PNG to write.
    title: the figure title.
    class_names: names indexed by label; the labels themselves when None.
    method: ``"pca"`` or ``"tsne"``.
    seed: seeds the drawing order and t-SNE.
    max_legend: the legend is drawn only up to this many classes.

  Returns:
    ``path`` as a ``pathlib.Path``.

  Examples:
    >>> import tempfile, pathlib
    >>> x = np.random.default_rng(0).normal(size=(20, 5))
    >>> out = plot_embedding_2d(x, np.arange(20) % 3,
    ...                         pathlib.Path(tempfile.mkdtemp()) / "emb.png")
    >>> out.name
    'emb.png'
  """
  embeddings = np.asarray(embeddings)
  labels = np.asarray(labels)
  if (embeddings.ndim != 2 or labels.ndim != 1
      or embeddings.shape[0] != labels.shape[0] or embeddings.shape[0] == 0):
    raise ValueError(
        "plot_embedding_2d: embeddings must be [N, D] and labels [N] with "
        f"N > 0; got shapes {embeddings.shape} and {labels.shape}")
  if not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(
        f"plot_embedding_2d: labels must be integers, got dtype {labels.dtype}")
  embeddings = embeddings.astype(np.float64)
  if not np.all(np.isfinite(embeddings)):
    raise ValueError("plot_embedding_2d: embeddings hold NaN or infinity")
  if method not in ("pca", "tsne"):
    raise ValueError(
        f"plot_embedding_2d: method must be 'pca' or 'tsne', got {method!r}")

  coords, (xlabel, ylabel) = _project_2d(embeddings, method, seed)
  classes, class_index = np.unique(labels, return_inverse=True)
  names = [_class_name(int(c), class_names) for c in classes]
  colours = _class_colours(len(classes))
  order = np.random.default_rng(seed).permutation(len(labels))
  size = float(np.clip(3000.0 / len(labels), 3.0, 30.0))

  fig = Figure(figsize=(6.5, 5.5), layout="constrained")
  ax = fig.add_subplot()
  ax.scatter(coords[order, 0], coords[order, 1],
             c=colours[class_index[order]], s=size, linewidths=0, alpha=0.8)
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  if title:
    ax.set_title(title)
  if len(classes) <= max_legend:
    handles = [Line2D([], [], linestyle="", marker="o", markersize=6,
                      color=colour, label=name)
               for colour, name in zip(colours, names)]
    ax.legend(handles=handles, loc="center left", bbox_to_anchor=(1.01, 0.5),
              fontsize="small", frameon=False,
              ncols=1 if len(classes) <= 15 else 2)
  return _save(fig, path)


def plot_retrieval_grid(images: np.ndarray,
                        labels: np.ndarray,
                        query_idx: np.ndarray,
                        neighbour_idx: np.ndarray,
                        path: PathLike,
                        *,
                        class_names: Sequence[str] | None = None
                        ) -> pathlib.Path:
  """Shows each query beside its retrieved neighbours, framed by correctness.

  One row per query: the query (framed blue), then its ``k`` neighbours in
  rank order, framed green when their label equals the query's and red
  otherwise. Each image is titled with its class name.

  Args:
    images: ``[N, H, W, C]`` in ``[-1, 1]`` with ``C`` 1 (grey) or 3 (RGB).
    labels: ``[N]`` integer class ids.
    query_idx: ``[Q]`` indices into ``images`` of the queries.
    neighbour_idx: ``[Q, k]`` indices into ``images``, row ``q`` ranking the
      neighbours of query ``q``.
    path: the PNG to write.
    class_names: names indexed by label; the labels themselves when None.

  Returns:
    ``path`` as a ``pathlib.Path``.

  Examples:
    >>> import tempfile, pathlib
    >>> images = np.linspace(-1, 1, 4 * 8 * 8).reshape(4, 8, 8, 1)
    >>> out = plot_retrieval_grid(images, np.array([0, 0, 1, 1]), [0],
    ...                           [[1, 2]],
    ...                           pathlib.Path(tempfile.mkdtemp()) / "r.png")
    >>> out.name
    'r.png'
  """
  images = np.asarray(images)
  labels = np.asarray(labels)
  query_idx = np.asarray(query_idx)
  neighbour_idx = np.asarray(neighbour_idx)
  if images.ndim != 4 or images.shape[-1] not in (1, 3):
    raise ValueError("plot_retrieval_grid: images must be [N, H, W, C] with "
                     f"C in (1, 3); got shape {images.shape}")
  if labels.shape != images.shape[:1]:
    raise ValueError(
        f"plot_retrieval_grid: labels must be [N] = [{images.shape[0]}] to "
        f"match images {images.shape}; got shape {labels.shape}")
  if (query_idx.ndim != 1 or neighbour_idx.ndim != 2
      or neighbour_idx.shape[0] != query_idx.shape[0]
      or query_idx.shape[0] == 0 or neighbour_idx.shape[1] == 0):
    raise ValueError(
        "plot_retrieval_grid: query_idx must be [Q] and neighbour_idx [Q, k] "
        f"with Q, k > 0; got shapes {query_idx.shape} and "
        f"{neighbour_idx.shape}")
  for name, idx in (("query_idx", query_idx), ("neighbour_idx", neighbour_idx)):
    if not np.issubdtype(idx.dtype, np.integer):
      raise ValueError(
          f"plot_retrieval_grid: {name} must be integers, got dtype {idx.dtype}")
    if np.any((idx < 0) | (idx >= images.shape[0])):
      raise ValueError(
          f"plot_retrieval_grid: {name} must lie in [0, {images.shape[0]}); "
          f"got values in [{idx.min()}, {idx.max()}]")

  num_queries, k = neighbour_idx.shape
  height, width = images.shape[1:3]
  cell = 1.6
  aspect = width / height
  fig = Figure(figsize=(cell * aspect * (k + 1), (cell + 0.3) * num_queries),
               layout="constrained")
  axes = fig.subplots(num_queries, k + 1, squeeze=False)
  for row, query in enumerate(query_idx):
    query_label = int(labels[query])
    cells = [(int(query), _QUERY_COLOUR, "query")]
    for rank, neighbour in enumerate(neighbour_idx[row], start=1):
      same = int(labels[neighbour]) == query_label
      cells.append((int(neighbour),
                    _SAME_CLASS_COLOUR if same else _OTHER_CLASS_COLOUR,
                    f"#{rank}"))
    for ax, (index, colour, tag) in zip(axes[row], cells):
      _show_image(ax, images[index])
      name = _class_name(int(labels[index]), class_names)
      ax.set_title(f"{tag}: {name}", fontsize=8, color=colour)
      for spine in ax.spines.values():
        spine.set_edgecolor(colour)
        spine.set_linewidth(3)
  return _save(fig, path)


def _show_image(ax: Any, image: np.ndarray) -> None:
  """Draws one ``[H, W, C]`` image in ``[-1, 1]`` without ticks."""
  pixels = np.clip((image.astype(np.float64) + 1.0) / 2.0, 0.0, 1.0)
  if pixels.shape[-1] == 1:
    ax.imshow(pixels[..., 0], cmap="gray", vmin=0.0, vmax=1.0)
  else:
    ax.imshow(pixels)
  ax.set_xticks([])
  ax.set_yticks([])


def plot_bars(names: Sequence[str],
              means: Sequence[float],
              spreads: Sequence[float],
              path: PathLike,
              *,
              ylabel: str = "MAP@R",
              title: str = "") -> pathlib.Path:
  """Draws one bar per name with an error bar, e.g. MAP@R per loss.

  Args:
    names: ``[B]`` bar labels.
    means: ``[B]`` bar heights.
    spreads: ``[B]`` non-negative half-lengths of the error bars (e.g. the
      standard deviation over seeds); 0 draws no bar.
    path: the PNG to write.
    ylabel: the y-axis label.
    title: the figure title.

  Returns:
    ``path`` as a ``pathlib.Path``.

  Examples:
    >>> import tempfile, pathlib
    >>> out = plot_bars(["nngk", "softmax"], [0.61, 0.55], [0.01, 0.02],
    ...                 pathlib.Path(tempfile.mkdtemp()) / "bars.png")
    >>> out.name
    'bars.png'
  """
  names = [str(n) for n in names]
  means_array = np.asarray(means, dtype=np.float64)
  spreads_array = np.asarray(spreads, dtype=np.float64)
  if (means_array.ndim != 1 or spreads_array.shape != means_array.shape
      or len(names) != means_array.shape[0] or not names):
    raise ValueError(
        "plot_bars: names, means and spreads must be non-empty and of one "
        f"length; got {len(names)} names, means shape {means_array.shape}, "
        f"spreads shape {spreads_array.shape}")
  if np.any(spreads_array < 0):
    raise ValueError(f"plot_bars: spreads must be non-negative, got "
                     f"{spreads_array.tolist()}")

  positions = np.arange(len(names))
  fig = Figure(figsize=(max(4.0, 0.9 * len(names) + 1.5), 4),
               layout="constrained")
  ax = fig.add_subplot()
  colours = _class_colours(len(names))
  bars = ax.bar(positions, means_array, yerr=spreads_array, capsize=4,
                color=colours, edgecolor="black", linewidth=0.5)
  for bar, mean, spread in zip(bars, means_array, spreads_array):
    # Above the error bar (below it for a negative mean), not over it.
    up = mean >= 0
    ax.annotate(f"{mean:.3f}",
                (bar.get_x() + bar.get_width() / 2,
                 mean + spread if up else mean - spread),
                xytext=(0, 3 if up else -3), textcoords="offset points",
                ha="center", va="bottom" if up else "top", fontsize=8)
  ax.set_xticks(positions, names,
                rotation=30 if max(map(len, names)) > 8 else 0,
                ha="right" if max(map(len, names)) > 8 else "center")
  ax.set_ylabel(ylabel)
  ax.margins(y=0.15)
  ax.grid(axis="y", alpha=0.3)
  ax.set_axisbelow(True)
  if title:
    ax.set_title(title)
  return _save(fig, path)


def plot_tradeoff(curves: Mapping[str, Mapping[str, Any]],
                  path: PathLike, *, xlabel: str = "share of inputs that skip f2",
                  ylabel: str = "test accuracy",
                  title: str = "") -> pathlib.Path:
  """Accuracy against the share of skipped work, one line per curve.

  Args:
    curves: label -> ``{"x": [P], "y": [P], "y_spread": [P] (optional,
      error bars), "baseline": float (optional, a dashed horizontal line in
      the curve's colour, e.g. the plain network's accuracy)}``.
    path: the PNG to write.
    xlabel, ylabel, title: axis labels and title.

  Returns:
    ``path`` as a ``pathlib.Path``.

  Examples:
    >>> import tempfile, pathlib
    >>> out = plot_tradeoff({"digits": {"x": [0.0, 0.5, 1.0],
    ...                                 "y": [0.98, 0.97, 0.9],
    ...                                 "baseline": 0.98}},
    ...                     pathlib.Path(tempfile.mkdtemp()) / "t.png")
    >>> out.name
    't.png'
  """
  if not curves:
    raise ValueError("plot_tradeoff: no curves given")
  fig = Figure(figsize=(6, 4), layout="constrained")
  ax = fig.add_subplot()
  for colour, (label, curve) in zip(_class_colours(len(curves)),
                                    curves.items()):
    x = np.asarray(curve["x"], dtype=np.float64)
    y = np.asarray(curve["y"], dtype=np.float64)
    spread = np.asarray(curve.get("y_spread", np.zeros_like(y)),
                        dtype=np.float64)
    if x.ndim != 1 or y.shape != x.shape or spread.shape != x.shape:
      raise ValueError(
          f"plot_tradeoff: curve {label!r} needs x, y (and y_spread) of one "
          f"1-D shape; got {x.shape}, {y.shape}, {spread.shape}")
    order = np.argsort(x, kind="stable")
    ax.errorbar(x[order], y[order], yerr=spread[order], marker="o",
                markersize=3, capsize=3, color=colour, label=str(label))
    if _is_number(curve.get("baseline")):
      ax.axhline(float(curve["baseline"]), color=colour, linestyle="--",
                 linewidth=1, label=f"{label}: plain network")
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  ax.set_xlim(-0.02, 1.02)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  if title:
    ax.set_title(title)
  return _save(fig, path)


def plot_continual(accuracy: Mapping[str, np.ndarray],
                   path: PathLike,
                   *,
                   ylabel: str = "accuracy",
                   title: str = "") -> pathlib.Path:
  """Accuracy on each task as tasks arrive, one panel per method.

  Line ``j`` of a panel is the accuracy on task ``j``'s test split after
  training each task ``i >= j`` (mean over seeds, shaded band one standard
  deviation); the thick black line is the mean over the tasks seen so far.
  A method with a single row (joint training) is drawn as a dashed
  horizontal line at its mean in every panel.

  Args:
    accuracy: method name to ``[seeds, E, E]`` arrays, ``[s, i, j]`` the
      accuracy on task ``j`` after task ``i`` (NaN for ``j > i``), or
      ``[seeds, 1, E]`` for a method trained once on every task.
    path: the PNG to write.
    ylabel: the y-axis label.
    title: the figure title.

  Returns:
    ``path`` as a ``pathlib.Path``.

  Examples:
    >>> import tempfile, pathlib
    >>> acc = np.array([[[0.9, np.nan], [0.5, 0.8]]])
    >>> out = plot_continual({"finetune": acc, "joint": acc[:, 1:]},
    ...                      pathlib.Path(tempfile.mkdtemp()) / "tasks.png")
    >>> out.name
    'tasks.png'
  """
  sequential = {name: np.asarray(a, np.float64) for name, a in
                accuracy.items() if np.ndim(a) == 3 and np.shape(a)[1] > 1}
  once = {name: np.asarray(a, np.float64) for name, a in accuracy.items()
          if np.ndim(a) == 3 and np.shape(a)[1] == 1}
  if not sequential or len(sequential) + len(once) != len(accuracy):
    raise ValueError(
        "plot_continual: need at least one method with [seeds, E, E] "
        "accuracies (others [seeds, 1, E]); got shapes "
        f"{ {n: np.shape(a) for n, a in accuracy.items()} }")
  num_tasks = next(iter(sequential.values())).shape[1]
  cols = min(4, len(sequential))
  rows = math.ceil(len(sequential) / cols)
  fig = Figure(figsize=(3.3 * cols + 0.6, 3.0 * rows + 0.5),
               layout="constrained")
  grid = fig.subplots(rows, cols, sharey=True, squeeze=False)
  for ax in grid.ravel()[len(sequential):]:
    ax.set_visible(False)
  axes = grid.ravel()
  colours = _class_colours(num_tasks)
  steps = np.arange(1, num_tasks + 1)
  for ax, (name, acc) in zip(axes, sequential.items()):
    with warnings.catch_warnings():  # the upper triangle is all NaN
      warnings.simplefilter("ignore", RuntimeWarning)
      mean, std = np.nanmean(acc, axis=0), np.nanstd(acc, axis=0)
    for j in range(num_tasks):
      ax.plot(steps[j:], mean[j:, j], marker="o", markersize=3,
              color=colours[j], label=f"task {j + 1}")
      ax.fill_between(steps[j:], (mean - std)[j:, j], (mean + std)[j:, j],
                      color=colours[j], alpha=0.15, linewidth=0)
    ax.plot(steps, np.nanmean(mean, axis=1), color="black", linewidth=2.5,
            label="mean so far")
    for other, single in once.items():
      ax.axhline(np.nanmean(single), color="grey", linestyle="--",
                 label=f"{other} (all tasks)")
    ax.set_title(name, fontsize=10)
    ax.set_xlabel("after task")
    ax.set_xticks(steps)
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
  for row in grid:
    row[0].set_ylabel(ylabel)
  axes[len(sequential) - 1].legend(fontsize=7, loc="lower left")
  if title:
    fig.suptitle(title)
  return _save(fig, path)

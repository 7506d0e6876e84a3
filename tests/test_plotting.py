"""Tests for nngk_jax.plotting: each figure is written as a readable PNG."""

from __future__ import annotations

import pathlib
import sys

import numpy as np
import pytest
from PIL import Image

from nngk_jax import plotting

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _check_png(path: pathlib.Path, min_side: int = 100) -> tuple[int, int]:
  """Asserts ``path`` is a non-empty PNG of a plausible size; returns it."""
  assert path.is_file()
  assert path.read_bytes()[:8] == _PNG_MAGIC
  with Image.open(path) as image:
    width, height = image.size
  assert min_side <= width <= 6000 and min_side <= height <= 6000, (width,
                                                                    height)
  return width, height


# ------------------------------------------------------------------- history


def _full_history(epochs: int = 4) -> list[dict]:
  return [{"epoch": e, "train_loss": 1.0 / e, "images_per_second": 900.0,
           "recall@1": 0.5 + 0.1 * e, "recall@2": 0.6 + 0.08 * e,
           "map@r": 0.3 + 0.1 * e, "r_precision": 0.35 + 0.1 * e,
           "nmi": 0.4 + 0.1 * e, "kernel_accuracy": 0.7 + 0.05 * e,
           "softmax_accuracy": 0.6 + 0.05 * e} for e in range(1, epochs + 1)]


def test_history_writes_loss_and_metrics(tmp_path):
  paths = plotting.plot_history(_full_history(), str(tmp_path) + "/")
  assert paths == [tmp_path / "loss.png", tmp_path / "metrics.png"]
  for path in paths:
    _check_png(path)


def test_history_prefix_is_concatenated_and_parents_created(tmp_path):
  prefix = str(tmp_path / "runs" / "x" / "digits_")
  paths = plotting.plot_history(_full_history(), prefix)
  assert [p.name for p in paths] == ["digits_loss.png", "digits_metrics.png"]
  assert all(p.parent == tmp_path / "runs" / "x" for p in paths)


def test_history_path_object_is_a_directory(tmp_path):
  paths = plotting.plot_history(_full_history(), tmp_path / "run")
  assert paths == [tmp_path / "run" / "loss.png",
                   tmp_path / "run" / "metrics.png"]


def test_history_with_missing_keys(tmp_path):
  # Evaluation every other epoch; one record without a loss; a NaN and a
  # None value; accuracy only at the end.
  history = [
      {"epoch": 1, "train_loss": 0.9},
      {"epoch": 2, "train_loss": 0.7, "recall@1": 0.5, "map@r": 0.2},
      {"epoch": 3, "train_loss": float("nan")},
      {"epoch": 4, "train_loss": 0.4, "recall@1": 0.6, "map@r": None},
      {"epoch": 5, "recall@1": 0.7, "kernel_accuracy": 0.8},
  ]
  paths = plotting.plot_history(history, str(tmp_path) + "/")
  assert [p.name for p in paths] == ["loss.png", "metrics.png"]
  for path in paths:
    _check_png(path)


def test_history_without_metric_keys_writes_only_loss(tmp_path):
  history = [{"epoch": e, "train_loss": 1.0 / e, "images_per_second": 10.0,
              "grad_norm": 2.0} for e in range(1, 4)]
  paths = plotting.plot_history(history, str(tmp_path) + "/")
  assert paths == [tmp_path / "loss.png"]
  assert not (tmp_path / "metrics.png").exists()
  _check_png(paths[0])


def test_history_single_record(tmp_path):
  paths = plotting.plot_history([{"epoch": 1, "train_loss": 0.5, "nmi": 0.3}],
                                str(tmp_path) + "/")
  assert len(paths) == 2


def test_history_rejects_non_dict_record(tmp_path):
  with pytest.raises(ValueError, match=r"history\[1\]"):
    plotting.plot_history([{"epoch": 1}, 0.5], str(tmp_path) + "/")


def test_metric_keys_are_ordered():
  keys = ["nmi", "softmax_accuracy", "recall@10", "map@r", "recall@2",
          "r_precision", "recall@1", "kernel_accuracy"]
  assert sorted(keys, key=plotting._metric_sort_key) == [
      "recall@1", "recall@2", "recall@10", "map@r", "r_precision", "nmi",
      "kernel_accuracy", "softmax_accuracy"]


# ----------------------------------------------------------------- embedding


def _clusters(num_classes: int = 4, per_class: int = 15, dim: int = 8,
              seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  rng = np.random.default_rng(seed)
  centres = 5.0 * rng.normal(size=(num_classes, dim))
  labels = np.repeat(np.arange(num_classes), per_class)
  return centres[labels] + rng.normal(size=(len(labels), dim)), labels


@pytest.mark.parametrize("dim", [1, 2, 8])
def test_embedding_pca_and_raw(tmp_path, dim):
  embeddings, labels = _clusters(dim=dim)
  path = plotting.plot_embedding_2d(
      embeddings, labels, tmp_path / "sub" / "emb.png", title="digits",
      class_names=["zero", "one", "two", "three"])
  assert path == tmp_path / "sub" / "emb.png"
  _check_png(path)


def test_embedding_tsne(tmp_path):
  embeddings, labels = _clusters(per_class=8)
  path = plotting.plot_embedding_2d(embeddings, labels, tmp_path / "t.png",
                                    method="tsne", seed=1)
  _check_png(path)


def test_embedding_many_classes_without_legend(tmp_path):
  embeddings, labels = _clusters(num_classes=40, per_class=3)
  _check_png(plotting.plot_embedding_2d(embeddings, labels,
                                        tmp_path / "many.png"))


def test_pca_matches_reference_projection():
  embeddings, _ = _clusters(dim=5)
  coords, _ = plotting._project_2d(embeddings, "pca", seed=0)
  centred = embeddings - embeddings.mean(axis=0)
  eigenvalues, eigenvectors = np.linalg.eigh(np.cov(centred, rowvar=False))
  top = eigenvectors[:, np.argsort(eigenvalues)[::-1][:2]]
  expected = centred @ top
  # Principal directions are defined up to sign.
  np.testing.assert_allclose(np.abs(coords), np.abs(expected), atol=1e-8)


def test_embedding_length_mismatch_names_shapes(tmp_path):
  with pytest.raises(ValueError, match=r"\(10, 3\).*\(9,\)"):
    plotting.plot_embedding_2d(np.zeros((10, 3)), np.zeros(9, int),
                               tmp_path / "x.png")


@pytest.mark.parametrize("embeddings,labels", [
    (np.zeros(10), np.zeros(10, int)),
    (np.zeros((10, 3)), np.zeros((10, 1), int)),
    (np.zeros((0, 3)), np.zeros(0, int)),
])
def test_embedding_bad_shapes(tmp_path, embeddings, labels):
  with pytest.raises(ValueError, match="shapes"):
    plotting.plot_embedding_2d(embeddings, labels, tmp_path / "x.png")


def test_embedding_rejects_bad_values(tmp_path):
  embeddings, labels = _clusters()
  with pytest.raises(ValueError, match="method"):
    plotting.plot_embedding_2d(embeddings, labels, tmp_path / "x.png",
                               method="umap")
  with pytest.raises(ValueError, match="class_names"):
    plotting.plot_embedding_2d(embeddings, labels, tmp_path / "x.png",
                               class_names=["a", "b"])
  embeddings[3, 1] = np.nan
  with pytest.raises(ValueError, match="NaN"):
    plotting.plot_embedding_2d(embeddings, labels, tmp_path / "x.png")
  assert not (tmp_path / "x.png").exists()


# ----------------------------------------------------------------- retrieval


def _images(n: int, channels: int, size: int = 16,
            seed: int = 0) -> np.ndarray:
  rng = np.random.default_rng(seed)
  return rng.uniform(-1.0, 1.0, size=(n, size, size, channels))


@pytest.mark.parametrize("channels", [1, 3])
def test_retrieval_grid(tmp_path, channels):
  images = _images(12, channels)
  labels = np.arange(12) % 3
  query_idx = np.array([0, 1, 2])
  neighbour_idx = np.array([[3, 6, 4, 9], [4, 7, 10, 5], [5, 8, 11, 0]])
  path = plotting.plot_retrieval_grid(
      images, labels, query_idx, neighbour_idx, tmp_path / "grid.png",
      class_names=["cat", "dog", "bird"])
  width, height = _check_png(path)
  assert width > height  # 3 rows of 5 images.


def test_retrieval_grid_frames_by_label(tmp_path, monkeypatch):
  # Capture the figure to check the frame colours.
  saved = []
  monkeypatch.setattr(plotting, "_save",
                      lambda fig, path: saved.append(fig) or path)
  labels = np.array([0, 0, 1])
  plotting.plot_retrieval_grid(_images(3, 1), labels, [0], [[1, 2]],
                               tmp_path / "g.png")
  axes = saved[0].axes
  colours = [axes[i].spines["left"].get_edgecolor() for i in range(3)]
  import matplotlib.colors as mcolors
  assert mcolors.to_hex(colours[1]) == plotting._SAME_CLASS_COLOUR
  assert mcolors.to_hex(colours[2]) == plotting._OTHER_CLASS_COLOUR
  assert axes[0].get_images()[0].get_cmap().name == "gray"


def test_retrieval_grid_row_mismatch_names_shapes(tmp_path):
  with pytest.raises(ValueError, match=r"\(2,\).*\(3, 4\)"):
    plotting.plot_retrieval_grid(_images(12, 3), np.zeros(12, int), [0, 1],
                                 np.zeros((3, 4), int), tmp_path / "x.png")


@pytest.mark.parametrize("images,labels,query_idx,neighbour_idx,match", [
    (_images(4, 2), np.zeros(4, int), [0], [[1]], r"\(4, 16, 16, 2\)"),
    (np.zeros((4, 16, 16)), np.zeros(4, int), [0], [[1]], r"\(4, 16, 16\)"),
    (_images(4, 1), np.zeros(5, int), [0], [[1]], r"\(5,\)"),
    (_images(4, 1), np.zeros(4, int), [0], [1], r"\(1,\)"),
    (_images(4, 1), np.zeros(4, int), [0], [[4]], r"\[0, 4\)"),
    (_images(4, 1), np.zeros(4, int), [-1], [[1]], r"\[0, 4\)"),
    (_images(4, 1), np.zeros(4, int), [0.0], [[1]], "integers"),
])
def test_retrieval_grid_bad_inputs(tmp_path, images, labels, query_idx,
                                   neighbour_idx, match):
  with pytest.raises(ValueError, match=match):
    plotting.plot_retrieval_grid(images, labels, query_idx, neighbour_idx,
                                 tmp_path / "x.png")


# ---------------------------------------------------------------------- bars


def test_bars(tmp_path):
  path = plotting.plot_bars(
      ["nngk", "softmax", "proxy_anchor", "triplet_semihard"],
      [0.62, 0.55, 0.6, 0.5], [0.01, 0.02, 0.0, 0.03],
      tmp_path / "cmp" / "bars.png", ylabel="MAP@R", title="CUB")
  _check_png(path)


@pytest.mark.parametrize("names,means,spreads,match", [
    (["a", "b"], [0.1], [0.1, 0.2], r"2 names.*\(1,\).*\(2,\)"),
    ([], [], [], "non-empty"),
    (["a"], [0.1], [-0.1], "non-negative"),
])
def test_bars_bad_inputs(tmp_path, names, means, spreads, match):
  with pytest.raises(ValueError, match=match):
    plotting.plot_bars(names, means, spreads, tmp_path / "x.png")


# -------------------------------------------------------------------- global


def test_no_pyplot_and_backend_untouched(tmp_path):
  import matplotlib
  backend = matplotlib.get_backend()
  plotting.plot_bars(["a"], [0.5], [0.1], tmp_path / "b.png")
  plotting.plot_history(_full_history(2), str(tmp_path) + "/")
  assert matplotlib.get_backend() == backend
  if "matplotlib.pyplot" in sys.modules:  # Imported by another test, maybe.
    import matplotlib.pyplot as plt
    assert not plt.get_fignums()


def test_loss_figure_adds_norm_and_weight_panels(tmp_path):
  """The drift diagnostics get their own panels when the records have them."""
  base = [{"epoch": e, "train_loss": 1.0 / e} for e in (1, 2, 3)]
  full = [dict(r, embedding_norm=2.0 * r["epoch"], log_weight_std=0.1,
               log_weight_min=-0.3, log_weight_max=0.2) for r in base]
  plotting.plot_history(base, str(tmp_path / "a_"))
  plotting.plot_history(full, str(tmp_path / "b_"))
  one = Image.open(tmp_path / "a_loss.png").size
  three = Image.open(tmp_path / "b_loss.png").size
  assert one[0] == three[0] and three[1] > 2 * one[1]

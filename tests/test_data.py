"""Tests for nngk_jax.data: splits, datasets, loaders and names."""

from __future__ import annotations

import pathlib

import numpy as np
import pytest
from PIL import Image, ImageDraw

from nngk_jax import data
from nngk_jax.data import splits

# ----------------------------------------------------------------------------
# Fixtures.

_COLOURS = {"blue": (0, 0, 255), "green": (0, 200, 0), "red": (255, 0, 0),
            "yellow": (255, 255, 0)}


def _make_folder(root: pathlib.Path, per_class: dict[str, int]) -> pathlib.Path:
  """One sub-folder per class of 12x10 PNGs with a coloured rectangle."""
  for name, count in per_class.items():
    (root / name).mkdir(parents=True)
    for i in range(count):
      image = Image.new("RGB", (12, 10), (20 * i, 20 * i, 20 * i))
      ImageDraw.Draw(image).rectangle([i, 1, i + 4, 8],
                                      fill=_COLOURS.get(name, (9, 9, 9)))
      image.save(root / name / f"img{i}.png")
  return root


@pytest.fixture(scope="module")
def digits_metric() -> data.Dataset:
  return data.load_dataset("digits")


@pytest.fixture
def shapes_folder(tmp_path: pathlib.Path) -> pathlib.Path:
  root = _make_folder(tmp_path / "shapes", {c: 5 for c in _COLOURS})
  (root / "red" / "notes.txt").write_text("not an image")
  (root / "red" / ".hidden.png").write_bytes(b"ignored")
  (root / "README.md").write_text("ignored")
  # Mixed-case extensions count as images.
  Image.new("L", (7, 7), 128).save(root / "blue" / "EXTRA.JPG", format="JPEG")
  return root


def _small_split(n: int = 10, num_classes: int = 3) -> data.Split:
  images = np.linspace(-1, 1, n * 2 * 2 * 1, dtype=np.float32)
  return data.Split(images.reshape(n, 2, 2, 1), np.arange(n) % num_classes,
                    tuple(f"c{c}" for c in range(num_classes)))


# ----------------------------------------------------------------------------
# Split and Dataset validation.


def test_split_basics():
  split = _small_split()
  assert len(split) == 10 and split.num_classes == 3
  assert split.image_shape == (2, 2, 1)
  assert split.images.dtype == np.float32 and split.labels.dtype == np.int32
  example = split[-1]
  assert example["index"] == 9 and example["label"] == 0
  np.testing.assert_array_equal(example["image"], split.images[9])
  with pytest.raises(IndexError):
    split[10]
  with pytest.raises(TypeError):
    split[1.0]
  with pytest.raises(ValueError):  # read-only
    split.images[0, 0, 0, 0] = 0.0
  batch = split.get_batch(np.array([3, 1]))
  assert batch["index"].dtype == np.int32 and batch["label"].dtype == np.int32
  np.testing.assert_array_equal(batch["image"], split.images[[3, 1]])
  with pytest.raises(IndexError):
    split.get_batch([0, 10])


def test_split_label_out_of_range():
  with pytest.raises(ValueError, match=r"label 3 .*out of range \[0, 3\)"):
    data.Split(np.zeros((2, 1, 1, 1), np.float32), np.array([0, 3]),
               ("a", "b", "c"))
  with pytest.raises(ValueError, match=r"label -1"):
    data.Split(np.zeros((2, 1, 1, 1), np.float32), np.array([0, -1]),
               ("a", "b"))


def test_split_empty_class():
  with pytest.raises(ValueError, match=r"no images: \['b', 'c'\]"):
    data.Split(np.zeros((2, 1, 1, 1), np.float32), np.array([0, 0]),
               ("a", "b", "c"))
  split = data.Split(np.zeros((2, 1, 1, 1), np.float32), np.array([0, 0]),
                     ("a", "b"), require_every_class=False)
  assert split.num_classes == 2


def test_split_non_finite_and_range():
  images = np.zeros((3, 2, 2, 1), np.float32)
  images[1, 0, 1, 0] = np.nan
  with pytest.raises(ValueError, match=r"not finite.*example 1"):
    data.Split(images, np.array([0, 1, 1]), ("a", "b"))
  with pytest.raises(ValueError, match=r"\[-1, 1\]"):
    data.Split(np.full((2, 1, 1, 1), 255.0, np.float32), np.array([0, 1]),
               ("a", "b"))


def test_split_shape_mismatch():
  with pytest.raises(ValueError, match=r"labels must be"):
    data.Split(np.zeros((3, 2, 2, 1), np.float32), np.array([0, 1]),
               ("a", "b"))
  with pytest.raises(ValueError, match=r"images must be"):
    data.Split(np.zeros((3, 2, 2), np.float32), np.array([0, 1, 1]),
               ("a", "b"))


def test_dataset_protocol_checks():
  split = _small_split()
  with pytest.raises(ValueError, match="disjoint"):
    data.Dataset("x", split, split, "metric")
  with pytest.raises(ValueError, match="protocol must be"):
    data.Dataset("x", split, split, "retrieval")
  assert data.Dataset("x", split, split, "classification").protocol == (
      "classification")


# ----------------------------------------------------------------------------
# digits.


def test_digits_metric_protocol(digits_metric):
  ds = digits_metric
  assert ds.name == "digits" and ds.protocol == "metric"
  assert len(ds.train) + len(ds.test) == 1797
  assert ds.train.class_names == ("0", "1", "2", "3", "4")
  assert ds.test.class_names == ("5", "6", "7", "8", "9")
  for split in (ds.train, ds.test):
    assert split.images.shape[1:] == (8, 8, 1)
    assert split.images.min() == -1.0 and split.images.max() == 1.0
    np.testing.assert_array_equal(np.unique(split.labels), np.arange(5))
  # The labels are the original digits, remapped per split.
  import sklearn.datasets
  digits = sklearn.datasets.load_digits()
  original = digits.target
  assert len(ds.train) == np.sum(original < 5)
  np.testing.assert_array_equal(ds.train.labels, original[original < 5])
  np.testing.assert_array_equal(ds.test.labels, original[original >= 5] - 5)
  np.testing.assert_allclose(ds.test.images[0, ..., 0],
                             digits.images[original >= 5][0] / 8 - 1)


def test_digits_classification_stratified():
  ds = data.load_dataset("digits", protocol="classification", seed=3)
  assert ds.protocol == "classification"
  assert len(ds.train) + len(ds.test) == 1797
  assert ds.train.class_names == ds.test.class_names == tuple("0123456789")
  train_counts = np.bincount(ds.train.labels, minlength=10)
  test_counts = np.bincount(ds.test.labels, minlength=10)
  assert np.all(train_counts > 0) and np.all(test_counts > 0)
  assert np.all(np.abs(train_counts - test_counts) <= 1)
  # No example lands in both splits.
  train_rows = {r.tobytes() + bytes([l]) for r, l in
                zip(ds.train.images, ds.train.labels)}
  assert not any(r.tobytes() + bytes([l]) in train_rows
                 for r, l in zip(ds.test.images, ds.test.labels))


def test_digits_few_shot():
  ds = data.load_dataset("digits", protocol="classification",
                         train_per_class=3, seed=1)
  np.testing.assert_array_equal(np.bincount(ds.train.labels), np.full(10, 3))
  full = data.load_dataset("digits", protocol="classification", seed=1)
  assert len(ds.test) == len(full.test)
  np.testing.assert_array_equal(ds.test.images, full.test.images)
  again = data.load_dataset("digits", protocol="classification",
                            train_per_class=3, seed=1)
  np.testing.assert_array_equal(ds.train.images, again.train.images)
  other = data.load_dataset("digits", protocol="classification",
                            train_per_class=3, seed=2)
  assert not np.array_equal(ds.train.images, other.train.images)
  with pytest.raises(ValueError, match=r"train_per_class=500 .*only"):
    data.load_dataset("digits", protocol="classification", train_per_class=500)
  with pytest.raises(ValueError,
                     match="train_per_class must be a positive integer, got 0"):
    data.load_dataset("digits", train_per_class=0)


def test_digits_bad_options():
  with pytest.raises(ValueError, match="protocol"):
    data.load_dataset("digits", protocol="retrieval")
  with pytest.raises(ValueError, match="test_fraction"):
    data.load_dataset("digits", protocol="classification", test_fraction=1.0)
  with pytest.raises(TypeError):
    data.load_dataset("digits", image_size=32)


# ----------------------------------------------------------------------------
# folder:PATH.


def test_folder_classification(shapes_folder):
  ds = data.load_dataset(f"folder:{shapes_folder}", image_size=16, seed=0)
  assert ds.protocol == "classification"
  assert ds.name == f"folder:{shapes_folder}"
  assert ds.train.class_names == ("blue", "green", "red", "yellow")
  assert ds.test.class_names == ds.train.class_names
  assert ds.train.images.shape[1:] == (16, 16, 3)
  assert len(ds.train) + len(ds.test) == 21  # 4 x 5 + EXTRA.JPG
  # 5 images: 2 test, 3 train; blue has 6: 3 and 3.
  np.testing.assert_array_equal(np.bincount(ds.train.labels), [3, 3, 3, 3])
  np.testing.assert_array_equal(np.bincount(ds.test.labels), [3, 2, 2, 2])
  assert ds.train.images.min() >= -1 and ds.train.images.max() <= 1
  # The red rectangle shows in the red channel of the red class.
  red = ds.train.images[ds.train.labels == 2]
  assert np.all(red[..., 0].max(axis=(1, 2)) == 1.0)


def test_folder_class_disjoint(shapes_folder):
  ds = data.load_dataset(f"folder:{shapes_folder}", class_disjoint=True)
  assert ds.protocol == "metric"
  assert ds.train.class_names == ("blue", "green")
  assert ds.test.class_names == ("red", "yellow")
  assert ds.train.images.shape == (11, 32, 32, 3)
  assert ds.test.images.shape == (10, 32, 32, 3)
  np.testing.assert_array_equal(np.unique(ds.test.labels), [0, 1])


def test_folder_deterministic_split(shapes_folder):
  a = data.load_image_folder(shapes_folder, image_size=8, seed=5)
  b = data.load_image_folder(shapes_folder, image_size=8, seed=5)
  np.testing.assert_array_equal(a.test.images, b.test.images)


def test_folder_single_image_class_goes_to_train(tmp_path):
  root = _make_folder(tmp_path / "f", {"red": 4, "green": 1})
  ds = data.load_image_folder(root, image_size=8)
  np.testing.assert_array_equal(np.bincount(ds.train.labels), [1, 2])
  np.testing.assert_array_equal(ds.test.labels, [1, 1])
  assert ds.test.class_names == ("green", "red")


def test_folder_corrupt_image(tmp_path):
  root = _make_folder(tmp_path / "f", {"red": 2, "green": 2})
  bad = root / "green" / "x.png"
  bad.write_bytes(b"\x89PNG not really a png at all")
  with pytest.raises(data.DataError, match=r"x\.png"):
    data.load_dataset(f"folder:{root}")
  assert issubclass(data.DataError, ValueError)


def test_folder_missing_path(tmp_path):
  missing = tmp_path / "nowhere"
  with pytest.raises(FileNotFoundError, match="nowhere"):
    data.load_dataset(f"folder:{missing}")


def test_folder_empty_class_folder(tmp_path):
  root = _make_folder(tmp_path / "f", {"red": 2, "green": 2})
  (root / "empty").mkdir()
  (root / "empty" / "readme.txt").write_text("no images here")
  with pytest.raises(ValueError, match="empty"):
    data.load_image_folder(root)


def test_folder_image_size_must_be_a_positive_integer(shapes_folder):
  for bad in (0, 2.5, True):
    with pytest.raises(ValueError,
                       match=rf"image_size must be a positive integer, got "
                             rf"{bad!r}"):
      data.load_image_folder(shapes_folder, image_size=bad)


def test_folder_no_classes_or_one_class(tmp_path):
  (tmp_path / "bare").mkdir()
  with pytest.raises(ValueError, match="no class sub-folders"):
    data.load_image_folder(tmp_path / "bare")
  root = _make_folder(tmp_path / "one", {"red": 3})
  with pytest.raises(ValueError, match="at least 2"):
    data.load_image_folder(root)


# ----------------------------------------------------------------------------
# Names.


@pytest.mark.parametrize("name", ["cub", "cars196", "sop"])
def test_benchmark_not_prepared_names_the_command(name, tmp_path):
  with pytest.raises(data.DatasetNotAvailableError,
                     match=rf"make data DATASET={name}"):
    data.load_dataset(name, data_dir=str(tmp_path))
  assert issubclass(data.DatasetNotAvailableError, RuntimeError)


def test_unknown_name():
  with pytest.raises(ValueError, match=r"unknown dataset 'mnist'.*'digits'"
                     r".*'folder:PATH'"):
    data.load_dataset("mnist")
  with pytest.raises(ValueError, match="folder:PATH"):
    data.load_dataset("folder")
  with pytest.raises(ValueError, match="takes no"):
    data.load_dataset("digits:foo")
  assert "digits" in data.DATASETS and "folder" in data.DATASETS


# ----------------------------------------------------------------------------
# Label remapping.


def test_remap_labels_sorted_by_default():
  new, classes = splits.remap_labels(np.array([7, 3, 7, 9]))
  np.testing.assert_array_equal(new, [1, 0, 1, 2])
  np.testing.assert_array_equal(classes, [3, 7, 9])
  assert new.dtype == np.int32
  np.testing.assert_array_equal(classes[new], [7, 3, 7, 9])


def test_remap_labels_to_given_classes():
  new, classes = splits.remap_labels([8, 5, 8], classes=[8, 6, 5])
  np.testing.assert_array_equal(new, [0, 2, 0])  # class 6 has no example
  np.testing.assert_array_equal(classes[new], [8, 5, 8])
  empty, _ = splits.remap_labels(np.zeros(0, int), classes=[1, 2])
  assert empty.shape == (0,) and empty.dtype == np.int32
  with pytest.raises(ValueError, match=r"label 4 \(example 1\) is not one"):
    splits.remap_labels([5, 4], classes=[5, 6])
  with pytest.raises(ValueError, match=r"label 9 \(example 0\)"):
    splits.remap_labels([9], classes=[5, 6])
  with pytest.raises(ValueError, match="duplicates"):
    splits.remap_labels([5], classes=[5, 5])

"""Tests for the continual-learning task streams (nngk_jax.data.tasks)."""

import numpy as np
import pytest

from nngk_jax.data import splits
from nngk_jax.data import tasks


@pytest.fixture(scope="module", name="glyph_cache")
def _glyph_cache(tmp_path_factory):
  return tmp_path_factory.mktemp("glyphs")


def _load(name, glyph_cache, **options):
  if name == "split_glyphs":
    options = {"num_classes": 12, "classes_per_task": 4,
               "images_per_class": 4, "image_size": 8,
               "cache_dir": glyph_cache, **options}
  return tasks.load_task_stream(name, **options)


def _check_stream(stream):
  """The invariants every stream keeps, checked split by split."""
  full = stream.full
  assert full.protocol == "classification"
  flat = [c for classes in stream.task_classes for c in classes]
  assert sorted(flat) == list(range(stream.num_classes))  # disjoint, cover
  for part in ("train", "test"):
    whole = getattr(full, part)
    sizes = 0
    for t, classes in enumerate(stream.task_classes):
      split = getattr(stream.task(t), part)
      assert split.class_names == whole.class_names  # full tuple kept
      assert set(np.unique(split.labels)) <= set(classes)  # global ids
      # Exactly the examples of the task's classes, in the dataset's order.
      np.testing.assert_array_equal(
          split.labels, whole.labels[np.isin(whole.labels, classes)])
      sizes += len(split)
      seen = getattr(stream.seen(t), part)
      so_far = [c for task in stream.task_classes[:t + 1] for c in task]
      np.testing.assert_array_equal(
          seen.labels, whole.labels[np.isin(whole.labels, so_far)])
    assert sizes == len(whole)  # the tasks add up to the full dataset
    last = getattr(stream.seen(stream.num_tasks - 1), part)
    np.testing.assert_array_equal(last.labels, whole.labels)


@pytest.mark.parametrize("name, options, expected", [
    ("split_digits", {}, ((0, 1), (2, 3), (4, 5), (6, 7), (8, 9))),
    ("split_digits", {"classes_per_task": 5}, ((0, 1, 2, 3, 4),
                                               (5, 6, 7, 8, 9))),
    ("split_glyphs", {}, ((0, 1, 2, 3), (4, 5, 6, 7), (8, 9, 10, 11))),
])
def test_streams_in_natural_order(name, options, expected, glyph_cache):
  stream = _load(name, glyph_cache, **options)
  assert stream.name == name
  assert stream.task_classes == expected
  assert stream.num_tasks == len(expected)
  assert stream.num_classes == sum(len(c) for c in expected)
  _check_stream(stream)


def test_split_digits_is_the_classification_digits():
  from nngk_jax.data import registry
  stream = tasks.load_task_stream("split_digits", seed=3)
  digits = registry.load_dataset("digits", protocol="classification", seed=3)
  np.testing.assert_array_equal(stream.full.train.labels, digits.train.labels)
  np.testing.assert_array_equal(stream.full.test.images, digits.test.images)
  task = stream.task(2)
  keep = np.isin(digits.train.labels, [4, 5])
  np.testing.assert_array_equal(task.train.images, digits.train.images[keep])
  assert task.name == "split_digits/task2"
  assert stream.seen(1).name == "split_digits/seen1"
  assert task.train.num_classes == 10


def test_task_order_seed_permutes_classes(glyph_cache):
  natural = tasks.load_task_stream("split_digits")
  shuffled = tasks.load_task_stream("split_digits", task_order_seed=0)
  again = tasks.load_task_stream("split_digits", task_order_seed=0)
  other = tasks.load_task_stream("split_digits", task_order_seed=1)
  assert shuffled.task_classes == again.task_classes
  assert shuffled.task_classes != natural.task_classes
  assert shuffled.task_classes != other.task_classes
  assert all(len(c) == 2 for c in shuffled.task_classes)
  _check_stream(shuffled)
  # The labels do not change, only which classes arrive when.
  np.testing.assert_array_equal(shuffled.full.train.labels,
                                natural.full.train.labels)
  glyphs = _load("split_glyphs", glyph_cache, task_order_seed=5)
  assert glyphs.task_classes != ((0, 1, 2, 3), (4, 5, 6, 7), (8, 9, 10, 11))
  _check_stream(glyphs)


@pytest.mark.parametrize("name, options, match", [
    ("split_digits", {"classes_per_task": 3}, "classes_per_task=3 does not "
     "divide the 10 classes"),
    ("split_digits", {"classes_per_task": 0}, "classes_per_task"),
    ("split_digits", {"task_order_seed": -1}, "task_order_seed"),
    ("split_digits", {"task_order_seed": 1.5}, "task_order_seed"),
    ("split_glyphs", {"num_classes": 12, "classes_per_task": 5},
     "classes_per_task=5 does not divide the 12 classes"),
    ("split_glyphs", {"num_classes": 0}, "num_classes"),
    ("split_cifar10", {"classes_per_task": 4}, "classes_per_task=4"),
    ("split_cifar100", {"classes_per_task": 7}, "classes_per_task=7"),
    ("split_cifar100", {"cifar100_classes": 101}, "cifar100_classes=101"),
    ("split_mnist", {}, "unknown task stream 'split_mnist'; known: "
     "split_digits, split_glyphs, split_cifar10, split_cifar100"),
])
def test_bad_options_are_clear_errors(name, options, match, glyph_cache,
                                      tmp_path):
  if name.startswith("split_cifar"):
    options["data_dir"] = str(tmp_path)  # Checked before any data is read.
  with pytest.raises(ValueError, match=match):
    _load(name, glyph_cache, **options)


def test_unknown_option_names_it():
  with pytest.raises(TypeError, match="num_tasks"):
    tasks.load_task_stream("split_digits", num_tasks=5)


def test_task_out_of_range():
  stream = tasks.load_task_stream("split_digits")
  for t in (5, -1):
    with pytest.raises(IndexError, match=f"task {t} out of range"):
      stream.task(t)
    with pytest.raises(IndexError, match="has 5 tasks"):
      stream.seen(t)


def test_task_stream_checks_its_tasks():
  full = tasks.load_task_stream("split_digits").full
  with pytest.raises(ValueError, match="exactly once"):
    tasks.TaskStream("bad", full, ((0, 1), (1, 2)))
  with pytest.raises(ValueError, match="exactly once"):
    tasks.TaskStream("bad", full, ((0, 1, 2, 3, 4),))
  with pytest.raises(ValueError, match="at least one class"):
    tasks.TaskStream("bad", full, ((), tuple(range(10))))
  images = np.zeros((2, 1, 1, 1), np.float32)
  metric = splits.Dataset("m", splits.Split(images, [0, 0], ("a",)),
                          splits.Split(images, [0, 0], ("b",)), "metric")
  with pytest.raises(ValueError, match="classification protocol"):
    tasks.TaskStream("bad", metric, ((0,),))


# ----------------------------------------------------------------------------
# CIFAR on tfds.testing.mock_data (tests/conftest.py, FAKE_LABELS).


def test_split_cifar10_on_mock_data(fake_tfds):
  with fake_tfds("cifar10"):
    stream = tasks.load_task_stream("split_cifar10", check_counts=False)
  assert stream.task_classes == ((0, 1), (2, 3), (4, 5), (6, 7), (8, 9))
  assert len(stream.full.train) == 30 and len(stream.full.test) == 10
  assert stream.full.train.image_shape == (32, 32, 3)
  _check_stream(stream)
  task = stream.task(4)
  np.testing.assert_array_equal(task.test.labels, [9, 8])
  # The records follow the labels: test record i is grey level 17 * i.
  example = task.test[1]
  assert example["label"] == 8
  np.testing.assert_allclose(example["image"], 17 / 127.5 - 1, atol=1e-5)


def test_split_cifar100_on_mock_data(fake_tfds):
  labels = fake_tfds.labels
  with fake_tfds("cifar10", "cifar100"):
    stream = tasks.load_task_stream("split_cifar100", check_counts=False)
  # Zenke et al.: CIFAR-10, then CIFAR-100's first 50 classes in tasks of 10.
  assert stream.num_tasks == 6 and stream.num_classes == 60
  assert stream.task_classes[0] == tuple(range(10))
  assert stream.task_classes[1] == tuple(range(10, 20))
  names = stream.full.train.class_names
  assert names[:2] == ("cifar10/0", "cifar10/1")
  assert names[10] == "cifar100/0" and names[59] == "cifar100/49"
  cifar100_train = [c for c in labels["cifar100"]["train"] if c < 50]
  assert len(stream.full.train) == 30 + len(cifar100_train)
  np.testing.assert_array_equal(
      stream.full.train.labels[30:], np.array(cifar100_train) + 10)
  _check_stream(stream)
  # A CIFAR-100 image is read from CIFAR-100's records.
  task = stream.task(1)
  first = task.train[0]
  assert first["label"] == 10
  np.testing.assert_allclose(first["image"], 0 / 127.5 - 1, atol=1e-5)
  # Classes 0..9 of CIFAR-100 are its records 0..9, then 100 (class 0) and
  # 101 (class 7).
  np.testing.assert_array_equal(task.train.labels,
                                list(range(10, 20)) + [10, 17])
  for i, record in ((3, 3), (10, 100), (11, 101)):
    np.testing.assert_allclose(task.train[i]["image"],
                               17 * record % 256 / 127.5 - 1, atol=1e-5)


def test_split_cifar100_variants(fake_tfds):
  with fake_tfds("cifar10", "cifar100"):
    eleven = tasks.load_task_stream("split_cifar100", cifar100_classes=100,
                                    check_counts=False)
    twenty = tasks.load_task_stream("split_cifar100", cifar100_classes=100,
                                    classes_per_task=5, check_counts=False)
    seeded = tasks.load_task_stream("split_cifar100", task_order_seed=0,
                                    check_counts=False)
  assert eleven.num_tasks == 11 and eleven.num_classes == 110
  assert twenty.num_tasks == 21
  assert all(len(c) == 5 for c in twenty.task_classes[1:])
  _check_stream(eleven)
  # A seed draws 50 CIFAR-100 classes at random; CIFAR-10 stays task 0.
  assert seeded.task_classes[0] == tuple(range(10))
  assert seeded.num_classes == 60
  assert seeded.task_classes[1] != tuple(range(10, 20))
  chosen = [int(n.split("/")[1]) for n in seeded.full.train.class_names[10:]]
  assert chosen == sorted(chosen) and chosen != list(range(50))
  _check_stream(seeded)


@pytest.mark.parametrize("name, missing", [("split_cifar10", "cifar10"),
                                           ("split_cifar100", "cifar10")])
def test_missing_cifar_names_make_data(name, missing, tmp_path):
  pytest.importorskip("tensorflow_datasets")
  with pytest.raises(splits.DatasetNotAvailableError) as info:
    tasks.load_task_stream(name, data_dir=str(tmp_path))
  message = str(info.value)
  assert f"make data DATASET={missing} TFDS_DATA_DIR={tmp_path}" in message
  assert "make train" not in message


def test_missing_cifar100_names_its_command(tmp_path):
  pytest.importorskip("tensorflow_datasets")
  from nngk_jax.data import tfds as tfds_data
  with pytest.raises(splits.DatasetNotAvailableError,
                     match="make data DATASET=cifar100"):
    tfds_data.load_benchmark("cifar100", data_dir=str(tmp_path))


def test_joined_image_splits_need_one_transform():
  from nngk_jax.data import pipeline
  records = [np.zeros((4, 4, 3), np.uint8)] * 2
  a, b = (pipeline.ImageSplit(records, [0, 0], ("x",),
                              pipeline.ImageTransform(resize=s, crop=4))
          for s in (4, 6))
  with pytest.raises(ValueError, match="one transform"):
    tasks._take([a, b], np.array([[0, 0], [1, 1]]), np.array([0, 0]), ("x",))
  joined = tasks._take([a, a], np.array([[0, 1], [1, 0]]), np.array([0, 0]),
                       ("x",))
  assert len(joined) == 2 and joined[1]["image"].shape == (4, 4, 3)

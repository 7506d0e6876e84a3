"""Tests for the TFDS benchmark loaders, on ``tfds.testing.mock_data``.

``mock_data`` serves ``tfds.data_source`` without TensorFlow; here it serves
examples we choose (``FAKE_LABELS``), so classes have several images each and
sit on both sides of each benchmark's class boundary.
"""

import numpy as np
import pytest

from nngk_jax import data
from nngk_jax.data import benchmarks
from nngk_jax.data import pipeline
from nngk_jax.data import tfds as tfds_data
from nngk_jax.data.splits import DatasetNotAvailableError

tfds = pytest.importorskip("tensorflow_datasets")

def test_split_by_class_is_disjoint():
  labels = np.array([5, 0, 9, 4, 5, 7])
  train, test = tfds_data.split_by_class(labels, ((0, 5), (5, 10)))
  np.testing.assert_array_equal(train, [1, 3])
  np.testing.assert_array_equal(test, [0, 2, 4, 5])


def test_split_by_class_rejects_bad_rules():
  with pytest.raises(ValueError, match="overlap"):
    tfds_data.split_by_class(np.array([0]), ((0, 5), (4, 10)))
  with pytest.raises(ValueError, match="neither"):
    tfds_data.split_by_class(np.array([0, 12]), ((0, 5), (5, 10)))


def test_benchmark_metadata_matches_protocol():
  assert benchmarks.BENCHMARKS["cub"].num_images == (5864, 5924)
  assert benchmarks.BENCHMARKS["cars196"].num_classes == (98, 98)
  assert benchmarks.BENCHMARKS["sop"].label_key == "class_id"
  builders = tfds.list_builders(with_community_datasets=False)
  for bench in benchmarks.BENCHMARKS.values():
    assert bench.builder in builders


@pytest.fixture(name="fake_data")
def _fake_data(fake_tfds):
  return fake_tfds


@pytest.mark.parametrize("name", ["cub", "cars196"])
def test_load_benchmark_class_disjoint(name, fake_data):
  bench = benchmarks.BENCHMARKS[name]
  (train_lo, train_hi), (test_lo, test_hi) = bench.class_rule
  labels = fake_data.labels[name]["train"] + fake_data.labels[name]["test"]
  with fake_data(name):
    train, test = tfds_data.load_benchmark(
        name, transform=pipeline.ImageTransform(resize=10, crop=8),
        check_counts=False)
    names = tfds.builder(bench.builder).info.features["label"].names
  # Both TFDS splits merged, then split by class.
  assert len(train) == sum(train_lo <= l < train_hi for l in labels)
  assert len(test) == sum(test_lo <= l < test_hi for l in labels)
  for split, lo, hi in ((train, train_lo, train_hi), (test, test_lo, test_hi)):
    assert split.labels.dtype == np.int32
    np.testing.assert_array_equal(np.unique(split.labels),
                                  np.arange(split.num_classes))
    original = np.array([names.index(n) for n in split.class_names])
    assert np.all((original >= lo) & (original < hi))
    assert list(original) == sorted(original)
    # Labels follow the records: record i has TFDS label original[labels[i]].
    expected = [l for l in labels if lo <= l < hi]
    np.testing.assert_array_equal(original[split.labels], expected)
    example = split[len(split) - 1]
    assert example["image"].dtype == np.float32
    assert example["image"].shape == (8, 8, 3)
    assert example["label"] == split.labels[-1]
  assert not set(train.class_names) & set(test.class_names)


def test_records_are_decoded_by_the_pipeline(fake_data):
  """The image bytes reach the transform: grey level in, grey level out."""
  with fake_data("sop"):
    train, _ = tfds_data.load_benchmark("sop", check_counts=False)
  for i in (0, 5):
    value = 17 * i % 256
    np.testing.assert_allclose(train[i]["image"], value / 127.5 - 1, atol=1e-5)


def test_load_benchmark_sop_keeps_tfds_splits(fake_data):
  with fake_data("sop"):
    train, test = tfds_data.load_benchmark("sop", check_counts=False)
  assert len(train) == len(fake_data.labels["sop"]["train"])
  assert len(test) == len(fake_data.labels["sop"]["test"])
  assert train.num_classes == 3 and test.num_classes == 3
  assert not set(train.class_names) & set(test.class_names)


def test_load_dataset_by_name_uses_pipeline_options(fake_data):
  with fake_data("cub"):
    ds = data.load_dataset("cub", check_counts=False,
                           pipeline={"resize": 12, "crop": 10})
  assert ds.protocol == "metric"
  assert ds.train.image_shape == (10, 10, 3)
  with pytest.raises(ValueError, match="unknown pipeline options"):
    data.load_dataset("cub", pipeline={"size": 3})


def test_count_mismatch_raises(fake_data):
  with fake_data("cub"):
    with pytest.raises(ValueError, match=r"expected .*\(5864, 5924\).*found"
                       r".*check_counts=False"):
      tfds_data.load_benchmark("cub")


@pytest.mark.parametrize("name", ["cub", "cars196"])
def test_missing_data_names_command(name, tmp_path):
  with pytest.raises(DatasetNotAvailableError) as info:
    tfds_data.load_benchmark(name, data_dir=str(tmp_path))
  message = str(info.value)
  assert f"make data DATASET={name}" in message
  assert f"make train DATASET={name}" in message
  assert str(tmp_path) in message
  assert ("downloads/manual" in message) == (name == "cars196")


def test_unknown_name():
  with pytest.raises(KeyError, match="unknown benchmark"):
    tfds_data.load_benchmark("mnist")

"""Tests for the TFDS benchmark loaders, on ``tfds.testing.mock_data``.

``mock_data`` serves ``tfds.data_source`` without TensorFlow: examples are
random, with labels drawn over the whole ClassLabel range.
"""

import numpy as np
import pytest

from nngk_jax import tfds_data
from nngk_jax.data import DatasetNotAvailableError

tfds = pytest.importorskip("tensorflow_datasets")

NUM_EXAMPLES = 40


def _mock():
  return tfds.testing.mock_data(num_examples=NUM_EXAMPLES,
                                policy=tfds.testing.MockPolicy.USE_CODE)


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
  assert tfds_data.BENCHMARKS["cub"].num_images == (5864, 5924)
  assert tfds_data.BENCHMARKS["cars196"].num_classes == (98, 98)
  assert tfds_data.BENCHMARKS["sop"].label_key == "class_id"
  builders = tfds.list_builders(with_community_datasets=False)
  for bench in tfds_data.BENCHMARKS.values():
    assert bench.builder in builders


@pytest.mark.parametrize("name", ["cub", "cars196"])
def test_load_benchmark_class_disjoint(name):
  bench = tfds_data.BENCHMARKS[name]
  (train_lo, train_hi), (test_lo, test_hi) = bench.class_rule
  with _mock():
    train, test = tfds_data.load_benchmark(name, image_size=16,
                                           check_counts=False)
    names = tfds.builder(bench.builder).info.features["label"].names
    # Both TFDS splits merged: 2 * NUM_EXAMPLES records in all.
    assert len(train) + len(test) == 2 * NUM_EXAMPLES
    for source, lo, hi in ((train, train_lo, train_hi),
                           (test, test_lo, test_hi)):
      assert source.labels.dtype == np.int32
      np.testing.assert_array_equal(np.unique(source.labels),
                                    np.arange(source.num_classes))
      original = np.array([names.index(n) for n in source.class_names])
      assert np.all((original >= lo) & (original < hi))
      assert list(original) == sorted(original)
      example = source[len(source) - 1]
      assert example["image"].dtype == np.uint8
      assert example["image"].shape == (16, 16, 3)
      assert example["label"] == source.labels[-1]
      assert example["index"] == len(source) - 1
    assert not set(train.class_names) & set(test.class_names)


def test_load_benchmark_sop_keeps_tfds_splits():
  with _mock():
    train, test = tfds_data.load_benchmark("sop", check_counts=False)
    assert len(train) == len(test) == NUM_EXAMPLES
    assert train[0]["image"].ndim == 3
    assert train.labels.max() == train.num_classes - 1


def test_count_mismatch_raises():
  with _mock():
    with pytest.raises(ValueError, match=r"expected .*\(5864, 5924\).*found"):
      tfds_data.load_benchmark("cub")


@pytest.mark.parametrize("name", ["cub", "cars196"])
def test_missing_data_names_command(name, tmp_path):
  with pytest.raises(DatasetNotAvailableError) as info:
    tfds_data.load_benchmark(name, data_dir=str(tmp_path))
  message = str(info.value)
  assert f"make data DATASET={name}" in message
  assert str(tmp_path) in message
  assert ("downloads/manual" in message) == (name == "cars196")


def test_unknown_name():
  with pytest.raises(KeyError, match="unknown benchmark"):
    tfds_data.load_benchmark("mnist")

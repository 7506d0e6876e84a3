"""Tests of the class-balanced (m-per-class) sampler."""

import numpy as np
import pytest

from nngk_jax import data as datalib


def _split(counts):
  labels = np.repeat(np.arange(len(counts)), counts)
  images = np.linspace(-1, 1, len(labels), dtype=np.float32).reshape(-1, 1, 1, 1)
  return datalib.Split(images, labels, tuple(f"c{i}" for i in range(len(counts))))


def test_each_batch_has_m_images_of_k_classes():
  split = _split([10, 3, 8, 6, 9])
  batches = list(datalib.iterate_class_balanced_batches(split, 3, 4, seed=1,
                                                        epoch=0))
  assert len(batches) == len(split) // 12
  for batch in batches:
    labels = batch["label"].reshape(3, 4)
    assert (labels == labels[:, :1]).all()  # grouped by class
    assert len(set(labels[:, 0].tolist())) == 3
    np.testing.assert_array_equal(split.labels[batch["index"]], batch["label"])
    np.testing.assert_array_equal(split.images[batch["index"]], batch["image"])
    for row in batch["index"].reshape(3, 4):  # no repeats when the class has 4+
      if np.sum(split.labels == split.labels[row[0]]) >= 4:
        assert len(set(row.tolist())) == 4


def test_order_is_a_function_of_seed_and_epoch():
  split = _split([6, 6, 6, 6])
  draw = lambda s, e: [b["index"].tolist() for b in
                       datalib.iterate_class_balanced_batches(split, 2, 3,
                                                              seed=s, epoch=e)]
  assert draw(0, 0) == draw(0, 0)
  assert draw(0, 0) != draw(0, 1)


@pytest.mark.parametrize("k, m, match", [
    (5, 2, "classes_per_batch=5 must be between 1 and the split's 4"),
    (0, 2, "classes_per_batch=0"),
    (2, 0, "samples_per_class must be >= 1"),
])
def test_bad_sampler_settings(k, m, match):
  with pytest.raises(ValueError, match=match):
    next(datalib.iterate_class_balanced_batches(_split([6, 6, 6, 6]), k, m,
                                                seed=0, epoch=0))

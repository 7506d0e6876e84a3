"""Tests for nngk_jax.data.samplers: shuffled and m-per-class batches."""

import numpy as np
import pytest

from nngk_jax.data import samplers
from nngk_jax.data import splits


def _small_split(n: int = 10, num_classes: int = 3) -> splits.Split:
  images = np.linspace(-1, 1, n * 2 * 2 * 1, dtype=np.float32)
  return splits.Split(images.reshape(n, 2, 2, 1), np.arange(n) % num_classes,
                      tuple(f"c{c}" for c in range(num_classes)))


def _split(counts):
  labels = np.repeat(np.arange(len(counts)), counts)
  images = np.linspace(-1, 1, len(labels), dtype=np.float32).reshape(-1, 1, 1, 1)
  return splits.Split(images, labels, tuple(f"c{i}" for i in range(len(counts))))


def test_sampler_names():
  assert samplers.SAMPLERS == ("random", "class_balanced")


# ----------------------------------------------------------------------------
# Class-balanced batches.


def test_each_batch_has_m_images_of_k_classes():
  split = _split([10, 3, 8, 6, 9])
  batches = list(samplers.iterate_class_balanced_batches(split, 3, 4, seed=1,
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
                       samplers.iterate_class_balanced_batches(split, 2, 3,
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
    next(samplers.iterate_class_balanced_batches(_split([6, 6, 6, 6]), k, m,
                                                 seed=0, epoch=0))


# ----------------------------------------------------------------------------
# Shuffled batches.


def test_iterate_batches_covers_epoch_once():
  split = _small_split(n=10)
  batches = list(samplers.iterate_batches(split, 4, seed=0, epoch=0,
                                          drop_last=False))
  assert len(batches) == samplers.num_batches(split, 4, drop_last=False) == 3
  assert all(b["image"].shape == (4, 2, 2, 1) for b in batches)
  valid = np.concatenate([b["valid"] for b in batches])
  seen = np.concatenate([b["index"] for b in batches])[valid]
  np.testing.assert_array_equal(np.sort(seen), np.arange(10))
  # Padding: the last batch's two extra rows repeat its last real example.
  last = batches[-1]
  np.testing.assert_array_equal(last["valid"], [True, True, False, False])
  assert np.all(last["index"][2:] == last["index"][1])


def test_iterate_batches_rows_match_split():
  split = _small_split(n=10)
  for batch in samplers.iterate_batches(split, 3, seed=4, epoch=2):
    np.testing.assert_array_equal(batch["image"], split.images[batch["index"]])
    np.testing.assert_array_equal(batch["label"], split.labels[batch["index"]])
    assert batch["valid"].all()


def test_iterate_batches_order_is_function_of_seed_and_epoch():
  split = _small_split(n=50)

  def order(seed, epoch):
    return np.concatenate([b["index"] for b in samplers.iterate_batches(
        split, 10, seed=seed, epoch=epoch)])

  np.testing.assert_array_equal(order(0, 3), order(0, 3))
  assert not np.array_equal(order(0, 3), order(0, 4))
  assert not np.array_equal(order(0, 3), order(1, 3))
  unshuffled = np.concatenate([b["index"] for b in samplers.iterate_batches(
      split, 10, seed=0, epoch=0, shuffle=False)])
  np.testing.assert_array_equal(unshuffled, np.arange(50))


def test_iterate_batches_drop_last():
  split = _small_split(n=10)
  batches = list(samplers.iterate_batches(split, 4, seed=0, epoch=0))
  assert len(batches) == samplers.num_batches(split, 4) == 2
  assert len(np.unique(np.concatenate([b["index"] for b in batches]))) == 8
  with pytest.raises(ValueError, match=r"batch_size 11 .*10 examples"):
    list(samplers.iterate_batches(split, 11, seed=0, epoch=0))
  # Without drop_last a batch larger than the split is one padded batch.
  (only,) = samplers.iterate_batches(split, 11, seed=0, epoch=0,
                                     drop_last=False)
  assert only["valid"].sum() == 10
  with pytest.raises(ValueError, match="batch_size"):
    samplers.num_batches(split, 0)
  with pytest.raises(ValueError, match="epoch"):
    list(samplers.iterate_batches(split, 2, seed=0, epoch=-1))


def test_in_memory_split_loads_batches_without_augmenting():
  split = _small_split(n=6)
  plain = [b["image"] for b in samplers.iterate_batches(
      split, 3, seed=0, epoch=0, shuffle=False)]
  augmented = [b["image"] for b in samplers.iterate_batches(
      split, 3, seed=0, epoch=0, shuffle=False, augment=True)]
  np.testing.assert_array_equal(np.stack(plain), np.stack(augmented))
  (batch,) = split.load_batches([np.array([4, 1])], augment=True, seed=3,
                                epoch=5)
  np.testing.assert_array_equal(batch["image"], split.images[[4, 1]])

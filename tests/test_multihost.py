"""Each process's block of a global batch: the samplers' ``shard``."""

import numpy as np
import pytest

from nngk_jax import data
from nngk_jax.data import pipeline
from nngk_jax.data import samplers


def _splits():
  """An image split (decoded, augmented) and an in-memory one, 12 each."""
  rng = np.random.default_rng(0)
  labels, names = np.repeat(np.arange(3), 4), ("a", "b", "c")
  records = [rng.integers(0, 255, (10, 12, 3), np.uint8) for _ in range(12)]
  return (pipeline.ImageSplit(records, labels, names,
                              pipeline.ImageTransform(resize=8, crop=6)),
          data.Split(rng.uniform(-1, 1, (12, 2, 2, 1)).astype(np.float32),
                     labels, names))


@pytest.mark.parametrize("split", _splits(), ids=["image", "memory"])
@pytest.mark.parametrize("sampler", ["random", "class_balanced"])
def test_process_blocks_put_together_are_the_whole_batches(split, sampler):
  def stream(shard):
    if sampler == "random":  # the second batch padded: 4 valid rows of 8
      return samplers.iterate_batches(split, 8, seed=1, epoch=2, augment=True,
                                      drop_last=False, shard=shard)
    return samplers.iterate_class_balanced_batches(
        split, 2, 2, seed=1, epoch=2, augment=True, first_batch=1,
        shard=shard)

  whole = list(stream((0, 1)))
  blocks = [list(stream((i, 2))) for i in range(2)]
  assert len(whole) == len(blocks[0]) == len(blocks[1]) > 0
  for batch, first, second in zip(whole, *blocks):
    assert len(first["index"]) == len(batch["index"]) // 2
    for key in batch:  # the same rows and the same random crops and flips
      np.testing.assert_array_equal(
          batch[key], np.concatenate([first[key], second[key]]), key)
  if sampler == "random":
    assert whole[-1]["valid"].tolist() == [True] * 4 + [False] * 4


def test_a_shard_that_does_not_divide_the_batch_is_refused():
  with pytest.raises(ValueError, match="count dividing the batch size 8"):
    data.shard_rows((0, 3), 8)
  with pytest.raises(ValueError, match="0 <= index < count"):
    data.shard_rows((2, 2), 8)

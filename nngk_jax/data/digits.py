"""scikit-learn's bundled handwritten digits, the smallest dataset.

No download is needed: 1797 grey 8x8 images of the digits 0-9.
"""

from __future__ import annotations

import numpy as np

from nngk_jax.data import splits

__all__ = ["load_digits"]


def load_digits(*, protocol: str = "metric", test_fraction: float = 0.5,
                seed: int = 0,
                train_per_class: int | None = None) -> splits.Dataset:
  """scikit-learn's bundled handwritten digits: 1797 grey 8x8 images.

  Pixel values ``0..16`` are scaled to ``[-1, 1]``. No download is needed.

  Args:
    protocol: ``"metric"``: train on digits 0-4, test on 5-9 (test labels
      renumbered ``0..4``, class names ``"5".."9"``). ``"classification"``:
      a stratified split of all ten digits.
    test_fraction: share of each class sent to test (classification only).
    seed: seeds the stratified split and the few-shot choice.
    train_per_class: if given, keep only this many training images per class,
      chosen with ``seed`` (few-shot); the test split is unchanged. Larger
      than a class raises ``ValueError``.

  Returns:
    A :class:`~nngk_jax.data.splits.Dataset` named ``"digits"`` with
    images ``[N, 8, 8, 1]``.

  Examples:
    >>> ds = load_digits(protocol="classification", train_per_class=2)
    >>> ds.train.images.shape, ds.train.num_classes
    ((20, 8, 8, 1), 10)
  """
  import sklearn.datasets  # pylint: disable=g-import-not-at-top

  digits = sklearn.datasets.load_digits()
  images = (digits.images.astype(np.float32) / 8.0 - 1.0)[..., None]
  class_names = [str(int(c)) for c in digits.target_names]
  return splits.build_dataset(
      "digits", images, digits.target, class_names, protocol=protocol,
      test_fraction=test_fraction, seed=seed, train_per_class=train_per_class)



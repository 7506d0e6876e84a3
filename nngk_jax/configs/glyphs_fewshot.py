r"""Few-shot classification on the glyph benchmark: 6 training images per class.

All 1,000 classes in both splits (classification protocol): 8 images per
class held out for test, 6 of the other 8 kept for training (6,000 training
images). The NNGK kernel classifier (test embedding against the training
centres) against the softmax head; the paper reports 60% vs 49% on CUB with
6 images per class.

Run:      python -m nngk_jax.train --config nngk_jax/configs/glyphs_fewshot.py \
              --workdir runs/glyphs_fewshot
          (objective=softmax on the command line for the baseline)
Time:     see docs/results.md (2-core CPU).
Expected: see docs/results.md.
"""

from nngk_jax.configs import glyphs


def get_config():
  config = glyphs.get_config()
  config.data = {"protocol": "classification", "num_classes": None,
                 "images_per_class": 16, "seed": 0, "test_fraction": 0.5,
                 "train_per_class": 6}
  config.nngk.k = 32
  # The figures in docs/results.md were measured at sigma 0.2 (before the
  # metric-learning recipe moved to 0.3); kept until re-measured.
  config.nngk.sigma = 0.2
  config.classifier_k = 32
  return config

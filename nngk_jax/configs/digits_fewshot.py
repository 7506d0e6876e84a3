r"""Few-shot classification on digits: 6 training images per class.

Kernel classifier (test embedding against the training centres) vs the
softmax head; the paper reports 60% vs 49% on CUB with 6 images per class.

Run:      python -m nngk_jax.train --config nngk_jax/configs/digits_fewshot.py \
              --workdir runs/digits_fewshot
          (objective=softmax on the command line for the baseline)
Time:     well under a minute on a 2-core CPU.
Expected: see docs/results.md.
"""

from nngk_jax.configs import digits


def get_config():
  config = digits.get_config()
  config.data = {"protocol": "classification", "seed": 0, "test_fraction": 0.5,
                 "train_per_class": 6}
  config.nngk.k = 20
  config.classifier_k = 20
  config.batch_size = 20
  config.num_epochs = 30
  return config

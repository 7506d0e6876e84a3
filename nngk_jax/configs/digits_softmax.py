r"""Softmax baseline on digits (metric-learning protocol), same backbone.

Run:      python -m nngk_jax.train --config nngk_jax/configs/digits_softmax.py \
              --workdir runs/digits_softmax
Time:     under a minute on a 2-core CPU.
Expected: see docs/results.md; behind NNGK on MAP@R and NMI.
"""

from nngk_jax.configs import digits


def get_config():
  config = digits.get_config()
  config.objective = "softmax"
  return config

r"""NNGK on Stanford Online Products: Ebay_train (59,551 images, 11,318 classes)
and Ebay_test (60,502 images, 11,316 classes).

Run:      make data DATASET=sop            (once: download + prepare, ~2.9 GB)
          make train DATASET=sop           (the paper's code recipe)
          make train DATASET=sop RECIPE=strong
Needs:    ImageNet weights at weights/resnet18.safetensors (resnet50 for
          strong); docs/pretrained.md has the one-line command.
Time:     paper recipe, one GPU with 8+ CPU cores: an estimate of 1.5 h
          (30 epochs x 59,551 images at ~2,000 images/s, 6 refreshes with a
          60k-centre PyNNDescent rebuild, and evaluation over 60,502 test
          images; docs/benchmarks.md has the CPU-side parts measured). Not
          yet measured on a GPU.
Expected: no NNGK figure on SOP is published; Proxy-Anchor reports R@1 79.2
          with BN-Inception (methods.md, evaluation protocol). Record your
          figures in docs/results.md.
Notes:    most SOP classes have 2-12 images, so with K = 200 a sample often
          has few same-class centres among its neighbours: nngk.num_same_class
          appends the nearest ones (the history's missing_positive_fraction
          shows how often none is found). The graph over 59,551 centres
          takes 72 s with PyNNDescent and 57 s exact on a 2-core CPU
          (docs/benchmarks.md); on a GPU, nngk.graph_backend=exact is seconds.
"""

from nngk_jax.configs import benchmark


def get_config(recipe: str = "paper"):
  config = benchmark.get_config("sop", recipe)
  config.recall_ks = (1, 10, 100, 1000)
  config.eval_every = 10
  return config

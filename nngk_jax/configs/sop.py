r"""NNGK on Stanford Online Products: Ebay_train (59,551 images, 11,318 classes)
and Ebay_test (60,502 images, 11,316 classes).

Run:      make data DATASET=sop            (once: download + prepare, ~2.9 GB)
          make train DATASET=sop           (the paper's code recipe)
          make train DATASET=sop RECIPE=strong
Needs:    ImageNet weights at weights/resnet18.safetensors (resnet50 for
          strong); docs/pretrained.md has the one-line command.
Time:     paper recipe on one H200 with 16 CPU cores, from the parts
          measured on synthetic JPEGs (docs/benchmarks.md, "On a GPU"):
          the train step alone runs 5,900 images/s, but decoding the JPEGs
          feeds about 800, so an epoch takes about 75 s; 30 epochs, 6
          refreshes of about 65 s (the graph itself 0.4 s) and the
          evaluations: about 45 minutes. Not yet run on the real data.
Expected: no NNGK figure on SOP is published; Proxy-Anchor reports R@1 79.2
          with BN-Inception (methods.md, evaluation protocol). Record your
          figures in docs/results.md.
Notes:    most SOP classes have 2-12 images, so with K = 200 a sample often
          has few same-class centres among its neighbours: nngk.num_same_class
          appends the nearest ones (the history's missing_positive_fraction
          shows how often none is found). The graph over 59,551 centres
          takes 72 s with PyNNDescent and 57 s exact on a 2-core CPU
          (docs/benchmarks.md); on a GPU graph_backend "auto" builds it
          exactly in under a second.
"""

from nngk_jax.configs import benchmark


def get_config(recipe: str = "paper"):
  config = benchmark.get_config("sop", recipe)
  config.recall_ks = (1, 10, 100, 1000)
  config.eval_every = 10
  return config

r"""NNGK on Cars196: classes 1-98 train (8,054 images), 99-196 test (8,131).

Run:      place the files by hand (docs/data.md: the download address is dead
          upstream), then
          make data DATASET=cars196        (once: prepare, ~1.9 GB)
          make train DATASET=cars196       (the paper's code recipe)
          make train DATASET=cars196 RECIPE=strong
Needs:    ImageNet weights at weights/resnet18.safetensors (resnet50 for
          strong); docs/pretrained.md has the one-line command.
Time:     paper recipe, one GPU with 8+ CPU cores: an estimate of 15 min
          (30 epochs x 8,054 images at ~2,000 images/s, see cub.py and
          docs/benchmarks.md). Not yet measured on a GPU.
Expected: the paper reports Recall@4 92.36 (next best 84.23), the target of
          the strong recipe. Not measured here yet (no data or GPU on the
          development machine): record your figures in docs/results.md.
"""

from nngk_jax.configs import benchmark


def get_config(recipe: str = "paper"):
  return benchmark.get_config("cars196", recipe)

r"""NNGK on CUB-200-2011: classes 1-100 train (5,864 images), 101-200 test (5,924).

Run:      make data DATASET=cub            (once: download + prepare, ~1.1 GB)
          make train DATASET=cub           (the paper's code recipe, below)
          make train DATASET=cub RECIPE=strong
          python -m nngk_jax.train --config nngk_jax/configs/cub.py \
              --recipe paper --workdir runs/cub
Needs:    ImageNet weights at weights/resnet18.safetensors (resnet50 for
          strong); docs/pretrained.md has the one-line command.
Time:     paper recipe, one GPU with 8+ CPU cores: an estimate of 10 min
          (30 epochs x 5,864 images at 256 px = 176k training images plus 6
          refreshes of 5,864; the input pipeline gives ~275 images/s per CPU
          core, docs/benchmarks.md, so 8 cores feed ~2,000 images/s, about
          what a ResNet-18 trains at). Not yet measured on a GPU.
Expected: paper recipe: the authors' code reports no CUB figure; the paper
          reports R@8 87.17 (methods.md section 1), which the strong recipe
          targets. Neither is measured here yet (no data or GPU on the
          development machine): record your figures in docs/results.md.
"""

from nngk_jax.configs import benchmark


def get_config(recipe: str = "paper"):
  return benchmark.get_config("cub", recipe)

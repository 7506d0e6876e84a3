r"""Shared recipes for the image benchmarks (CUB-200-2011, Cars196, SOP).

Not run directly: ``cub.py``, ``cars196.py`` and ``sop.py`` call these and
say what to expect. Two recipes:

``paper``: the NNGK authors' code (bjmey/gaussian_kernel_metric_learning,
  methods.md section 1): ImageNet ResNet-18 with its fc removed (512-d pooled
  features are the embedding, no head), batch norm frozen (their loop keeps
  the network in eval mode), K = 200 neighbours, sigma = 10 on inputs
  normalised to [-1, 1], centres refreshed every 5 epochs, Adam 1e-5 for the
  network and the kernel weights, batch 32, 30 epochs, images resized
  (shorter side) to 256 then cropped 256 x 256 (random + flip in training,
  centre for the refresh and evaluation).

``strong``: aimed at the paper's published figures (Cars196 R@4 92.36, CUB
  R@8 87.17): ImageNet ResNet-50, a 512-d linear embedding head on global
  average + max pooling, L2-normalised embeddings with sigma as a temperature
  (sigma = 0.2, i.e. 1 / (2 sigma^2) = 12.5 on squared chordal distances),
  K = 200 plus the 4 nearest same-class centres, refresh every epoch, AdamW
  1e-4 for the network and 1e-3 for the kernel weights, batch 64, 40 epochs,
  random-resized 224 crops with ImageNet normalisation. Not yet run on the
  real data: its figures are a target, not a measurement.

Both need ImageNet weights as a safetensors file (``model.pretrained``); see
docs/pretrained.md for the one-line command that fetches them.
"""

import ml_collections

from nngk_jax.configs import digits

RECIPES = ("paper", "strong")
WEIGHTS = {"resnet18": "weights/resnet18.safetensors",
           "resnet50": "weights/resnet50.safetensors"}


def get_config(dataset: str, recipe: str = "paper") -> ml_collections.ConfigDict:
  """The ``recipe`` for ``dataset`` (``"cub"``, ``"cars196"`` or ``"sop"``)."""
  if recipe not in RECIPES:
    raise ValueError(f"unknown recipe {recipe!r}; known: {RECIPES}")
  config = digits.get_config()
  config.dataset = dataset
  # Passed to nngk_jax.data.tfds.load_benchmark_dataset.
  config.data = ml_collections.ConfigDict({
      "data_dir": None,          # None: $TFDS_DATA_DIR or ~/tensorflow_datasets
      "check_counts": True,      # fail when counts differ from the protocol
      "pipeline": {
          "resize": 256, "crop": 256, "random_resized_crop": False,
          "flip": True, "normalization": "unit", "num_threads": 16,
          # None: a worker process per host core (up to 16) on a GPU or
          # TPU, threads on a CPU (docs/benchmarks.md, "On a GPU").
          "num_workers": None, "prefetch": 512},
  })
  config.objective = "nngk"

  config.model.backbone = "resnet18"
  config.model.backbone_kwargs = ml_collections.ConfigDict(
      {"pooling": "avg", "frozen_bn": True})
  config.model.embed_dim = None   # the pooled 512-d features, no head
  config.model.normalize = False
  config.model.pretrained = WEIGHTS["resnet18"]

  config.nngk.k = 200
  config.nngk.sigma = 10.0
  config.nngk.refresh_every = 5
  # "auto": the exact graph on a GPU (0.4 s for SOP's 60,502 x 512 at
  # K = 200 on an H200, against 20 s for PyNNDescent after a 54 s numba
  # compilation) and on a CPU up to 30k centres; PyNNDescent above that on
  # a CPU (docs/benchmarks.md).
  config.nngk.graph_backend = "auto"
  config.nngk.num_same_class = 0
  config.nngk.learn_weights = True
  config.nngk.weights_learning_rate = 1e-5

  config.optimizer.name = "adam"
  config.optimizer.learning_rate = 1e-5

  config.batch_size = 32
  config.samples_per_class = 4
  config.num_epochs = 30
  config.eval_every = 5
  config.eval_batch_size = 256
  config.recall_ks = (1, 2, 4, 8)
  config.nmi = True
  config.classifier_k = 200

  if recipe == "strong":
    config.data.pipeline.update({"resize": 256, "crop": 224,
                                 "random_resized_crop": True,
                                 "normalization": "imagenet"})
    config.model.backbone = "resnet50"
    config.model.backbone_kwargs = ml_collections.ConfigDict(
        {"pooling": "avg+max", "frozen_bn": True})
    config.model.embed_dim = 512
    config.model.normalize = True
    config.model.pretrained = WEIGHTS["resnet50"]
    config.nngk.sigma = 0.2
    config.nngk.refresh_every = 1
    config.nngk.num_same_class = 4
    config.nngk.weights_learning_rate = 1e-3
    config.optimizer = ml_collections.ConfigDict(
        {"name": "adamw", "learning_rate": 1e-4, "weight_decay": 1e-4})
    config.batch_size = 64
    config.num_epochs = 40
    config.eval_every = 2
  return config

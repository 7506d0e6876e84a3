"""nngk-jax: Nearest Neighbour Gaussian Kernels for metric learning, in JAX.

Submodules:
  loss        pure, jit-able losses (``gaussian_kernel_loss``, ...)
  neighbours  host-side neighbour graph over the centre bank (PyNNDescent)
  knn         exact chunked k-nearest-neighbour search
  compress    OPQ-compressed centre bank: codes, ADC search, kernel vote
  geometry    squared distances and L2 normalisation (the only ones)
  checks      input checks
  data        datasets by name as random-access splits, batch samplers;
              its modules: splits, samplers, pipeline (image input
              pipeline: decode, resize, crop, flip; grain), digits, glyphs,
              folder, tfds (CUB-200-2011, Cars196, SOP through
              tensorflow-datasets), benchmarks, registry, prepare
              (``make data``: download and prepare a benchmark)
  models      backbones by name, embedding network
  resnet      ResNet-18 / ResNet-50 (torchvision layout)
  pretrained  ImageNet weights from torchvision / timm safetensors files
  objectives  losses by name, as the trainer uses them
  metrics     Recall@K, MAP@R, R-precision, NMI, accuracy (a package:
              retrieval, clustering)
  train       the training loop and command line
  checkpoint  Orbax checkpoints guarded by the config
"""

__version__ = "0.1.0"

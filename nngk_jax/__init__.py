"""nngk-jax: Nearest Neighbour Gaussian Kernels for metric learning, in JAX.

Submodules:
  loss        pure, jit-able losses (``gaussian_kernel_loss``, ...)
  neighbours  host-side neighbour graph over the centre bank (PyNNDescent)
  knn         exact chunked k-nearest-neighbour search
  data        datasets as random-access splits, batch iterators
  models      backbones by name, embedding network
  objectives  losses by name, as the trainer uses them
  metrics     Recall@K, MAP@R, R-precision, NMI, accuracy
  train       the training loop and command line
"""

__version__ = "0.1.0"

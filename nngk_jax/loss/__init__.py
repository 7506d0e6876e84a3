"""Pure, jit-able loss functions. Each returns a per-example array."""

from nngk_jax.loss.nngk import MIN_PROBABILITY
from nngk_jax.loss.nngk import gaussian_kernel_loss
from nngk_jax.loss.nngk import kernel_class_log_probs
from nngk_jax.loss.nngk import neighbour_log_kernels

__all__ = [
    "MIN_PROBABILITY",
    "gaussian_kernel_loss",
    "kernel_class_log_probs",
    "neighbour_log_kernels",
]

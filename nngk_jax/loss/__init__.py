"""Pure, jit-able loss functions.

Each returns a per-example ``[batch]`` array for the caller to reduce, except
``proxy_anchor_loss``, which does not decompose per example and returns a
scalar (it takes a ``where`` mask instead).

``pairwise_squared_distances`` and ``l2_normalize`` are re-exported from
:mod:`nngk_jax.geometry`, their home.
"""

from nngk_jax.geometry import l2_normalize
from nngk_jax.geometry import pairwise_squared_distances
from nngk_jax.loss.group import choose_anchors
from nngk_jax.loss.group import group_log_probs
from nngk_jax.loss.group import group_loss
from nngk_jax.loss.group import group_loss_with_ce
from nngk_jax.loss.group import pearson_affinity
from nngk_jax.loss.impostor import impostor_loss
from nngk_jax.loss.nngk import MIN_PROBABILITY
from nngk_jax.loss.nngk import gaussian_kernel_loss
from nngk_jax.loss.nngk import kernel_class_log_probs
from nngk_jax.loss.nngk import neighbour_log_kernels
from nngk_jax.loss.nngk import soft_gaussian_kernel_loss
from nngk_jax.loss.nngk import soft_kernel_class_log_probs
from nngk_jax.loss.pairwise import nca_loss
from nngk_jax.loss.pairwise import triplet_semihard_loss
from nngk_jax.loss.proxy import normalized_softmax_loss
from nngk_jax.loss.proxy import proxy_anchor_loss
from nngk_jax.loss.proxy import proxy_nca_loss
from nngk_jax.loss.rank import rank_approximation_loss
from nngk_jax.loss.rank import rank_transfer
from nngk_jax.loss.rank import smooth_ranks
from nngk_jax.loss.vmf import vmf_class_means
from nngk_jax.loss.vmf import vmf_loss

__all__ = [
    "MIN_PROBABILITY",
    "choose_anchors",
    "gaussian_kernel_loss",
    "group_log_probs",
    "group_loss",
    "group_loss_with_ce",
    "impostor_loss",
    "kernel_class_log_probs",
    "l2_normalize",
    "nca_loss",
    "neighbour_log_kernels",
    "normalized_softmax_loss",
    "pairwise_squared_distances",
    "pearson_affinity",
    "proxy_anchor_loss",
    "proxy_nca_loss",
    "rank_approximation_loss",
    "rank_transfer",
    "smooth_ranks",
    "soft_gaussian_kernel_loss",
    "soft_kernel_class_log_probs",
    "triplet_semihard_loss",
    "vmf_class_means",
    "vmf_loss",
]

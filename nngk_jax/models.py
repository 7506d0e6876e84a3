"""Backbones, looked up by name, and the embedding network around them.

A backbone maps images ``[batch, H, W, C]`` to features ``[batch, F]``. The
:class:`EmbeddingNet` adds a linear embedding head of ``embed_dim`` and, for
the softmax baseline, a linear classifier head on top of the embedding.

ResNet-18 and ResNet-50 (:mod:`nngk_jax.resnet`, torchvision's layout, with
options ``pooling``, ``frozen_bn`` and ``dtype``) are registered as
``"resnet18"`` and ``"resnet50"``; :mod:`nngk_jax.pretrained` loads ImageNet
weights into them.

For small images (32x32, the glyph benchmark, ``folder:`` data) the default
is :class:`ConvNet` (``"conv4"``): four blocks of 3x3 convolution,
BatchNorm, ReLU and 2x2 pooling, the CNN pytorch-metric-learning's examples
train on such images. Pooling after every block gives its last layer a
receptive field covering the whole 32x32 image, which is what lets it
transfer to unseen classes; :class:`SmallCNN` (strided convolutions, about
9 pixels of receptive field before its global average) memorises the training
classes and transfers little (measured in ``docs/results.md``). It stays
registered as ``"small_cnn"`` for tests of the machinery on 8x8 digits.
"""

from __future__ import annotations

from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from nngk_jax import geometry
from nngk_jax import resnet

__all__ = ["BACKBONES", "ConvNet", "EmbeddingNet", "MLP", "SmallCNN",
           "get_backbone"]


class MLP(nn.Module):
  """Flatten, then ``Dense -> BatchNorm -> ReLU`` per hidden width."""

  hidden: Sequence[int] = (256, 256)

  @nn.compact
  def __call__(self, images: jax.Array, *, train: bool) -> jax.Array:
    x = images.reshape((images.shape[0], -1))
    for width in self.hidden:
      x = nn.Dense(width)(x)
      x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
      x = nn.relu(x)
    return x


class SmallCNN(nn.Module):
  """3x3 convolutions (first stride 1, then stride 2), BatchNorm, ReLU, GAP.

  ``channels=(32, 64, 128)`` takes an 8x8 image to 2x2 before the global
  average pool, and a 32x32 image to 8x8.
  """

  channels: Sequence[int] = (32, 64, 128)

  @nn.compact
  def __call__(self, images: jax.Array, *, train: bool) -> jax.Array:
    x = images
    for i, width in enumerate(self.channels):
      stride = 1 if i == 0 else 2
      x = nn.Conv(width, (3, 3), strides=(stride, stride), use_bias=False)(x)
      x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
      x = nn.relu(x)
    return jnp.mean(x, axis=(1, 2))


def pool_2x2(x: jax.Array, kind: str = "max") -> jax.Array:
  """Non-overlapping 2x2 max or average pooling of ``[B, H, W, C]``.

  The same result as ``nn.max_pool(x, (2, 2), strides=(2, 2))`` (odd edges
  dropped), written as a reshape and a reduction: XLA's CPU backend runs
  the gradient of ``reduce_window`` max (select-and-scatter) several times
  slower than that of a plain reduction (docs/benchmarks.md). Where a
  window holds tied maxima the gradient is shared among them rather than
  given to the first; after a ReLU the tied values are zeros, whose
  gradient the ReLU stops anyway.

  Examples:
    >>> import jax.numpy as jnp
    >>> x = jnp.arange(16.0).reshape(1, 4, 4, 1)
    >>> pool_2x2(x)[0, :, :, 0].tolist()
    [[5.0, 7.0], [13.0, 15.0]]
    >>> pool_2x2(x, "avg")[0, :, :, 0].tolist()
    [[2.5, 4.5], [10.5, 12.5]]
  """
  batch, height, width, channels = x.shape
  h, w = height // 2, width // 2
  windows = x[:, :2 * h, :2 * w].reshape(batch, h, 2, w, 2, channels)
  if kind == "max":
    return windows.max(axis=(2, 4))
  if kind == "avg":
    return windows.mean(axis=(2, 4))
  raise ValueError(f"pooling must be 'max' or 'avg', got {kind!r}")


class ConvNet(nn.Module):
  """Blocks of ``3x3 conv -> BatchNorm -> ReLU -> 2x2 pool``, then global pool.

  ``channels=(32, 64, 128, 256)`` takes a 32x32 image to 2x2 before the
  global average; each block halves the resolution (a block whose input is
  1 pixel wide skips its pooling, so 8x8 digits work too). About 15 M
  multiply-adds per 32x32 grey image.

  Attributes:
    channels: output width of each block.
    pooling: ``"max"`` (the usual choice) or ``"avg"`` 2x2 pooling.
    global_pool: average the last block's map into ``[batch, channels[-1]]``
      (the default); ``False`` returns the ``[batch, H', W', channels[-1]]``
      map, so that the blocks can be split in two stages
      (:mod:`nngk_jax.biased`).

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> net = ConvNet(channels=(4, 8))
    >>> v = net.init(jax.random.key(0), jnp.zeros((2, 32, 32, 1)), train=False)
    >>> net.apply(v, jnp.zeros((2, 32, 32, 1)), train=False).shape
    (2, 8)
  """

  channels: Sequence[int] = (32, 64, 128, 256)
  pooling: str = "max"
  global_pool: bool = True

  @nn.compact
  def __call__(self, images: jax.Array, *, train: bool) -> jax.Array:
    if self.pooling not in ("max", "avg"):
      raise ValueError(f"pooling must be 'max' or 'avg', got {self.pooling!r}")
    x = images
    for width in self.channels:
      x = nn.Conv(width, (3, 3), use_bias=False)(x)
      x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
      x = nn.relu(x)
      if x.shape[1] >= 2 and x.shape[2] >= 2:
        x = pool_2x2(x, self.pooling)
    return jnp.mean(x, axis=(1, 2)) if self.global_pool else x


BACKBONES: dict[str, Callable[..., nn.Module]] = {
    "mlp": MLP,
    "small_cnn": SmallCNN,
    "conv4": ConvNet,
    # torchvision's architectures; ImageNet weights: nngk_jax.pretrained.
    **resnet.RESNETS,
}


def get_backbone(name: str, **kwargs) -> nn.Module:
  """The backbone registered under ``name``, built with ``kwargs``.

  Examples:
    >>> get_backbone("small_cnn", channels=(8, 16)).channels
    (8, 16)
  """
  if name not in BACKBONES:
    raise ValueError(
        f"unknown backbone {name!r}; known: {', '.join(sorted(BACKBONES))}")
  return BACKBONES[name](**kwargs)


class EmbeddingNet(nn.Module):
  """Backbone, linear embedding head, optional linear classifier head.

  Attributes:
    backbone: a module from :data:`BACKBONES`.
    embed_dim: size ``D`` of the linear embedding head; ``None`` uses the
      backbone's features as the embedding, with no head (the NNGK authors'
      code: ResNet-18's pooled 512-d features).
    num_classes: when set, a linear classifier on the embedding also returns
      logits (the softmax baseline); ``None`` returns ``None`` logits.
    num_proxies: when set, a trainable ``[num_proxies, embed_dim]`` matrix
      ``proxies`` is created among the parameters (proxy-based losses read
      it from the params; it does not change the outputs). Initialised as
      the Proxy-Anchor authors' code does (``kaiming_normal_``, fan out:
      normal with std ``sqrt(2 / num_proxies)``). The losses see only the
      proxies' directions, but their scale sets how fast a step of Adam
      turns them: at std 1 (norm ``sqrt(D)``) they turned about ten times
      slower and Proxy-Anchor trailed pytorch-metric-learning's.
    normalize: L2-normalise the embeddings (onto the unit sphere). Off in
      the paper's NNGK; then ``sigma`` acts as a temperature.

  Returns (from ``__call__``):
    ``(embeddings [batch, D], logits [batch, num_classes] or None)``.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> net = EmbeddingNet(backbone=MLP(hidden=(4,)), embed_dim=3, num_classes=2)
    >>> variables = net.init(jax.random.key(0), jnp.zeros((2, 8, 8, 1)), train=False)
    >>> emb, logits = net.apply(variables, jnp.zeros((2, 8, 8, 1)), train=False)
    >>> emb.shape, logits.shape
    ((2, 3), (2, 2))
    >>> headless = EmbeddingNet(backbone=MLP(hidden=(4,)), embed_dim=None)
    >>> v = headless.init(jax.random.key(0), jnp.zeros((2, 8, 8, 1)), train=False)
    >>> headless.apply(v, jnp.zeros((2, 8, 8, 1)), train=False)[0].shape
    (2, 4)
  """

  backbone: nn.Module
  embed_dim: int | None
  num_classes: int | None = None
  num_proxies: int | None = None
  normalize: bool = False

  @nn.compact
  def __call__(self, images: jax.Array, *, train: bool):
    features = self.backbone(images, train=train)
    embeddings = features
    if self.embed_dim is not None:
      embeddings = nn.Dense(self.embed_dim, name="embedding")(features)
    if self.normalize:
      embeddings = geometry.l2_normalize(embeddings)
    if self.num_proxies is not None:
      self.param("proxies",
                 nn.initializers.normal((2.0 / self.num_proxies) ** 0.5),
                 (self.num_proxies, embeddings.shape[-1]))
    logits = None
    if self.num_classes is not None:
      logits = nn.Dense(self.num_classes, name="classifier")(embeddings)
    return embeddings, logits

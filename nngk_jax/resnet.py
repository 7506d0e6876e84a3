"""ResNet-18 and ResNet-50 backbones, layer for layer as torchvision's.

The architecture is torchvision's ``resnet18`` / ``resnet50`` (ResNet v1.5:
in a bottleneck block the stride sits on the 3x3 convolution), without the
final ``fc`` layer: the backbone returns the pooled features
``[batch, 512]`` (ResNet-18) or ``[batch, 2048]`` (ResNet-50).

Images are NHWC (``[batch, height, width, 3]``), as everywhere in Flax;
torchvision is NCHW. The stem is a 7x7 stride-2 convolution, BatchNorm,
ReLU and a 3x3 stride-2 max pool with padding 1; then four stages of
residual blocks at widths 64, 128, 256, 512, the last three starting with
stride 2. Paddings are written out (``((1, 1), (1, 1))``) rather than
``"SAME"``: with stride 2 on an even size, ``"SAME"`` pads only after, while
torchvision pads both sides, so ``"SAME"`` would shift every feature map.

Submodule names follow torchvision's parameter names, so that the parameter
tree maps one to one onto a torchvision ``state_dict`` (see
:mod:`nngk_jax.pretrained`):

==============================  ===================================
Flax path                       torchvision name
==============================  ===================================
``conv1/kernel``                ``conv1.weight``
``bn1/scale``, ``bn1/bias``     ``bn1.weight``, ``bn1.bias``
``bn1/mean``, ``bn1/var``       ``bn1.running_mean``, ``bn1.running_var``
                                (in ``batch_stats``)
``layer1_0/conv1/kernel``       ``layer1.0.conv1.weight``
``layer2_0/downsample_conv``    ``layer2.0.downsample.0``
``layer2_0/downsample_bn``      ``layer2.0.downsample.1``
==============================  ===================================

BatchNorm uses torchvision's epsilon (1e-5) and running-average update
(torch ``momentum=0.1`` is Flax ``momentum=0.9``).
"""

from __future__ import annotations

import functools
from typing import Any, ClassVar, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

__all__ = ["BasicBlock", "Bottleneck", "POOLINGS", "RESNETS", "ResNet",
           "ResNet18", "ResNet50"]

POOLINGS = ("avg", "max", "avg+max")

# torchvision initialises convolutions with kaiming_normal_(mode="fan_out",
# nonlinearity="relu"): normal with variance 2 / fan_out, not truncated.
_conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def _same_pad(kernel_size: int) -> tuple[tuple[int, int], tuple[int, int]]:
  """torchvision's padding ``kernel_size // 2`` on both sides of H and W."""
  pad = kernel_size // 2
  return ((pad, pad), (pad, pad))


class _ConvBN(nn.Module):
  """Shared settings of the convolutions and BatchNorms of a ResNet."""

  frozen_bn: bool = False
  dtype: Any = jnp.float32

  def conv(self, features: int, kernel_size: int, strides: int = 1,
           name: str | None = None) -> nn.Conv:
    return nn.Conv(features, (kernel_size, kernel_size),
                   strides=(strides, strides), padding=_same_pad(kernel_size),
                   use_bias=False, kernel_init=_conv_init, dtype=self.dtype,
                   param_dtype=jnp.float32, name=name)

  def norm(self, train: bool, name: str | None = None) -> nn.BatchNorm:
    return nn.BatchNorm(use_running_average=self.frozen_bn or not train,
                        momentum=0.9, epsilon=1e-5, dtype=self.dtype,
                        param_dtype=jnp.float32, name=name)


class BasicBlock(_ConvBN):
  """Two 3x3 convolutions with a residual connection (ResNet-18/34).

  ``conv1 (3x3, stride) -> bn1 -> relu -> conv2 (3x3) -> bn2``, plus the
  input, then ReLU. When the stride is not 1 or the width changes, the input
  goes through ``downsample_conv`` (1x1, stride) and ``downsample_bn`` first.

  Attributes:
    features: width of the block's convolutions.
    strides: stride of the first convolution (1 or 2).
    frozen_bn: BatchNorm always uses its running statistics.
    dtype: computation dtype.
  """

  expansion: ClassVar[int] = 1
  features: int = 64
  strides: int = 1

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    out_features = self.features * self.expansion
    y = self.conv(self.features, 3, self.strides, name="conv1")(x)
    y = nn.relu(self.norm(train, name="bn1")(y))
    y = self.conv(self.features, 3, name="conv2")(y)
    y = self.norm(train, name="bn2")(y)
    return nn.relu(y + self.shortcut(x, out_features, train))

  def shortcut(self, x: jax.Array, out_features: int, train: bool):
    """The input, or its 1x1 projection when its shape changes."""
    if self.strides == 1 and x.shape[-1] == out_features:
      return x
    x = self.conv(out_features, 1, self.strides, name="downsample_conv")(x)
    return self.norm(train, name="downsample_bn")(x)


class Bottleneck(BasicBlock):
  """1x1 reduce, 3x3 (with the stride), 1x1 expand by 4 (ResNet-50/101/152).

  ``conv1 (1x1) -> bn1 -> relu -> conv2 (3x3, stride) -> bn2 -> relu ->
  conv3 (1x1, 4 * features) -> bn3``, plus the (projected) input, then ReLU.
  The stride on the 3x3 rather than the first 1x1 convolution is what
  torchvision calls ResNet v1.5.

  Attributes:
    features: width of the 1x1 reduce and the 3x3 convolution; the block
      outputs ``4 * features`` channels.
    strides: stride of the 3x3 convolution (1 or 2).
    frozen_bn: BatchNorm always uses its running statistics.
    dtype: computation dtype.
  """

  expansion: ClassVar[int] = 4

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    out_features = self.features * self.expansion
    y = self.conv(self.features, 1, name="conv1")(x)
    y = nn.relu(self.norm(train, name="bn1")(y))
    y = self.conv(self.features, 3, self.strides, name="conv2")(y)
    y = nn.relu(self.norm(train, name="bn2")(y))
    y = self.conv(out_features, 1, name="conv3")(y)
    y = self.norm(train, name="bn3")(y)
    return nn.relu(y + self.shortcut(x, out_features, train))


class ResNet(_ConvBN):
  """A torchvision ResNet without its ``fc`` layer: images to pooled features.

  Attributes:
    stage_sizes: blocks per stage, ``(2, 2, 2, 2)`` for ResNet-18 and
      ``(3, 4, 6, 3)`` for ResNet-50.
    block: :class:`BasicBlock` or :class:`Bottleneck`.
    pooling: how the last feature map ``[batch, h, w, F]`` becomes
      ``[batch, F]``: ``"avg"`` (global average, as torchvision), ``"max"``
      (global max) or ``"avg+max"`` (the sum of the two, as many
      metric-learning codebases do).
    frozen_bn: when True, every BatchNorm normalises with its running
      statistics, in train mode too, and never updates them (the usual
      choice when fine-tuning pretrained weights with small batches). This
      is only the running-average mode: the BatchNorm scale and bias are
      still parameters that get gradients, so to keep them fixed as well,
      mask them out in the optimizer (e.g. ``optax.masked``).
    dtype: computation dtype of convolutions and BatchNorms, e.g.
      ``jnp.bfloat16`` on a GPU or TPU. Parameters and running statistics
      stay float32, and the pooled features are returned as float32.

  Returns (from ``__call__(images, *, train)``):
    features ``[batch, 512 * block.expansion]``, float32.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> net = ResNet18(pooling="avg+max")
    >>> images = jnp.zeros((2, 32, 32, 3))
    >>> variables = jax.eval_shape(
    ...     lambda: net.init(jax.random.key(0), images, train=False))
    >>> jax.eval_shape(lambda v: net.apply(v, images, train=False),
    ...                variables).shape
    (2, 512)
    >>> sorted(variables["params"]["layer2_0"])
    ['bn1', 'bn2', 'conv1', 'conv2', 'downsample_bn', 'downsample_conv']
  """

  stage_sizes: Sequence[int] = (2, 2, 2, 2)
  block: type[BasicBlock] = BasicBlock
  pooling: str = "avg"

  @nn.compact
  def __call__(self, images: jax.Array, *, train: bool) -> jax.Array:
    if self.pooling not in POOLINGS:
      raise ValueError(f"pooling must be one of {POOLINGS}, got "
                       f"{self.pooling!r}")
    if images.ndim != 4:
      raise ValueError("images must be [batch, height, width, channels] "
                       f"(NHWC), got shape {images.shape}")
    # Stem: 7x7/2 convolution, BatchNorm, ReLU, 3x3/2 max pool.
    x = images.astype(self.dtype)
    x = self.conv(64, 7, 2, name="conv1")(x)
    x = nn.relu(self.norm(train, name="bn1")(x))
    # Padding with -inf (what nn.max_pool does) equals torch's MaxPool2d.
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=_same_pad(3))
    # Four stages, named layer1 .. layer4 as in torchvision.
    for stage, num_blocks in enumerate(self.stage_sizes):
      for index in range(num_blocks):
        strides = 2 if stage > 0 and index == 0 else 1
        x = self.block(features=64 * 2**stage, strides=strides,
                       frozen_bn=self.frozen_bn, dtype=self.dtype,
                       name=f"layer{stage + 1}_{index}")(x, train=train)
    x = x.astype(jnp.float32)
    if self.pooling == "avg":
      return jnp.mean(x, axis=(1, 2))
    if self.pooling == "max":
      return jnp.max(x, axis=(1, 2))
    return jnp.mean(x, axis=(1, 2)) + jnp.max(x, axis=(1, 2))


ResNet18 = functools.partial(ResNet, stage_sizes=(2, 2, 2, 2),
                             block=BasicBlock)
ResNet18.__doc__ = "torchvision's ``resnet18`` without ``fc``: see ResNet."
ResNet50 = functools.partial(ResNet, stage_sizes=(3, 4, 6, 3),
                             block=Bottleneck)
ResNet50.__doc__ = "torchvision's ``resnet50`` without ``fc``: see ResNet."

# The architectures by name (the one registry: nngk_jax.models.BACKBONES and
# nngk_jax.pretrained.ARCHS read it).
RESNETS = {"resnet18": ResNet18, "resnet50": ResNet50}

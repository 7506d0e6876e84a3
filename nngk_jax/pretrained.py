"""ImageNet-pretrained ResNet weights from a torchvision or timm safetensors file.

torchvision and timm name the parameters of ``resnet18`` and ``resnet50``
alike (``conv1.weight``, ``bn1.running_mean``, ``layer1.0.conv1.weight``,
``layer1.0.downsample.0.weight``, ``fc.weight``, ...), so one converter reads
both. It maps them onto :mod:`nngk_jax.resnet`'s parameter tree, transposes
convolution kernels from torch's ``[out, in, kh, kw]`` (OIHW) to Flax's
``[kh, kw, in, out]`` (HWIO), puts running means and variances in
``batch_stats`` and drops ``fc.*`` (the classifier) and
``*.num_batches_tracked``.

Getting the file (on a machine with internet; this project's machines have
none). With torchvision::

  python -c "import torchvision, safetensors.torch as st; st.save_file(torchvision.models.resnet50(weights='IMAGENET1K_V1').state_dict(), 'resnet50.safetensors')"

With timm::

  python -c "import timm, safetensors.torch as st; st.save_file(timm.create_model('resnet50.a1_in1k', pretrained=True).state_dict(), 'resnet50.safetensors')"

or download ``model.safetensors`` from the Hugging Face hub repository
``timm/resnet50.a1_in1k`` (``timm/resnet18.a1_in1k`` for ResNet-18) directly,
e.g. ``hf download timm/resnet50.a1_in1k model.safetensors``; it needs no
conversion step.

ImageNet weights expect what they were trained on: RGB images scaled to
``[0, 1]``, then normalised per channel with the ImageNet mean
:data:`IMAGENET_MEAN` and standard deviation :data:`IMAGENET_STD`
(:func:`normalize_imagenet`; both defined in :mod:`nngk_jax.data.pipeline`,
whose ``"imagenet"`` normalisation uses them). Without that, the pretrained features are far
off.

Use::

  variables = model.init(rng, sample_images, train=False)
  variables = load_backbone_weights(variables, "resnet50.safetensors",
                                    arch="resnet50")

See ``docs/pretrained.md`` for the comparison with torchvision itself.
"""

from __future__ import annotations

import os
import re
from typing import Any, Mapping

from flax import core as flax_core
from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np

from nngk_jax import resnet
from nngk_jax.data.pipeline import IMAGENET_MEAN
from nngk_jax.data.pipeline import IMAGENET_STD

__all__ = ["ARCHS", "IMAGENET_MEAN", "IMAGENET_STD", "convert_torch_resnet",
           "load_backbone_weights", "normalize_imagenet"]

# The architectures whose weights can be read: name -> Flax module.
ARCHS = resnet.RESNETS

# Blocks per stage and block kind of torchvision's ResNets, used to say
# which architecture a state dict holds when it is not the one asked for.
_TORCHVISION_LAYOUTS = {
    ((2, 2, 2, 2), False): "resnet18",
    ((3, 4, 6, 3), False): "resnet34",
    ((3, 4, 6, 3), True): "resnet50",
    ((3, 4, 23, 3), True): "resnet101",
    ((3, 8, 36, 3), True): "resnet152",
}

# Flax leaf name -> (variable collection, torch suffix).
_LEAVES = {
    ("params", "kernel"): "weight",
    ("params", "scale"): "weight",
    ("params", "bias"): "bias",
    ("batch_stats", "mean"): "running_mean",
    ("batch_stats", "var"): "running_var",
}


def normalize_imagenet(images: jax.Array) -> jax.Array:
  """RGB images in ``[0, 1]`` normalised as ImageNet-pretrained nets expect.

  Args:
    images: ``[..., 3]`` RGB values in ``[0, 1]`` (channels last).

  Returns:
    ``(images - IMAGENET_MEAN) / IMAGENET_STD``, same shape.

  Examples:
    >>> import jax.numpy as jnp
    >>> normalize_imagenet(jnp.full((1, 2, 2, 3), 0.485))[0, 0, 0, 0]
    Array(0., dtype=float32)
  """
  if images.shape[-1] != 3:
    raise ValueError("ImageNet normalisation needs RGB images [..., 3], got "
                     f"shape {images.shape}")
  mean = jnp.asarray(IMAGENET_MEAN, jnp.float32)
  std = jnp.asarray(IMAGENET_STD, jnp.float32)
  return (images - mean) / std


def _torch_name(module_path: tuple[str, ...], leaf: str) -> str:
  """``("layer1_0", "downsample_bn"), "weight"`` -> ``layer1.0.downsample.1.weight``."""
  parts = []
  for name in module_path:
    match = re.fullmatch(r"layer(\d+)_(\d+)", name)
    if match:
      parts += [f"layer{match[1]}", match[2]]
    elif name == "downsample_conv":
      parts += ["downsample", "0"]
    elif name == "downsample_bn":
      parts += ["downsample", "1"]
    else:
      parts.append(name)
  return ".".join(parts + [leaf])


def _guess_arch(state_dict: Mapping[str, Any]) -> str | None:
  """The torchvision ResNet a state dict holds, from its block names."""
  blocks = []
  for stage in range(1, 5):
    names = {int(m[1]) for key in state_dict
             if (m := re.match(rf"layer{stage}\.(\d+)\.", key))}
    blocks.append(len(names))
  bottleneck = "layer1.0.conv3.weight" in state_dict
  return _TORCHVISION_LAYOUTS.get((tuple(blocks), bottleneck))


def _expected_variables(arch: str) -> dict:
  """Shapes and dtypes of a bare ResNet's variables (nothing computed)."""
  module = ARCHS[arch]()
  images = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
  return jax.eval_shape(
      lambda x: module.init(jax.random.key(0), x, train=False), images)


def _few(names, count: int = 5) -> str:
  names = sorted(names)
  more = f", ... ({len(names)} in all)" if len(names) > count else ""
  return ", ".join(names[:count]) + more


def convert_torch_resnet(state_dict: Mapping[str, np.ndarray], arch: str
                         ) -> dict[str, dict]:
  """Flax variables of a bare :mod:`nngk_jax.resnet` from a torch state dict.

  Args:
    state_dict: torchvision or timm parameter names to numpy arrays in torch
      layout (convolution kernels ``[out, in, kh, kw]``), e.g. from
      ``safetensors.numpy.load_file``. ``fc.*`` and ``*.num_batches_tracked``
      are ignored.
    arch: ``"resnet18"`` or ``"resnet50"``.

  Returns:
    ``{"params": ..., "batch_stats": ...}`` for ``ResNet18()`` or
    ``ResNet50()`` (any ``pooling``, ``frozen_bn`` or ``dtype``), float32.

  Raises:
    ValueError: unknown ``arch``; weights of another architecture; missing,
      unexpected or wrongly shaped entries (each named).

  Examples:
    >>> import numpy as np
    >>> conv1 = np.zeros((64, 3, 7, 7), np.float32)  # torch's [O, I, kh, kw]
    >>> convert_torch_resnet({"conv1.weight": conv1}, "resnet18")
    Traceback (most recent call last):
    ...
    ValueError: the state dict does not fit resnet18 (torchvision or timm names expected): 99 missing: bn1.bias, bn1.running_mean, bn1.running_var, bn1.weight, layer1.0.bn1.bias, ... (99 in all)

    A complete state dict gives ``variables["params"]["conv1"]["kernel"]``
    of shape ``(7, 7, 3, 64)`` (Flax's HWIO), and so on for every layer.
  """
  if arch not in ARCHS:
    raise ValueError(f"unknown arch {arch!r}; known: {', '.join(ARCHS)}")
  found_arch = _guess_arch(state_dict)
  if found_arch is not None and found_arch != arch:
    raise ValueError(f"the weights are a {found_arch}, not a {arch} as "
                     f"arch={arch!r} says")

  expected = traverse_util.flatten_dict(_expected_variables(arch))
  flat, used, missing, mismatched = {}, set(), [], []
  for path, like in expected.items():
    kind, *modules, leaf = path
    name = _torch_name(tuple(modules), _LEAVES[kind, leaf])
    if name not in state_dict:
      missing.append(name)
      continue
    used.add(name)
    value = np.asarray(state_dict[name])
    if leaf == "kernel" and value.ndim == 4:
      value = value.transpose(2, 3, 1, 0)  # OIHW -> HWIO
    if value.shape != like.shape:
      torch_shape = np.shape(state_dict[name])
      want = like.shape
      if leaf == "kernel":
        want = (want[3], want[2], want[0], want[1])
      mismatched.append(f"{name}: file has {torch_shape}, {arch} needs {want}")
      continue
    flat[path] = jnp.asarray(value, like.dtype)

  ignored = re.compile(r"fc\..*|.*num_batches_tracked")
  unexpected = [name for name in state_dict
                if name not in used and not ignored.fullmatch(name)]
  problems = []
  if missing:
    problems.append(f"{len(missing)} missing: {_few(missing)}")
  if unexpected:
    problems.append(f"{len(unexpected)} unexpected: {_few(unexpected)}")
  if mismatched:
    problems.append(f"{len(mismatched)} of the wrong shape: "
                    + "; ".join(mismatched[:5]))
  if problems:
    raise ValueError(f"the state dict does not fit {arch} (torchvision or "
                     "timm names expected): " + "; ".join(problems))
  return traverse_util.unflatten_dict(flat)


def load_backbone_weights(variables: Mapping[str, Any], path: str | os.PathLike,
                          *, arch: str, key: str = "backbone") -> dict:
  """``variables`` with the ResNet under ``key`` replaced by a file's weights.

  Args:
    variables: ``{"params": ..., "batch_stats": ...}`` of a network holding a
      :mod:`nngk_jax.resnet` backbone as submodule ``key``, e.g. from
      ``EmbeddingNet(backbone=get_backbone(arch), ...).init(...)``.
    path: a safetensors file with a torchvision or timm ``state_dict`` (see
      the module docstring for how to get one).
    arch: ``"resnet18"`` or ``"resnet50"``, the backbone's architecture.
    key: name of the backbone submodule (``EmbeddingNet`` calls it
      ``"backbone"``).

  Returns:
    A new variables dict; everything outside ``key`` (the embedding and
    classifier heads, proxies) is the same as in ``variables``.

  Raises:
    FileNotFoundError: no file at ``path``.
    ValueError: the file's weights do not fit ``arch`` (see
      :func:`convert_torch_resnet`), or ``variables`` have no ``key`` or a
      backbone of other shapes than ``arch`` (e.g. 1-channel images: the
      ImageNet weights need 3).

  Examples:
    >>> load_backbone_weights({}, "/nonexistent/resnet50.safetensors",
    ...                       arch="resnet50")
    Traceback (most recent call last):
    ...
    FileNotFoundError: no pretrained weights at /nonexistent/resnet50.safetensors
  """
  import safetensors.numpy  # pylint: disable=g-import-not-at-top

  if not os.path.isfile(path):
    raise FileNotFoundError(f"no pretrained weights at {path}")
  converted = convert_torch_resnet(safetensors.numpy.load_file(path), arch)

  if isinstance(variables, flax_core.FrozenDict):
    variables = variables.unfreeze()
  new_variables = dict(variables)
  for kind in ("params", "batch_stats"):
    if key not in variables.get(kind, {}):
      raise ValueError(
          f"variables[{kind!r}] has no backbone {key!r} (found: "
          f"{_few(variables.get(kind, {}))}); build the model with a "
          f"{arch} backbone named {key!r}")
    old = traverse_util.flatten_dict(variables[kind][key], sep="/")
    new = traverse_util.flatten_dict(converted[kind], sep="/")
    if old.keys() != new.keys():
      raise ValueError(
          f"the model's backbone is not a {arch}: its {kind} differ in "
          f"{_few(old.keys() ^ new.keys())}")
    wrong = [f"{name}: model {old[name].shape}, {arch} weights "
             f"{new[name].shape}" for name in old
             if old[name].shape != new[name].shape]
    if wrong:
      raise ValueError(f"the model's backbone {kind} do not have the shapes of "
                       f"the {arch} weights: " + "; ".join(wrong[:5]))
    new_variables[kind] = {**variables[kind], key: converted[kind]}
  return new_variables

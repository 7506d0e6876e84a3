"""Tests of loading torchvision/timm ResNet weights (no torch needed).

A random state dict with torchvision's names and layouts is saved as
safetensors, loaded into the Flax ResNet, and the features are compared with
a plain numpy forward pass written here from torchvision's ``forward``
methods, on the raw NCHW / OIHW arrays. The comparison with torchvision
itself is ``experiments/check_pretrained.py`` (docs/pretrained.md).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy

from nngk_jax import configs
from nngk_jax import data as datalib
from nngk_jax import models
from nngk_jax import pretrained
from nngk_jax import resnet
from nngk_jax import state as statelib

# torchvision's layouts: blocks per stage, and whether blocks are
# bottlenecks (1x1, 3x3, 1x1 with 4x expansion) or basic (3x3, 3x3).
LAYOUTS = {"resnet18": ((2, 2, 2, 2), False), "resnet50": ((3, 4, 6, 3), True)}


# ----------------------------------------------------------------------------
# A random torchvision state dict.


def _add_bn(state, prefix, channels, rng):
  state[f"{prefix}.weight"] = 1 + 0.2 * rng.normal(size=channels)
  state[f"{prefix}.bias"] = 0.2 * rng.normal(size=channels)
  state[f"{prefix}.running_mean"] = 0.2 * rng.normal(size=channels)
  state[f"{prefix}.running_var"] = rng.uniform(0.5, 2.0, channels)
  state[f"{prefix}.num_batches_tracked"] = np.array(7, np.int64)


def _add_conv(state, name, out_channels, in_channels, size, rng):
  std = np.sqrt(1 / (in_channels * size * size))
  state[name] = rng.normal(0, std, (out_channels, in_channels, size, size))


def torchvision_state_dict(arch, seed=0):
  """torchvision's ``resnet18/50().state_dict()`` names and shapes, random."""
  rng = np.random.default_rng(seed)
  stage_sizes, bottleneck = LAYOUTS[arch]
  expansion = 4 if bottleneck else 1
  state = {}
  _add_conv(state, "conv1.weight", 64, 3, 7, rng)
  _add_bn(state, "bn1", 64, rng)
  in_channels = 64
  for stage, num_blocks in enumerate(stage_sizes):
    planes = 64 * 2**stage
    for index in range(num_blocks):
      stride = 2 if stage > 0 and index == 0 else 1
      p = f"layer{stage + 1}.{index}"
      if bottleneck:
        _add_conv(state, f"{p}.conv1.weight", planes, in_channels, 1, rng)
        _add_bn(state, f"{p}.bn1", planes, rng)
        _add_conv(state, f"{p}.conv2.weight", planes, planes, 3, rng)
        _add_bn(state, f"{p}.bn2", planes, rng)
        _add_conv(state, f"{p}.conv3.weight", planes * 4, planes, 1, rng)
        _add_bn(state, f"{p}.bn3", planes * 4, rng)
      else:
        _add_conv(state, f"{p}.conv1.weight", planes, in_channels, 3, rng)
        _add_bn(state, f"{p}.bn1", planes, rng)
        _add_conv(state, f"{p}.conv2.weight", planes, planes, 3, rng)
        _add_bn(state, f"{p}.bn2", planes, rng)
      if stride != 1 or in_channels != planes * expansion:
        _add_conv(state, f"{p}.downsample.0.weight", planes * expansion,
                  in_channels, 1, rng)
        _add_bn(state, f"{p}.downsample.1", planes * expansion, rng)
      in_channels = planes * expansion
  state["fc.weight"] = rng.normal(size=(1000, in_channels))
  state["fc.bias"] = rng.normal(size=1000)
  return {name: np.ascontiguousarray(value, np.float32)
          if value.dtype == np.float64 else value
          for name, value in state.items()}


# ----------------------------------------------------------------------------
# torchvision's forward pass in plain numpy, NCHW, float64.


def _windows(x, size, stride, pad, fill):
  """``[N, C, H', W', size, size]`` patches of ``x`` ``[N, C, H, W]``."""
  x = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)), constant_values=fill)
  patches = np.lib.stride_tricks.sliding_window_view(x, (size, size), (2, 3))
  return patches[:, :, ::stride, ::stride]


def conv2d(x, weight, stride=1):
  """torch ``Conv2d(padding=k // 2, bias=False)``: weight ``[O, I, k, k]``."""
  size = weight.shape[-1]
  patches = _windows(x, size, stride, size // 2, 0.0)
  return np.einsum("nchwij,ocij->nohw", patches, weight, optimize=True)


def batch_norm(x, state, prefix):
  """torch ``BatchNorm2d`` in eval mode (running statistics, eps 1e-5)."""
  shape = (1, -1, 1, 1)
  mean = state[f"{prefix}.running_mean"].reshape(shape)
  var = state[f"{prefix}.running_var"].reshape(shape)
  weight = state[f"{prefix}.weight"].reshape(shape)
  bias = state[f"{prefix}.bias"].reshape(shape)
  return (x - mean) / np.sqrt(var + 1e-5) * weight + bias


def relu(x):
  return np.maximum(x, 0)


def reference_features(state, images_nchw, arch):
  """torchvision ``resnet(images)`` up to the average pool, ``[N, F]``."""
  state = {k: v.astype(np.float64) for k, v in state.items()}
  stage_sizes, bottleneck = LAYOUTS[arch]
  x = images_nchw.astype(np.float64)
  x = relu(batch_norm(conv2d(x, state["conv1.weight"], 2), state, "bn1"))
  x = _windows(x, 3, 2, 1, -np.inf).max(axis=(-2, -1))  # MaxPool2d(3, 2, 1)
  for stage, num_blocks in enumerate(stage_sizes):
    for index in range(num_blocks):
      stride = 2 if stage > 0 and index == 0 else 1
      p = f"layer{stage + 1}.{index}"
      if bottleneck:
        y = relu(batch_norm(conv2d(x, state[f"{p}.conv1.weight"]), state,
                            f"{p}.bn1"))
        y = relu(batch_norm(conv2d(y, state[f"{p}.conv2.weight"], stride),
                            state, f"{p}.bn2"))
        y = batch_norm(conv2d(y, state[f"{p}.conv3.weight"]), state,
                       f"{p}.bn3")
      else:
        y = relu(batch_norm(conv2d(x, state[f"{p}.conv1.weight"], stride),
                            state, f"{p}.bn1"))
        y = batch_norm(conv2d(y, state[f"{p}.conv2.weight"]), state,
                       f"{p}.bn2")
      if f"{p}.downsample.0.weight" in state:
        x = batch_norm(conv2d(x, state[f"{p}.downsample.0.weight"], stride),
                       state, f"{p}.downsample.1")
      x = relu(y + x)
  return x.mean(axis=(2, 3))


# ----------------------------------------------------------------------------
# Tests.


@pytest.fixture(scope="module")
def resnet18_file(tmp_path_factory):
  state = torchvision_state_dict("resnet18")
  path = tmp_path_factory.mktemp("weights") / "resnet18.safetensors"
  safetensors.numpy.save_file(state, str(path))
  return state, path


def _images_nchw(batch, height, width, seed=0):
  return np.random.default_rng(seed).normal(
      size=(batch, 3, height, width)).astype(np.float32)


def _assert_features_close(got, want):
  scale = np.max(np.abs(want))
  assert scale > 0.1  # Not a degenerate all-zero comparison.
  max_diff = np.max(np.abs(np.asarray(got, np.float64) - want))
  assert max_diff <= 1e-5 * scale, (max_diff, scale)


def test_resnet18_file_in_embedding_net_matches_numpy_reference(resnet18_file):
  state, path = resnet18_file
  net = models.EmbeddingNet(backbone=models.get_backbone("resnet18"),
                            embed_dim=8)
  # Non-square, even sizes: a "SAME"-padding or NCHW/NHWC mix-up shows.
  images_nchw = _images_nchw(2, 64, 48)
  images = jnp.asarray(images_nchw.transpose(0, 2, 3, 1))  # NCHW -> NHWC
  variables = jax.eval_shape(
      lambda x: net.init(jax.random.key(0), x, train=False), images)
  variables = jax.tree.map(lambda s: jnp.ones(s.shape, s.dtype), variables)

  loaded = pretrained.load_backbone_weights(variables, path, arch="resnet18")

  # The heads are untouched, the backbone replaced, and all float32.
  np.testing.assert_array_equal(loaded["params"]["embedding"]["kernel"],
                                variables["params"]["embedding"]["kernel"])
  np.testing.assert_array_equal(
      loaded["params"]["backbone"]["conv1"]["kernel"],
      state["conv1.weight"].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(
      loaded["batch_stats"]["backbone"]["layer2_0"]["downsample_bn"]["var"],
      state["layer2.0.downsample.1.running_var"])
  assert {x.dtype for x in jax.tree.leaves(loaded)} == {jnp.dtype("float32")}

  features = jax.jit(lambda v, x: net.apply(
      v, x, train=False, method=lambda m, x, train: m.backbone(x, train=train)
  ))(loaded, images)
  _assert_features_close(features,
                         reference_features(state, images_nchw, "resnet18"))


def test_resnet50_conversion_matches_numpy_reference():
  state = torchvision_state_dict("resnet50", seed=1)
  images_nchw = _images_nchw(1, 32, 32, seed=1)
  variables = pretrained.convert_torch_resnet(state, "resnet50")
  features = jax.jit(lambda v, x: resnet.ResNet50().apply(v, x, train=False))(
      variables, jnp.asarray(images_nchw.transpose(0, 2, 3, 1)))
  _assert_features_close(features,
                         reference_features(state, images_nchw, "resnet50"))


def test_fc_and_num_batches_tracked_are_optional():
  state = {k: v for k, v in torchvision_state_dict("resnet18").items()
           if not k.startswith("fc.") and "num_batches_tracked" not in k}
  variables = pretrained.convert_torch_resnet(state, "resnet18")
  assert "fc" not in variables["params"]


def test_missing_file_names_the_path(tmp_path):
  path = tmp_path / "nope.safetensors"
  with pytest.raises(FileNotFoundError, match="nope.safetensors"):
    pretrained.load_backbone_weights({}, path, arch="resnet18")


def test_missing_keys_are_listed():
  state = torchvision_state_dict("resnet18")
  del state["layer2.1.bn2.running_var"], state["layer3.0.conv1.weight"]
  with pytest.raises(ValueError, match="2 missing: layer2.1.bn2.running_var, "
                     "layer3.0.conv1.weight"):
    pretrained.convert_torch_resnet(state, "resnet18")


def test_unexpected_keys_are_listed():
  state = torchvision_state_dict("resnet18")
  state["layer1.0.se.fc1.weight"] = np.zeros((4, 64, 1, 1), np.float32)
  with pytest.raises(ValueError, match="1 unexpected: layer1.0.se.fc1.weight"):
    pretrained.convert_torch_resnet(state, "resnet18")


def test_wrong_shape_names_key_and_both_shapes():
  state = torchvision_state_dict("resnet18")
  state["layer1.0.conv2.weight"] = np.zeros((64, 64, 1, 1), np.float32)
  with pytest.raises(ValueError, match=r"layer1\.0\.conv2\.weight: file has "
                     r"\(64, 64, 1, 1\), resnet18 needs \(64, 64, 3, 3\)"):
    pretrained.convert_torch_resnet(state, "resnet18")


def test_weights_of_another_arch_are_named():
  state = torchvision_state_dict("resnet18")
  with pytest.raises(ValueError, match="weights are a resnet18, not a resnet50"):
    pretrained.convert_torch_resnet(state, "resnet50")
  with pytest.raises(ValueError, match="unknown arch 'resnet34'"):
    pretrained.convert_torch_resnet(state, "resnet34")


def _embedding_net_shapes(backbone, channels=3):
  net = models.EmbeddingNet(backbone=models.get_backbone(backbone),
                            embed_dim=4)
  images = jax.ShapeDtypeStruct((1, 32, 32, channels), jnp.float32)
  return jax.eval_shape(
      lambda x: net.init(jax.random.key(0), x, train=False), images)


def test_model_of_another_arch_is_a_clear_error(resnet18_file):
  _, path = resnet18_file
  with pytest.raises(ValueError, match="backbone is not a resnet18"):
    pretrained.load_backbone_weights(_embedding_net_shapes("resnet50"), path,
                                     arch="resnet18")


def test_grayscale_model_is_a_clear_error(resnet18_file):
  _, path = resnet18_file
  with pytest.raises(ValueError, match=r"conv1/kernel: model \(7, 7, 1, 64\), "
                     r"resnet18 weights \(7, 7, 3, 64\)"):
    pretrained.load_backbone_weights(_embedding_net_shapes("resnet18", 1),
                                     path, arch="resnet18")


def test_variables_without_a_backbone_are_a_clear_error(resnet18_file):
  _, path = resnet18_file
  variables = {"params": {"encoder": {}}, "batch_stats": {}}
  with pytest.raises(ValueError, match="has no backbone 'backbone'"):
    pretrained.load_backbone_weights(variables, path, arch="resnet18")


# ----------------------------------------------------------------------------
# The benchmark recipes, end to end: config -> weights -> training loop.


@pytest.mark.parametrize("dataset", ["cub", "cars196", "sop"])
@pytest.mark.parametrize("recipe", ["paper", "strong"])
def test_recipes_load_and_follow_the_paper(dataset, recipe):
  from nngk_jax import train
  root = configs.CONFIG_DIR
  config = configs.load_config(root / f"{dataset}.py", recipe)
  assert config.dataset == dataset
  if recipe == "paper":  # methods.md section 1, the authors' code
    assert (config.model.backbone, config.model.embed_dim) == ("resnet18", None)
    assert (config.nngk.k, config.nngk.sigma) == (200, 10.0)
    assert (config.nngk.refresh_every, config.batch_size) == (5, 32)
    assert (config.optimizer.learning_rate, config.num_epochs) == (1e-5, 30)
    assert config.data.pipeline.normalization == "unit"
  else:
    assert config.model.backbone == "resnet50"
  with pytest.raises(ValueError, match="unknown recipe"):
    configs.load_config(root / f"{dataset}.py", "fast")


def test_missing_weights_file_stops_with_instructions(tiny_config, tmp_path):
  from nngk_jax import train
  config = tiny_config(**{"model.backbone": "resnet18"})
  config.model.pretrained = str(tmp_path / "resnet18.safetensors")
  with pytest.raises(FileNotFoundError, match="docs/pretrained.md"):
    train.train_and_evaluate(config, tmp_path / "run")


@pytest.mark.slow
def test_paper_recipe_trains_from_pretrained_weights(resnet18_file, fake_tfds,
                                                     tmp_path):
  """The paper recipe, shrunk to 32 px and 1 epoch, on fake CUB data."""
  from nngk_jax import train
  state_dict, path = resnet18_file
  config = configs.load_config(configs.CONFIG_DIR / "cub.py", "paper")
  config.model.pretrained = str(path)
  config.data.check_counts = False
  config.data.pipeline.update({"resize": 36, "crop": 32, "num_threads": 2})
  config.nngk.k = 3
  config.nngk.graph_backend = "exact"
  config.batch_size = 4
  config.num_epochs = 1
  config.eval_batch_size = 8
  config.progress = False
  config.nmi = False
  with fake_tfds("cub"):
    ds = datalib.load_dataset("cub", **config.data)
    _, _, state = train.init_run(config, ds)
    loaded = statelib.load_pretrained(state, config)
    np.testing.assert_allclose(
        loaded.params["backbone"]["conv1"]["kernel"],
        state_dict["conv1.weight"].transpose(2, 3, 1, 0), rtol=1e-6)
    np.testing.assert_allclose(
        loaded.batch_stats["backbone"]["bn1"]["mean"],
        state_dict["bn1.running_mean"], rtol=1e-6)
    assert loaded.bank.centres.shape == (len(ds.train), 512)  # no head: 512-d
    np.testing.assert_array_equal(loaded.params["bank"]["log_weights"],
                                  state.params["bank"]["log_weights"])
    metrics = train.train_and_evaluate(config, tmp_path)
    _, _, trained = train.load_trained(tmp_path)
  assert 0 <= metrics["recall@1"] <= 1
  # Frozen batch norm (the authors' network stays in eval mode): training
  # leaves the running statistics as loaded, while the weights move.
  np.testing.assert_allclose(trained.batch_stats["backbone"]["bn1"]["mean"],
                             state_dict["bn1.running_mean"], rtol=1e-6)
  assert not np.allclose(trained.params["backbone"]["conv1"]["kernel"],
                         state_dict["conv1.weight"].transpose(2, 3, 1, 0))

"""Tests of the ResNet-18/50 backbones: shapes, sizes, pooling, BatchNorm."""

from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nngk_jax import models
from nngk_jax import resnet

# torchvision's parameter counts (model.parameters(), so without BatchNorm
# running statistics) minus its fc layer (512 * 1000 + 1000 and
# 2048 * 1000 + 1000).
TORCHVISION_PARAMS = {"resnet18": 11_689_512 - 513_000,
                      "resnet50": 25_557_032 - 2_049_000}
FEATURES = {"resnet18": 512, "resnet50": 2048}


def _init_shapes(net, image_size=32):
  images = jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32)
  return jax.eval_shape(
      lambda x: net.init(jax.random.key(0), x, train=False), images)


def _images(batch, size, seed=0):
  return jax.random.normal(jax.random.key(seed), (batch, size, size, 3))


def _random_variables(net, seed=0):
  """Variables of ``net`` filled by numpy: skips ``init``'s slow CPU compile."""
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name = path[-1].key
    if name == "kernel":
      fan_in = np.prod(leaf.shape[:-1])
      return rng.normal(0, np.sqrt(2 / fan_in), leaf.shape).astype(np.float32)
    if name == "var":
      return rng.uniform(0.5, 1.5, leaf.shape).astype(np.float32)
    if name == "scale":
      return (1 + 0.1 * rng.normal(size=leaf.shape)).astype(np.float32)
    return (0.1 * rng.normal(size=leaf.shape)).astype(np.float32)

  return jax.tree_util.tree_map_with_path(fill, _init_shapes(net))


@pytest.fixture(scope="module")
def resnet18_and_variables():
  net = resnet.ResNet18()
  return net, _random_variables(net)


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_parameter_count_equals_torchvision_without_fc(arch):
  variables = _init_shapes(models.get_backbone(arch))
  count = sum(leaf.size for leaf in jax.tree.leaves(variables["params"]))
  assert count == TORCHVISION_PARAMS[arch]


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_feature_map_sizes_at_224_are_torchvision_s(arch):
  net = models.get_backbone(arch)
  variables = _init_shapes(net)
  images = jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32)
  _, state = jax.eval_shape(
      lambda v, x: net.apply(v, x, train=False, capture_intermediates=True),
      variables, images)
  width = FEATURES[arch] // 8  # of layer1
  for stage, size in zip(range(1, 5), (56, 28, 14, 7)):
    # The first block of a stage sets the stage's size and width.
    out = state["intermediates"][f"layer{stage}_0"]["__call__"][0]
    assert out.shape == (1, size, size, width * 2**(stage - 1))


def test_resnet18_features_shape_and_finite(resnet18_and_variables):
  net, variables = resnet18_and_variables
  features = jax.jit(lambda v, x: net.apply(v, x, train=False))(
      variables, _images(2, 32))
  assert features.shape == (2, 512)
  assert features.dtype == jnp.float32
  assert np.all(np.isfinite(features))


def test_resnet50_features_shape_at_64x64():
  net = resnet.ResNet50()
  images = _images(2, 64)
  variables = _random_variables(net)
  features = jax.jit(lambda v, x: net.apply(v, x, train=False))(
      variables, images)
  assert features.shape == (2, 2048)
  assert np.all(np.isfinite(features)) and np.all(features >= 0)
  # The bottleneck's layout: 1x1 reduce, 3x3 with the stride, 1x1 expand,
  # and a projection in layer1_0 already (64 -> 256 channels).
  block = variables["params"]["layer2_0"]
  assert block["conv1"]["kernel"].shape == (1, 1, 256, 128)
  assert block["conv2"]["kernel"].shape == (3, 3, 128, 128)
  assert block["conv3"]["kernel"].shape == (1, 1, 128, 512)
  assert block["downsample_conv"]["kernel"].shape == (1, 1, 256, 512)
  assert "downsample_conv" in variables["params"]["layer1_0"]


def test_pooling_options_pool_the_last_feature_map(resnet18_and_variables):
  _, variables = resnet18_and_variables
  images = _images(2, 64, seed=1)
  outputs, state = resnet.ResNet18().apply(
      variables, images, train=False, capture_intermediates=True)
  feature_map = state["intermediates"]["layer4_1"]["__call__"][0]
  assert feature_map.shape == (2, 2, 2, 512)
  pooled = {p: resnet.ResNet18(pooling=p).apply(variables, images, train=False)
            for p in resnet.POOLINGS}
  np.testing.assert_allclose(outputs, pooled["avg"])
  np.testing.assert_allclose(pooled["avg"], feature_map.mean(axis=(1, 2)),
                             rtol=1e-6)
  np.testing.assert_allclose(pooled["max"], feature_map.max(axis=(1, 2)))
  np.testing.assert_allclose(pooled["avg+max"], pooled["avg"] + pooled["max"],
                             rtol=1e-6)


def test_unknown_pooling_is_a_clear_error(resnet18_and_variables):
  _, variables = resnet18_and_variables
  with pytest.raises(ValueError, match="pooling must be one of"):
    resnet.ResNet18(pooling="mean").apply(variables, _images(1, 32),
                                          train=False)


def test_nchw_looking_input_of_wrong_rank_is_a_clear_error():
  with pytest.raises(ValueError, match="NHWC"):
    resnet.ResNet18().init(jax.random.key(0), jnp.zeros((32, 32, 3)),
                           train=False)


def test_train_mode_updates_batch_stats_unless_frozen(resnet18_and_variables):
  _, variables = resnet18_and_variables
  images = _images(4, 32, seed=2)

  def stats_change(net):
    features, updates = jax.jit(lambda v, x: net.apply(
        v, x, train=True, mutable=["batch_stats"]))(variables, images)
    before = jax.tree.leaves(variables["batch_stats"])
    after = jax.tree.leaves(updates["batch_stats"])
    assert len(before) == len(after) == 2 * 20  # 20 BatchNorms in ResNet-18
    return features, max(float(jnp.max(jnp.abs(a - b)))
                         for a, b in zip(before, after))

  _, change = stats_change(resnet.ResNet18())
  assert change > 1e-3
  frozen = resnet.ResNet18(frozen_bn=True)
  features, change = stats_change(frozen)
  assert change == 0.0
  # Frozen BatchNorm in train mode computes what eval mode computes.
  # (Jitted and eager, so equal up to float32 rounding.)
  eval_features = frozen.apply(variables, images, train=False)
  np.testing.assert_allclose(features, eval_features,
                             atol=1e-5 * float(jnp.max(eval_features)))


def test_bfloat16_computation_keeps_float32_params(resnet18_and_variables):
  _, variables = resnet18_and_variables
  images = _images(2, 32, seed=3)
  net = resnet.ResNet18(dtype=jnp.bfloat16)
  assert {leaf.dtype for leaf in jax.tree.leaves(_init_shapes(net))} == {
      jnp.dtype(jnp.float32)}
  features, state = net.apply(variables, images, train=False,
                              capture_intermediates=True)
  assert state["intermediates"]["layer1_0"]["__call__"][0].dtype == jnp.bfloat16
  assert features.dtype == jnp.float32 and features.shape == (2, 512)
  want = resnet.ResNet18().apply(variables, images, train=False)
  scale = float(jnp.max(jnp.abs(want)))
  assert float(jnp.max(jnp.abs(features - want))) < 0.1 * scale


def test_registered_backbones_work_inside_embedding_net():
  backbone = models.get_backbone("resnet18", pooling="avg+max", frozen_bn=True)
  assert isinstance(backbone, resnet.ResNet)
  assert backbone.pooling == "avg+max" and backbone.frozen_bn
  assert models.get_backbone("resnet50").block is resnet.Bottleneck
  net = models.EmbeddingNet(backbone=backbone, embed_dim=16, num_classes=3)
  images = _images(2, 32, seed=4)
  # The one real init of this file (the others fill eval_shape's shapes, to
  # save the seconds XLA:CPU takes to compile the initialisers; the "rbg"
  # random generator compiles faster than the default threefry).
  key = jax.random.key(0, impl="rbg")
  variables = jax.jit(lambda x: net.init(key, x, train=False))(images)
  embeddings, logits = net.apply(variables, images, train=False)
  assert embeddings.shape == (2, 16) and logits.shape == (2, 3)
  params = traverse_util.flatten_dict(variables["params"], sep="/")
  assert "backbone/layer4_1/conv2/kernel" in params
  assert "backbone/layer1_0/downsample_conv/kernel" not in params
  assert params["embedding/kernel"].shape == (512, 16)
  # torchvision's initialisation: kaiming normal, fan_out, BatchNorm 1 and 0.
  kernel = params["backbone/layer4_1/conv2/kernel"]
  np.testing.assert_allclose(np.std(kernel), np.sqrt(2 / (9 * 512)), rtol=0.02)
  assert np.all(params["backbone/bn1/scale"] == 1)
  assert np.all(params["backbone/bn1/bias"] == 0)

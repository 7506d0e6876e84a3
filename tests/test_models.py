"""Tests of the small backbones' building blocks (nngk_jax.models)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nngk_jax import models


@pytest.mark.parametrize("shape", [(2, 8, 8, 3), (1, 7, 5, 2), (3, 2, 2, 1)])
@pytest.mark.parametrize("kind", ["max", "avg"])
def test_pool_2x2_equals_flax_pooling_value_and_gradient(shape, kind):
  """Same values as flax's reduce_window pooling (odd edges dropped) and,
  for inputs without ties, the same gradient."""
  x = jnp.asarray(np.random.default_rng(0).normal(size=shape), jnp.float32)
  flax_pool = nn.max_pool if kind == "max" else nn.avg_pool
  want_fn = lambda v: flax_pool(v, (2, 2), strides=(2, 2))
  got_fn = lambda v: models.pool_2x2(v, kind)
  np.testing.assert_allclose(got_fn(x), want_fn(x), rtol=1e-6)
  cotangent = jnp.asarray(
      np.random.default_rng(1).normal(size=want_fn(x).shape), jnp.float32)
  want = jax.grad(lambda v: jnp.sum(want_fn(v) * cotangent))(x)
  got = jax.grad(lambda v: jnp.sum(got_fn(v) * cotangent))(x)
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


def test_pool_2x2_refuses_an_unknown_kind():
  with pytest.raises(ValueError, match="pooling must be 'max' or 'avg'"):
    models.pool_2x2(jnp.zeros((1, 2, 2, 1)), "min")


def test_conv4_on_8x8_digits_skips_pooling_at_one_pixel():
  net = models.ConvNet(channels=(4, 4, 4, 4, 4))
  x = jnp.zeros((2, 8, 8, 1))
  variables = net.init(jax.random.key(0), x, train=False)
  assert net.apply(variables, x, train=False).shape == (2, 4)

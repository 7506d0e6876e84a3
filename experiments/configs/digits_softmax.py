"""Kept for command lines that name this path: the config lives in
``nngk_jax/configs/digits_softmax.py`` (shipped with the package)."""

from nngk_jax.configs.digits_softmax import get_config  # noqa: F401

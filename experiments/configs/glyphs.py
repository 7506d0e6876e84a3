"""Kept for command lines that name this path: the config lives in
``nngk_jax/configs/glyphs.py`` (shipped with the package)."""

from nngk_jax.configs.glyphs import get_config  # noqa: F401

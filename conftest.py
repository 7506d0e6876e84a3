"""Loaded by pytest before it collects anything (tests/conftest.py holds the
fixtures).

``nngk_jax.data`` is imported here, once, the ordinary way. With
``--import-mode=importlib`` pytest imports a module named on the command line
(``pytest nngk_jax/data/splits.py``, for its doctests) by running its file
after importing its package, unless the module is already in ``sys.modules``.
The package's ``__init__`` has imported it already, so there would be two
``nngk_jax.data.splits`` modules, with two ``DataError`` classes that
``pytest.raises`` tells apart.
"""

import nngk_jax.data  # noqa: F401  pylint: disable=unused-import

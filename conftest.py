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


# --------------------------------------------------------------------------
# JAX's persistent compilation cache, shared by the test session's processes:
# xdist's workers and the processes tests start (command lines, notebooks,
# multi-process runs), which inherit its environment. Many tests compile the
# same programs (a tiny config's train step, its evaluation); a program
# compiled by one process is read back by the others. The cache lives in a
# temporary directory removed when the session ends; a JAX_COMPILATION_CACHE_DIR
# set by the caller is used as it is (and kept).
_JAX_CACHE_ENV = "JAX_COMPILATION_CACHE_DIR"
_MIN_COMPILE_ENV = "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"


def pytest_configure(config):
  import os
  import tempfile
  import jax
  if not os.environ.get(_JAX_CACHE_ENV):
    # The first process (xdist's controller, or the only one) makes it.
    path = tempfile.mkdtemp(prefix="nngk_jax_test_jax_cache_")
    config._nngk_jax_cache = path  # pylint: disable=protected-access
    os.environ[_JAX_CACHE_ENV] = path
  os.environ.setdefault(_MIN_COMPILE_ENV, "0.2")
  jax.config.update("jax_compilation_cache_dir", os.environ[_JAX_CACHE_ENV])
  jax.config.update("jax_persistent_cache_min_compile_time_secs",
                    float(os.environ[_MIN_COMPILE_ENV]))
  # One CPU device in the test processes themselves (not the processes they
  # start). The training command line splits the CPU into one device per core
  # when JAX has not started yet (parallel.split_cpu): a test calling it in
  # this process first would otherwise give every later test of the process
  # several devices. The split is tested in child processes
  # (test_parallel.py, test_train.py's kill -9 test).
  if jax.config.jax_num_cpu_devices < 0:
    jax.config.update("jax_num_cpu_devices", 1)


def pytest_unconfigure(config):
  import shutil
  path = getattr(config, "_nngk_jax_cache", None)
  if path:
    shutil.rmtree(path, ignore_errors=True)

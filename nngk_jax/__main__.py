"""``python -m nngk_jax``: the training command line, as ``python -m
nngk_jax.train``.

It is also the main module every command line of the package runs under
(:func:`nngk_jax.cli.run_program`). A process started with ``spawn`` (the
input pipeline's workers, :class:`nngk_jax.data.pipeline.LoaderOptions`)
imports its parent's main module again before its first task, unless that
module is a package's ``__main__``. Under ``python -m nngk_jax.train`` that
import was the whole trainer, for a worker that needs only the pipeline.
Nothing is defined here, so nothing a worker unpickles can live here.
"""

import importlib
import sys

if __name__ == "__main__":
  # PROGRAM: the module whose main() runs, passed by cli.run_program.
  sys.exit(importlib.import_module(
      globals().get("PROGRAM", "nngk_jax.cli")).main())

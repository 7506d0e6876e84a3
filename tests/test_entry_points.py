"""The command lines' main module: spawned workers do not import it again.

``cli.run_program`` runs a command line's ``main()`` under the light
``nngk_jax.__main__``. A process started with ``spawn`` (the input
pipeline's workers) imports its parent's main module again unless that is a
package's ``__main__``; under ``python -m nngk_jax.train`` the main module
was the whole trainer. Here a stand-in entry module imports a marker module
at its top, as the trainer imports JAX, Flax and Orbax, and spawns one
worker; the marker records each process that imports it.
"""

import pathlib
import subprocess
import sys
import textwrap

import pytest

ROOT = str(pathlib.Path(__file__).resolve().parents[1])

ENTRY = textwrap.dedent("""
    import multiprocessing
    import sys

    import heavy_marker  # what the trainer's imports stand for
    import worker_task

    def main():
      context = multiprocessing.get_context("spawn")
      process = context.Process(target=worker_task.run)
      process.start()
      process.join()
      assert process.exitcode == 0, process.exitcode
      print("argv", *sys.argv[1:])
      return 3

    if __name__ == "__main__":
      if sys.argv[1] == "light":
        from nngk_jax import cli
        cli.run_program("probe_entry")
      sys.exit(main())
    """)

HEAVY_MARKER = textwrap.dedent("""
    import os
    with open(os.environ["MARKER_FILE"], "a") as f:
      f.write(f"{os.getpid()}\\n")
    """)

WORKER_TASK = textwrap.dedent("""
    import os

    def run():
      with open(os.environ["MARKER_FILE"] + ".workers", "a") as f:
        f.write(f"{os.getpid()}\\n")
    """)


@pytest.mark.parametrize("mode", ["light", "plain"])
def test_spawned_worker_imports_the_entry_module_only_without_run_program(
    tmp_path, mode):
  for name, text in [("probe_entry.py", ENTRY), ("heavy_marker.py", HEAVY_MARKER),
                     ("worker_task.py", WORKER_TASK)]:
    (tmp_path / name).write_text(text)
  marker = tmp_path / "imports.txt"
  result = subprocess.run(
      [sys.executable, "-m", "probe_entry", mode, "--flag", "x"],
      cwd=tmp_path, capture_output=True, text=True, timeout=300,
      env={"PATH": "", "PYTHONPATH": f"{tmp_path}:{ROOT}",
           "MARKER_FILE": str(marker), "JAX_PLATFORMS": "cpu"})
  # run_program passes main()'s status and the arguments through.
  assert result.returncode == 3, result.stderr
  assert f"argv {mode} --flag x" in result.stdout
  importers = marker.read_text().split()
  workers = (tmp_path / "imports.txt.workers").read_text().split()
  assert len(workers) == 1 and importers[0] != workers[0]  # parent first
  if mode == "light":  # the parent alone imported the entry module's imports
    assert importers == importers[:1]
  else:  # the worker ran the entry module again, as spawn does
    assert importers[1:] == workers


@pytest.mark.parametrize("module, usage", [
    ("nngk_jax", "python -m nngk_jax.train"),  # the package: training
    ("nngk_jax.cli", "python -m nngk_jax.train"),
    ("nngk_jax.search", "python -m nngk_jax.search")])
def test_each_command_line_runs_through_run_program(module, usage):
  result = subprocess.run([sys.executable, "-m", module, "--help"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr
  assert f"usage: {usage}" in result.stdout

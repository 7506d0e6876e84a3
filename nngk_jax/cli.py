"""The command line: ``python -m nngk_jax.train`` (what ``make train`` runs).

A thin layer over :func:`nngk_jax.train.train_and_evaluate`: pick a config
file (``--config``, or the dataset's own in ``nngk_jax/configs``), apply
``a.b=value`` overrides, train, print the final metrics as JSON. Every
error is one line on stderr, ``error: <kind>: <what> (<how to fix>)``, and
a non-zero exit status (2: the dataset is not there; 1: anything else;
unreadable image files: that line, then one line per file);
``--verbose`` shows the traceback instead. Ctrl-C or SIGTERM stops
training at the next step boundary with a checkpoint, prints where and the
command that resumes, and exits with 130 or 143
(:mod:`nngk_jax.interrupts`); a second Ctrl-C exits at once.

Several processes (one per host, docs/distributed.md): ``--coordinator
HOST:PORT --num-processes N --process-id I`` (or ``JAX_COORDINATOR_ADDRESS``,
``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID``; or ``--distributed`` to let JAX
detect a SLURM or Open MPI job) start ``jax.distributed`` before any other
JAX work (:func:`nngk_jax.parallel.initialize_distributed`); every process
runs the same command with the same ``--workdir``.
"""

from __future__ import annotations

import argparse
import json
import runpy
import shlex
import signal
import sys
from typing import NoReturn

from nngk_jax import checks
from nngk_jax import configs
from nngk_jax import data as datalib
from nngk_jax import interrupts
from nngk_jax import parallel
from nngk_jax import train
from nngk_jax import workdir as workdirlib

__all__ = ["main", "one_line", "run_program"]

# Errors the user caused and can fix from the message alone; anything else
# also says how to see the traceback.
USER_ERRORS = (ValueError, OSError, checks.TrainingDivergedError,
               workdirlib.WorkdirBusyError)


def one_line(error: BaseException) -> str:
  """``"<kind>: <message>"`` on one line (long messages are cut).

  Examples:
    >>> one_line(ValueError("bad k\\nsecond line"))
    'ValueError: bad k second line'
    >>> one_line(RuntimeError("orbax says no"))
    'RuntimeError: orbax says no (rerun with --verbose for the traceback)'
  """
  text = " ".join(str(error).split())
  if len(text) > 600:
    text = text[:600] + " ..."
  line = f"{type(error).__name__}: {text}"
  if not isinstance(error, USER_ERRORS):
    line += " (rerun with --verbose for the traceback)"
  return line


def run_program(module: str) -> NoReturn:
  """Runs ``module.main()`` as the program and exits with its status.

  For the ``if __name__ == "__main__":`` block of a command-line module
  (``python -m nngk_jax.train``, ``nngk_jax.cli``, ``nngk_jax.search``):
  ``main()`` runs with the light :mod:`nngk_jax.__main__` as the main
  module. A worker process started with ``spawn`` imports its parent's main
  module again, unless it is a package's ``__main__``; without this, each
  input-pipeline worker of ``python -m nngk_jax.train`` imported the whole
  trainer (2.3-2.5 s of CPU and 305 MiB per worker, against 0.6-0.7 s and
  157 MiB for the pipeline it uses; docs/benchmarks.md). ``module`` is
  imported under its own name, so what it defines pickles by that name.

  Args:
    module: the module whose ``main() -> int`` to run, e.g. ``"nngk_jax.cli"``.
  """
  runpy.run_module("nngk_jax.__main__", init_globals={"PROGRAM": module},
                   run_name="__main__", alter_sys=True)
  raise AssertionError("nngk_jax.__main__ returned without exiting")


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
      prog="python -m nngk_jax.train",
      description="Train an NNGK (or baseline) embedding network.")
  parser.add_argument("--config", help="Python config file (get_config())")
  parser.add_argument("--dataset", help="dataset name: glyphs, digits, "
                      "folder:PATH, cub, cars196, sop")
  parser.add_argument("--recipe", help="recipe of the config file, e.g. "
                      "'paper' or 'strong' for the benchmarks")
  parser.add_argument("--workdir", required=True,
                      help="output and checkpoint directory; rerun to resume")
  parser.add_argument("--verbose", action="store_true",
                      help="show the traceback of an error")
  parser.add_argument("--coordinator", help="several processes: HOST:PORT of "
                      "process 0's coordinator (or JAX_COORDINATOR_ADDRESS)")
  parser.add_argument("--num-processes", type=int, help="several processes: "
                      "how many (or JAX_NUM_PROCESSES)")
  parser.add_argument("--process-id", type=int, help="several processes: this "
                      "one's id, 0..N-1 (or JAX_PROCESS_ID)")
  parser.add_argument("--distributed", action="store_true",
                      help="several processes, detected by JAX (SLURM, Open "
                      "MPI) when the three above are not given")
  parser.add_argument("overrides", nargs="*", help="config overrides a.b=value")
  if argv is None:
    argv = sys.argv[1:]
  args = parser.parse_intermixed_args(argv)
  try:
    distributed = parallel.initialize_distributed(
        args.coordinator, args.num_processes, args.process_id,
        auto_detect=args.distributed)
    if args.dataset is not None:  # a registered name, never a file path
      datalib.check_dataset_name(args.dataset)
    config_path = args.config or configs.config_for_dataset(
        args.dataset or "glyphs")
    config = configs.load_config(config_path, args.recipe or None)
    if args.dataset:
      config.dataset = args.dataset
    configs.apply_overrides(config, args.overrides)
    cpu_devices = (config.get("mesh") or {}).get("cpu_devices")
    if not distributed or cpu_devices is not None:
      # Before any JAX work: one device per core (a CPU run's mesh).
      parallel.split_cpu(cpu_devices, config.batch_size)
    metrics = train.train_and_evaluate(config, args.workdir)
  except interrupts.TrainingInterrupted as error:
    if args.verbose:
      raise
    command = shlex.join(["python", "-m", "nngk_jax.train", *argv])
    print(f"stopped: {error}\nresume with: {command}", file=sys.stderr)
    return error.exit_code
  except KeyboardInterrupt as error:  # a second signal: no new checkpoint
    if args.verbose:
      raise
    print("stopped at once; the newest checkpoint in the work directory is "
          "kept. Rerun the same command to resume.", file=sys.stderr)
    return getattr(error, "exit_code", interrupts.exit_code(signal.SIGINT))
  except datalib.DatasetNotAvailableError as error:
    if args.verbose:
      raise
    print(f"error: {error}", file=sys.stderr)
    return 2
  except datalib.UnreadableImagesError as error:
    if args.verbose:
      raise
    # One line, then one line per file: every file is named.
    print(f"error: {type(error).__name__}: {error}", file=sys.stderr)
    return 1
  except Exception as error:  # pylint: disable=broad-except
    if args.verbose:
      raise
    print(f"error: {one_line(error)}", file=sys.stderr)
    return 1
  if parallel.is_primary():
    print(json.dumps(metrics, indent=2))
  return 0


if __name__ == "__main__":
  run_program("nngk_jax.cli")

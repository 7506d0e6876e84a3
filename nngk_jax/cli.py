"""The command line: ``python -m nngk_jax.train`` (what ``make train`` runs).

A thin layer over :func:`nngk_jax.train.train_and_evaluate`: pick a config
file (``--config``, or the dataset's own in ``nngk_jax/configs``), apply
``a.b=value`` overrides, train, print the final metrics as JSON. Errors the
user can act on are one line on stderr and a non-zero exit status.
"""

from __future__ import annotations

import argparse
import json
import sys

from nngk_jax import checks
from nngk_jax import configs
from nngk_jax import data as datalib
from nngk_jax import train

__all__ = ["main"]


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
  parser.add_argument("overrides", nargs="*", help="config overrides a.b=value")
  args = parser.parse_intermixed_args(argv)
  try:
    config_path = args.config or configs.config_for_dataset(
        args.dataset or "glyphs")
    config = configs.load_config(config_path, args.recipe or None)
    if args.dataset:
      config.dataset = args.dataset
    configs.apply_overrides(config, args.overrides)
    metrics = train.train_and_evaluate(config, args.workdir)
  except datalib.DatasetNotAvailableError as error:
    print(f"error: {error}", file=sys.stderr)
    return 2
  except (ValueError, FileNotFoundError,
          checks.TrainingDivergedError) as error:
    print(f"error: {type(error).__name__}: {error}", file=sys.stderr)
    return 1
  print(json.dumps(metrics, indent=2))
  return 0


if __name__ == "__main__":
  sys.exit(main())

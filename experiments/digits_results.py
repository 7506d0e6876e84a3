r"""The digits figures of docs/results.md: NNGK vs softmax vs raw pixels.

1. Metric learning (train digits 0-4, test retrieval on 5-9): NNGK and the
   softmax baseline with the same backbone, embedding size and epochs, and
   nearest neighbours on raw pixels; R@1, MAP@R, R-precision, NMI over seeds.
2. Few-shot classification (6 training images per class): accuracy of the
   NNGK kernel classifier vs the softmax head.

Run:   python experiments/digits_results.py --seeds 0 1 2 --workdir runs/results
Time:  about 6 minutes on a 2-core CPU.
Prints markdown tables (mean ± standard deviation over seeds).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from nngk_jax import configs  # noqa: E402
from nngk_jax import data as datalib  # noqa: E402
from nngk_jax import metrics as metriclib  # noqa: E402
from nngk_jax import train  # noqa: E402

METRIC_COLUMNS = ("recall@1", "map@r", "r_precision", "nmi")


def _fmt(values) -> str:
  values = np.asarray(values, float)
  return f"{values.mean():.3f} ± {values.std():.3f}"


def run_dir(config_name: str, seed: int, workdir: pathlib.Path,
            **overrides) -> pathlib.Path:
  """The work directory of one run."""
  name = "_".join([config_name.removesuffix(".py"), f"seed{seed}"]
                  + [f"{k}={v}" for k, v in overrides.items()])
  return workdir / name


def run(config_name: str, seed: int, workdir: pathlib.Path, **overrides) -> dict:
  config = configs.load_config(configs.CONFIG_DIR / config_name)
  config.seed = seed
  config.data.seed = seed
  config.progress = False
  config.eval_every = 1000  # final evaluation only
  configs.apply_overrides(config, [f"{k}={v!r}" for k, v in overrides.items()])
  return train.train_and_evaluate(
      config, run_dir(config_name, seed, workdir, **overrides))


def metric_learning_table(seeds, workdir) -> str:
  rows = {"NNGK": [], "softmax": [], "raw pixels": []}
  for seed in seeds:
    rows["NNGK"].append(run("digits.py", seed, workdir))
    rows["softmax"].append(run("digits_softmax.py", seed, workdir))
    test = datalib.load_dataset("digits", seed=seed).test
    rows["raw pixels"].append(metriclib.retrieval_metrics(
        test.images.reshape(len(test), -1), test.labels, seed=seed))
  lines = ["| method | " + " | ".join(METRIC_COLUMNS) + " |",
           "| --- |" + " --- |" * len(METRIC_COLUMNS)]
  for method, results in rows.items():
    lines.append(f"| {method} | " + " | ".join(
        _fmt([r[c] for r in results]) for c in METRIC_COLUMNS) + " |")
  return "\n".join(lines)


def few_shot_table(seeds, workdir) -> str:
  kernel, head, kernel_on_softmax = [], [], []
  for seed in seeds:
    kernel.append(run("digits_fewshot.py", seed, workdir)["kernel_accuracy"])
    soft = run("digits_fewshot.py", seed, workdir, objective="softmax")
    head.append(soft["softmax_accuracy"])
    kernel_on_softmax.append(soft["kernel_accuracy"])
  return "\n".join([
      "| classifier | test accuracy |",
      "| --- | --- |",
      f"| NNGK, kernel classifier | {_fmt(kernel)} |",
      f"| softmax, linear head | {_fmt(head)} |",
      f"| softmax embedding, kernel classifier | {_fmt(kernel_on_softmax)} |",
  ])


def ablation_table(seeds, workdir) -> str:
  """NNGK variants: K, appended same-class neighbours, learned weights."""
  variants = [
      ("K=32 (default)", {}),
      ("K=8", {"nngk.k": 8}),
      ("K=8, 4 same-class appended", {"nngk.k": 8, "nngk.num_same_class": 4}),
      ("K=32, 4 same-class appended", {"nngk.num_same_class": 4}),
      ("K=32, fixed weights", {"nngk.learn_weights": False}),
  ]
  lines = ["| NNGK variant | MAP@R | NMI | R@1 | no positive among neighbours (last rebuild) |",
           "| --- | --- | --- | --- | --- |"]
  for name, overrides in variants:
    results, missing = [], []
    for seed in seeds:
      results.append(run("digits.py", seed, workdir, **overrides))
      wd = run_dir("digits.py", seed, workdir, **overrides)
      history = [json.loads(l) for l in
                 (wd / "history.jsonl").read_text().splitlines()]
      missing.append(history[-1]["missing_positive_fraction"])
    lines.append(f"| {name} | " + " | ".join(
        _fmt([r[c] for r in results]) for c in ("map@r", "nmi", "recall@1"))
        + f" | {_fmt(missing)} |")
  return "\n".join(lines)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
  parser.add_argument("--workdir", default=str(ROOT / "runs" / "results"))
  parser.add_argument("--only", choices=["metric", "fewshot", "ablation"])
  args = parser.parse_args(argv)
  workdir = pathlib.Path(args.workdir)
  tables = {}
  if args.only in (None, "metric"):
    tables["metric"] = metric_learning_table(args.seeds, workdir)
    print("### Digits metric learning (train 0-4, test 5-9), seeds",
          args.seeds, "\n\n" + tables["metric"] + "\n", flush=True)
  if args.only in (None, "fewshot"):
    tables["fewshot"] = few_shot_table(args.seeds, workdir)
    print("### Digits few-shot classification (6 per class), seeds",
          args.seeds, "\n\n" + tables["fewshot"] + "\n", flush=True)
  if args.only in (None, "ablation"):
    tables["ablation"] = ablation_table(args.seeds, workdir)
    print("### Digits NNGK ablation (metric learning), seeds",
          args.seeds, "\n\n" + tables["ablation"] + "\n", flush=True)
  (workdir / "tables.json").write_text(json.dumps(tables, indent=2))
  return 0


if __name__ == "__main__":
  sys.exit(main())

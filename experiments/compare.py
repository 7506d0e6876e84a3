r"""Every loss, same backbone, embedding size and budget, in one table.

Trains each objective of ``nngk_jax.objectives.OBJECTIVES`` on a dataset
over several seeds and writes a markdown table (R@1/2/4/8, MAP@R, NMI,
seconds per epoch; mean ± standard deviation) and a bar chart of MAP@R.

Run:   make compare DATASET=digits     (any dataset name works)
       python experiments/compare.py --dataset digits --seeds 0 1 2 \
           --workdir runs/compare_digits
Time:  about 15 minutes for digits on a 2-core CPU (10 losses x 3 seeds).
       python experiments/compare.py --dataset glyphs --seeds 0 1 2 \
           --variant nngk_unit "objective=nngk model.normalize=True" \
           --variant proxy_anchor "objective=proxy_anchor"
           (named variants, each a set of overrides, instead of one row per
           objective: an ablation in the same table format)
Output: <workdir>/compare.md, <workdir>/<workdir name>_map_r.png; with
        --results-doc, the table replaces the "Loss comparison" section of
        that markdown file (or --section) and the chart is copied beside it.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import shutil
import sys

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from nngk_jax import configs  # noqa: E402
from nngk_jax import objectives  # noqa: E402
from nngk_jax import plotting  # noqa: E402
from nngk_jax import train  # noqa: E402

COLUMNS = ("recall@1", "recall@2", "recall@4", "recall@8", "map@r", "nmi",
           "epoch_seconds")
SECTION = "## Loss comparison"


def run_one(dataset: str, objective: str, seed: int, workdir: pathlib.Path,
            overrides: list[str], name: str | None = None,
            config_path: str | None = None) -> dict:
  """Trains one (objective, seed); returns final metrics + seconds/epoch.

  ``overrides`` are applied after ``objective`` and ``seed``, so a variant
  may set its own ``objective=...``; ``name`` names the run directory
  (default: the objective); ``config_path`` replaces the dataset's own
  config file.
  """
  config = configs.load_config(config_path or configs.config_for_dataset(dataset))
  config.dataset = dataset
  config.objective = objective
  config.seed = seed
  config.progress = False
  config.eval_every = 1000  # final evaluation only: same cost for all
  configs.apply_overrides(config, overrides)
  run_dir = workdir / f"{name or objective}_seed{seed}"
  metrics = train.train_and_evaluate(config, run_dir)
  history = [json.loads(line) for line in
             (run_dir / "history.jsonl").read_text().splitlines()]
  # Seconds per epoch, centre refresh and graph build included.
  metrics["epoch_seconds"] = float(np.median([
      r["epoch_seconds"] + r.get("refresh_seconds", 0.0)
      + r.get("graph_seconds", 0.0) for r in history]))
  return metrics


def table(results: dict[str, list[dict]], columns=COLUMNS) -> str:
  lines = ["| loss | " + " | ".join(columns) + " |",
           "| --- |" + " --- |" * len(columns)]
  for name, runs in results.items():
    cells = []
    for column in columns:
      values = np.array([r.get(column, np.nan) for r in runs], float)
      digits = 2 if column == "epoch_seconds" else 3
      cells.append(f"{values.mean():.{digits}f} ± {values.std():.{digits}f}")
    lines.append(f"| {name} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def replace_section(doc: pathlib.Path, body: str,
                    section: str = SECTION) -> None:
  """Replaces (or appends) ``section`` of a markdown file with ``body``."""
  text = doc.read_text() if doc.exists() else ""
  start = text.find(section)
  if start < 0:
    text = text.rstrip() + "\n\n" + section + "\n\n" + body + "\n"
  else:
    end = text.find("\n## ", start + len(section))
    end = len(text) if end < 0 else end + 1
    text = text[:start] + section + "\n\n" + body + "\n\n" + text[end:]
  doc.write_text(text.rstrip() + "\n")


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--dataset", default="digits")
  parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
  parser.add_argument("--objectives", nargs="+",
                      default=list(objectives.OBJECTIVES))
  parser.add_argument("--workdir")
  parser.add_argument("--config", help="config file (default: the dataset's "
                      "own, experiments/configs/<dataset>.py)")
  parser.add_argument("--columns", nargs="+", default=list(COLUMNS),
                      help="metrics in the table (e.g. kernel_accuracy "
                           "softmax_accuracy for classification)")
  parser.add_argument("--variant", nargs=2, action="append",
                      metavar=("NAME", "OVERRIDES"),
                      help="a named row: space-separated overrides on top "
                           "of the common ones (repeatable; replaces "
                           "--objectives)")
  parser.add_argument("--results-doc",
                      help="markdown file whose loss comparison section to "
                           "replace (e.g. docs/results.md)")
  parser.add_argument("--section", default=SECTION,
                      help=f"heading of that section (default {SECTION!r})")
  parser.add_argument("overrides", nargs="*", help="config overrides a.b=v")
  args = parser.parse_args(argv)
  safe = args.dataset.replace("/", "_").replace(":", "_")
  workdir = pathlib.Path(args.workdir or ROOT / "runs" / f"compare_{safe}")
  chart_name = f"{workdir.name}_map_r.png"
  rows = ([(name, "nngk", extra.split()) for name, extra in args.variant]
          if args.variant else
          [(objective, objective, []) for objective in args.objectives])
  results: dict[str, list[dict]] = {}
  for name, objective, extra in rows:
    results[name] = [run_one(args.dataset, objective, seed, workdir,
                             args.overrides + extra, name=name,
                             config_path=args.config)
                     for seed in args.seeds]
    print(f"{name}: MAP@R " + ", ".join(
        f"{r['map@r']:.3f}" for r in results[name]), flush=True)
  command = " ".join(["python experiments/compare.py"] + [
      f"'{a}'" if " " in a else a for a in (argv or sys.argv[1:])])
  variants = "".join(f"\n- `{name}`: {extra}" for name, extra in
                     (args.variant or []))
  markdown = (f"`{command}` (seeds {args.seeds}; common overrides: "
              f"{' '.join(args.overrides) or 'none'}).{variants}\n\n"
              + table(results, args.columns)
              + f"\n\n![MAP@R by row]({chart_name})")
  (workdir / "compare.md").write_text(markdown + "\n")
  names = list(results)
  chart = plotting.plot_bars(
      names, [float(np.mean([r["map@r"] for r in results[n]])) for n in names],
      [float(np.std([r["map@r"] for r in results[n]])) for n in names],
      workdir / chart_name, ylabel="MAP@R",
      title=f"{args.dataset}: MAP@R over seeds {args.seeds}")
  print(markdown)
  if args.results_doc:
    doc = pathlib.Path(args.results_doc)
    shutil.copy(chart, doc.parent / chart_name)
    replace_section(doc, markdown, args.section)
  return 0


if __name__ == "__main__":
  sys.exit(main())

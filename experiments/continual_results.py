"""Continual NNGK against its baselines on a task stream, over seeds.

Runs :func:`nngk_jax.continual.run_continual` for each method (and the
eq. 13 / memory variants with ``--variants``) and seed, keeps each result as
JSON under ``--workdir`` (a rerun skips what is there), and writes one table
and one plot (accuracy on each task as tasks arrive):

    python experiments/continual_results.py --stream split_glyphs \\
        --seeds 0 1 2 --results-doc docs/results.md     # make continual

Same backbone, kernel, optimiser and budget for every method
(``nngk_jax/configs/continual.py``); ``--set key=value`` overrides a field
of ``config.continual``.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from experiments import compare  # noqa: E402
from experiments.peer import mean_std  # noqa: E402
from experiments.peer import parse_data_options  # noqa: E402
from nngk_jax import continual  # noqa: E402
from nngk_jax import plotting  # noqa: E402
from nngk_jax.configs import continual as continual_config  # noqa: E402
from nngk_jax.data import tasks  # noqa: E402
from nngk_jax.data.splits import DatasetNotAvailableError  # noqa: E402

SECTION = "## Continual learning"
# name -> (method, config.continual overrides); --variants adds the rest.
RUNS = {
    "finetune": ("finetune", {}),
    "ewc": ("ewc", {}),
    "nngk_static": ("nngk_static", {}),
    "continual_nngk": ("continual_nngk", {}),
    "joint": ("joint", {}),
}
VARIANTS = {
    "continual_nngk, eq. 13 also on adds": (
        "continual_nngk", {"redistribute": "both"}),
    "continual_nngk, no eq. 13": ("continual_nngk", {"redistribute": "none"}),
    "continual_nngk, n_d = 0": ("continual_nngk", {"num_drop": 0}),
    # Random centres, about as many per class as continual_nngk ends with.
    "nngk_static, random centres of that size": ("nngk_static", "matched"),
}


def matched_per_class(config, stream) -> int:
  """Centres per class that Algorithm 1's bank holds at the end (about)."""
  cc = config.continual
  per_task = len(stream.task_classes[0])
  return max(1, round(cc.init_per_class + (cc.num_add - cc.num_drop)
                      / per_task))


def run_one(config, stream, name, method, overrides, seed, out_dir):
  path = out_dir / f"{name.replace(' ', '_').replace(',', '')}_seed{seed}.json"
  run_config = continual_config.for_stream(config, stream.name)
  for key, value in overrides.items():
    run_config.continual[key] = value
  settings = json.loads(run_config.to_json_best_effort())
  if path.exists():  # kept unless the settings changed since
    record = json.loads(path.read_text())
    if record.get("config") == settings:
      return record
  result = continual.run_continual(run_config, stream, method, seed=seed,
                                   progress=True)
  record = result.to_dict()
  record["name"] = name
  record["config"] = settings
  out_dir.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(record, indent=1))
  return record


def table(records: dict[str, list[dict]]) -> str:
  lines = [
      "| method | class-IL accuracy | class-IL BWT | task-IL accuracy | "
      "task-IL BWT | centres at the end | seconds |",
      "|---|---|---|---|---|---|---|",
  ]
  for name, runs in records.items():
    cell = lambda key: mean_std([r[key] for r in runs])
    lines.append(
        f"| {name} | {cell('class_avg_acc')} | {cell('class_bwt')} | "
        f"{cell('task_avg_acc')} | {cell('task_bwt')} | "
        f"{int(np.mean([r['final_bank_size'] for r in runs]))} | "
        f"{np.mean([r['seconds'] for r in runs]):.0f} |")
  return "\n".join(lines)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--stream", default="split_glyphs",
                      choices=tasks.TASK_STREAMS)
  parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
  parser.add_argument("--methods", nargs="+", default=list(RUNS),
                      choices=list(RUNS))
  parser.add_argument("--variants", action="store_true",
                      help="also the eq. 13 and n_d = 0 variants of "
                           "continual_nngk")
  parser.add_argument("--set", nargs="*", metavar="KEY=VALUE",
                      help="overrides of config.continual for every run")
  parser.add_argument("--workdir", default=str(ROOT / "runs" / "continual"))
  parser.add_argument("--results-doc")
  args = parser.parse_args(argv)
  config = continual_config.get_config()
  try:
    overrides = parse_data_options(args.set or ())
  except ValueError as error:
    raise SystemExit(f"--set: {error}") from None
  for key in overrides:
    if key not in config.continual:
      raise SystemExit(f"--set {key}: not a field of config.continual "
                       f"({', '.join(sorted(config.continual))})")
    config.continual[key] = overrides[key]
  stream_config = continual_config.for_stream(config, args.stream)
  try:
    stream = tasks.load_task_stream(args.stream, **dict(stream_config.data))
  except DatasetNotAvailableError as error:  # e.g. CIFAR not prepared
    print(f"error: {error}", file=sys.stderr)
    return 2
  runs = {name: RUNS[name] for name in args.methods}
  if args.variants:
    runs.update(VARIANTS)
  out_dir = pathlib.Path(args.workdir) / args.stream
  if args.set:
    out_dir = out_dir / "_".join(
        item.replace("=", "_").replace('"', "") for item in args.set)
  records: dict[str, list[dict]] = {}
  for name, (method, run_overrides) in runs.items():
    if run_overrides == "matched":
      run_overrides = {"static_per_class": matched_per_class(
          continual_config.for_stream(config, args.stream), stream)}
    for seed in args.seeds:
      record = run_one(config, stream, name, method, run_overrides, seed,
                       out_dir)
      records.setdefault(name, []).append(record)
      print(f"{name} seed {seed}: class-IL {record['class_avg_acc']:.3f} "
            f"task-IL {record['task_avg_acc']:.3f} bank "
            f"{record['final_bank_size']}", flush=True)
  docs = pathlib.Path(args.results_doc).parent if args.results_doc else out_dir
  heading = args.stream + (f" ({', '.join(args.set)})" if args.set else "")
  plots = {}
  tag = "_".join([args.stream, *(item.replace("=", "_").replace('"', "")
                                 for item in args.set or ())])
  for mode in ("class", "task"):
    plots[mode] = plotting.plot_continual(
        {name: np.array([r[f"{mode}_acc"] for r in runs_])
         for name, runs_ in records.items()},
        docs / f"continual_{tag}_{mode}.png",
        ylabel=f"{mode}-incremental accuracy",
        title=f"{heading}: accuracy on each task as tasks arrive")
  body = "\n".join([
      f"### {heading}",
      "",
      f"`python experiments/continual_results.py --stream {args.stream} "
      f"--seeds {' '.join(map(str, args.seeds))}"
      f"{' --variants' if args.variants else ''}"
      f"{' --set ' + ' '.join(args.set) if args.set else ''}` "
      f"({stream.num_tasks} tasks of "
      f"{len(stream.task_classes[0])} classes; mean ± std over seeds "
      f"{', '.join(map(str, args.seeds))}). Accuracy after the last task, "
      "averaged over the tasks; BWT is the mean change on earlier tasks "
      "between learning them and the end (negative: forgetting). "
      "Class-IL: the argmax over every class seen; task-IL: over the "
      "task's own classes.",
      "",
      table(records),
      "",
      f"![class-incremental]({plots['class'].name}) "
      f"![task-incremental]({plots['task'].name})",
  ])
  print(body)
  (out_dir / "continual.md").write_text(body + "\n")
  if args.results_doc:
    compare.replace_section(pathlib.Path(args.results_doc),
                            _merge_streams(pathlib.Path(args.results_doc),
                                           heading, body), SECTION)
  return 0


def _merge_streams(doc: pathlib.Path, heading: str, body: str) -> str:
  """The section's text with the subsection ``heading`` replaced or added."""
  text = doc.read_text() if doc.exists() else ""
  start = text.find(SECTION)
  if start < 0:
    return _INTRO + "\n\n" + body
  end = text.find("\n## ", start + len(SECTION))
  section = text[start + len(SECTION):len(text) if end < 0 else end].strip()
  parts = section.split("\n### ")
  intro, subsections = parts[0], {}
  for part in parts[1:]:
    subsections[part.split("\n", 1)[0].strip()] = "### " + part.strip()
  subsections[heading] = body
  return "\n\n".join([intro.strip() or _INTRO, *subsections.values()])


_INTRO = (
    "Continual NNGK (seed 002 §4, Algorithm 1; `nngk_jax/continual.py`) "
    "against naive fine-tuning (softmax, the lower bound), EWC, the NNGK "
    "network without add/drop (every training example a centre) and joint "
    "training on all tasks (the upper bound), on one backbone and budget "
    "(`nngk_jax/configs/continual.py`).")


if __name__ == "__main__":
  sys.exit(main())

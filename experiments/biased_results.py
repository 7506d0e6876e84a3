r"""The biased network against the plain network, and its early-exit trade-off.

For each dataset and seed, trains the biased network
(``nngk_jax.biased``, configs ``biased.py`` for digits and
``biased_glyphs.py`` for the glyph classification split) and the plain
network ``clf(f2(f1(x)))`` with the same modules, data and budget
(``biased.enabled=False``), then on the test split:

* sweeps the gate threshold tau: the real early exit
  (``nngk_jax.biased.EarlyExit``: f2 runs only on the rows with g <= tau),
  its accuracy, the share of inputs that skipped f2 and its wall time per
  image (median of ``--repeats`` passes, after compiling every bucket),
  beside the plain network's;
* counts FLOPs per image from XLA's cost analysis: the first stage (f1, the
  projector, the search over the stored pairs, z1 and clf(z1)) against f2
  (with the mix and clf) and the plain network.

With ``--alternatives`` it also trains the cheap alternatives of the design
choices (no auxiliary CE on clf(z2), no NNGK loss on phi, z_i storing the
gated mix, the gate's gradient reaching phi) on ``--alternative-seeds`` and
reports their accuracies and the skip share at no more than one point of
accuracy below the plain network (from the full model's outputs, which the
early exit reproduces: tests/test_biased.py).

Run:    python experiments/biased_results.py --datasets digits glyphs \
            --seeds 0 1 --alternatives --workdir runs/biased \
            --results-doc docs/results.md --figure docs/biased_tradeoff.png
        (``make biased``)
Time:   about 32 min on the 2-core CPU (digits 7 min; glyph runs ~1.5 min
        each, 14 of them).
Output: <workdir>/biased.json, <workdir>/biased.md; the tables replace the
        section "## Biased network" of --results-doc; the curve is
        --figure.
"""

from __future__ import annotations

import argparse
import functools
import json
import pathlib
import sys
import time

import jax
import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from experiments import compare  # noqa: E402
from experiments.peer import mean_std  # noqa: E402
from nngk_jax import biased  # noqa: E402
from nngk_jax import configs  # noqa: E402
from nngk_jax import data as datalib  # noqa: E402
from nngk_jax import plotting  # noqa: E402

SECTION = "## Biased network"
CONFIGS = {"digits": "biased.py", "glyphs": "biased_glyphs.py"}
# tau < 0: every input skips f2; tau = 1: none does (the full model).
TAUS = (-1.0, 0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
ALTERNATIVES = {
    "no aux CE on clf(z2)": ["biased.aux_weight=0.0"],
    "no NNGK loss on phi": ["biased.phi_weight=0.0"],
    "z_i stores the gated mix z": ["biased.stored_z='z'"],
    "gate gradient reaches phi": ["biased.gate_gradient=True"],
    "f1 = two conv blocks": ["model.split=2"],
}
BATCH = 256


def config_for(dataset: str, seed: int, overrides=()):
  config = configs.load_config(configs.CONFIG_DIR / CONFIGS[dataset])
  configs.apply_overrides(config, [f"seed={seed}", "progress=False",
                                   *overrides])
  return config


def _timed(fn, repeats: int) -> float:
  """Median seconds of ``fn()`` over ``repeats`` calls."""
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return float(np.median(times))


def plain_run(network, variables, split, repeats: int) -> dict:
  """Accuracy and ms/image of ``clf(f2(f1(x)))`` over fixed 256-row batches."""
  plain = jax.jit(functools.partial(biased.plain_forward, network))
  images = np.asarray(split.images)
  batches = list(biased._fixed_batches(images, BATCH))  # pylint: disable=protected-access

  def run():
    return [np.asarray(plain(variables, chunk))[:valid] for chunk, valid in batches]

  logits = np.concatenate(run())  # compiles
  seconds = _timed(run, repeats)
  return {"accuracy": float(np.mean(logits.argmax(-1) == split.labels)),
          "ms_per_image": 1e3 * seconds / len(images)}


def sweep(network, variables, stored, config, split, repeats: int) -> list:
  """The early exit at every tau: accuracy, skip share, ms/image."""
  options = {"k": config.biased.k, "sigma": config.biased.sigma}
  exit_ = biased.EarlyExit(network, variables, stored, batch_size=BATCH,
                           **options)
  exit_.warm_up(split.image_shape)
  images, labels = np.asarray(split.images), np.asarray(split.labels)
  rows = []
  for tau in TAUS:
    before = exit_.f2_real_rows
    logits, gate = exit_.predict(images, tau)
    real = exit_.f2_real_rows - before
    skipped = 1.0 - real / len(images)
    if not np.isclose(skipped, np.mean(gate > tau)):
      raise RuntimeError(f"f2 ran on {real} rows at tau={tau}, but "
                         f"{np.sum(gate <= tau)} have g <= tau")
    seconds = _timed(lambda t=tau: exit_.predict(images, t), repeats)
    rows.append({"tau": tau, "skip_share": skipped,
                 "accuracy": float(np.mean(logits.argmax(-1) == labels)),
                 "ms_per_image": 1e3 * seconds / len(images)})
  return rows


def measure(dataset, seed: int, repeats: int) -> dict:
  """Both networks trained and measured on one dataset and seed."""
  config = config_for(dataset, seed)
  data = datalib.load_dataset(config.dataset, **dict(config.data))
  start = time.perf_counter()
  network, state, history = biased.train(config, data)
  train_seconds = time.perf_counter() - start
  variables = {"params": state.params, "batch_stats": state.batch_stats}
  record = {"seed": seed, "biased": history[-1],
            "biased_train_seconds": train_seconds}
  record["flops"] = biased.stage_flops(
      network, variables, state.stored, data.train.image_shape,
      k=config.biased.k, sigma=config.biased.sigma)
  record["sweep"] = sweep(network, variables, state.stored, config,
                          data.test, repeats)
  outputs = biased.predict_split(network, variables, state.stored,
                                 data.test.images, config)
  plain_config = config_for(dataset, seed, ["biased.enabled=False"])
  start = time.perf_counter()
  plain_network, plain_state, _ = biased.train(plain_config, data)
  record["plain_train_seconds"] = time.perf_counter() - start
  record["plain"] = plain_run(
      plain_network, {"params": plain_state.params,
                      "batch_stats": plain_state.batch_stats},
      data.test, repeats)
  record["skip_at_1pt"] = skip_at_tolerance(
      outputs, np.asarray(data.test.labels), record["plain"]["accuracy"])
  return record


def skip_at_tolerance(outputs: dict, labels: np.ndarray, baseline: float,
                      tolerance: float = 0.01) -> float:
  """Largest skip share over ``TAUS`` with accuracy >= baseline - tolerance.

  Uses the full model's outputs: where g > tau the early exit's prediction
  is ``pred_z1``, elsewhere ``pred``. 0 when no tau qualifies.
  """
  best = 0.0
  for tau in TAUS:
    skip = outputs["gate"] > tau
    predicted = np.where(skip, outputs["pred_z1"], outputs["pred"])
    if np.mean(predicted == labels) >= baseline - tolerance:
      best = max(best, float(np.mean(skip)))
  return best


def alternative(dataset: str, seed: int, overrides, baseline: float) -> dict:
  """One design alternative: accuracies and skip share at 1 point."""
  config = config_for(dataset, seed, overrides)
  data = datalib.load_dataset(config.dataset, **dict(config.data))
  network, state, history = biased.train(config, data)
  variables = {"params": state.params, "batch_stats": state.batch_stats}
  outputs = biased.predict_split(network, variables, state.stored,
                                 data.test.images, config)
  return dict(history[-1], seed=seed, skip_at_1pt=skip_at_tolerance(
      outputs, np.asarray(data.test.labels), baseline))


def _column(runs, *keys):
  values = []
  for run in runs:
    value = run
    for key in keys:
      value = value[key]
    values.append(value)
  return values


def tables(records: dict, alternatives: dict, command: str) -> str:
  """The markdown of the section (mean ± std over seeds)."""
  lines = [f"Command: `{command}`", "",
           "Test accuracy of the plain network `clf(f2(f1(x)))` and of the "
           "biased network (full model, and each path alone), trained with "
           "the same modules, data and budget; FLOPs per image from XLA's "
           "cost analysis (first stage: f1, projector, exact search over the "
           "stored pairs, z1, clf(z1); f2: f2, the mix, clf).", "",
           "| dataset | seeds | plain | biased clf(z) | clf(z2) | clf(z1) | "
           "mean g | FLOPs first stage | FLOPs f2 | FLOPs plain |",
           "|---" * 10 + "|"]
  for dataset, runs in records.items():
    flops = runs[0]["flops"]
    lines.append(
        f"| {dataset} | {len(runs)} | "
        f"{mean_std(_column(runs, 'plain', 'accuracy'))} | "
        f"{mean_std(_column(runs, 'biased', 'accuracy'))} | "
        f"{mean_std(_column(runs, 'biased', 'accuracy_z2'))} | "
        f"{mean_std(_column(runs, 'biased', 'accuracy_z1'))} | "
        f"{mean_std(_column(runs, 'biased', 'mean_gate'), 2)} | "
        f"{flops['first_stage'] / 1e6:.2f} M | {flops['f2'] / 1e6:.2f} M | "
        f"{flops['plain'] / 1e6:.2f} M |")
  for dataset, runs in records.items():
    plain_ms = _column(runs, "plain", "ms_per_image")
    lines += ["", f"{dataset}: the early exit by tau (f2 only where g <= "
              f"tau; tau < 0 skips every input, tau = 1 none). Wall time "
              f"per image over the test split in batches of {BATCH} "
              f"(median of repeated passes; the plain network: "
              f"{mean_std(plain_ms, 3)} ms); speed-up = plain time / "
              f"early-exit time, per seed.", "",
              "| tau | skipped f2 | accuracy | plain accuracy | ms/image | "
              "speed-up vs plain |", "|---" * 6 + "|"]
    plain_accuracy = mean_std(_column(runs, "plain", "accuracy"))
    for i, tau in enumerate(TAUS):
      rows = [run["sweep"][i] for run in runs]
      speedups = [run["plain"]["ms_per_image"] / row["ms_per_image"]
                  for run, row in zip(runs, rows)]
      lines.append(
          f"| {tau:g} | {mean_std([r['skip_share'] for r in rows])} | "
          f"{mean_std([r['accuracy'] for r in rows])} | {plain_accuracy} | "
          f"{mean_std([r['ms_per_image'] for r in rows], 3)} | "
          f"{mean_std(speedups, 2)} |")
  if alternatives:
    lines += ["", "Design alternatives (each changes one option of the "
              "default): accuracies of the full model and of clf(z1), the "
              "mean test gate, and the largest skip share over the tau grid "
              "whose accuracy stays within 1 point of the plain network of "
              "the same seed.", "",
              "| dataset | variant | seeds | clf(z) | clf(z1) | mean g | "
              "skip share at -1 pt |", "|---" * 7 + "|"]
    for dataset, variants in alternatives.items():
      for name, runs in variants.items():
        lines.append(
            f"| {dataset} | {name} | {len(runs)} | "
            f"{mean_std(_column(runs, 'accuracy'))} | "
            f"{mean_std(_column(runs, 'accuracy_z1'))} | "
            f"{mean_std(_column(runs, 'mean_gate'), 2)} | "
            f"{mean_std(_column(runs, 'skip_at_1pt'), 2)} |")
  return "\n".join(lines) + "\n"


def default_alternatives(records: dict, datasets, seeds) -> dict:
  """The default config's own row of the alternatives table."""
  table = {}
  for dataset in datasets:
    runs = []
    for run in records[dataset]:
      if run["seed"] in seeds:
        runs.append(dict(run["biased"], skip_at_1pt=run["skip_at_1pt"]))
    table[dataset] = {"default": runs}
  return table


def figure(records: dict, path: pathlib.Path) -> None:
  curves = {}
  for dataset, runs in records.items():
    skip = np.array([[row["skip_share"] for row in run["sweep"]]
                     for run in runs])
    accuracy = np.array([[row["accuracy"] for row in run["sweep"]]
                         for run in runs])
    curves[dataset] = {"x": skip.mean(0), "y": accuracy.mean(0),
                       "y_spread": accuracy.std(0),
                       "baseline": float(np.mean(_column(runs, "plain",
                                                         "accuracy")))}
  plotting.plot_tradeoff(curves, path, title="Biased network: early exit "
                         f"over tau (mean ± std, {len(runs)} seeds)")


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--datasets", nargs="+", default=list(CONFIGS),
                      choices=list(CONFIGS))
  parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--alternatives", action="store_true")
  parser.add_argument("--alternative-seeds", type=int, nargs="+",
                      default=[0, 1])
  parser.add_argument("--alternatives-from",
                      help="a biased.json of an earlier run: report its "
                      "alternatives instead of training them again")
  parser.add_argument("--workdir", default=str(ROOT / "runs" / "biased"))
  parser.add_argument("--results-doc")
  parser.add_argument("--figure")
  args = parser.parse_args(argv)
  command = "python experiments/biased_results.py " + " ".join(
      argv if argv is not None else sys.argv[1:])
  root = pathlib.Path(args.workdir)
  root.mkdir(parents=True, exist_ok=True)
  records: dict = {}
  alternatives: dict = {}
  if args.alternatives_from:
    earlier = json.loads(pathlib.Path(args.alternatives_from).read_text())
    alternatives = {dataset: {name: runs for name, runs in variants.items()
                              if name != "default"}
                    for dataset, variants in earlier["alternatives"].items()
                    if dataset in args.datasets}
  for dataset in args.datasets:
    for seed in args.seeds:
      record = measure(dataset, seed, args.repeats)
      records.setdefault(dataset, []).append(record)
      print(f"{dataset} seed {seed}: plain {record['plain']['accuracy']:.3f}"
            f", biased {json.dumps(record['biased'])}", flush=True)
      (root / "biased.json").write_text(json.dumps(
          {"records": records, "alternatives": alternatives}, indent=1))
    if args.alternatives:
      for name, overrides in ALTERNATIVES.items():
        for seed in args.alternative_seeds:
          baseline = next(r["plain"]["accuracy"] for r in records[dataset]
                          if r["seed"] == seed)
          result = alternative(dataset, seed, overrides, baseline)
          alternatives.setdefault(dataset, {}).setdefault(name, []).append(
              result)
          print(f"{dataset} {name} seed {seed}: {json.dumps(result)}",
                flush=True)
          (root / "biased.json").write_text(json.dumps(
              {"records": records, "alternatives": alternatives}, indent=1))
  if args.alternatives or args.alternatives_from:
    for dataset, rows in default_alternatives(
        records, args.datasets, args.alternative_seeds).items():
      alternatives[dataset] = {**rows, **alternatives.get(dataset, {})}
  body = tables(records, alternatives, command)
  (root / "biased.md").write_text(body)
  print(body)
  if args.figure:
    figure(records, pathlib.Path(args.figure))
  if args.results_doc:
    compare.replace_section(pathlib.Path(args.results_doc), body, SECTION)
  return 0


if __name__ == "__main__":
  sys.exit(main())

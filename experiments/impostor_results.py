r"""Impostor networks, three variants, uncompressed against OPQ-compressed.

For each variant (tied, fixed, loose) and seed, trains on

* the glyph benchmark (metric learning, 600 classes: 300 train, 300 unseen
  test classes): retrieval R@1 / MAP@R of the test embeddings, and R@1 of
  each test query against the *compressed* test gallery (itself excluded);
* the glyph few-shot split (classification, 1,000 classes, 6 training
  images each): kernel accuracy of the test images against the
  variant's centres (tied: the training split embedded by the trained
  network; fixed and loose: the impostors), uncompressed and compressed;

then times, per query, the compressed search + kernel vote against the
backbone's forward pass. Budgets are bytes per centre of OPQ codes
(``nngk_jax.compress``); "float32" is the uncompressed bank.

Run:   python experiments/impostor_results.py --seeds 0 1 2 \
           --workdir runs/impostor --results-doc docs/results.md
Time:  about 2.5 min per training run on the 2-core CPU (18 runs), plus
       OPQ training (about 10 s per budget and run at 10 iterations).
Output: <workdir>/impostor.json, <workdir>/impostor.md (tables, mean ± std
        over seeds); with --results-doc the tables replace the section
        "## Impostor networks" of that file.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from experiments import compare  # noqa: E402
from experiments.peer import mean_std  # noqa: E402
from nngk_jax import compress as compresslib  # noqa: E402
from nngk_jax import configs  # noqa: E402
from nngk_jax import evaluation  # noqa: E402
from nngk_jax import objectives  # noqa: E402
from nngk_jax import train  # noqa: E402
from nngk_jax.metrics import retrieval  # noqa: E402

VARIANTS = ("tied", "fixed", "loose")
SECTION = "## Impostor networks"
SETTINGS = {
    # sigma 0.3: the glyph recipe's when docs/results.md's tables were
    # measured (its default has since moved to 0.25).
    "glyphs": ("glyphs.py", ["data.num_classes=600", "nngk.sigma=0.3"]),
    "fewshot": ("glyphs_fewshot.py", []),
}


def config_for(setting: str, variant: str, seed: int, epochs: int | None):
  """The run's config: the setting's recipe with the impostor objective."""
  name, overrides = SETTINGS[setting]
  config = configs.load_config(configs.CONFIG_DIR / name)
  configs.apply_overrides(config, overrides + [
      "objective=impostor", f"impostor.variant={variant}", f"seed={seed}",
      "progress=False"])
  if epochs:
    config.num_epochs = epochs
  return config


def _compressed_r1(test_emb: np.ndarray, labels: np.ndarray, budget: int,
                   **options) -> float:
  """R@1 of each test query against the compressed test gallery (self out)."""
  bank = compresslib.compress(test_emb, labels, bytes_per_centre=budget,
                              **options)
  indices, _ = bank.search(test_emb, 2)
  first = np.where(indices[:, 0] == np.arange(len(labels)), indices[:, 1],
                   indices[:, 0])
  return float(np.mean(labels[first] == labels))


def measure(workdir: pathlib.Path, budgets, setting: str,
            **options) -> dict:
  """Uncompressed and compressed figures of one trained run."""
  config, dataset, state = train.load_trained(workdir)
  bank = objectives.get_objective(config.objective).make_bank(
      config, dataset.train.labels, config.model.embed_dim)
  geometry = objectives.evaluation_geometry(config)
  start = time.perf_counter()
  test_emb, _ = evaluation.embed_split(state, dataset.test, 256)
  forward_ms = 1e3 * (time.perf_counter() - start) / len(test_emb)
  test_emb = evaluation.in_geometry(test_emb, geometry)
  labels = np.asarray(dataset.test.labels)
  record = {"forward_ms_per_image": forward_ms, "budgets": {}}
  if setting == "glyphs":
    metrics = retrieval.retrieval_metrics(test_emb, labels, recall_ks=(1,),
                                          nmi=False)
    record["float32"] = {"recall@1": metrics["recall@1"],
                         "map@r": metrics["map@r"],
                         "bytes": int(test_emb.nbytes)}
    for budget in budgets:
      record["budgets"][budget] = {
          "recall@1": _compressed_r1(test_emb, labels, budget, **options),
          "bytes": budget * len(labels)}
    return record
  centres = bank.evaluation_centres(state.bank)
  if centres is None:
    centres, _ = evaluation.embed_split(state, dataset.train, 256)
  centres = evaluation.in_geometry(centres, geometry)
  num_classes = dataset.train.num_classes
  predicted = evaluation.kernel_classify(
      centres, dataset.train.labels, test_emb, num_classes=num_classes,
      k=config.classifier_k, sigma=config.nngk.sigma)
  record["float32"] = {"accuracy": float(np.mean(predicted == labels)),
                       "bytes": int(centres.nbytes)}
  for budget in budgets:
    codes = compresslib.compress(centres, dataset.train.labels,
                                 bytes_per_centre=budget, **options)
    start = time.perf_counter()
    predicted = codes.classify(test_emb, num_classes=num_classes,
                               k=config.classifier_k, sigma=config.nngk.sigma)
    query_ms = 1e3 * (time.perf_counter() - start) / len(test_emb)
    record["budgets"][budget] = {
        "accuracy": float(np.mean(predicted == labels)),
        "bytes": int(codes.codes.nbytes), "total_bytes": int(codes.nbytes),
        "query_ms": query_ms}
  return record


def tables(records: dict, budgets) -> str:
  """Markdown tables (mean ± std over seeds) of ``records[setting][variant]``."""
  lines = []
  if "glyphs" in records:
    lines += ["Glyph benchmark (600 classes, metric learning, sigma 0.3): "
              "retrieval on the 300 unseen test classes; compressed columns "
              "search the OPQ-coded test gallery.", "",
              "| variant | MAP@R | R@1 float32 | "
              + " | ".join(f"R@1 {b} B" for b in budgets) + " |",
              "|---" * (3 + len(budgets)) + "|"]
    for variant, runs in records["glyphs"].items():
      cells = [mean_std([r["float32"]["map@r"] for r in runs]),
               mean_std([r["float32"]["recall@1"] for r in runs])]
      cells += [mean_std([r["budgets"][b]["recall@1"] for r in runs])
                for b in budgets]
      lines.append(f"| {variant} | " + " | ".join(cells) + " |")
    lines.append("")
  if "fewshot" in records:
    lines += ["Few-shot split (1,000 classes, 6 training images each): "
              "kernel accuracy against the variant's centres; ms/query of "
              "the compressed vote beside the backbone's forward pass.", "",
              "| variant | float32 | " + " | ".join(f"{b} B" for b in budgets)
              + " | vote ms/query (16 B) | forward ms/image |",
              "|---" * (4 + len(budgets)) + "|"]
    for variant, runs in records["fewshot"].items():
      cells = [mean_std([r["float32"]["accuracy"] for r in runs])]
      cells += [mean_std([r["budgets"][b]["accuracy"] for r in runs])
                for b in budgets]
      vote = [r["budgets"][b]["query_ms"] for r in runs for b in budgets
              if b == 16]
      cells += [mean_std(vote, 3) if vote else "—",
                mean_std([r["forward_ms_per_image"] for r in runs], 3)]
      lines.append(f"| {variant} | " + " | ".join(cells) + " |")
    run = next(iter(records["fewshot"].values()))[0]
    lines += ["", "Bank bytes (few-shot, 6,000 centres): float32 "
              f"{run['float32']['bytes']:,}; codes "
              + ", ".join(f"{b} B: {run['budgets'][b]['bytes']:,}"
                          for b in budgets)
              + " (plus the rotation and codebooks, "
              f"{run['budgets'][budgets[-1]]['total_bytes'] - run['budgets'][budgets[-1]]['bytes']:,}"
              f" bytes at {budgets[-1]} B)."]
  return "\n".join(lines) + "\n"


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
  parser.add_argument("--variants", nargs="+", default=list(VARIANTS))
  parser.add_argument("--settings", nargs="+", default=list(SETTINGS))
  parser.add_argument("--budgets", type=int, nargs="+", default=[8, 16, 32])
  parser.add_argument("--opq-iterations", type=int, default=10,
                      help="OPQ rotation updates (faiss's default 50 costs "
                      "5x the time for little)")
  parser.add_argument("--epochs", type=int, help="override num_epochs")
  parser.add_argument("--workdir", default=str(ROOT / "runs" / "impostor"))
  parser.add_argument("--results-doc")
  args = parser.parse_args(argv)
  root = pathlib.Path(args.workdir)
  records: dict = {}
  for setting in args.settings:
    for variant in args.variants:
      for seed in args.seeds:
        workdir = root / setting / f"{variant}_seed{seed}"
        train.train_and_evaluate(
            config_for(setting, variant, seed, args.epochs), workdir)
        record = measure(workdir, args.budgets, setting,
                         opq_iterations=args.opq_iterations)
        record["seed"] = seed
        records.setdefault(setting, {}).setdefault(variant, []).append(record)
        print(f"{setting} {variant} seed {seed}: "
              f"{json.dumps(record['float32'])}", flush=True)
        (root / "impostor.json").write_text(json.dumps(records, indent=1))
  body = tables(records, args.budgets)
  (root / "impostor.md").write_text(body)
  print(body)
  if args.results_doc:
    compare.replace_section(pathlib.Path(args.results_doc), body, SECTION)
  return 0


if __name__ == "__main__":
  sys.exit(main())

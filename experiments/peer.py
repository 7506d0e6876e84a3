r"""pytorch-metric-learning beside nngk-jax: same backbone, losses and budget.

For each loss and seed, trains the ``conv4`` backbone with the loss's
pytorch-metric-learning (PML) implementation (``experiments/peer_torch.py``,
run by ``.venv-peer/bin/python`` in its own virtual environment: torch, no
JAX) and with nngk-jax's own (``nngk_jax.train.train_and_evaluate``), on the
same images, embedding size, epochs, batch size, optimiser (Adam), sampler
(shuffled batches in the same order on both sides) and seeds; then writes one
markdown table of MAP@R, R@1 and NMI (mean ± std over seeds) and seconds per
run for both, and checks that the two libraries' metric code agree on the
same embeddings.

Losses: ``proxy_anchor``, ``multi_similarity`` (PML only: nngk-jax has no
multi-similarity loss), ``triplet``, ``nca``, ``normalized_softmax`` and
``nngk`` (nngk-jax only).

Evaluation geometry. Every PML loss here normalises the embeddings inside
its distance (cosine similarity, or ``LpDistance(normalize_embeddings=True)``
for triplet and NCA), so PML's side is scored on L2-normalised embeddings
("cosine"). nngk-jax trains and scores each loss as its recipe
(``experiments/configs/glyphs.py``) ships it, in the objective's geometry
(``nngk_jax.objectives.evaluation_geometry``); since that recipe
L2-normalises the embeddings (NNGK needs it: ``docs/results.md``), every
nngk-jax row is cosine too. ``--ours-normalize all`` forces normalisation
whatever the recipe says. The table's geometry column says which was used.

Metric agreement: the test embeddings of one PML run are scored again by
``nngk_jax.metrics.retrieval_metrics`` and compared with PML's
``AccuracyCalculator`` numbers from the same run: R@1, MAP@R and
R-precision must agree to 1e-6 (both are exact k-NN rankings); NMI is
reported only (the k-means differ: faiss in PML, scikit-learn here).

Run:    make peer                       (glyphs, 3 seeds, 10 epochs)
        python experiments/peer.py --dataset glyphs --seeds 0 1 2 \
            --epochs 10 --out docs/peer.md
        (partial runs: --skip-ours / --skip-peer; results of earlier runs
        with the same settings are kept in the JSON and the table)
Time:   the default is 30 runs (5 PML losses and 5 nngk-jax ones, 3 seeds)
        of 10 epochs over 8,000 glyphs: about 2 to 3 hours on a 2-core CPU
        (a run is 4-6 minutes: ~25-35 s per epoch each side; estimated from
        1-epoch runs).
Output: docs/peer.md (the table, the agreement check) and docs/peer.json
        (every run) beside it; per-run files under --workdir (runs/peer).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import shlex
import shutil
import subprocess
import sys
import time
from typing import Any, Sequence

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from nngk_jax import configs  # noqa: E402
from nngk_jax import data as datalib  # noqa: E402
from nngk_jax import parallel  # noqa: E402
from nngk_jax import train  # noqa: E402

PEER_LOSSES = ("proxy_anchor", "multi_similarity", "triplet", "nca",
               "normalized_softmax")
OUR_LOSSES = ("proxy_anchor", "triplet", "nca", "normalized_softmax", "nngk")
DEFAULT_LOSSES = PEER_LOSSES + ("nngk",)
NORMALIZE_CHOICES = ("objective", "all")
BACKBONE = "conv4"
CONV4_CHANNELS = (32, 64, 128, 256)  # = peer_torch.CHANNELS
# nngk-jax's optimizer.lr_multipliers pattern of the proxies' parameter path.
PROXY_PATTERN = "^proxies$"
PEER_PYTHON = ROOT / ".venv-peer" / "bin" / "python"
PEER_SCRIPT = ROOT / "experiments" / "peer_torch.py"
PML, OURS = "pml", "nngk-jax"
SIDES = (PML, OURS)
# Our metric names -> PML AccuracyCalculator's.
PML_METRIC_NAMES = {"recall@1": "precision_at_1",
                    "map@r": "mean_average_precision_at_r",
                    "r_precision": "r_precision",
                    "nmi": "NMI"}
# Metrics that must agree between the two libraries on the same embeddings.
AGREEMENT_METRICS = ("recall@1", "map@r", "r_precision")
AGREEMENT_TOLERANCE = 1e-6
DASH = "—"


class PeerEnvironmentMissing(FileNotFoundError):
  """The PML virtual environment (.venv-peer) is not installed."""


# ----------------------------------------------------------------------------
# Pure pieces (tested in tests/test_peer.py).


def check_peer_python(path: str | os.PathLike = PEER_PYTHON) -> pathlib.Path:
  """``path`` if it is an executable, else a clear error naming the fix."""
  path = pathlib.Path(path)
  if not (path.is_file() and os.access(path, os.X_OK)):
    raise PeerEnvironmentMissing(
        f"{path} not found: the pytorch-metric-learning side runs in its own "
        f"virtual environment. Create it with `make peer` (it installs "
        f"requirements-peer.txt into .venv-peer, then runs this script), or "
        f"run only nngk-jax's side with --skip-peer.")
  return path


def mean_std(values: Sequence[float | None], digits: int = 3) -> str:
  """``"mean ± std"`` over the finite values (numpy std, as make compare).

  One value is shown alone; none (or only NaN / None) is a dash.

  Examples:
    >>> mean_std([0.5, 0.7])
    '0.600 ± 0.100'
    >>> mean_std([0.5]), mean_std([])
    ('0.500', '—')
  """
  finite = [float(v) for v in values
            if v is not None and math.isfinite(float(v))]
  if not finite:
    return DASH
  if len(finite) == 1:
    return f"{finite[0]:.{digits}f}"
  array = np.asarray(finite)
  return f"{array.mean():.{digits}f} ± {array.std():.{digits}f}"


def export_npz(dataset: datalib.Dataset, path: str | os.PathLike) -> pathlib.Path:
  """Writes the dataset's splits as the npz ``peer_torch.py`` reads.

  Arrays ``train_images``, ``test_images`` (NHWC float32 in [-1, 1]),
  ``train_labels``, ``test_labels`` (int64). Needs in-memory splits.
  """
  arrays = {}
  for name in ("train", "test"):
    split = getattr(dataset, name)
    if not isinstance(split, datalib.Split):
      raise ValueError(
          f"dataset {dataset.name!r}: make peer needs in-memory image arrays "
          f"(digits, glyphs, folder:PATH without a pipeline); its {name} "
          f"split is a {type(split).__name__}")
    arrays[f"{name}_images"] = np.ascontiguousarray(split.images, np.float32)
    arrays[f"{name}_labels"] = np.asarray(split.labels, np.int64)
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  np.savez(path, **arrays)
  return path


def load_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """The arrays of an :func:`export_npz` file."""
  with np.load(path) as data:
    return {k: data[k] for k in data.files}


def base_config_path() -> pathlib.Path:
  """experiments/configs/glyphs.py where it exists, else digits.py."""
  glyphs = configs.CONFIG_DIR / "glyphs.py"
  return glyphs if glyphs.exists() else configs.CONFIG_DIR / "digits.py"


def data_options(dataset: str,
                 extra: dict[str, Any] | None = None) -> dict[str, Any]:
  """The loader options of ``dataset``'s own config (``make train``'s).

  A ``folder:PATH`` is split by class (train and test classes disjoint), as
  the metric-learning protocol wants. ``extra`` (``--data-option``) is
  applied last, for both sides.
  """
  options = dict(configs.load_config(configs.config_for_dataset(dataset)).data)
  if dataset.partition(":")[0] == "folder":
    options["class_disjoint"] = True
  options.update(extra or {})
  return options


def parse_data_options(items: Sequence[str]) -> dict[str, Any]:
  """``["num_classes=600"]`` -> ``{"num_classes": 600}`` (Python literals).

  Examples:
    >>> parse_data_options(["num_classes=600", "seed=1"])
    {'num_classes': 600, 'seed': 1}
  """
  import ast  # pylint: disable=g-import-not-at-top
  options = {}
  for item in items:
    key, eq, raw = item.partition("=")
    if not eq or not key:
      raise ValueError(f"--data-option {item!r} is not of the form key=value")
    try:
      options[key] = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
      options[key] = raw
  return options


def our_config(dataset: str, loss: str, seed: int, *, epochs: int,
               batch_size: int, embed_dim: int, lr: float,
               proxy_lr_multiplier: float, ours_normalize: str = "objective",
               overrides: Sequence[str] = (),
               data_extra: dict[str, Any] | None = None):
  """nngk-jax's config for one (loss, seed), matched to the PML run."""
  if loss not in OUR_LOSSES:
    raise ValueError(f"nngk-jax has no twin of {loss!r}; ours: {OUR_LOSSES}")
  if ours_normalize not in NORMALIZE_CHOICES:
    raise ValueError(f"ours_normalize must be one of {NORMALIZE_CHOICES}")
  import ml_collections  # pylint: disable=g-import-not-at-top
  config = configs.load_config(base_config_path())
  config.dataset = dataset
  config.data = ml_collections.ConfigDict(data_options(dataset, data_extra))
  config.objective = loss
  config.seed = seed
  config.num_epochs = epochs
  config.batch_size = batch_size
  config.sampler = "random"
  config.model.backbone = BACKBONE
  config.model.backbone_kwargs = ml_collections.ConfigDict(
      {"channels": CONV4_CHANNELS, "pooling": "max"})
  config.model.embed_dim = embed_dim
  if ours_normalize == "all":
    config.model.normalize = True
  # Proxies (proxy_anchor's, normalized_softmax's class weights) at
  # lr * multiplier, as PML's side trains its loss parameters.
  config.optimizer = ml_collections.ConfigDict(
      {"name": "adam", "learning_rate": lr,
       "lr_multipliers": {PROXY_PATTERN: float(proxy_lr_multiplier)}})
  config.progress = False
  config.eval_every = 10**6  # final evaluation only, as on PML's side
  config.nmi = True
  config.eval_search = "exact"
  configs.apply_overrides(config, list(overrides))
  return config


def pml_command(peer_python: str | os.PathLike, npz: str | os.PathLike,
                loss: str, seed: int, *, epochs: int, batch_size: int,
                embed_dim: int, lr: float, proxy_lr_multiplier: float,
                out: str | os.PathLike,
                save_embeddings: str | os.PathLike | None = None) -> list[str]:
  """The command line of one PML run."""
  command = [str(peer_python), str(PEER_SCRIPT), "--data", str(npz),
             "--loss", loss, "--seed", str(seed), "--epochs", str(epochs),
             "--batch-size", str(batch_size), "--embed-dim", str(embed_dim),
             "--lr", repr(lr), "--proxy-lr-multiplier",
             repr(proxy_lr_multiplier), "--out", str(out)]
  if save_embeddings:
    command += ["--save-embeddings", str(save_embeddings)]
  return command


def pml_record(result: dict, wall_seconds: float) -> dict:
  """A PML result JSON as a run record (our metric names)."""
  metrics = {ours: result["metrics"][theirs]
             for ours, theirs in PML_METRIC_NAMES.items()}
  return {"side": PML, "loss": result["loss"], "seed": result["seed"],
          "metrics": metrics, "wall_seconds": wall_seconds,
          "train_seconds": result["train_seconds"],
          "images_per_second": result["images_per_second"],
          "eval_seconds": result["eval_seconds"],
          "geometry": result["geometry"],
          "num_parameters": result.get("num_parameters"),
          "detail": result}


def table(records: Sequence[dict], losses: Sequence[str]) -> str:
  """The markdown table: per loss, each side's metrics over seeds."""
  columns = [("map@r", "MAP@R"), ("recall@1", "R@1"), ("nmi", "NMI")]
  header = ["loss"]
  for _, title in columns:
    header += [f"{title} PML", f"{title} nngk-jax"]
  header += ["train s PML", "train s nngk-jax", "geometry PML / nngk-jax"]
  lines = ["| " + " | ".join(header) + " |",
           "| --- |" + " ---: |" * (len(header) - 2) + " --- |"]
  for loss in losses:
    runs = {side: [r for r in records if r["side"] == side
                   and r["loss"] == loss] for side in SIDES}
    cells = [loss]
    for key, _ in columns:
      for side in SIDES:
        cells.append(mean_std([r["metrics"].get(key) for r in runs[side]]))
    for side in SIDES:
      cells.append(mean_std([r["train_seconds"] for r in runs[side]], 1))
    geometry = [sorted({r["geometry"] for r in runs[side]}) for side in SIDES]
    cells.append(" / ".join("+".join(g) if g else DASH for g in geometry))
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def agreement(pml_metrics: dict[str, float],
              our_metrics: dict[str, float]) -> dict:
  """Both libraries' numbers on the same embeddings, and their differences.

  ``pml_metrics`` in our names (see :data:`PML_METRIC_NAMES`).
  """
  rows = {}
  for key in PML_METRIC_NAMES:
    a, b = float(pml_metrics[key]), float(our_metrics[key])
    rows[key] = {"pml": a, "nngk_jax": b, "abs_diff": abs(a - b)}
  max_diff = max(rows[k]["abs_diff"] for k in AGREEMENT_METRICS)
  return {"metrics": rows, "max_abs_diff": max_diff,
          "tolerance": AGREEMENT_TOLERANCE,
          "agree": bool(max_diff <= AGREEMENT_TOLERANCE)}


def agreement_table(check: dict) -> str:
  names = {"recall@1": "R@1 (PML precision_at_1)",
           "map@r": "MAP@R", "r_precision": "R-precision",
           "nmi": "NMI (k-means: faiss vs scikit-learn; not asserted)"}
  lines = ["| metric | PML AccuracyCalculator | nngk_jax.metrics | abs. diff |",
           "| --- | ---: | ---: | ---: |"]
  for key, row in check["metrics"].items():
    lines.append(f"| {names[key]} | {row['pml']:.6f} | {row['nngk_jax']:.6f} |"
                 f" {row['abs_diff']:.1e} |")
  return "\n".join(lines)


def merge_records(previous: Sequence[dict], new: Sequence[dict]) -> list[dict]:
  """``new`` plus the ``previous`` runs it does not redo (side, loss, seed)."""
  done = {(r["side"], r["loss"], r["seed"]) for r in new}
  return [r for r in previous
          if (r["side"], r["loss"], r["seed"]) not in done] + list(new)


# ----------------------------------------------------------------------------
# Running.


def run_pml(peer_python, npz, loss, seed, settings, run_dir: pathlib.Path,
            save_embeddings: bool) -> dict:
  out = run_dir / f"{loss}_seed{seed}.json"
  embeddings = (run_dir / f"{loss}_seed{seed}_test_embeddings.npz"
                if save_embeddings else None)
  command = pml_command(
      peer_python, npz, loss, seed, epochs=settings["epochs"],
      batch_size=settings["batch_size"], embed_dim=settings["embed_dim"],
      lr=settings["lr"], proxy_lr_multiplier=settings["proxy_lr_multiplier"],
      out=out, save_embeddings=embeddings)
  out.unlink(missing_ok=True)
  start = time.perf_counter()
  process = subprocess.run(command, check=False)
  wall = time.perf_counter() - start
  if process.returncode != 0 or not out.exists():
    raise RuntimeError(f"PML run failed (exit {process.returncode}): "
                       f"{shlex.join(command)}")
  record = pml_record(json.loads(out.read_text()), wall)
  if embeddings is not None:
    record["embeddings_path"] = str(embeddings)
  return record


def run_ours(dataset, loss, seed, settings, run_dir: pathlib.Path,
             overrides) -> dict:
  config = our_config(
      dataset, loss, seed, epochs=settings["epochs"],
      batch_size=settings["batch_size"], embed_dim=settings["embed_dim"],
      lr=settings["lr"], proxy_lr_multiplier=settings["proxy_lr_multiplier"],
      ours_normalize=settings["ours_normalize"], overrides=overrides,
      data_extra=settings.get("data_options"))
  workdir = run_dir / f"{loss}_seed{seed}"
  shutil.rmtree(workdir, ignore_errors=True)  # a fresh run: honest timings
  start = time.perf_counter()
  metrics = train.train_and_evaluate(config, workdir)
  wall = time.perf_counter() - start
  history = [json.loads(line) for line in
             (workdir / "history.jsonl").read_text().splitlines() if line]
  train_seconds = float(sum(
      r["epoch_seconds"] + r.get("refresh_seconds", 0.0)
      + r.get("graph_seconds", 0.0) for r in history))
  return {"side": OURS, "loss": loss, "seed": seed,
          "metrics": {k: metrics.get(k) for k in PML_METRIC_NAMES},
          "wall_seconds": wall, "train_seconds": train_seconds,
          "images_per_second": float(np.nanmedian(
              [r.get("images_per_second", np.nan) for r in history])),
          "geometry": metrics.get("geometry", our_geometry(config)),
          "lr_multipliers": dict(config.optimizer.lr_multipliers),
          "detail": metrics}


def our_geometry(config) -> str:
  """nngk-jax's evaluation geometry of ``config`` ("cosine" or "euclidean")."""
  from nngk_jax import objectives  # pylint: disable=g-import-not-at-top
  if hasattr(objectives, "evaluation_geometry"):
    return objectives.evaluation_geometry(config)
  return "cosine" if config.model.get("normalize", False) else "euclidean"


def our_num_parameters(dataset: datalib.Dataset, embed_dim: int) -> int | None:
  """Parameters of nngk-jax's conv4 + head (no proxies), None without conv4."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from nngk_jax import models  # pylint: disable=g-import-not-at-top
  if BACKBONE not in models.BACKBONES:
    return None
  net = models.EmbeddingNet(
      backbone=models.get_backbone(BACKBONE, channels=CONV4_CHANNELS),
      embed_dim=embed_dim)
  shapes = jax.eval_shape(
      lambda: net.init(jax.random.key(0),
                       jnp.zeros((1,) + dataset.train.image_shape),
                       train=False))
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(shapes["params"])))


def score_with_nngk_jax(embeddings_path: str | os.PathLike) -> dict:
  from nngk_jax import metrics as metriclib  # pylint: disable=g-import-not-at-top
  arrays = load_npz(embeddings_path)
  return metriclib.retrieval_metrics(arrays["embeddings"], arrays["labels"],
                                     recall_ks=(1,), nmi=True, seed=0)


def format_run(record: dict) -> str:
  m = record["metrics"]
  return (f"{record['side']} {record['loss']} seed {record['seed']}: "
          f"MAP@R {m['map@r']:.4f} R@1 {m['recall@1']:.4f} "
          f"NMI {m['nmi']:.4f} ({record['wall_seconds']:.1f} s, "
          f"{record['images_per_second']:.0f} img/s)")


def write_outputs(out: pathlib.Path, header: str, records, losses,
                  check: dict | None, payload: dict) -> None:
  parts = [header, table(records, losses)]
  parts.append("### Metric agreement")
  if check is None:
    parts.append("Not run (no PML run with saved test embeddings).")
  else:
    verdict = ("agree" if check["agree"] else "**DISAGREE**")
    parts.append(
        f"The test embeddings of PML run `{check['run']}` ({check['geometry']}"
        f", {check['num_embeddings']} embeddings) scored by both libraries. "
        f"R@1, MAP@R and R-precision {verdict} to "
        f"{check['tolerance']:g} (max abs. diff {check['max_abs_diff']:.1e})."
        f"\n\n" + agreement_table(check))
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text("\n\n".join(parts).rstrip() + "\n")
  out.with_suffix(".json").write_text(
      json.dumps({**payload, "runs": list(records), "agreement": check},
                 indent=2, default=float) + "\n")


def header_text(settings: dict, seeds, commands: Sequence[str],
                num_parameters: dict) -> str:
  mult = settings["proxy_lr_multiplier"]
  params = ", ".join(f"{side} {n:,}" if n else f"{side} n/a"
                     for side, n in num_parameters.items())
  return "\n".join([
      "## pytorch-metric-learning beside nngk-jax",
      "",
      f"Dataset `{settings['dataset']}` ({settings['num_train']} train images"
      f" of {settings['num_train_classes']} classes, {settings['num_test']} "
      f"test images of {settings['num_test_classes']} classes, "
      f"{settings['image_shape']}); backbone `{BACKBONE}` + linear head to "
      f"{settings['embed_dim']}-d (parameters without proxies: {params}); "
      f"{settings['epochs']} epoch{'' if settings['epochs'] == 1 else 's'}, "
      f"batch {settings['batch_size']}, "
      f"shuffled batches (same order both sides); Adam lr {settings['lr']:g}"
      f", proxies (proxy_anchor, normalized_softmax) at {mult:g}x that "
      f"(PML: a second parameter group; nngk-jax: optimizer.lr_multipliers)"
      f"; seeds {list(seeds)}."
      + (f" nngk-jax config overrides: {' '.join(settings['ours_overrides'])}."
         if settings["ours_overrides"] else ""),
      "",
      ("Command: " if len(commands) == 1 else "Commands: ")
      + "; ".join(f"`{c}`" for c in commands),
      "",
      f"PML {settings['versions'].get('pytorch_metric_learning', '?')} "
      f"(torch {settings['versions'].get('torch', '?')}) vs nngk-jax. "
      "Metrics: mean ± std over seeds (numpy std). train s: seconds of "
      "training per run (all epochs; nngk-jax's include its JIT compilation "
      "and, for nngk, the centre refresh and neighbour graph); the wall time "
      "of each run, evaluation and start-up included, is in the JSON. "
      f"{DASH}: no such loss on that side "
      "(multi-similarity is PML only, nngk is nngk-jax only) or not run. "
      "Geometry of evaluation: cosine (L2-normalised embeddings) or "
      "euclidean (raw); PML's losses all normalise internally; nngk-jax: "
      f"--ours-normalize {settings['ours_normalize']}.",
  ])


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--dataset", default="glyphs")
  parser.add_argument("--losses", nargs="+", default=list(DEFAULT_LOSSES),
                      choices=DEFAULT_LOSSES)
  parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
  parser.add_argument("--epochs", type=int, default=10)
  parser.add_argument("--batch-size", type=int, default=64)
  parser.add_argument("--embed-dim", type=int, default=128)
  parser.add_argument("--lr", type=float, default=1e-3)
  parser.add_argument("--proxy-lr-multiplier", type=float, default=100.0)
  parser.add_argument("--ours-normalize", choices=NORMALIZE_CHOICES,
                      default="objective",
                      help="nngk-jax: score each loss in its objective's "
                           "geometry (default), or L2-normalise every "
                           "embedding in the network (all), as PML does")
  parser.add_argument("--out", default=str(ROOT / "docs" / "peer.md"),
                      help="markdown table; the JSON of all runs goes beside")
  parser.add_argument("--workdir", default=str(ROOT / "runs" / "peer"))
  parser.add_argument("--data-option", action="append", default=[],
                      metavar="KEY=VALUE",
                      help="dataset loader option for both sides, e.g. "
                           "num_classes=600 (repeatable)")
  parser.add_argument("--skip-ours", action="store_true")
  parser.add_argument("--skip-peer", action="store_true")
  parser.add_argument("--peer-python", default=str(PEER_PYTHON),
                      help="python of the PML environment")
  parser.add_argument("overrides", nargs="*",
                      help="nngk-jax config overrides a.b=v (our side only)")
  args = parser.parse_args(argv)
  # Our side trains as `python -m nngk_jax.train` does: on a CPU, one JAX
  # device per core (PML's torch uses every core too).
  parallel.split_cpu(None, args.batch_size)
  command = shlex.join(["python", "experiments/peer.py",
                        *(argv if argv is not None else sys.argv[1:])])

  peer_python = None if args.skip_peer else check_peer_python(args.peer_python)
  out = pathlib.Path(args.out)
  safe = args.dataset.replace("/", "_").replace(":", "_")
  workdir = pathlib.Path(args.workdir) / safe

  data_extra = parse_data_options(args.data_option)
  dataset = datalib.load_dataset(args.dataset,
                                 **data_options(args.dataset, data_extra))
  npz = export_npz(dataset, workdir / "data.npz")
  settings = {
      "dataset": args.dataset, "backbone": BACKBONE,
      "epochs": args.epochs, "batch_size": args.batch_size,
      "embed_dim": args.embed_dim, "lr": args.lr, "optimizer": "adam",
      "proxy_lr_multiplier": args.proxy_lr_multiplier,
      "ours_normalize": args.ours_normalize,
      "num_train": len(dataset.train), "num_test": len(dataset.test),
      "num_train_classes": dataset.train.num_classes,
      "num_test_classes": dataset.test.num_classes,
      "image_shape": list(dataset.train.image_shape),
      "protocol": dataset.protocol,
      "ours_overrides": list(args.overrides),
      "data_options": data_extra}
  comparable = ("dataset", "epochs", "batch_size", "embed_dim", "lr",
                "proxy_lr_multiplier", "ours_normalize", "num_train",
                "num_test", "ours_overrides", "data_options")
  previous: list[dict] = []
  commands = [command]
  check = None  # the metric agreement: kept from before until a new PML run
  json_path = out.with_suffix(".json")
  if json_path.exists():
    old = json.loads(json_path.read_text())
    if all(old.get("settings", {}).get(k) == settings[k] for k in comparable):
      previous = old.get("runs", [])
      check = old.get("agreement")
      commands = [c for c in old.get("commands", []) if c != command]
      commands.append(command)
  plan = []
  for loss in args.losses:
    if not args.skip_peer and loss in PEER_LOSSES:
      plan += [(PML, loss, seed) for seed in args.seeds]
    if not args.skip_ours and loss in OUR_LOSSES:
      plan += [(OURS, loss, seed) for seed in args.seeds]
  if not plan and len(commands) > 1:
    commands.remove(command)  # nothing run: only rewrites the outputs
  versions = {}
  num_parameters = {PML: None, OURS: our_num_parameters(dataset,
                                                        args.embed_dim)}
  records: list[dict] = []
  checked = False
  for old_record in previous:
    if old_record["side"] == PML:
      versions = old_record["detail"].get("versions", versions)
      num_parameters[PML] = old_record.get("num_parameters")

  def finish():
    merged = merge_records(previous, records)
    # Runs kept from earlier invocations (same settings) are shown too.
    losses = [loss for loss in DEFAULT_LOSSES if loss in args.losses
              or any(r["loss"] == loss for r in merged)]
    seeds = sorted(set(args.seeds) | {r["seed"] for r in merged})
    header = header_text({**settings, "versions": versions}, seeds,
                         commands, num_parameters)
    write_outputs(out, header, merged, losses, check,
                  {"settings": settings, "commands": commands,
                   "versions": versions, "num_parameters": num_parameters})

  print(f"make peer: {len(plan)} runs on {args.dataset} "
        f"({len(dataset.train)} train / {len(dataset.test)} test images); "
        f"results in {out}", flush=True)
  for i, (side, loss, seed) in enumerate(plan, 1):
    if side == PML:
      record = run_pml(peer_python, npz, loss, seed, settings,
                       workdir / "pml", save_embeddings=not checked)
      versions = record["detail"].get("versions", {})
      num_parameters[PML] = record["num_parameters"]
      if not checked:
        checked = True
        ours = score_with_nngk_jax(record["embeddings_path"])
        check = agreement(record["metrics"], ours)
        check.update(run=f"{loss} seed {seed}", geometry=record["geometry"],
                     num_embeddings=settings["num_test"])
        print(f"metric agreement on {check['run']}: max abs diff "
              f"{check['max_abs_diff']:.1e} "
              f"({'agree' if check['agree'] else 'DISAGREE'}); NMI "
              f"{check['metrics']['nmi']['pml']:.4f} (PML) vs "
              f"{check['metrics']['nmi']['nngk_jax']:.4f}", flush=True)
    else:
      record = run_ours(args.dataset, loss, seed, settings, workdir / "ours",
                        args.overrides)
    records.append(record)
    print(f"[{i}/{len(plan)}] {format_run(record)}", flush=True)
    finish()
  finish()
  print(out.read_text())
  if check is not None and not check["agree"]:
    print(f"make peer: the libraries' R@1 / MAP@R / R-precision DISAGREE by "
          f"{check['max_abs_diff']:.1e} (> {AGREEMENT_TOLERANCE:g}) on the "
          f"same embeddings; see {out}", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())

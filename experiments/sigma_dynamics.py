r"""Diagnostic: what NNGK training does step by step (docs/sigma_cliff.md).

The training loop of ``nngk_jax.train`` (same state, bank, step and
batches), instrumented. Writes ``dynamics.jsonl`` to ``--out``: one record
per step (``loss``, the share of the batch with a same-class neighbour) and
one per probe, every ``--probe-every`` steps and at each refresh, on a fixed
subset of the training split embedded in eval mode:

* ``mean_cos``: mean cosine between distinct subset embeddings (1: the
  sphere has collapsed to a point);
* ``eff_rank``: effective rank (exponential of the entropy of the
  normalised squared singular values) of the centred subset embeddings;
* ``pos_in_k``: the share of an example's same-class centres that are
  among its K graph neighbours (the graph of the last refresh);
* ``drift``: mean cosine between a subset embedding now and its stored
  centre (how stale the bank is);
* ``pos_cos`` / ``neg_cos``: mean cosine of a subset embedding to the
  same-class / other-class centres among its K neighbours;
* ``nll@s``: the NNGK loss of the subset against the stored bank at the
  run's scale :math:`s = 1/\sigma^2`, over examples with a positive.

Ends with the test retrieval metrics (``nngk_jax.evaluation.evaluate``).

Run:  python experiments/sigma_dynamics.py --out DIR --config
      nngk_jax/configs/glyphs.py data.num_classes=600 nngk.sigma=0.35
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

import jax
import numpy as np

from nngk_jax import configs
from nngk_jax import data as datalib
from nngk_jax import evaluation
from nngk_jax import loss as losses
from nngk_jax import train as trainlib


def _probe(state, subset, subset_index, bank, config) -> dict:
  emb = evaluation.embed_split(state, subset, config.eval_batch_size)[0]
  unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)
  gram = unit @ unit.T
  n = len(unit)
  mean_cos = (gram.sum() - np.trace(gram)) / (n * (n - 1))
  centres = np.asarray(state.bank.centres)
  drift = float(np.mean(np.sum(unit * centres[subset_index], axis=1)))
  extras = bank.batch_extras(subset_index)
  idx = extras["neighbour_idx"]
  labels = np.asarray(subset.labels)
  same = bank.labels[idx] == labels[:, None]
  cos = np.einsum("bd,bkd->bk", unit, centres[idx])
  class_size = np.bincount(bank.labels)[labels] - 1
  pos_in_k = float(np.mean(same.sum(1) / np.maximum(class_size, 1)))
  spectrum = np.linalg.svd(unit - unit.mean(0), compute_uv=False) ** 2
  spectrum = spectrum / spectrum.sum()
  eff_rank = float(np.exp(-np.sum(spectrum * np.log(spectrum + 1e-12))))
  out = {"pos_in_k": pos_in_k, "mean_cos": float(mean_cos), "drift": drift,
         "eff_rank": eff_rank,
         "pos_cos": float(cos[same].mean()) if same.any() else float("nan"),
         "neg_cos": float(cos[~same].mean())}
  per_example = np.asarray(losses.gaussian_kernel_loss(
      emb, subset.labels, centres, bank.labels, idx,
      sigma=config.nngk.sigma, neighbour_mask=extras["neighbour_mask"]))
  has = extras["has_positive"]
  out["nll@s"] = float(per_example[has].mean())
  return out


def _schedule(text, config) -> list[float]:
  """``[sigma of epoch 0, 1, ...]`` from ``'0.25:3,0.35'``."""
  if not text:
    return [config.nngk.sigma] * config.num_epochs
  sigmas = []
  for part in text.split(","):
    value, _, count = part.partition(":")
    sigmas += [float(value)] * (int(count) if count else config.num_epochs)
  return sigmas[:config.num_epochs]


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", default="nngk_jax/configs/glyphs.py")
  parser.add_argument("--out", required=True)
  parser.add_argument("--probe-every", type=int, default=25)
  parser.add_argument("--probe-size", type=int, default=512)
  parser.add_argument(
      "--sigma-schedule", default=None,
      help="sigma by epoch, e.g. '0.25:3,0.35': 0.25 for epochs 1-3, then "
           "0.35 (default: nngk.sigma throughout)")
  parser.add_argument("overrides", nargs="*")
  args = parser.parse_args(argv)
  config = configs.load_config(args.config)
  configs.apply_overrides(config, args.overrides)
  config.progress = False
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  log_path = out / "dynamics.jsonl"
  log_path.write_text("")

  def write(record):
    with log_path.open("a") as log:
      log.write(json.dumps(record) + "\n")

  dataset = datalib.load_dataset(config.dataset, **dict(config.data))
  trainlib.validate_config(config, dataset)
  _, bank, state = trainlib.init_run(config, dataset)
  rng = np.random.default_rng(0)
  subset_index = np.sort(rng.choice(len(dataset.train), args.probe_size,
                                    replace=False))
  subset = datalib.Split(dataset.train.images[subset_index],
                         dataset.train.labels[subset_index],
                         dataset.train.class_names, require_every_class=False)
  schedule = _schedule(args.sigma_schedule, config)
  step_fn, step_sigma = None, None
  step = 0
  for epoch in range(config.num_epochs):
    config.nngk.sigma = schedule[epoch]
    if step_sigma != config.nngk.sigma:  # sigma is a constant of the step
      step_fn = trainlib.make_train_step(config, dataset.train.num_classes,
                                         bank)
      step_sigma = config.nngk.sigma
    bank_st, record = bank.refresh(
        state.bank, epoch, lambda: evaluation.embed_split(
            state, dataset.train, config.eval_batch_size)[0])
    state = state.replace(bank=bank_st)
    write({"kind": "refresh", "epoch": epoch, "step": step,
           "sigma": config.nngk.sigma, **record,
           **_probe(state, subset, subset_index, bank, config)})
    for batch in trainlib.batches(dataset.train, config, epoch, bank):
      state, metrics = step_fn(state, batch)
      step += 1
      write({"kind": "step", "epoch": epoch, "step": step,
             "loss": float(metrics["loss"]),
             "has_positive": float(np.mean(batch["has_positive"]))})
      if step % args.probe_every == 0:
        write({"kind": "probe", "epoch": epoch, "step": step,
               **_probe(state, subset, subset_index, bank, config)})
  final = evaluation.evaluate(state, dataset, config, bank)
  write({"kind": "final", **{k: v for k, v in final.items()
                             if isinstance(v, (int, float, str))}})
  print(json.dumps({k: final[k] for k in ("recall@1", "map@r")}),
        file=sys.stderr)
  return 0


if __name__ == "__main__":
  sys.exit(main())

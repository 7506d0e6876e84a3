r"""Benchmarks, reported as ratios measured in one run (`make bench`).

0. The training loop against pytorch-metric-learning's on the same data,
   architecture and batches, and the centre refresh against the loop
   (experiments/bench_loop.py). Targets: loop vs peer >= 1.0, refresh vs
   loop >= 2.5.
1. Train step time of NNGK over softmax: same backbone, batch and data; the
   NNGK side includes the host-side neighbour lookup (graph rows of the
   batch) and the transfer of those rows. Blocks of steps alternate between
   the two so that machine noise hits both alike. Target: at most 1.10.
2. Neighbour graph: PyNNDescent build time and recall@K against the exact
   backend for N = 1k, 10k, 100k (see experiments/bench_graph.py).
3. Loose impostors at N = 60,000: the dense ``[N, D]`` step over the sparse
   row update, time and compiled memory (experiments/bench_impostor.py).

Run:   make bench                 (ARGS="--skip-graph" for the step ratio only)
       python experiments/bench.py --sizes 1000 10000 --steps 200
Time:  about 5 minutes on a 2-core CPU with N up to 100k.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

import jax
import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from nngk_jax import configs  # noqa: E402
from nngk_jax import data as datalib  # noqa: E402
from nngk_jax import evaluation  # noqa: E402
from nngk_jax import parallel  # noqa: E402
from nngk_jax import train  # noqa: E402


def _setup(objective: str, backbone: str, batch_size: int):
  config = configs.load_config(configs.CONFIG_DIR / "digits.py")
  config.objective = objective
  config.model.backbone = backbone
  config.model.backbone_kwargs = ({"hidden": (256, 256)} if backbone == "mlp"
                                  else {"channels": (32, 64, 128)})
  config.batch_size = batch_size
  config.nngk.graph_backend = "exact"  # graph build is not what we time here
  dataset = datalib.load_dataset("digits")
  _, bank, state = train.init_run(config, dataset)
  if bank is not None:
    bank_state, _ = bank.refresh(state.bank, 0, lambda: evaluation.embed_split(
        state, dataset.train, config.eval_batch_size)[0])
    state = state.replace(bank=bank_state)
  step = train.make_train_step(config, dataset.train.num_classes, bank)
  return config, dataset, state, bank, step


def _run_block(setup, steps: int, epoch: int) -> tuple[float, object]:
  config, dataset, state, bank, step = setup
  done = 0
  start = time.perf_counter()
  while done < steps:
    for batch in train.batches(dataset.train, config, epoch, bank):
      state, metrics = step(state, batch)
      done += 1
      if done == steps:
        break
    epoch += 1
  jax.block_until_ready(metrics)
  return time.perf_counter() - start, state


def bench_step_ratio(backbone: str = "small_cnn", batch_size: int = 32,
                     steps: int = 100, rounds: int = 5) -> dict:
  """Median seconds per step of NNGK and softmax, and their ratio."""
  setups = {name: list(_setup(name, backbone, batch_size))
            for name in ("nngk", "softmax")}
  for name, setup in setups.items():  # compile and warm up
    _, setup[2] = _run_block(setup, 5, epoch=0)
  times = {name: [] for name in setups}
  for r in range(rounds):
    for name, setup in setups.items():
      seconds, setup[2] = _run_block(setup, steps, epoch=r + 1)
      times[name].append(seconds / steps)
  nngk, softmax = np.median(times["nngk"]), np.median(times["softmax"])
  k = setups["nngk"][0].nngk.k
  return {"backbone": backbone, "batch_size": batch_size, "k": k,
          "nngk_step_ms": 1e3 * nngk, "softmax_step_ms": 1e3 * softmax,
          "ratio": nngk / softmax,
          "nngk_images_per_second": batch_size / nngk,
          "softmax_images_per_second": batch_size / softmax}


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=100)
  parser.add_argument("--rounds", type=int, default=5)
  parser.add_argument("--sizes", type=int, nargs="*",
                      default=[1_000, 10_000, 100_000])
  parser.add_argument("--skip-graph", action="store_true")
  parser.add_argument("--skip-loop", action="store_true",
                      help="skip the loop-vs-peer and refresh ratios")
  parser.add_argument("--skip-impostor", action="store_true")
  parser.add_argument("--loop-epochs", type=int, default=2)
  parser.add_argument("--out", default=str(ROOT / "runs" / "bench.json"))
  args = parser.parse_args(argv)
  # As the training command line: on a CPU, one JAX device per core (the
  # loop's data-parallel step; the other parts run on the first device).
  parallel.split_cpu(None, 64)

  results = {"step": [], "graph": [], "loop": None}
  if not args.skip_loop:
    from experiments import bench_loop
    results["pooling"] = bench_loop.bench_pooling()
    print(bench_loop.format_pooling(results["pooling"]) + "\n", flush=True)
    results["loop"] = bench_loop.bench_loop(epochs=args.loop_epochs)
    print(bench_loop.format_table(results["loop"]) + "\n", flush=True)
  print("| backbone | batch | K | NNGK ms/step | softmax ms/step | ratio | NNGK img/s | softmax img/s |")
  print("| --- | --- | --- | --- | --- | --- | --- | --- |")
  for backbone in ("small_cnn", "mlp"):
    r = bench_step_ratio(backbone, steps=args.steps, rounds=args.rounds)
    results["step"].append(r)
    print(f"| {backbone} | {r['batch_size']} | {r['k']} | {r['nngk_step_ms']:.2f} | "
          f"{r['softmax_step_ms']:.2f} | **{r['ratio']:.3f}** | "
          f"{r['nngk_images_per_second']:.0f} | {r['softmax_images_per_second']:.0f} |",
          flush=True)
  if not args.skip_graph:
    from experiments import bench_graph
    from nngk_jax import neighbours
    print(f"\nPyNNDescent warm-up (numba compile, first process): "
          f"{neighbours.warm_up():.1f} s", flush=True)
    results["graph"] = bench_graph.bench_graph(sizes=tuple(args.sizes))
    print(bench_graph.format_table(results["graph"]))
  if not args.skip_impostor:
    from experiments import bench_impostor
    r = bench_impostor.bench_impostor()
    results["impostor"] = r
    print(f"\nLoose impostors, N={r['num_centres']}, D={r['dim']}, "
          f"K={r['k']}, batch {r['batch_size']}: sparse "
          f"{r['sparse_step_ms']:.1f} ms/step, {r['sparse_temp_bytes'] / 1e6:.0f}"
          f" MB workspace; dense {r['dense_step_ms']:.1f} ms/step, "
          f"{r['dense_temp_bytes'] / 1e6:.0f} MB; dense over sparse "
          f"**{r['dense_over_sparse_time']:.1f}x** time, "
          f"{r['dense_over_sparse_temp_memory']:.1f}x memory", flush=True)
  out = pathlib.Path(args.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(results, indent=2, default=float) + "\n")
  print(f"\nwritten {out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())

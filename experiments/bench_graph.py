"""Benchmark of the neighbour-graph backends: build time and recall@k.

    .venv/bin/python experiments/bench_graph.py --sizes 1000 10000 100000

Expected run time on a 2-core CPU machine: about 50 s for the numba warm-up,
a few seconds for N=1k and 10k, and 20-40 s for N=100k, where the exact graph
is not built: its time is extrapolated from the sampled rows (marked "~"; one
measured full build took 86 s against 112 s extrapolated). Expected recall@30:
about 1.00, 0.99 and 0.95 for N = 1k, 10k, 100k.

For each bank size N (Gaussian clusters, N/50 of them, in ``dim``
dimensions, float32) it reports PyNNDescent's first build in this process and
a rebuild (the cost paid after every centre refresh), the exact graph's build
time, and the recall@k of the PyNNDescent graph against exact neighbours on
``num_queries`` sampled rows.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from nngk_jax.knn import exact_knn
from nngk_jax.neighbours import build_neighbour_graph, graph_recall, warm_up


def clustered_points(num_points: int, dim: int, seed: int) -> np.ndarray:
  """Gaussian clusters: ``num_points // 50`` means drawn N(0, 1), unit noise.

  Cluster means and members are equally spread, so clusters overlap (as
  embeddings early in training do) and the k nearest neighbours are not simply
  one's own cluster: an easy case for NN-descent would hide its errors.

  Args:
    num_points: ``N``.
    dim: ``D``.
    seed: seed of the generator.

  Returns:
    ``[N, D]`` float32.
  """
  rng = np.random.default_rng(seed)
  num_clusters = max(1, num_points // 50)
  means = rng.normal(size=(num_clusters, dim))
  labels = rng.integers(num_clusters, size=num_points)
  return (means[labels] + rng.normal(size=(num_points, dim))).astype(np.float32)


def _timed(fn, *args, **kwargs):
  start = time.perf_counter()
  out = fn(*args, **kwargs)
  return out, time.perf_counter() - start


def bench_graph(
    sizes: tuple[int, ...] = (1_000, 10_000, 100_000),
    dim: int = 64,
    k: int = 30,
    num_queries: int = 1000,
    seed: int = 0,
    exact_full_max: int = 20_000,
) -> list[dict]:
  """Times PyNNDescent and exact graph builds and measures recall@k.

  Call ``warm_up()`` first if the first size's PyNNDescent time should not
  include numba's compilation.

  Args:
    sizes: bank sizes ``N`` to try.
    dim: embedding dimension ``D``.
    k: neighbours per centre.
    num_queries: rows sampled for recall (all rows when ``N`` is smaller).
    seed: seed of the data, the sample and PyNNDescent.
    exact_full_max: the full exact graph is built (and timed) only up to this
      ``N``; above it, its time is extrapolated linearly from the time of the
      sampled rows (brute force costs the same per row).

  Returns:
    One dict per size: ``num_centres, dim, k, pynndescent_first_build_s,
    pynndescent_rebuild_s, exact_build_s, exact_extrapolated, recall_at_k,
    recall_rows``.

  Examples:
    >>> rows = bench_graph(sizes=(500,), dim=8, k=5)  # doctest: +SKIP
  """
  results = []
  for num_centres in sizes:
    points = clustered_points(num_centres, dim, seed)
    approx, first_s = _timed(build_neighbour_graph, points, k=k,
                             backend="pynndescent", seed=seed)
    _, rebuild_s = _timed(build_neighbour_graph, points, k=k,
                          backend="pynndescent", seed=seed + 1)
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(num_centres, min(num_queries, num_centres),
                              replace=False))
    # Untimed call first: XLA compiles once per shape.
    exact_knn(points[rows], points, k=k, query_ids=rows)
    (exact_rows, _), sample_s = _timed(exact_knn, points[rows], points, k=k,
                                       query_ids=rows)
    if num_centres <= exact_full_max:
      build_neighbour_graph(points, k=k, backend="exact")  # XLA compile.
      _, exact_s = _timed(build_neighbour_graph, points, k=k, backend="exact")
      extrapolated = False
    else:
      exact_s = sample_s * num_centres / rows.size
      extrapolated = True
    results.append(dict(
        num_centres=num_centres, dim=dim, k=k,
        pynndescent_first_build_s=first_s,
        pynndescent_rebuild_s=rebuild_s,
        exact_build_s=exact_s,
        exact_extrapolated=extrapolated,
        recall_at_k=graph_recall(approx.indices[rows], exact_rows),
        recall_rows=int(rows.size),
    ))
  return results


def format_table(results: list[dict]) -> str:
  """The results as a markdown table."""
  k = results[0]["k"] if results else 0
  lines = [
      f"| N | D | PyNNDescent first build (s) | PyNNDescent rebuild (s)"
      f" | exact build (s) | recall@{k} (rows) |",
      "| ---: | ---: | ---: | ---: | ---: | ---: |",
  ]
  for r in results:
    exact = ("~" if r["exact_extrapolated"] else "") + f"{r['exact_build_s']:.2f}"
    lines.append(
        f"| {r['num_centres']:,} | {r['dim']} | {r['pynndescent_first_build_s']:.2f}"
        f" | {r['pynndescent_rebuild_s']:.2f} | {exact}"
        f" | {r['recall_at_k']:.4f} ({r['recall_rows']}) |")
  return "\n".join(lines)


def bench_swap(num_centres: int = 50_000, dim: int = 128, k: int = 30,
               steps: int = 2000, width: int = 1024, seed: int = 0) -> dict:
  """Exposed graph-rebuild time, in line against in the background.

  A stand-in for an epoch: ``steps`` jitted matrix products
  (``[width, width] @ [width, width]``, about 12 ms each here: an epoch of
  about 25 s, where 50,000 glyph-sized images take about 60 s) each
  preceded by the
  bank's ``batch_extras`` for 64 rows, as the trainer calls them. Three
  epochs are timed after a refresh of ``num_centres`` random clustered
  centres: with no rebuild (the graph kept), with the PyNNDescent rebuild in
  line, and with it in the background. Exposed time is the epoch's time
  beyond the one without a rebuild; in the background that is what the
  build's thread takes from the step's cores (here 2) plus any wait.
  """
  import jax
  import jax.numpy as jnp
  from nngk_jax import bank as banklib

  labels = np.arange(num_centres) % max(num_centres // 50, 2)
  first, second = (clustered_points(num_centres, dim, s) for s in (seed,
                                                                  seed + 1))
  matrix = jnp.ones((width, width), jnp.float32) / width
  step = jax.jit(lambda x: jnp.tanh(x @ matrix))
  rng = np.random.default_rng(seed)
  rows = [rng.integers(0, num_centres, 64) for _ in range(steps)]

  def epoch(bank):
    x = jnp.ones((width, width), jnp.float32)
    start = time.perf_counter()
    for index in rows:
      bank.batch_extras(index)
      x = step(x)
    x.block_until_ready()
    return time.perf_counter() - start

  out = {"num_centres": num_centres, "dim": dim, "k": k, "steps": steps}
  for mode in ("none", "inline", "background"):
    bank = banklib.CentreBank(labels, dim, k=k, graph_backend="pynndescent",
                              background_graph=mode == "background",
                              warm_up=False, seed=seed)
    state, _ = bank.refresh(bank.init_state(), 0, lambda: first)
    epoch(bank)  # compile and warm
    start = time.perf_counter()
    if mode != "none":
      state, record = bank.refresh(state, 1, lambda: second)
    refresh_seconds = time.perf_counter() - start
    seconds = refresh_seconds + epoch(bank)
    if mode == "background":
      # A build not done by the epoch's end would be waited for at the next
      # refresh: that wait is exposed too.
      start = time.perf_counter()
      bank.wait_for_graph()
      seconds += time.perf_counter() - start
      stats = bank.statistics({})
      out["background_build_seconds"] = stats.get("graph_seconds_background")
      out["swap_step"] = stats.get("graph_swap_step")
    out[f"{mode}_seconds"] = seconds
  base = out["none_seconds"]
  out["inline_exposed"] = (out["inline_seconds"] - base) / base
  out["background_exposed"] = (out["background_seconds"] - base) / base
  return out


def format_swap(r: dict) -> str:
  return "\n".join([
      f"Graph rebuild at N = {r['num_centres']:,} (D = {r['dim']}, k = "
      f"{r['k']}), an epoch of {r['steps']} stand-in steps:",
      "",
      "| rebuild | epoch seconds | exposed (share of the epoch) |",
      "| --- | ---: | ---: |",
      f"| none (graph kept) | {r['none_seconds']:.2f} | |",
      f"| in line | {r['inline_seconds']:.2f} | {r['inline_exposed']:.1%} |",
      f"| background (built in {r['background_build_seconds'] or 0:.1f} s, "
      f"swapped at step {r['swap_step']}) | {r['background_seconds']:.2f} | "
      f"{r['background_exposed']:.1%} |",
  ])


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--sizes", type=int, nargs="+",
                      default=[1_000, 10_000, 100_000])
  parser.add_argument("--dim", type=int, default=64)
  parser.add_argument("--k", type=int, default=30)
  parser.add_argument("--num-queries", type=int, default=1000)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--exact-full-max", type=int, default=20_000)
  parser.add_argument("--swap", type=int, default=0, metavar="N",
                      help="only the background-rebuild benchmark at N "
                           "centres")
  args = parser.parse_args()
  start = time.perf_counter()
  print(f"PyNNDescent warm-up (numba compile, 300 points): {warm_up():.1f} s")
  if args.swap:
    print(format_swap(bench_swap(args.swap, k=args.k, seed=args.seed)))
    return
  results = bench_graph(tuple(args.sizes), dim=args.dim, k=args.k,
                        num_queries=args.num_queries, seed=args.seed,
                        exact_full_max=args.exact_full_max)
  print(format_table(results))
  print(f"total {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
  main()

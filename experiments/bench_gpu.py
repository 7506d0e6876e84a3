r"""Speed on a GPU: the benchmark recipes, the whole loop, the graph at SOP size.

Run (one GPU; on an H200 with 16 host cores the phases took 145, 83, 101,
58, 66 and 120 s in the order below, numba's compilation included):

    python experiments/bench_gpu.py --out runs/bench_gpu
    python experiments/bench_gpu.py --phases pipeline loop --deadline 300
    python experiments/bench_gpu.py --small --out /tmp/bench_gpu   # CPU check

``--small`` shrinks every size so that all code paths run on a CPU in a few
minutes; its figures mean nothing. Each phase runs in its own process under
its own time limit (``--phase-timeout``), so one that fails or runs long
loses only itself; each writes ``<out>/<phase>.json`` and the tables of all
of them are printed last (``docs/benchmarks.md``, "On a GPU").

Phases:

``recipes``  The ``paper`` recipe (ResNet-18, 256 px, batch 32, K = 200) and
    the ``strong`` one (ResNet-50, 224 px, batch 64, K = 200 + 4 same-class),
    random initialisation (throughput does not depend on the weights). For
    each: ms per train step of NNGK and of softmax on the same backbone,
    batch and device-resident batches, in alternating blocks (median of
    rounds), their ratio, and the eval-mode embedding rate of the centre
    refresh on the real input pipeline.
``loop``  Two epochs of the paper recipe through ``train_and_evaluate`` on a
    CUB-sized synthetic split (5,864 training JPEGs of 500 x 375 held
    encoded in memory, as TFDS serves them): images/s of the whole loop with
    its input pipeline, the refresh and graph seconds from its history.
``sop_graph``  The neighbour graph of 60,502 SOP-like 512-d centres at
    K = 200: the exact backend on the GPU, and PyNNDescent on the host's
    cores (numba's compilation timed apart).
``big_bank``  The exact graph of 128-d banks of 100k and 1M centres (k = 30)
    on the GPU: seconds and peak device memory; the per-batch neighbour
    supply (graph rows of a batch) at 1M and 10M.
``pipeline``  Images/s of the input pipeline alone (``ImageSplit``, grain)
    by decoding threads and worker processes.
``swap``  Exposed rebuild time of the background graph at N = 50,000 with a
    stand-in step sized to keep the GPU busy (``bench_graph.bench_swap``).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PHASES = ("recipes", "sop_graph", "big_bank", "loop", "loop_workers", "swap",
          "pipeline")
BIG_BANK_MAX_SECONDS = 150.0

# CUB-200-2011's training half (classes 1-100) and SOP's test split.
CUB_TRAIN, CUB_CLASSES = 5_864, 100
SOP_N, SOP_CLASSES = 60_502, 11_316

SIZES = {  # full, small (--small: a CPU check of every code path)
    "num_train": (CUB_TRAIN, 96),
    "num_classes": (CUB_CLASSES, 12),
    "num_test": (512, 48),
    "jpeg": ((500, 375), (120, 90)),
    "steps": (20, 2),
    "rounds": (5, 2),
    "sop": ((SOP_N, SOP_CLASSES, 512, 200), (2_000, 300, 64, 20)),
    "big": ((100_000, 1_000_000), (2_000, 5_000)),
    "supply": ((1_000_000, 10_000_000), (5_000, 20_000)),
    "swap": ((50_000, 1000, 8192), (3_000, 20, 256)),
}


def size(name: str, small: bool):
  return SIZES[name][1 if small else 0]


def _device_summary() -> dict:
  import jax
  device = jax.devices()[0]
  return {"backend": jax.default_backend(), "device": device.device_kind,
          "jax": jax.__version__, "cpu_count": os.cpu_count()}


def _peak_device_bytes() -> float | None:
  import jax
  stats = jax.devices()[0].memory_stats() or {}
  return stats.get("peak_bytes_in_use")


def _jpeg_records(num: int, distinct: int, width: int, height: int) -> list:
  """``num`` encoded JPEGs, ``distinct`` different ones repeated."""
  from experiments.bench_pipeline import make_jpegs
  pool = make_jpegs(min(num, distinct), width, height)
  return [pool[i % len(pool)] for i in range(num)]


def synthetic_benchmark(num_train: int, num_test: int, num_classes: int,
                        jpeg_size: tuple[int, int], pipeline=None, **unused):
  """A CUB-shaped :class:`~nngk_jax.data.splits.Dataset` of synthetic JPEGs.

  Records are held encoded and decoded by the real pipeline
  (:class:`~nngk_jax.data.pipeline.ImageSplit`), as a TFDS benchmark is;
  the loader takes the benchmark loaders' options (``pipeline``; the rest
  are ignored) so a recipe config runs on it unchanged.
  """
  from nngk_jax.data import pipeline as pipelib
  from nngk_jax.data import splits
  transform, options = pipelib.pipeline_from_options(
      dict(pipeline) if pipeline else None)
  width, height = jpeg_size
  names = tuple(f"class_{c}" for c in range(num_classes))
  test_names = tuple(f"test_class_{c}" for c in range(num_classes))
  records = _jpeg_records(num_train + num_test, 256, width, height)
  train = pipelib.ImageSplit(records[:num_train],
                             np.arange(num_train) % num_classes, names,
                             transform, options=options)
  test = pipelib.ImageSplit(records[num_train:],
                            np.arange(num_test) % num_classes, test_names,
                            transform, options=options)
  return splits.Dataset(name="synthetic", train=train, test=test,
                        protocol="metric")


def _recipe_config(recipe: str, objective: str, small: bool):
  from nngk_jax.configs import benchmark
  config = benchmark.get_config("cub", recipe)
  config.dataset = "synthetic"
  config.model.pretrained = None
  config.objective = objective
  config.progress = False
  config.nmi = False
  if small:
    config.data.pipeline.update({"resize": 40, "crop": 32})
    config.nngk.k = 8
    config.batch_size = 16
    config.samples_per_class = 4
    config.eval_batch_size = 32
    config.classifier_k = 8
  return config


def _register(small: bool):
  from nngk_jax.data import registry
  num_train, num_test = size("num_train", small), size("num_test", small)
  num_classes, jpeg = size("num_classes", small), size("jpeg", small)

  def loader(**options):
    return synthetic_benchmark(num_train, num_test, num_classes, jpeg,
                               **options)
  registry.DATASETS["synthetic"] = loader
  return loader


def _median_step_seconds(setups: dict, steps: int, rounds: int) -> dict:
  """Median seconds per step of each setup, blocks alternating."""
  import jax
  times = {name: [] for name in setups}
  for setup in setups.values():  # compile and warm
    for batch in setup["batches"][:3]:
      setup["state"], metrics = setup["step"](setup["state"], batch)
    jax.block_until_ready(metrics)
  for _ in range(rounds):
    for name, setup in setups.items():
      batches = setup["batches"]
      start = time.perf_counter()
      for i in range(steps):
        setup["state"], metrics = setup["step"](setup["state"],
                                                batches[i % len(batches)])
      jax.block_until_ready(metrics)
      times[name].append((time.perf_counter() - start) / steps)
  return {name: float(np.median(t)) for name, t in times.items()}


def phase_recipes(small: bool) -> dict:
  """Step times of NNGK and softmax, their ratio, the refresh's rate."""
  import jax
  from nngk_jax import data as datalib
  from nngk_jax import evaluation
  from nngk_jax import train
  _register(small)
  out = {}
  for recipe in ("paper", "strong"):
    setups, result = {}, {}
    config = _recipe_config(recipe, "nngk", small)
    # One dataset per recipe: the objectives share its data options.
    dataset = datalib.load_dataset(config.dataset, **dict(config.data))
    for objective in ("nngk", "softmax"):
      config = _recipe_config(recipe, objective, small)
      _, bank, state = train.init_run(config, dataset)
      if bank is not None:
        for attempt in ("first", "second"):  # the first compiles
          start = time.perf_counter()
          bank_state, record = bank.refresh(
              state.bank, 0, lambda: evaluation.embed_split(
                  state, dataset.train, config.eval_batch_size)[0])
          result[f"refresh_{attempt}_seconds"] = time.perf_counter() - start
        result["refresh_images_per_second"] = (
            len(dataset.train) / record["refresh_seconds"])
        result["graph_seconds"] = record.get("graph_seconds")
        state = state.replace(bank=bank_state)
      step = train.make_train_step(config, dataset.train.num_classes, bank)
      host = []
      for batch in train.batches(dataset.train, config, 0, bank):
        host.append(jax.device_put(batch))
        if len(host) == 8:
          break
      setups[objective] = {"state": state, "step": step, "batches": host}
      result["batch_size"] = config.batch_size
      result["backbone"] = config.model.backbone
      result["crop"] = config.data.pipeline.crop
      result["k"] = config.nngk.k
    seconds = _median_step_seconds(setups, size("steps", small),
                                   size("rounds", small))
    batch = result["batch_size"]
    result.update({
        "nngk_step_ms": 1e3 * seconds["nngk"],
        "softmax_step_ms": 1e3 * seconds["softmax"],
        "nngk_over_softmax": seconds["nngk"] / seconds["softmax"],
        "nngk_images_per_second": batch / seconds["nngk"],
        "softmax_images_per_second": batch / seconds["softmax"],
        "peak_device_bytes": _peak_device_bytes()})
    out[recipe] = result
    print(recipe, json.dumps(result), flush=True)
  return out


class _Timeline:
  """When each call of the wrapped functions began (seconds from the
  timeline's start) and how long it took; for a phase's own process."""

  def __init__(self):
    self.start = time.perf_counter()
    self.calls = []

  def wrap(self, owner, name: str, label: str) -> None:
    original = getattr(owner, name)

    def timed(*args, **kwargs):
      began = time.perf_counter()
      try:
        return original(*args, **kwargs)
      finally:
        self.calls.append([label, round(began - self.start, 3),
                           round(time.perf_counter() - began, 3)])

    setattr(owner, name, timed)

  def wrap_first_item(self, owner, name: str, label: str) -> None:
    """Times a generator method up to its first item."""
    original = getattr(owner, name)

    def timed(*args, **kwargs):
      began = time.perf_counter()
      items = original(*args, **kwargs)
      for i, item in enumerate(items):
        if i == 0:
          self.calls.append([label, round(began - self.start, 3),
                             round(time.perf_counter() - began, 3)])
        yield item

    setattr(owner, name, timed)

  def totals(self) -> dict:
    out = {}
    for label, _, seconds in self.calls:
      out[label] = round(out.get(label, 0.0) + seconds, 3)
    return out


# The loop's parts that do not nest in one another: what they leave out of
# the whole command's time is start-up, compilation outside them, and exit.
_LOOP_PARTS = ("load_dataset", "init_run", "make_train_step", "refresh",
               "train_epoch", "evaluate", "raw_pixel_metrics",
               "plot_history", "epoch_checkpoint")


def _time_the_loop() -> _Timeline:
  from nngk_jax import bank as banklib
  from nngk_jax import checkpoint
  from nngk_jax import evaluation
  from nngk_jax import plotting
  from nngk_jax import train
  from nngk_jax.data import pipeline
  timeline = _Timeline()
  for owner, name in [(train.datalib, "load_dataset"), (train, "init_run"),
                      (train, "make_train_step"), (train, "train_epoch"),
                      (evaluation, "evaluate"),
                      (evaluation, "raw_pixel_metrics"),
                      (plotting, "plot_history"),
                      (banklib.CentreBank, "refresh")]:
    timeline.wrap(owner, name, name)
  timeline.wrap(checkpoint.CheckpointStore, "save", "checkpoint_save")
  timeline.wrap(pipeline._WorkerPool, "__init__", "worker_pool_start")  # pylint: disable=protected-access
  timeline.wrap(pipeline._WorkerPool, "close", "worker_pool_close")  # pylint: disable=protected-access
  timeline.wrap_first_item(pipeline._WorkerPool, "batches",  # pylint: disable=protected-access
                           "worker_first_batch")
  return timeline


def phase_loop(small: bool, workers: int = 0) -> dict:
  """Two epochs of the paper recipe, input pipeline included; the second's
  figures. ``workers``: decoding worker processes (0: threads).

  Also a timeline of the run's parts (``timeline``: [part, began, seconds])
  and what they leave unaccounted of the whole command's time."""
  from nngk_jax import train
  timeline = _time_the_loop()
  _register(small)
  config = _recipe_config("paper", "nngk", small)
  config.data.pipeline = dict(config.data.pipeline, num_workers=workers)
  config.num_epochs = 2  # the second epoch's refresh is compiled already
  config.eval_every = 2
  config.nngk.refresh_every = 1
  workdir = pathlib.Path(tempfile.mkdtemp(prefix="bench_gpu_loop_"))
  start = time.perf_counter()
  metrics = train.train_and_evaluate(config, workdir)
  total = time.perf_counter() - start
  history = [json.loads(line) for line in
             (workdir / "history.jsonl").read_text().splitlines()]
  record = history[-1]
  keys = ("images_per_second", "epoch_seconds", "refresh_seconds",
          "graph_seconds", "eval_seconds")
  out = {key: record.get(key) for key in keys}
  out.update({"total_seconds": total, "num_train": size("num_train", small),
              "recall@1": metrics.get("recall@1"),
              "num_threads": config.data.pipeline["num_threads"],
              "num_workers": workers})
  # The checkpoints saved after each epoch (not those inside train_epoch).
  epoch_saves = [c for c in timeline.calls if c[0] == "checkpoint_save"
                 and not any(e[0] == "train_epoch" and e[1] <= c[1] < e[1] + e[2]
                             for e in timeline.calls)]
  timeline.calls += [["epoch_checkpoint", c[1], c[2]] for c in epoch_saves]
  totals = timeline.totals()
  out.update({"timeline": timeline.calls, "part_seconds": totals,
              "unaccounted_seconds": total - sum(
                  totals.get(part, 0.0) for part in _LOOP_PARTS)})
  return out


def phase_loop_workers(small: bool) -> dict:
  """The loop phase with one decoding worker process per host core."""
  return phase_loop(small, workers=2 if small else (os.cpu_count() or 1))


def phase_sop_graph(small: bool) -> dict:
  """The graph of SOP-sized centres, exact on the device and PyNNDescent."""
  from experiments.bench_eval import sop_like_embeddings
  from nngk_jax import neighbours
  n, classes, dim, k = size("sop", small)
  x, _ = sop_like_embeddings(n, classes, dim)
  out = {"num_centres": n, "dim": dim, "k": k}
  for attempt in ("first", "second"):  # the first compiles
    start = time.perf_counter()
    exact = neighbours.build_neighbour_graph(x, k=k, backend="exact")
    out[f"exact_{attempt}_seconds"] = time.perf_counter() - start
  out["peak_device_bytes"] = _peak_device_bytes()
  print(out, flush=True)
  out["pynndescent_warm_up_seconds"] = neighbours.warm_up("pynndescent")
  start = time.perf_counter()
  graph = neighbours.build_neighbour_graph(x, k=k, backend="pynndescent")
  out["pynndescent_seconds"] = time.perf_counter() - start
  out["pynndescent_recall"] = neighbours.graph_recall(graph.indices,
                                                      exact.indices)
  return out


def phase_big_bank(small: bool) -> dict:
  """Exact graphs of big 128-d banks; the per-batch neighbour supply."""
  from experiments.bench_graph import clustered_points
  from nngk_jax import neighbours
  out = {"graph": [], "supply": []}
  last = None
  for n in size("big", small):
    if last is not None:  # exact costs N^2: skip what would not finish
      predicted = last["seconds"] * (n / last["num_centres"]) ** 2
      if predicted > BIG_BANK_MAX_SECONDS:
        out["graph"].append({"num_centres": n, "k": 30, "skipped": True,
                             "predicted_seconds": predicted})
        continue
    x = clustered_points(n, 128, seed=0)
    # The first build at a size compiles its chunk shape: below the largest
    # size the second (warm) build is timed, so the N^2 prediction holds.
    for _ in range(1 if n == max(size("big", small)) else 2):
      start = time.perf_counter()
      graph = neighbours.build_neighbour_graph(x, k=30, backend="exact")
      seconds = time.perf_counter() - start
    last = {"num_centres": n, "k": 30, "seconds": seconds,
            "peak_device_bytes": _peak_device_bytes()}
    out["graph"].append(last)
    print(out["graph"][-1], flush=True)
    del x, graph
  rng = np.random.default_rng(0)
  for n in size("supply", small):
    # A graph table of this size (random rows: the supply is a gather).
    table = rng.integers(0, n, size=(n, 30), dtype=np.int32)
    graph = neighbours.NeighbourGraph(table, np.ones_like(table, bool))
    batches = [rng.integers(0, n, 64) for _ in range(200)]
    start = time.perf_counter()
    for index in batches:
      graph.rows(index)
    out["supply"].append({"num_centres": n, "batch": 64,
                          "ms_per_batch": 1e3 * (time.perf_counter() - start)
                          / len(batches)})
  return out


def phase_pipeline(small: bool) -> dict:
  """Input-pipeline images/s by decoding threads and worker processes."""
  from experiments.bench_pipeline import measure, stage_milliseconds
  num = 2048 if not small else 64
  records = _jpeg_records(num, 256, *size("jpeg", small))
  stages = stage_milliseconds(records[:64])
  print("ms per image, one thread:", stages, flush=True)
  cores = os.cpu_count() or 1
  # (threads, worker processes, uint8 batches normalised on the device)
  settings = ([(1, 0, False), (cores, 0, False), (cores, 0, True),
               (1, cores // 2, True), (1, cores, True)]
              if not small else [(1, 0, False), (2, 0, True), (1, 2, True)])
  out = []
  for threads, workers, on_device in settings:
    for augment in (True, False):
      rate = measure(records, augment=augment, resize=256, crop=256,
                     threads=threads, workers=workers, on_device=on_device)
      out.append({"threads": threads, "workers": workers,
                  "on_device": on_device, "augment": augment,
                  "images_per_second": rate})
      print(out[-1], flush=True)
  cached = measure(records, augment=False, resize=256, crop=256,
                  threads=cores, workers=0, on_device=True, cache=True)
  print("evaluation pass from the cache of crops:", cached, flush=True)
  return {"num_records": num, "rates": out, "stage_ms": stages,
          "cached_evaluation": cached}


def phase_swap(small: bool) -> dict:
  """The background rebuild's exposed share of an epoch, on this device."""
  from experiments.bench_graph import bench_swap
  n, steps, width = size("swap", small)
  return bench_swap(num_centres=n, steps=steps, width=width)


PHASE_FUNCTIONS = {"recipes": phase_recipes, "loop": phase_loop,
                   "loop_workers": phase_loop_workers,
                   "sop_graph": phase_sop_graph, "big_bank": phase_big_bank,
                   "swap": phase_swap, "pipeline": phase_pipeline}


def _gib(value) -> str:
  return "" if value is None else f"{value / 2**30:.1f} GiB"


def format_tables(results: dict) -> str:
  """Markdown tables of whichever phases finished."""
  lines = []
  env = results.get("env")
  if env:
    lines.append(f"Device: {env['device']} ({env['backend']}), JAX "
                 f"{env['jax']}, {env['cpu_count']} host cores.\n")
  recipes = results.get("recipes")
  if recipes:
    lines += ["| recipe | backbone | crop | batch | K | NNGK ms/step | "
              "softmax ms/step | NNGK / softmax | NNGK img/s | softmax img/s "
              "| refresh img/s | peak device memory |",
              "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: "
              "| ---: | ---: | ---: |"]
    for name, r in recipes.items():
      lines.append(
          f"| {name} | {r['backbone']} | {r['crop']} | {r['batch_size']} | "
          f"{r['k']} | {r['nngk_step_ms']:.1f} | {r['softmax_step_ms']:.1f} | "
          f"**{r['nngk_over_softmax']:.3f}** | "
          f"{r['nngk_images_per_second']:.0f} | "
          f"{r['softmax_images_per_second']:.0f} | "
          f"{r['refresh_images_per_second']:.0f} | "
          f"{_gib(r['peak_device_bytes'])} |")
    lines.append("")
  for key in ("loop", "loop_workers"):
    loop = results.get(key)
    if not loop:
      continue
    readers = (f"{loop['num_workers']} decoding worker processes"
               if loop.get("num_workers") else
               f"{loop['num_threads']} decoding threads")
    lines.append(
        f"Whole loop, paper recipe, {loop['num_train']:,} JPEGs, {readers}: "
        f"{loop['images_per_second']:.0f} img/s; epoch "
        f"{loop['epoch_seconds']:.1f} s, refresh "
        f"{loop['refresh_seconds'] or 0:.1f} s, graph "
        f"{loop['graph_seconds'] or 0:.1f} s; whole command "
        f"{loop['total_seconds']:.0f} s.\n")
    if "part_seconds" in loop:
      parts = ", ".join(f"{k} {v:.1f}" for k, v in loop["part_seconds"].items())
      lines.append(f"Its parts, seconds (all calls): {parts}; outside the "
                   f"loop's parts: {loop['unaccounted_seconds']:.1f} s.\n")
  sop = results.get("sop_graph")
  if sop:
    lines.append(
        f"Graph of {sop['num_centres']:,} x {sop['dim']} centres, K = "
        f"{sop['k']}: exact on the device {sop['exact_second_seconds']:.1f} s"
        f" (first {sop['exact_first_seconds']:.1f} s); PyNNDescent "
        f"{sop['pynndescent_seconds']:.1f} s (after a numba warm-up of "
        f"{sop['pynndescent_warm_up_seconds']:.1f} s), recall "
        f"{sop['pynndescent_recall']:.3f}.\n")
    if recipes and "paper" in recipes:
      rate = recipes["paper"]["refresh_images_per_second"]
      lines.append(
          f"Refresh + rebuild at SOP size (paper recipe): "
          f"{sop['num_centres'] / rate:.1f} s of embedding at {rate:.0f} "
          f"img/s + {sop['exact_second_seconds']:.1f} s exact graph.\n")
  big = results.get("big_bank")
  if big:
    lines += ["| centres (128-d) | exact graph, k = 30 | peak device memory |",
              "| ---: | ---: | ---: |"]
    for r in big["graph"]:
      if r.get("skipped"):
        lines.append(f"| {r['num_centres']:,} | not run (~"
                     f"{r['predicted_seconds']:.0f} s by N^2) | |")
      else:
        lines.append(f"| {r['num_centres']:,} | {r['seconds']:.1f} s | "
                     f"{_gib(r['peak_device_bytes'])} |")
    for r in big["supply"]:
      lines.append(f"\nNeighbour supply at {r['num_centres']:,} centres: "
                   f"{r['ms_per_batch']:.3f} ms per batch of {r['batch']}.")
    lines.append("")
  pipe = results.get("pipeline")
  if pipe:
    stages = ", ".join(f"{k} {v:.2f}" for k, v in pipe["stage_ms"].items())
    lines += [f"Input pipeline, {pipe['num_records']:,} JPEGs, resize 256, "
              f"crop 256 (images/s); ms per image on one thread: {stages}:",
              "",
              "| threads | worker processes | batches | training transform | "
              "evaluation transform |", "| ---: | ---: | --- | ---: | ---: |"]
    rates = {(r["threads"], r["workers"], r.get("on_device", False),
              r["augment"]): r["images_per_second"] for r in pipe["rates"]}
    for threads, workers, on_device in dict.fromkeys(
        key[:3] for key in rates):
      kind = "uint8, normalised on device" if on_device else "float32"
      lines.append(f"| {threads} | {workers} | {kind} | "
                   f"{rates[(threads, workers, on_device, True)]:.0f} | "
                   f"{rates[(threads, workers, on_device, False)]:.0f} |")
    if "cached_evaluation" in pipe:
      lines.append(f"\nAn evaluation pass gathered from the cache of crops "
                   f"(`cache_gib`): {pipe['cached_evaluation']:.0f} img/s.")
    lines.append("")
  swap = results.get("swap")
  if swap:
    from experiments.bench_graph import format_swap
    lines.append(format_swap(swap))
  return "\n".join(lines)


def _run_phase(name: str, small: bool, out: pathlib.Path) -> None:
  result = PHASE_FUNCTIONS[name](small)
  (out / f"{name}.json").write_text(json.dumps(result, indent=1, default=str))


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", default=str(ROOT / "runs" / "bench_gpu"))
  parser.add_argument("--small", action="store_true",
                      help="tiny sizes: checks every code path on a CPU")
  parser.add_argument("--phases", nargs="+", default=list(PHASES),
                      choices=PHASES)
  parser.add_argument("--phase-timeout", type=float, default=240.0,
                      help="seconds each phase may run")
  parser.add_argument("--deadline", type=float, default=float("inf"),
                      help="seconds all phases together may run; a phase "
                      "gets what is left, and none starts with under 30 s")
  parser.add_argument("--phase", choices=PHASES, help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  if args.phase:  # a child process: one phase
    _run_phase(args.phase, args.small, out)
    return 0
  results = {"env": _device_summary()}
  (out / "env.json").write_text(json.dumps(results["env"]))
  print(json.dumps(results["env"]), flush=True)
  env = dict(os.environ, PYTHONUNBUFFERED="1")
  began = time.perf_counter()
  for name in args.phases:
    left = args.deadline - (time.perf_counter() - began)
    if left < 30:
      print(f"phase {name}: not run ({left:.0f} s left)", flush=True)
      continue
    command = [sys.executable, __file__, "--phase", name, "--out", str(out)]
    command += ["--small"] if args.small else []
    start = time.perf_counter()
    try:
      code = subprocess.run(command, env=env, cwd=ROOT,
                            timeout=min(args.phase_timeout, left)).returncode
    except subprocess.TimeoutExpired:
      code = "timeout"
    seconds = time.perf_counter() - start
    print(f"phase {name}: {'ok' if code == 0 else code} in {seconds:.0f} s",
          flush=True)
    path = out / f"{name}.json"
    if code == 0 and path.exists():
      results[name] = json.loads(path.read_text())
  print("\n" + format_tables(results))
  return 0


if __name__ == "__main__":
  sys.exit(main())

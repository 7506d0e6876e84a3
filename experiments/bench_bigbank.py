r"""Big banks on a CPU: 1M and 10M centres of 128-d (issue 13).

    NUMBA_CACHE_DIR=.numba_cache JAX_PLATFORMS=cpu \
        .venv/bin/python experiments/bench_bigbank.py --json runs/bigbank.json
    .venv/bin/python experiments/bench_bigbank.py --small   # 50k and 500k

Run time on the project's 2-core CPU machine: about 12 minutes for
``--phases graph refresh compressed decoded`` (the default leaves out
``decoded``, about 3.5 of them), about 2.5 with ``--small``. Memory: the
``compressed`` phase at 10M peaks at about 16 GiB, in its exact reference
search (JAX copies the 5.1 GB of float32 rows); the rest stays under 12 GiB.
``--phases ivf`` took about 4 minutes at 16 bytes per centre (5.5 at 64,
with ``--nprobes 1 8 32 128 512``) and peaks in the same exact search.

Each phase runs in a fresh (spawned) child process, so its peak resident
memory (``ru_maxrss``) is its own; "base RSS" is the child's resident memory
after imports and its data, before the measured calls.

Phases:

* ``graph`` (``--graph-n``, 1M): ``clustered_points`` (float32), the
  PyNNDescent graph with k = 30 (numba's compilation, ``warm_up()``, timed
  apart), recall@30 against ``exact_knn`` on ``--recall-rows`` sampled rows
  (self excluded, as in the graph), and the neighbour supply: ms per batch of
  64 for ``NeighbourGraph.rows``.
* ``refresh`` (``--graph-n``): ``CentreBank.refresh`` with ``k=None`` (no
  graph), i.e. what a refresh does with the embeddings apart from computing
  them and building the graph: the finite check, the shape check and the
  copy into the bank's ``[N, 128]`` float32 JAX state.
* ``compressed`` (``--compressed-n``, 10M): the same clusters generated in
  chunks (``chunked_clustered_points``) into one float32 array, an OPQ
  quantizer trained by ``compress`` on ``--train-rows`` sampled rows, every
  row encoded through the trained faiss index in chunks of 1M, then the
  neighbour supply by ADC search of all the codes for batches of 64 sampled
  rows (``CompressedBank.search``, JAX backend; faiss as a cross-check), and
  its recall@30 against ``exact_knn`` over the float32 rows (self excluded
  on both sides).
* ``ivf`` (not run by default; ``--compressed-n``, 10M): the same centres
  in a faiss inverted-file PQ index, ``OPQ{m},IVF{nlist},PQ{m}`` (m =
  ``--bytes-per-centre``, ``--nlist`` 4096, 256 with ``--small``), trained
  on ``max(--train-rows, 40 * nlist)`` sampled rows (the coarse k-means wants
  about 40 rows per list), all rows added in chunks of 1M; its serialized
  size, and for each of ``--nprobes`` (1 8 32 128) the seconds per batch of
  64 query rows (k = 31, self dropped; faiss's OpenMP threads, all cores)
  and recall@30 against the ``compressed`` phase's exact reference (same
  query rows). The library's ``CentreBank`` does not use such an index.
* ``decoded`` (not run by default): the ``graph`` phase's PyNNDescent build
  over the same centres compressed by ``compress`` (``--train-rows``
  training rows) and decoded, its recall@30 still against the float32
  centres' exact neighbours.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from experiments.bench_eval import _peak_rss_mib, _rss_mib, run_phase  # noqa: E402
from experiments.bench_graph import _timed, clustered_points  # noqa: E402

DIM = 128
K = 30
BATCH = 64
ENCODE_CHUNK = 1 << 20


def chunked_clustered_points(num_points: int, dim: int, seed: int,
                             chunk: int = ENCODE_CHUNK) -> np.ndarray:
  """``clustered_points``' distribution, generated chunk by chunk.

  The ``num_points // 50`` cluster means are drawn N(0, 1) from
  ``default_rng(seed)``; chunk ``i`` draws its rows' cluster labels and unit
  noise from ``default_rng([seed, i])`` and is written straight into the
  float32 output, so no float64 ``[N, D]`` array is ever held (10M x 128:
  5.1 GB in float32, 10.2 GB in float64). Same distribution as
  ``clustered_points``, not the same numbers.

  Returns:
    ``[num_points, dim]`` float32.
  """
  rng = np.random.default_rng(seed)
  num_clusters = max(1, num_points // 50)
  means = rng.normal(size=(num_clusters, dim))
  out = np.empty((num_points, dim), np.float32)
  for index, start in enumerate(range(0, num_points, chunk)):
    stop = min(start + chunk, num_points)
    chunk_rng = np.random.default_rng([seed, index])
    labels = chunk_rng.integers(num_clusters, size=stop - start)
    out[start:stop] = means[labels] + chunk_rng.normal(size=(stop - start,
                                                             dim))
  return out


def _reset_peak_rss() -> float:
  """Peak RSS so far (MiB); then starts a new peak (Linux: writing 5 to
  ``/proc/self/clear_refs`` resets the high-water mark ``ru_maxrss`` reads)."""
  peak = _peak_rss_mib()
  with open("/proc/self/clear_refs", "w") as clear_refs:
    clear_refs.write("5")
  return peak


def _sample_rows(num_points: int, count: int, seed: int) -> np.ndarray:
  rng = np.random.default_rng(seed)
  return np.sort(rng.choice(num_points, min(count, num_points),
                            replace=False))


def _drop_self(indices: np.ndarray, ids: np.ndarray, k: int) -> np.ndarray:
  """``[Q, k]``: each row of ``indices`` (``k + 1`` wide) without its own
  id (or without its last entry when the id is not there)."""
  out = np.empty((len(indices), k), indices.dtype)
  for row, (found, own) in enumerate(zip(indices, ids)):
    kept = found[found != own]
    out[row] = kept[:k]
  return out


def _supply_ms(fn, num_points: int, batches: int, seed: int) -> float:
  """Mean ms per call of ``fn(batch_rows)`` over ``batches`` random batches
  of ``BATCH`` rows."""
  rng = np.random.default_rng(seed)
  rows = [rng.integers(0, num_points, BATCH) for _ in range(batches)]
  start = time.perf_counter()
  for index in rows:
    fn(index)
  return 1e3 * (time.perf_counter() - start) / batches


def _graph_and_recall(points: np.ndarray, x: np.ndarray, args: dict) -> dict:
  """PyNNDescent graph over ``points``; its recall@k against the exact
  neighbours in ``x`` (float32) on sampled rows; the supply per batch."""
  from nngk_jax.knn import exact_knn
  from nngk_jax.neighbours import build_neighbour_graph, graph_recall, warm_up

  out = {"num_centres": len(x), "data_peak_rss_mib": _reset_peak_rss(),
         "base_rss_mib": _rss_mib()}
  out["warm_up_s"] = warm_up()
  graph, out["build_s"] = _timed(build_neighbour_graph, points, k=K,
                                 backend="pynndescent", seed=args["seed"])
  out["build_peak_rss_mib"] = _reset_peak_rss()
  rows = _sample_rows(len(x), args["recall_rows"], args["seed"])
  (exact, _), out["exact_sample_s"] = _timed(exact_knn, x[rows], x, k=K,
                                             query_ids=rows)
  out["recall_rows"] = int(rows.size)
  out["recall_at_k"] = graph_recall(graph.indices[rows], exact)
  out["exact_extrapolated_s"] = out["exact_sample_s"] * len(x) / rows.size
  out["supply_ms_per_batch"] = _supply_ms(graph.rows, len(x), 1000,
                                          args["seed"])
  out["graph_bytes"] = int(graph.indices.nbytes + graph.mask.nbytes)
  out["exact_and_supply_peak_rss_mib"] = _peak_rss_mib()
  return out


def phase_graph(args: dict) -> dict:
  """PyNNDescent graph of ``graph_n`` centres: time, recall, supply."""
  x = clustered_points(args["graph_n"], DIM, args["seed"])
  return _graph_and_recall(x, x, args)


def phase_decoded(args: dict) -> dict:
  """PyNNDescent graph of ``graph_n`` OPQ-decoded centres, its recall
  against the float32 centres' exact neighbours."""
  from nngk_jax.compress import compress

  x = clustered_points(args["graph_n"], DIM, args["seed"])
  labels = np.arange(len(x)) % max(len(x) // 50, 2)
  data_peak = _reset_peak_rss()
  bank, compress_s = _timed(
      compress, x, labels, bytes_per_centre=args["bytes_per_centre"],
      seed=args["seed"], max_training_points=args["train_rows"],
      opq_iterations=args["opq_iterations"])
  decoded = bank.decode()
  del bank
  out = _graph_and_recall(decoded, x, args)
  out.update(compress_s=compress_s, bytes_per_centre=args["bytes_per_centre"],
             compress_peak_rss_mib=out["data_peak_rss_mib"],
             data_peak_rss_mib=data_peak)
  return out


def phase_refresh(args: dict) -> dict:
  """``CentreBank.refresh`` of ``graph_n`` centres, without a graph."""
  from nngk_jax.bank import CentreBank

  x = clustered_points(args["graph_n"], DIM, args["seed"])
  labels = np.arange(len(x)) % max(len(x) // 50, 2)
  bank = CentreBank(labels, DIM, k=None)
  out = {"num_centres": len(x), "data_peak_rss_mib": _reset_peak_rss(),
         "base_rss_mib": _rss_mib()}
  state, out["init_state_s"] = _timed(bank.init_state)
  seconds = []
  for epoch in range(3):
    state, record = bank.refresh(state, epoch, lambda: x)
    state.centres.block_until_ready()
    seconds.append(record["refresh_seconds"])
  out["refresh_s"] = seconds
  out["state_bytes"] = int(state.centres.nbytes)
  out["refresh_peak_rss_mib"] = _peak_rss_mib()
  return out


def _big_centres(args: dict) -> tuple[np.ndarray, dict]:
  """``compressed_n`` float32 centres (``chunked_clustered_points``) and the
  report's first entries: their size, generation time and peak RSS."""
  n = args["compressed_n"]
  x, generate_s = _timed(chunked_clustered_points, n, DIM, args["seed"])
  return x, {"num_centres": n, "generate_s": generate_s,
             "float32_bytes": int(x.nbytes),
             "data_peak_rss_mib": _reset_peak_rss(), "base_rss_mib": _rss_mib()}


def _query_batches(num_points: int, args: dict):
  """The ``query_rows`` sampled query rows and their batches of ``BATCH``."""
  queries = _sample_rows(num_points, args["query_rows"], args["seed"] + 2)
  return queries, [queries[i:i + BATCH]
                   for i in range(0, len(queries), BATCH)]


def _exact_reference(x: np.ndarray, queries: np.ndarray,
                     out: dict) -> np.ndarray:
  """``[Q, K]`` exact float32 neighbours of ``x[queries]`` in ``x`` (self
  excluded); its time and peak RSS go into ``out``."""
  from nngk_jax.knn import exact_knn

  (exact, _), out["exact_s"] = _timed(exact_knn, x[queries], x, k=K,
                                      query_ids=queries)
  out["query_rows"] = int(len(queries))
  out["exact_s_per_query"] = out["exact_s"] / len(queries)
  out["exact_peak_rss_mib"] = _peak_rss_mib()
  return exact


def phase_compressed(args: dict) -> dict:
  """OPQ bank of ``compressed_n`` centres; ADC supply and its recall."""
  from nngk_jax.compress import CompressedBank, compress
  from nngk_jax.neighbours import graph_recall

  x, out = _big_centres(args)
  n, seed = len(x), args["seed"]
  labels = np.arange(n) % max(n // 50, 2)
  train = _sample_rows(n, args["train_rows"], seed + 1)
  trained, out["train_s"] = _timed(
      compress, x[train], labels[train],
      bytes_per_centre=args["bytes_per_centre"], seed=seed,
      max_training_points=len(train), opq_iterations=args["opq_iterations"])
  out["train_peak_rss_mib"] = _reset_peak_rss()
  index = trained.to_faiss()

  def encode():
    codes = np.empty((n, trained.bytes_per_centre), np.uint8)
    for start in range(0, n, ENCODE_CHUNK):
      stop = min(start + ENCODE_CHUNK, n)
      codes[start:stop] = index.sa_encode(x[start:stop])
    return codes

  codes, out["encode_s"] = _timed(encode)
  bank = CompressedBank(trained.rotation, trained.codebooks, codes, labels)
  out.update(train_rows=int(len(train)), bytes_per_centre=bank.bytes_per_centre,
             nbytes=int(bank.nbytes), opq_iterations=args["opq_iterations"],
             encode_peak_rss_mib=_reset_peak_rss())
  queries, batches = _query_batches(n, args)
  bank.search(x[batches[0]], K + 1)  # XLA compiles the chunk shape
  found, jax_s = [], []
  for ids in batches:
    (indices, _), seconds = _timed(bank.search, x[ids], K + 1)
    found.append(_drop_self(indices, ids, K))
    jax_s.append(seconds)
  out["adc_jax_s_per_batch"] = jax_s
  out["adc_jax_peak_rss_mib"] = _reset_peak_rss()
  (faiss_indices, _), out["adc_faiss_s_per_batch"] = _timed(
      bank.search, x[batches[0]], K + 1, backend="faiss")
  out["adc_faiss_peak_rss_mib"] = _reset_peak_rss()
  exact = _exact_reference(x, queries, out)
  out["recall_at_k_jax"] = graph_recall(np.concatenate(found), exact)
  out["recall_at_k_faiss_first_batch"] = graph_recall(
      _drop_self(faiss_indices, batches[0], K), exact[:len(batches[0])])
  return out


def phase_ivf(args: dict) -> dict:
  """faiss IVF-PQ index (``OPQ{m},IVF{nlist},PQ{m}``) over ``compressed_n``
  centres: build, size, and its supply and recall for several ``nprobe``."""
  import faiss
  from nngk_jax.neighbours import graph_recall

  faiss.omp_set_num_threads(os.cpu_count())
  x, out = _big_centres(args)
  n, seed = len(x), args["seed"]
  m, nlist = args["bytes_per_centre"], args["nlist"]
  index = faiss.index_factory(DIM, f"OPQ{m},IVF{nlist},PQ{m}")
  faiss.downcast_VectorTransform(index.chain.at(0)).niter = (
      args["opq_iterations"])
  # k-means of the coarse quantizer wants >= ~40 training rows per list.
  train = _sample_rows(n, max(args["train_rows"], 40 * nlist), seed + 1)
  _, out["train_s"] = _timed(index.train, np.ascontiguousarray(x[train]))
  out.update(train_rows=int(len(train)), bytes_per_centre=m, nlist=nlist,
             opq_iterations=args["opq_iterations"],
             faiss_threads=faiss.omp_get_max_threads(),
             train_peak_rss_mib=_reset_peak_rss())

  def add():
    for start in range(0, n, ENCODE_CHUNK):
      index.add(x[start:min(start + ENCODE_CHUNK, n)])

  _, out["add_s"] = _timed(add)
  out["add_peak_rss_mib"] = _reset_peak_rss()
  out["index_bytes"] = int(len(faiss.serialize_index(index)))
  ivf = faiss.extract_index_ivf(index)
  queries, batches = _query_batches(n, args)
  found, out["s_per_batch"] = {}, {}
  for nprobe in args["nprobes"]:
    ivf.nprobe = nprobe
    found[nprobe], out["s_per_batch"][nprobe] = [], []
    for ids in batches:
      (_, indices), seconds = _timed(index.search, x[ids], K + 1)
      found[nprobe].append(_drop_self(indices, ids, K))
      out["s_per_batch"][nprobe].append(seconds)
  out["search_peak_rss_mib"] = _reset_peak_rss()
  exact = _exact_reference(x, queries, out)
  out["recall_at_k"] = {nprobe: graph_recall(np.concatenate(rows), exact)
                        for nprobe, rows in found.items()}
  return out


PHASES = {"graph": phase_graph, "refresh": phase_refresh,
          "compressed": phase_compressed, "decoded": phase_decoded,
          "ivf": phase_ivf}


def _child(phase: str, args: dict, queue) -> None:
  """Runs one phase and reports it (each phase reads its own peaks)."""
  import jax  # noqa: F401  (imported before any baseline is read)
  start = time.perf_counter()
  out = PHASES[phase](args)
  queue.put(dict(phase=phase, seconds=time.perf_counter() - start,
                 result=out))


def _mib(value: float) -> str:
  return f"{value:,.0f} MiB"


def _head(*cells: str, text: tuple[int, ...] = ()) -> list[str]:
  """A markdown table's header row and its alignment row (columns in
  ``text`` left-aligned, the others right-aligned)."""
  return ["| " + " | ".join(cells) + " |",
          "| " + " | ".join("---" if column in text else "---:"
                            for column in range(len(cells))) + " |"]


def format_tables(reports: dict) -> str:
  """The reports as markdown tables (peak RSS: of that step alone, the
  process's base included)."""
  lines = []
  graphs = [name for name in ("graph", "decoded") if name in reports]
  if graphs:
    lines += _head("centres", "vectors", f"PyNNDescent k={K} (peak RSS)",
                   "numba warm-up", f"recall@{K} (rows)",
                   "exact, sampled rows (peak RSS)",
                   f"supply / batch of {BATCH}", "data (base RSS)", text=(1,))
  for name in graphs:
    r = reports[name]["result"]
    vectors = ("float32" if name == "graph" else
               f"OPQ {r['bytes_per_centre']} B, decoded (compress "
               f"{r['compress_s']:.0f} s, {_mib(r['compress_peak_rss_mib'])})")
    lines.append(
        f"| {r['num_centres']:,} | {vectors} | {r['build_s']:.1f} s "
        f"({_mib(r['build_peak_rss_mib'])}) | {r['warm_up_s']:.1f} s | "
        f"{r['recall_at_k']:.4f} ({r['recall_rows']}) | "
        f"{r['exact_sample_s']:.1f} s ({_mib(r['exact_and_supply_peak_rss_mib'])})"
        f" | {r['supply_ms_per_batch']:.3f} ms | "
        f"{_mib(r['data_peak_rss_mib'])} ({_mib(r['base_rss_mib'])}) |")
  if graphs:
    lines.append("")
  if "refresh" in reports:
    r = reports["refresh"]["result"]
    lines += _head("centres", "init_state", "refresh (3 tries)", "state",
                   "refresh peak RSS (base)") + [
        f"| {r['num_centres']:,} | {r['init_state_s']:.2f} s | "
        + ", ".join(f"{s:.2f}" for s in r["refresh_s"])
        + f" s | {r['state_bytes'] / 2**20:,.0f} MiB | "
        f"{_mib(r['refresh_peak_rss_mib'])} ({_mib(r['base_rss_mib'])}) |", ""]
  if "compressed" in reports:
    r = reports["compressed"]["result"]
    lines += _head("centres", "float32 (generate, peak RSS)", "OPQ codes",
                   f"train, {r['train_rows']:,} rows (peak RSS)",
                   "encode all (peak RSS)") + [
        f"| {r['num_centres']:,} | {r['float32_bytes'] / 1e9:.2f} GB "
        f"({r['generate_s']:.0f} s, {_mib(r['data_peak_rss_mib'])}) | "
        f"{r['bytes_per_centre']} B/centre, {r['nbytes'] / 1e6:,.0f} MB | "
        f"{r['train_s']:.1f} s ({_mib(r['train_peak_rss_mib'])}) | "
        f"{r['encode_s']:.1f} s ({_mib(r['encode_peak_rss_mib'])}) |", ""]
    lines += _head(f"ADC search, batch of {BATCH}, k={K}+1",
                   "seconds per batch", "peak RSS", f"recall@{K} (rows)",
                   text=(0,)) + [
        f"| JAX ({len(r['adc_jax_s_per_batch'])} batches) | "
        + ", ".join(f"{s:.2f}" for s in r["adc_jax_s_per_batch"])
        + f" | {_mib(r['adc_jax_peak_rss_mib'])} | "
        f"{r['recall_at_k_jax']:.4f} ({r['query_rows']}) |",
        f"| faiss (first batch) | {r['adc_faiss_s_per_batch']:.2f} | "
        f"{_mib(r['adc_faiss_peak_rss_mib'])} | "
        f"{r['recall_at_k_faiss_first_batch']:.4f} ({BATCH}) |",
        f"| exact float32 (`exact_knn`, {r['query_rows']} rows) | "
        f"{r['exact_s_per_query'] * BATCH:.2f} | "
        f"{_mib(r['exact_peak_rss_mib'])} | 1 |", ""]
  if "ivf" in reports:
    r = reports["ivf"]["result"]
    lines += _head("centres", "index",
                   f"train, {r['train_rows']:,} rows (peak RSS)",
                   "add all (peak RSS)", "serialized index", text=(1,)) + [
        f"| {r['num_centres']:,} | OPQ{r['bytes_per_centre']},IVF{r['nlist']},"
        f"PQ{r['bytes_per_centre']} | {r['train_s']:.1f} s "
        f"({_mib(r['train_peak_rss_mib'])}) | {r['add_s']:.1f} s "
        f"({_mib(r['add_peak_rss_mib'])}) | {r['index_bytes'] / 1e6:,.0f} MB |",
        ""]
    lines += _head("nprobe", f"s per batch of {BATCH} (k={K}+1)",
                   f"recall@{K} ({r['query_rows']} rows)")
    for nprobe, seconds in r["s_per_batch"].items():
      lines.append(f"| {nprobe} | " + ", ".join(f"{s:.3f}" for s in seconds)
                   + f" | {r['recall_at_k'][nprobe]:.4f} |")
    lines += [f"\nsearch peak RSS {_mib(r['search_peak_rss_mib'])}; exact "
              f"float32 {r['exact_s_per_query'] * BATCH:.2f} s per batch "
              f"({_mib(r['exact_peak_rss_mib'])})", ""]
  return "\n".join(lines)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--small", action="store_true",
                      help="50k and 500k centres instead of 1M and 10M")
  parser.add_argument("--graph-n", type=int, default=1_000_000)
  parser.add_argument("--compressed-n", type=int, default=10_000_000)
  parser.add_argument("--recall-rows", type=int, default=1000)
  parser.add_argument("--query-rows", type=int, default=256)
  parser.add_argument("--train-rows", type=int, default=100_000)
  parser.add_argument("--bytes-per-centre", type=int, default=16)
  parser.add_argument("--opq-iterations", type=int, default=20)
  parser.add_argument("--nlist", type=int, default=4096,
                      help="ivf: inverted lists (256 with --small)")
  parser.add_argument("--nprobes", type=int, nargs="+",
                      default=[1, 8, 32, 128], help="ivf: lists scanned")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--phases", nargs="+", choices=sorted(PHASES),
                      default=["graph", "refresh", "compressed"])
  parser.add_argument("--json", type=pathlib.Path, default=None,
                      help="also write every report to this JSON file")
  parsed = parser.parse_args()
  args = {key: getattr(parsed, key) for key in (
      "graph_n", "compressed_n", "recall_rows", "query_rows", "train_rows",
      "bytes_per_centre", "opq_iterations", "nlist", "nprobes", "seed")}
  if parsed.small:
    args.update(graph_n=50_000, compressed_n=500_000, train_rows=20_000,
                nlist=256)
  print(f"# {args}", flush=True)
  reports = {}
  for phase in parsed.phases:
    reports[phase] = run_phase(phase, args, _child)
    print(json.dumps(reports[phase]), flush=True)
    if parsed.json:  # after each phase: a later one may not finish
      parsed.json.parent.mkdir(parents=True, exist_ok=True)
      parsed.json.write_text(json.dumps(dict(args=args, reports=reports),
                                        indent=1))
  print(format_tables(reports))


if __name__ == "__main__":
  main()

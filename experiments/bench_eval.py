r"""Evaluation at Stanford Online Products scale: time, peak memory, quality.

    NUMBA_CACHE_DIR=.numba_cache JAX_PLATFORMS=cpu \
        .venv/bin/python experiments/bench_eval.py            # 60,502 x 512
    .venv/bin/python experiments/bench_eval.py --n 6000 --compare-sklearn

Expected run time on the project's 2-core CPU machine at full size: about
18 minutes, of which about 15 for the PyNNDescent phase (its search of
1,001 neighbours per query runs on one core); without it
(``--phases topk exact nmi nmi-random``) about 4 minutes. ``--n 6000``
takes under 2 minutes (mostly numba compiling NN-descent);
``--compare-sklearn`` adds about 2 minutes there.

The data imitate the SOP test split (``sop_like_embeddings``): 60,502 unit
vectors in 512-d, 11,316 classes of 2 to 12 images, each class a Gaussian
around its own mean, with noise set so that Recall@1 is about 0.78 (the range
of good SOP models). Each phase runs in a fresh child process, so its peak
resident memory (``ru_maxrss``; JAX's buffers are outside ``tracemalloc``'s
view) is its own; "base RSS" is the child's resident memory after imports
and data, before the measured call.

Phases:

* ``topk``: one chunk of the exact search (the default chunk of
  ``exact_knn``) against all points: the distance matmul alone, then with
  ``jax.lax.top_k``, ``jax.lax.approx_max_k`` and NumPy's ``argpartition``
  for k = 1000, in ms per query.
* ``exact``: ``retrieval_metrics(knn_func=knn_function("exact"),
  nmi=False)``, Recall@1, 10, 100, 1000, MAP@R and R-precision: the
  symmetric pass of ``nngk_jax.metrics.self_retrieval``.
* ``exact-list``: the same metrics from a plain list of the 1,000 exact
  neighbours of every query (``knn.exact_knn``), as ``retrieval_metrics``
  computes them for a search other than ``ExactKnn``, with the change of
  every metric from ``exact``.
* ``full``: ``retrieval_metrics`` with every default, NMI included: the
  whole evaluation as the trainer runs it.
* ``pynndescent``: the same with ``knn_function("pynndescent")`` (after
  ``neighbours.warm_up()``, timed apart: numba's compilation), with its
  ``search_recall`` on 1,000 sampled queries and the change of every metric
  from exact.
* ``nmi``: ``nmi_kmeans`` with its default (``"auto"``: JAX k-means,
  batched greedy k-means++ seeding, up to 20 Lloyd iterations).
* ``nmi-random``: JAX k-means with random seeding, then NMI.
* ``nmi-sklearn`` (``--compare-sklearn``; small ``--n`` only): the old path,
  scikit-learn ``KMeans`` with k-means++ and 10 restarts, and one restart,
  and ``MiniBatchKMeans``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import pathlib
import resource
import sys
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SOP_TEST_IMAGES = 60_502
SOP_TEST_CLASSES = 11_316
ALL_PHASES = ("topk", "exact", "pynndescent", "nmi", "nmi-random")


def sop_like_embeddings(
    num_examples: int = SOP_TEST_IMAGES,
    num_classes: int = SOP_TEST_CLASSES,
    dim: int = 512,
    *,
    latent_dim: int = 64,
    noise_variance: float = 0.5,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
  r"""Synthetic embeddings shaped like the SOP test split.

  Class sizes are :math:`2 + \text{Binomial}(10, p)`, :math:`p` set for the
  mean size :math:`N / C`, then nudged one at a time (within 2..12) until
  they sum to :math:`N`. Class means are standard normal in a random
  ``latent_dim``-dimensional subspace; each embedding is its class mean plus
  isotropic noise of variance ``noise_variance`` per dimension, then scaled
  to unit length. Rows are shuffled.

  Args:
    num_examples: ``N``, in ``[2C, 12C]``.
    num_classes: ``C``.
    dim: ``D``.
    latent_dim: dimension of the subspace of the class means.
    noise_variance: per-dimension variance of the within-class noise.
    seed: seed of the generator.

  Returns:
    ``(embeddings [N, D] float32, labels [N] int32)``.

  Raises:
    ValueError: when ``N`` is outside ``[2C, 12C]``.

  Examples:
    >>> x, y = sop_like_embeddings(100, 20, 8, latent_dim=4)
    >>> x.shape, x.dtype, int(np.bincount(y).min()) >= 2
    ((100, 8), dtype('float32'), True)
  """
  if not 2 * num_classes <= num_examples <= 12 * num_classes:
    raise ValueError(
        f"sop_like_embeddings: classes of 2 to 12 need 2C <= N <= 12C; got"
        f" N={num_examples}, C={num_classes}")
  rng = np.random.default_rng(seed)
  p = (num_examples / num_classes - 2) / 10
  sizes = 2 + rng.binomial(10, p, size=num_classes)
  while (gap := num_examples - int(sizes.sum())) != 0:
    pick = rng.integers(num_classes, size=abs(gap))
    sizes[pick] = np.clip(sizes[pick] + np.sign(gap), 2, 12)
  labels = rng.permutation(np.repeat(np.arange(num_classes, dtype=np.int32), sizes))
  basis = np.linalg.qr(rng.normal(size=(dim, latent_dim)))[0].T.astype(np.float32)
  means = rng.standard_normal((num_classes, latent_dim), np.float32) @ basis
  embeddings = means[labels]
  embeddings += np.sqrt(noise_variance, dtype=np.float32) * rng.standard_normal(
      embeddings.shape, np.float32)
  embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
  return embeddings, labels


def _rss_mib() -> float:
  """Current resident memory of this process, MiB."""
  with open("/proc/self/status") as status:
    for line in status:
      if line.startswith("VmRSS:"):
        return int(line.split()[1]) / 1024
  return float("nan")


def _peak_rss_mib() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _phase_topk(x, labels, args) -> dict:
  import functools

  import jax
  import jax.numpy as jnp

  from nngk_jax import geometry, knn
  del labels
  n = x.shape[0]
  k = min(1000, n - 1)
  chunk = max(1, min(n, knn._DEFAULT_MAX_ELEMENTS // n))  # exact_knn's default
  data = jnp.asarray(x)
  queries = jnp.asarray(x[:chunk])
  # exact_knn's formulation: the expansion, one matmul per chunk.
  squared = functools.partial(geometry.pairwise_squared_distances,
                              method="matmul")
  dist = jax.jit(squared)

  @functools.partial(jax.jit, static_argnames="k")
  def top_k(q, d, k):
    return jax.lax.top_k(-squared(q, d), k)

  @functools.partial(jax.jit, static_argnames="k")
  def approx_max_k(q, d, k):
    return jax.lax.approx_max_k(-squared(q, d), k)

  def per_query_ms(fn, repeats=3):
    jax.block_until_ready(fn())  # Compile.
    start = time.perf_counter()
    for _ in range(repeats):
      jax.block_until_ready(fn())
    return 1e3 * (time.perf_counter() - start) / repeats / chunk

  out = {"chunk": chunk, "k": k}
  out["distances_ms"] = per_query_ms(lambda: dist(queries, data))
  out["lax_top_k_ms"] = per_query_ms(lambda: top_k(queries, data, k=k))
  out["approx_max_k_ms"] = per_query_ms(lambda: approx_max_k(queries, data, k=k))

  def argpartition():
    d2 = np.asarray(dist(queries, data))
    part = np.argpartition(d2, k - 1, axis=1)[:, :k]
    order = np.argsort(np.take_along_axis(d2, part, axis=1), axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1)

  out["numpy_argpartition_ms"] = per_query_ms(argpartition)
  return out


def _phase_exact(x, labels, args) -> dict:
  from nngk_jax import metrics
  return metrics.retrieval_metrics(x, labels, recall_ks=args["recall_ks"],
                                   nmi=False,
                                   knn_func=metrics.knn_function("exact"))


def _phase_exact_list(x, labels, args) -> dict:
  """The exact search as a plain neighbour list (k = 1000 at SOP size).

  What ``retrieval_metrics`` did before the symmetric pass of
  ``nngk_jax.metrics.self_retrieval``: a search that is not an ``ExactKnn``
  takes this path.
  """
  from nngk_jax import knn, metrics

  def listed(queries, data, k, query_ids=None):
    return knn.exact_knn(queries, data, k=k, query_ids=query_ids)[0]

  return metrics.retrieval_metrics(x, labels, recall_ks=args["recall_ks"],
                                   nmi=False, knn_func=listed)


def _phase_full(x, labels, args) -> dict:
  """The whole evaluation as the trainer runs it: every default."""
  from nngk_jax import metrics
  return metrics.retrieval_metrics(x, labels, recall_ks=args["recall_ks"])


def _phase_pynndescent(x, labels, args) -> dict:
  from nngk_jax import metrics, neighbours
  warm = neighbours.warm_up("pynndescent")
  start = time.perf_counter()
  out = metrics.retrieval_metrics(
      x, labels, recall_ks=args["recall_ks"], nmi=False,
      knn_func=metrics.knn_function("pynndescent", search_recall_queries=1000))
  out["seconds_after_warm_up"] = time.perf_counter() - start
  out["warm_up_s"] = warm
  return out


def _phase_nmi(x, labels, args) -> dict:
  from nngk_jax import metrics
  return {"nmi": metrics.nmi_kmeans(x, labels)}


def _phase_nmi_random(x, labels, args) -> dict:
  from sklearn.metrics import normalized_mutual_info_score

  from nngk_jax import metrics
  assignments, _ = metrics.kmeans(x, len(np.unique(labels)), init="random")
  return {"nmi": float(normalized_mutual_info_score(labels, assignments))}


def _phase_nmi_sklearn(x, labels, args) -> dict:
  from sklearn.cluster import KMeans, MiniBatchKMeans
  from sklearn.metrics import normalized_mutual_info_score
  num_clusters = len(np.unique(labels))
  out = {}
  for name, estimator in [
      ("kmeans++_n_init=10", KMeans(num_clusters, n_init=10, random_state=0)),
      ("kmeans++_n_init=1", KMeans(num_clusters, n_init=1, random_state=0)),
      ("minibatch_random", MiniBatchKMeans(num_clusters, init="random", n_init=1,
                                           batch_size=4096, random_state=0)),
      ("minibatch_kmeans++", MiniBatchKMeans(num_clusters, n_init=1,
                                             batch_size=4096, random_state=0)),
  ]:
    start = time.perf_counter()
    clusters = estimator.fit_predict(x)
    out[f"{name}_s"] = time.perf_counter() - start
    out[f"{name}_nmi"] = float(normalized_mutual_info_score(labels, clusters))
  return out


_PHASES = {
    "topk": _phase_topk,
    "exact": _phase_exact,
    "exact-list": _phase_exact_list,
    "full": _phase_full,
    "pynndescent": _phase_pynndescent,
    "nmi": _phase_nmi,
    "nmi-random": _phase_nmi_random,
    "nmi-sklearn": _phase_nmi_sklearn,
}


def _child(phase: str, args: dict, queue) -> None:
  """Runs one phase on freshly generated data and reports to ``queue``."""
  x, labels = sop_like_embeddings(args["n"], args["num_classes"], args["dim"],
                                  seed=args["seed"])
  import jax  # noqa: F401  (imported before the baseline is read)

  import nngk_jax.metrics  # noqa: F401
  base = _rss_mib()
  start = time.perf_counter()
  out = _PHASES[phase](x, labels, args)
  seconds = time.perf_counter() - start
  queue.put(dict(phase=phase, seconds=seconds, base_rss_mib=base,
                 peak_rss_mib=_peak_rss_mib(), result=out))


def run_phase(phase: str, args: dict, child=None) -> dict:
  """Runs ``phase`` in a fresh (spawned) process; returns its report.

  ``child(phase, args, queue)`` (default: this module's) runs there and puts
  the report on ``queue``; it must be importable by name (module level).
  """
  context = multiprocessing.get_context("spawn")
  queue = context.Queue()
  process = context.Process(target=child or _child,
                            args=(phase, args, queue))
  process.start()
  report = queue.get()
  process.join()
  return report


def _format(report: dict, exact: dict | None) -> str:
  head = (f"## {report['phase']}: {report['seconds']:.1f} s, peak RSS"
          f" {report['peak_rss_mib']:.0f} MiB (base {report['base_rss_mib']:.0f} MiB)")
  lines = [head]
  for name, value in report["result"].items():
    line = f"  {name}: {value:.4f}" if isinstance(value, float) else f"  {name}: {value}"
    if exact and name in exact and name != "search_recall":
      line += f"  (exact {exact[name]:.4f}, diff {value - exact[name]:+.4f})"
    lines.append(line)
  return "\n".join(lines)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--n", type=int, default=SOP_TEST_IMAGES,
                      help="number of embeddings (default: SOP's 60,502)")
  parser.add_argument("--num-classes", type=int, default=None,
                      help="default: n * 11,316 / 60,502, as in SOP")
  parser.add_argument("--dim", type=int, default=512)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--recall-ks", type=int, nargs="+", default=[1, 10, 100, 1000])
  parser.add_argument("--phases", nargs="+", choices=sorted(_PHASES),
                      default=list(ALL_PHASES))
  parser.add_argument("--compare-sklearn", action="store_true",
                      help="add the nmi-sklearn phase (hours at full size)")
  parser.add_argument("--json", type=pathlib.Path, default=None,
                      help="also write every report to this JSON file")
  parsed = parser.parse_args()
  num_classes = parsed.num_classes or max(1, round(
      parsed.n * SOP_TEST_CLASSES / SOP_TEST_IMAGES))
  args = dict(n=parsed.n, num_classes=num_classes, dim=parsed.dim,
              seed=parsed.seed, recall_ks=parsed.recall_ks)
  phases = list(parsed.phases)
  if parsed.compare_sklearn and "nmi-sklearn" not in phases:
    phases.append("nmi-sklearn")
  print(f"# {parsed.n:,} x {parsed.dim} embeddings, {num_classes:,} classes;"
        f" phases {' '.join(phases)}", flush=True)
  reports, exact = [], None
  start = time.perf_counter()
  for phase in phases:
    report = run_phase(phase, args)
    if phase == "exact":
      exact = report["result"]
    reports.append(report)
    print(_format(report, exact if phase in ("pynndescent", "exact-list")
                  else None), flush=True)
  print(f"total {time.perf_counter() - start:.0f} s")
  if parsed.json:
    parsed.json.write_text(json.dumps(dict(args=args, reports=reports), indent=1))


if __name__ == "__main__":
  main()

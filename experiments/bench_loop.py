r"""The training loop against pytorch-metric-learning's, and the refresh.

Ratios measured in one run on the glyph benchmark (600 classes: 4,800
training images, 32x32 grey), backbone ``conv4`` + 128-d head, batch 64,
Adam 1e-3, Proxy-Anchor with proxies at 100x: the same data, architecture,
batches and optimiser on both sides (``experiments/peer.py`` runs them).

0. **Pooling**: conv4's train step and eval forward with its 2x2 max
   pooling as flax's ``nn.max_pool`` (XLA reduce_window, whose gradient is
   select-and-scatter) and as ``models.pool_2x2`` (reshape + max), the one
   conv4 uses: what the profile of the step pointed at.
1. **Loop vs peer**: nngk-jax's training images/s over PML's (torch CPU), the
   median over epochs of each side's own count (after the first step, so
   JAX's compilation is left out, as torch has none). Target: at least 1.0.
2. **Refresh vs loop**: NNGK's centre refresh (eval-mode embedding of the
   whole training split) in images/s over the NNGK training loop's, and the
   share of an epoch that refresh + graph rebuild take at
   ``refresh_every=1``. Targets: at least 2.5x, at most 10%.

Run:   make bench          (this is its first part; needs `make peer`'s
                            virtualenv .venv-peer for item 1, else skipped)
       python experiments/bench_loop.py --epochs 2
Time:  about 3 minutes on a quiet 2-core CPU (2 epochs per side).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import tempfile

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from experiments import peer  # noqa: E402
from nngk_jax import data as datalib  # noqa: E402
from nngk_jax import parallel  # noqa: E402

NUM_CLASSES = 600


def _settings(dataset, epochs: int) -> dict:
  return {"epochs": epochs, "batch_size": 64, "embed_dim": 128, "lr": 1e-3,
          "proxy_lr_multiplier": 100.0, "ours_normalize": "objective",
          "data_options": {"num_classes": NUM_CLASSES},
          "num_train": len(dataset.train)}


def bench_loop(epochs: int = 2, peer_python: str | None = None,
               workdir: str | None = None) -> dict:
  """Images/s of both loops and of the refresh, and their ratios."""
  dataset = datalib.load_dataset(
      "glyphs", **peer.data_options("glyphs", {"num_classes": NUM_CLASSES}))
  settings = _settings(dataset, epochs)
  run_dir = pathlib.Path(workdir or tempfile.mkdtemp(prefix="bench_loop_"))
  run_dir.mkdir(parents=True, exist_ok=True)
  result: dict = {"epochs": epochs, "num_train": len(dataset.train)}
  ours = peer.run_ours("glyphs", "proxy_anchor", 0, settings, run_dir, [])
  result["ours_images_per_second"] = ours["images_per_second"]
  try:
    python = peer.check_peer_python(peer_python or peer.PEER_PYTHON)
  except FileNotFoundError as error:
    print(f"loop vs peer skipped: {error}", file=sys.stderr)
  else:
    npz = peer.export_npz(dataset, run_dir / "data.npz")
    theirs = peer.run_pml(python, npz, "proxy_anchor", 0, settings, run_dir,
                          save_embeddings=False)
    result["peer_images_per_second"] = theirs["images_per_second"]
    result["loop_vs_peer"] = (ours["images_per_second"]
                              / theirs["images_per_second"])
  # NNGK: its refresh against its own loop.
  nngk = peer.run_ours("glyphs", "nngk", 0, settings, run_dir, [])
  history = [json.loads(line) for line in
             (run_dir / "nngk_seed0" / "history.jsonl").read_text().splitlines()]
  refresh = np.median([len(dataset.train) / r["refresh_seconds"]
                       for r in history])
  epoch = np.median([r["epoch_seconds"] for r in history])
  overhead = np.median([r["refresh_seconds"] + r["graph_seconds"]
                        for r in history])
  result.update({
      "nngk_images_per_second": nngk["images_per_second"],
      "refresh_images_per_second": float(refresh),
      "refresh_vs_loop": float(refresh / nngk["images_per_second"]),
      "refresh_and_graph_share_of_epoch": float(overhead / (epoch + overhead)),
  })
  return result


def _step_seconds(pool, batch_size: int, steps: int) -> tuple[float, float]:
  """Seconds per conv4 train step (Adam) and per eval forward of 256."""
  import functools  # pylint: disable=g-import-not-at-top
  import time  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  from nngk_jax import models  # pylint: disable=g-import-not-at-top
  original = models.pool_2x2
  models.pool_2x2 = pool
  try:
    net = models.EmbeddingNet(backbone=models.ConvNet(), embed_dim=128)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(batch_size, 32, 32, 1)), jnp.float32)
    big = jnp.asarray(rng.normal(size=(256, 32, 32, 1)), jnp.float32)
    variables = net.init(jax.random.key(0), x, train=False)
    tx = optax.adam(1e-3)
    params, stats = variables["params"], variables["batch_stats"]
    opt = tx.init(params)

    @functools.partial(jax.jit, donate_argnums=(0, 1, 2))
    def step(params, stats, opt):
      def loss(p):
        (emb, _), new = net.apply({"params": p, "batch_stats": stats}, x,
                                  train=True, mutable=["batch_stats"])
        return jnp.mean(emb ** 2), new["batch_stats"]
      (_, stats), grads = jax.value_and_grad(loss, has_aux=True)(params)
      updates, opt = tx.update(grads, opt, params)
      return optax.apply_updates(params, updates), stats, opt

    forward = jax.jit(lambda p, s: net.apply({"params": p, "batch_stats": s},
                                             big, train=False)[0])
    params, stats, opt = step(params, stats, opt)
    jax.block_until_ready(forward(params, stats))
    start = time.perf_counter()
    for _ in range(steps):
      params, stats, opt = step(params, stats, opt)
    jax.block_until_ready(params)
    train_s = (time.perf_counter() - start) / steps
    start = time.perf_counter()
    for _ in range(max(steps // 4, 1)):
      jax.block_until_ready(forward(params, stats))
    eval_s = (time.perf_counter() - start) / max(steps // 4, 1)
    return train_s, eval_s
  finally:
    models.pool_2x2 = original


def bench_pooling(batch_size: int = 64, steps: int = 40) -> dict:
  """conv4's step with its 2x2 max pooling written two ways, in one run.

  ``reduce_window``: flax's ``nn.max_pool`` (XLA reduce_window; its
  gradient is select-and-scatter). ``reshape``: ``models.pool_2x2``, a
  reshape and a max reduction, what conv4 uses.
  """
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  from nngk_jax import models  # pylint: disable=g-import-not-at-top
  ways = {"reduce_window": lambda x, kind="max": nn.max_pool(
              x, (2, 2), strides=(2, 2)),
          "reshape": models.pool_2x2}
  result = {}
  for name, pool in ways.items():
    train_s, eval_s = _step_seconds(pool, batch_size, steps)
    result[name] = {"train_images_per_second": batch_size / train_s,
                    "eval_images_per_second": 256 / eval_s}
  result["train_speedup"] = (result["reshape"]["train_images_per_second"]
                             / result["reduce_window"]["train_images_per_second"])
  result["eval_speedup"] = (result["reshape"]["eval_images_per_second"]
                            / result["reduce_window"]["eval_images_per_second"])
  return result


def format_pooling(result: dict) -> str:
  lines = ["| conv4 2x2 max pooling | train step img/s (batch 64) | eval forward img/s (batch 256) |",
           "| --- | ---: | ---: |"]
  for name in ("reduce_window", "reshape"):
    r = result[name]
    lines.append(f"| {name} | {r['train_images_per_second']:.0f} | "
                 f"{r['eval_images_per_second']:.0f} |")
  lines.append(f"| **reshape / reduce_window** | **{result['train_speedup']:.2f}x** | "
               f"**{result['eval_speedup']:.2f}x** |")
  return "\n".join(lines)


def format_table(result: dict) -> str:
  rows = [("nngk-jax loop, Proxy-Anchor (img/s)", "ours_images_per_second"),
          ("PML loop, Proxy-Anchor (img/s)", "peer_images_per_second"),
          ("**loop vs peer** (target >= 1.0)", "loop_vs_peer"),
          ("nngk-jax loop, NNGK (img/s)", "nngk_images_per_second"),
          ("centre refresh (img/s)", "refresh_images_per_second"),
          ("**refresh vs loop** (target >= 2.5)", "refresh_vs_loop"),
          ("refresh + graph, share of an epoch (target <= 0.10)",
           "refresh_and_graph_share_of_epoch")]
  lines = ["| figure | value |", "| --- | ---: |"]
  for title, key in rows:
    value = result.get(key)
    text = "—" if value is None else (f"{value:.0f}" if value > 10
                                      else f"{value:.3f}")
    lines.append(f"| {title} | {text} |")
  return "\n".join(lines)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--epochs", type=int, default=2)
  parser.add_argument("--peer-python", default=None)
  parser.add_argument("--workdir", default=None)
  parser.add_argument("--cpu-devices", type=int, default=None,
                      help="JAX CPU devices (default: one per core, as the "
                           "training command line; 1: XLA:CPU's own threads)")
  args = parser.parse_args(argv)
  devices = parallel.split_cpu(args.cpu_devices, 64)
  print(f"JAX CPU devices: {devices or 'left as set'}", flush=True)
  pooling = bench_pooling()
  print(format_pooling(pooling) + "\n", flush=True)
  result = bench_loop(args.epochs, args.peer_python, args.workdir)
  result["pooling"] = pooling
  print(format_table(result))
  print(json.dumps(result, indent=2))
  return 0


if __name__ == "__main__":
  sys.exit(main())

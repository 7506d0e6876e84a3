r"""Loose impostors: sparse row updates against the dense ``[N, D]`` step.

One train step of the loose impostor loss (K neighbours per example, the L2
tie, Adam on the centres) at SOP's size, N = 60,000 centres of D = 128,
through the bank's own hooks (``trainable_rows``, ``view``, ``after_step``):
the sparse step differentiates and updates the ``batch * (K + 1)`` rows the
batch touches; the dense one differentiates the whole array and runs Adam
over every row. The network is left out (a ``[batch, D]`` parameter stands
in for it) so that the figure is the bank's share alone. Steps of the two
alternate in blocks so that machine noise hits both alike.

Reported: median step milliseconds of each and their ratio, and XLA's
compiled memory of each step (``temp``: the workspace one step allocates,
on top of the donated state).

Run:   python experiments/bench_impostor.py [--centres 60000] [--steps 20]
       (part of `make bench`)
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from nngk_jax import impostor as impostorlib  # noqa: E402
from nngk_jax import loss as losses  # noqa: E402


def _step_fn(bank: impostorlib.ImpostorBank, sigma: float, tie: float):
  """``step(embeddings, bank_state, batch) -> (embeddings, bank_state)``."""

  def loss_fn(embeddings, rows, bank_state, batch):
    view = bank.view(bank_state, {}, rows, batch)
    nbr, own = view.rows(batch)
    return losses.impostor_loss(
        embeddings, batch["label"], view.centres, view.labels, nbr, own,
        sigma=sigma, tie=tie, neighbour_mask=batch["neighbour_mask"]).mean()

  def step(embeddings, bank_state, batch):
    rows = bank.trainable_rows(bank_state, batch)
    g_emb, g_rows = jax.grad(loss_fn, argnums=(0, 1))(
        embeddings, rows, bank_state, batch)
    new_bank = bank.after_step(bank_state, embeddings, batch, g_rows)
    return embeddings - 1e-3 * g_emb, new_bank

  return jax.jit(step, donate_argnums=(1,))


def bench_impostor(num_centres: int = 60_000, dim: int = 128, k: int = 128,
                   batch_size: int = 64, steps: int = 20, rounds: int = 3,
                   seed: int = 0) -> dict:
  """Sparse vs dense loose-impostor step: milliseconds and memory."""
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, num_centres // 5, num_centres)
  centres = rng.normal(size=(num_centres, dim)).astype(np.float32)

  def batch_at(i):
    index = rng.choice(num_centres, batch_size, replace=False)
    return {"index": jnp.asarray(index, jnp.int32),
            "label": jnp.asarray(labels[index], jnp.int32),
            "neighbour_idx": jnp.asarray(
                rng.integers(0, num_centres, (batch_size, k)), jnp.int32),
            "neighbour_mask": jnp.ones((batch_size, k), bool)}

  setups = {}
  for name, sparse in (("sparse", True), ("dense", False)):
    bank = impostorlib.ImpostorBank(labels, dim, variant="loose", tie=1.0,
                                    sparse=sparse, k=k, graph_backend="exact",
                                    warm_up=False)
    state = bank.init_state().replace(centres=jnp.asarray(centres))
    step = _step_fn(bank, sigma=0.5, tie=1.0)
    embeddings = jnp.asarray(centres[:batch_size] + 0.1)
    batch = batch_at(0)
    compiled = step.lower(embeddings, state, batch).compile()
    memory = compiled.memory_analysis()
    setups[name] = {"step": step, "state": state, "embeddings": embeddings,
                    "temp_bytes": int(memory.temp_size_in_bytes),
                    "times": []}
    # Compile and warm up outside the timed blocks.
    setups[name]["embeddings"], setups[name]["state"] = step(
        embeddings, state, batch)
  batches = [batch_at(i) for i in range(steps)]
  for _ in range(rounds):
    for name, setup in setups.items():
      for batch in batches:
        start = time.perf_counter()
        setup["embeddings"], setup["state"] = setup["step"](
            setup["embeddings"], setup["state"], batch)
        jax.block_until_ready(setup["state"].centres)
        setup["times"].append(time.perf_counter() - start)
  result = {"num_centres": num_centres, "dim": dim, "k": k,
            "batch_size": batch_size,
            "bank_bytes": int(centres.nbytes) * 3}  # centres + Adam moments
  for name, setup in setups.items():
    result[f"{name}_step_ms"] = 1e3 * float(np.median(setup["times"]))
    result[f"{name}_temp_bytes"] = setup["temp_bytes"]
  result["dense_over_sparse_time"] = (result["dense_step_ms"]
                                      / result["sparse_step_ms"])
  result["dense_over_sparse_temp_memory"] = (
      result["dense_temp_bytes"] / max(result["sparse_temp_bytes"], 1))
  return result


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--centres", type=int, default=60_000)
  parser.add_argument("--dim", type=int, default=128)
  parser.add_argument("--k", type=int, default=128)
  parser.add_argument("--batch-size", type=int, default=64)
  parser.add_argument("--steps", type=int, default=20)
  parser.add_argument("--rounds", type=int, default=3)
  args = parser.parse_args(argv)
  result = bench_impostor(args.centres, args.dim, args.k, args.batch_size,
                          args.steps, args.rounds)
  print(json.dumps(result, indent=2))
  return 0


if __name__ == "__main__":
  sys.exit(main())

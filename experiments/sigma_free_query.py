r"""The best query for fixed centres (docs/sigma_cliff.md, section 2).

For the centres of a trained run (its training split re-embedded), each of
800 training examples gets a free unit vector :math:`f`, started at its own
centre and moved by 400 Adam steps to minimise its NNGK loss against its K
nearest centres (unit weights),

.. math::
  \ell(f) = -\log \sum_{j \in N_K, y_j = y} e^{s f \cdot c_j}
            + \log \sum_{j \in N_K} e^{s f \cdot c_j}, \qquad s = 1/\sigma^2,

with no network. Prints, per (K, sigma), the loss at the own centre and at
the optimum and the cosine of the optimum to the own centre: how far, and
for how much gain, the loss pulls a query away from the stored bank.

First it prints the class structure of the run's training and test
embeddings (R@1, R-precision, the share of an example's same-class images
among its 128 nearest, mean cosine over random pairs and over same-class
pairs: section 1's table).

Run:  python experiments/sigma_free_query.py RUN_WORKDIR
"""

import sys
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax

from nngk_jax import evaluation
from nngk_jax import metrics
from nngk_jax import train as trainlib


def class_structure(name: str, embeddings: np.ndarray,
                    labels: np.ndarray) -> None:
  unit = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
  gram = unit @ unit.T
  n = len(labels)
  pairs = (gram.sum() - np.trace(gram)) / (n * (n - 1))
  np.fill_diagonal(gram, -np.inf)
  ranked = labels[np.argsort(-gram, axis=1)]
  same = ranked == labels[:, None]
  others = np.bincount(labels)[labels] - 1
  recall_1 = metrics.recall_at_k(ranked, labels, (1,))["recall@1"]
  r_precision = metrics.r_precision(ranked, labels, others)
  in_128 = np.mean(same[:, :128].sum(axis=1) / others)
  class_mask = (labels[:, None] == labels[None, :]) & np.isfinite(gram)
  print(f"{name}: R@1 {recall_1:.3f}, R-precision "
        f"{r_precision:.3f}, same-class among 128 nearest {in_128:.3f}, "
        f"mean cos random pairs {pairs:.3f}, same-class pairs "
        f"{gram[class_mask].mean():.3f}")


def main(workdir: str) -> None:
  warnings.filterwarnings("ignore")  # a mid-epoch checkpoint is fine here
  _, dataset, state = trainlib.load_trained(workdir)
  centres = evaluation.embed_split(state, dataset.train, 256)[0]
  labels = np.asarray(dataset.train.labels)
  class_structure("train", centres, labels)
  class_structure("test", evaluation.embed_split(state, dataset.test, 256)[0],
                  np.asarray(dataset.test.labels))
  centres /= np.linalg.norm(centres, axis=1, keepdims=True)
  rows = np.random.default_rng(0).choice(len(labels), 800, replace=False)
  gram = centres[rows] @ centres.T
  gram[np.arange(len(rows)), rows] = -np.inf
  order = np.argsort(-gram, axis=1)
  own = jnp.asarray(centres[rows])
  for k in (32, 128, 512):
    neighbours = jnp.asarray(centres[order[:, :k]])  # [B, K, D]
    same = jnp.asarray(labels[order[:, :k]] == labels[rows][:, None])
    has = np.asarray(same.any(axis=1))
    for sigma in (0.2, 0.25, 0.3, 0.35, 0.4, 0.5):
      scale = 1.0 / sigma ** 2

      def losses(f, scale=scale, neighbours=neighbours, same=same):
        unit = f / jnp.linalg.norm(f, axis=1, keepdims=True)
        logits = scale * jnp.einsum("bd,bkd->bk", unit, neighbours)
        return (jax.nn.logsumexp(logits, axis=1)
                - jax.nn.logsumexp(logits, axis=1, where=same))

      def total(f, has=jnp.asarray(has), losses=losses):
        return jnp.sum(jnp.where(has, losses(f), 0.0))

      opt = optax.adam(0.02)
      step = jax.jit(lambda f, s, total=total, opt=opt: _step(f, s, total,
                                                             opt))
      f, opt_state = own, opt.init(own)
      for _ in range(400):
        f, opt_state = step(f, opt_state)
      unit = f / jnp.linalg.norm(f, axis=1, keepdims=True)
      drift = np.asarray(jnp.sum(unit * own, axis=1))[has]
      print(f"K={k:4d} sigma={sigma:.2f}: loss at own centre "
            f"{np.asarray(losses(own))[has].mean():.3f}, at the optimum "
            f"{np.asarray(losses(f))[has].mean():.3f}; cos(optimum, own "
            f"centre) {drift.mean():.3f}", flush=True)


def _step(f, opt_state, total, opt):
  updates, opt_state = opt.update(jax.grad(total)(f), opt_state)
  return optax.apply_updates(f, updates), opt_state


if __name__ == "__main__":
  main(sys.argv[1])

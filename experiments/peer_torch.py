r"""pytorch-metric-learning (PML) side of ``make peer``: one (loss, seed) run.

Runs in its own virtual environment, ``.venv-peer`` (torch, PML, faiss; no
JAX and nothing of nngk_jax), started by ``experiments/peer.py`` once per
(loss, seed). Trains the torch twin of nngk-jax's ``conv4`` backbone with a
PML loss on the train split of an npz file, then evaluates retrieval on its
test split with PML's ``AccuracyCalculator`` (every test embedding a query
against the other test embeddings).

The twin (:class:`Conv4`) matches ``nngk_jax.models`` ``conv4`` layer by
layer: 4 blocks of Conv 3x3 (stride 1, padding 1 = flax "SAME", no bias),
BatchNorm (torch momentum 0.1 = flax 0.9, eps 1e-5), ReLU, 2x2 max-pool
stride 2 (skipped, as there, when the block's output is under 2 pixels wide:
8x8 digits), with channels (32, 64, 128, 256); a global average pool; a linear
embedding head 256 -> embed_dim with bias; no L2 normalisation. Convolution
and linear kernels are initialised as flax's ``lecun_normal`` (a normal of
std ``sqrt(1 / fan_in) / .87962566103423978`` truncated at two standard
deviations), biases at zero, BatchNorm at scale 1 and offset 0.

Losses (PML's classes, with its default distances):

========================  ===================================================
``proxy_anchor``          ``ProxyAnchorLoss(margin=0.1, alpha=32)``
``multi_similarity``      ``MultiSimilarityLoss()`` + ``MultiSimilarityMiner()``
``triplet``               ``TripletMarginLoss(margin=0.2)`` +
                          ``TripletMarginMiner(margin=0.2, "semihard")``
``nca``                   ``NCALoss()`` (``softmax_scale=1``)
``normalized_softmax``    ``NormalizedSoftmaxLoss(temperature=0.05)``
========================  ===================================================

Every one of these normalises the embeddings inside its distance (cosine
similarity, or ``LpDistance(normalize_embeddings=True)``), so they are
evaluated on L2-normalised embeddings (geometry "cosine"; "euclidean", raw
embeddings, for a loss that does not normalise); the JSON records it.

Training: Adam at ``--lr`` for the network; the loss's own parameters (the
proxies of Proxy-Anchor and the class weights of normalised softmax) in a
second group at ``lr * --proxy-lr-multiplier``, as the Proxy-Anchor authors
do. Batches are plain shuffled batches without the final partial one, the
order of epoch ``e`` being ``numpy.random.default_rng([seed, e])
.permutation(N)``: the same batches as nngk-jax's ``random`` sampler. The
pair losses (triplet, multi-similarity) get these random batches too, not
m-per-class batches (their miners find fewer positives), for simplicity and
to match the nngk-jax side.

Run:    .venv-peer/bin/python experiments/peer_torch.py --data data.npz \
            --loss proxy_anchor --seed 0 --epochs 10 --out result.json
Output: a JSON file with the loss, seed, settings, metrics (PML's names:
        precision_at_1, mean_average_precision_at_r, NMI, r_precision),
        train_seconds, images_per_second, eval_seconds, num_parameters,
        batches_without_positive_pair (NCA: PML's loss is NaN on a batch
        with no two images of one class; such a batch takes a zero loss)
        and the per-epoch mean loss; with --save-embeddings an npz of the test
        embeddings as evaluated (``embeddings``), before normalisation
        (``raw_embeddings``) and their ``labels``.
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import sys
import time

import numpy as np
import torch
from pytorch_metric_learning import losses, miners
from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator
from torch import nn

LOSSES = ("proxy_anchor", "multi_similarity", "triplet", "nca",
          "normalized_softmax")
CHANNELS = (32, 64, 128, 256)
# flax.linen.initializers.lecun_normal(): variance_scaling(1, "fan_in",
# "truncated_normal"); the truncated normal's std is corrected by this.
_TRUNCATED_NORMAL_STD = .87962566103423978
ACCURACY_METRICS = ("precision_at_1", "mean_average_precision_at_r", "NMI",
                    "r_precision")


def lecun_normal_(weight: torch.Tensor) -> torch.Tensor:
  """flax's ``lecun_normal`` for a torch conv or linear weight, in place."""
  fan_in = weight[0].numel()  # in_channels * kh * kw, or in_features
  std = math.sqrt(1.0 / fan_in) / _TRUNCATED_NORMAL_STD
  return nn.init.trunc_normal_(weight, mean=0.0, std=std, a=-2 * std,
                               b=2 * std)


class Conv4(nn.Module):
  """The torch twin of nngk-jax's ``conv4`` backbone plus embedding head.

  Takes NHWC float images in [-1, 1] (as nngk-jax does) and returns
  ``[batch, embed_dim]`` embeddings, not normalised.
  """

  def __init__(self, in_channels: int = 1, embed_dim: int = 128,
               channels=CHANNELS):
    super().__init__()
    blocks = []
    for width in channels:
      blocks.append(nn.Sequential(
          nn.Conv2d(in_channels, width, 3, stride=1, padding=1, bias=False),
          nn.BatchNorm2d(width, eps=1e-5, momentum=0.1),
          nn.ReLU(inplace=True)))
      in_channels = width
    self.blocks = nn.ModuleList(blocks)
    self.pool = nn.MaxPool2d(2, stride=2)
    self.embedding = nn.Linear(in_channels, embed_dim)
    for module in self.modules():
      if isinstance(module, (nn.Conv2d, nn.Linear)):
        lecun_normal_(module.weight)
        if module.bias is not None:
          nn.init.zeros_(module.bias)

  def forward(self, images: torch.Tensor) -> torch.Tensor:
    x = images.permute(0, 3, 1, 2)  # NHWC -> NCHW
    for block in self.blocks:
      x = block(x)
      if x.shape[2] >= 2 and x.shape[3] >= 2:
        x = self.pool(x)
    return self.embedding(x.mean(dim=(2, 3)))


def make_loss(name: str, num_classes: int, embed_dim: int):
  """``(loss, miner or None)`` for one of :data:`LOSSES`."""
  if name == "proxy_anchor":
    return losses.ProxyAnchorLoss(num_classes, embed_dim, margin=0.1,
                                  alpha=32), None
  if name == "multi_similarity":
    return losses.MultiSimilarityLoss(), miners.MultiSimilarityMiner()
  if name == "triplet":
    return (losses.TripletMarginLoss(margin=0.2),
            miners.TripletMarginMiner(margin=0.2, type_of_triplets="semihard"))
  if name == "nca":
    return losses.NCALoss(), None
  if name == "normalized_softmax":
    return losses.NormalizedSoftmaxLoss(num_classes, embed_dim,
                                        temperature=0.05), None
  raise ValueError(f"unknown loss {name!r}; known: {', '.join(LOSSES)}")


def has_positive_pair(labels: torch.Tensor) -> bool:
  """Whether some class occurs at least twice in ``labels``."""
  return len(torch.unique(labels)) < len(labels)


def normalises_embeddings(loss) -> bool:
  """Whether ``loss`` L2-normalises embeddings inside its distance."""
  return bool(getattr(loss.distance, "normalize_embeddings", False))


def load_npz(path: str | pathlib.Path) -> dict[str, np.ndarray]:
  with np.load(path) as data:
    arrays = {k: data[k] for k in ("train_images", "train_labels",
                                   "test_images", "test_labels")}
  for split in ("train", "test"):
    images = arrays[f"{split}_images"]
    if images.ndim != 4 or images.dtype != np.float32:
      raise ValueError(f"{path}: {split}_images must be NHWC float32, got "
                       f"{images.dtype} {images.shape}")
  return arrays


@torch.no_grad()
def embed(model: nn.Module, images: np.ndarray,
          batch_size: int = 256) -> np.ndarray:
  model.eval()
  out = [model(torch.from_numpy(images[i:i + batch_size]))
         for i in range(0, len(images), batch_size)]
  return torch.cat(out).numpy()


def train_and_evaluate(args) -> tuple[dict, dict[str, np.ndarray]]:
  torch.set_num_threads(args.threads)
  torch.manual_seed(args.seed)
  data = load_npz(args.data)
  train_images = data["train_images"]
  train_labels = data["train_labels"].astype(np.int64)
  num_classes = int(train_labels.max()) + 1
  n = len(train_images)
  if args.batch_size > n:
    raise ValueError(f"batch size {args.batch_size} exceeds the {n} training"
                     f" images")

  model = Conv4(train_images.shape[-1], args.embed_dim)
  loss_fn, miner = make_loss(args.loss, num_classes, args.embed_dim)
  groups = [{"params": model.parameters(), "lr": args.lr}]
  loss_params = list(loss_fn.parameters())
  if loss_params:
    groups.append({"params": loss_params,
                   "lr": args.lr * args.proxy_lr_multiplier})
  optimizer = torch.optim.Adam(groups)

  history = []
  images_seen = 0
  batches_without_positives = 0
  start = time.perf_counter()
  for epoch in range(args.epochs):
    model.train()
    order = np.random.default_rng([args.seed, epoch]).permutation(n)
    epoch_losses = []
    epoch_start = time.perf_counter()
    for b in range(n // args.batch_size):
      idx = order[b * args.batch_size:(b + 1) * args.batch_size]
      images = torch.from_numpy(train_images[idx])
      labels = torch.from_numpy(train_labels[idx])
      embeddings = model(images)
      if miner is not None:
        loss = loss_fn(embeddings, labels, miner(embeddings, labels))
      else:
        loss = loss_fn(embeddings, labels)
      if not torch.isfinite(loss):
        if has_positive_pair(labels):
          raise FloatingPointError(
              f"{args.loss}: non-finite loss at epoch {epoch + 1}, batch {b}")
        # No two examples of one class in the batch: PML's NCALoss then
        # averages an empty tensor (NaN). Take PML's own zero loss instead
        # (zero gradient; Adam still steps, as on nngk-jax's side, where
        # such examples get loss 0).
        loss = torch.sum(embeddings * 0)
        batches_without_positives += 1
      optimizer.zero_grad(set_to_none=True)
      loss.backward()
      optimizer.step()
      epoch_losses.append(loss.item())
      images_seen += len(idx)
    history.append({"epoch": epoch + 1,
                    "train_loss": float(np.mean(epoch_losses)),
                    "epoch_seconds": time.perf_counter() - epoch_start})
    print(f"[pml {args.loss} seed {args.seed}] epoch {epoch + 1}/"
          f"{args.epochs} loss {history[-1]['train_loss']:.4f} "
          f"({history[-1]['epoch_seconds']:.1f} s)", file=sys.stderr,
          flush=True)
  train_seconds = time.perf_counter() - start

  start = time.perf_counter()
  raw = embed(model, data["test_images"])
  normalised = normalises_embeddings(loss_fn)
  evaluated = raw
  if normalised:
    evaluated = torch.nn.functional.normalize(
        torch.from_numpy(raw), p=2, dim=1).numpy()
  if not np.isfinite(evaluated).all():
    raise FloatingPointError(f"{args.loss}: non-finite test embeddings")
  labels = data["test_labels"]
  calculator = AccuracyCalculator(include=ACCURACY_METRICS,
                                  k="max_bin_count", device=torch.device("cpu"))
  # reference=None: the queries are the references, each query excluded
  # from its own neighbours (PML 1.x's embeddings_come_from_same_source=True,
  # ref_includes_query=True in PML 2.x).
  metrics = calculator.get_accuracy(evaluated, labels)
  eval_seconds = time.perf_counter() - start

  result = {
      "library": "pytorch-metric-learning",
      "loss": args.loss,
      "seed": args.seed,
      "epochs": args.epochs,
      "batch_size": args.batch_size,
      "embed_dim": args.embed_dim,
      "lr": args.lr,
      "proxy_lr_multiplier": args.proxy_lr_multiplier,
      "loss_class": type(loss_fn).__name__,
      "miner_class": type(miner).__name__ if miner is not None else None,
      "distance": type(loss_fn.distance).__name__,
      "geometry": "cosine" if normalised else "euclidean",
      "metrics": {k: float(v) for k, v in metrics.items()},
      "train_seconds": train_seconds,
      "images_per_second": images_seen / train_seconds,
      "eval_seconds": eval_seconds,
      "num_parameters": sum(p.numel() for p in model.parameters()),
      "num_loss_parameters": sum(p.numel() for p in loss_params),
      "batches_without_positive_pair": batches_without_positives,
      "history": history,
      "versions": {"torch": torch.__version__,
                   "pytorch_metric_learning": _pml_version(),
                   "faiss": _faiss_version()},
      "threads": torch.get_num_threads(),
  }
  arrays = {"embeddings": evaluated.astype(np.float32),
            "raw_embeddings": raw.astype(np.float32),
            "labels": labels}
  return result, arrays


def _pml_version() -> str:
  import pytorch_metric_learning  # pylint: disable=g-import-not-at-top
  return pytorch_metric_learning.__version__


def _faiss_version() -> str:
  import faiss  # pylint: disable=g-import-not-at-top
  return faiss.__version__


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--data", required=True,
                      help="npz with train_images, train_labels, test_images,"
                           " test_labels (NHWC float32)")
  parser.add_argument("--loss", required=True, choices=LOSSES)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--epochs", type=int, default=10)
  parser.add_argument("--batch-size", type=int, default=64)
  parser.add_argument("--embed-dim", type=int, default=128)
  parser.add_argument("--lr", type=float, default=1e-3)
  parser.add_argument("--proxy-lr-multiplier", type=float, default=100.0)
  parser.add_argument("--threads", type=int, default=2,
                      help="torch.set_num_threads")
  parser.add_argument("--out", required=True, help="result JSON file")
  parser.add_argument("--save-embeddings",
                      help="npz of the test embeddings and labels")
  args = parser.parse_args(argv)
  result, arrays = train_and_evaluate(args)
  if args.save_embeddings:
    pathlib.Path(args.save_embeddings).parent.mkdir(parents=True,
                                                    exist_ok=True)
    np.savez(args.save_embeddings, **arrays)
  out = pathlib.Path(args.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(result, indent=2) + "\n")
  m = result["metrics"]
  print(f"[pml {args.loss} seed {args.seed}] MAP@R "
        f"{m['mean_average_precision_at_r']:.4f} P@1 {m['precision_at_1']:.4f}"
        f" NMI {m['NMI']:.4f} train {result['train_seconds']:.1f} s "
        f"({result['images_per_second']:.0f} img/s) eval "
        f"{result['eval_seconds']:.1f} s", file=sys.stderr, flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())

"""The search command line: ``python -m nngk_jax.search``.

A thin layer over :class:`nngk_jax.index.Index`: load the index (built from
a run's work directory, or a saved one), embed each query image file, print
its nearest gallery items and the kernel-vote class, and draw the queries
beside their neighbours::

    python -m nngk_jax.search --run runs/digits --query a.png --query b.png \\
        --k 8 --out grid.png

The grid (:func:`nngk_jax.plotting.plot_retrieval_grid`) frames a neighbour
green when its class is the query's kernel-vote class, red otherwise.
Every error is one line on stderr (:func:`nngk_jax.cli.one_line`) and exit
status 2 for bad input (a missing file, a bad image, a bad ``--k``), 1 for
anything else; ``--verbose`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from nngk_jax import cli
from nngk_jax import data as datalib
from nngk_jax import plotting
from nngk_jax.index import Index
from nngk_jax.index import SearchResult

__all__ = ["QueryResults", "format_results", "load_index", "main",
           "search_files", "write_grid"]


def load_index(*, run: str | os.PathLike | None = None,
               index: str | os.PathLike | None = None,
               folder: str | os.PathLike | None = None,
               centres: str = "embed", backend: str = "auto") -> Index:
  """A saved index (``index``), or the index of a run (``run``).

  Raises:
    ValueError: neither or both of ``run`` and ``index``, or gallery
      options with a saved index.
  """
  if (run is None) == (index is None):
    raise ValueError("give --run (a trained work directory) or --index (a "
                     "saved index), not both nor neither")
  if index is not None:
    if folder is not None or centres != "embed":
      raise ValueError("--folder and --centres choose the gallery of a run; "
                       "a saved index has its own")
    return Index.load(index, backend=None if backend == "auto" else backend)
  return Index.from_run(run, folder=folder, centres=centres, backend=backend)


class QueryResults(NamedTuple):
  """Query images, their neighbours and kernel votes.

  Attributes:
    names: the ``Q`` query names (file paths).
    images: ``[Q, H, W, C]`` the queries as the network reads them.
    neighbours: the :class:`~nngk_jax.index.SearchResult` (``[Q, k]``).
    predicted: ``[Q]`` int kernel-vote classes.
    probs: ``[Q, C]`` their class probabilities.
  """

  names: list[str]
  images: np.ndarray
  neighbours: SearchResult
  predicted: np.ndarray
  probs: np.ndarray


def search_files(index: Index, paths: Sequence[str | os.PathLike],
                 k: int) -> QueryResults:
  """Reads, embeds, searches and classifies query image files."""
  images = index.read_images(paths)
  embeddings = index.embed(images)
  neighbours = index.search_embeddings(embeddings, k)
  predicted, probs = index.classify_embeddings(embeddings, return_probs=True)
  return QueryResults([str(p) for p in paths], images, neighbours, predicted,
                      probs)


def format_results(index: Index, results: QueryResults) -> str:
  """One block per query: its vote, then rank, row, label, class, distance."""
  lines = []
  for q, name in enumerate(results.names):
    vote = int(results.predicted[q])
    lines.append(f"query {q + 1}: {name}: kernel vote class "
                 f"{index.class_names[vote]!r} (label {vote}, p = "
                 f"{results.probs[q, vote]:.3f})")
    lines.append(f"  {'rank':>4}  {'row':>7}  {'label':>5}  {'class':<16}  "
                 f"distance")
    for rank in range(results.neighbours.indices.shape[1]):
      row = int(results.neighbours.indices[q, rank])
      label = int(results.neighbours.labels[q, rank])
      lines.append(
          f"  {rank + 1:>4}  {row:>7}  {label:>5}  "
          f"{index.class_names[label]:<16}  "
          f"{results.neighbours.distances[q, rank]:.6g}")
  return "\n".join(lines)


def write_grid(index: Index, results: QueryResults,
               path: str | os.PathLike) -> pathlib.Path:
  """Draws each query beside its neighbours' source images (a PNG)."""
  num_queries, k = results.neighbours.indices.shape
  gallery = index.source_images(results.neighbours.indices.reshape(-1))
  images = np.concatenate([results.images, gallery])
  labels = np.concatenate([results.predicted,
                           results.neighbours.labels.reshape(-1)])
  neighbour_idx = num_queries + np.arange(num_queries * k).reshape(
      num_queries, k)
  return plotting.plot_retrieval_grid(
      images, labels, np.arange(num_queries), neighbour_idx, path,
      class_names=index.class_names)


# Errors the user caused and can fix from the message alone: exit status 2.
BAD_INPUT = (ValueError, OSError, datalib.DatasetNotAvailableError)


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
      prog="python -m nngk_jax.search",
      description="Search a trained model's gallery with query images.")
  parser.add_argument("--run", help="trained work directory (python -m "
                      "nngk_jax.train --workdir ...)")
  parser.add_argument("--index", help="a saved index (Index.save) instead of "
                      "--run")
  parser.add_argument("--query", action="append", required=True,
                      help="query image file; repeat for more")
  parser.add_argument("--k", type=int, default=8,
                      help="neighbours per query (default 8)")
  parser.add_argument("--out", help="PNG of the queries and their neighbours")
  parser.add_argument("--folder", help="gallery: an image folder with one "
                      "sub-folder per class (default: the run's training "
                      "split)")
  parser.add_argument("--centres", default="embed", choices=("embed", "bank"),
                      help="gallery: the training split embedded by the "
                      "trained network (embed) or the run's stored bank "
                      "centres (bank)")
  parser.add_argument("--backend", default="auto",
                      help="search backend: auto, exact or pynndescent")
  parser.add_argument("--compress", type=int, metavar="BYTES",
                      help="search a copy of the gallery OPQ-compressed to "
                      "BYTES bytes per item (Index.compress)")
  parser.add_argument("--save", help="also save the index to this directory")
  parser.add_argument("--verbose", action="store_true",
                      help="show the traceback of an error")
  args = parser.parse_args(argv)
  try:
    index = load_index(run=args.run, index=args.index, folder=args.folder,
                       centres=args.centres, backend=args.backend)
    if args.compress:
      index = index.compress(args.compress)
      print(f"gallery compressed to {args.compress} bytes per item: "
            f"{index.nbytes:,} bytes in all")
    results = search_files(index, args.query, args.k)
    print(format_results(index, results))
    if args.out:
      print(f"grid: {write_grid(index, results, args.out)}")
    if args.save:
      print(f"index: {index.save(args.save)}")
  except Exception as error:  # pylint: disable=broad-except
    if args.verbose:
      raise
    print(f"error: {cli.one_line(error)}", file=sys.stderr)
    return 2 if isinstance(error, BAD_INPUT) else 1
  return 0


if __name__ == "__main__":
  cli.run_program("nngk_jax.search")

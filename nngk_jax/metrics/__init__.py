"""Retrieval, clustering and classification metrics, computed on the host.

The metric-learning protocol (``methods.md``, "Evaluation protocol"): every
test embedding is a query against all the other test embeddings, by
Euclidean distance, for Recall@K, MAP@R and R-precision (Musgrave et al.,
2020); NMI comes from k-means with as many clusters as classes.

Modules:
  retrieval   ``retrieval_metrics`` and the metrics of ranked neighbours
              (``recall_at_k``, ``map_at_r``, ``r_precision``),
              ``accuracy``; the neighbour searches (``knn_function``,
              ``ExactKnn``, ``PyNNDescentKnn``)
  clustering  ``kmeans`` (JAX), ``nmi_kmeans``, the clusterings of NMI
              (``kmeans_function``)
  self_retrieval
              ``self_retrieval``: the symmetric exact pass behind
              ``retrieval_metrics``' default search

Every public name of both is importable from here::

  from nngk_jax import metrics as metriclib
  metriclib.retrieval_metrics(
      embeddings, labels, recall_ks=(1, 2, 4, 8),
      knn_func=metriclib.knn_function("exact"),
      kmeans_func=metriclib.kmeans_function("auto"))

References:
  Musgrave, Belongie, Lim, `A Metric Learning Reality Check
  <https://arxiv.org/abs/2003.08505>`_, ECCV 2020.
"""

from nngk_jax.metrics.clustering import KMEANS_INITS
from nngk_jax.metrics.clustering import NMI_METHODS
from nngk_jax.metrics.clustering import KmeansFunction
from nngk_jax.metrics.clustering import kmeans
from nngk_jax.metrics.clustering import kmeans_function
from nngk_jax.metrics.clustering import nmi_kmeans
from nngk_jax.metrics.retrieval import SEARCH_METHODS
from nngk_jax.metrics.retrieval import ExactKnn
from nngk_jax.metrics.retrieval import KnnFunction
from nngk_jax.metrics.retrieval import PyNNDescentKnn
from nngk_jax.metrics.retrieval import accuracy
from nngk_jax.metrics.retrieval import knn_function
from nngk_jax.metrics.retrieval import map_at_r
from nngk_jax.metrics.retrieval import r_precision
from nngk_jax.metrics.retrieval import recall_at_k
from nngk_jax.metrics.retrieval import retrieval_metrics

__all__ = [
    "KMEANS_INITS",
    "NMI_METHODS",
    "SEARCH_METHODS",
    "ExactKnn",
    "KmeansFunction",
    "KnnFunction",
    "PyNNDescentKnn",
    "accuracy",
    "kmeans",
    "kmeans_function",
    "knn_function",
    "map_at_r",
    "nmi_kmeans",
    "r_precision",
    "recall_at_k",
    "retrieval_metrics",
]

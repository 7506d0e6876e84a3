"""Datasets as random-access splits of (image, label, example index).

Every dataset is a :class:`Dataset` holding a ``train`` and a ``test``
split: a :class:`Split` (images in memory) or a
:class:`~nngk_jax.data.pipeline.ImageSplit` (records decoded on demand), both
:class:`SplitLike`. Datasets are looked up by name in :data:`DATASETS`
through :func:`load_dataset`; batches come from :func:`iterate_batches` and
:func:`iterate_class_balanced_batches`, whose order depends only on ``(seed,
epoch)``, so that a resumed run replays the same batches.

The modules import one way, each only from those above it::

    splits      errors, PROTOCOLS, check_labels, remap_labels, Split,
                SplitLike, Dataset, build_dataset
    benchmarks  the TFDS benchmarks, their files and data dirs
    samplers    SAMPLERS, num_batches, iterate_batches,
                iterate_class_balanced_batches           (splits)
    pipeline    ImageSplit, ImageTransform, LoaderOptions, decode_image,
                check_image_file, scan_image_files       (splits)
    digits      load_digits                              (splits)
    glyphs      load_glyphs: rendered characters         (splits)
    folder      load_image_folder: folder:PATH; list_image_folder,
                readable_image_files, read_image         (splits, pipeline)
    tfds        CUB, Cars196, SOP, CIFAR through tensorflow-datasets
                                                 (splits, pipeline, benchmarks)
    registry    DATASETS, check_dataset_name, load_dataset
                                         (digits, folder, glyphs, tfds)
    tasks       TaskStream, TASK_STREAMS, load_task_stream: continual
                learning                     (splits, pipeline, registry)
    prepare     ``python -m nngk_jax.data.prepare``: ``make data``
                                                 (benchmarks)

This file only re-exports the names below; no module of the package
imports it by name, and none imports a sibling inside a function.

Everything here is host-side NumPy; nothing is meant to run inside
``jax.jit``.
"""

from __future__ import annotations

from nngk_jax.data.folder import IMAGE_EXTENSIONS
from nngk_jax.data.folder import list_image_folder
from nngk_jax.data.folder import load_image_folder
from nngk_jax.data.folder import read_image
from nngk_jax.data.digits import load_digits
from nngk_jax.data.registry import DATASETS
from nngk_jax.data.registry import check_dataset_name
from nngk_jax.data.registry import load_dataset
from nngk_jax.data.samplers import SAMPLERS
from nngk_jax.data.samplers import iterate_batches
from nngk_jax.data.samplers import iterate_class_balanced_batches
from nngk_jax.data.samplers import num_batches
from nngk_jax.data.splits import DataError
from nngk_jax.data.splits import Dataset
from nngk_jax.data.splits import DatasetNotAvailableError
from nngk_jax.data.splits import PROTOCOLS
from nngk_jax.data.splits import Split
from nngk_jax.data.splits import SplitLike
from nngk_jax.data.splits import UnreadableImagesError
from nngk_jax.data.splits import check_labels
from nngk_jax.data.splits import shard_rows
from nngk_jax.data.tasks import TASK_STREAMS
from nngk_jax.data.tasks import TaskStream
from nngk_jax.data.tasks import load_task_stream

__all__ = [
    "DATASETS",
    "DataError",
    "Dataset",
    "DatasetNotAvailableError",
    "IMAGE_EXTENSIONS",
    "PROTOCOLS",
    "SAMPLERS",
    "Split",
    "SplitLike",
    "TASK_STREAMS",
    "TaskStream",
    "UnreadableImagesError",
    "check_dataset_name",
    "check_labels",
    "iterate_batches",
    "iterate_class_balanced_batches",
    "list_image_folder",
    "load_dataset",
    "load_digits",
    "load_image_folder",
    "load_task_stream",
    "num_batches",
    "read_image",
    "shard_rows",
]

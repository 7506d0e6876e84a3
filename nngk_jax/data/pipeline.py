"""The image input pipeline: decode, resize, crop, flip, normalise, in parallel.

Images that do not fit in memory (CUB, Cars196, SOP, your own folders at
224x224) are held as an :class:`ImageSplit`: a random-access split whose
``i``-th record is read and transformed only when a batch needs it. Batches
are assembled by `grain <https://github.com/google/grain>`_ from the index
batches the samplers in :mod:`nngk_jax.data.samplers` choose, with worker
threads (and, optionally, worker processes) and prefetching, so that on a GPU
the network, not the input, sets the pace.

The transforms follow torchvision's, as the paper's code used them:

- training: resize the shorter side to ``resize``, random ``crop`` x
  ``crop`` crop (or, with ``random_resized_crop``, an Inception-style crop of
  8-100% of the area and aspect 3/4-4/3 resized to ``crop``), horizontal
  flip with probability 1/2, then normalise;
- evaluation and centre refresh: resize the shorter side, centre crop.

Normalisation ``"unit"`` maps pixels to ``[-1, 1]`` (mean 0.5, std 0.5, as
the paper's code); ``"imagenet"`` uses the ImageNet mean and std that
torchvision and timm weights were trained with.

Everything here is host-side NumPy and Pillow; nothing runs inside
``jax.jit``, except one optional step at the boundary: with
``LoaderOptions.normalise_on_device`` (on by default on a GPU or TPU) the
workers hand over ``uint8`` crops, a quarter of the bytes, and each batch is
normalised by a jitted ``pixels * scale - offset`` on the device after its
transfer, which takes the float work off the host's cores. Random choices are a pure function of ``(seed, epoch, position
in the epoch)``, so a resumed run sees the same augmentations.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import math
import os
import pathlib
import weakref
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from nngk_jax import checks
from nngk_jax.data import splits

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ImageSplit",
    "ImageTransform",
    "LoaderOptions",
    "NORMALIZATIONS",
    "check_image_file",
    "decode_image",
    "pipeline_from_options",
    "scan_image_files",
]

# Per-channel (R, G, B) statistics of ImageNet, for images in [0, 1]: what
# torchvision and timm weights were trained with (nngk_jax.pretrained uses
# them too).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# name -> (mean, std) per RGB channel, on pixels scaled to [0, 1].
NORMALIZATIONS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "unit": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    "imagenet": (IMAGENET_MEAN, IMAGENET_STD),
}


@functools.lru_cache(maxsize=None)
def _normalisation_constants(name: str) -> tuple[np.ndarray, np.ndarray]:
  """``(1 / (255 std), mean / std)`` of ``NORMALIZATIONS[name]``, float32."""
  mean, std = (np.asarray(v, np.float64) for v in NORMALIZATIONS[name])
  constants = ((1.0 / (255.0 * std)).astype(np.float32),
               (mean / std).astype(np.float32))
  for array in constants:  # shared by every call: never written
    array.flags.writeable = False
  return constants


@functools.lru_cache(maxsize=None)
def _device_normaliser():
  """``pixels * scale - offset`` in float32, jitted on the default device
  (built on first use: this module imports without JAX)."""
  import jax  # pylint: disable=g-import-not-at-top

  @jax.jit
  def normalise(pixels, scale, offset):
    return pixels.astype(np.float32) * scale - offset

  return normalise


def _on_accelerator() -> bool:
  import jax  # pylint: disable=g-import-not-at-top
  return jax.default_backend() != "cpu" and jax.process_count() == 1


# Pillow modes of more than 8 bits per grey pixel: 16-bit PNGs open as
# "I;16" (or "I"); convert("L" / "RGB") would clip them to 0..255.
_WIDE_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})
_EXIF_ORIENTATION = 0x0112


def _to_8bit(image, mode: str):
  """``image`` upright, 8 bits per channel, in ``mode`` ("RGB" or "L").

  EXIF orientation is applied (a phone's portrait photo stands up), 16-bit
  grey is scaled from 0..65535 to 0..255 (as 8-bit, not clipped to white),
  palette images with transparency go through RGBA, and alpha is dropped
  (as torchvision's loader does); CMYK, grey and grey+alpha go through
  Pillow's conversion.
  """
  from PIL import Image, ImageOps  # pylint: disable=g-import-not-at-top

  if image.getexif().get(_EXIF_ORIENTATION, 1) != 1:
    image = ImageOps.exif_transpose(image)
  if image.mode in _WIDE_MODES:
    pixels = np.asarray(image).astype(np.float32)
    image = Image.fromarray(
        np.clip(np.rint(pixels / 257.0), 0, 255).astype(np.uint8), "L")
  elif image.mode == "P" and "transparency" in image.info:
    image = image.convert("RGBA")
  return image.convert(mode)


def decode_image(record: Any, *, draft_size: int | None = None,
                 mode: str = "RGB"):
  """A record as an upright 8-bit ``PIL.Image`` in ``mode``.

  Both image readers of the package decode here (the pipeline's
  :class:`ImageTransform` and :func:`nngk_jax.data.folder.read_image`), so
  they agree: EXIF rotation applied, 16-bit PNGs scaled (not clipped),
  CMYK, palette and grey(+alpha) images converted, alpha dropped.

  Args:
    record: encoded image bytes (as TFDS stores them), a file path, or a
      ``uint8`` array ``[H, W]``, ``[H, W, 1]`` or ``[H, W, 3]``.
    draft_size: when given, a JPEG is decoded at the smallest power-of-two
      reduction that keeps both sides at least this large (Pillow's draft
      mode): faster, and a 8000x8000 photograph never exists in memory at
      full size.
    mode: ``"RGB"`` or ``"L"`` (grey).

  Returns:
    A ``PIL.Image.Image`` in ``mode``.

  Raises:
    DataError: the record cannot be decoded (the message says why).

  Examples:
    >>> import numpy as np
    >>> decode_image(np.zeros((4, 6), np.uint8)).size
    (6, 4)
  """
  from PIL import Image  # pylint: disable=g-import-not-at-top

  if isinstance(record, np.ndarray):
    array = record
    if array.ndim == 3 and array.shape[-1] == 1:
      array = array[..., 0]
    if array.dtype != np.uint8 or array.ndim not in (2, 3) or (
        array.ndim == 3 and array.shape[-1] != 3):
      raise splits.DataError(
          f"an image array must be uint8 [H, W], [H, W, 1] or [H, W, 3], got "
          f"{array.dtype} {record.shape}")
    return Image.fromarray(array).convert(mode)
  encoded = isinstance(record, (bytes, bytearray, memoryview))
  try:
    image = Image.open(io.BytesIO(bytes(record)) if encoded
                       else pathlib.Path(record))
    if draft_size is not None and image.format == "JPEG":
      image.draft(None, (draft_size, draft_size))  # scale only
    return _to_8bit(image, mode)
  except Exception as err:  # Pillow raises many kinds for a bad file.
    what = "image bytes" if encoded else f"image {record}"
    raise splits.DataError(f"cannot read {what}: {err}") from err


def check_image_file(path: str | os.PathLike[str]) -> str | None:
  """Why an image file cannot be read, or ``None`` if its header is sound.

  Fast, no decode: the file is opened by Pillow (format, size) and
  ``verify()``-ed (a PNG's chunk checksums, up to its end); a JPEG must
  hold an end-of-image marker after its scan data (a truncated download
  has none). Catches empty files, text or HTML saved under an image name,
  truncated files and decompression bombs. A file that passes can still
  fail to decode if its compressed data is damaged inside; that file is
  named when its batch is read.

  Examples:
    >>> import pathlib, tempfile
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "x.jpg"
    >>> _ = path.write_text("<html>not found</html>")
    >>> check_image_file(path)[:25]
    'not an image Pillow reads'
  """
  from PIL import Image  # pylint: disable=g-import-not-at-top

  path = pathlib.Path(path)
  try:
    if path.stat().st_size == 0:
      return "empty file (0 bytes)"
    with Image.open(path) as image:
      width, height = image.size
      is_jpeg, tile = image.format == "JPEG", image.tile
      image.verify()
    if not width or not height:
      return f"image of size {width}x{height}"
    if is_jpeg and tile:
      scan_start = tile[0][2]
      if path.read_bytes().find(b"\xff\xd9", scan_start) < 0:
        return "truncated JPEG (no end-of-image marker after its data)"
  except Image.UnidentifiedImageError:
    return "not an image Pillow reads (wrong format or not an image at all)"
  except Exception as err:  # Pillow raises many kinds for a bad file.
    return f"{type(err).__name__}: {' '.join(str(err).split())}"
  return None


def scan_image_files(paths: Sequence[str | os.PathLike[str]], *,
                     num_threads: int | None = None
                     ) -> list[tuple[str, str]]:
  """:func:`check_image_file` of every path, in parallel threads.

  Returns:
    ``[(path, reason), ...]`` of the unreadable files, in ``paths`` order
    (empty when all are sound).
  """
  from concurrent import futures  # pylint: disable=g-import-not-at-top

  threads = num_threads or LoaderOptions().num_threads
  with futures.ThreadPoolExecutor(max_workers=threads) as pool:
    reasons = list(pool.map(check_image_file, paths, chunksize=64))
  return [(str(p), r) for p, r in zip(paths, reasons) if r is not None]


@dataclasses.dataclass(frozen=True)
class ImageTransform:
  """Resize, crop, flip and normalise, as torchvision's transforms do.

  Attributes:
    resize: the shorter side is resized to this many pixels (aspect kept).
    crop: side of the square crop fed to the network (``<= resize``).
    random_resized_crop: training crops are Inception-style random resized
      crops (area 8-100%, aspect 3/4-4/3) instead of resize + random crop.
    flip: random horizontal flips in training.
    normalization: a key of :data:`NORMALIZATIONS`.

  Examples:
    >>> import numpy as np
    >>> t = ImageTransform(resize=8, crop=6)
    >>> image = np.full((10, 20, 3), 255, np.uint8)
    >>> out = t.evaluate(image)
    >>> out.shape, out.dtype, float(out.min()), float(out.max())
    ((6, 6, 3), dtype('float32'), 1.0, 1.0)
    >>> t.train(image, np.random.default_rng(0)).shape
    (6, 6, 3)
  """

  resize: int = 256
  crop: int = 224
  random_resized_crop: bool = False
  flip: bool = True
  normalization: str = "unit"

  def __post_init__(self) -> None:
    checks.positive_int("resize", self.resize)
    checks.positive_int("crop", self.crop)
    if self.crop > self.resize:
      raise ValueError(f"crop={self.crop} must not exceed resize="
                       f"{self.resize}")
    if self.normalization not in NORMALIZATIONS:
      raise ValueError(f"normalization must be one of "
                       f"{sorted(NORMALIZATIONS)}, got {self.normalization!r}")

  @property
  def output_shape(self) -> tuple[int, int, int]:
    """``(crop, crop, 3)``."""
    return (self.crop, self.crop, 3)

  def _normalise(self, image, normalise: bool = True) -> np.ndarray:
    """``(pixels / 255 - mean) / std`` as ``pixels * scale - offset``.

    One float32 array, scaled and shifted in place: about a third of the
    time of the three-pass form with its temporaries (0.6 against 1.7 ms
    per 256 x 256 image), equal to it within 1e-6. With ``normalise=False``
    the ``uint8`` pixels, for :meth:`normalise_batch` to finish on a device.
    """
    if not normalise:
      return np.asarray(image, np.uint8)
    scale, offset = _normalisation_constants(self.normalization)
    pixels = np.asarray(image, np.float32)
    pixels *= scale
    pixels -= offset
    return pixels

  def normalise_batch(self, pixels):
    """A ``uint8`` batch normalised on JAX's default device, float32.

    The same ``pixels * scale - offset`` as the host path (equal within
    1e-6), jitted; the result is a ``jax.Array`` and the call does not wait
    for it.
    """
    scale, offset = _normalisation_constants(self.normalization)
    return _device_normaliser()(pixels, scale, offset)

  def _resize_shorter(self, image):
    """Shorter side to ``resize``, longer side in proportion (torchvision)."""
    from PIL import Image  # pylint: disable=g-import-not-at-top
    width, height = image.size
    short, long = min(width, height), max(width, height)
    if short == self.resize:
      return image
    long = int(self.resize * long / short)
    size = (self.resize, long) if width <= height else (long, self.resize)
    return image.resize(size, Image.Resampling.BILINEAR)

  def evaluate(self, record: Any, normalise: bool = True) -> np.ndarray:
    """Resize the shorter side, centre crop, normalise: ``[crop, crop, 3]``.

    ``normalise=False`` leaves the crop as ``uint8`` pixels.
    """
    image = self._resize_shorter(decode_image(record, draft_size=self.resize))
    width, height = image.size
    left, top = (width - self.crop) // 2, (height - self.crop) // 2
    image = image.crop((left, top, left + self.crop, top + self.crop))
    return self._normalise(image, normalise)

  def train(self, record: Any, rng: np.random.Generator,
            normalise: bool = True) -> np.ndarray:
    """A random crop (and flip) of the record: ``[crop, crop, 3]`` float32
    (``uint8`` pixels with ``normalise=False``)."""
    if self.random_resized_crop:
      image = self._random_resized_crop(decode_image(record), rng)
    else:
      image = self._resize_shorter(decode_image(record,
                                                draft_size=self.resize))
      width, height = image.size
      left = int(rng.integers(0, width - self.crop + 1))
      top = int(rng.integers(0, height - self.crop + 1))
      image = image.crop((left, top, left + self.crop, top + self.crop))
    if self.flip and rng.random() < 0.5:
      from PIL import Image  # pylint: disable=g-import-not-at-top
      image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return self._normalise(image, normalise)

  def _random_resized_crop(self, image, rng: np.random.Generator):
    """torchvision's RandomResizedCrop(crop, scale=(0.08, 1), ratio=(3/4, 4/3))."""
    from PIL import Image  # pylint: disable=g-import-not-at-top
    width, height = image.size
    area = width * height
    log_ratio = (math.log(3 / 4), math.log(4 / 3))
    box = None
    for _ in range(10):
      target = area * rng.uniform(0.08, 1.0)
      ratio = math.exp(rng.uniform(*log_ratio))
      w = round(math.sqrt(target * ratio))
      h = round(math.sqrt(target / ratio))
      if 0 < w <= width and 0 < h <= height:
        left = int(rng.integers(0, width - w + 1))
        top = int(rng.integers(0, height - h + 1))
        box = (left, top, left + w, top + h)
        break
    if box is None:  # fall back to a centre crop of clamped aspect
      ratio = width / height
      if ratio < 3 / 4:
        w, h = width, round(width / (3 / 4))
      elif ratio > 4 / 3:
        w, h = round(height * (4 / 3)), height
      else:
        w, h = width, height
      left, top = (width - w) // 2, (height - h) // 2
      box = (left, top, left + w, top + h)
    return image.resize((self.crop, self.crop), Image.Resampling.BILINEAR,
                        box=box)


@dataclasses.dataclass(frozen=True)
class LoaderOptions:
  """How :meth:`ImageSplit.load_batches` parallelises.

  Attributes:
    num_threads: decoding threads per process (Pillow releases the GIL while
      decoding and resizing, so threads scale).
    num_workers: worker processes; 0 decodes in the training process (grain,
      ``num_threads`` threads). The processes are started once per split,
      on its first pass, and serve every later pass (each epoch, each
      refresh) until :meth:`ImageSplit.close`; each reads whole batches on
      one thread. They help where the GIL, not Pillow, limits the threads
      (a many-core GPU host), and cost start-up time and memory. ``None``:
      one per host core, up to 16, when JAX runs on a GPU or TPU in one
      process, else 0. Processes are started with ``spawn``, which imports
      the program's main module anew: a script must guard its entry point
      with ``if __name__ == "__main__":``. The package's command lines run
      under a light main module instead (:func:`nngk_jax.cli.run_program`),
      so their workers import only the pipeline.
    prefetch: images decoded ahead of the consumer, per process.
    normalise_on_device: the workers return ``uint8`` crops and each batch
      is normalised on JAX's default device after its transfer
      (:meth:`ImageTransform.normalise_batch`): a quarter of the bytes
      between processes and to the device, and no float work on the host.
      ``"auto"`` (default): on when JAX runs on a GPU or TPU in one process;
      on a CPU the host path is as fast and the batches stay NumPy.
    cache_gib: the evaluation transform's crops are deterministic, so once
      a pass has read them they are kept in memory as ``uint8`` when the
      whole split's fit in this many GiB; later evaluation passes (every
      centre refresh, every evaluation) are then gathered from memory
      instead of decoded. 0 turns it off. CUB's training split at 256 x 256
      takes 1.1 GiB.
  """

  num_threads: int = max(1, min(16, os.cpu_count() or 1))
  num_workers: int | None = 0
  prefetch: int = 256
  normalise_on_device: bool | str = "auto"
  cache_gib: float = 2.0

  def __post_init__(self) -> None:
    if isinstance(self.cache_gib, bool) or not isinstance(
        self.cache_gib, (int, float, np.integer, np.floating)) or not (
            0 <= self.cache_gib < math.inf):
      raise ValueError(f"cache_gib must be a non-negative number of GiB, got "
                       f"{self.cache_gib!r}")
    checks.positive_int("num_threads", self.num_threads)
    checks.positive_int("prefetch", self.prefetch)
    if self.normalise_on_device not in (True, False, "auto"):
      raise ValueError(f"normalise_on_device must be True, False or 'auto', "
                       f"got {self.normalise_on_device!r}")
    if self.num_workers is not None and (
        isinstance(self.num_workers, bool)
        or not isinstance(self.num_workers, (int, np.integer))
        or self.num_workers < 0):
      raise ValueError(f"num_workers must be a non-negative integer or None "
                       f"(automatic), got {self.num_workers!r}")


def _epoch_seed(seed: int, epoch: int) -> int:
  return int(np.random.SeedSequence([int(seed), int(epoch), 11])
             .generate_state(1)[0] & 0x7FFFFFFF)


def _block_positions(num_positions: int, batch_size: int, block: slice,
                     first_batch: int) -> Iterator[np.ndarray]:
  """Positions in a pass of this process's ``block`` of rows of each batch,
  from ``first_batch`` on (the rows grain's slicing reads)."""
  rows = np.arange(block.start, block.stop)
  for b in range(first_batch, num_positions // batch_size):
    yield b * batch_size + rows


def _read_example(split: "ImageSplit", index: int, position: int,
                  augment: bool, normalise: bool, seed: int) -> dict:
  """Example ``index`` at ``position`` of a pass; its random choices are
  drawn from ``(seed, position)`` alone, so threads, worker processes, a
  resumed epoch and a shard all see the same crops and flips."""
  record = split.records[index]
  if augment:
    rng = np.random.default_rng([seed, position])
    image = split.transform.train(record, rng, normalise)
  else:
    image = split.transform.evaluate(record, normalise)
  return {"image": image, "label": np.int32(split.labels[index]),
          "index": np.int32(index)}


class _Reader:
  """Picklable per-record function for grain: position -> example dict."""

  def __init__(self, split: "ImageSplit", indices: np.ndarray, augment: bool,
               normalise: bool, seed: int):
    self.split, self.indices, self.augment = split, indices, augment
    self.normalise, self.seed = normalise, seed

  def __call__(self, position: int):
    return _read_example(self.split, int(self.indices[position]), position,
                         self.augment, self.normalise, self.seed)


# The split a worker process serves, set once by _start_worker.
_WORKER_SPLIT: "ImageSplit | None" = None


def _start_worker(split_queue) -> None:
  """A worker's initializer: takes the split its parent queued for it."""
  global _WORKER_SPLIT
  _WORKER_SPLIT = split_queue.get()


def _read_batch(task: tuple) -> dict:
  """In a worker: the examples at ``(indices, positions)``, stacked."""
  indices, positions, augment, normalise, seed = task
  examples = [_read_example(_WORKER_SPLIT, int(i), int(p), augment, normalise,
                            seed) for i, p in zip(indices, positions)]
  return {key: np.stack([e[key] for e in examples]) for key in examples[0]}


class _WorkerPool:
  """Worker processes that live as long as their split.

  grain's ``mp_prefetch`` starts its processes anew for every pass, and
  each new process imports the program and unpickles the split; on a
  16-core GPU host that held them to 460-550 images/s where plain processes
  decode about 2,500 (docs/benchmarks.md, "On a GPU"). These start once
  (``spawn``: a forked JAX process can deadlock) and are handed index
  batches; at most ``window`` batches are in flight, so memory stays
  bounded whatever the consumer's pace.

  The split reaches each worker through a queue, sent by the queue's own
  thread, after the worker has started. Handed to the workers as an
  argument, a parent whose worker died while starting (a script without
  the ``if __name__ == "__main__":`` guard, an import error) blocked for
  ever: ``spawn`` writes the pickled process into a pipe whose reading end
  the parent still holds open, so a pickle larger than the pipe's buffer
  (64 KiB; the split of CUB's TFDS records is larger) never finished once
  the child was gone.
  """

  def __init__(self, split: "ImageSplit", num_workers: int):
    import multiprocessing  # pylint: disable=g-import-not-at-top
    from concurrent import futures  # pylint: disable=g-import-not-at-top
    context = multiprocessing.get_context("spawn")
    self.split_queue = context.Queue()
    # Copies no worker took (a worker that died first) are not waited for
    # when this process exits.
    self.split_queue.cancel_join_thread()
    # concurrent.futures, not multiprocessing.Pool: a worker that dies (an
    # out-of-memory kill) fails the pass with BrokenProcessPool instead of
    # leaving it waiting for a batch that never comes.
    self.pool = futures.ProcessPoolExecutor(
        num_workers, mp_context=context, initializer=_start_worker,
        initargs=(self.split_queue,))
    shipped = split.without_workers()
    for _ in range(num_workers):  # one each; put() does not block
      self.split_queue.put(shipped)

  def batches(self, tasks: Iterator[tuple], window: int):
    import collections  # pylint: disable=g-import-not-at-top
    import itertools  # pylint: disable=g-import-not-at-top
    tasks = iter(tasks)
    pending = collections.deque(self.pool.submit(_read_batch, task)
                                for task in itertools.islice(tasks, window))
    while pending:
      batch = pending.popleft().result()
      pending.extend(self.pool.submit(_read_batch, task)
                     for task in itertools.islice(tasks, 1))
      yield batch

  def close(self) -> None:
    if self.pool is not None:
      self.pool.shutdown(wait=True, cancel_futures=True)
      self.pool = None
    if self.split_queue is not None:
      self.split_queue.close()
      self.split_queue = None


class ImageSplit:
  """A split of images decoded and transformed when read.

  Like the in-memory :class:`~nngk_jax.data.splits.Split` it is a
  :class:`~nngk_jax.data.splits.SplitLike` (``len``, ``labels``,
  ``class_names``, ``num_classes``, ``image_shape``, ``split[i]``,
  ``get_batch``, ``load_batches``), so the trainer treats both alike; its
  :meth:`load_batches`, the path the samplers take, decodes in parallel.

  Attributes:
    records: random-access sequence; ``records[i]`` is encoded image bytes,
      a file path or a ``uint8`` array (see :func:`decode_image`).
    labels: ``[num_examples]`` int32 in ``[0, num_classes)``, read-only.
    class_names: one name per class.
    transform: the :class:`ImageTransform`.
    options: the :class:`LoaderOptions`.

  Examples:
    >>> import numpy as np
    >>> records = [np.full((9, 12, 3), 10 * i, np.uint8) for i in range(4)]
    >>> split = ImageSplit(records, [0, 0, 1, 1], ("a", "b"),
    ...                    ImageTransform(resize=8, crop=8))
    >>> len(split), split.image_shape, split[3]["label"]
    (4, (8, 8, 3), 1)
    >>> batches = list(split.load_batches([np.array([2, 0])], augment=True,
    ...                                   seed=0, epoch=0))
    >>> batches[0]["image"].shape, batches[0]["index"].tolist()
    ((2, 8, 8, 3), [2, 0])
  """

  def __init__(self, records: Sequence[Any], labels: Sequence[int] | np.ndarray,
               class_names: Sequence[str], transform: ImageTransform, *,
               options: LoaderOptions | None = None,
               require_every_class: bool = True) -> None:
    if len(records) != len(labels):
      raise ValueError(f"{len(records)} records but {len(labels)} labels")
    self.records = records
    self.labels, self.class_names = splits.check_labels(
        labels, class_names, require_every_class=require_every_class)
    self.transform = transform
    self.options = options or LoaderOptions()
    self._workers: _WorkerPool | None = None
    self._cache: np.ndarray | None = None   # [N, crop, crop, 3] uint8
    self._cached: np.ndarray | None = None  # [N] bool: rows in the cache

  def __len__(self) -> int:
    return len(self.labels)

  def __repr__(self) -> str:
    return (f"ImageSplit(num_examples={len(self)}, image_shape="
            f"{self.image_shape}, num_classes={self.num_classes})")

  @property
  def num_classes(self) -> int:
    """Number of classes, ``len(class_names)``."""
    return len(self.class_names)

  @property
  def image_shape(self) -> tuple[int, int, int]:
    """``(crop, crop, 3)``: the shape of every transformed image."""
    return self.transform.output_shape

  def __getitem__(self, i: int) -> dict[str, Any]:
    """Example ``i`` with the evaluation transform."""
    n = len(self)
    index = int(i)
    if not -n <= index < n:
      raise IndexError(f"index {index} out of range for a split of {n}")
    index %= n
    return {"image": self.transform.evaluate(self.records[index]),
            "label": int(self.labels[index]), "index": index}

  def get_batch(self, indices: Sequence[int] | np.ndarray) -> dict[str, np.ndarray]:
    """The examples at ``indices`` (evaluation transform), read serially."""
    indices = np.asarray(indices, np.int64)
    if indices.size and (indices.min() < 0 or indices.max() >= len(self)):
      raise IndexError(f"indices must lie in [0, {len(self)}), found "
                       f"[{indices.min()}, {indices.max()}]")
    examples = [self[int(i)] for i in indices]
    return {"image": np.stack([e["image"] for e in examples]),
            "label": self.labels[indices],
            "index": indices.astype(np.int32)}

  def load_batches(self, index_batches: Sequence[np.ndarray], *,
                   augment: bool, seed: int, epoch: int,
                   first_batch: int = 0,
                   shard: tuple[int, int] = (0, 1)
                   ) -> Iterator[dict[str, np.ndarray]]:
    """The batches of examples at ``index_batches``, in order.

    Read by grain with ``num_threads`` threads in this process, or, with
    ``LoaderOptions.num_workers``, by the split's worker processes.

    Args:
      index_batches: equal-length 1-d integer arrays (a sampler's batches).
      augment: training transform (random crop, flip) or evaluation one.
      seed: the run's data seed; with ``epoch`` and the position in the
        epoch it fixes every random choice.
      epoch: the epoch number.
      first_batch: batches skipped without being read; the others get the
        random choices they would get in a full pass (a resumed epoch).
      shard: ``(index, count)``: only block ``index`` of ``count`` equal
        contiguous blocks of each batch's rows is read
        (:func:`~nngk_jax.data.splits.shard_rows`; one process's share of a
        global batch), each row with the random choices it has in the
        whole batch.

    Returns:
      An iterator of ``{"image": [batch, crop, crop, 3] float32, "label":
      [batch] int32, "index": [batch] int32}``; ``"image"`` is a
      ``jax.Array`` on the default device when the batches are normalised
      there (``LoaderOptions.normalise_on_device``), NumPy otherwise.
    """
    if not len(index_batches):
      return iter(())
    batch_size = len(index_batches[0])
    if any(len(b) != batch_size for b in index_batches):
      raise ValueError("index batches must all have the same length")
    flat = np.concatenate([np.asarray(b, np.int64) for b in index_batches])
    on_device = self.normalises_on_device
    seed = _epoch_seed(seed, epoch)
    block = splits.shard_rows(shard, batch_size)
    # Evaluation crops are cached as uint8 (and normalised after the cache).
    cached = not augment and self._cache_fits()
    normalise = not (on_device or cached)
    if cached and self._cached[flat].all():
      batches = self._cached_batches(flat, batch_size, block, first_batch)
    else:
      if self.num_workers:
        batches = self._worker_batches(flat, batch_size, block, first_batch,
                                       augment, normalise, seed)
      else:
        batches = self._thread_batches(flat, batch_size, block, first_batch,
                                       shard, augment, normalise, seed)
      if cached:
        batches = self._filling_cache(batches)
    if on_device:
      return self._normalised(batches)
    return self._normalised_on_host(batches) if cached else batches

  def _cache_fits(self) -> bool:
    """Whether the evaluation crops are cached; allocates the cache."""
    size = len(self) * math.prod(self.image_shape)  # uint8
    if not self.options.cache_gib or size > self.options.cache_gib * 2**30:
      return False
    if self._cache is None:
      self._cache = np.empty((len(self),) + self.image_shape, np.uint8)
      self._cached = np.zeros(len(self), bool)
    return True

  def _filling_cache(self, batches):
    for batch in batches:
      self._cache[batch["index"]] = batch["image"]
      self._cached[batch["index"]] = True
      yield batch

  def _cached_batches(self, flat, batch_size, block, first_batch):
    """The batches gathered from the cache: this process's block of each
    batch from ``first_batch`` on, as the readers give them."""
    for positions in _block_positions(len(flat), batch_size, block,
                                      first_batch):
      index = flat[positions]
      yield {"image": self._cache[index], "label": self.labels[index].astype(
          np.int32), "index": index.astype(np.int32)}

  def _normalised_on_host(self, batches):
    for batch in batches:
      batch["image"] = self.transform._normalise(batch["image"])  # pylint: disable=protected-access
      yield batch

  def _thread_batches(self, flat, batch_size, block, first_batch, shard,
                      augment, normalise, seed):
    """The batches through grain, ``num_threads`` threads in this process."""
    import grain  # pylint: disable=g-import-not-at-top
    reader = _Reader(self, flat, augment, normalise, seed)
    dataset = grain.MapDataset.range(len(flat)).map(reader)
    # Sliced after the map: each record keeps its position's randomness.
    dataset = dataset[first_batch * batch_size:].batch(block.stop - block.start)
    if tuple(shard) != (0, 1):
      # Blocks of a batch follow each other: this process's are every
      # count-th, from its index (grain reads only the records asked for).
      dataset = dataset[shard[0]::shard[1]]
    return iter(dataset.to_iter_dataset(grain.ReadOptions(
        num_threads=self.options.num_threads,
        prefetch_buffer_size=self.options.prefetch)))

  def _worker_batches(self, flat, batch_size, block, first_batch, augment,
                      normalise, seed):
    """The batches from the split's worker processes (started on first use)."""
    if self._workers is None:
      self._workers = _WorkerPool(self, self.num_workers)
      weakref.finalize(self, self._workers.close)
    tasks = ((flat[positions], positions, augment, normalise, seed)
             for positions in _block_positions(len(flat), batch_size, block,
                                               first_batch))
    window = max(2 * self.num_workers,
                 self.options.prefetch // (block.stop - block.start))
    return self._batches_or_restart(self._workers.batches(tasks, window))

  def _batches_or_restart(self, batches):
    from concurrent import futures  # pylint: disable=g-import-not-at-top
    try:
      yield from batches
    except futures.process.BrokenProcessPool as error:
      self.close()  # the next pass starts new workers
      raise RuntimeError(
          f"a worker process of the input pipeline died ({error}); common "
          f"causes: the system killing it for memory (lower "
          f"data.pipeline.num_workers or prefetch, or use threads: "
          f"num_workers=0), or a script whose work is not guarded by "
          f"`if __name__ == '__main__':` (each worker imports the script "
          f"again; the worker's error is printed above)") from error

  def without_workers(self) -> "ImageSplit":
    """This split reading in the calling process (what a worker holds)."""
    return ImageSplit(self.records, self.labels, self.class_names,
                      self.transform,
                      options=dataclasses.replace(self.options, num_workers=0),
                      require_every_class=False)

  def close(self) -> None:
    """Stops the worker processes, if any (a later pass starts new ones)."""
    if self._workers is not None:
      self._workers.close()
      self._workers = None

  def __getstate__(self) -> dict:
    state = dict(self.__dict__)
    state["_workers"] = None  # processes stay with the process that made them
    state["_cache"] = state["_cached"] = None  # not shipped to workers
    return state

  @property
  def num_workers(self) -> int:
    """The worker processes :meth:`load_batches` reads with (resolves
    ``LoaderOptions.num_workers=None``)."""
    if self.options.num_workers is None:
      return min(16, os.cpu_count() or 1) if _on_accelerator() else 0
    return int(self.options.num_workers)

  @property
  def normalises_on_device(self) -> bool:
    """Whether :meth:`load_batches` normalises on the device (resolves
    ``LoaderOptions.normalise_on_device="auto"``)."""
    choice = self.options.normalise_on_device
    return _on_accelerator() if choice == "auto" else bool(choice)

  def _normalised(self, batches):
    for batch in batches:
      batch["image"] = self.transform.normalise_batch(batch["image"])
      yield batch


def pipeline_from_options(
    options: dict[str, Any] | None) -> tuple[ImageTransform, LoaderOptions]:
  """Splits a config's ``data.pipeline`` dict into transform and loader options.

  Args:
    options: fields of :class:`ImageTransform` and :class:`LoaderOptions`
      (``resize``, ``crop``, ``random_resized_crop``, ``flip``,
      ``normalization``, ``num_threads``, ``num_workers``, ``prefetch``);
      None or missing fields take the defaults.

  Returns:
    ``(transform, loader_options)``.

  Raises:
    ValueError: an unknown field (the message lists the known ones) or a bad
      value.

  Examples:
    >>> t, o = pipeline_from_options({"crop": 200, "num_workers": 2})
    >>> t.crop, t.resize, o.num_workers
    (200, 256, 2)
  """
  options = dict(options or {})
  transform_fields = {f.name for f in dataclasses.fields(ImageTransform)}
  loader_fields = {f.name for f in dataclasses.fields(LoaderOptions)}
  unknown = sorted(set(options) - transform_fields - loader_fields)
  if unknown:
    raise ValueError(f"unknown pipeline options {unknown}; known: "
                     f"{sorted(transform_fields | loader_fields)}")
  transform = ImageTransform(
      **{k: v for k, v in options.items() if k in transform_fields})
  loader = LoaderOptions(**{k: v for k, v in options.items()
                            if k in loader_fields})
  return transform, loader

r"""Input-pipeline throughput: images/s, and per CPU core, for CUB-sized JPEGs.

Run:      python experiments/bench_pipeline.py [--num 512] [--size 500x375]
Time:     about a minute on a 2-core CPU.
Measures: ``ImageSplit.load_batches`` (grain) turning encoded JPEGs held in
          memory (as TFDS serves them) into normalised 224 x 224 training
          crops (resize 256, random crop, flip) and 256-centre-crop
          evaluation batches, for several thread / process counts. The JPEGs
          are synthetic photographs-like images (smooth colour fields plus
          noise) of CUB's typical size, 500 x 375.
"""

from __future__ import annotations

import argparse
import io
import os
import time

import numpy as np
from PIL import Image

from nngk_jax import data
from nngk_jax.data import pipeline


def make_jpegs(num: int, width: int, height: int, seed: int = 0) -> list[bytes]:
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[0:height, 0:width] / max(width, height)
  out = []
  for _ in range(num):
    a, b, c = rng.uniform(-3, 3, size=(3, 3))
    field = np.stack([np.sin(a[k] * xx + b[k] * yy + c[k]) for k in range(3)],
                     axis=-1)
    pixels = 127 + 100 * field + rng.normal(0, 12, field.shape)
    buffer = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(
        buffer, "JPEG", quality=90)
    out.append(buffer.getvalue())
  return out


def measure(records, *, augment, resize, crop, threads, workers,
            batch_size=32, repeats=2, on_device=False, cache=False) -> float:
  """Images/s of the best of ``repeats`` passes; with ``on_device`` the
  batches are normalised on JAX's device and the pass waits for them. The
  evaluation crops' cache is off unless ``cache`` (then the passes after
  the first are gathered from memory)."""
  split = pipeline.ImageSplit(
      records, np.arange(len(records)) % 2, ("a", "b"),
      pipeline.ImageTransform(resize=resize, crop=crop),
      options=pipeline.LoaderOptions(num_threads=threads, num_workers=workers,
                                     normalise_on_device=on_device,
                                     cache_gib=2.0 if cache else 0))
  best = 0.0
  for epoch in range(repeats):
    start = time.perf_counter()
    count = 0
    for batch in data.iterate_batches(split, batch_size, seed=0, epoch=epoch,
                                      augment=augment):
      count += len(batch["index"])
      last = batch["image"]
    if on_device:
      last.block_until_ready()
    best = max(best, count / (time.perf_counter() - start))
  split.close()
  return best


def stage_milliseconds(records, *, resize: int = 256, crop: int = 256,
                       repeats: int = 3) -> dict:
  """Milliseconds per image of each evaluation stage, on one thread.

  ``decode`` (with the draft reduction the transform asks for), ``resize``
  of the shorter side, ``crop`` (centre), ``normalise`` to float32, and the
  whole ``evaluate``; the best of ``repeats`` passes over ``records``.
  """
  transform = pipeline.ImageTransform(resize=resize, crop=crop)

  def best(fn, inputs):
    times = []
    for _ in range(repeats):
      start = time.perf_counter()
      for item in inputs:
        fn(item)
      times.append((time.perf_counter() - start) / len(inputs))
    return 1e3 * min(times)

  decoded = [pipeline.decode_image(r, draft_size=resize) for r in records]
  resized = [transform._resize_shorter(im) for im in decoded]  # pylint: disable=protected-access

  def centre(image):
    width, height = image.size
    left, top = (width - crop) // 2, (height - crop) // 2
    return image.crop((left, top, left + crop, top + crop))

  cropped = [centre(im) for im in resized]
  return {
      "decode": best(lambda r: pipeline.decode_image(r, draft_size=resize),
                     records),
      "resize": best(transform._resize_shorter, decoded),  # pylint: disable=protected-access
      "crop": best(lambda im: np.asarray(centre(im)), resized),
      "normalise": best(transform._normalise, cropped),  # pylint: disable=protected-access
      "evaluate": best(transform.evaluate, records),
  }


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--num", type=int, default=512)
  parser.add_argument("--size", default="500x375")
  args = parser.parse_args()
  width, height = (int(v) for v in args.size.split("x"))
  cores = len(os.sched_getaffinity(0))
  records = make_jpegs(args.num, width, height)
  print(f"{args.num} JPEGs {width}x{height}, mean "
        f"{np.mean([len(r) for r in records]) / 1024:.0f} KiB; {cores} cores")
  print("| transform | threads | processes | images/s | images/s per core |")
  print("|---|---|---|---|---|")
  settings = list(dict.fromkeys([(1, 0), (2, 0), (cores, 0), (1, cores)]))
  for name, augment, resize, crop in (
      ("train: resize 256, random crop 224, flip", True, 256, 224),
      ("eval: resize 256, centre crop 256", False, 256, 256)):
    for threads, workers in settings:
      rate = measure(records, augment=augment, resize=resize, crop=crop,
                     threads=threads, workers=workers)
      used = min(cores, max(threads, workers, 1))
      print(f"| {name} | {threads} | {workers} | {rate:.0f} | "
            f"{rate / used:.0f} |", flush=True)
  rate = measure(records, augment=False, resize=256, crop=256,
                 threads=cores, workers=0, cache=True)
  print(f"| eval, second pass from the cache of crops | {cores} | 0 | "
        f"{rate:.0f} | {rate / cores:.0f} |", flush=True)


if __name__ == "__main__":
  main()

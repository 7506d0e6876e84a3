"""Tests for the image input pipeline (nngk_jax.data.pipeline)."""

import io
import pickle

import numpy as np
import pytest
from PIL import Image

from nngk_jax import data
from nngk_jax.data import pipeline


def _coded_image(height=12, width=20):
  """uint8 RGB image whose pixel (r, c) is (10 r, 10 c, 7) + small: unique."""
  rows, cols = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
  return np.stack([rows * 10, cols * 10, np.full_like(rows, 7)],
                  axis=-1).astype(np.uint8)


def _unit(pixels):
  return pixels.astype(np.float32) / 127.5 - 1.0


def _windows(image, crop):
  """Every crop x crop window of ``image`` (a loop reference)."""
  h, w = image.shape[:2]
  return [image[t:t + crop, l:l + crop] for t in range(h - crop + 1)
          for l in range(w - crop + 1)]


def test_evaluate_is_a_centre_crop():
  image = _coded_image(12, 20)  # shorter side 12 == resize: no resampling
  out = pipeline.ImageTransform(resize=12, crop=8).evaluate(image)
  np.testing.assert_allclose(out, _unit(image[2:10, 6:14]), atol=1e-6)


def test_resize_keeps_aspect_of_shorter_side():
  transform = pipeline.ImageTransform(resize=6, crop=6)
  tall = transform._resize_shorter(Image.new("RGB", (10, 30)))
  wide = transform._resize_shorter(Image.new("RGB", (30, 10)))
  assert tall.size == (6, 18) and wide.size == (18, 6)


def test_train_crop_is_a_window_and_flip_a_mirror():
  image = _coded_image(12, 20)
  transform = pipeline.ImageTransform(resize=12, crop=8, flip=True)
  windows = [_unit(w) for w in _windows(image, 8)]
  rng = np.random.default_rng(0)
  flipped = plain = 0
  seen = set()
  for _ in range(40):
    out = transform.train(image, rng)
    match = [i for i, w in enumerate(windows) if np.allclose(out, w)]
    mirror = [i for i, w in enumerate(windows)
              if np.allclose(out[:, ::-1], w)]
    assert match or mirror
    plain += bool(match)
    flipped += bool(mirror)
    seen.update(match or mirror)
  assert plain and flipped
  assert len(seen) > 5  # crops move around


def test_no_flip_option():
  image = _coded_image(12, 20)
  transform = pipeline.ImageTransform(resize=12, crop=12, flip=False)
  for seed in range(5):
    out = transform.train(image, np.random.default_rng(seed))
    assert any(np.allclose(out, _unit(w)) for w in _windows(image, 12))


def test_random_resized_crop_shape_and_content():
  transform = pipeline.ImageTransform(resize=16, crop=10,
                                      random_resized_crop=True)
  constant = np.full((40, 30, 3), 200, np.uint8)
  out = transform.train(constant, np.random.default_rng(0))
  assert out.shape == (10, 10, 3)
  np.testing.assert_allclose(out, _unit(np.uint8(200)), atol=1e-5)
  image = _coded_image(40, 30)
  crops = [transform.train(image, np.random.default_rng(s)) for s in range(4)]
  assert not all(np.allclose(crops[0], c) for c in crops[1:])


def test_imagenet_normalization():
  transform = pipeline.ImageTransform(resize=4, crop=4,
                                      normalization="imagenet")
  out = transform.evaluate(np.full((4, 4, 3), 255, np.uint8))
  mean, std = pipeline.NORMALIZATIONS["imagenet"]
  np.testing.assert_allclose(out[0, 0], (1 - np.array(mean)) / np.array(std),
                             rtol=1e-6)


def test_imagenet_statistics_are_defined_once():
  from nngk_jax import pretrained
  assert pipeline.NORMALIZATIONS["imagenet"] == (pipeline.IMAGENET_MEAN,
                                                 pipeline.IMAGENET_STD)
  assert pretrained.IMAGENET_MEAN is pipeline.IMAGENET_MEAN
  assert pretrained.IMAGENET_STD is pipeline.IMAGENET_STD


def test_decode_kinds(tmp_path):
  grey = np.arange(12, dtype=np.uint8).reshape(3, 4)
  assert np.asarray(pipeline.decode_image(grey)).shape == (3, 4, 3)
  buffer = io.BytesIO()
  Image.fromarray(_coded_image(5, 6)).save(buffer, "PNG")
  np.testing.assert_array_equal(pipeline.decode_image(buffer.getvalue()),
                                _coded_image(5, 6))
  path = tmp_path / "x.png"
  path.write_bytes(buffer.getvalue())
  np.testing.assert_array_equal(pipeline.decode_image(str(path)),
                                _coded_image(5, 6))


def test_decode_errors_name_the_record(tmp_path):
  bad = tmp_path / "broken.jpg"
  bad.write_bytes(b"not an image")
  with pytest.raises(data.DataError, match="broken.jpg"):
    pipeline.decode_image(str(bad))
  with pytest.raises(data.DataError, match="image bytes"):
    pipeline.decode_image(b"\x00\x01")
  with pytest.raises(data.DataError, match="uint8"):
    pipeline.decode_image(np.zeros((2, 2), np.float32))


@pytest.mark.parametrize("options, message", [
    ({"crop": 300}, "must not exceed resize"),
    ({"normalization": "zscore"}, "normalization must be one of"),
    ({"resize": 0}, "resize must be a positive integer"),
    ({"num_workers": -1}, "num_workers"),
    ({"num_threads": 0}, "num_threads"),
    ({"crop_size": 3}, "unknown pipeline options"),
    ({"normalise_on_device": "gpu"}, "normalise_on_device must be"),
    ({"cache_gib": -1}, "cache_gib must be"),
])
def test_bad_options(options, message):
  with pytest.raises(ValueError, match=message):
    pipeline.pipeline_from_options(options)


def _split(num=10, **options):
  records = [_coded_image(12, 14) // (i + 1) for i in range(num)]
  labels = np.arange(num) % 2
  return pipeline.ImageSplit(records, labels, ("a", "b"),
                             pipeline.ImageTransform(resize=12, crop=8),
                             options=pipeline.LoaderOptions(**options))


def test_image_split_is_split_like():
  split = _split()
  assert isinstance(split, data.SplitLike)
  assert not isinstance(split, data.Split)


def test_split_checks_labels():
  with pytest.raises(ValueError, match="3 records but 2 labels"):
    pipeline.ImageSplit([0, 1, 2], [0, 1], ("a", "b"),
                        pipeline.ImageTransform())
  with pytest.raises(ValueError, match="out of range"):
    pipeline.ImageSplit([0, 1], [0, 2], ("a", "b"), pipeline.ImageTransform())
  with pytest.raises(ValueError, match="classes with no images"):
    pipeline.ImageSplit([0, 1], [0, 0], ("a", "b"), pipeline.ImageTransform())


def test_load_batches_equal_serial_reads():
  split = _split(num_threads=3)
  batches = list(data.iterate_batches(split, 4, seed=1, epoch=0,
                                      drop_last=False))
  assert [len(b["index"]) for b in batches] == [4, 4, 4]
  for batch in batches:
    expected = split.get_batch(batch["index"])
    np.testing.assert_array_equal(batch["image"], expected["image"])
    np.testing.assert_array_equal(batch["label"], split.labels[batch["index"]])
  assert batches[-1]["valid"].tolist() == [True, True, False, False]


def test_augmentation_depends_only_on_seed_and_epoch():
  def images(seed, epoch, threads):
    split = _split(num_threads=threads)
    return np.concatenate([b["image"] for b in data.iterate_batches(
        split, 5, seed=seed, epoch=epoch, shuffle=False, augment=True)])

  first = images(0, 0, 1)
  np.testing.assert_array_equal(first, images(0, 0, 4))  # threads: same
  assert not np.array_equal(first, images(0, 1, 1))      # new epoch: new crops
  assert not np.array_equal(first, images(1, 0, 1))


def test_class_balanced_batches_through_pipeline():
  split = _split()
  batches = list(data.iterate_class_balanced_batches(
      split, 2, 2, seed=0, epoch=0, augment=True))
  assert len(batches) == 2
  for batch in batches:
    assert batch["image"].shape == (4, 8, 8, 3)
    assert batch["label"][0] == batch["label"][1] != batch["label"][2]


@pytest.mark.parametrize("augment", [False, True])
def test_normalising_on_the_device_gives_the_host_batches(augment):
  """uint8 crops normalised by the jitted step equal the host's float32
  ones (the same crops and flips: only where the arithmetic runs moves)."""
  import jax
  host, device = _split(), _split(normalise_on_device=True)
  assert not host.normalises_on_device and device.normalises_on_device
  for a, b in zip(data.iterate_batches(host, 5, seed=3, epoch=1,
                                       augment=augment),
                  data.iterate_batches(device, 5, seed=3, epoch=1,
                                       augment=augment)):
    assert isinstance(a["image"], np.ndarray)
    assert isinstance(b["image"], jax.Array)
    assert b["image"].dtype == np.float32 and b["image"].shape == (5, 8, 8, 3)
    np.testing.assert_allclose(np.asarray(b["image"]), a["image"],
                               rtol=0, atol=1e-6)
    np.testing.assert_array_equal(a["index"], b["index"])


def test_automatic_options_follow_the_backend():
  # The tests run JAX on the CPU, where the host path and threads are kept.
  assert _split(normalise_on_device="auto").normalises_on_device is False
  assert _split(num_workers=None).num_workers == 0
  assert _split(num_workers=3).num_workers == 3
  raw = pipeline.ImageTransform(resize=12, crop=8).evaluate(
      _coded_image(12, 14), normalise=False)
  assert raw.dtype == np.uint8 and raw.shape == (8, 8, 3)


class _Unreadable:
  """Records that fail when read: proves a pass came from the cache."""

  def __init__(self, n):
    self.n = n

  def __len__(self):
    return self.n

  def __getitem__(self, i):
    raise AssertionError(f"record {i} was read")


@pytest.mark.parametrize("on_device", [False, True])
def test_evaluation_crops_are_cached_after_their_first_pass(on_device):
  plain = _split(num=12, cache_gib=0)
  cached = _split(num=12, normalise_on_device=on_device)

  def evaluation(split, **kwargs):
    return [{k: np.asarray(v) for k, v in b.items()}
            for b in data.iterate_batches(split, 4, seed=0, epoch=1,
                                          drop_last=False, **kwargs)]

  expected = {str(kw): evaluation(plain, **kw)
              for kw in ({}, {"first_batch": 1}, {"shard": (1, 2)})}
  first = evaluation(cached)  # decoded, and kept
  assert cached._cached.all()  # pylint: disable=protected-access
  records = cached.records
  cached.records = _Unreadable(len(records))
  for kwargs in ({}, {"first_batch": 1}, {"shard": (1, 2)}):
    again = evaluation(cached, **kwargs)
    want = expected[str(kwargs)]
    assert len(again) == len(want)
    for a, b in zip(again, want):
      assert a["image"].dtype == np.float32
      np.testing.assert_allclose(a["image"], b["image"], rtol=0,
                                 atol=1e-6 if on_device else 0)
      np.testing.assert_array_equal(a["index"], b["index"])
      np.testing.assert_array_equal(a["label"], b["label"])
      assert a["label"].dtype == b["label"].dtype
  np.testing.assert_allclose(first[0]["image"], expected["{}"][0]["image"],
                             rtol=0, atol=1e-6 if on_device else 0)
  # Training crops are random: never cached, always read.
  with pytest.raises(AssertionError, match="was read"):
    next(data.iterate_batches(cached, 4, seed=0, epoch=1, augment=True))
  cached.records = records


def test_a_split_too_large_for_the_cache_is_not_cached():
  split = _split(num=12, cache_gib=1e-9)
  list(data.iterate_batches(split, 4, seed=0, epoch=0))
  assert split._cache is None  # pylint: disable=protected-access


@pytest.fixture(scope="module")
def worker_split():
  """A split read by two worker processes, shared by the tests below (each
  start costs a second or two: ``spawn`` imports the package anew)."""
  split = _split(num=12, num_workers=2, prefetch=4)
  yield split
  split.close()


def _pass(split, **kwargs):
  return list(data.iterate_batches(split, 4, seed=0, epoch=2, augment=True,
                                   **kwargs))


def test_worker_processes_give_the_same_batches(worker_split):
  in_process = _split(num=12)
  for kwargs in ({}, {"first_batch": 1}, {"shard": (1, 2)}):
    a, b = _pass(in_process, **kwargs), _pass(worker_split, **kwargs)
    assert len(a) == len(b) == 3 - kwargs.get("first_batch", 0)
    for x, y in zip(a, b):
      assert set(x) == set(y)
      for key in x:
        np.testing.assert_array_equal(x[key], y[key], err_msg=key)
  evaluation = list(data.iterate_batches(worker_split, 5, seed=0, epoch=0,
                                         drop_last=False))
  for batch in evaluation:
    np.testing.assert_array_equal(
        batch["image"], in_process.get_batch(batch["index"])["image"])


def test_worker_processes_live_across_passes(worker_split):
  _pass(worker_split)
  workers = worker_split._workers  # pylint: disable=protected-access
  pids = sorted(workers.pool._processes)  # pylint: disable=protected-access
  _pass(worker_split)
  list(data.iterate_batches(worker_split, 4, seed=0, epoch=3))
  assert worker_split._workers is workers  # pylint: disable=protected-access
  assert sorted(workers.pool._processes) == pids  # pylint: disable=protected-access
  # A pickled split (what a worker receives) carries no processes.
  assert pickle.loads(pickle.dumps(worker_split))._workers is None  # pylint: disable=protected-access


def test_a_dead_worker_fails_the_pass_and_the_next_one_restarts():
  """A worker killed mid-pass (as the system does for memory) is an error
  naming the cause, not a pass waiting forever; the next pass works."""
  import os
  import signal
  # 12 batches, at most 2 in flight: after the kill some are still to be
  # handed out, and handing one to a broken pool fails at once.
  split = _split(num=48, num_workers=1, prefetch=4)
  try:
    batches = data.iterate_batches(split, 4, seed=0, epoch=0)
    next(batches)
    pid, = split._workers.pool._processes  # pylint: disable=protected-access
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(RuntimeError, match="worker process .* died"):
      list(batches)
    assert split._workers is None  # pylint: disable=protected-access
    assert len(list(data.iterate_batches(split, 4, seed=0, epoch=0))) == 12
  finally:
    split.close()


def test_each_worker_takes_its_split_from_the_queue():
  split = _split(num=12, num_workers=2, prefetch=4)
  try:
    _pass(split)
    workers = split._workers  # pylint: disable=protected-access
    assert len(workers.pool._processes) == 2  # pylint: disable=protected-access
    # Both copies taken (a worker may still be starting when the pass ends).
    import time
    deadline = time.monotonic() + 60
    while not workers.split_queue.empty() and time.monotonic() < deadline:
      time.sleep(0.05)
    assert workers.split_queue.empty()
    split.close()
    assert workers.split_queue is None and workers.pool is None
  finally:
    split.close()


UNGUARDED_SCRIPT = """
import numpy as np
from nngk_jax import data
from nngk_jax.data import pipeline
# 40 images of 80 x 80 x 3: the pickled split is about 750 KiB, more than a
# pipe's buffer (64 KiB).
records = [np.full((80, 80, 3), i, np.uint8) for i in range(40)]
split = pipeline.ImageSplit(records, np.arange(40) % 2, ("a", "b"),
                            pipeline.ImageTransform(resize=8, crop=8),
                            options=pipeline.LoaderOptions(num_workers=1))
list(data.iterate_batches(split, 4, seed=0, epoch=0))  # no __main__ guard
print("unreachable: the workers re-run this script and fail")
"""


def test_a_script_without_main_guard_fails_instead_of_hanging(tmp_path):
  """Each worker re-runs an unguarded script, whose pipeline then fails to
  start processes while bootstrapping: the worker dies at once. The parent
  must see that, not block sending it a split larger than a pipe holds."""
  import pathlib
  import subprocess
  import sys
  script = tmp_path / "unguarded.py"
  script.write_text(UNGUARDED_SCRIPT)
  root = str(pathlib.Path(__file__).resolve().parents[1])
  result = subprocess.run([sys.executable, str(script)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120,
                          env={"PATH": "", "PYTHONPATH": root,
                               "JAX_PLATFORMS": "cpu"})
  assert result.returncode == 1, result.stderr[-2000:]
  assert "unreachable" not in result.stdout
  assert "not guarded by `if __name__ == '__main__':`" in result.stderr
  assert "bootstrapping phase" in result.stderr  # the worker's own error


def test_worker_errors_reach_the_caller(tmp_path):
  bad = tmp_path / "broken.jpg"
  bad.write_bytes(b"not an image")
  good = [_coded_image(12, 14)] * 3
  split = pipeline.ImageSplit(
      good + [str(bad)], [0, 1, 0, 1], ("a", "b"),
      pipeline.ImageTransform(resize=12, crop=8),
      options=pipeline.LoaderOptions(num_workers=1))
  try:
    with pytest.raises(data.DataError, match="broken.jpg"):
      list(data.iterate_batches(split, 2, seed=0, epoch=0, shuffle=False))
  finally:
    split.close()
  assert split._workers is None  # pylint: disable=protected-access


def test_folder_through_pipeline(tmp_path):
  for c, name in enumerate(("cat", "dog", "emu")):
    (tmp_path / name).mkdir()
    for i in range(3):
      Image.fromarray(np.full((15, 11, 3), 40 * c + i, np.uint8)).save(
          tmp_path / name / f"{i}.jpg", quality=100)
  ds = data.load_image_folder(tmp_path, class_disjoint=True,
                              pipeline={"resize": 9, "crop": 8})
  assert isinstance(ds.train, pipeline.ImageSplit)
  assert ds.train.class_names == ("cat", "dog") and ds.test.class_names == (
      "emu",)
  assert ds.train.image_shape == (8, 8, 3)
  example = ds.test[1]
  np.testing.assert_allclose(example["image"], _unit(np.uint8(81)), atol=0.02)
  # A file damaged after loading is named when its batch is read ...
  (tmp_path / "emu" / "2.jpg").write_bytes(b"truncated")
  with pytest.raises(data.DataError, match="2.jpg"):
    list(data.iterate_batches(ds.test, 3, seed=0, epoch=0))
  # ... and found by the header check when the folder is loaded.
  with pytest.raises(data.UnreadableImagesError, match="2.jpg"):
    data.load_image_folder(tmp_path, class_disjoint=True,
                           pipeline={"resize": 9, "crop": 8})

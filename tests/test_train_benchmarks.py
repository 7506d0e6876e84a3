"""The whole training loop on each benchmark, through TFDS, on tiny fake data.

``tfds.testing.mock_data`` stands in for the prepared CUB-200-2011, Cars196
and Stanford Online Products (see ``conftest.fake_tfds``): the loader, the
class-disjoint split, the image pipeline, the NNGK loop and the evaluation
all run as they would on the real data, at 8x8 pixels.
"""

import json

import numpy as np
import pytest

from nngk_jax import cli
from nngk_jax import data as datalib
from nngk_jax import train


def _benchmark_config(tiny_config, name):
  config = tiny_config(dataset=name)
  config.data = {"check_counts": False,
                 "pipeline": {"resize": 10, "crop": 8, "num_threads": 2}}
  config.model.backbone = "small_cnn"
  config.model.backbone_kwargs = {"channels": (4, 8)}
  config.nngk.k = 3
  config.batch_size = 4
  config.samples_per_class = 2
  config.num_epochs = 2
  config.eval_batch_size = 4
  config.recall_ks = (1, 2)
  return config


@pytest.mark.parametrize("name", ["cub", "cars196", "sop"])
def test_whole_loop_on_fake_benchmark(name, tiny_config, fake_tfds, tmp_path):
  config = _benchmark_config(tiny_config, name)
  with fake_tfds(name):
    metrics = train.train_and_evaluate(config, tmp_path)
  assert np.isfinite(metrics["recall@1"]) and 0 <= metrics["recall@1"] <= 1
  history = [json.loads(line) for line in
             (tmp_path / "history.jsonl").read_text().splitlines()]
  assert [r["epoch"] for r in history] == [1, 2]
  assert all(np.isfinite(r["train_loss"]) for r in history)
  assert (tmp_path / "metrics.json").exists()


def test_training_batches_are_augmented_and_refresh_is_not(tiny_config,
                                                           fake_tfds):
  """Training crops vary with the epoch; the centre refresh uses centre crops."""
  config = _benchmark_config(tiny_config, "sop")
  with fake_tfds("sop"):
    ds = datalib.load_dataset("sop", **config.data)
    split = ds.train
    order = list(range(len(split)))
    batches = [next(datalib.iterate_batches(split, len(split), seed=0,
                                            epoch=e, shuffle=False,
                                            augment=True))
               for e in (0, 1)]
    plain = next(datalib.iterate_batches(split, len(split), seed=0, epoch=0,
                                         shuffle=False))
  np.testing.assert_array_equal(batches[0]["index"], order)
  np.testing.assert_array_equal(plain["image"], split.get_batch(order)["image"])
  assert batches[0]["image"].shape == plain["image"].shape == (len(split), 8,
                                                               8, 3)


def test_missing_benchmark_stops_with_command(tiny_config, tmp_path):
  config = tiny_config(dataset="cub")
  config.data = {"data_dir": str(tmp_path / "tfds")}
  with pytest.raises(datalib.DatasetNotAvailableError,
                     match=r"make data DATASET=cub"):
    train.train_and_evaluate(config, tmp_path / "run")
  assert not (tmp_path / "run" / "checkpoints").exists()


def test_cli_missing_benchmark_exit_code(tmp_path, capsys):
  code = cli.main(["--dataset", "cars196", "--workdir", str(tmp_path / "r"),
                     f"data.data_dir={str(tmp_path / 'tfds')!r}"])
  assert code == 2
  err = capsys.readouterr().err
  assert "make data DATASET=cars196" in err and "downloads/manual" in err


def test_worker_processes_train_like_threads(tiny_config, fake_tfds,
                                             tmp_path, monkeypatch):
  """The whole loop with the images read by worker processes (which live
  across the epochs and the refreshes) trains exactly as with threads."""
  from nngk_jax.data import pipeline
  started = []
  real_init = pipeline._WorkerPool.__init__  # pylint: disable=protected-access

  def spy(self, split, num_workers):
    started.append(num_workers)
    real_init(self, split, num_workers)

  monkeypatch.setattr(pipeline._WorkerPool, "__init__", spy)  # pylint: disable=protected-access
  runs = {}
  for workers in (0, 1):
    config = _benchmark_config(tiny_config, "cub")
    config.data.pipeline.num_workers = workers
    with fake_tfds("cub"):
      metrics = train.train_and_evaluate(config, tmp_path / str(workers))
    history = [json.loads(line) for line in
               (tmp_path / str(workers) / "history.jsonl").read_text()
               .splitlines()]
    runs[workers] = metrics, [r["train_loss"] for r in history]
  # One pool per split read (training, test), none for the threads' run.
  assert started and set(started) == {1} and len(started) <= 2
  assert runs[0][1] == runs[1][1]
  assert runs[0][0]["recall@1"] == runs[1][0]["recall@1"]
  assert runs[0][0]["map@r"] == runs[1][0]["map@r"]

"""Tests of the training loop, checkpoints, resumption and bad input."""

import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from nngk_jax import checkpoint as checkpointing
from nngk_jax import cli
from nngk_jax import configs
from nngk_jax import data as datalib
from nngk_jax import evaluation
from nngk_jax import loss as losses
from nngk_jax import parallel
from nngk_jax import state as statelib
from nngk_jax import train

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _refreshed_state_and_batch(config):
  """Digits, the model, the bank, a state with a refreshed bank, a batch."""
  dataset = datalib.load_dataset("digits")
  model, bank, state = train.init_run(config, dataset)
  bank_state, record = bank.refresh(
      state.bank, 0, lambda: evaluation.embed_split(state, dataset.train,
                                                    256)[0])
  assert set(record) == {"refresh_seconds", "graph_seconds",
                         "missing_positive_fraction", "positive_share"}
  state = state.replace(bank=bank_state)
  batch = next(train.batches(dataset.train, config, 0, bank))
  return dataset, model, bank, state, batch


def test_train_step_loss_equals_kernel_loss_of_the_batch(tiny_config):
  config = tiny_config()
  dataset, model, bank, state, batch = _refreshed_state_and_batch(config)
  # The loss the step reports, recomputed by hand from the same state.
  (emb, _), _ = model.apply(state.network_variables(), batch["image"],
                            train=True, mutable=["batch_stats"])
  log_weights = state.params["bank"]["log_weights"]
  want = losses.gaussian_kernel_loss(
      emb, jnp.asarray(batch["label"]), state.bank.centres, state.bank.labels,
      jnp.asarray(batch["neighbour_idx"]), sigma=config.nngk.sigma,
      centre_log_weights=log_weights,
      neighbour_mask=jnp.asarray(batch["neighbour_mask"]),
      num_classes=dataset.train.num_classes).mean()
  want = float(want)
  old_weights = np.asarray(log_weights)
  step = train.make_train_step(config, dataset.train.num_classes, bank)
  new_state, metrics = step(state, batch)
  np.testing.assert_allclose(float(metrics["loss"]), want, rtol=1e-5)
  # Only the log-weights of centres that were neighbours in the batch move.
  moved = np.asarray(new_state.params["bank"]["log_weights"]) != old_weights
  touched = np.zeros_like(moved)
  touched[batch["neighbour_idx"].ravel()] = True
  assert moved.any() and not (moved & ~touched).any()
  assert int(new_state.step) == 1


def test_kernel_classify_matches_numpy_vote():
  rng = np.random.default_rng(0)
  centres = rng.normal(size=(40, 3)).astype(np.float32)
  centre_labels = rng.integers(0, 4, 40)
  queries = rng.normal(size=(10, 3)).astype(np.float32)
  got = evaluation.kernel_classify(centres, centre_labels, queries, num_classes=4,
                              k=5, sigma=0.7)
  for q, pred in zip(queries, got):
    d2 = ((centres - q) ** 2).sum(1)
    nearest = np.argsort(d2)[:5]
    votes = np.zeros(4)
    for j in nearest:
      votes[centre_labels[j]] += np.exp(-d2[j] / (2 * 0.7**2))
    assert pred == votes.argmax()


@pytest.mark.slow
@pytest.mark.parametrize("objective", ["nngk", "softmax"])
def test_end_to_end_writes_outputs_and_learns(tmp_path, objective, tiny_config):
  config = tiny_config(objective=objective, num_epochs=3)
  metrics = train.train_and_evaluate(config, tmp_path)
  for name in ("config.json", "history.jsonl", "metrics.json", "loss.png",
               "metrics.png"):
    assert (tmp_path / name).exists(), name
  history = [json.loads(l) for l in
             (tmp_path / "history.jsonl").read_text().splitlines()]
  assert [r["epoch"] for r in history] == [1, 2, 3]
  assert history[-1]["train_loss"] < history[0]["train_loss"]
  assert json.loads((tmp_path / "metrics.json").read_text()) == metrics
  assert metrics["recall@1"] > 0.6  # unseen classes 5-9; chance is ~0.2
  # The raw-pixel baseline of the same test split is reported beside it.
  assert set(metrics["raw_pixels"]) >= {"recall@1", "map@r"}
  assert metrics["raw_pixels"]["recall@1"] > 0.6
  if objective == "nngk":
    assert "graph_seconds" in history[0] and "refresh_seconds" in history[0]


@pytest.mark.slow
def test_classification_protocol_reports_both_accuracies(tmp_path, tiny_config):
  config = tiny_config(objective="softmax", num_epochs=15, eval_every=100)
  config.data = {"protocol": "classification", "seed": 0,
                 "train_per_class": 6}
  config.batch_size = 20
  metrics = train.train_and_evaluate(config, tmp_path)
  # 10 classes: chance is 0.1.
  assert 0.3 < metrics["softmax_accuracy"] <= 1.0
  assert 0.3 < metrics["kernel_accuracy"] <= 1.0


# Runs the command line in a process that sends itself signal argv[2]
# (SIGKILL, SIGTERM, ...) when the train state reaches global step argv[1]:
# the fault is injected here, by wrapping the library's train step, not by a
# hook inside the library.
_KILLING_CLI = """
import os, signal, sys
from nngk_jax import cli, train
kill_at, signum = int(sys.argv[1]), getattr(signal, sys.argv[2])
make_step = train.make_train_step
def make_killing_step(*args, **kwargs):
  step = make_step(*args, **kwargs)
  def killing_step(state, batch):
    if int(state.step) == kill_at:
      os.kill(os.getpid(), signum)
    return step(state, batch)
  return killing_step
train.make_train_step = make_killing_step
sys.exit(cli.main(sys.argv[3:]))
"""


def _cli_args(workdir, *overrides):
  return ["--workdir", str(workdir),
          "--dataset", "digits", "model.backbone=mlp", "model.backbone_kwargs={'hidden': (32,)}",
          "model.embed_dim=8", "nngk.k=8", "batch_size=64", "progress=False",
          "nmi=False", "nngk.refresh_every=2", "nngk.graph_backend='exact'",
          *overrides]


def _run_cli(workdir, *overrides, kill_at_step=None, signal_name="SIGKILL"):
  args = _cli_args(workdir, *overrides)
  if kill_at_step is None:
    command = [sys.executable, "-m", "nngk_jax.train", *args]
  else:
    command = [sys.executable, "-c", _KILLING_CLI, str(kill_at_step),
               signal_name, *args]
  return subprocess.run(command, cwd=ROOT, capture_output=True, text=True,
                        timeout=600)


@pytest.mark.slow
def test_sigkill_mid_epoch_then_rerun_equals_uninterrupted_run(tmp_path):
  """Kill -9 in epoch 4 (14 steps per epoch), rerun, compare final metrics.

  Centres are refreshed every 2 epochs, so the resumed epoch 4 trains on the
  checkpointed centres with a graph rebuilt from them.
  """
  common = ("num_epochs=4",)
  full = _run_cli(tmp_path / "full", *common)
  assert full.returncode == 0, full.stderr
  # The command line trains on one JAX device per core (parallel.split_cpu):
  # killed and resumed on them, too.
  devices = parallel.cpu_device_count(64, parallel.usable_cores())
  if devices > 1:
    assert f"split over {devices} CPU devices" in full.stderr, full.stderr
  killed = _run_cli(tmp_path / "killed", *common, kill_at_step=3 * 14 + 5)
  assert killed.returncode == -9, killed.stderr
  history = (tmp_path / "killed" / "history.jsonl").read_text().splitlines()
  assert len(history) == 3  # epochs 1-3 done, epoch 4 lost mid-way
  resumed = _run_cli(tmp_path / "killed", *common)
  assert resumed.returncode == 0, resumed.stderr
  assert "Resuming" in resumed.stderr
  want = json.loads((tmp_path / "full" / "metrics.json").read_text())
  got = json.loads((tmp_path / "killed" / "metrics.json").read_text())
  assert got.pop("geometry") == want.pop("geometry") == "euclidean"
  assert got.pop("raw_pixels") == want.pop("raw_pixels")
  assert got == pytest.approx(want, rel=1e-6)


def test_sigterm_mid_epoch_exits_143_then_rerun_equals_uninterrupted_run(
    tmp_path, capsys):
  """SIGTERM in epoch 2 (14 steps per epoch): the step finishes, a
  checkpoint is saved at that step, the message says where and how to
  resume; the same command then ends where an uninterrupted run ends.
  One CPU device in the child too, as in this process (conftest.py), so
  that the two halves of the run add up in the same float order."""
  common = ("num_epochs=2", "mesh.cpu_devices=1")
  stopped = _run_cli(tmp_path / "cut", *common, kill_at_step=14 + 9,
                     signal_name="SIGTERM")
  assert stopped.returncode == 143, stopped.stderr
  assert ("SIGTERM received: training stopped in epoch 2 after step 10 of 14"
          in stopped.stderr)
  assert "resume with: python -m nngk_jax.train --workdir" in stopped.stderr
  assert not (tmp_path / "cut" / "metrics.json").exists()
  # In this process: the same command resumes, and the run to compare with.
  assert cli.main(_cli_args(tmp_path / "cut", *common)) == 0
  assert "in epoch 2, after step 10 of 14" in capsys.readouterr().err
  assert cli.main(_cli_args(tmp_path / "full", *common)) == 0
  want = json.loads((tmp_path / "full" / "metrics.json").read_text())
  got = json.loads((tmp_path / "cut" / "metrics.json").read_text())
  assert got.pop("geometry") == want.pop("geometry") == "euclidean"
  assert got.pop("raw_pixels") == want.pop("raw_pixels")
  assert got == pytest.approx(want, rel=1e-6)


def test_nan_loss_stops_naming_epoch_and_step_and_keeps_checkpoint(
    tmp_path, monkeypatch, tiny_config):
  """A step that returns NaN at global step 20 = epoch 2, step 7 (14/epoch)."""
  real_make_train_step = train.make_train_step

  def make_poisoned_step(config, num_classes=None, bank=None, **kwargs):
    step = real_make_train_step(config, num_classes, bank, **kwargs)

    def poisoned(state, batch):
      new_state, metrics = step(state, batch)
      if int(new_state.step) > 20:
        metrics = {**metrics, "loss": jnp.float32(np.nan)}
      return new_state, metrics
    return poisoned

  monkeypatch.setattr(train, "make_train_step", make_poisoned_step)
  with pytest.raises(train.TrainingDivergedError,
                     match=r"loss became nan at epoch 2, step 7 of 14"):
    train.train_and_evaluate(tiny_config(num_epochs=3), tmp_path)
  store = checkpointing.CheckpointStore(tmp_path / "checkpoints", {})
  assert store.latest_epoch() == 1  # the last good one stays
  history = (tmp_path / "history.jsonl").read_text().splitlines()
  assert len(history) == 1


def test_real_divergence_is_caught(tmp_path, tiny_config):
  config = tiny_config(num_epochs=1)
  config.optimizer.learning_rate = 1e30
  with pytest.raises(train.TrainingDivergedError,
                     match=r"(loss became|NaN or infinite|ran away).*epoch 1"):
    train.train_and_evaluate(config, tmp_path)
  store = checkpointing.CheckpointStore(tmp_path / "checkpoints", {})
  assert store.latest_epoch() is None


def test_workdir_from_another_config_is_refused(tmp_path, tiny_config):
  train.train_and_evaluate(tiny_config(num_epochs=1), tmp_path)
  other = tiny_config(num_epochs=1)
  old_sigma = other.nngk.sigma
  other.nngk.sigma = old_sigma + 3.0
  with pytest.raises(checkpointing.ConfigMismatchError,
                     match=rf"nngk.sigma: {old_sigma} -> {old_sigma + 3.0}"):
    train.train_and_evaluate(other, tmp_path)
  # Training longer is allowed: num_epochs is resumable.
  metrics = train.train_and_evaluate(tiny_config(num_epochs=2), tmp_path)
  assert metrics["epochs"] == 2


@pytest.mark.parametrize("overrides, match", [
    ({"nngk.k": 901}, r"nngk.k=901 neighbours need a bank of more than 901 centres, but the training split has 901"),
    ({"nngk.sigma": 0.0}, r"nngk.sigma must be positive"),
    ({"nngk.sigma": -2.0}, r"nngk.sigma must be positive"),
    ({"batch_size": 5000}, r"batch_size=5000 is larger than the training"),
    ({"objective": "nope"}, r"unknown objective 'nope'"),
    ({"model.backbone": "resnet9000"}, r"unknown backbone 'resnet9000'"),
    ({"sampler": "balanced"}, r"sampler must be one of"),
    ({"sampler": "class_balanced", "samples_per_class": 7},
     r"batch_size=64 must be a multiple of samples_per_class=7"),
])
def test_bad_config_is_a_clear_error(tmp_path, overrides, match, tiny_config):
  with pytest.raises(ValueError, match=match):
    train.train_and_evaluate(tiny_config(**overrides), tmp_path)


def test_nngk_with_class_balanced_sampler(tiny_config):
  """config.sampler overrides the objective's: m images per class per batch."""
  config = tiny_config(sampler="class_balanced", samples_per_class=16)
  dataset = datalib.load_dataset("digits")
  batches = list(train.batches(dataset.train, config, 0))
  assert len(batches) == len(dataset.train) // 64
  for batch in batches:
    counts = np.bincount(batch["label"])
    assert sorted(counts[counts > 0]) == [16, 16, 16, 16]
  random = list(train.batches(dataset.train, tiny_config(), 0))
  # The NNGK default: shuffled batches, which mix all five classes.
  assert any(len(np.unique(b["label"])) == 5 for b in random)


def test_unknown_override_field(tiny_config):
  with pytest.raises(ValueError, match="unknown config field 'nngk.kk'"):
    configs.apply_overrides(tiny_config(), ["nngk.kk=3"])


def test_cli_folder_with_unreadable_image_names_it(tmp_path, capsys):
  root = tmp_path / "images"
  for c in ("cat", "dog"):
    (root / c).mkdir(parents=True)
    for i in range(3):
      Image.new("RGB", (10, 10), (i * 40, 0, 0)).save(root / c / f"{i}.png")
  (root / "dog" / "broken.png").write_bytes(b"not an image")
  code = cli.main(["--dataset", f"folder:{root}",
                     "--workdir", str(tmp_path / "run")])
  assert code == 1
  assert "broken.png" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_trains_on_an_image_folder(tmp_path):
  root = tmp_path / "images"
  rng = np.random.default_rng(0)
  for c, colour in enumerate([(255, 0, 0), (0, 255, 0), (0, 0, 255),
                              (255, 255, 0)]):
    (root / f"class{c}").mkdir(parents=True)
    for i in range(12):
      pixels = np.clip(rng.normal(colour, 40, (12, 12, 3)), 0, 255)
      Image.fromarray(pixels.astype(np.uint8)).save(root / f"class{c}" / f"{i}.png")
  result = _run_cli(tmp_path / "run", "num_epochs=2", "batch_size=8",
                    "nngk.k=5", "classifier_k=5", "data.image_size=8",
                    f"dataset='folder:{root}'",
                    "--config", "experiments/configs/folder.py")
  assert result.returncode == 0, result.stderr
  metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
  assert metrics["kernel_accuracy"] > 0.5


def test_lr_multipliers_scale_the_proxies_updates(tiny_config):
  """One SGD step: the proxies move by 100x lr times their gradient, the
  network by lr times its own (one optimiser over one params tree)."""
  config = tiny_config(objective="proxy_anchor")
  config.optimizer = {"name": "sgd", "learning_rate": 0.01,
                      "lr_multipliers": {"^proxies$": 100.0}}
  dataset = datalib.load_dataset("digits")
  model = statelib.build_model(config, dataset.train.num_classes)
  state = statelib.create_train_state(jax.random.key(0), config, model,
                                   dataset.train.image_shape)
  grads = jax.tree_util.tree_map(jnp.ones_like, state.params)
  new = state.apply_gradients(grads=grads)
  np.testing.assert_allclose(
      np.asarray(new.params["proxies"] - state.params["proxies"]), -1.0,
      rtol=1e-5)
  np.testing.assert_allclose(
      np.asarray(new.params["embedding"]["kernel"]
                 - state.params["embedding"]["kernel"]), -0.01, rtol=1e-4)


@pytest.mark.parametrize("multipliers, match", [
    ({"(": 10.0}, "bad pattern"), ({"proxies": -1.0}, "positive number")])
def test_lr_multipliers_bad_input(multipliers, match):
  import ml_collections
  config = ml_collections.ConfigDict({"optimizer": {
      "name": "adam", "learning_rate": 1e-3, "lr_multipliers": multipliers}})
  with pytest.raises(ValueError, match=match):
    statelib.make_optimizer(config)


def test_batch_centre_momentum_moves_only_the_batch_centres(tiny_config):
  config = tiny_config(**{"nngk.batch_centre_momentum": 0.0})
  dataset, model, bank, state, batch = _refreshed_state_and_batch(config)
  old = np.asarray(state.bank.centres).copy()
  (emb, _), _ = model.apply(state.network_variables(), batch["image"],
                            train=True, mutable=["batch_stats"])
  new_state, _ = train.make_train_step(config, dataset.train.num_classes,
                                       bank)(state, batch)
  new = np.asarray(new_state.bank.centres)
  touched = np.zeros(len(old), bool)
  touched[batch["index"]] = True
  np.testing.assert_array_equal(new[~touched], old[~touched])
  # momentum 0: the batch's centres become its train-mode embeddings.
  np.testing.assert_allclose(new[batch["index"]], np.asarray(emb), rtol=1e-5,
                             atol=1e-6)


def test_checkpoint_of_an_older_state_layout_is_refused_clearly(
    tmp_path, monkeypatch, tiny_config):
  """A workdir written before the centre bank became a component (layout 1,
  no "format" in the metadata) is refused with a message, not half-read."""
  monkeypatch.setattr(checkpointing, "FORMAT", 1)
  train.train_and_evaluate(tiny_config(num_epochs=1), tmp_path)
  monkeypatch.undo()
  with pytest.raises(checkpointing.ConfigMismatchError,
                     match=r"train-state layout 1 .* reads layout 2.*another"):
    train.train_and_evaluate(tiny_config(num_epochs=2), tmp_path)


def test_second_run_in_a_busy_workdir_is_refused_naming_the_holder(
    tmp_path, tiny_config):
  from nngk_jax import workdir as workdirlib
  with workdirlib.WorkdirLock(tmp_path):
    with pytest.raises(workdirlib.WorkdirBusyError,
                       match=rf"in use by process {os.getpid()} on"):
      train.train_and_evaluate(tiny_config(num_epochs=1), tmp_path)
  assert not (tmp_path / "checkpoints").exists()  # refused before any work
  # Released: the same workdir trains now.
  assert train.train_and_evaluate(tiny_config(num_epochs=1),
                                  tmp_path)["epochs"] == 1


@pytest.mark.parametrize("overrides, match", [
    ({"eval_every": 0}, r"eval_every must be a positive integer, got 0"),
    ({"num_epochs": -1}, r"num_epochs must be a positive integer, got -1"),
    ({"batch_size": 0}, r"batch_size must be a positive integer, got 0"),
    ({"optimizer.learning_rate": -1e-3}, r"learning_rate must be positive"),
    ({"checkpoint_every_steps": -5},
     r"checkpoint_every_steps must be a non-negative integer, got -5"),
])
def test_bad_settings_are_refused_before_any_work(tmp_path, overrides, match,
                                                  tiny_config):
  with pytest.raises(ValueError, match=match):
    train.train_and_evaluate(tiny_config(**overrides), tmp_path / "run")
  assert not (tmp_path / "run").exists()


def test_runaway_parameters_stop_training_and_a_lower_rate_resumes(
    tmp_path, tiny_config):
  """lr 1e6 keeps the loss finite but sends the parameters away: stopped
  like a NaN, and a rerun with a lower rate resumes from the checkpoint."""
  train.train_and_evaluate(tiny_config(num_epochs=1), tmp_path)
  runaway = tiny_config(num_epochs=2)
  runaway.optimizer.learning_rate = 1e6
  with pytest.raises(train.TrainingDivergedError,
                     match=r"parameter norm ran away .* epoch 2, step"):
    train.train_and_evaluate(runaway, tmp_path)
  metrics = train.train_and_evaluate(tiny_config(num_epochs=2), tmp_path)
  assert metrics["epochs"] == 2 and metrics["recall@1"] > 0.5


def test_epoch_is_checkpointed_before_its_evaluation(tmp_path, monkeypatch,
                                                     tiny_config):
  def broken(*args, **kwargs):
    raise RuntimeError("evaluation failed")
  monkeypatch.setattr(evaluation, "evaluate", broken)
  with pytest.raises(RuntimeError, match="evaluation failed"):
    train.train_and_evaluate(tiny_config(num_epochs=1, eval_every=1),
                             tmp_path)
  store = checkpointing.CheckpointStore(tmp_path / "checkpoints", {})
  assert store.latest_epoch() == 1


def test_cli_errors_are_one_line(tmp_path, capsys):
  code = cli.main(["--dataset", "digits", "--workdir", str(tmp_path),
                   "nngk.sigma=abc"])
  err = capsys.readouterr().err
  assert code == 1
  assert err.count("\n") == 1 and err.startswith("error: ValueError:")
  assert "sigma" in err

"""Recovery from damaged work directories, and no untrusted deserialisation."""

import json
import pathlib
import re

import pytest

from nngk_jax import checkpoint as checkpointing
from nngk_jax import train

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _checkpoint_dirs(workdir):
  """The checkpoint directories of a run, oldest first."""
  return sorted((p for p in (workdir / "checkpoints").iterdir()
                 if p.name.isdigit()), key=lambda p: int(p.name))


def test_damaged_newest_checkpoint_falls_back_to_the_previous_one(
    tmp_path, tiny_config, capsys):
  """Truncated array files in the epoch-2 checkpoint: a warning names it,
  training resumes from epoch 1 and ends where the undamaged run ended."""
  config = tiny_config(num_epochs=2)
  want = train.train_and_evaluate(config, tmp_path)
  # Checkpoints are numbered by global step: 14 steps per epoch.
  first, second = _checkpoint_dirs(tmp_path)
  damaged = list(second.rglob("ocdbt.process_0/d/*"))
  assert damaged
  for path in damaged:
    path.write_bytes(path.read_bytes()[:10])
  capsys.readouterr()
  got = train.train_and_evaluate(tiny_config(num_epochs=2), tmp_path)
  err = capsys.readouterr().err
  assert "checkpoint of epoch 2" in err and "cannot be read" in err
  assert "Resuming" in err and "after epoch 1" in err
  assert got["recall@1"] == pytest.approx(want["recall@1"])
  assert first.exists()  # nothing deleted


def test_no_readable_checkpoint_is_a_clear_error(tmp_path, tiny_config):
  train.train_and_evaluate(tiny_config(num_epochs=1), tmp_path)
  for path in (tmp_path / "checkpoints").rglob("ocdbt.process_0/d/*"):
    path.write_bytes(b"")
  with pytest.raises(ValueError, match=r"no checkpoint in .* can be read"):
    train.train_and_evaluate(tiny_config(num_epochs=2), tmp_path)


def test_lowering_num_epochs_on_a_finished_run_keeps_its_epoch_count(
    tmp_path, tiny_config, capsys):
  train.train_and_evaluate(tiny_config(num_epochs=2), tmp_path)
  metrics = train.train_and_evaluate(tiny_config(num_epochs=1), tmp_path)
  assert metrics["epochs"] == 2
  assert json.loads((tmp_path / "metrics.json").read_text())["epochs"] == 2
  assert "has 2 epochs, more than num_epochs=1" in capsys.readouterr().err


def test_missing_history_is_reported_on_resume(tmp_path, tiny_config, capsys):
  train.train_and_evaluate(tiny_config(num_epochs=1), tmp_path)
  (tmp_path / "history.jsonl").unlink()
  capsys.readouterr()
  train.train_and_evaluate(tiny_config(num_epochs=2), tmp_path)
  assert "holds 0 of the 1 epochs" in capsys.readouterr().err


def test_no_pickle_or_eval_on_files_the_user_gives():
  """Work and data directories are untrusted: nothing in the package or the
  experiments unpickles (numpy's allow_pickle, pickle, torch.load) or
  evaluates text as code."""
  pattern = re.compile(
      r"allow_pickle\s*=\s*True|pickle\.loads?\(|torch\.load\(|"
      r"(?<![\w.])eval\(|(?<![\w.])exec\(")
  offenders = []
  for path in list((ROOT / "nngk_jax").rglob("*.py")) + list(
      (ROOT / "experiments").rglob("*.py")):
    for number, line in enumerate(path.read_text().splitlines(), 1):
      if pattern.search(line):
        offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
  assert not offenders, offenders


def test_makefile_quotes_paths_with_an_apostrophe():
  import shlex
  import shutil
  import subprocess
  if shutil.which("make") is None:
    pytest.skip("make is not installed")
  path = "folder:/data/it's mine"
  command = subprocess.run(
      ["make", "-n", "train", f"DATASET={path}", "WORKDIR=runs/o'brien"],
      cwd=ROOT, capture_output=True, text=True, check=True).stdout
  line = next(l for l in command.splitlines() if "nngk_jax.train" in l)
  args = shlex.split(line)
  assert args[args.index("--dataset") + 1] == path
  assert args[args.index("--workdir") + 1] == "runs/o'brien"


# -- Signals and mid-epoch checkpoints ---------------------------------------
# The digits split has 901 training images: 14 steps of 64 per epoch.
STEPS = 14


def _step_hook(monkeypatch, at_step, action):
  """Wraps the train step so that ``action()`` runs just before the step
  that takes the state from global step ``at_step`` to ``at_step + 1``: the
  fault is injected from outside the library."""
  make_step = train.make_train_step

  def make_hooked_step(*args, **kwargs):
    step = make_step(*args, **kwargs)

    def hooked_step(state, batch):
      if int(state.step) == at_step:
        action()
      return step(state, batch)
    return hooked_step

  monkeypatch.setattr(train, "make_train_step", make_hooked_step)


def _same_metrics(got, want):
  assert got.pop("raw_pixels") == want.pop("raw_pixels")
  assert got.pop("geometry") == want.pop("geometry")
  assert got == pytest.approx(want, rel=1e-6)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, tiny_config):
  """Metrics and history of a 2-epoch run with batch-centre momentum (the
  centres move every step, so a graph rebuilt mid-epoch would differ from
  the one the epoch began with)."""
  workdir = tmp_path_factory.mktemp("full")
  config = tiny_config(num_epochs=2, **{"nngk.batch_centre_momentum": 0.5})
  metrics = train.train_and_evaluate(config, workdir)
  history = [json.loads(line) for line in
             (workdir / "history.jsonl").read_text().splitlines()]
  return metrics, history


def _stop_then_resume(workdir, make_config, monkeypatch, capsys, *, at_step,
                      action, raises, match, resumed_at):
  """Runs with ``action`` injected before global step ``at_step`` (it must
  raise ``raises``), then reruns as is; returns the error, the checkpoints
  left after the stop and the resumed run's metrics."""
  _step_hook(monkeypatch, at_step, action)
  with pytest.raises(raises, match=match) as info:
    train.train_and_evaluate(make_config(), workdir)
  checkpoints = [int(p.name) for p in _checkpoint_dirs(workdir)]
  monkeypatch.undo()
  capsys.readouterr()
  metrics = train.train_and_evaluate(make_config(), workdir)
  assert (f"in epoch 2, after step {resumed_at} of {STEPS}"
          in capsys.readouterr().err)
  return info.value, checkpoints, metrics


def test_ctrl_c_mid_epoch_saves_at_the_step_and_resumes_exactly(
    tmp_path, tiny_config, monkeypatch, capsys, uninterrupted):
  import signal
  error, checkpoints, got = _stop_then_resume(
      tmp_path, lambda: tiny_config(
          num_epochs=2, **{"nngk.batch_centre_momentum": 0.5}),
      monkeypatch, capsys, at_step=STEPS + 5,
      action=lambda: signal.raise_signal(signal.SIGINT),
      raises=train.TrainingInterrupted,
      match=r"SIGINT received: training stopped in epoch 2 after step 6 of "
            r"14", resumed_at=6)
  assert error.exit_code == 130
  assert checkpoints == [STEPS, STEPS + 6]  # numbered by global step
  want, want_history = uninterrupted
  _same_metrics(got, dict(want))
  history = [json.loads(line) for line in
             (tmp_path / "history.jsonl").read_text().splitlines()]
  assert [r["epoch"] for r in history] == [1, 2]
  assert history[1]["train_loss"] == pytest.approx(
      want_history[1]["train_loss"], rel=1e-5)
  # The refresh's record (graph_seconds, ...) is carried over the stop.
  assert set(history[1]) == set(want_history[1])


def test_checkpoint_every_steps_resumes_a_crash_exactly(
    tmp_path, tiny_config, monkeypatch, capsys, uninterrupted):

  def crash():
    raise RuntimeError("injected crash")

  _, checkpoints, got = _stop_then_resume(
      tmp_path, lambda: tiny_config(
          num_epochs=2, checkpoint_every_steps=4,
          **{"nngk.batch_centre_momentum": 0.5}),
      monkeypatch, capsys, at_step=STEPS + 7, action=crash,
      raises=RuntimeError, match="injected crash", resumed_at=4)
  # Every 4 steps, never after an epoch's last step (its own checkpoint
  # follows); Orbax keeps the newest two.
  assert checkpoints == [STEPS, STEPS + 4]
  _same_metrics(got, dict(uninterrupted[0]))


def test_a_second_ctrl_c_stops_at_once_without_a_checkpoint(
    tmp_path, tiny_config, monkeypatch):
  import signal
  from nngk_jax import interrupts

  def twice():
    signal.raise_signal(signal.SIGINT)
    signal.raise_signal(signal.SIGINT)

  _step_hook(monkeypatch, STEPS + 2, twice)
  with pytest.raises(interrupts.StoppedAtOnce, match="second SIGINT"):
    train.train_and_evaluate(tiny_config(num_epochs=2), tmp_path)
  assert [p.name for p in _checkpoint_dirs(tmp_path)] == [str(STEPS)]
  # The handlers are put back: Ctrl-C outside training is Python's again.
  assert signal.getsignal(signal.SIGINT) is signal.default_int_handler

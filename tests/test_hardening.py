"""Recovery from damaged work directories, and no untrusted deserialisation."""

import json
import pathlib
import re

import pytest

from nngk_jax import checkpoint as checkpointing
from nngk_jax import train

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_damaged_newest_checkpoint_falls_back_to_the_previous_one(
    tmp_path, tiny_config, capsys):
  """Truncated array files in the epoch-2 checkpoint: a warning names it,
  training resumes from epoch 1 and ends where the undamaged run ended."""
  config = tiny_config(num_epochs=2)
  want = train.train_and_evaluate(config, tmp_path)
  damaged = list((tmp_path / "checkpoints" / "2").rglob("ocdbt.process_0/d/*"))
  assert damaged
  for path in damaged:
    path.write_bytes(path.read_bytes()[:10])
  capsys.readouterr()
  got = train.train_and_evaluate(tiny_config(num_epochs=2), tmp_path)
  err = capsys.readouterr().err
  assert "checkpoint of epoch 2" in err and "cannot be read" in err
  assert "Resuming" in err and "after epoch 1" in err
  assert got["recall@1"] == pytest.approx(want["recall@1"])
  assert (tmp_path / "checkpoints" / "1").exists()  # nothing deleted


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

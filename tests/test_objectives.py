"""Every registered objective trains in the same loop, with no special cases."""

import pathlib

import numpy as np
import pytest

from nngk_jax import objectives
from nngk_jax import train

ROOT = pathlib.Path(__file__).resolve().parent.parent



@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(objectives.OBJECTIVES))
def test_objective_trains_and_loss_decreases(tmp_path, name, tiny_config):
  import json
  metrics = train.train_and_evaluate(tiny_config(objective=name), tmp_path)
  history = [json.loads(l) for l in
             (tmp_path / "history.jsonl").read_text().splitlines()]
  assert all(np.isfinite(r["train_loss"]) for r in history)
  assert history[1]["train_loss"] < history[0]["train_loss"]
  assert 0.0 <= metrics["map@r"] <= 1.0


def test_loss_options_merge_defaults_and_reject_unknown(tiny_config):
  config = tiny_config(objective="vmf")
  config.losses = {"vmf": {"kappa": 4.0}}
  assert objectives.loss_options(config, "vmf") == {"kappa": 4.0}
  config.losses = {"vmf": {"kapa": 4.0}}
  with pytest.raises(ValueError, match=r"unknown option\(s\) \['kapa'\] for loss 'vmf'"):
    objectives.loss_options(config, "vmf")


def test_class_balanced_batch_size_must_divide(tmp_path, tiny_config):
  config = tiny_config(objective="triplet")
  config.samples_per_class = 7
  with pytest.raises(ValueError, match="multiple of samples_per_class=7"):
    train.train_and_evaluate(config, tmp_path)


def test_group_batches_carry_anchors(tiny_config):
  config = tiny_config(objective="group")
  from nngk_jax import data as datalib
  dataset = datalib.load_dataset("digits")
  batch = next(train._batches_with_neighbours(dataset.train, config, 0, None))
  labels = batch["label"]
  assert len(np.unique(labels)) == 64 // 16
  for c in np.unique(labels):
    assert batch["anchor_mask"][labels == c].sum() == 2

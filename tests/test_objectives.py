"""Every registered objective trains in the same loop, with no special cases."""

import pathlib

import numpy as np
import pytest

from nngk_jax import bank as banklib
from nngk_jax import evaluation
from nngk_jax import objectives
from nngk_jax import state as statelib
from nngk_jax import train

ROOT = pathlib.Path(__file__).resolve().parent.parent



@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(objectives.OBJECTIVES))
def test_objective_trains_and_loss_decreases(tmp_path, name, tiny_config):
  import json
  # A centre bank is refreshed every epoch, which moves the loss's target:
  # its loss is compared over three epochs rather than two.
  epochs = 3 if objectives.get_objective(name).make_bank is not None else 2
  metrics = train.train_and_evaluate(
      tiny_config(objective=name, num_epochs=epochs), tmp_path)
  history = [json.loads(l) for l in
             (tmp_path / "history.jsonl").read_text().splitlines()]
  assert all(np.isfinite(r["train_loss"]) for r in history)
  assert history[-1]["train_loss"] < history[0]["train_loss"]
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
  batch = next(train.batches(dataset.train, config, 0))
  labels = batch["label"]
  assert len(np.unique(labels)) == 64 // 16
  for c in np.unique(labels):
    assert batch["anchor_mask"][labels == c].sum() == 2


EXPECTED_GEOMETRY = {
    "nngk": "euclidean", "impostor": "euclidean", "softmax": "euclidean", "nca": "euclidean",
    "triplet": "euclidean", "vmf": "cosine", "normalized_softmax": "cosine",
    "proxy_nca": "cosine", "proxy_anchor": "cosine", "rank": "cosine",
    "group": "cosine",
}


def test_every_objective_declares_its_geometry():
  assert set(EXPECTED_GEOMETRY) == set(objectives.OBJECTIVES)
  for name, geometry in EXPECTED_GEOMETRY.items():
    assert objectives.get_objective(name).geometry == geometry, name


@pytest.mark.parametrize("name", sorted(EXPECTED_GEOMETRY))
@pytest.mark.parametrize("normalize", [False, True])
def test_evaluation_geometry(name, normalize, tiny_config):
  config = tiny_config(objective=name, **{"model.normalize": normalize})
  want = "cosine" if normalize else EXPECTED_GEOMETRY[name]
  assert objectives.evaluation_geometry(config) == want


def test_cosine_evaluation_ignores_embedding_norms(tiny_config, monkeypatch):
  """A cosine objective is scored on directions: rescaling each test
  embedding by a random factor changes nothing; a Euclidean one is scored on
  the raw embeddings, where the same rescaling does change the ranking."""
  import jax
  from nngk_jax import data as datalib
  from nngk_jax import train
  dataset = datalib.load_dataset("digits")
  scale = np.random.default_rng(0).uniform(0.1, 10.0, (len(dataset.test), 1))
  results = {}
  for name in ("proxy_anchor", "nca"):
    config = tiny_config(objective=name)
    model = statelib.build_model(config, dataset.train.num_classes)
    state = statelib.create_train_state(jax.random.key(0), config, model,
                                     dataset.train.image_shape)
    plain = evaluation.evaluate(state, dataset, config)
    original = evaluation.embed_split
    monkeypatch.setattr(
        evaluation, "embed_split",
        lambda *a, **k: (original(*a, **k)[0] * scale, None))
    scaled = evaluation.evaluate(state, dataset, config)
    monkeypatch.setattr(evaluation, "embed_split", original)
    results[name] = (plain, scaled)
  plain, scaled = results["proxy_anchor"]
  assert plain["geometry"] == scaled["geometry"] == "cosine"
  np.testing.assert_allclose(plain["map@r"], scaled["map@r"], rtol=1e-4)
  plain, scaled = results["nca"]
  assert plain["geometry"] == "euclidean"
  assert abs(plain["map@r"] - scaled["map@r"]) > 1e-3


@pytest.mark.parametrize("rule", ["authors", "skip"])
def test_nngk_no_positive_rule(rule, tiny_config):
  """"skip" zeroes exactly the rows with no same-class neighbour (value and
  gradient); every other row, and "authors", is the loss function's."""
  import jax
  import jax.numpy as jnp
  from nngk_jax import loss as losses
  config = tiny_config(**{"nngk.no_positive": rule})
  rng = np.random.default_rng(0)
  centres = jnp.asarray(rng.normal(size=(12, 3)), jnp.float32)
  centre_labels = jnp.asarray([0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3])
  batch = {"label": jnp.asarray([0, 1, 3]),
           "neighbour_idx": jnp.asarray([[0, 3, 6], [4, 6, 9], [3, 4, 5]]),
           "neighbour_mask": jnp.ones((3, 3), bool)}
  # What CentreBank.batch_extras supplies: a same-class centre in the row.
  batch["has_positive"] = jnp.any(
      centre_labels[batch["neighbour_idx"]] == batch["label"][:, None], axis=1)
  emb = jnp.asarray(rng.normal(size=(3, 3)), jnp.float32)

  def per_example(e):
    # One row at a time through the objective's (averaged) loss.
    rows = []
    for b in range(len(e)):
      row_batch = {key: value[b:b + 1] for key, value in batch.items()}
      row_batch["valid"] = jnp.ones((1,), bool)
      inputs = objectives.LossInputs(
          embeddings=e[b:b + 1], logits=None, batch=row_batch, num_classes=4,
          bank=banklib.BankView(centres, centre_labels, None))
      rows.append(objectives.get_objective("nngk").loss(inputs, config))
    return jnp.stack(rows)

  want = losses.gaussian_kernel_loss(
      emb, batch["label"], centres, centre_labels, batch["neighbour_idx"],
      sigma=config.nngk.sigma, num_classes=4)
  got = per_example(emb)
  # Rows 0 and 1 have a positive (centres 0 and 4); row 2 (label 3, all
  # neighbours of class 1) has none.
  np.testing.assert_allclose(got[:2], want[:2], rtol=1e-6)
  grad = np.asarray(jax.grad(lambda e: per_example(e).sum())(emb))
  if rule == "skip":
    assert float(got[2]) == 0.0
    np.testing.assert_array_equal(grad[2], 0.0)
  else:
    np.testing.assert_allclose(got[2], want[2], rtol=1e-6)
    assert np.abs(grad[2]).sum() > 0


def test_unknown_no_positive_rule_is_refused_before_training(tmp_path,
                                                             tiny_config):
  config = tiny_config(**{"nngk.no_positive": "ignore"})
  with pytest.raises(ValueError, match="nngk.no_positive must be one of"):
    train.train_and_evaluate(config, tmp_path)
  assert not (tmp_path / "history.jsonl").exists()

"""Continual NNGK: eq. 13, add/drop selection, metrics, and short runs."""

import math

import numpy as np
import pytest

from nngk_jax import continual


def _loop_redistribute(centres, probs, z0, y0, k, sigma):
  """Eq. 13 by loops in float64 (N_K(z_j) excludes z_j, sum adds z_0)."""
  centres = centres.astype(np.float64)
  probs = probs.astype(np.float64).copy()
  kern = lambda a, b: math.exp(-np.sum((a - b) ** 2) / (2 * sigma ** 2))
  dist0 = [np.sum((c - z0) ** 2) for c in centres]
  affected = np.argsort(dist0, kind="stable")[:min(k, len(centres))]
  new = probs.copy()
  for j in affected:
    others = [i for i in range(len(centres)) if i != j]
    others.sort(key=lambda i: np.sum((centres[i] - centres[j]) ** 2))
    total = sum(kern(centres[j], centres[i]) for i in others[:k])
    total += kern(centres[j], z0)
    share = kern(centres[j], z0) / total
    new[j] = probs[j] + share * (y0 - probs[j])
  return new


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_redistribute_matches_loop_and_stays_on_the_simplex(seed):
  rng = np.random.default_rng(seed)
  centres = rng.normal(size=(15, 3)).astype(np.float32)
  probs = rng.dirichlet(np.ones(4), 15).astype(np.float32)
  z0 = rng.normal(size=3).astype(np.float32)
  y0 = np.eye(4)[rng.integers(4)]
  new = continual.redistribute_labels(centres, probs, z0, y0, k=5, sigma=0.7)
  np.testing.assert_allclose(
      new, _loop_redistribute(centres, probs, z0, y0, 5, 0.7), atol=1e-5)
  assert np.all(new >= 0)
  np.testing.assert_allclose(new.sum(1), 1.0, atol=1e-5)
  changed = np.flatnonzero(np.abs(new - probs).sum(1) > 0)
  assert 0 < len(changed) <= 5


def test_redistribute_far_away_or_same_label_changes_nothing():
  centres = np.array([[0.0, 0.0], [0.5, 0.0], [0.0, 0.5]], np.float32)
  probs = np.eye(2, dtype=np.float32)[[0, 0, 1]]
  far = continual.redistribute_labels(centres, probs, np.array([1e3, 1e3]),
                                      np.array([0.0, 1.0]), k=3, sigma=0.5)
  np.testing.assert_allclose(far, probs, atol=1e-7)
  assert np.all(np.isfinite(far))
  same = continual.redistribute_labels(centres[:2], probs[:2],
                                       np.array([0.1, 0.0]),
                                       np.array([1.0, 0.0]), k=2, sigma=0.5)
  np.testing.assert_allclose(same, probs[:2])


def _bank(centres, labels, num_classes):
  n = len(centres)
  return continual.ActiveCentres(
      np.asarray(centres, np.float32),
      np.eye(num_classes, dtype=np.float32)[labels],
      np.zeros(n, np.int32), np.arange(n, dtype=np.int32))


def _two_clusters(rng, n=12):
  a = rng.normal(scale=0.1, size=(n, 2))
  b = rng.normal(scale=0.1, size=(n, 2)) + [3.0, 0.0]
  return np.concatenate([a, b]), np.repeat([0, 1], n)


def test_centre_scores_rank_a_misplaced_centre_worst():
  rng = np.random.default_rng(0)
  centres, labels = _two_clusters(rng)
  labels[3] = 1  # a class-1 centre inside the class-0 cluster
  scores = continual.centre_scores(_bank(centres, labels, 2), k=5, sigma=0.5)
  assert scores[3] == np.inf  # no neighbour votes for its label
  assert np.all(np.isfinite(np.delete(scores, 3)))
  # The other cluster's neighbourhoods are pure; in the first, the misplaced
  # centre costs its neighbours something.
  np.testing.assert_allclose(scores[12:], 0.0, atol=1e-6)
  assert 0 < np.max(np.delete(scores[:12], 3)) < 1.0


@pytest.mark.parametrize("redistribute", ["both", "drop", "none"])
def test_drop_and_add_sizes_choices_and_labels(redistribute):
  rng = np.random.default_rng(1)
  centres, labels = _two_clusters(rng)
  labels[3] = 1
  bank = _bank(centres, labels, 2)
  # Candidates: one in the wrong cluster for its label (the worst), others
  # well placed.
  candidates = np.array([[0.05, 0.0], [3.0, 0.1], [0.0, 0.05]], np.float32)
  candidate_labels = np.array([1, 1, 0])
  new, counts = continual.drop_and_add(
      bank, candidates, candidate_labels, np.array([100, 101, 102]), task=2,
      num_drop=4, num_add=1, k=5, sigma=0.5, redistribute=redistribute)
  assert counts == {"dropped": 4, "added": 1}
  assert len(new) == len(bank) - 4 + 1
  assert new.example[-1] == 100 and new.task[-1] == 2  # the worst candidate
  assert 3 in new.example  # the misplaced centre is never the best predicted
  assert np.all(new.label_probs >= 0)
  np.testing.assert_allclose(new.label_probs.sum(1), 1.0, atol=1e-5)
  # The dropped centres sit in pure neighbourhoods, so spreading their label
  # changes nothing; the added one (label 1 among class 0) softens labels.
  soft = np.any((new.label_probs > 0) & (new.label_probs < 1))
  assert soft == (redistribute == "both")


def test_drop_and_add_rejects_an_unknown_rule():
  rng = np.random.default_rng(0)
  centres, labels = _two_clusters(rng)
  with pytest.raises(ValueError, match="redistribute must be one of"):
    continual.drop_and_add(_bank(centres, labels, 2), centres[:1], labels[:1],
                           np.zeros(1), task=0, num_drop=1, num_add=1, k=3,
                           sigma=0.5, redistribute="half")


def test_summarize_average_accuracy_and_backward_transfer():
  acc = np.array([[0.9, np.nan, np.nan],
                  [0.6, 0.8, np.nan],
                  [0.3, 0.5, 0.7]])
  result = continual.ContinualResult("x", 0, acc, acc, np.array([5, 7, 9]),
                                     1.0)
  summary = continual.summarize(result)
  assert summary["class_avg_acc"] == pytest.approx((0.3 + 0.5 + 0.7) / 3)
  assert summary["class_bwt"] == pytest.approx(((0.3 - 0.9) + (0.5 - 0.8)) / 2)
  assert summary["final_bank_size"] == 9


# ----------------------------------------------------------------------------
# Short runs: split digits in two tasks of five classes, an MLP, two epochs.


@pytest.fixture(scope="module")
def digits_stream():
  from nngk_jax.data import tasks
  return tasks.load_task_stream("split_digits", classes_per_task=5)


def _tiny_config(**continual_fields):
  from nngk_jax.configs import continual as continual_config
  config = continual_config.for_stream(continual_config.get_config(),
                                       "split_digits")
  config.model.backbone, config.model.backbone_kwargs = "mlp", {}
  config.nngk.k = 8
  config.continual.update(epochs_train=1, epochs_finetune=1,
                          init_per_class=3, num_add=6, num_drop=4,
                          ewc_samples=32)
  config.continual.update(continual_fields)
  return config


@pytest.mark.parametrize("method", continual.METHODS)
def test_every_method_runs_and_learns_its_first_task(digits_stream, method):
  config = _tiny_config()
  result = continual.run_continual(config, digits_stream, method, seed=0)
  rows = 1 if method == "joint" else 2
  assert result.class_acc.shape == result.task_acc.shape == (rows, 2)
  first = result.class_acc[0, 0]
  assert first > 0.5, first  # five classes: chance is 0.2
  if method != "joint":
    assert np.isnan(result.class_acc[0, 1])
  # Task-IL chooses among fewer classes, so it is never below class-IL.
  assert np.all(result.task_acc[~np.isnan(result.task_acc)]
                >= result.class_acc[~np.isnan(result.class_acc)] - 1e-9)
  train_sizes = [len(digits_stream.task(t).train) for t in range(2)]
  if method == "continual_nngk":
    # Task 1: 3 seeds x 5 classes, 4 dropped, 6 added. Task 2: the same.
    assert result.bank_size.tolist() == [17, 34]
  elif method == "nngk_static":
    assert result.bank_size.tolist() == [train_sizes[0], sum(train_sizes)]
  else:
    assert np.all(result.bank_size == 0)


def test_add_drop_with_nothing_to_do_is_the_static_bank(digits_stream):
  """n_a = n_d = 0: Algorithm 1 reduces to random seed centres, exactly."""
  config = _tiny_config(num_add=0, num_drop=0, static_per_class=3)
  a = continual.run_continual(config, digits_stream, "continual_nngk", seed=1)
  b = continual.run_continual(config, digits_stream, "nngk_static", seed=1)
  np.testing.assert_array_equal(a.class_acc, b.class_acc)
  np.testing.assert_allclose(a.bank.centres, b.bank.centres, atol=1e-6)
  assert a.bank_size.tolist() == [15, 30]


def test_image_memory_keeps_every_centre_tied_to_the_network(digits_stream):
  from nngk_jax import evaluation
  from nngk_jax.data import splits
  result = continual.run_continual(_tiny_config(memory="images"),
                                   digits_stream, "continual_nngk", seed=0)
  bank = result.bank
  first = bank.task == 0
  train = digits_stream.task(0).train
  batch = train.get_batch(bank.example[first])
  memory = splits.Split(batch["image"], batch["label"], train.class_names,
                        require_every_class=False)
  emb, _ = evaluation.embed_split(result.state, memory, 64)
  np.testing.assert_allclose(bank.centres[first], emb, atol=1e-5)
  # With frozen vectors the first task's centres stay as task 1 left them.
  frozen = continual.run_continual(_tiny_config(), digits_stream,
                                   "continual_nngk", seed=0).bank
  f_first = frozen.task == 0
  batch = train.get_batch(frozen.example[f_first])
  memory = splits.Split(batch["image"], batch["label"], train.class_names,
                        require_every_class=False)
  emb, _ = evaluation.embed_split(result.state, memory, 64)
  assert not np.allclose(frozen.centres[f_first], emb, atol=1e-3)


@pytest.mark.parametrize("field, value, message", [
    ("method", "replay", "method must be one of"),
    ("redistribute", "half", "redistribute must be one of"),
    ("memory", "disk", "memory must be one of"),
    ("num_add", -1, "num_add must be a non-negative integer"),
    ("epochs_train", 0, "epochs_train must be a positive integer"),
])
def test_bad_settings_are_refused_before_any_work(digits_stream, field, value,
                                                  message):
  method = value if field == "method" else "continual_nngk"
  config = _tiny_config(**({} if field == "method" else {field: value}))
  with pytest.raises(ValueError, match=message):
    continual.run_continual(config, digits_stream, method)

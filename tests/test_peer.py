"""``make peer``'s orchestrator (experiments/peer.py): its pure pieces.

None of these needs torch or .venv-peer; the one test that runs the PML
side (experiments/peer_torch.py) is skipped where .venv-peer is not
installed (``make peer`` installs it) and is marked slow.
"""

import doctest
import importlib.util
import json
import math
import os
import pathlib
import subprocess
import types

import numpy as np
import pytest

from nngk_jax import configs
from nngk_jax import data as datalib
from nngk_jax import state as statelib

ROOT = pathlib.Path(__file__).resolve().parent.parent
PEER_PYTHON = ROOT / ".venv-peer" / "bin" / "python"


def _load_peer():
  spec = importlib.util.spec_from_file_location(
      "experiments_peer", ROOT / "experiments" / "peer.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


peer = _load_peer()


def _record(side, loss, seed, map_r, r1=0.5, nmi=0.4, seconds=10.0,
            geometry="cosine"):
  return {"side": side, "loss": loss, "seed": seed,
          "metrics": {"map@r": map_r, "recall@1": r1, "nmi": nmi,
                      "r_precision": 0.3},
          "wall_seconds": seconds + 5.0, "train_seconds": seconds,
          "images_per_second": 100.0,
          "geometry": geometry}


def test_doctests():
  assert doctest.testmod(peer).failed == 0


def test_mean_std_formats_over_seeds():
  assert peer.mean_std([0.5, 0.7]) == "0.600 ± 0.100"  # numpy std (ddof 0)
  assert peer.mean_std([0.5, 0.7, 0.9], digits=2) == "0.70 ± 0.16"
  assert peer.mean_std([0.25]) == "0.250"
  assert peer.mean_std([]) == peer.DASH
  assert peer.mean_std([None, float("nan")]) == peer.DASH
  assert peer.mean_std([0.5, None, float("nan"), 0.7]) == "0.600 ± 0.100"
  assert peer.mean_std([12.345, 14.0], 1) == "13.2 ± 0.8"


def test_table_has_both_sides_and_dashes():
  records = [
      _record(peer.PML, "proxy_anchor", 0, 0.5),
      _record(peer.PML, "proxy_anchor", 1, 0.7),
      _record(peer.OURS, "proxy_anchor", 0, 0.4, seconds=20.0),
      _record(peer.OURS, "proxy_anchor", 1, 0.4, seconds=30.0),
      _record(peer.PML, "multi_similarity", 0, 0.3),
      _record(peer.OURS, "nngk", 0, 0.6, geometry="euclidean"),
  ]
  text = peer.table(records, ["proxy_anchor", "multi_similarity", "nngk"])
  lines = text.splitlines()
  assert lines[0].startswith("| loss | MAP@R PML | MAP@R nngk-jax | R@1 PML")
  assert len(lines) == 2 + 3
  columns = [len(line.split("|")) for line in lines]
  assert len(set(columns)) == 1  # every row has as many cells as the header
  proxy = [c.strip() for c in lines[2].strip("|").split("|")]
  assert proxy[:3] == ["proxy_anchor", "0.600 ± 0.100", "0.400 ± 0.000"]
  assert proxy[-3:] == ["10.0 ± 0.0", "25.0 ± 5.0", "cosine / cosine"]
  ms = [c.strip() for c in lines[3].strip("|").split("|")]
  assert ms[1] == "0.300" and ms[2] == peer.DASH
  nngk = [c.strip() for c in lines[4].strip("|").split("|")]
  assert nngk[1] == peer.DASH and nngk[2] == "0.600"
  assert nngk[-1] == f"{peer.DASH} / euclidean"


def test_export_npz_round_trip(tmp_path):
  dataset = datalib.load_dataset("digits")
  path = peer.export_npz(dataset, tmp_path / "sub" / "data.npz")
  arrays = peer.load_npz(path)
  assert sorted(arrays) == ["test_images", "test_labels", "train_images",
                            "train_labels"]
  for name in ("train", "test"):
    split = getattr(dataset, name)
    images, labels = arrays[f"{name}_images"], arrays[f"{name}_labels"]
    assert images.dtype == np.float32 and images.shape == split.images.shape
    assert labels.dtype == np.int64
    np.testing.assert_array_equal(images, split.images)
    np.testing.assert_array_equal(labels, split.labels)


def test_export_npz_needs_in_memory_images(tmp_path):
  lazy = types.SimpleNamespace(images=None, labels=np.zeros(2, int))
  dataset = types.SimpleNamespace(name="cub", train=lazy, test=lazy)
  with pytest.raises(ValueError, match="in-memory"):
    peer.export_npz(dataset, tmp_path / "data.npz")


def _config(loss="proxy_anchor", **kwargs):
  options = dict(epochs=4, batch_size=64, embed_dim=16, lr=2e-3,
                 proxy_lr_multiplier=100.0)
  options.update(kwargs)
  return peer.our_config("digits", loss, 3, **options)


def test_our_config_matches_the_pml_run():
  config = _config()
  assert config.model.backbone == "conv4"
  assert dict(config.model.backbone_kwargs) == {
      "channels": (32, 64, 128, 256), "pooling": "max"}
  assert config.model.embed_dim == 16
  assert config.num_epochs == 4 and config.batch_size == 64
  assert config.seed == 3 and config.objective == "proxy_anchor"
  assert config.sampler == "random"
  assert config.optimizer.name == "adam"
  assert config.optimizer.learning_rate == 2e-3
  assert config.dataset == "digits"
  assert config.eval_every >= config.num_epochs  # final evaluation only
  assert not config.progress
  # "objective": the recipe's own choice (the glyph recipe normalises).
  recipe = peer.configs.load_config(peer.base_config_path())
  assert config.model.normalize == recipe.model.normalize
  assert _config(ours_normalize="all").model.normalize
  assert dict(config.optimizer.lr_multipliers) == {"^proxies$": 100.0}
  assert _config(overrides=["nngk.k=5"]).nngk.k == 5


def test_our_config_trains_proxies_at_the_multiplier():
  import jax.numpy as jnp
  from nngk_jax import train
  tx = statelib.make_optimizer(_config(lr=1e-3, proxy_lr_multiplier=100.0))
  params = {"proxies": jnp.ones(3), "embedding": {"kernel": jnp.ones(3)}}
  updates, _ = tx.update(params, tx.init(params), params)
  # Adam's first step moves each parameter by its learning rate.
  np.testing.assert_allclose(updates["proxies"], -0.1, rtol=1e-4)
  np.testing.assert_allclose(updates["embedding"]["kernel"], -1e-3,
                             rtol=1e-4)


@pytest.mark.parametrize("loss", peer.OUR_LOSSES)
def test_our_config_is_valid_for_each_loss(loss):
  from nngk_jax import train
  config = _config(loss)
  dataset = datalib.load_dataset(config.dataset, **dict(config.data))
  train.validate_config(config, dataset)
  assert train.sampler_name(config) == "random"


def test_our_config_refuses_losses_without_a_twin():
  with pytest.raises(ValueError, match="multi_similarity"):
    _config("multi_similarity")


def test_folder_datasets_are_class_disjoint():
  assert peer.data_options("folder:/somewhere")["class_disjoint"] is True


def test_conv4_parameter_count_matches_the_torch_twin():
  # The torch twin (peer_torch.Conv4, grey input, 128-d head): 4 bias-free
  # 3x3 convs, 4 BatchNorms (scale, offset), a 256 -> 128 linear with bias.
  convs = 9 * (1 * 32 + 32 * 64 + 64 * 128 + 128 * 256)
  batch_norms = 2 * (32 + 64 + 128 + 256)
  head = 256 * 128 + 128
  dataset = datalib.load_dataset("digits")
  assert peer.our_num_parameters(dataset, 128) == convs + batch_norms + head


def test_pml_command(tmp_path):
  command = peer.pml_command("py", tmp_path / "d.npz", "triplet", 2,
                             epochs=3, batch_size=32, embed_dim=64, lr=1e-3,
                             proxy_lr_multiplier=100.0, out="r.json")
  assert command[:2] == ["py", str(peer.PEER_SCRIPT)]
  flags = dict(zip(command[2::2], command[3::2]))
  assert flags == {"--data": str(tmp_path / "d.npz"), "--loss": "triplet",
                   "--seed": "2", "--epochs": "3", "--batch-size": "32",
                   "--embed-dim": "64", "--lr": "0.001",
                   "--proxy-lr-multiplier": "100.0", "--out": "r.json"}
  with_embeddings = peer.pml_command(
      "py", "d.npz", "nca", 0, epochs=1, batch_size=8, embed_dim=8, lr=1e-3,
      proxy_lr_multiplier=1.0, out="r.json", save_embeddings="e.npz")
  assert with_embeddings[-2:] == ["--save-embeddings", "e.npz"]


def test_missing_peer_environment_is_a_clear_error(tmp_path):
  missing = tmp_path / ".venv-peer" / "bin" / "python"
  with pytest.raises(peer.PeerEnvironmentMissing, match="make peer"):
    peer.check_peer_python(missing)
  # main stops before loading any data or training anything.
  with pytest.raises(peer.PeerEnvironmentMissing, match="--skip-peer"):
    peer.main(["--dataset", "digits", "--peer-python", str(missing),
               "--out", str(tmp_path / "peer.md"),
               "--workdir", str(tmp_path / "runs")])
  assert not (tmp_path / "runs").exists()


def test_pml_record_uses_our_metric_names():
  result = {"loss": "nca", "seed": 1, "geometry": "cosine",
            "train_seconds": 3.0, "images_per_second": 50.0,
            "eval_seconds": 0.5, "num_parameters": 10,
            "metrics": {"precision_at_1": 0.9,
                        "mean_average_precision_at_r": 0.5,
                        "r_precision": 0.6, "NMI": 0.7}}
  record = peer.pml_record(result, 4.0)
  assert record["metrics"] == {"recall@1": 0.9, "map@r": 0.5,
                               "r_precision": 0.6, "nmi": 0.7}
  assert record["side"] == peer.PML and record["wall_seconds"] == 4.0


def test_agreement_asserts_retrieval_metrics_not_nmi():
  ours = {"recall@1": 0.9, "map@r": 0.5, "r_precision": 0.6, "nmi": 0.7}
  check = peer.agreement(dict(ours, nmi=0.6), ours)
  assert check["agree"] and check["max_abs_diff"] == 0.0
  assert math.isclose(check["metrics"]["nmi"]["abs_diff"], 0.1)
  off = peer.agreement(dict(ours, **{"map@r": 0.5 + 1e-4}), ours)
  assert not off["agree"]
  assert math.isclose(off["max_abs_diff"], 1e-4, rel_tol=1e-6)
  text = peer.agreement_table(check)
  assert "| MAP@R | 0.500000 | 0.500000 | 0.0e+00 |" in text


def test_merge_records_keeps_runs_not_redone():
  old = [_record(peer.PML, "nca", 0, 0.1), _record(peer.OURS, "nca", 0, 0.2)]
  new = [_record(peer.OURS, "nca", 0, 0.3)]
  merged = peer.merge_records(old, new)
  assert [(r["side"], r["metrics"]["map@r"]) for r in merged] == [
      (peer.PML, 0.1), (peer.OURS, 0.3)]


def _random_npz(path, train_labels, test_labels):
  """An exported split of random 8x8 grey images with the given labels."""
  rng = np.random.default_rng(0)
  np.savez(path,
           train_images=rng.uniform(-1, 1, (len(train_labels), 8, 8, 1)
                                    ).astype(np.float32),
           train_labels=train_labels,
           test_images=rng.uniform(-1, 1, (len(test_labels), 8, 8, 1)
                                   ).astype(np.float32),
           test_labels=test_labels)
  return path


@pytest.mark.slow
@pytest.mark.skipif(not PEER_PYTHON.exists(),
                    reason=".venv-peer not installed (make peer installs it)")
def test_peer_torch_one_epoch(tmp_path):
  npz = _random_npz(tmp_path / "tiny.npz", np.repeat(np.arange(4), 12),
                    np.repeat(np.arange(3), 10))
  out = tmp_path / "result.json"
  embeddings = tmp_path / "emb.npz"
  command = peer.pml_command(
      PEER_PYTHON, npz, "proxy_anchor", 0, epochs=1, batch_size=16,
      embed_dim=8, lr=1e-3, proxy_lr_multiplier=100.0, out=out,
      save_embeddings=embeddings)
  env = dict(os.environ, OMP_NUM_THREADS="1")
  subprocess.run(command, check=True, env=env, timeout=300)
  result = json.loads(out.read_text())
  assert result["loss"] == "proxy_anchor" and result["geometry"] == "cosine"
  assert set(result["metrics"]) == {"precision_at_1",
                                    "mean_average_precision_at_r", "NMI",
                                    "r_precision"}
  # The twin has conv4's parameters (grey input, 8-d head).
  assert result["num_parameters"] == (
      9 * (32 + 32 * 64 + 64 * 128 + 128 * 256) + 2 * (32 + 64 + 128 + 256)
      + 256 * 8 + 8)
  assert result["num_loss_parameters"] == 4 * 8  # one proxy per class
  arrays = peer.load_npz(embeddings)
  assert arrays["embeddings"].shape == (30, 8)
  np.testing.assert_allclose(np.linalg.norm(arrays["embeddings"], axis=1), 1,
                             rtol=1e-5)
  check = peer.agreement(peer.pml_record(result, 0.0)["metrics"],
                         peer.score_with_nngk_jax(embeddings))
  assert check["agree"], check


@pytest.mark.slow
def test_main_runs_our_side_and_writes_the_table(tmp_path):
  out = tmp_path / "peer.md"
  args = ["--dataset", "digits", "--losses", "nca", "multi_similarity",
          "--seeds", "0", "--epochs", "1", "--skip-peer", "--out", str(out),
          "--workdir", str(tmp_path / "runs")]
  assert peer.main(args) == 0
  text = out.read_text()
  assert "backbone `conv4`" in text and "1 epoch, batch 64" in text
  rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
          for line in text.splitlines() if line.startswith("| nca")
          or line.startswith("| multi_similarity")}
  assert rows["nca"][0] == peer.DASH and rows["nca"][1] != peer.DASH
  assert rows["multi_similarity"][:2] == [peer.DASH, peer.DASH]
  saved = json.loads(out.with_suffix(".json").read_text())
  (run,) = saved["runs"]
  assert (run["side"], run["loss"], run["seed"]) == (peer.OURS, "nca", 0)
  assert 0 <= run["metrics"]["map@r"] <= 1
  assert saved["settings"]["backbone"] == "conv4"


@pytest.mark.slow
@pytest.mark.skipif(not PEER_PYTHON.exists(),
                    reason=".venv-peer not installed (make peer installs it)")
def test_main_runs_the_pml_side_and_checks_agreement(tmp_path):
  out = tmp_path / "peer.md"
  args = ["--dataset", "digits", "--losses", "proxy_anchor", "--seeds", "0",
          "--epochs", "1", "--skip-ours", "--out", str(out),
          "--workdir", str(tmp_path / "runs")]
  assert peer.main(args) == 0
  saved = json.loads(out.with_suffix(".json").read_text())
  assert saved["agreement"]["agree"]
  assert saved["num_parameters"] == {peer.PML: 421216, peer.OURS: 421216}
  assert "### Metric agreement" in out.read_text()


@pytest.mark.slow
@pytest.mark.skipif(not PEER_PYTHON.exists(),
                    reason=".venv-peer not installed (make peer installs it)")
def test_peer_torch_nca_batches_without_positives(tmp_path):
  # Every training class has one image: no batch has a positive pair, where
  # PML's NCALoss averages an empty tensor (NaN); the run takes a zero loss.
  npz = _random_npz(tmp_path / "single.npz", np.arange(32),
                    np.repeat(np.arange(2), 10))
  out = tmp_path / "result.json"
  command = peer.pml_command(
      PEER_PYTHON, npz, "nca", 0, epochs=1, batch_size=16, embed_dim=8,
      lr=1e-3, proxy_lr_multiplier=100.0, out=out)
  subprocess.run(command, check=True, timeout=300,
                 env=dict(os.environ, OMP_NUM_THREADS="1"))
  result = json.loads(out.read_text())
  assert result["batches_without_positive_pair"] == 2
  assert all(math.isfinite(v) for v in result["metrics"].values())

"""Data parallel over 8 forced CPU devices equals one device (nngk_jax.parallel).

The device count of a process is fixed when JAX starts, so the comparison
runs in a child process started with
``XLA_FLAGS=--xla_force_host_platform_device_count=8``.
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from nngk_jax import configs
from nngk_jax import parallel

CHILD = textwrap.dedent(r"""
    import json, sys
    import jax, numpy as np
    from nngk_jax import configs, data, evaluation, parallel, train

    assert jax.device_count() == 8, jax.devices()
    out = {}
    full = data.load_dataset("digits")
    # 896 training images: the bank's rows split evenly over 8 devices.
    train_split = data.Split(full.train.images[:896], full.train.labels[:896],
                             full.train.class_names)
    dataset = data.Dataset("digits", train_split, full.test, full.protocol)
    for objective in sys.argv[1:]:
      config = configs.load_config(configs.CONFIG_DIR / "digits.py")
      config.objective = objective
      config.batch_size = 32
      config.nngk.k = 16
      config.progress = False
      # The accelerators' layout of the bank ("auto" keeps it whole on
      # CPU devices; checked below).
      config.mesh.bank = "rows"
      results, embedded = {}, {}
      for devices in (1, 8):
        config.mesh.data = devices
        mesh = parallel.make_mesh(config)
        model, bank, state = train.init_run(config, dataset)
        if bank is not None:
          bank_state, _ = bank.refresh(state.bank, 0, lambda: np.asarray(
              jax.random.normal(jax.random.key(1),
                                (len(dataset.train), bank.dim))))
          state = state.replace(bank=bank_state)
        if bank is not None and mesh is not None:
          whole = parallel.state_shardings(state, mesh).bank.centres
          out["auto_bank_whole"] = whole.is_fully_replicated
        state = parallel.place_state(state, mesh, "rows")
        # Evaluation batches are split over the parameters' devices (100
        # rounded up to 104; the last batch padded): the same embeddings.
        embedded[devices] = evaluation.embed_split(state, dataset.train,
                                                   100)[0]
        step = train.make_train_step(config, dataset.train.num_classes, bank,
                                     mesh=mesh, state=state)
        losses = []
        for i, batch in enumerate(train.batches(dataset.train, config, 0,
                                                bank)):
          if i == 4:
            break
          state, metrics = step(state, batch)
          losses.append(float(metrics["loss"]))
        bank_shard = (None if state.bank is None else
                      [int(d) for d in state.bank.centres.addressable_shards[
                          0].data.shape])
        results[devices] = (jax.device_get(state.params),
                            jax.device_get(state.batch_stats), losses,
                            len(jax.tree_util.tree_leaves(
                            state.params)[0].devices()), bank_shard)
      (p1, s1, l1, d1, _), (p8, s8, l8, d8, b8) = results[1], results[8]
      diff = max(float(np.max(np.abs(a - b))) for a, b in zip(
          jax.tree_util.tree_leaves((p1, s1)),
          jax.tree_util.tree_leaves((p8, s8))))
      scale = max(float(np.max(np.abs(a))) for a in
                  jax.tree_util.tree_leaves(p1))
      out[objective] = {"max_diff": diff, "scale": scale, "losses_1": l1,
                        "losses_8": l8, "devices": [d1, d8],
                        "bank_shard_8": b8,
                        "embed_diff": float(np.max(np.abs(
                            embedded[1] - embedded[8]))),
                        "embed_scale": float(np.max(np.abs(embedded[1]))),
                        "embed_shape": list(embedded[8].shape)}
    # The batch is split: 32 rows, 4 per device.
    batch = next(train.batches(dataset.train, config, 0, None))
    placed = parallel.shard_batch(batch, parallel.make_mesh(config))
    out["rows_per_device"] = int(
        placed["image"].addressable_shards[0].data.shape[0])
    # The whole loop on 8 devices: refresh, steps, checkpoint, evaluation,
    # then a resume on one device (resharded, not refused).
    import tempfile, pathlib
    workdir = pathlib.Path(tempfile.mkdtemp()) / "run"
    config = configs.load_config(configs.CONFIG_DIR / "digits.py")
    config.update(batch_size=32, num_epochs=1, progress=False, nmi=False)
    config.model.backbone, config.model.backbone_kwargs = "mlp", {}
    config.mesh.data = 8
    out["run8"] = train.train_and_evaluate(config, workdir)["recall@1"]
    config.mesh.data, config.num_epochs = 1, 2
    out["resumed1"] = train.train_and_evaluate(config, workdir)["recall@1"]
    print("RESULT " + json.dumps(out))
""")


@pytest.mark.slow
def test_eight_devices_train_like_one():
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
             JAX_PLATFORMS="cpu")
  objectives = ["nngk", "softmax", "proxy_anchor"]
  proc = subprocess.run([sys.executable, "-c", CHILD, *objectives], env=env,
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  line = next(l for l in proc.stdout.splitlines() if l.startswith("RESULT "))
  result = json.loads(line[len("RESULT "):])
  assert result["rows_per_device"] == 4
  assert result["auto_bank_whole"] is True  # "auto" on CPU devices
  assert result["run8"] > 0.5 and result["resumed1"] > 0.5, result
  for objective in objectives:
    r = result[objective]
    assert r["devices"] == [1, 8], r
    if objective == "nngk":  # the bank's rows split over the devices
      assert r["bank_shard_8"][0] == 896 // 8, r
    assert r["embed_shape"][0] == 896, r
    assert r["embed_diff"] < 1e-5 * max(r["embed_scale"], 1.0), (objective, r)
    # Four Adam steps of the small CNN (BatchNorm over the global batch):
    # the same parameters up to float32 reassociation across devices.
    assert r["max_diff"] < 1e-4 * max(r["scale"], 1.0), (objective, r)
    for a, b in zip(r["losses_1"], r["losses_8"]):
      assert a == pytest.approx(b, rel=1e-4, abs=1e-5), (objective, r)


def test_one_device_means_no_mesh_and_bad_sizes_are_refused():
  config = configs.load_config(configs.CONFIG_DIR / "digits.py")
  assert parallel.make_mesh(config) is None  # one CPU device here
  config.mesh.data = 2
  with pytest.raises(ValueError, match="needs 2 devices, but 1 are"):
    parallel.make_mesh(config)
  config.mesh.data = 0
  with pytest.raises(ValueError, match="mesh.data must be a positive"):
    parallel.make_mesh(config)


def _reference_cpu_device_count(batch_size, cores, min_rows=8):
  """Loop reference: every count from 1 to cores, the last that fits."""
  best = 1
  for count in range(1, cores + 1):
    if batch_size % count == 0 and batch_size // count >= min_rows:
      best = count
  return best


def test_cpu_device_count_matches_a_loop_reference():
  for batch_size in (1, 7, 8, 12, 16, 30, 32, 48, 64, 96, 100, 128, 256):
    for cores in (1, 2, 3, 4, 6, 8, 16, 64):
      assert parallel.cpu_device_count(batch_size, cores) == (
          _reference_cpu_device_count(batch_size, cores)), (batch_size, cores)
  assert parallel.cpu_device_count(64, 16, min_rows=1) == 16
  for bad in (0, -2, 2.0, True):
    with pytest.raises(ValueError, match="cores must be a positive"):
      parallel.cpu_device_count(64, bad)
  with pytest.raises(ValueError, match="batch_size must be a positive"):
    parallel.cpu_device_count(0, 2)


_SPLIT_CHILD = textwrap.dedent(r"""
    import json, sys
    import jax
    from nngk_jax import parallel
    mode = sys.argv[1]
    out = {}
    if mode == "started":
      jax.numpy.zeros(1).block_until_ready()  # JAX runs before the split
      out["auto"] = parallel.split_cpu(None, 64)
      out["same"] = parallel.split_cpu(1, 64)
      try:
        parallel.split_cpu(2, 64)
      except ValueError as error:
        out["error"] = str(error)
    else:
      count = None if mode == "auto" else int(mode)
      out["returned"] = parallel.split_cpu(count, 64)
      out["expected_auto"] = parallel.cpu_device_count(
          64, parallel.usable_cores())
    out["devices"] = len(jax.devices("cpu"))
    print("RESULT " + json.dumps(out))
""")


def _split_child(mode, **env):
  base = {k: v for k, v in os.environ.items()
          if k not in ("XLA_FLAGS", "JAX_NUM_CPU_DEVICES")}
  proc = subprocess.run([sys.executable, "-c", _SPLIT_CHILD, mode],
                        env=dict(base, JAX_PLATFORMS="cpu", **env),
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  line = next(l for l in proc.stdout.splitlines() if l.startswith("RESULT "))
  return json.loads(line[len("RESULT "):])


def test_split_cpu_before_jax_starts():
  """One device per usable core (as the batch allows), or the count given;
  a count the user set in the environment is left alone."""
  auto = _split_child("auto")
  assert auto["returned"] == auto["expected_auto"] == auto["devices"], auto
  assert _split_child("3")["devices"] == 3
  user = _split_child("auto", JAX_NUM_CPU_DEVICES="3")
  assert user["returned"] is None and user["devices"] == 3, user
  flags = _split_child(
      "auto", XLA_FLAGS="--xla_force_host_platform_device_count=3")
  assert flags["returned"] is None and flags["devices"] == 3, flags


def test_split_cpu_after_jax_started():
  """Auto leaves a running JAX alone; an explicit other count is refused."""
  r = _split_child("started")
  assert r["auto"] is None and r["same"] == 1 and r["devices"] == 1, r
  assert "mesh.cpu_devices=2, but JAX already runs with 1 CPU" in r["error"]
  assert "JAX_NUM_CPU_DEVICES=2" in r["error"]


def test_bank_layout_is_checked():
  config = configs.load_config(configs.CONFIG_DIR / "digits.py")
  assert parallel.bank_layout(config) == "auto"
  config.mesh.bank = "rows"
  assert parallel.bank_layout(config) == "rows"
  config.mesh.bank = "columns"
  with pytest.raises(ValueError, match="mesh.bank must be one of"):
    parallel.bank_layout(config)

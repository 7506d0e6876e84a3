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
    from nngk_jax import configs, data, parallel, train

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
      results = {}
      for devices in (1, 8):
        config.mesh.data = devices
        mesh = parallel.make_mesh(config)
        model, bank, state = train.init_run(config, dataset)
        if bank is not None:
          bank_state, _ = bank.refresh(state.bank, 0, lambda: np.asarray(
              jax.random.normal(jax.random.key(1),
                                (len(dataset.train), bank.dim))))
          state = state.replace(bank=bank_state)
        state = parallel.place_state(state, mesh)
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
                        "bank_shard_8": b8}
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
  assert result["run8"] > 0.5 and result["resumed1"] > 0.5, result
  for objective in objectives:
    r = result[objective]
    assert r["devices"] == [1, 8], r
    if objective == "nngk":  # the bank's rows split over the devices
      assert r["bank_shard_8"][0] == 896 // 8, r
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

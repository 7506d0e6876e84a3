"""Two processes on localhost train like one (jax.distributed, gloo).

Each process is a child started with ``jax.distributed.initialize`` on a
free local port and two forced CPU devices, so the mesh holds four devices
over two processes. The same global batches are trained in one process on
one device and the results compared; the 2-process run's checkpoints are
restored (and resumed) in one process.
"""

import json
import os
import pathlib
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from nngk_jax import data
from nngk_jax import parallel
from nngk_jax.data import pipeline
from nngk_jax.data import samplers

ROOT = str(pathlib.Path(__file__).resolve().parents[1])

CHILD = textwrap.dedent(r"""
    import json, pathlib, sys
    import numpy as np
    from nngk_jax import parallel

    mode, out, overrides = sys.argv[1], pathlib.Path(sys.argv[2]), sys.argv[3:]
    if mode == "multi":
      # The command line in two processes (its flags start jax.distributed):
      # one epoch of a tiny run, checkpointed by both.
      from nngk_jax import cli
      port, process = overrides[:2]
      overrides = overrides[2:]
      assert cli.main(["--dataset", "digits", "--workdir", str(out / "run"),
                       "--coordinator", f"localhost:{port}",
                       "--num-processes", "2", "--process-id", process,
                       *overrides]) == 0
    import jax
    from nngk_jax import checkpoint, configs, data, evaluation, train

    config = configs.load_config(configs.CONFIG_DIR / "digits.py")
    config.update(batch_size=32, progress=False)
    config.nngk.k = 16
    # The bank's layout on accelerators, tested here on CPU devices (whose
    # default, "auto", keeps the bank whole on each).
    config.mesh.bank = "rows"
    # SGD with momentum: Adam's first steps move each weight by about
    # lr * sign(gradient), so a gradient component near zero turns float32
    # noise into a difference of up to 2 * lr (seen: 9e-5 after 4 steps).
    config.optimizer.update(name="sgd", learning_rate=0.1, momentum=0.9)
    full = data.load_dataset("digits")
    # 896 training images: the bank's rows split evenly over 4 devices.
    split = data.Split(full.train.images[:896], full.train.labels[:896],
                       full.train.class_names)
    dataset = data.Dataset("digits", split, full.test, full.protocol)
    mesh = parallel.make_mesh(config)
    _, bank, state = train.init_run(config, dataset)
    state = parallel.place_state(state, mesh, "rows")
    # The refresh: each process embeds its block (eval batches of 100: the
    # last one padded), the blocks are all-gathered, each builds the graph.
    bank_state, _ = bank.refresh(state.bank, 0, lambda: evaluation.embed_split(
        state, dataset.train, 100)[0])
    state = parallel.place_state(state.replace(bank=bank_state), mesh, "rows")
    step = train.make_train_step(config, dataset.train.num_classes, bank,
                                 mesh=mesh, state=state)
    shard = parallel.process_shard(mesh, config.batch_size)
    losses, rows = [], []
    for i, batch in enumerate(train.batches(dataset.train, config, 0, bank,
                                            shard=shard)):
      if i == 4:
        break
      rows.append(len(batch["index"]))
      state, metrics = step(state, batch)
      losses.append(float(metrics["loss"]))
    host = parallel.fetch({"params": state.params,
                           "batch_stats": state.batch_stats,
                           "centres": state.bank.centres})
    leaves = {str(i): np.asarray(a) for i, a in
              enumerate(jax.tree_util.tree_leaves(host))}
    result = {"losses": losses, "rows_read": rows, "shard": list(shard),
              "graph": bank.graph.indices[:50].tolist(),
              "devices": jax.device_count(),
              "bank_rows_here": [int(s.data.shape[0]) for s in
                                 state.bank.centres.addressable_shards]
                                if mode == "multi" else None}
    if mode == "multi":
      # PyNNDescent's graph is built by process 0 and broadcast: a stand-in
      # for it that gives each process another graph shows whose arrives.
      from nngk_jax import bank as banklib, neighbours
      exact = neighbours.GRAPH_BACKENDS["exact"]
      neighbours.GRAPH_BACKENDS["pynndescent"] = neighbours.GraphBackend(
          "pynndescent", lambda c, k, seed: np.roll(
              exact.knn_graph(c, k, seed), jax.process_index(), axis=1),
          exact.query)
      stand_in = banklib.CentreBank(split.labels, bank.dim, k=16,
                                    graph_backend="pynndescent",
                                    warm_up=False)
      stand_in.refresh(stand_in.init_state(), 0, lambda: host["centres"])
      got_primary = np.array_equal(stand_in.graph.indices, exact.knn_graph(
          host["centres"], 16, 0))
      result["broadcast_gave_primary_graph"] = parallel.gather_blocks(
          np.array([got_primary])).ravel().tolist()
      store = checkpoint.CheckpointStore(out / "steps", {"test": 1})
      store.save(0, state, number=4)  # every process saves its shards
      store.close()
      # A signal reaching process 1 alone (before its second step of an
      # epoch): both processes stop at the same step, each saving there.
      import signal
      class Stop:
        signum = None
      stop, calls, saved = Stop(), [], []
      def step_then_signal(state, batch):
        calls.append(1)
        if len(calls) == 2 and jax.process_index() == 1:
          stop.signum = signal.SIGTERM
        return step(state, batch)
      _, stats = train.train_epoch(
          state, step_then_signal, dataset.train, config, 1, bank,
          workdir=out, stop=stop, shard=shard,
          save_partial=lambda state, done, partial: saved.append(done))
      result["stopped_after"] = parallel.gather_blocks(np.array(
          [stats.get("stopped_after_step", -1), saved[-1]])).tolist()
      if jax.process_index() == 0:
        np.savez(out / "multi.npz", **leaves)
        (out / "multi.json").write_text(json.dumps(result))
      sys.exit(0)
    multi = np.load(out / "multi.npz")
    result["max_diff"] = max(float(np.max(np.abs(leaves[k] - multi[k])))
                             for k in leaves)
    result["scale"] = max(float(np.max(np.abs(v))) for v in leaves.values())
    # The 2-process checkpoint, restored in this process (one device).
    _, _, fresh = train.init_run(config, dataset)
    store = checkpoint.CheckpointStore(out / "steps", {"test": 1})
    restored = store.restore_latest(fresh).state
    store.close()
    restored_leaves = jax.tree_util.tree_leaves(jax.device_get(
        {"params": restored.params, "batch_stats": restored.batch_stats,
         "centres": restored.bank.centres}))
    result["restored_diff"] = max(
        float(np.max(np.abs(np.asarray(a) - multi[str(i)])))
        for i, a in enumerate(restored_leaves))
    # The run the 2-process command line trained, resumed for an epoch more
    # from its mid-epoch checkpoint (the epoch's last one removed): the
    # graph the 2 processes saved finishes the epoch here.
    import shutil
    saved = out / "run" / "checkpoints"
    numbers = sorted(int(p.name) for p in saved.iterdir() if p.name.isdigit())
    shutil.rmtree(saved / str(numbers[-1]))
    result["resumed_from"] = numbers[-2]
    resumed = configs.load_config(configs.CONFIG_DIR / "digits.py")
    configs.apply_overrides(resumed, overrides)
    resumed.num_epochs = 2
    result["resumed"] = train.train_and_evaluate(resumed, out / "run")
    print("RESULT " + json.dumps(result))
""")

# The command line's run in two processes: one epoch, tiny.
OVERRIDES = ["batch_size=32", "num_epochs=1", "progress=False", "nmi=False",
             "nngk.k=16", "model.embed_dim=16", "checkpoint_every_steps=10"]


def _free_port() -> int:
  with socket.socket() as sock:
    sock.bind(("localhost", 0))
    return sock.getsockname()[1]


def _run_pair(commands: list[list[str]], env: dict) -> None:
  """Runs both processes at once; fails with their stderr if either fails."""
  procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
           for cmd in commands]
  outputs = []
  for proc in procs:
    try:
      outputs.append(proc.communicate(timeout=300))
    except subprocess.TimeoutExpired:
      for other in procs:
        other.kill()
      raise
  for proc, (_, err) in zip(procs, outputs):
    assert proc.returncode == 0, err[-3000:]


@pytest.mark.slow
def test_two_processes_train_like_one(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT,
             XLA_FLAGS="--xla_force_host_platform_device_count=2")
  for name in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES",
               "JAX_PROCESS_ID"):
    env.pop(name, None)
  port = _free_port()
  _run_pair([[sys.executable, "-c", CHILD, "multi", str(tmp_path), str(port),
              str(i), *OVERRIDES] for i in range(2)], env)
  single = subprocess.run(
      [sys.executable, "-c", CHILD, "single", str(tmp_path), *OVERRIDES],
      env=dict(env, XLA_FLAGS=""), capture_output=True, text=True,
      timeout=300)
  assert single.returncode == 0, single.stderr[-3000:]
  line = next(l for l in single.stdout.splitlines() if l.startswith("RESULT "))
  one = json.loads(line[len("RESULT "):])
  two = json.loads((tmp_path / "multi.json").read_text())
  print(f"2 processes vs 1: max difference {one['max_diff']:.2g} (scale "
        f"{one['scale']:.3g}); resumed Recall@1 "
        f"{one['resumed']['recall@1']:.3f}")
  # Each process read half of every 32-row batch, held half the bank.
  assert two["devices"] == 4 and two["shard"] == [0, 2], two
  assert two["rows_read"] == [16] * 4 and two["bank_rows_here"] == [224] * 2
  assert one["rows_read"] == [32] * 4 and one["devices"] == 1
  # The gathered refresh gave the same centres, hence the same graph; a
  # PyNNDescent graph is process 0's in both processes.
  assert two["graph"] == one["graph"]
  assert two["broadcast_gave_primary_graph"] == [True, True]
  # Process 1's signal stopped both after the same step (its flag rode in
  # its third batch; that step's metrics were read after the fourth).
  assert two["stopped_after"] == [[4, 4], [4, 4]], two["stopped_after"]
  # Four steps (BatchNorm over the global batch): float32 tolerance.
  assert one["max_diff"] < 1e-5 * max(one["scale"], 1.0), one
  for a, b in zip(one["losses"], two["losses"]):
    assert a == pytest.approx(b, rel=1e-4, abs=1e-5)
  # The 2-process checkpoint restores in one process, exactly.
  assert one["restored_diff"] == 0.0, one
  # The 2-process command line wrote one run that resumes in one process.
  history = [json.loads(l) for l in
             (tmp_path / "run" / "history.jsonl").read_text().splitlines()]
  assert [r["epoch"] for r in history] == [1, 2]
  assert one["resumed_from"] == 20  # mid-epoch: step 20 of 28
  assert one["resumed"]["epochs"] == 2 and one["resumed"]["recall@1"] > 0.5


def test_single_process_initialize_does_nothing(monkeypatch):
  for name in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES",
               "JAX_PROCESS_ID"):
    monkeypatch.delenv(name, raising=False)
  assert parallel.initialize_distributed() is False
  assert parallel.initialize_distributed(num_processes=1) is False
  assert parallel.process_shard(None, 32) == (0, 1)
  assert parallel.gather_blocks(np.arange(3)).tolist() == [[0, 1, 2]]


def test_incomplete_multi_process_settings_are_refused(monkeypatch):
  monkeypatch.delenv("JAX_PROCESS_ID", raising=False)
  monkeypatch.setenv("JAX_NUM_PROCESSES", "2")
  with pytest.raises(ValueError, match="needs the coordinator address"):
    parallel.initialize_distributed()
  with pytest.raises(ValueError, match=r"process_id=2 must lie in \[0, 2\)"):
    parallel.initialize_distributed("localhost:1", 2, 2)
  monkeypatch.setenv("JAX_NUM_PROCESSES", "two")
  with pytest.raises(ValueError, match="JAX_NUM_PROCESSES must be an integer"):
    parallel.initialize_distributed()


def _splits():
  """An image split (decoded, augmented) and an in-memory one, 12 each."""
  rng = np.random.default_rng(0)
  labels, names = np.repeat(np.arange(3), 4), ("a", "b", "c")
  records = [rng.integers(0, 255, (10, 12, 3), np.uint8) for _ in range(12)]
  return (pipeline.ImageSplit(records, labels, names,
                              pipeline.ImageTransform(resize=8, crop=6)),
          data.Split(rng.uniform(-1, 1, (12, 2, 2, 1)).astype(np.float32),
                     labels, names))


@pytest.mark.parametrize("split", _splits(), ids=["image", "memory"])
@pytest.mark.parametrize("sampler", ["random", "class_balanced"])
def test_process_blocks_put_together_are_the_whole_batches(split, sampler):
  def stream(shard):
    if sampler == "random":  # the second batch padded: 4 valid rows of 8
      return samplers.iterate_batches(split, 8, seed=1, epoch=2, augment=True,
                                      drop_last=False, shard=shard)
    return samplers.iterate_class_balanced_batches(
        split, 2, 2, seed=1, epoch=2, augment=True, first_batch=1,
        shard=shard)

  whole = list(stream((0, 1)))
  blocks = [list(stream((i, 2))) for i in range(2)]
  assert len(whole) == len(blocks[0]) == len(blocks[1]) > 0
  for batch, first, second in zip(whole, *blocks):
    assert len(first["index"]) == len(batch["index"]) // 2
    for key in batch:  # the same rows and the same random crops and flips
      np.testing.assert_array_equal(
          batch[key], np.concatenate([first[key], second[key]]), key)
  if sampler == "random":
    assert whole[-1]["valid"].tolist() == [True] * 4 + [False] * 4


def test_a_shard_that_does_not_divide_the_batch_is_refused():
  with pytest.raises(ValueError, match="count dividing the batch size 8"):
    data.shard_rows((0, 3), 8)
  with pytest.raises(ValueError, match="0 <= index < count"):
    data.shard_rows((2, 2), 8)


def test_auto_detection_outside_a_cluster_says_what_to_give():
  # A child process: jax.distributed may be initialised once per process.
  env = {k: v for k, v in os.environ.items()
         if not k.startswith(("JAX_COORDINATOR", "JAX_NUM_PROCESSES",
                              "JAX_PROCESS_ID", "SLURM_", "OMPI_", "PMI_"))}
  proc = subprocess.run(
      [sys.executable, "-c", "from nngk_jax import parallel; "
       "parallel.initialize_distributed(auto_detect=True)"],
      env=dict(env, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT),
      capture_output=True, text=True, timeout=120)
  assert proc.returncode != 0
  assert "JAX found no cluster" in proc.stderr, proc.stderr[-2000:]

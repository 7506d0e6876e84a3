"""Hardening: damaged work directories, no untrusted deserialisation,
signals and mid-epoch checkpoints, unreadable image files found before
training, and every image format read alike by both readers."""

import json
import pathlib
import re
import warnings

import numpy as np
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
  # The retrained epoch 2 is saved (Orbax would skip a number it holds):
  # the damaged checkpoint is moved aside, and the new one reads.
  assert "is replaced by a new one and moved to" in err
  assert (tmp_path / "checkpoints_unreadable" / second.name).is_dir()
  assert second.exists()
  _, _, state = train.init_run(tiny_config(num_epochs=2),
                               train.datalib.load_dataset("digits"))
  store = checkpointing.CheckpointStore(tmp_path / "checkpoints", {})
  assert store.restore(state)[1] == 2
  store.close()


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


def test_loading_a_stopped_run_warns_that_it_is_mid_epoch(
    tmp_path, tiny_config, monkeypatch):
  import signal
  _step_hook(monkeypatch, STEPS + 5,
             lambda: signal.raise_signal(signal.SIGINT))
  with pytest.raises(train.TrainingInterrupted):
    train.train_and_evaluate(tiny_config(num_epochs=2), tmp_path)
  monkeypatch.undo()
  with pytest.warns(UserWarning, match=r"middle of epoch 2 \(after step 6\)"):
    _, _, state = train.load_trained(tmp_path)
  assert int(state.step) == STEPS + 6
  # A finished run loads without a warning.
  train.train_and_evaluate(tiny_config(num_epochs=2), tmp_path)
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    _, _, state = train.load_trained(tmp_path)
  assert int(state.step) == 2 * STEPS


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
  # Python's handler, or SIG_IGN when the tests run in the background.
  before = signal.getsignal(signal.SIGINT)
  with pytest.raises(interrupts.StoppedAtOnce, match="second SIGINT"):
    train.train_and_evaluate(tiny_config(num_epochs=2), tmp_path)
  assert [p.name for p in _checkpoint_dirs(tmp_path)] == [str(STEPS)]
  # The handlers are put back: Ctrl-C outside training is as it was.
  assert signal.getsignal(signal.SIGINT) is before


# -- Image files: checked before training, every format read alike ------------


def _noise(size, seed=0, mode="RGB"):
  from PIL import Image
  rng = np.random.default_rng(seed)
  shape = (size[1], size[0]) + ((3,) if mode == "RGB" else ())
  return Image.fromarray(rng.integers(0, 256, shape, np.uint8), mode)


def _bad_folder(root):
  """Two classes of three good images, and four bad files: a truncated JPEG,
  a truncated PNG, an empty file and a web page saved as .jpg."""
  import io
  for c in ("cat", "dog"):
    (root / c).mkdir(parents=True)
    for i in range(3):
      _noise((16, 16), seed=i).save(root / c / f"{i}.png")
  buffer = io.BytesIO()
  _noise((64, 64), seed=7).save(buffer, "JPEG", quality=95)
  (root / "cat" / "truncated.jpg").write_bytes(
      buffer.getvalue()[:len(buffer.getvalue()) * 2 // 3])
  buffer = io.BytesIO()
  _noise((64, 64), seed=8).save(buffer, "PNG")
  (root / "dog" / "truncated.png").write_bytes(
      buffer.getvalue()[:len(buffer.getvalue()) // 2])
  (root / "dog" / "empty.png").write_bytes(b"")
  (root / "cat" / "page.jpg").write_text("<html>404 not found</html>")
  return ["cat/page.jpg", "cat/truncated.jpg", "dog/empty.png",
          "dog/truncated.png"]


@pytest.mark.parametrize("pipeline", [None, {"resize": 16, "crop": 16}])
def test_every_unreadable_image_is_named_in_one_error_before_any_work(
    tmp_path, pipeline):
  from nngk_jax import data as datalib
  bad = _bad_folder(tmp_path / "images")
  with pytest.raises(datalib.UnreadableImagesError) as info:
    datalib.load_dataset(f"folder:{tmp_path / 'images'}", pipeline=pipeline)
  assert sorted(pathlib.Path(p).relative_to(tmp_path / "images").as_posix()
                for p, _ in info.value.files) == bad
  message = str(info.value)
  assert message.startswith("4 image file(s) in folder")
  assert "data.skip_unreadable=True" in message
  for name in bad:
    assert name in message
  reasons = dict((pathlib.Path(p).name, r) for p, r in info.value.files)
  assert reasons["empty.png"] == "empty file (0 bytes)"
  assert reasons["page.jpg"].startswith("not an image")
  assert "truncated" in reasons["truncated.jpg"].lower()


def test_cli_names_every_unreadable_image_one_per_line(tmp_path, capsys):
  from nngk_jax import cli
  bad = _bad_folder(tmp_path / "images")
  code = cli.main(["--dataset", f"folder:{tmp_path / 'images'}",
                   "--workdir", str(tmp_path / "run")])
  err = capsys.readouterr().err.splitlines()
  assert code == 1
  assert err[0].startswith("error: UnreadableImagesError: 4 image file(s)")
  assert sorted(line.split(":")[0].strip()[-len(n):]
                for line, n in zip(err[1:], bad)) == bad
  assert not (tmp_path / "run").exists()  # refused before any work


def test_skip_unreadable_trains_without_them_and_writes_a_report(
    tmp_path, tiny_config):
  import ml_collections
  bad = _bad_folder(tmp_path / "images")
  config = tiny_config(num_epochs=1, batch_size=4, samples_per_class=2,
                       classifier_k=2, **{"nngk.k": 2})
  config.dataset = f"folder:{tmp_path / 'images'}"
  config.data = ml_collections.ConfigDict(
      {"image_size": 8, "seed": 0, "skip_unreadable": True})
  metrics = train.train_and_evaluate(config, tmp_path / "run")
  assert "kernel_accuracy" in metrics
  report = (tmp_path / "run" / "unreadable_files.txt").read_text()
  lines = sorted(line.split("\t")[0] for line in report.splitlines())
  assert lines == [str(tmp_path / "images" / name) for name in bad]


def test_the_header_check_decodes_nothing(tmp_path, monkeypatch):
  """check_image_file reads headers only: with decoding made impossible it
  still passes sound files of every format (and fails the bad ones)."""
  from PIL import ImageFile
  from nngk_jax.data import pipeline as pipelib
  for name in ("a.png", "a.jpg", "a.gif", "a.bmp"):
    _noise((300, 200)).save(tmp_path / name)

  def no_decode(self):
    raise AssertionError("decoded")

  monkeypatch.setattr(ImageFile.ImageFile, "load", no_decode)
  assert pipelib.scan_image_files(sorted(tmp_path.iterdir())) == []
  (tmp_path / "a.jpg").write_bytes((tmp_path / "a.jpg").read_bytes()[:-500])
  assert [pathlib.Path(p).name for p, _ in pipelib.scan_image_files(
      sorted(tmp_path.iterdir()))] == ["a.jpg"]


def _both_readers(path, size):
  """The in-memory reader's and the pipeline's evaluation view of a square
  ``size`` image (no resize or crop at that size): both in [-1, 1]."""
  from nngk_jax.data import folder
  from nngk_jax.data import pipeline as pipelib
  memory = folder.read_image(path, size)
  piped = pipelib.ImageTransform(resize=size, crop=size).evaluate(path)
  np.testing.assert_allclose(memory, piped, atol=1e-6)
  return memory


def _as_unit(pixels):
  return np.asarray(pixels, np.float32) / 127.5 - 1.0


def test_cmyk_jpeg_reads_as_its_rgb(tmp_path):
  rgb = _noise((8, 8)).resize((32, 32))  # smooth: JPEG keeps it closely
  rgb.save(tmp_path / "rgb.png")
  rgb.convert("CMYK").save(tmp_path / "cmyk.jpg", quality=100)
  got = _both_readers(tmp_path / "cmyk.jpg", 32)
  assert np.abs(got - _as_unit(rgb)).mean() < 0.03


def test_16_bit_png_reads_as_its_8_bit_image_not_white(tmp_path):
  from PIL import Image
  grey = np.tile(np.arange(0, 256, 8, dtype=np.uint8), (32, 1))
  Image.fromarray(grey.astype(np.uint16) * 257).save(tmp_path / "16.png")
  assert Image.open(tmp_path / "16.png").mode == "I;16"
  got = _both_readers(tmp_path / "16.png", 32)
  np.testing.assert_array_equal(got, np.repeat(_as_unit(grey)[..., None],
                                               3, -1))


def test_grey_with_alpha_reads_as_its_grey(tmp_path):
  from PIL import Image
  grey = np.asarray(_noise((16, 16)).convert("L"))
  alpha = np.full_like(grey, 0)  # fully transparent: the grey is kept
  Image.fromarray(np.stack([grey, alpha], -1), "LA").save(tmp_path / "la.png")
  got = _both_readers(tmp_path / "la.png", 16)
  np.testing.assert_array_equal(got[..., 0], _as_unit(grey))


@pytest.mark.parametrize("transparency", [False, True])
def test_palette_png_reads_as_its_colours(tmp_path, transparency):
  import warnings
  from PIL import Image
  rgb = _noise((4, 4)).resize((16, 16), Image.Resampling.NEAREST)
  palette = rgb.quantize(16)  # 16 colours: exact
  if transparency:
    palette.info["transparency"] = 0
  palette.save(tmp_path / "p.png")
  with warnings.catch_warnings():
    warnings.simplefilter("error")  # no "palette with transparency" warning
    got = _both_readers(tmp_path / "p.png", 16)
  np.testing.assert_array_equal(got, _as_unit(palette.convert("RGB")))


def test_exif_rotation_is_applied(tmp_path):
  """A phone photo stored landscape with orientation 6 (rotate 90 degrees
  clockwise to display) reads as the portrait image it shows."""
  from PIL import Image
  from nngk_jax.data import pipeline as pipelib
  stored = Image.new("RGB", (32, 16), (255, 0, 0))
  stored.paste((0, 0, 255), (16, 0, 32, 16))  # left red, right blue
  exif = Image.Exif()
  exif[0x0112] = 6
  stored.save(tmp_path / "phone.jpg", exif=exif, quality=100)
  shown = pipelib.decode_image(tmp_path / "phone.jpg")
  assert shown.size == (16, 32)  # portrait
  pixels = np.asarray(shown, np.int32)
  assert pixels[2, 8, 0] > 200 and pixels[2, 8, 2] < 50  # red on top
  assert pixels[-3, 8, 2] > 200 and pixels[-3, 8, 0] < 50  # blue below
  from nngk_jax.data import folder
  tall = folder.read_image(tmp_path / "phone.jpg", (32, 16))
  np.testing.assert_allclose(tall, _as_unit(shown), atol=1e-6)


def test_one_pixel_image(tmp_path):
  from PIL import Image
  from nngk_jax.data import folder
  from nngk_jax.data import pipeline as pipelib
  Image.new("RGB", (1, 1), (255, 0, 0)).save(tmp_path / "dot.png")
  want = np.broadcast_to(_as_unit([255, 0, 0]), (8, 8, 3))
  np.testing.assert_array_equal(folder.read_image(tmp_path / "dot.png", 8),
                                want)
  transform = pipelib.ImageTransform(resize=8, crop=6)
  np.testing.assert_array_equal(transform.evaluate(tmp_path / "dot.png"),
                                want[:6, :6])
  assert transform.train(tmp_path / "dot.png",
                         np.random.default_rng(0)).shape == (6, 6, 3)


_PEAK_MEMORY = """
import resource, sys
import numpy as np
from nngk_jax.data import folder, pipeline
def peak_mb():
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
before = peak_mb()
small = folder.read_image(sys.argv[1], 32)
piped = pipeline.ImageTransform(resize=256, crop=224).evaluate(sys.argv[1])
print(peak_mb() - before, float(small.mean()), float(piped.mean()))
"""


def test_8000_square_jpeg_is_decoded_without_its_full_size_array(tmp_path):
  """An 8000x8000 RGB photograph is 192 MB decoded; both readers decode it
  at 1/8 scale (JPEG draft mode): the peak memory of a fresh process grows
  by far less than the full image."""
  import subprocess
  import sys
  from PIL import Image
  Image.new("RGB", (8000, 8000), (255, 255, 255)).save(tmp_path / "big.jpg")
  result = subprocess.run(
      [sys.executable, "-c", _PEAK_MEMORY, str(tmp_path / "big.jpg")],
      cwd=ROOT, capture_output=True, text=True, timeout=300, check=True)
  grown_mb, small_mean, piped_mean = map(float, result.stdout.split())
  assert small_mean == pytest.approx(1.0) and piped_mean == pytest.approx(1.0)
  assert grown_mb < 64, f"peak memory grew by {grown_mb:.0f} MB"


def test_an_image_split_resumed_mid_epoch_gets_the_same_augmentations():
  """The pipeline's random crops and flips are a function of the position
  in the epoch: skipping the first batches leaves the others unchanged."""
  from nngk_jax import data as datalib
  from nngk_jax.data import pipeline as pipelib
  records = [np.asarray(_noise((12, 12), seed=i)) for i in range(12)]
  split = pipelib.ImageSplit(records, [0] * 6 + [1] * 6, ("a", "b"),
                             pipelib.ImageTransform(resize=12, crop=8))
  for sampler in (
      lambda **kw: datalib.iterate_batches(split, 4, seed=3, epoch=2,
                                           augment=True, **kw),
      lambda **kw: datalib.iterate_class_balanced_batches(
          split, 2, 2, seed=3, epoch=2, augment=True, **kw)):
    full = list(sampler())
    tail = list(sampler(first_batch=1))
    assert len(tail) == len(full) - 1 == 2
    for got, want in zip(tail, full[1:]):
      for key in want:
        np.testing.assert_array_equal(got[key], want[key])
  with pytest.raises(ValueError, match="first_batch must be"):
    list(datalib.iterate_batches(split, 4, seed=3, epoch=2, first_batch=4))


@pytest.mark.parametrize("name", ["{rel}:y", "{rel}", "folder", "digits:x",
                                  "nope"])
def test_dataset_names_are_registered_names_never_files(tmp_path, capsys,
                                                         name):
  """``--dataset ../../x:y`` once imported x.py as a config file."""
  import os
  from nngk_jax import cli
  from nngk_jax import configs
  (tmp_path / "evil.py").write_text(
      "import pathlib\n"
      f"pathlib.Path({str(tmp_path / 'imported')!r}).touch()\n"
      "def get_config():\n  raise SystemExit('imported')\n")
  rel = os.path.relpath(tmp_path / "evil", configs.CONFIG_DIR)
  code = cli.main(["--dataset", name.format(rel=rel),
                   "--workdir", str(tmp_path / "run")])
  err = capsys.readouterr().err
  assert code == 1
  assert err.startswith("error: ValueError:") and err.count("\n") == 1
  assert "'folder:PATH'" in err
  assert name == "folder" or "known: 'digits'" in err
  assert not (tmp_path / "imported").exists()


def test_sources_compile_without_syntax_warnings():
  """Invalid escapes in docstrings (``\\l`` in LaTeX without an ``r``
  prefix): a DeprecationWarning on Python 3.11, a SyntaxWarning on 3.12,
  an error in future versions."""
  root = pathlib.Path(__file__).resolve().parents[1]
  sources = sorted((root / "nngk_jax").rglob("*.py")) + sorted(
      (root / "experiments").rglob("*.py"))
  assert len(sources) > 20
  bad = []
  for path in sources:
    with warnings.catch_warnings(record=True) as caught:
      warnings.simplefilter("always")
      compile(path.read_text(), str(path), "exec")
    bad += [f"{path.relative_to(root)}:{w.lineno}: {w.message}"
            for w in caught
            if issubclass(w.category, (SyntaxWarning, DeprecationWarning))]
  assert not bad, bad

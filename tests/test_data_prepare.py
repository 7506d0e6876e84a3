"""Tests for benchmark preparation (``nngk_jax.data.prepare``).

Everything here runs without TensorFlow and without the network: files placed
by hand are small fakes written to ``tmp_path``, a missing TensorFlow is
simulated, and prepared data is a fake builder. One end-to-end test prepares
a tiny fake Cars196 for real, only where TensorFlow is installed.
"""

import builtins
import dataclasses
import inspect
import io
import pathlib
import sys
import tarfile
import types

import numpy as np
import pytest

from nngk_jax.data import benchmarks
from nngk_jax.data import prepare

tfds = pytest.importorskip("tensorflow_datasets")
scipy_io = pytest.importorskip("scipy.io")

_FIELDS = ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "fname")


def _annotations(labels, fields=_FIELDS):
  """A Cars196 annotation struct as the devkit's .mat files hold it."""
  rows = np.zeros((1, len(labels)), [(f, "O") for f in fields])
  for i, label in enumerate(labels):
    values = {"bbox_x1": 2, "bbox_y1": 3, "bbox_x2": 20, "bbox_y2": 15,
              "class": label}
    rows[0, i] = tuple(np.array([f"{i + 1:05d}.jpg"]) if f == "fname"
                       else np.array([[values[f]]]) for f in fields)
  return {"annotations": rows}


def _write_cars196_folders(manual, train=(1, 1, 98, 99, 196),
                           test=(2, 99, 99, 150), *, nested=True,
                           devkit_archive=True):
  """Writes the 'folders' layout: images, devkit, labelled test annotations.

  Train images are nested one level as in the Kaggle copy when ``nested``.
  """
  from PIL import Image
  manual = pathlib.Path(manual)
  for split, labels in (("train", train), ("test", test)):
    folder = manual / f"cars_{split}"
    if nested:
      folder = folder / f"cars_{split}"
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(len(labels)):
      Image.fromarray(np.full((24, 32, 3), 10 * i, np.uint8)).save(
          folder / f"{i + 1:05d}.jpg")
  buffer = io.BytesIO()
  scipy_io.savemat(buffer, _annotations(train))
  if devkit_archive:
    with tarfile.open(manual / "car_devkit.tgz", "w:gz") as archive:
      member = tarfile.TarInfo("devkit/cars_train_annos.mat")
      member.size = len(buffer.getvalue())
      archive.addfile(member, io.BytesIO(buffer.getvalue()))
  else:
    (manual / "devkit").mkdir()
    (manual / "devkit" / "cars_train_annos.mat").write_bytes(buffer.getvalue())
  scipy_io.savemat(manual / "cars_test_annos_withlabels.mat",
                   _annotations(test))
  return {"train": len(train), "test": len(test)}


@pytest.fixture(name="small_originals")
def _small_originals(monkeypatch):
  """Cars196's original files shrunk to a few bytes each, so tests can write
  them; returns ``{filename: size}``."""
  small = tuple(dataclasses.replace(f, size=10 + i) for i, f in
                enumerate(benchmarks.ORIGINAL_FILES["cars196"]))
  monkeypatch.setitem(benchmarks.ORIGINAL_FILES, "cars196", small)
  return {f.filename: f.size for f in small}


def _load_tfds_checksums(relative):
  from etils import epath
  from tensorflow_datasets.core.download import checksums
  return checksums.load_url_infos(
      epath.resource_path("tensorflow_datasets") / relative)


@pytest.mark.parametrize("name, relative", [
    ("cub", "url_checksums/caltech_birds2011.txt"),
    ("cars196", "url_checksums/cars196.txt"),
    ("sop", "datasets/stanford_online_products/checksums.tsv"),
    ("cifar10", "url_checksums/cifar10.txt"),
    ("cifar100", "url_checksums/cifar100.txt"),
])
def test_original_files_match_tfds_checksums(name, relative):
  infos = _load_tfds_checksums(relative)
  for f in benchmarks.ORIGINAL_FILES[name]:
    info = infos[f.url]
    assert (info.filename, info.size, info.checksum) == (
        f.filename, f.size, f.sha256)


def test_cars196_download_urls_are_the_registered_ones():
  text = pathlib.Path(inspect.getsourcefile(tfds.builder_cls("cars196"))
                      ).read_text()
  for f in benchmarks.ORIGINAL_FILES["cars196"]:
    assert f.filename in text
  # Still no manual-dir instructions in the stock builder: TFDS finds files
  # placed by hand through the download manager, by registered file name.
  assert tfds.builder_cls("cars196").MANUAL_DOWNLOAD_INSTRUCTIONS is None


def test_archives_missing_name_exact_paths(tmp_path):
  problems = prepare.check_manual_files("cars196", tmp_path / "manual")
  expected = [tmp_path / "manual" / f.filename
              for f in benchmarks.ORIGINAL_FILES["cars196"]]
  assert len(problems) == 4
  for problem, path in zip(problems, expected):
    assert problem.startswith(f"missing {path} (")
    assert "jkrause" in problem  # the original (dead) address


def test_archives_present(tmp_path, small_originals):
  for filename, size in small_originals.items():
    (tmp_path / filename).write_bytes(b"x" * size)
  assert prepare.cars196_layout(tmp_path) == "archives"
  assert prepare.check_manual_files("cars196", tmp_path) == []


def test_archives_empty_or_truncated(tmp_path, small_originals):
  for filename, size in small_originals.items():
    (tmp_path / filename).write_bytes(b"x" * size)
  (tmp_path / "cars_train.tgz").write_bytes(b"")
  (tmp_path / "cars_test.tgz").write_bytes(b"x" * 3)
  problems = prepare.check_manual_files("cars196", tmp_path)
  assert len(problems) == 2
  assert f"{tmp_path / 'cars_train.tgz'} has 0 bytes" in problems[0]
  assert f"{tmp_path / 'cars_test.tgz'} has 3 bytes" in problems[1]
  assert "truncated" in problems[1]


def test_archives_one_missing(tmp_path, small_originals):
  for filename, size in small_originals.items():
    if filename != "car_devkit.tgz":
      (tmp_path / filename).write_bytes(b"x" * size)
  problems = prepare.check_manual_files("cars196", tmp_path)
  assert problems == [p for p in problems if "car_devkit.tgz" in p]
  assert len(problems) == 1


@pytest.mark.parametrize("nested", [True, False])
@pytest.mark.parametrize("devkit_archive", [True, False])
def test_folders_present(tmp_path, nested, devkit_archive):
  counts = _write_cars196_folders(tmp_path, nested=nested,
                                  devkit_archive=devkit_archive)
  assert prepare.cars196_layout(tmp_path) == "folders"
  assert prepare.check_manual_files(
      "cars196", tmp_path, expected_annotations=counts) == []
  folders = prepare.cars196_folders(tmp_path)
  inner = ("cars_train",) if nested else ()
  assert folders.train_images == tmp_path.joinpath("cars_train", *inner)
  assert folders.devkit_is_archive == devkit_archive


def test_folders_need_every_original_annotation(tmp_path):
  _write_cars196_folders(tmp_path)
  problems = prepare.check_manual_files("cars196", tmp_path)
  assert problems == ["the train annotations list 5 images, the original "
                      "8,144", "the test annotations list 4 images, the "
                      "original 8,041"]


def test_folders_missing_pieces(tmp_path):
  counts = _write_cars196_folders(tmp_path, nested=False)
  (tmp_path / "cars_test" / "00003.jpg").unlink()
  (tmp_path / "car_devkit.tgz").unlink()
  problems = prepare.check_manual_files("cars196", tmp_path,
                                        expected_annotations=counts)
  assert problems[0].startswith(
      f"missing {tmp_path / 'devkit' / 'cars_train_annos.mat'}")
  assert problems[1] == (f"1 annotated test images are not in "
                         f"{tmp_path / 'cars_test'}, e.g. 00003")
  (tmp_path / "cars_test_annos_withlabels.mat").unlink()
  problems = prepare.check_manual_files("cars196", tmp_path,
                                        expected_annotations=counts)
  assert any(p.startswith(
      f"missing {tmp_path / 'cars_test_annos_withlabels.mat'}")
             for p in problems)


def test_folders_missing_image_folder(tmp_path):
  counts = _write_cars196_folders(tmp_path)
  for image in (tmp_path / "cars_test" / "cars_test").iterdir():
    image.unlink()
  (tmp_path / "cars_test" / "cars_test").rmdir()
  (tmp_path / "cars_test").rmdir()
  problems = prepare.check_manual_files("cars196", tmp_path,
                                        expected_annotations=counts)
  assert problems == [f"missing folder {tmp_path / 'cars_test'} (the test "
                      f"images: 00001.jpg, ...)"]


def test_folders_reject_truncated_or_unlabelled_annotations(tmp_path):
  counts = _write_cars196_folders(tmp_path)
  test_annotations = tmp_path / "cars_test_annos_withlabels.mat"
  # The devkit's cars_test_annos.mat has no labels.
  scipy_io.savemat(test_annotations, _annotations(
      range(4), fields=tuple(f for f in _FIELDS if f != "class")))
  problems = prepare.check_manual_files("cars196", tmp_path,
                                        expected_annotations=counts)
  assert len(problems) == 1
  assert "not the labelled annotations" in problems[0]
  data = test_annotations.read_bytes()
  test_annotations.write_bytes(data[:len(data) // 3])
  problems = prepare.check_manual_files("cars196", tmp_path,
                                        expected_annotations=counts)
  assert len(problems) == 1
  assert problems[0].startswith(f"cannot read {test_annotations}")


def test_cub_and_sop_need_no_manual_files(tmp_path):
  assert prepare.check_manual_files("cub", tmp_path) == []
  assert prepare.check_manual_files("sop", tmp_path / "absent") == []
  (tmp_path / "segmentations.tgz").write_bytes(b"partial")
  problems = prepare.check_manual_files("cub", tmp_path)
  assert len(problems) == 1
  assert f"{tmp_path / 'segmentations.tgz'} has 7 bytes" in problems[0]


def test_commands_and_messages(tmp_path, monkeypatch):
  monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path))
  assert benchmarks.default_data_dir() == tmp_path
  assert benchmarks.manual_dir_for() == tmp_path / "downloads" / "manual"
  assert benchmarks.prepare_command("cub") == "make data DATASET=cub"
  assert benchmarks.prepare_command("cub", tmp_path) == (
      "make data DATASET=cub")
  assert benchmarks.prepare_command("sop", "/elsewhere") == (
      "make data DATASET=sop TFDS_DATA_DIR=/elsewhere")
  for name in benchmarks.BENCHMARKS:
    message = benchmarks.missing_data_message(name)
    assert f"`make data DATASET={name}`" in message
    metric = benchmarks.BENCHMARKS[name].protocol == "metric"
    assert (f"`make train DATASET={name}`" in message) == metric
    assert ("downloads/manual" in message) == (name == "cars196")
    assert str(tmp_path) in message
    assert benchmarks.BENCHMARKS[name].builder in message
  cars = benchmarks.missing_data_message("cars196")
  assert str(tmp_path / "downloads" / "manual") in cars
  assert "cars_train.tgz" in cars and "docs/data.md" in cars


@pytest.mark.parametrize("name, match", [
    ("imagenet", "unknown dataset 'imagenet'"),
    ("digits", "needs no preparation"),
    ("folder:/some/images", "needs no preparation"),
])
def test_unknown_or_unpreparable_names(name, match, capsys):
  with pytest.raises(ValueError, match=match):
    benchmarks.prepare_command(name)
  with pytest.raises(ValueError, match=match):
    prepare.check_manual_files(name, "/nowhere")
  assert prepare.main([name]) == 1
  assert match in capsys.readouterr().err


@pytest.fixture(name="no_tensorflow")
def _no_tensorflow(monkeypatch):
  """Makes ``import tensorflow`` fail, as where it is not installed."""
  real_import = builtins.__import__

  def fake_import(name, *args, **kwargs):
    if name == "tensorflow" or name.startswith("tensorflow."):
      raise ModuleNotFoundError(f"No module named {name!r}")
    return real_import(name, *args, **kwargs)

  for module in [m for m in sys.modules
                 if m == "tensorflow" or m.startswith("tensorflow.")]:
    monkeypatch.delitem(sys.modules, module)
  monkeypatch.setattr(builtins, "__import__", fake_import)


@pytest.mark.parametrize("name", ["cub", "sop"])
def test_tensorflow_missing(name, tmp_path, no_tensorflow, capsys):
  with pytest.raises(prepare.TensorFlowMissingError,
                     match=f"`make data DATASET={name}`") as error:
    prepare.prepare(name, tmp_path)
  assert "requirements-data.txt" in str(error.value)
  assert prepare.main([name, "--data-dir", str(tmp_path)]) == 1
  assert "needs TensorFlow" in capsys.readouterr().err
  assert not (tmp_path / benchmarks.BENCHMARKS[name].builder).exists()


def test_cars196_files_checked_before_tensorflow(tmp_path, no_tensorflow,
                                                 capsys, monkeypatch):
  with pytest.raises(prepare.ManualFilesError) as error:
    prepare.prepare("cars196", tmp_path)
  assert len(error.value.problems) == 4
  manual = tmp_path / "downloads" / "manual"
  assert f"missing {manual / 'cars_train.tgz'}" in str(error.value)
  assert "dead upstream" in str(error.value)
  assert "unofficial" in str(error.value)
  assert prepare.main(["cars196", "--data-dir", str(tmp_path)]) == 1
  assert "cars_test_annos_withlabels.mat" in capsys.readouterr().err
  # Once the files are right, TensorFlow is what is missing.
  counts = _write_cars196_folders(manual)
  monkeypatch.setattr(prepare, "CARS196_NUM_ANNOTATIONS", counts)
  with pytest.raises(prepare.TensorFlowMissingError):
    prepare.prepare("cars196", tmp_path)


class _FakeBuilder:
  """What ``prepare`` reads of a prepared TFDS builder."""

  def __init__(self, data_dir, file_format, num_examples):
    self.data_dir = str(data_dir)
    formats = {tfds.core.FileFormat(file_format)}
    self.info = types.SimpleNamespace(
        available_file_formats=lambda: formats,
        splits={split: types.SimpleNamespace(num_examples=n)
                for split, n in num_examples.items()})

  def is_prepared(self):
    return True


@pytest.fixture(name="prepared")
def _prepared(monkeypatch, tmp_path):
  """``prepared(file_format, num_examples)`` makes tfds.builder return a
  prepared fake builder."""

  def make(file_format="array_record", num_examples=None):
    num_examples = num_examples or {"train": 5994, "test": 5794}
    builder = _FakeBuilder(tmp_path / "caltech_birds2011" / "0.2.0",
                           file_format, num_examples)
    monkeypatch.setattr(tfds, "builder", lambda *a, **k: builder)
    return builder

  return make


def test_already_prepared(prepared, tmp_path, no_tensorflow, capsys):
  builder = prepared()
  message = prepare.prepare("cub", tmp_path)
  assert message == (f"cub is already prepared at {builder.data_dir}; "
                     f"nothing to do")
  assert prepare.main(["cub", "--data-dir", str(tmp_path)]) == 0
  assert "already prepared" in capsys.readouterr().out


def test_prepared_in_another_format(prepared, tmp_path):
  builder = prepared(file_format="tfrecord")
  with pytest.raises(prepare.PrepareError, match="tfds convert_format") as e:
    prepare.prepare("cub", tmp_path)
  assert builder.data_dir in str(e.value)


def test_prepared_incomplete(prepared, tmp_path):
  prepared(num_examples={"train": 5994, "test": 100})
  with pytest.raises(prepare.PrepareError, match="6,094 images"):
    prepare.prepare("cub", tmp_path)


def test_folder_builder_hands_the_folders_to_the_stock_generator(tmp_path):
  manual = tmp_path / "downloads" / "manual"
  _write_cars196_folders(manual)
  folders = prepare.cars196_folders(manual)
  builder = prepare._cars196_folder_builder(tfds, tmp_path, folders)  # pylint: disable=protected-access
  stock = tfds.builder("cars196", data_dir=str(tmp_path))
  assert (builder.name, str(builder.version)) == ("cars196", "2.1.0")
  assert builder.data_dir == stock.data_dir
  assert builder.info.features.keys() == stock.info.features.keys()
  assert tfds.builder_cls("cars196") is type(stock)  # registry untouched

  def extract(path):
    out = tmp_path / "extracted"
    with tarfile.open(path) as archive:
      archive.extractall(out)
    return out

  dl_manager = types.SimpleNamespace(extract=extract)
  generators = builder._split_generators(dl_manager)  # pylint: disable=protected-access
  kwargs = {g.name: g.gen_kwargs for g in generators}
  assert kwargs["train"] == {
      "split_name": "train",
      "data_dir_path": str(manual / "cars_train" / "cars_train"),
      "data_annotations_path": str(
          tmp_path / "extracted" / "devkit" / "cars_train_annos.mat")}
  assert kwargs["test"]["data_dir_path"] == str(manual / "cars_test" /
                                                "cars_test")
  assert kwargs["test"]["data_annotations_path"] == str(
      manual / "cars_test_annos_withlabels.mat")


@pytest.mark.slow
def test_prepare_fake_cars196_end_to_end(tmp_path, monkeypatch):
  """Prepares tiny fake Cars196 folders for real and reads them back."""
  pytest.importorskip("tensorflow")
  pytest.importorskip("importlib_resources")
  manual = tmp_path / "downloads" / "manual"
  counts = _write_cars196_folders(manual)
  monkeypatch.setattr(prepare, "CARS196_NUM_ANNOTATIONS", counts)
  monkeypatch.setitem(benchmarks.BENCHMARKS, "cars196", dataclasses.replace(
      benchmarks.BENCHMARKS["cars196"], num_images=(4, 5)))
  message = prepare.prepare("cars196", tmp_path)
  assert message == f"cars196 prepared at {tmp_path / 'cars196' / '2.1.0'}"
  assert "already prepared" in prepare.prepare("cars196", tmp_path)
  train = tfds.data_source("cars196", split="train", data_dir=str(tmp_path),
                           download=False)
  assert sorted(int(r["label"]) for r in train) == [0, 0, 97, 98, 195]

"""Tests of the search index (nngk_jax.index) and its command line."""

import hashlib
import json
import pathlib
import re
import shutil

import flax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from nngk_jax import evaluation
from nngk_jax import neighbours as neighbourlib
from nngk_jax import objectives
from nngk_jax import search
from nngk_jax import train
from nngk_jax.data import pipeline
from nngk_jax.index import ImageFormat
from nngk_jax.index import Index
from nngk_jax.index import IndexFormatError


# -- a tiny trained run, built once --------------------------------------------


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_config):
  """One epoch of NNGK (learned weights) on digits with a small MLP."""
  workdir = tmp_path_factory.mktemp("run")
  train.train_and_evaluate(tiny_config(num_epochs=1), workdir)
  return workdir


@pytest.fixture(scope="module")
def trained(run):
  """``(config, dataset, state)`` of the run."""
  return train.load_trained(run)


@pytest.fixture(scope="module")
def index(run):
  """The run's default index (do not mutate: build another to add to it)."""
  return Index.from_run(run)


@pytest.fixture(scope="module")
def saved(index, tmp_path_factory):
  """The run's index saved to a directory (copy it before damaging it)."""
  return index.save(tmp_path_factory.mktemp("saved") / "index")


def _digit_pngs(directory, images):
  """``[n, 8, 8, 1]`` images in [-1, 1] written as grey PNGs; their paths."""
  directory.mkdir(parents=True, exist_ok=True)
  paths = []
  for i, image in enumerate(images):
    pixels = np.round((image[..., 0] + 1.0) * 127.5).astype(np.uint8)
    paths.append(directory / f"{i}.png")
    Image.fromarray(pixels, mode="L").save(paths[-1])
  return paths


# -- search and classification against references ------------------------------


def _brute_force(gallery, queries, k, geometry):
  """Nearest rows by a plain loop over the gallery, in float64."""
  gallery = np.asarray(gallery, np.float64)
  queries = np.asarray(queries, np.float64)
  if geometry == "cosine":
    gallery = gallery / np.linalg.norm(gallery, axis=1, keepdims=True)
    queries = queries / np.linalg.norm(queries, axis=1, keepdims=True)
  indices, distances = [], []
  for query in queries:
    d2 = np.array([np.sum((row - query) ** 2) for row in gallery])
    order = np.argsort(d2, kind="stable")[:k]
    indices.append(order)
    distances.append(d2[order])
  return np.array(indices), np.array(distances)


@pytest.mark.parametrize("geometry", ["euclidean", "cosine"])
def test_search_equals_brute_force_loop(geometry):
  rng = np.random.default_rng(0)
  gallery = rng.normal(size=(70, 6)).astype(np.float32)
  labels = rng.integers(0, 4, 70)
  queries = rng.normal(size=(9, 6)).astype(np.float32)
  index = Index(gallery, labels, sigma=0.5, geometry=geometry)
  got = index.search_embeddings(queries, k=7)
  want_idx, want_d2 = _brute_force(gallery, queries, 7, geometry)
  np.testing.assert_array_equal(got.indices, want_idx)
  np.testing.assert_allclose(got.distances, want_d2, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(got.labels, labels[want_idx])
  assert got.indices.dtype == np.int32 and got.distances.dtype == np.float32


@pytest.mark.parametrize("geometry", ["euclidean", "cosine"])
def test_classify_equals_kernel_classify(geometry):
  rng = np.random.default_rng(1)
  gallery = rng.normal(size=(80, 4)).astype(np.float32)
  labels = rng.integers(0, 5, 80)
  log_weights = rng.normal(scale=2.0, size=80).astype(np.float32)
  queries = rng.normal(size=(30, 4)).astype(np.float32)
  index = Index(gallery, labels, sigma=0.3, geometry=geometry,
                log_weights=log_weights, num_classes=5, classifier_k=9)
  predicted, probs = index.classify_embeddings(queries, return_probs=True)
  want = evaluation.kernel_classify(
      evaluation.in_geometry(gallery, geometry), labels,
      evaluation.in_geometry(queries, geometry), num_classes=5, k=9,
      sigma=0.3, centre_log_weights=log_weights)
  np.testing.assert_array_equal(predicted, want)
  np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
  np.testing.assert_array_equal(probs.argmax(axis=1), want)
  # k larger than the gallery is capped at N (the whole gallery votes).
  _, capped = index.classify_embeddings(queries, k=500, return_probs=True)
  _, whole = index.classify_embeddings(queries, k=80, return_probs=True)
  np.testing.assert_allclose(capped, whole, rtol=1e-6)
  assert not np.allclose(whole, probs)


def test_learned_weights_decide_a_close_vote():
  """Query at 0; class 0 at distance 1, class 1 at 1.1: equal weights vote 0,
  a log-weight of 2 on the class-1 item turns the vote to 1."""
  gallery = np.array([[1.0], [-1.1], [9.0]], np.float32)
  labels = np.array([0, 1, 1])
  query = np.zeros((1, 1), np.float32)
  plain = Index(gallery, labels, sigma=1.0, classifier_k=2)
  assert plain.classify_embeddings(query).tolist() == [0]
  weighted = Index(gallery, labels, sigma=1.0, classifier_k=2,
                   log_weights=np.array([0.0, 2.0, 0.0]))
  assert weighted.classify_embeddings(query).tolist() == [1]


def test_search_backend_is_auto_chosen_and_overridable(monkeypatch):
  seen = []
  real = neighbourlib.query_neighbours

  def recording(data, queries, *, k, backend="exact", seed=0):
    seen.append(backend)
    return real(data, queries, k=k, backend="exact", seed=seed)

  monkeypatch.setattr(neighbourlib, "query_neighbours", recording)
  rng = np.random.default_rng(2)
  index = Index(rng.normal(size=(20, 3)), np.zeros(20, int), sigma=1.0)
  query = rng.normal(size=(1, 3))
  index.search_embeddings(query, 2)
  monkeypatch.setattr(neighbourlib, "AUTO_EXACT_MAX_CENTRES", 10)
  index.search_embeddings(query, 2)
  index.search_embeddings(query, 2, backend="exact")
  assert seen == ["exact", "pynndescent", "exact"]


# -- an index from a run -------------------------------------------------------


def test_from_run_gallery_is_the_embedded_training_split(index, trained):
  config, dataset, state = trained
  want, _ = evaluation.embed_split(state, dataset.train, 256)
  assert index.geometry == objectives.evaluation_geometry(config)
  np.testing.assert_allclose(index.embeddings,
                             evaluation.in_geometry(want, index.geometry),
                             rtol=1e-6, atol=1e-6)
  np.testing.assert_array_equal(index.labels, dataset.train.labels)
  np.testing.assert_array_equal(index.log_weights,
                                state.params["bank"]["log_weights"])
  assert index.log_weights.std() > 0  # trained, so the test can tell
  assert index.sigma == config.nngk.sigma
  assert index.classifier_k == config.classifier_k
  assert index.class_names == list(dataset.train.class_names)
  assert index.sources[:2] == ["train:0", "train:1"]
  # The public embed (batched, padded) agrees on any number of images.
  np.testing.assert_allclose(index.embed(dataset.train.images[:37]),
                             want[:37], rtol=1e-5, atol=1e-6)


def test_bank_centres_gallery_is_the_state_bank(run, trained, index):
  _, _, state = trained
  bank = Index.from_run(run, centres="bank")
  np.testing.assert_array_equal(bank.embeddings, np.asarray(state.bank.centres))
  np.testing.assert_array_equal(bank.labels, np.asarray(state.bank.labels))
  # The bank holds the split as embedded before the epoch, not after it.
  assert not np.allclose(bank.embeddings, index.embeddings)


def test_bank_centres_of_a_run_without_bank_is_refused(run, trained,
                                                       monkeypatch):
  config, dataset, state = trained
  monkeypatch.setattr(train, "load_trained",
                      lambda workdir: (config, dataset,
                                       state.replace(bank=None)))
  with pytest.raises(ValueError, match=r"keeps no centre bank.*'embed'"):
    Index.from_run(run, centres="bank")


def test_add_then_search_finds_the_added_item_first(run, trained):
  _, dataset, _ = trained
  grown = Index.from_run(run)
  before = len(grown)
  images = dataset.test.images[:3]
  grown.add(images, [4, 5, 6])
  assert len(grown) == before + 3
  result = grown.search(images, 1)
  np.testing.assert_array_equal(result.indices[:, 0], before + np.arange(3))
  np.testing.assert_array_equal(result.distances[:, 0], 0.0)
  np.testing.assert_array_equal(result.labels[:, 0], [4, 5, 6])
  np.testing.assert_array_equal(grown.log_weights[before:], 0.0)
  assert grown.num_classes == 7 and grown.class_names[5:] == ["5", "6"]
  assert grown.sources[before:] == [None] * 3


def test_images_gallery(run, trained):
  _, dataset, _ = trained
  images = dataset.test.images[:12]
  gallery = Index.from_run(run, images=images, labels=dataset.test.labels[:12],
                           class_names=dataset.test.class_names)
  assert gallery.log_weights is None and gallery.num_classes == 5
  np.testing.assert_array_equal(gallery.search(images[:4], 1).indices[:, 0],
                                np.arange(4))


def test_folder_gallery_reads_every_image(run, trained, tmp_path):
  _, dataset, _ = trained
  for name, rows in (("cats", [0, 1]), ("dogs", [2, 3, 4])):
    _digit_pngs(tmp_path / "gallery" / name, dataset.test.images[rows])
  (tmp_path / "gallery" / "dogs" / "notes.txt").write_text("not an image")
  gallery = Index.from_run(run, folder=tmp_path / "gallery")
  assert gallery.class_names == ["cats", "dogs"]
  np.testing.assert_array_equal(gallery.labels, [0, 0, 1, 1, 1])
  assert gallery.log_weights is None
  files = [s.removeprefix("file:") for s in gallery.sources]
  assert [pathlib.Path(f).name for f in files] == ["0.png", "1.png", "0.png",
                                                   "1.png", "2.png"]
  images = gallery.read_images(files)
  np.testing.assert_allclose(images, dataset.test.images[:5], atol=1 / 127)
  np.testing.assert_allclose(gallery.embeddings, gallery.embed(images),
                             rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(gallery.source_images([3, 0]), images[[3, 0]])


def test_image_format_of_a_decoded_split_reads_with_its_transform(tmp_path):
  transform = pipeline.ImageTransform(resize=10, crop=8,
                                      normalization="imagenet")
  split = pipeline.ImageSplit([np.zeros((12, 14, 3), np.uint8)], [0], ("a",),
                              transform)
  image_format = ImageFormat.of_split(split)
  assert image_format == ImageFormat((8, 8, 3), transform)
  assert ImageFormat.from_json(
      json.loads(json.dumps(image_format.to_json()))) == image_format
  pixels = np.random.default_rng(4).integers(0, 256, (20, 16, 3), np.uint8)
  Image.fromarray(pixels).save(tmp_path / "photo.png")
  np.testing.assert_array_equal(image_format.read(tmp_path / "photo.png"),
                                transform.evaluate(pixels))


# -- saving and loading --------------------------------------------------------


def test_save_load_round_trip_is_identical(index, saved, trained):
  _, dataset, _ = trained
  loaded = Index.load(saved)
  queries = dataset.test.images[:20]
  np.testing.assert_array_equal(loaded.embed(queries), index.embed(queries))
  want, got = index.search(queries, 5), loaded.search(queries, 5)
  for name in ("indices", "distances", "labels"):
    np.testing.assert_array_equal(getattr(got, name), getattr(want, name))
  np.testing.assert_array_equal(loaded.classify(queries),
                                index.classify(queries))
  np.testing.assert_array_equal(loaded.log_weights, index.log_weights)
  for name in ("sigma", "geometry", "num_classes", "class_names", "sources",
               "classifier_k", "backend"):
    assert getattr(loaded, name) == getattr(index, name), name
  # Sources of a loaded index resolve through the run's dataset.
  np.testing.assert_array_equal(loaded.source_images([0, 5]),
                                dataset.train.images[[0, 5]])
  meta = json.loads((saved / "index.json").read_text())
  assert meta["format"] == "nngk-jax-index" and meta["network"]["config"]
  with np.load(saved / "arrays.npz", allow_pickle=False) as arrays:
    assert sorted(arrays.files) == ["embeddings", "labels", "log_weights"]


def test_index_without_network_saves_and_loads(tmp_path):
  rng = np.random.default_rng(3)
  index = Index(rng.normal(size=(10, 3)), rng.integers(0, 2, 10), sigma=1.0,
                geometry="cosine", class_names=["a", "b"])
  loaded = Index.load(index.save(tmp_path / "bare"))
  assert loaded.embedder is None and loaded.log_weights is None
  query = rng.normal(size=(2, 3))
  np.testing.assert_array_equal(loaded.search_embeddings(query, 3).indices,
                                index.search_embeddings(query, 3).indices)
  with pytest.raises(ValueError, match="has no network"):
    loaded.search(np.zeros((1, 8, 8, 1)), 1)


def _rewrite_json(directory, **changes):
  meta = json.loads((directory / "index.json").read_text())
  meta.update(changes)
  (directory / "index.json").write_text(json.dumps(meta))


def _drop_json_entry(directory, name):
  meta = json.loads((directory / "index.json").read_text())
  del meta[name]
  (directory / "index.json").write_text(json.dumps(meta))


def _flip_byte(path):
  payload = bytearray(path.read_bytes())
  payload[len(payload) // 2] ^= 0xFF
  path.write_bytes(bytes(payload))


def _garbage_npz_with_its_checksum(directory):
  (directory / "arrays.npz").write_bytes(b"PK\x03\x04 truncated")
  meta = json.loads((directory / "index.json").read_text())
  meta["files"]["arrays.npz"] = hashlib.sha256(
      b"PK\x03\x04 truncated").hexdigest()
  (directory / "index.json").write_text(json.dumps(meta))


@pytest.mark.parametrize("damage, error, match", [
    (lambda d: (d / "index.json").write_text("{not json"),
     IndexFormatError, r"index.json is damaged: not valid JSON"),
    (lambda d: _rewrite_json(d, format="something-else"),
     IndexFormatError, r"is not an nngk-jax index .*'something-else'"),
    (lambda d: _rewrite_json(d, version=99),
     IndexFormatError, r"index.json has format version 99; this nngk-jax reads version 1"),
    (lambda d: _flip_byte(d / "arrays.npz"),
     IndexFormatError, r"arrays.npz is damaged: its SHA-256 differs"),
    (lambda d: _flip_byte(d / "network.msgpack"),
     IndexFormatError, r"network.msgpack is damaged: its SHA-256 differs"),
    (lambda d: (d / "network.msgpack").unlink(),
     IndexFormatError, r"incomplete: network.msgpack is missing"),
    (_garbage_npz_with_its_checksum,
     IndexFormatError, r"arrays.npz is damaged: not a readable .npz"),
    (lambda d: _rewrite_json(d, num_items=3),
     IndexFormatError, r"embeddings should be \[3, 8\]"),
    (lambda d: _drop_json_entry(d, "dim"),
     IndexFormatError, r"index.json is damaged: no 'dim' entry"),
    (lambda d: shutil.rmtree(d),
     FileNotFoundError, r"no index at .* \(no index.json\)"),
])
def test_damaged_index_is_a_clear_error(saved, tmp_path, damage, error, match):
  copy = pathlib.Path(shutil.copytree(saved, tmp_path / "copy"))
  damage(copy)
  with pytest.raises(error, match=match):
    Index.load(copy)


def test_network_of_another_shape_is_refused(index, tmp_path):
  directory = index.save(tmp_path / "index")
  variables = flax.serialization.msgpack_restore(
      (directory / "network.msgpack").read_bytes())
  variables["params"]["embedding"]["kernel"] = np.zeros((32, 3), np.float32)
  (directory / "network.msgpack").write_bytes(
      flax.serialization.msgpack_serialize(variables))
  _rewrite_json(directory, files={
      "arrays.npz": json.loads((directory / "index.json").read_text())[
          "files"]["arrays.npz"],
      "network.msgpack": hashlib.sha256(
          (directory / "network.msgpack").read_bytes()).hexdigest()})
  with pytest.raises(IndexFormatError,
                     match=r"embedding/kernel has shape \(32, 3\).*\(32, 8\)"):
    Index.load(directory)


# -- bad input -----------------------------------------------------------------


@pytest.mark.parametrize("images, match", [
    (np.zeros((2, 8, 8, 3), np.float32),
     r"images must be \[num_images, 8, 8, 1\] .* got shape \(2, 8, 8, 3\)"),
    (np.zeros((8, 8, 1), np.float32), r"pass images\[None\]"),
    (np.zeros((0, 8, 8, 1), np.float32), r"images is empty"),
    (np.zeros((2, 8, 8, 1), np.uint8), r"float pixels .* got dtype uint8"),
    (np.full((2, 8, 8, 1), np.nan, np.float32),
     r"2 of 2 images are NaN or infinite"),
])
def test_bad_images_are_clear_errors(index, images, match):
  with pytest.raises(ValueError, match=match):
    index.search(images, 3)


def test_bad_k_and_queries_are_clear_errors(index):
  query = np.zeros((1, 8), np.float32)
  with pytest.raises(ValueError, match=r"k must be a positive integer, got 0"):
    index.search_embeddings(query, 0)
  with pytest.raises(ValueError, match=r"k=902 neighbours asked of a gallery "
                     r"of 901 items; use k <= 901"):
    index.search_embeddings(query, 902)
  with pytest.raises(ValueError, match=r"query embeddings must be \[Q, 8\]"):
    index.search_embeddings(np.zeros((1, 3)), 1)
  with pytest.raises(ValueError, match=r"1 of 2 query embeddings are NaN"):
    index.search_embeddings(np.array([[0.0] * 8, [np.nan] * 8]), 1)
  with pytest.raises(ValueError, match=r"unknown search backend 'faiss'"):
    index.search_embeddings(query, 1, backend="faiss")


def test_non_finite_network_output_is_named(run, monkeypatch):
  index = Index.from_run(run)
  monkeypatch.setattr(index.embedder, "_apply",
                      lambda variables, images: jnp.full(
                          (images.shape[0], 8), jnp.nan))
  with pytest.raises(ValueError, match=r"2 of 2 embeddings are NaN or "
                     r"infinite from the network"):
    index.search(np.zeros((2, 8, 8, 1), np.float32), 1)


def test_bad_galleries_are_clear_errors(run):
  empty = Index(np.zeros((0, 4)), np.zeros(0, int), sigma=1.0)
  with pytest.raises(ValueError, match=r"gallery is empty: add\(\) items"):
    empty.search_embeddings(np.zeros((1, 4)), 1)
  empty.add_embeddings(np.ones((2, 4)), [0, 1])
  assert empty.search_embeddings(np.ones((1, 4)), 2).labels.shape == (1, 2)
  with pytest.raises(ValueError, match=r"1 of 2 embeddings are NaN"):
    Index(np.array([[0.0], [np.nan]]), [0, 1], sigma=1.0)
  with pytest.raises(ValueError, match=r"labels must be \[2\]"):
    Index(np.zeros((2, 1)), [0], sigma=1.0)
  with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\)"):
    Index(np.zeros((2, 1)), [0, 2], sigma=1.0, num_classes=2)
  with pytest.raises(ValueError, match=r"geometry must be one of"):
    Index(np.zeros((2, 1)), [0, 1], sigma=1.0, geometry="hyperbolic")
  with pytest.raises(ValueError, match=r"give one gallery, got images and "
                     r"folder"):
    Index.from_run(run, images=np.zeros((1, 8, 8, 1)), labels=[0],
                   folder="somewhere")
  with pytest.raises(ValueError, match=r"give the images too"):
    Index.from_run(run, labels=[0])
  with pytest.raises(ValueError, match=r"centres must be 'embed' or 'bank'"):
    Index.from_run(run, centres="trained")


# -- the command line ----------------------------------------------------------


_RANK_LINE = re.compile(r"^\s+(\d+)\s+(\d+)\s+(\d+)\s+(\S+)\s+(\S+)$")


def test_cli_prints_k_neighbours_and_writes_a_grid(run, index, trained,
                                                   tmp_path, capsys):
  _, dataset, _ = trained
  queries = _digit_pngs(tmp_path / "queries", dataset.test.images[:2])
  out = tmp_path / "grid.png"
  code = search.main(["--run", str(run), "--query", str(queries[0]),
                      "--query", str(queries[1]), "--k", "4", "--out",
                      str(out), "--save", str(tmp_path / "saved")])
  printed = capsys.readouterr()
  assert code == 0, printed.err
  assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  with Image.open(out) as grid:
    assert grid.size[0] > grid.size[1]  # 2 rows of 1 + 4 images
  rows = [_RANK_LINE.match(line) for line in printed.out.splitlines()]
  rows = [m for m in rows if m]
  assert [int(m.group(1)) for m in rows] == [1, 2, 3, 4] * 2
  want = index.search(index.read_images(queries), 4)
  assert [int(m.group(2)) for m in rows] == want.indices.ravel().tolist()
  assert [int(m.group(3)) for m in rows] == want.labels.ravel().tolist()
  votes = re.findall(r"kernel vote class '(\d)' \(label (\d)",
                     printed.out)
  predicted = index.classify(index.read_images(queries))
  assert [int(label) for _, label in votes] == predicted.tolist()
  # The saved index answers the same from disk.
  code = search.main(["--index", str(tmp_path / "saved"), "--query",
                      str(queries[0]), "--k", "4"])
  again = capsys.readouterr()
  assert code == 0, again.err
  assert again.out.splitlines()[:6] == printed.out.splitlines()[:6]
  # --compress searches an OPQ copy of the gallery (8 bytes of the 8-d
  # float32 rows' 32).
  code = search.main(["--index", str(tmp_path / "saved"), "--query",
                      str(queries[0]), "--k", "4", "--compress", "8"])
  packed = capsys.readouterr()
  assert code == 0, packed.err
  assert "compressed to 8 bytes per item" in packed.out
  assert len([line for line in packed.out.splitlines()
              if _RANK_LINE.match(line)]) == 4


@pytest.mark.parametrize("args, match", [
    (["--query", "missing.png"], r"missing.png"),
    (["--query", "QUERY", "--k", "0"], r"k must be a positive integer"),
    (["--query", "QUERY", "--k", "5000"], r"k=5000 neighbours asked"),
    (["--query", "QUERY", "--centres", "bank", "--folder", "x"],
     r"give one gallery"),
])
def test_cli_bad_input_is_one_line_and_exit_2(run, trained, tmp_path, capsys,
                                              args, match):
  _, dataset, _ = trained
  query = _digit_pngs(tmp_path, dataset.test.images[:1])[0]
  args = [str(query) if a == "QUERY" else a for a in args]
  code = search.main(["--run", str(run), *args])
  err = capsys.readouterr().err
  assert code == 2
  assert err.count("\n") == 1 and err.startswith("error: ")
  assert re.search(match, err), err


def test_cli_needs_run_or_index(capsys):
  assert search.main(["--query", "q.png"]) == 2
  assert "give --run" in capsys.readouterr().err


# -- the compressed gallery ----------------------------------------------------


@pytest.fixture(scope="module")
def compressed(index):
  """The run's index with its 8-d gallery in 4 bytes per item."""
  return index.compress(4, opq_iterations=3)


def test_compressed_search_is_exact_search_over_the_decoded_gallery(
    index, compressed, trained):
  _, dataset, _ = trained
  queries = index.embed(dataset.test.images[:15])
  decoded = compressed.embeddings
  assert decoded.shape == index.embeddings.shape
  assert not np.array_equal(decoded, index.embeddings)  # really compressed
  got = compressed.search_embeddings(queries, 6)
  want_idx, want_d2 = _brute_force(decoded, index._in_geometry(
      queries, "q"), 6, "euclidean")
  np.testing.assert_allclose(got.distances, want_d2, rtol=1e-4, atol=1e-5)
  # Rank ties aside, the same items.
  assert np.mean(got.indices == want_idx) > 0.95
  # Classification: the kernel vote over the decoded gallery, same weights.
  reference = Index(decoded, index.labels, sigma=index.sigma,
                    log_weights=index.log_weights,
                    num_classes=index.num_classes,
                    classifier_k=index.classifier_k)
  np.testing.assert_array_equal(compressed.classify_embeddings(queries),
                                reference.classify_embeddings(queries))
  np.testing.assert_array_equal(compressed.log_weights, index.log_weights)
  assert compressed.compressed and not index.compressed
  codes = compressed._store.bank.codes.nbytes
  assert codes == 4 * len(index) and compressed.nbytes < index.nbytes


def test_compressed_index_saves_loads_and_refuses_to_grow(compressed, trained,
                                                          tmp_path):
  _, dataset, _ = trained
  loaded = Index.load(compressed.save(tmp_path / "compressed"))
  assert loaded.compressed
  queries = dataset.test.images[:10]
  want, got = compressed.search(queries, 4), loaded.search(queries, 4)
  np.testing.assert_array_equal(got.indices, want.indices)
  np.testing.assert_array_equal(got.distances, want.distances)
  assert loaded.sources == compressed.sources
  with pytest.raises(ValueError, match="read-only"):
    loaded.add(queries[:1], [0])
  with pytest.raises(ValueError, match="already compressed"):
    loaded.compress(4)
  with np.load(tmp_path / "compressed" / "compressed_bank.npz",
               allow_pickle=False) as arrays:
    assert "embeddings" not in arrays.files


def test_bank_compress_keeps_labels_and_learned_weights(trained):
  config, dataset, state = trained
  from nngk_jax import objectives as objectiveslib
  bank = objectiveslib.get_objective(config.objective).make_bank(
      config, dataset.train.labels, config.model.embed_dim)
  codes = bank.compress(state.bank, state.params, bytes_per_centre=2,
                        opq=False)
  np.testing.assert_array_equal(codes.labels, dataset.train.labels)
  np.testing.assert_array_equal(codes.log_weights,
                                bank.log_weights(state.params))
  error = np.linalg.norm(codes.decode() - np.asarray(state.bank.centres))
  assert error < np.linalg.norm(np.asarray(state.bank.centres))

"""Tests for nngk_jax.compress against plain loop-based numpy references."""

from __future__ import annotations

import json

import faiss
import jax
import numpy as np
import pytest

from nngk_jax import compress as compresslib
from nngk_jax.evaluation import kernel_classify


def _low_rank(num, dim, rank, seed):
  """Correlated data: a random rank-``rank`` map plus a little noise."""
  rng = np.random.default_rng(seed)
  mixing = rng.normal(size=(rank, dim)) * np.linspace(3.0, 0.3, rank)[:, None]
  data = rng.normal(size=(num, rank)) @ mixing
  return (data + 0.05 * rng.normal(size=(num, dim))).astype(np.float32)


def _clusters(num_per_class, num_classes, dim, seed, spread=0.3):
  """Well separated Gaussian clusters, one per class."""
  rng = np.random.default_rng(seed)
  means = rng.normal(size=(num_classes, dim)) * 3.0
  labels = np.repeat(np.arange(num_classes), num_per_class)
  points = means[labels] + spread * rng.normal(size=(len(labels), dim))
  return points.astype(np.float32), labels


@pytest.fixture(scope="module")
def bank():
  """OPQ, 8 bits, M=4 over 16-D data, with log-weights."""
  data = _low_rank(600, 16, 6, seed=0)
  labels = np.random.default_rng(1).integers(0, 3, 600)
  log_weights = np.random.default_rng(2).normal(size=600).astype(np.float32)
  return compresslib.compress(data, labels, bytes_per_centre=4,
                              log_weights=log_weights, seed=0,
                              opq_iterations=5)


@pytest.fixture(scope="module")
def bank4():
  """OPQ, 4 bits (packed codes), M=8 over 16-D data."""
  data = _low_rank(300, 16, 6, seed=3)
  return compresslib.compress(data, np.arange(300) % 5, bytes_per_centre=4,
                              nbits=4, seed=0)


def _queries(num, dim, seed):
  return np.random.default_rng(seed).normal(size=(num, dim)).astype(np.float32)


# ------------------------------------------------------------ ADC distances


def _reference_adc(queries, rotation, codebooks, codes):
  """ADC from its definition, by loops: sum over m of sub-vector distances."""
  num_subquantizers, _, sub_dim = codebooks.shape
  rotated = queries.astype(np.float64) @ rotation.astype(np.float64).T
  out = np.zeros((len(queries), len(codes)))
  for q, query in enumerate(rotated):
    for n, code in enumerate(codes):
      for m in range(num_subquantizers):
        part = query[m * sub_dim:(m + 1) * sub_dim]
        out[q, n] += np.sum((part - codebooks[m, code[m]]) ** 2)
  return out


def test_adc_matches_loop_reference_and_decoded_distances(bank):
  queries = _queries(5, bank.dim, seed=4)
  adc = np.asarray(bank.distances(queries))
  want = _reference_adc(queries, bank.rotation, bank.codebooks, bank.codes)
  assert adc.shape == (5, bank.num_centres) and adc.dtype == np.float32
  np.testing.assert_allclose(adc, want, rtol=1e-5, atol=1e-4)
  # ... which is the squared distance to each decoded centre (R orthogonal).
  decoded = bank.decode().astype(np.float64)
  direct = np.array([[np.sum((q - c) ** 2) for c in decoded]
                     for q in queries.astype(np.float64)])
  np.testing.assert_allclose(adc, direct, rtol=1e-4, atol=1e-3)


def test_adc_is_jittable_and_equals_faiss_distances(bank):
  queries = _queries(6, bank.dim, seed=5)
  adc = np.asarray(jax.jit(compresslib.adc_squared_distances)(
      queries, bank.rotation, bank.codebooks, bank.codes))
  squared, indices = bank.to_faiss().search(queries, bank.num_centres)
  faiss_full = np.empty_like(adc)
  np.put_along_axis(faiss_full, indices, squared, axis=1)
  np.testing.assert_allclose(adc, faiss_full, rtol=1e-5, atol=1e-4)


def test_decode_equals_faiss_sa_decode(bank, bank4):
  for compressed in (bank, bank4):
    packed = compresslib._pack_codes(compressed.codes, compressed.nbits)
    want = compressed.to_faiss().sa_decode(packed)
    np.testing.assert_allclose(compressed.decode(), want, atol=1e-5)
    np.testing.assert_array_equal(compressed.decode([[3, 1]])[0],
                                  compressed.decode()[[3, 1]])


def test_rotation_convention_matches_faiss_apply_py():
  data = _low_rank(400, 8, 3, seed=6)
  transform = faiss.OPQMatrix(8, 2)
  transform.niter = 2
  transform.train(data)
  rotation = compresslib._rotation_matrix(transform)
  np.testing.assert_allclose(data @ rotation.T, transform.apply_py(data),
                             rtol=1e-5, atol=1e-5)
  assert not np.allclose(data @ rotation, transform.apply_py(data), atol=1e-3)


def test_codes_are_the_nearest_codewords_of_the_rotated_centres():
  data = _low_rank(400, 8, 3, seed=7)
  compressed = compresslib.compress(data, np.zeros(400, int),
                                    bytes_per_centre=2, seed=1,
                                    opq_iterations=3)
  rotated = data.astype(np.float64) @ compressed.rotation.T
  for m in range(2):
    sub = rotated[:, 4 * m:4 * (m + 1)]
    nearest = [np.argmin([np.sum((row - word) ** 2)
                          for word in compressed.codebooks[m]]) for row in sub]
    np.testing.assert_array_equal(compressed.codes[:, m], nearest)


def test_pack_unpack_round_trip_in_faiss_layout(bank4):
  codes = np.random.default_rng(8).integers(0, 16, (20, 6)).astype(np.uint8)
  packed = compresslib._pack_codes(codes, 4)
  assert packed.shape == (20, 3)
  np.testing.assert_array_equal(packed[:, 0], codes[:, 0] | codes[:, 1] << 4)
  np.testing.assert_array_equal(compresslib._unpack_codes(packed, 6, 4), codes)
  codes3 = np.random.default_rng(9).integers(0, 8, (20, 5)).astype(np.uint8)
  np.testing.assert_array_equal(
      compresslib._unpack_codes(compresslib._pack_codes(codes3, 3), 5, 3),
      codes3)


# ------------------------------------------------------------------ search


@pytest.mark.parametrize("which", ["bank", "bank4"])
def test_search_jax_matches_faiss_and_a_full_sort(which, request):
  compressed = request.getfixturevalue(which)
  queries = _queries(11, compressed.dim, seed=10)
  full = np.asarray(compressed.distances(queries))
  want_idx = np.argsort(full, axis=1, kind="stable")[:, :7]
  for chunk_size in (None, 4):  # 4: three chunks, the last one padded
    idx, squared = compressed.search(queries, 7, chunk_size=chunk_size)
    assert idx.dtype == np.int32 and squared.dtype == np.float32
    np.testing.assert_array_equal(idx, want_idx)
    np.testing.assert_allclose(squared, np.take_along_axis(full, idx, 1),
                               rtol=1e-6)
  faiss_idx, faiss_squared = compressed.search(queries, 7, backend="faiss")
  assert faiss_idx.dtype == np.int32 and faiss_squared.dtype == np.float32
  np.testing.assert_allclose(faiss_squared, squared, rtol=1e-5, atol=1e-4)
  # Ties aside, the same neighbours: each of faiss's has its ADC distance.
  np.testing.assert_allclose(np.take_along_axis(full, faiss_idx, 1),
                             faiss_squared, rtol=1e-5, atol=1e-4)
  assert np.mean(faiss_idx == idx) > 0.9


def test_search_errors(bank):
  queries = _queries(2, bank.dim, seed=11)
  with pytest.raises(ValueError, match="k=601 neighbours"):
    bank.search(queries, 601)
  with pytest.raises(ValueError, match="unknown search backend"):
    bank.search(queries, 1, backend="annoy")
  with pytest.raises(ValueError, match=r"queries must be \[num_queries, 16\]"):
    bank.search(queries[:, :3], 1)
  queries[1, 0] = np.nan
  with pytest.raises(ValueError, match="1 of 2 queries are NaN"):
    bank.search(queries, 1)


# ---------------------------------------------------------------- training


def test_rotation_is_orthogonal_and_identity_without_opq():
  data = _low_rank(400, 16, 4, seed=12)
  with_opq = compresslib.compress(data, np.zeros(400, int), bytes_per_centre=4,
                                  opq_iterations=3)
  without = compresslib.compress(data, np.zeros(400, int), bytes_per_centre=4,
                                 opq=False)
  rotation = with_opq.rotation
  assert rotation.dtype == np.float32 and with_opq.opq
  np.testing.assert_allclose(rotation @ rotation.T, np.eye(16), atol=1e-5)
  assert not np.allclose(rotation, np.eye(16), atol=0.1)
  np.testing.assert_array_equal(without.rotation, np.eye(16))
  assert not without.opq


def _relative_error(compressed, data):
  residual = np.sum((compressed.decode() - data) ** 2)
  return residual / np.sum((data - data.mean(0)) ** 2)


def test_opq_and_more_bytes_reconstruct_better():
  # 4-bit codes: 16 codewords per sub-space, few enough that 1000 training
  # points do not simply memorise the data.
  data = _low_rank(1000, 32, 8, seed=13)
  labels = np.zeros(1000, int)
  error = {
      (opq, size): _relative_error(
          compresslib.compress(data, labels, bytes_per_centre=size, nbits=4,
                               opq=opq, opq_iterations=5), data)
      for opq, size in [(True, 4), (False, 4), (False, 2), (False, 8)]}
  assert error[True, 4] < 0.6 * error[False, 4]
  assert error[False, 8] < error[False, 4] < error[False, 2]
  assert error[False, 8] < 0.5 * error[False, 2]


def test_compress_is_reproducible_and_seeded():
  data = _low_rank(400, 8, 3, seed=14)
  first, again, other = (
      compresslib.compress(data, np.zeros(400, int), bytes_per_centre=2,
                           seed=seed, opq_iterations=3) for seed in (3, 3, 4))
  for name in ("rotation", "codebooks", "codes"):
    np.testing.assert_array_equal(getattr(first, name), getattr(again, name))
  assert not np.array_equal(first.rotation, other.rotation)


def test_max_training_points_trains_on_a_subsample_and_encodes_all():
  data = _low_rank(800, 8, 3, seed=15)
  compressed = compresslib.compress(data, np.arange(800), bytes_per_centre=2,
                                    max_training_points=300, opq=False)
  assert compressed.codes.shape == (800, 2)
  assert _relative_error(compressed, data) < 0.2


@pytest.mark.parametrize("kwargs, match", [
    ({"bytes_per_centre": 3},
     r"M=3 sub-quantizers, which does not divide D=16; valid budgets: "
     r"\[1, 2, 4, 8, 16\]"),
    ({"nbits": 9}, "nbits must be between 1 and 8"),
    ({"nbits": 3, "bytes_per_centre": 4}, "not a multiple of nbits=3"),
    ({"bytes_per_centre": 0}, "bytes_per_centre must be a positive integer"),
    ({"max_training_points": 100}, "below the 256 codewords"),
    ({"opq_iterations": 0}, "opq_iterations must be a positive integer"),
    ({"log_weights": np.zeros(3)}, "log_weights has 3 entries for 300"),
])
def test_compress_rejects_bad_settings(kwargs, match):
  data = _low_rank(300, 16, 4, seed=16)
  with pytest.raises(ValueError, match=match):
    compresslib.compress(data, np.zeros(300, int), **kwargs)


def test_compress_rejects_bad_centres_and_labels():
  data = _low_rank(300, 16, 4, seed=17)
  with pytest.raises(ValueError, match="at least 2\\*\\*nbits = 256 centres"):
    compresslib.compress(data[:255], np.zeros(255, int))
  compresslib.compress(data[:40], np.zeros(40, int), nbits=5,
                       bytes_per_centre=5, opq=False)  # 32 <= 40: fine
  bad = data.copy()
  bad[[7, 9], 3] = [np.nan, np.inf]
  with pytest.raises(ValueError, match="2 of 300 centres are NaN or infinite "
                                       r"\(first bad row: 7\)"):
    compresslib.compress(bad, np.zeros(300, int))
  with pytest.raises(ValueError, match="labels has 299 entries for 300"):
    compresslib.compress(data, np.zeros(299, int))
  with pytest.raises(ValueError, match="labels must have a int dtype"):
    compresslib.compress(data, np.zeros(300))


def test_constructor_checks_the_arrays(bank):
  fields = dict(rotation=bank.rotation, codebooks=bank.codebooks,
                codes=bank.codes, labels=bank.labels)
  with pytest.raises(ValueError, match=r"codes must lie in \[0, 16\)"):
    compresslib.CompressedBank(**{**fields, "codebooks": bank.codebooks[:, :16]})
  with pytest.raises(ValueError, match="codes have 3 columns for 4"):
    compresslib.CompressedBank(**{**fields, "codes": bank.codes[:, :3]})
  with pytest.raises(ValueError, match="labels has 5 entries"):
    compresslib.CompressedBank(**{**fields, "labels": bank.labels[:5]})
  with pytest.raises(ValueError, match="2\\*\\*nbits codewords"):
    compresslib.CompressedBank(**{**fields, "codebooks": bank.codebooks[:, :100]})
  with pytest.raises(ValueError, match="rotation must be orthogonal"):
    compresslib.CompressedBank(**{**fields, "rotation": 2 * bank.rotation})


# ------------------------------------------------------------------- sizes


def test_bytes_at_cub_scale():
  num_centres, dim = 5994, 512  # CUB-200-2011's training split
  cub = compresslib.CompressedBank(
      rotation=np.eye(dim, dtype=np.float32),
      codebooks=np.zeros((16, 256, dim // 16), np.float32),
      codes=np.zeros((num_centres, 16), np.uint8),
      labels=np.zeros(num_centres, np.int32))
  assert cub.bytes_per_centre == 16
  assert cub.codes.nbytes == num_centres * cub.bytes_per_centre == 95_904
  assert cub.nbytes == 95_904 + 4 * dim * dim + 4 * 256 * dim + 4 * num_centres
  assert num_centres * dim * 4 == 12_275_712  # the float32 bank


def test_bytes_of_packed_codes(bank, bank4):
  assert (bank4.num_subquantizers, bank4.nbits, bank4.bytes_per_centre) == (
      8, 4, 4)
  assert bank4.nbytes == (300 * 4 + bank4.rotation.nbytes
                          + bank4.codebooks.nbytes + 300 * 4)
  assert bank.nbytes == (600 * 4 + 16 * 16 * 4 + 256 * 16 * 4 + 600 * 4
                         + 600 * 4)  # log-weights counted


# ---------------------------------------------------------------- classify


def _reference_vote(distances, labels, log_weights, k, sigma, num_classes):
  """The NNGK vote over the k smallest ADC distances, by loops."""
  predicted = []
  for row in distances.astype(np.float64):
    nearest = np.argsort(row, kind="stable")[:k]
    scores = np.full(num_classes, -np.inf)
    for j in nearest:
      log_kernel = log_weights[j] - row[j] / (2 * sigma**2)
      scores[labels[j]] = np.logaddexp(scores[labels[j]], log_kernel)
    predicted.append(int(np.argmax(scores)))
  return np.array(predicted)


def test_classify_matches_loop_reference(bank, monkeypatch):
  queries = _queries(40, bank.dim, seed=18) * 2.0
  distances = np.asarray(bank.distances(queries))
  predicted = bank.classify(queries, num_classes=3, k=9, sigma=1.5)
  want = _reference_vote(distances, bank.labels, bank.log_weights, 9, 1.5, 3)
  assert predicted.dtype == np.int32
  np.testing.assert_array_equal(predicted, want)
  # In chunks of 7 queries, the last one padded: the same votes.
  monkeypatch.setattr(compresslib, "_MAX_DECODED", 7 * 9 * bank.dim)
  np.testing.assert_array_equal(
      bank.classify(queries, num_classes=3, k=9, sigma=1.5), want)
  monkeypatch.undo()
  # The log-weights matter here, so the comparison above can fail.
  unweighted = _reference_vote(distances, bank.labels, np.zeros(600), 9, 1.5, 3)
  assert np.any(unweighted != want)
  np.testing.assert_array_equal(
      bank.classify(queries, num_classes=3, k=9, sigma=1.5, backend="faiss"),
      want)
  with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\)"):
    bank.classify(queries, num_classes=2, k=9, sigma=1.5)
  with pytest.raises(ValueError, match="sigma must be a positive scalar"):
    bank.classify(queries, num_classes=3, k=9, sigma=0.0)


def test_compressed_classify_agrees_with_uncompressed_on_clusters():
  centres, labels = _clusters(100, 8, 32, seed=19)
  queries, query_labels = _clusters(25, 8, 32, seed=19)
  queries = queries + 0.3 * np.random.default_rng(20).normal(
      size=queries.shape).astype(np.float32)
  compressed = compresslib.compress(centres, labels, bytes_per_centre=4,
                                    opq_iterations=3)
  compressed_pred = compressed.classify(queries, num_classes=8, k=10, sigma=1.0)
  exact_pred = kernel_classify(centres, labels, queries, num_classes=8, k=10,
                               sigma=1.0)
  assert np.mean(compressed_pred == exact_pred) >= 0.95
  assert np.mean(compressed_pred == query_labels) >= 0.95


# --------------------------------------------------------------- save/load


@pytest.mark.parametrize("which", ["bank", "bank4"])
def test_save_load_round_trip_is_exact(which, request, tmp_path):
  compressed = request.getfixturevalue(which)
  compressed.save(tmp_path / "saved")
  loaded = compresslib.CompressedBank.load(tmp_path / "saved")
  for name in ("rotation", "codebooks", "codes", "labels"):
    assert np.array_equal(getattr(loaded, name), getattr(compressed, name))
    assert getattr(loaded, name).dtype == getattr(compressed, name).dtype
  if compressed.log_weights is None:
    assert loaded.log_weights is None
  else:
    assert np.array_equal(loaded.log_weights, compressed.log_weights)
  metadata = json.loads((tmp_path / "saved" / "compressed_bank.json")
                        .read_text())
  assert metadata["nbits"] == compressed.nbits and metadata["opq"] is True
  with np.load(tmp_path / "saved" / "compressed_bank.npz",
               allow_pickle=False) as npz:  # plain arrays, no pickle
    assert npz["codes"].shape == (compressed.num_centres,
                                  compressed.bytes_per_centre)


def test_load_refuses_missing_corrupt_and_mismatching_files(bank, bank4,
                                                            tmp_path):
  load = compresslib.CompressedBank.load
  with pytest.raises(FileNotFoundError, match="compressed_bank.json is missing"):
    load(tmp_path / "nowhere")
  one, other = bank.save(tmp_path / "one"), bank4.save(tmp_path / "other")
  arrays = one / compresslib.ARRAYS_FILE
  metadata = one / compresslib.METADATA_FILE
  good_arrays, good_metadata = arrays.read_bytes(), metadata.read_text()

  payload = bytearray(good_arrays)
  payload[len(payload) // 2] ^= 0xFF
  arrays.write_bytes(bytes(payload))
  with pytest.raises(compresslib.CompressedBankFileError, match="checksum"):
    load(one)
  arrays.write_bytes((other / compresslib.ARRAYS_FILE).read_bytes())
  with pytest.raises(compresslib.CompressedBankFileError, match="another save"):
    load(one)
  arrays.unlink()
  with pytest.raises(FileNotFoundError, match="compressed_bank.npz is missing"):
    load(one)
  arrays.write_bytes(good_arrays)

  metadata.write_text(good_metadata[:40])
  with pytest.raises(compresslib.CompressedBankFileError, match="not valid JSON"):
    load(one)
  fields = json.loads(good_metadata)
  for change, match in [({"version": 99}, "format version 99"),
                        ({"format": "x"}, "not a compressed bank"),
                        ({"num_centres": 7}, r"codes has shape \(600, 4\)")]:
    metadata.write_text(json.dumps({**fields, **change}))
    with pytest.raises(compresslib.CompressedBankFileError, match=match):
      load(one)
  metadata.write_text(good_metadata)
  assert np.array_equal(load(one).codes, bank.codes)

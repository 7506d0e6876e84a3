"""Tests for nngk_jax.knn against a plain loop-based numpy reference."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from nngk_jax import knn


def _reference_knn(queries, data, k, query_ids=None):
  """The k nearest rows per query, by a loop; ties to the lower index."""
  indices, squared = [], []
  for q, query in enumerate(queries.astype(np.float64)):
    scored = []
    for j, row in enumerate(data.astype(np.float64)):
      if query_ids is not None and j == query_ids[q]:
        continue
      scored.append((float(np.sum((query - row) ** 2)), j))
    scored.sort()
    indices.append([j for _, j in scored[:k]])
    squared.append([d for d, _ in scored[:k]])
  return np.array(indices), np.array(squared)


@pytest.mark.parametrize("self_excluded", [False, True])
def test_exact_knn_matches_loop_reference(self_excluded):
  rng = np.random.default_rng(0)
  data = rng.normal(size=(60, 5)).astype(np.float32)
  queries = data if self_excluded else rng.normal(size=(23, 5)).astype(np.float32)
  query_ids = np.arange(60) if self_excluded else None
  k = 59 if self_excluded else 60  # Every available neighbour.
  idx, d2 = knn.exact_knn(queries, data, k=k, query_ids=query_ids)
  want_idx, want_d2 = _reference_knn(queries, data, k, query_ids)
  assert idx.dtype == np.int32 and d2.dtype == np.float32
  np.testing.assert_array_equal(idx, want_idx)
  np.testing.assert_allclose(d2, want_d2, rtol=1e-4, atol=1e-4)


def test_chunking_gives_identical_results():
  rng = np.random.default_rng(1)
  data = rng.normal(size=(300, 8)).astype(np.float32)
  whole = knn.exact_knn(data, data, k=40, query_ids=np.arange(300))
  for chunk_size in (1, 64, 299, 1000):
    chunked = knn.exact_knn(data, data, k=40, query_ids=np.arange(300),
                            chunk_size=chunk_size)
    np.testing.assert_array_equal(chunked[0], whole[0])
    # The matmul's blocking depends on the chunk shape: last-bit differences.
    np.testing.assert_allclose(chunked[1], whole[1], rtol=1e-5, atol=1e-6)


_DEVICES_CHILD = textwrap.dedent(r"""
    import sys
    import jax, numpy as np
    from nngk_jax import knn
    assert len(jax.local_devices()) == 3, jax.devices()
    data = np.random.default_rng(2).normal(size=(300, 8)).astype(np.float32)
    # 7 chunks of 45 (the last padded) go round the 3 devices.
    idx, d2 = knn.exact_knn(data, data, k=40, query_ids=np.arange(300),
                            chunk_size=45)
    np.save(sys.argv[1], np.concatenate([idx, d2.view(np.int32)], axis=1))
    # Data above the size limit stay on one device: the same lists again.
    knn._SPREAD_MAX_BYTES = data.nbytes - 1
    one = knn.exact_knn(data, data, k=40, query_ids=np.arange(300),
                        chunk_size=45)
    assert (one[0] == idx).all() and (one[1] == d2).all()
""")


def test_chunks_spread_over_devices_give_the_same_lists(tmp_path):
  """Three CPU devices in a child process, each a third of the chunks:
  the lists of one device, bit for bit (each chunk runs the same program)."""
  data = np.random.default_rng(2).normal(size=(300, 8)).astype(np.float32)
  idx, d2 = knn.exact_knn(data, data, k=40, query_ids=np.arange(300),
                          chunk_size=45)
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  proc = subprocess.run(
      [sys.executable, "-c", _DEVICES_CHILD, str(tmp_path / "lists.npy")],
      env=dict(env, JAX_NUM_CPU_DEVICES="3", JAX_PLATFORMS="cpu"),
      capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  got = np.load(tmp_path / "lists.npy")
  np.testing.assert_array_equal(got[:, :40], idx)
  np.testing.assert_array_equal(got[:, 40:].view(np.float32), d2)


def test_ties_go_to_the_lower_index():
  data = np.array([[1.], [-1.], [1.], [-1.], [0.]], np.float32)
  idx, d2 = knn.exact_knn(np.zeros((1, 1), np.float32), data, k=5)
  assert idx.tolist() == [[4, 0, 1, 2, 3]]
  assert d2.tolist() == [[0., 1., 1., 1., 1.]]


def test_exact_knn_errors():
  x = np.zeros((4, 2), np.float32)
  with pytest.raises(ValueError, match=r"same D; got \(4, 2\) and \(4, 3\)"):
    knn.exact_knn(x, np.zeros((4, 3)), k=1)
  with pytest.raises(ValueError, match="k=4 neighbours requested but only 3"):
    knn.exact_knn(x, x, k=4, query_ids=np.arange(4))
  with pytest.raises(ValueError, match="k must be a positive integer, got 0"):
    knn.exact_knn(x, x, k=0)
  with pytest.raises(ValueError, match="chunk_size must be a positive integer"):
    knn.exact_knn(x, x, k=1, chunk_size=0)
  with pytest.raises(ValueError, match=r"query_ids must be \[4\], got \(3,\)"):
    knn.exact_knn(x, x, k=1, query_ids=np.arange(3))


# ------------------------------------------------------------ exact_self_knn


@pytest.mark.parametrize("num_points, k, block_size, integer", [
    (60, 59, 16, False),    # every other point; blocks not dividing N
    (70, 5, 7, True),       # ties everywhere
    (300, 4, 128, True),    # the two-level top-k (groups of 16 at k = 4)
    (300, 3, 256, False),   # groups of 32; the last block padded
    (45, 1, None, False),   # one block (all of N)
])
def test_exact_self_knn_matches_loop_reference(num_points, k, block_size,
                                               integer):
  rng = np.random.default_rng(num_points + k)
  if integer:
    points = rng.integers(-2, 3, (num_points, 3)).astype(np.float32)
  else:
    points = rng.normal(size=(num_points, 6)).astype(np.float32)
  idx, d2, ahead = knn.exact_self_knn(points, k=k, block_size=block_size)
  want_idx, want_d2 = _reference_knn(points, points, k, np.arange(num_points))
  assert ahead is None and idx.dtype == np.int32 and d2.dtype == np.float32
  np.testing.assert_array_equal(idx, want_idx)
  np.testing.assert_allclose(d2, want_d2, rtol=1e-4, atol=1e-4)
  # The same answer as the row-by-row search.
  np.testing.assert_array_equal(
      idx,
      knn.exact_knn(points, points, k=k, query_ids=np.arange(num_points))[0])


def test_exact_self_knn_counts_other_codes_ahead():
  # ahead_i: points of another code before (d, p) in (distance, index)
  # order, by a loop over every pair.
  rng = np.random.default_rng(3)
  points = rng.integers(-2, 3, (90, 2)).astype(np.float32)
  codes = rng.integers(0, 4, 90)
  threshold_id = rng.integers(0, 90, 90)
  threshold_d2 = np.sum((points - points[threshold_id]) ** 2, axis=1)
  _, _, ahead = knn.exact_self_knn(
      points, k=2, block_size=32, ahead_of=(codes, threshold_d2, threshold_id))
  for i in range(90):
    want = 0
    for j in range(90):
      d2 = float(np.sum((points[i] - points[j]) ** 2))
      if j != i and codes[j] != codes[i] and (
          (d2, j) < (float(threshold_d2[i]), int(threshold_id[i]))):
        want += 1
    assert ahead[i] == want, i


def test_exact_self_knn_errors():
  points = np.zeros((5, 2), np.float32)
  with pytest.raises(ValueError, match="only 4 others"):
    knn.exact_self_knn(points, k=5)
  with pytest.raises(ValueError, match=r"\[N, D\]"):
    knn.exact_self_knn(np.zeros(5), k=1)
  with pytest.raises(ValueError, match="block_size"):
    knn.exact_self_knn(points, k=1, block_size=0)
  with pytest.raises(ValueError, match="ahead_of"):
    knn.exact_self_knn(points, k=1, ahead_of=(np.zeros(5), np.zeros(4),
                                              np.zeros(5)))

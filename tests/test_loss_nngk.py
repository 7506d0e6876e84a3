"""Tests of the NNGK loss against plain loop-based numpy references."""

import math

import jax
import numpy as np
import pytest
from jax.test_util import check_grads

from nngk_jax.loss import MIN_PROBABILITY
from nngk_jax.loss import gaussian_kernel_loss
from nngk_jax.loss import kernel_class_log_probs


def reference_class_probs(emb, centres, centre_labels, nbr, num_classes, sigma,
                          log_w=None, mask=None):
  """p(c|x) by the paper's formula, one loop per example and neighbour.

  Uses float64 and the max-shift by hand so that it is exact at any scale.
  """
  batch, k = nbr.shape
  out = np.zeros((batch, num_classes))
  for b in range(batch):
    log_k = []
    labels = []
    for j in range(k):
      if mask is not None and not mask[b, j]:
        continue
      n = nbr[b, j]
      d2 = sum((float(emb[b, d]) - float(centres[n, d])) ** 2
               for d in range(emb.shape[1]))
      theta = 0.0 if log_w is None else float(log_w[n])
      log_k.append(theta - d2 / (2 * sigma**2))
      labels.append(centre_labels[n])
    if not log_k:
      out[b] = 1.0 / num_classes
      continue
    shift = max(log_k)
    total = sum(math.exp(v - shift) for v in log_k)
    for v, c in zip(log_k, labels):
      out[b, c] += math.exp(v - shift) / total
  return out


def reference_loss(emb, labels, centres, centre_labels, nbr, sigma, log_w=None,
                   mask=None, num_classes=None):
  """The loss by its docstring's definition, looped in float64.

  With a same-class neighbour: ``-log p(y|x)``, never clipped. Without one:
  ``log(S + m eps) - log eps``, ``S`` the sum of all the row's kernels and
  ``m`` the classes absent from the row (1 without ``num_classes``).
  """
  n_cls = int(max(centre_labels.max(), labels.max())) + 1
  probs = reference_class_probs(emb, centres, centre_labels, nbr, n_cls,
                                sigma, log_w, mask)
  out = []
  for b in range(len(labels)):
    kept = [j for j in range(nbr.shape[1]) if mask is None or mask[b, j]]
    present = {int(centre_labels[nbr[b, j]]) for j in kept}
    if int(labels[b]) in present:
      out.append(-math.log(probs[b, labels[b]]))
      continue
    total = 0.0
    for j in kept:
      n = nbr[b, j]
      d2 = sum((float(emb[b, d]) - float(centres[n, d])) ** 2
               for d in range(emb.shape[1]))
      theta = 0.0 if log_w is None else float(log_w[n])
      total += math.exp(theta - d2 / (2 * sigma**2))
    absent = 1 if num_classes is None else num_classes - len(present)
    out.append(math.log(total + absent * MIN_PROBABILITY)
               - math.log(MIN_PROBABILITY))
  return np.array(out)


def authors_loss(emb, labels, centres, centre_labels, nbr, sigma, log_w,
                 num_classes):
  """A float64 port of the authors' ``GaussianKernels.forward`` + NLL.

  Per example: kernel sums per class, every zero sum replaced by 1e-10,
  normalised, then ``-log`` of the label's entry (no log-space shift, so
  only valid where the kernels do not underflow).
  """
  out = []
  for b in range(len(labels)):
    sums = np.zeros(num_classes)
    for n in nbr[b]:
      d2 = float(np.sum((emb[b] - centres[n]) ** 2))
      sums[centre_labels[n]] += math.exp(-d2 / (2 * sigma**2)) * math.exp(
          log_w[n])
    sums[sums == 0] = 1e-10
    out.append(-math.log(sums[labels[b]] / sums.sum()))
  return np.array(out)


def make_problem(seed, batch=6, num_centres=20, dim=3, k=7, num_classes=3,
                 scale=1.0):
  rng = np.random.default_rng(seed)
  emb = (rng.normal(size=(batch, dim)) * scale).astype(np.float32)
  centres = (rng.normal(size=(num_centres, dim)) * scale).astype(np.float32)
  centre_labels = rng.integers(0, num_classes, num_centres).astype(np.int32)
  labels = rng.integers(0, num_classes, batch).astype(np.int32)
  nbr = np.stack([rng.choice(num_centres, k, replace=False)
                  for _ in range(batch)]).astype(np.int32)
  log_w = rng.normal(scale=0.3, size=num_centres).astype(np.float32)
  mask = rng.random((batch, k)) > 0.3
  return dict(emb=emb, labels=labels, centres=centres,
              centre_labels=centre_labels, nbr=nbr, log_w=log_w, mask=mask,
              num_classes=num_classes)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("use_weights", [False, True])
@pytest.mark.parametrize("use_mask", [False, True])
def test_loss_matches_loop_reference(seed, use_weights, use_mask):
  p = make_problem(seed)
  log_w = p["log_w"] if use_weights else None
  mask = p["mask"] if use_mask else None
  got = gaussian_kernel_loss(
      p["emb"], p["labels"], p["centres"], p["centre_labels"], p["nbr"],
      sigma=0.8, centre_log_weights=log_w, neighbour_mask=mask)
  want = reference_loss(p["emb"], p["labels"], p["centres"], p["centre_labels"],
                        p["nbr"], 0.8, log_w, mask)
  assert got.shape == (6,)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("seed", [0, 1])
def test_class_log_probs_match_loop_reference(seed):
  p = make_problem(seed, num_classes=4)
  got = kernel_class_log_probs(
      p["emb"], p["centres"], p["centre_labels"], p["nbr"], num_classes=4,
      sigma=1.3, centre_log_weights=p["log_w"], neighbour_mask=p["mask"])
  want = reference_class_probs(p["emb"], p["centres"], p["centre_labels"],
                               p["nbr"], 4, 1.3, p["log_w"], p["mask"])
  assert got.shape == (6, 4)
  np.testing.assert_allclose(np.exp(got), want, atol=1e-6)
  np.testing.assert_allclose(np.exp(got).sum(axis=1), 1.0, rtol=1e-5)


def test_loss_is_minus_log_prob_of_label():
  p = make_problem(3)
  log_probs = kernel_class_log_probs(
      p["emb"], p["centres"], p["centre_labels"], p["nbr"], num_classes=3,
      sigma=1.0, centre_log_weights=p["log_w"])
  loss = gaussian_kernel_loss(
      p["emb"], p["labels"], p["centres"], p["centre_labels"], p["nbr"],
      sigma=1.0, centre_log_weights=p["log_w"])
  picked = np.take_along_axis(np.asarray(log_probs), p["labels"][:, None], 1)
  has_positive = np.isfinite(picked[:, 0])
  assert has_positive.sum() >= 3
  np.testing.assert_allclose(loss[has_positive], -picked[has_positive, 0],
                             rtol=1e-5)


@pytest.mark.parametrize("log10_p", [-5, -12, -20, -30])
def test_tiny_probabilities_are_not_clipped(log10_p):
  """p(y|x) down to 1e-30: exact loss and a full gradient (no 1e-10 floor)."""
  sigma = 0.5
  # Negative at distance 0, positive at distance d: p ~ e^{-d^2 / 2 sigma^2}.
  d = math.sqrt(-log10_p * math.log(10) * 2 * sigma**2)
  emb = np.zeros((1, 2), np.float32)
  centres = np.array([[d, 0.0], [0.0, 0.0]], np.float32)
  centre_labels = np.array([0, 1], np.int32)
  nbr = np.array([[0, 1]], np.int32)
  labels = np.array([0], np.int32)
  fn = lambda e: gaussian_kernel_loss(e, labels, centres, centre_labels, nbr,
                                      sigma=sigma)
  want = reference_loss(emb.astype(np.float64), labels,
                        centres.astype(np.float64), centre_labels, nbr, sigma)
  np.testing.assert_allclose(fn(emb), want, rtol=1e-5)
  assert float(fn(emb)[0]) > -log10_p * math.log(10) - 1e-3
  grad = np.asarray(jax.grad(lambda e: fn(e).sum())(emb))
  # d loss / d x = -(d - 0) / sigma^2 * (1 - p): pulls toward the positive.
  np.testing.assert_allclose(grad[0, 0], -d / sigma**2, rtol=1e-4)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("with_num_classes", [False, True])
def test_no_positive_matches_loop_reference(seed, with_num_classes):
  p = make_problem(seed, batch=8, k=3, num_classes=5)
  num_classes = p["num_classes"] if with_num_classes else None
  got = gaussian_kernel_loss(p["emb"], p["labels"], p["centres"],
                             p["centre_labels"], p["nbr"], sigma=0.8,
                             centre_log_weights=p["log_w"],
                             neighbour_mask=p["mask"], num_classes=num_classes)
  want = reference_loss(p["emb"], p["labels"], p["centres"],
                        p["centre_labels"], p["nbr"], 0.8, p["log_w"],
                        p["mask"], num_classes=num_classes)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_the_authors_formula_value_and_gradient(seed):
  """Against a float64 port of the authors' code, rows with and without a
  positive, at ordinary distances (no underflow in linear space)."""
  p = make_problem(seed, batch=10, k=3, num_classes=6)
  labels = p["labels"].copy()
  num_classes = p["num_classes"]
  missing = [b for b in range(len(labels))
             if labels[b] not in p["centre_labels"][p["nbr"][b]]]
  assert missing and len(missing) < len(labels)  # both kinds of row

  with jax.enable_x64(True):
    args = {k: (v.astype(np.float64) if v.dtype == np.float32 else v)
            for k, v in p.items() if isinstance(v, np.ndarray)}

    def ours(emb, log_w):
      return gaussian_kernel_loss(emb, labels, args["centres"],
                                  args["centre_labels"], args["nbr"], sigma=0.9,
                                  centre_log_weights=log_w,
                                  num_classes=num_classes)

    def theirs(emb, log_w):
      return authors_loss(emb, labels, args["centres"], args["centre_labels"],
                          args["nbr"], 0.9, log_w, num_classes)

    np.testing.assert_allclose(ours(args["emb"], args["log_w"]),
                               theirs(args["emb"], args["log_w"]), rtol=1e-7)
    g_emb, g_w = jax.grad(lambda e, w: ours(e, w).sum(), argnums=(0, 1))(
        args["emb"], args["log_w"])
    # Central differences of the authors' formula.
    eps = 1e-6
    for array, grad in ((args["emb"], g_emb), (args["log_w"], g_w)):
      flat = array.reshape(-1)
      numeric = np.zeros_like(flat)
      for i in range(flat.size):
        up, down = flat.copy(), flat.copy()
        up[i] += eps
        down[i] -= eps
        e_up = up.reshape(array.shape) if array is args["emb"] else args["emb"]
        e_dn = down.reshape(array.shape) if array is args["emb"] else args["emb"]
        w_up = up if array is args["log_w"] else args["log_w"]
        w_dn = down if array is args["log_w"] else args["log_w"]
        numeric[i] = (theirs(e_up, w_up).sum() - theirs(e_dn, w_dn).sum()) / (
            2 * eps)
      np.testing.assert_allclose(np.asarray(grad).reshape(-1), numeric,
                                 rtol=1e-5, atol=1e-7)
    # The no-positive rows push away from their neighbours: non-zero gradient.
    assert np.all(np.abs(np.asarray(g_emb)[missing]).sum(axis=1) > 1e-3)


def test_moderately_far_points_are_exact():
  """Kernels of ~e^-50 each: the ratio is still computed to float32 accuracy."""
  sigma = 0.5
  emb = np.array([[10 * sigma, 0.0]], np.float32)
  centres = np.array([[0.0, 0.0], [0.0, sigma], [0.0, 2 * sigma]], np.float32)
  centre_labels = np.array([0, 0, 1], np.int32)
  nbr = np.array([[0, 1, 2]], np.int32)
  loss = gaussian_kernel_loss(emb, np.array([0], np.int32), centres,
                              centre_labels, nbr, sigma=sigma)
  want = reference_loss(emb, np.array([0]), centres, centre_labels, nbr, sigma)
  np.testing.assert_allclose(loss, want, rtol=1e-4)


@pytest.mark.parametrize("distance_in_sigmas", [1e2, 1e3, 1e4])
def test_far_away_points_are_finite(distance_in_sigmas):
  """Every kernel underflows to 0 in linear space (the naive ratio is 0/0)."""
  sigma = 0.5
  far = distance_in_sigmas
  emb = np.zeros((2, 1), np.float32)
  # Class 0 at `far` sigma, class 1 at `far + 3` sigma: p(0|x) ~ 1 - e^-3far.
  centres = np.array([[far * sigma], [(far + 3) * sigma]], np.float32)
  centre_labels = np.array([0, 1], np.int32)
  nbr = np.array([[0, 1], [0, 1]], np.int32)
  labels = np.array([0, 1], np.int32)
  with np.errstate(divide="ignore", invalid="ignore"):
    naive = np.exp(-(centres[:, 0] ** 2) / (2 * sigma**2))
    assert np.isnan(naive[0] / naive.sum())  # what log space avoids
  fn = lambda e: gaussian_kernel_loss(e, labels, centres, centre_labels, nbr,
                                      sigma=sigma)
  loss = fn(emb)
  np.testing.assert_allclose(loss[0], 0.0, atol=1e-6)
  # -log p(1|x) = 3 far + 4.5 exactly (the class-1 kernel is e^{-3far-4.5}
  # times the class-0 one): a huge but finite loss, not a clipped 23.03.
  np.testing.assert_allclose(loss[1], 3 * far + 4.5, rtol=1e-4)  # float32
  grads = jax.grad(lambda e: fn(e).sum())(emb)
  assert np.all(np.isfinite(grads))


def test_no_same_class_neighbour_follows_the_authors():
  emb = np.array([[0.0, 0.0], [1.0, 1.0], [0.0, 0.0]], np.float32)
  centres = np.array([[0.1, 0.0], [0.0, 0.2], [3.0, 3.0], [90.0, 0.0]],
                     np.float32)
  centre_labels = np.array([1, 1, 0, 2], np.int32)
  # Row 0 has no class-0 centre (near neighbours), row 2 neither (one far
  # neighbour, whose kernel is below 1e-10).
  nbr = np.array([[0, 1], [0, 2], [3, 3]], np.int32)
  labels = np.array([0, 0, 0], np.int32)
  fn = lambda e: gaussian_kernel_loss(e, labels, centres, centre_labels, nbr,
                                      sigma=1.0, num_classes=3)
  loss = np.asarray(fn(emb))
  total = math.exp(-0.01 / 2) + math.exp(-0.04 / 2)
  # Classes 0 and 2 are absent from row 0: m = 2.
  np.testing.assert_allclose(
      loss[0], math.log(total + 2e-10) - math.log(1e-10), rtol=1e-6)
  assert np.isfinite(loss[1]) and loss[1] < loss[0]
  # Far neighbours only: S << eps, the loss tends to log m (m = 2 here).
  np.testing.assert_allclose(loss[2], math.log(2), rtol=1e-5)
  grads = np.asarray(jax.grad(lambda e: fn(e).sum())(emb))
  assert np.all(np.isfinite(grads))
  # Pushed away from its (wrong-class) neighbours at +x and +y.
  assert grads[0, 0] > 0 and grads[0, 1] > 0
  np.testing.assert_allclose(grads[2], 0.0, atol=1e-12)
  log_probs = kernel_class_log_probs(emb, centres, centre_labels, nbr,
                                     num_classes=3, sigma=1.0)
  assert log_probs[0, 0] == -np.inf
  np.testing.assert_allclose(log_probs[0, 1], 0.0, atol=1e-6)


def test_no_positive_log_weights_go_down():
  """The authors' no-positive gradient lowers the wrong neighbours' weights."""
  emb = np.zeros((1, 2), np.float32)
  centres = np.array([[0.1, 0.0], [0.0, 0.2]], np.float32)
  centre_labels = np.array([1, 1], np.int32)
  log_w = np.zeros(2, np.float32)
  grad = jax.grad(lambda w: gaussian_kernel_loss(
      emb, np.array([0], np.int32), centres, centre_labels,
      np.array([[0, 1]], np.int32), sigma=1.0, centre_log_weights=w).sum())(
          log_w)
  assert np.all(np.asarray(grad) > 0)  # gradient descent lowers them


def test_fully_masked_row():
  p = make_problem(4)
  mask = p["mask"].copy()
  mask[2] = False
  loss = gaussian_kernel_loss(p["emb"], p["labels"], p["centres"],
                              p["centre_labels"], p["nbr"], sigma=1.0,
                              neighbour_mask=mask, num_classes=3)
  # No evidence: the authors' code gives every class 1e-10, so p = 1/3.
  np.testing.assert_allclose(loss[2], math.log(3), rtol=1e-6)
  log_probs = kernel_class_log_probs(p["emb"], p["centres"], p["centre_labels"],
                                     p["nbr"], num_classes=3, sigma=1.0,
                                     neighbour_mask=mask)
  np.testing.assert_allclose(log_probs[2], -math.log(3), rtol=1e-6)
  grads = jax.grad(lambda e: gaussian_kernel_loss(
      e, p["labels"], p["centres"], p["centre_labels"], p["nbr"], sigma=1.0,
      neighbour_mask=mask).sum())(p["emb"])
  assert np.all(np.isfinite(grads))
  np.testing.assert_array_equal(np.asarray(grads)[2], 0.0)


def test_mask_equals_dropping_neighbours():
  p = make_problem(5, k=6)
  mask = np.zeros((6, 6), bool)
  mask[:, :4] = True  # keep the first 4 of every row
  masked = gaussian_kernel_loss(p["emb"], p["labels"], p["centres"],
                                p["centre_labels"], p["nbr"], sigma=1.0,
                                centre_log_weights=p["log_w"],
                                neighbour_mask=mask)
  sliced = gaussian_kernel_loss(p["emb"], p["labels"], p["centres"],
                                p["centre_labels"], p["nbr"][:, :4], sigma=1.0,
                                centre_log_weights=p["log_w"])
  np.testing.assert_allclose(masked, sliced, rtol=1e-6)


def test_nan_input_poisons_only_its_row():
  p = make_problem(6)
  emb = p["emb"].copy()
  emb[1, 0] = np.nan
  loss = np.asarray(gaussian_kernel_loss(emb, p["labels"], p["centres"],
                                         p["centre_labels"], p["nbr"],
                                         sigma=1.0))
  assert np.isnan(loss[1])
  assert np.all(np.isfinite(np.delete(loss, 1)))


def test_repeated_neighbours_count_twice():
  """K may exceed the bank when rows repeat indices; each copy is a vote."""
  emb = np.zeros((1, 1), np.float32)
  centres = np.array([[0.0], [1.0]], np.float32)
  centre_labels = np.array([0, 1], np.int32)
  nbr = np.array([[0, 0, 1, 1, 1]], np.int32)  # K=5 > N=2
  loss = gaussian_kernel_loss(emb, np.array([0], np.int32), centres,
                              centre_labels, nbr, sigma=1.0)
  want = reference_loss(emb, np.array([0]), centres, centre_labels, nbr, 1.0)
  np.testing.assert_allclose(loss, want, rtol=1e-6)


def test_special_case_equals_nca():
  """Neighbours = all other centres and unit weights: the NCA loss."""
  rng = np.random.default_rng(7)
  n, dim = 12, 4
  x = rng.normal(size=(n, dim)).astype(np.float32)
  y = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2, 2, 1, 0], np.int32)
  others = np.array([[j for j in range(n) if j != i] for i in range(n)],
                    np.int32)
  # NCA (Goldberger et al. 2005): p_ij ∝ exp(-||x_i - x_j||^2), j != i.
  d2 = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1).astype(np.float64)
  np.fill_diagonal(d2, np.inf)
  p_ij = np.exp(-d2 - (-d2).max(axis=1, keepdims=True))
  p_ij /= p_ij.sum(axis=1, keepdims=True)
  nca = -np.log((p_ij * (y[:, None] == y[None, :])).sum(axis=1))
  got = gaussian_kernel_loss(x, y, x, y, others, sigma=math.sqrt(0.5))
  np.testing.assert_allclose(got, nca, rtol=1e-5)


def test_gradients_match_finite_differences():
  p = make_problem(8, batch=3, num_centres=8, dim=2, k=4)
  with jax.enable_x64(True):
    args = {k: (v.astype(np.float64) if v.dtype == np.float32 else v)
            for k, v in p.items() if isinstance(v, np.ndarray)}

    def f(emb, centres, log_w):
      return gaussian_kernel_loss(emb, args["labels"], centres,
                                  args["centre_labels"], args["nbr"],
                                  sigma=0.9, centre_log_weights=log_w,
                                  neighbour_mask=args["mask"]).sum()

    check_grads(f, (args["emb"], args["centres"], args["log_w"]), order=2,
                modes=("rev",), eps=1e-4)


def test_jit_equals_eager_and_vmap_over_problems():
  problems = [make_problem(s) for s in (10, 11, 12)]
  loss = lambda p: gaussian_kernel_loss(
      p["emb"], p["labels"], p["centres"], p["centre_labels"], p["nbr"],
      sigma=1.0, centre_log_weights=p["log_w"], neighbour_mask=p["mask"])
  eager = [loss(p) for p in problems]
  jitted = jax.jit(loss)
  for p, e in zip(problems, eager):
    np.testing.assert_allclose(jitted({k: v for k, v in p.items()
                                       if k != "num_classes"}), e, rtol=1e-6)
  stacked = {k: np.stack([p[k] for p in problems])
             for k in problems[0] if k != "num_classes"}
  batched = jax.vmap(loss)(stacked)
  np.testing.assert_allclose(batched, np.stack(eager), rtol=1e-6)
  log_probs = jax.jit(kernel_class_log_probs,
                      static_argnames=("num_classes",))(
      problems[0]["emb"], problems[0]["centres"], problems[0]["centre_labels"],
      problems[0]["nbr"], num_classes=3, sigma=1.0)
  assert log_probs.shape == (6, 3)


def test_sigma_traced_under_jit():
  p = make_problem(13)
  f = jax.jit(lambda s: gaussian_kernel_loss(
      p["emb"], p["labels"], p["centres"], p["centre_labels"], p["nbr"],
      sigma=s))
  np.testing.assert_allclose(
      f(2.0), reference_loss(p["emb"], p["labels"], p["centres"],
                             p["centre_labels"], p["nbr"], 2.0), rtol=1e-5)


@pytest.mark.parametrize("change, match", [
    (dict(sigma=0.0), "sigma must be a positive"),
    (dict(sigma=-1.0), "sigma must be a positive"),
    (dict(emb=np.zeros((6, 4), np.float32)), "embeddings are 4-D but centres"),
    (dict(emb=np.zeros((6,), np.float32)), r"embeddings must be \[batch, dim\]"),
    (dict(labels=np.zeros((5,), np.int32)), "labels has 5 entries"),
    (dict(labels=np.zeros((6,), np.float32)), "labels must have a int dtype"),
    (dict(nbr=np.zeros((5, 7), np.int32)), "neighbour_idx has 5 rows"),
    (dict(nbr=np.zeros((6, 7), np.float32)), "neighbour_idx must have a int"),
    (dict(centre_labels=np.zeros((19,), np.int32)), "centre_labels has 19"),
    (dict(log_w=np.zeros((3,), np.float32)), "centre_log_weights has 3"),
    (dict(mask=np.ones((6, 3), bool)), r"neighbour_mask has shape \(6, 3\)"),
    (dict(mask=np.ones((6, 7), np.int32)), "neighbour_mask must have a bool"),
    (dict(num_classes=0), "num_classes must be a positive int"),
])
def test_bad_input_raises_naming_it(change, match):
  p = make_problem(0)
  p.update(change)
  with pytest.raises(ValueError, match=match):
    gaussian_kernel_loss(p["emb"], p["labels"], p["centres"],
                         p["centre_labels"], p["nbr"],
                         sigma=change.get("sigma", 1.0),
                         centre_log_weights=p["log_w"],
                         neighbour_mask=p["mask"],
                         num_classes=change.get("num_classes"))

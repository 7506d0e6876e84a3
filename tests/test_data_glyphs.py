"""Tests for nngk_jax.data.glyphs.

Classes, rendering, cache, splits, learnability.
"""

import collections
import math
import unicodedata

import numpy as np
import pytest

from nngk_jax import data
from nngk_jax.data import glyphs

SMALL = {"num_classes": 6, "images_per_class": 3}


@pytest.fixture
def cache(tmp_path):
  return tmp_path / "cache"


def _relative_distance(a, b):
  return np.linalg.norm(a - b) / math.sqrt((a @ a + b @ b) / 2)


# ----------------------------------------------------------------------------
# The class list.


def test_at_least_1000_classes_with_enough_fonts():
  classes = glyphs.glyph_classes()
  assert len(classes) >= 1000
  assert len({g.codepoint for g in classes}) == len(classes)
  for g in classes:
    category = unicodedata.category(g.char)
    assert category[0] in "LNPS", (g.name, category)
    assert not unicodedata.decomposition(g.char).startswith("<font>"), g.name
    assert len(g.fonts) == len(g.codes) >= glyphs.MIN_FONTS
    assert len({glyphs._FAMILY[f] for f in g.fonts}) >= glyphs.MIN_FAMILIES
    assert all(path.exists() for path in g.font_paths)
  # Several scripts, shuffled: both halves of the first 1000 mix them.
  scripts = [unicodedata.name(g.char).split()[0] for g in classes[:1000]]
  for half in (scripts[:500], scripts[500:]):
    counts = collections.Counter(half)
    assert {"LATIN", "GREEK", "CYRILLIC"} <= set(counts)


def test_look_alikes_are_dropped():
  kept = {g.char for g in glyphs.glyph_classes()}
  assert {"A", "o", "I", "0", "O", "2"} <= kept
  # Greek and Cyrillic capital A, Greek omicron and Cyrillic o, l after I,
  # a subscript two after the superscript, a bold mathematical A.
  for char in ("\u0391", "\u0410", "\u03bf", "\u043e", "l", "\u2082",
               "\U0001d400"):
    assert char not in kept, (char, hex(ord(char)))


def test_glyphs_come_from_fonts_that_contain_them():
  from fontTools.ttLib import TTFont
  rng = np.random.default_rng(0)
  classes = glyphs.glyph_classes()
  fonts = {}
  for index in rng.choice(len(classes), 40, replace=False):
    g = classes[index]
    for font_file, code in zip(g.fonts, g.codes):
      if font_file not in fonts:
        fonts[font_file] = TTFont(glyphs._font_dir() / font_file,
                                  lazy=True).getBestCmap()
      assert fonts[font_file].get(code) not in (None, ".notdef")
      image = glyphs._canonical(font_file, code, 32)
      assert image is not None and image.max() > 0.25, (g.name, font_file)


def test_no_two_kept_classes_look_alike():
  classes = glyphs.glyph_classes()
  features, ok = glyphs._dedup_features(classes)
  assert ok.all()
  assert not glyphs._duplicate_pairs(features, glyphs.DUPLICATE_THRESHOLD)
  # A plain loop, pair by pair, over the Latin, Greek and Cyrillic classes.
  subset = [i for i, g in enumerate(classes) if g.codepoint < 0x500]
  assert len(subset) > 150
  for view in range(features.shape[1]):
    x = features[subset, view].astype(np.float64)
    sq = np.einsum("nd,nd->n", x, x)
    for a in range(len(subset)):
      for b in range(a):
        dist = math.sqrt(max(sq[a] + sq[b] - 2 * (x[a] @ x[b]), 0.0))
        assert dist >= glyphs.DUPLICATE_THRESHOLD * math.sqrt(
            (sq[a] + sq[b]) / 2), (classes[subset[a]].name,
                                   classes[subset[b]].name)


def test_duplicate_pairs_matches_a_loop():
  rng = np.random.default_rng(1)
  base = rng.random((40, 2, 16)).astype(np.float32)
  features = np.concatenate(
      [base, base[:10] * rng.uniform(0.85, 1.15, (10, 1, 1))
       + 0.05 * rng.standard_normal((10, 2, 16))]).astype(np.float32)
  threshold = 0.15
  expected = collections.defaultdict(set)
  for i in range(len(features)):
    for j in range(i):
      if any(_relative_distance(features[i, v], features[j, v]) < threshold
             for v in range(2)):
        expected[i].add(j)
  found = glyphs._duplicate_pairs(features, threshold, chunk=7)
  assert {i: set(js) for i, js in found.items()} == dict(expected)
  assert len(expected) >= 5


# ----------------------------------------------------------------------------
# Rendering and the cache.


def test_images_are_distorted_characters():
  g = glyphs.glyph_classes()[0]
  images = glyphs.render_class(g, 8, image_size=32, seed=0)
  assert images.shape == (8, 32, 32) and images.dtype == np.uint8
  flat = images.reshape(8, -1).astype(np.float32)
  # Ink is present, and every image differs from the others.
  assert np.all(flat.max(1) - np.median(flat, 1) > 60)
  assert len({im.tobytes() for im in images}) == 8
  # A class renders alike whatever else is loaded.
  again = glyphs.render_class(g, 8, image_size=32, seed=0)
  np.testing.assert_array_equal(images, again)


def test_deterministic_and_seeded(cache, tmp_path):
  first = glyphs.load_glyphs(**SMALL, cache_dir=cache)
  second = glyphs.load_glyphs(**SMALL, cache_dir=tmp_path / "other")
  for split in ("train", "test"):
    np.testing.assert_array_equal(getattr(first, split).images,
                                  getattr(second, split).images)
    np.testing.assert_array_equal(getattr(first, split).labels,
                                  getattr(second, split).labels)
  reseeded = glyphs.load_glyphs(**SMALL, seed=1, cache_dir=cache)
  assert not np.array_equal(first.train.images, reseeded.train.images)
  assert first.train.class_names == reseeded.train.class_names


def test_cache_hit_does_not_render(cache, monkeypatch, capsys):
  first = glyphs.load_glyphs(**SMALL, cache_dir=cache)
  assert "rendering 6 classes" in capsys.readouterr().err
  files = sorted(p.name for p in cache.iterdir())
  assert len(files) == 1 and files[0].endswith(".npz")  # no temporary left

  def fail(*args, **kwargs):
    raise AssertionError("rendered again despite the cache")

  monkeypatch.setattr(glyphs, "render_class", fail)
  monkeypatch.setattr(glyphs, "glyph_classes", fail)
  second = glyphs.load_glyphs(**SMALL, cache_dir=cache)
  assert capsys.readouterr().err == ""
  np.testing.assert_array_equal(first.train.images, second.train.images)
  np.testing.assert_array_equal(first.test.images, second.test.images)
  assert first.test.class_names == second.test.class_names
  # The protocol only splits the cached pool.
  glyphs.load_glyphs(**SMALL, protocol="classification", cache_dir=cache)


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty"])
def test_corrupt_cache_is_rendered_again(cache, capsys, damage):
  first = glyphs.load_glyphs(**SMALL, cache_dir=cache)
  path = glyphs.cache_path(**SMALL, image_size=32, seed=0, cache_dir=cache)
  assert path.exists()
  content = path.read_bytes()
  path.write_bytes({"garbage": b"not a zip file" * 10,
                    "truncated": content[:len(content) // 2],
                    "empty": b""}[damage])
  capsys.readouterr()
  second = glyphs.load_glyphs(**SMALL, cache_dir=cache)
  err = capsys.readouterr().err
  assert "ignoring" in err and "rendering" in err
  np.testing.assert_array_equal(first.train.images, second.train.images)
  assert path.read_bytes() == content


def test_cache_dir_from_environment(monkeypatch, tmp_path):
  monkeypatch.setenv("NNGK_JAX_CACHE", str(tmp_path))
  path = glyphs.cache_path(num_classes=10, images_per_class=4, image_size=32,
                           seed=0)
  assert path.parent == tmp_path / "glyphs"
  monkeypatch.delenv("NNGK_JAX_CACHE")
  default = glyphs.cache_path(num_classes=10, images_per_class=4,
                              image_size=32, seed=0)
  assert default.parent.parts[-3:] == (".cache", "nngk_jax", "glyphs")
  other = glyphs.cache_path(num_classes=10, images_per_class=4,
                            image_size=32, seed=1)
  assert other.name != default.name


# ----------------------------------------------------------------------------
# Splits and the data interface.


def test_metric_halves_are_class_disjoint(cache):
  ds = glyphs.load_glyphs(num_classes=7, images_per_class=4, cache_dir=cache)
  names = [g.name for g in glyphs.glyph_classes()[:7]]
  assert ds.protocol == "metric"
  assert ds.train.class_names == tuple(names[:4])
  assert ds.test.class_names == tuple(names[4:])
  assert not set(ds.train.class_names) & set(ds.test.class_names)
  for split, num in ((ds.train, 4), (ds.test, 3)):
    assert split.num_classes == num and len(split) == 4 * num
    np.testing.assert_array_equal(np.bincount(split.labels), [4] * num)
  # The halves are a prefix property: more classes keep the first ones.
  more = glyphs.load_glyphs(num_classes=9, images_per_class=4,
                            cache_dir=cache)
  assert more.train.class_names[:4] == ds.train.class_names
  np.testing.assert_array_equal(more.train.images[:16], ds.train.images)


def test_load_dataset_interface(cache):
  ds = data.load_dataset("glyphs", num_classes=4, images_per_class=2,
                         image_size=16, cache_dir=cache)
  assert ds.name == "glyphs"
  assert ds.train.image_shape == ds.test.image_shape == (16, 16, 1)
  batch = ds.train.get_batch([3, 0])
  assert batch["image"].shape == (2, 16, 16, 1)
  assert batch["image"].dtype == np.float32
  np.testing.assert_array_equal(batch["index"], [3, 0])
  for split in (ds.train, ds.test):
    assert split.images.min() >= -1.0 and split.images.max() <= 1.0
    assert split.images.max() > 0.0 and split.images.min() < -0.4
  batches = list(data.iterate_batches(ds.train, 2, seed=0, epoch=0))
  assert len(batches) == 2


def test_few_shot_and_classification(cache):
  few = glyphs.load_glyphs(num_classes=6, images_per_class=5,
                           train_per_class=2, cache_dir=cache)
  np.testing.assert_array_equal(np.bincount(few.train.labels), [2, 2, 2])
  assert len(few.test) == 15
  cls = glyphs.load_glyphs(protocol="classification", num_classes=6,
                           images_per_class=5, test_fraction=0.4,
                           cache_dir=cache)
  assert cls.protocol == "classification"
  assert cls.train.class_names == cls.test.class_names
  assert cls.train.num_classes == 6
  np.testing.assert_array_equal(np.bincount(cls.train.labels), [3] * 6)
  np.testing.assert_array_equal(np.bincount(cls.test.labels), [2] * 6)
  cls_few = glyphs.load_glyphs(protocol="classification", num_classes=6,
                               images_per_class=5, train_per_class=1,
                               cache_dir=cache)
  np.testing.assert_array_equal(np.bincount(cls_few.train.labels), [1] * 6)


@pytest.mark.parametrize("options, argument", [
    ({"num_classes": 10**6}, "num_classes"),
    ({"num_classes": 1}, "num_classes"),
    ({"num_classes": 2.5}, "num_classes"),
    ({"images_per_class": 1}, "images_per_class"),
    ({"image_size": 7}, "image_size"),
    ({"seed": -1}, "seed"),
    ({"protocol": "retrieval"}, "protocol"),
    ({"protocol": "classification", "test_fraction": 1.0}, "test_fraction"),
    ({"train_per_class": 0}, "train_per_class"),
    ({"train_per_class": 5, "images_per_class": 4}, "train_per_class"),
])
def test_bad_arguments(cache, options, argument):
  with pytest.raises(ValueError, match=argument) as info:
    glyphs.load_glyphs(cache_dir=cache, **options)
  if options.get("num_classes") == 10**6:
    assert f"maximum {len(glyphs.glyph_classes())}" in str(info.value)
  assert not cache.exists() or not any(cache.iterdir())


def test_one_image_per_class_is_allowed_for_classification(cache):
  ds = glyphs.load_glyphs(protocol="classification", num_classes=3,
                          images_per_class=1, cache_dir=cache)
  assert len(ds.train) == 3 and len(ds.test) == 0


# ----------------------------------------------------------------------------
# Learnable but not trivial.


def test_raw_pixel_nearest_neighbour_is_above_chance_below_perfect(cache):
  # Measured: 1-NN recall@1 on raw pixels of the test half is 0.19 at the
  # default size (500 test classes x 16 images, chance 15/7999 = 0.002),
  # and 0.28 here (100 test classes x 8 images, chance 7/799 = 0.009).
  ds = glyphs.load_glyphs(num_classes=200, images_per_class=8,
                          cache_dir=cache)
  x = ds.test.images.reshape(len(ds.test), -1).astype(np.float64)
  sq = np.einsum("nd,nd->n", x, x)
  dist = sq[:, None] + sq[None, :] - 2 * x @ x.T
  np.fill_diagonal(dist, np.inf)
  recall = float(np.mean(ds.test.labels[dist.argmin(1)] == ds.test.labels))
  assert 0.1 < recall < 0.7, recall

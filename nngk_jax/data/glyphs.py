"""Rendered glyphs: a many-class image benchmark built offline from fonts.

Each class is one Unicode character (Latin with its accented and extended
letters, Greek, Cyrillic, Armenian, Georgian, digits, punctuation, math
symbols, arrows, box drawing, ...) and each image is that character drawn in
one of the fonts that ship with matplotlib (``mpl-data/fonts/ttf``: DejaVu
Sans, Serif and Sans Mono, STIX General and Computer Modern, each with its
bold and italic faces), then distorted. Nothing is downloaded: the data are
rendered with Pillow on first use and cached as a compressed ``.npz``.

**Classes.** A character is a class when

1. it is a letter, number, punctuation mark or symbol (Unicode general
   category ``L*``, ``N*``, ``P*`` or ``S*``: combining marks, spaces,
   control, format and private-use characters are left out), and not a
   font variant of another character (Unicode decomposition tag
   ``<font>``: the mathematical bold, italic, script, double-struck, ...
   letters such as ``𝐀`` or ``ℂ``; the images already draw every letter
   in bold and italic faces);
2. at least :data:`MIN_FONTS` font files, from at least
   :data:`MIN_FAMILIES` families, really contain it: the font's character
   map (read with fontTools) points to a glyph that is not ``.notdef`` and
   has an outline. The Computer Modern fonts map TeX code positions, not
   Unicode, so there a glyph counts under the character its PostScript name
   stands for (``cmmi10``'s ``alpha`` is ``α``), and is drawn through its
   code position;
3. it does not look like a character kept before it (**deduplication**):
   candidates are visited in code-point order, each drawn the canonical way
   (no distortion, ink centred, at 32x32) in two fonts: DejaVu Sans and
   DejaVu Serif, or the first of STIX General, the other DejaVu fonts and
   Computer Modern that has it. The candidate is dropped when, in either
   font, the relative distance ``|a - b| / sqrt((|a|^2 + |b|^2) / 2)``
   between its render ``a`` and that of a kept character ``b`` is below
   :data:`DUPLICATE_THRESHOLD` (0.22). So Latin ``A`` (U+0041) is kept,
   and Greek ``Α`` and Cyrillic ``А``, drawn by the same outline, are
   dropped (distance 0); so are ``ο``/``о`` after ``o``, a subscript digit
   after its superscript (the ink is centred, so only shape and size
   count), Arabic presentation forms after their letter, and ``l`` after
   ``I`` (0.21 in DejaVu Sans: two bars of nearly one height). Characters
   that differ only by a small diacritic can fall on either side: ``Ó``
   after ``Ò`` (0.21) is dropped, ``ă`` after ``ã`` (0.26) kept.

With matplotlib 3.11's fonts this leaves 3,449 classes (from 4,076
candidates before deduplication). They are shuffled once by a fixed seed;
:func:`glyph_classes` returns them in that order, and
``load_glyphs(num_classes=n)`` takes the first ``n`` (by default
:data:`DEFAULT_NUM_CLASSES`, 1,000), so both metric halves mix the scripts.

**Images.** Each image draws, from ``np.random.default_rng([seed,
codepoint])`` (so a class renders the same whatever else is loaded, and
classes can render in parallel): one of the class's fonts, a stroke
thickening, an affine map (rotation up to 12 degrees, shear up to 0.2,
scale 0.85-1.1 with a small change of aspect, a shift of up to 8% of the
side, shrunk and moved back when the glyph would leave the frame), then,
at ``image_size``, a Gaussian blur of radius up to 0.9 pixel, a random ink
and background level and additive Gaussian noise. Glyphs are drawn at
:data:`OVERSAMPLE` times the final size and box-averaged down. Ink is
bright on a dark background; images are grey, ``[N, size, size, 1]``, in
``[-1, 1]``, quantised to 256 levels (the cache stores ``uint8``).

At the default size (1,000 classes x 16 images, 32x32: 8,000 training and
8,000 test images over 500 + 500 classes), a 1-nearest-neighbour search on
raw pixels finds a same-class image for 19% of the test images (chance:
0.2%): the task is learnable, and far from solved by pixels alone.

Everything here is host-side NumPy and Pillow.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import hashlib
import io
import json
import logging
import math
import os
import pathlib
import sys
import threading
import time
import unicodedata
from collections.abc import Sequence
from typing import Any

import numpy as np

from nngk_jax import checks
from nngk_jax.data import splits
from nngk_jax.workdir import write_atomically

__all__ = [
    "DEFAULT_NUM_CLASSES",
    "DUPLICATE_THRESHOLD",
    "GlyphClass",
    "MIN_FAMILIES",
    "MIN_FONTS",
    "OVERSAMPLE",
    "VERSION",
    "cache_path",
    "glyph_classes",
    "load_glyphs",
    "render_class",
    "save_preview",
]

# Bump when the classes or the rendering change: it is part of the cache key.
VERSION = 1
DEFAULT_NUM_CLASSES = 1000
MIN_FONTS = 3
MIN_FAMILIES = 2
DUPLICATE_THRESHOLD = 0.22
OVERSAMPLE = 3
_MIN_IMAGE_SIZE = 8
_CLASS_ORDER_SEED = 20_250_607
_CANONICAL_SIZE = 32

# Font files of mpl-data/fonts/ttf used, with their family. Left out:
# LastResortHE (a placeholder box for every code point), DejaVu*Display (a
# few dozen glyphs), STIXNonUni* (private use area only), STIXSiz* (large
# delimiters), cmsy10 (its letters are calligraphic capitals named as plain
# letters) and cmex10 (large delimiters).
_FONTS: tuple[tuple[str, str], ...] = (
    ("DejaVuSans.ttf", "DejaVu Sans"),
    ("DejaVuSans-Bold.ttf", "DejaVu Sans"),
    ("DejaVuSans-Oblique.ttf", "DejaVu Sans"),
    ("DejaVuSans-BoldOblique.ttf", "DejaVu Sans"),
    ("DejaVuSerif.ttf", "DejaVu Serif"),
    ("DejaVuSerif-Bold.ttf", "DejaVu Serif"),
    ("DejaVuSerif-Italic.ttf", "DejaVu Serif"),
    ("DejaVuSerif-BoldItalic.ttf", "DejaVu Serif"),
    ("DejaVuSansMono.ttf", "DejaVu Sans Mono"),
    ("DejaVuSansMono-Bold.ttf", "DejaVu Sans Mono"),
    ("DejaVuSansMono-Oblique.ttf", "DejaVu Sans Mono"),
    ("DejaVuSansMono-BoldOblique.ttf", "DejaVu Sans Mono"),
    ("STIXGeneral.ttf", "STIX General"),
    ("STIXGeneralBol.ttf", "STIX General"),
    ("STIXGeneralItalic.ttf", "STIX General"),
    ("STIXGeneralBolIta.ttf", "STIX General"),
    ("cmr10.ttf", "Computer Modern"),
    ("cmb10.ttf", "Computer Modern"),
    ("cmss10.ttf", "Computer Modern"),
    ("cmti10.ttf", "Computer Modern"),
    ("cmtt10.ttf", "Computer Modern"),
    ("cmmi10.ttf", "Computer Modern"),
)
_FAMILY = dict(_FONTS)
# Fonts whose character map holds TeX code positions, not Unicode.
_TEX_ENCODED = frozenset(f for f, family in _FONTS
                         if family == "Computer Modern")
# Canonical fonts of the two deduplication views, by preference.
_VIEW_FONTS = (
    ("DejaVuSans.ttf", "STIXGeneral.ttf", "DejaVuSerif.ttf",
     "DejaVuSansMono.ttf", "cmr10.ttf"),
    ("DejaVuSerif.ttf", "STIXGeneral.ttf", "DejaVuSans.ttf",
     "DejaVuSansMono.ttf", "cmr10.ttf"),
)
_KEPT_CATEGORIES = frozenset("LNPS")

# Glyph geometry, as fractions of the frame side: the font size, the largest
# ink extent before the random scale, and the margin the ink keeps.
_FONT_SIZE = 0.75
_FIT = 0.8
_MARGIN = 0.04


@dataclasses.dataclass(frozen=True)
class GlyphClass:
  """One class: a character and the fonts that draw it.

  Attributes:
    codepoint: the Unicode code point, e.g. ``0x41``.
    fonts: file names in matplotlib's ``mpl-data/fonts/ttf`` that contain
      the character.
    codes: for each font, the code point drawn (the character itself, or a
      TeX code position in a Computer Modern font).

  Examples:
    >>> g = GlyphClass(0x3B1, ("DejaVuSans.ttf", "cmmi10.ttf"), (0x3B1, 0xAE))
    >>> g.char, g.name
    ('α', 'U+03B1 α')
  """

  codepoint: int
  fonts: tuple[str, ...]
  codes: tuple[int, ...]

  @property
  def char(self) -> str:
    """The character, ``chr(codepoint)``."""
    return chr(self.codepoint)

  @property
  def name(self) -> str:
    """The class name, ``"U+0041 A"``."""
    return f"U+{self.codepoint:04X} {self.char}"

  @property
  def font_paths(self) -> tuple[pathlib.Path, ...]:
    """Full paths of :attr:`fonts`."""
    return tuple(_font_dir() / f for f in self.fonts)


def _font_dir() -> pathlib.Path:
  import matplotlib  # pylint: disable=g-import-not-at-top
  return pathlib.Path(matplotlib.get_data_path()) / "fonts" / "ttf"


def _versions() -> dict[str, str]:
  import matplotlib  # pylint: disable=g-import-not-at-top
  import PIL  # pylint: disable=g-import-not-at-top
  return {"glyphs": str(VERSION), "matplotlib": matplotlib.__version__,
          "pillow": PIL.__version__}


# ----------------------------------------------------------------------------
# Which fonts draw which characters.


def _is_wanted(codepoint: int) -> bool:
  """A letter, number, punctuation mark or symbol, not a font variant."""
  char = chr(codepoint)
  return (unicodedata.category(char)[0] in _KEPT_CATEGORIES
          and not unicodedata.decomposition(char).startswith("<font>"))


def _font_coverage(font_file: str) -> dict[int, int]:
  """``{codepoint: code drawn}`` for the wanted characters ``font_file`` has.

  A glyph counts when the character map points to it, it is not
  ``.notdef`` and it has an outline (a non-empty ``glyf`` entry).
  """
  from fontTools import agl  # pylint: disable=g-import-not-at-top
  from fontTools.ttLib import TTFont  # pylint: disable=g-import-not-at-top

  # fontTools logs a warning for the 1904-epoch dates in the BaKoMa fonts.
  logger = logging.getLogger("fontTools")
  level = logger.level
  logger.setLevel(logging.ERROR)
  try:
    font = TTFont(_font_dir() / font_file, lazy=True)
    cmap = font.getBestCmap() or {}
    glyph_ids = font.getReverseGlyphMap()
    loca = font["loca"]
  finally:
    logger.setLevel(level)
  coverage: dict[int, int] = {}
  for code, glyph_name in sorted(cmap.items()):
    if glyph_name == ".notdef":
      continue
    glyph_id = glyph_ids[glyph_name]
    if loca[glyph_id + 1] <= loca[glyph_id]:
      continue  # no outline: a space or an empty slot
    if font_file in _TEX_ENCODED:
      unicode = agl.toUnicode(glyph_name)
      if len(unicode) != 1:
        continue
      codepoint = ord(unicode)
    else:
      codepoint = code
    if _is_wanted(codepoint):
      coverage.setdefault(codepoint, code)
  return coverage


def _candidates() -> list[GlyphClass]:
  """Characters with enough fonts, in code-point order (before dedup)."""
  fonts_of: dict[int, list[tuple[str, int]]] = collections.defaultdict(list)
  for font_file, _ in _FONTS:
    for codepoint, code in _font_coverage(font_file).items():
      fonts_of[codepoint].append((font_file, code))
  candidates = []
  for codepoint in sorted(fonts_of):
    pairs = fonts_of[codepoint]
    families = {_FAMILY[f] for f, _ in pairs}
    if len(pairs) >= MIN_FONTS and len(families) >= MIN_FAMILIES:
      candidates.append(GlyphClass(codepoint, tuple(f for f, _ in pairs),
                                   tuple(c for _, c in pairs)))
  return candidates


# ----------------------------------------------------------------------------
# Rendering.

_thread_fonts = threading.local()


def _font(font_file: str, size: int):
  """A Pillow font, cached per thread (FreeType faces are not thread-safe)."""
  from PIL import ImageFont  # pylint: disable=g-import-not-at-top
  cache = getattr(_thread_fonts, "cache", None)
  if cache is None:
    cache = _thread_fonts.cache = {}
  key = (font_file, size)
  if key not in cache:
    cache[key] = ImageFont.truetype(str(_font_dir() / font_file), size,
                                    layout_engine=ImageFont.Layout.BASIC)
  return cache[key]


def _draw_glyph(font_file: str, code: int, size: int, stroke: int):
  """The glyph's ink, cropped: a Pillow ``L`` image, or None when blank."""
  from PIL import Image, ImageDraw  # pylint: disable=g-import-not-at-top
  font = _font(font_file, size)
  char = chr(code)
  left, top, right, bottom = font.getbbox(char, stroke_width=stroke)
  pad = 2 + stroke
  canvas = Image.new("L", (right - left + 2 * pad, bottom - top + 2 * pad))
  ImageDraw.Draw(canvas).text((pad - left, pad - top), char, font=font,
                              fill=255, stroke_width=stroke, stroke_fill=255)
  box = canvas.getbbox()
  return None if box is None else canvas.crop(box)


@dataclasses.dataclass(frozen=True)
class _Pose:
  """An affine distortion; the identity places the ink centred."""
  angle: float = 0.0     # degrees, counter-clockwise
  shear: float = 0.0     # x += shear * y
  scale: float = 1.0
  log_aspect: float = 0.0
  shift: tuple[float, float] = (0.0, 0.0)  # fractions of the side


def _place(glyph, side: int, pose: _Pose):
  """Maps the cropped glyph into a ``side`` x ``side`` frame under ``pose``."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  width, height = glyph.size
  fit = min(1.0, _FIT * side / max(width, height))
  sx = pose.scale * fit * math.exp(pose.log_aspect / 2)
  sy = pose.scale * fit * math.exp(-pose.log_aspect / 2)
  theta = math.radians(pose.angle)
  # Image y points down, so a counter-clockwise turn negates the sine.
  rotate = np.array([[math.cos(theta), math.sin(theta)],
                     [-math.sin(theta), math.cos(theta)]])
  linear = rotate @ np.array([[1.0, pose.shear], [0.0, 1.0]]) @ np.diag(
      [sx, sy])
  centre = np.array([width / 2, height / 2])
  corners = np.array([[0, 0], [width, 0], [0, height], [width, height]],
                     float) - centre
  mapped = corners @ linear.T
  extent = (mapped.max(0) - mapped.min(0)).max()
  limit = side * (1 - 2 * _MARGIN)
  if extent > limit:
    linear *= limit / extent
    mapped *= limit / extent
  origin = side / 2 + np.asarray(pose.shift) * side
  low, high = origin + mapped.min(0), origin + mapped.max(0)
  origin += np.maximum(0, _MARGIN * side - low)
  origin -= np.maximum(0, high - (1 - _MARGIN) * side)
  inverse = np.linalg.inv(linear)
  offset = centre - inverse @ origin
  coefficients = (inverse[0, 0], inverse[0, 1], offset[0],
                  inverse[1, 0], inverse[1, 1], offset[1])
  return glyph.transform((side, side), Image.Transform.AFFINE, coefficients,
                         resample=Image.Resampling.BILINEAR)


def _canonical(font_file: str, code: int, image_size: int) -> np.ndarray | None:
  """Undistorted render, ``[image_size, image_size]`` float32 in [0, 1]."""
  side = image_size * OVERSAMPLE
  glyph = _draw_glyph(font_file, code, round(_FONT_SIZE * side), 0)
  if glyph is None:
    return None
  image = _place(glyph, side, _Pose()).reduce(OVERSAMPLE)
  return np.asarray(image, np.float32) / 255.0


def render_class(glyph_class: GlyphClass, num_images: int, *, image_size: int,
                 seed: int) -> np.ndarray:
  """Distorted images of one class, a pure function of its arguments.

  Args:
    glyph_class: the class (from :func:`glyph_classes`).
    num_images: how many images.
    image_size: side in pixels.
    seed: the rendering seed; the stream is
      ``np.random.default_rng([seed, glyph_class.codepoint])``.

  Returns:
    ``[num_images, image_size, image_size]`` uint8, bright ink on a dark
    background.

  Examples:
    >>> g = GlyphClass(0x41, ("DejaVuSans.ttf", "DejaVuSerif.ttf"), (0x41, 0x41))
    >>> images = render_class(g, 3, image_size=16, seed=0)
    >>> images.shape, images.dtype, bool(images.max() > 128)
    ((3, 16, 16), dtype('uint8'), True)
  """
  from PIL import ImageFilter  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng([int(seed), glyph_class.codepoint])
  side = image_size * OVERSAMPLE
  font_size = round(_FONT_SIZE * side)
  max_stroke = max(1, round(0.2 * OVERSAMPLE * image_size / 32))
  glyphs: dict[tuple[int, int], Any] = {}
  images = np.empty((num_images, image_size, image_size), np.uint8)
  for i in range(num_images):
    font_index = int(rng.integers(len(glyph_class.fonts)))
    stroke = int(rng.integers(0, max_stroke + 1))
    pose = _Pose(angle=rng.uniform(-12, 12), shear=rng.uniform(-0.2, 0.2),
                 scale=rng.uniform(0.85, 1.1),
                 log_aspect=rng.uniform(-0.15, 0.15),
                 shift=tuple(rng.uniform(-0.08, 0.08, size=2)))
    blur = rng.uniform(0.0, 0.9)
    ink, background = rng.uniform(0.6, 1.0), rng.uniform(0.0, 0.3)
    noise = rng.uniform(0.01, 0.08)
    key = (font_index, stroke)
    if key not in glyphs:
      glyphs[key] = _draw_glyph(glyph_class.fonts[font_index],
                                glyph_class.codes[font_index], font_size,
                                stroke)
    glyph = glyphs[key]
    if glyph is None:
      raise RuntimeError(f"{glyph_class.name} renders blank in "
                         f"{glyph_class.fonts[font_index]}")
    small = _place(glyph, side, pose).reduce(OVERSAMPLE)
    if blur > 0.05:
      small = small.filter(ImageFilter.GaussianBlur(blur))
    pixels = np.asarray(small, np.float32) / 255.0
    pixels = background + (ink - background) * pixels
    pixels += noise * rng.standard_normal(pixels.shape, np.float32)
    images[i] = np.round(np.clip(pixels, 0.0, 1.0) * 255.0).astype(np.uint8)
  return images


# ----------------------------------------------------------------------------
# The class list.


def _view_font(glyph_class: GlyphClass, view: int) -> tuple[str, int]:
  for font_file in _VIEW_FONTS[view]:
    if font_file in glyph_class.fonts:
      return font_file, glyph_class.codes[glyph_class.fonts.index(font_file)]
  return glyph_class.fonts[0], glyph_class.codes[0]


def _dedup_features(candidates: Sequence[GlyphClass]
                    ) -> tuple[np.ndarray, np.ndarray]:
  """Canonical renders ``[n, 2 views, 32 * 32]`` and a not-blank mask."""
  features = np.zeros((len(candidates), len(_VIEW_FONTS),
                       _CANONICAL_SIZE**2), np.float32)
  ok = np.ones(len(candidates), bool)
  for i, glyph_class in enumerate(candidates):
    for view in range(len(_VIEW_FONTS)):
      image = _canonical(*_view_font(glyph_class, view), _CANONICAL_SIZE)
      if image is None or image.max() < 0.25:
        ok[i] = False
        break
      features[i, view] = image.ravel()
  return features, ok


def _duplicate_pairs(features: np.ndarray, threshold: float,
                     chunk: int = 512) -> dict[int, list[int]]:
  """``{i: [j < i, ...]}``: pairs closer than ``threshold`` in any view.

  A pair that close has norms within a factor ``1 - threshold`` of each
  other (``||a| - |b|| <= |a - b| < threshold * max(|a|, |b|)``), so rows,
  sorted by norm, are compared only with a window of similar norms.
  """
  near: dict[int, list[int]] = collections.defaultdict(list)
  for view in range(features.shape[1]):
    x = features[:, view]
    sq = np.einsum("nd,nd->n", x, x)
    norm = np.sqrt(sq)
    order = np.argsort(norm, kind="stable")
    sorted_norm = norm[order]
    for start in range(0, len(x), chunk):
      rows = order[start:start + chunk]
      low = np.searchsorted(sorted_norm, sorted_norm[start] * (1 - threshold))
      high = np.searchsorted(
          sorted_norm, sorted_norm[min(start + chunk, len(x)) - 1]
          / (1 - threshold), side="right")
      cols = order[low:high]
      dist2 = sq[rows, None] + sq[None, cols] - 2.0 * (x[rows] @ x[cols].T)
      scale2 = (sq[rows, None] + sq[None, cols]) / 2.0
      close = np.maximum(dist2, 0.0) < threshold**2 * scale2
      for r, c in zip(*np.nonzero(close)):
        i, j = int(rows[r]), int(cols[c])
        if j < i:
          near[i].append(j)
  return near


def _deduplicate(features: np.ndarray, threshold: float) -> list[int]:
  """Greedy: positions kept, visiting in order, dropping near a kept one."""
  near = _duplicate_pairs(features, threshold)
  kept: list[int] = []
  is_kept = np.zeros(len(features), bool)
  for i in range(len(features)):
    if not any(is_kept[j] for j in near.get(i, ())):
      kept.append(i)
      is_kept[i] = True
  return kept


@functools.lru_cache(maxsize=1)
def glyph_classes() -> tuple[GlyphClass, ...]:
  """Every available class, in the fixed order :func:`load_glyphs` uses.

  The rules (categories, fonts, deduplication) are in the module docstring.
  The order is a permutation of the code-point order with a fixed seed; it
  depends only on the fonts, that is on the matplotlib version.

  Returns:
    A tuple of :class:`GlyphClass`; ``load_glyphs(num_classes=n)`` uses the
    first ``n``, the first ``ceil(n / 2)`` of them for training under the
    metric protocol.

  Examples:
    >>> classes = glyph_classes()
    >>> len(classes) >= 1000
    True
    >>> names = {g.name for g in classes}
    >>> "U+0041 A" in names, "U+0410 А" in names  # Cyrillic A is a duplicate
    (True, False)
  """
  candidates = _candidates()
  features, ok = _dedup_features(candidates)
  candidates = [g for g, keep in zip(candidates, ok) if keep]
  kept = _deduplicate(features[ok], DUPLICATE_THRESHOLD)
  order = np.random.default_rng(_CLASS_ORDER_SEED).permutation(len(kept))
  return tuple(candidates[kept[i]] for i in order)


# ----------------------------------------------------------------------------
# Loading, with a cache.


def _check_int(value: Any, name: str, minimum: int, why: str = "") -> int:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
    raise ValueError(f"{name} must be an integer, got {value!r}")
  if value < minimum:
    raise ValueError(f"{name} must be >= {minimum}{why}, got {value}")
  return int(value)


def _cache_dir(cache_dir: str | os.PathLike[str] | None) -> pathlib.Path:
  if cache_dir is not None:
    return pathlib.Path(cache_dir).expanduser()
  root = os.environ.get("NNGK_JAX_CACHE")
  if root:
    return pathlib.Path(root).expanduser() / "glyphs"
  return pathlib.Path("~/.cache/nngk_jax/glyphs").expanduser()


def cache_path(*, num_classes: int, images_per_class: int, image_size: int,
               seed: int, cache_dir: str | os.PathLike[str] | None = None
               ) -> pathlib.Path:
  """The ``.npz`` file that caches one rendered pool.

  The name is a hash of the arguments that change the pixels, the module's
  :data:`VERSION` and the matplotlib and Pillow versions. The protocol,
  ``test_fraction`` and ``train_per_class`` only split the pool, so they
  share its file.

  Args:
    num_classes: classes rendered.
    images_per_class: images per class.
    image_size: side in pixels.
    seed: the rendering seed.
    cache_dir: the folder; None: ``$NNGK_JAX_CACHE/glyphs`` when that
      variable is set, else ``~/.cache/nngk_jax/glyphs``.

  Returns:
    ``cache_dir / "glyphs-<hash>.npz"``.

  Examples:
    >>> path = cache_path(num_classes=10, images_per_class=4, image_size=32,
    ...                   seed=0, cache_dir="/tmp/c")
    >>> path.parent.as_posix(), path.name.startswith("glyphs-")
    ('/tmp/c', True)
  """
  key = {"num_classes": int(num_classes),
         "images_per_class": int(images_per_class),
         "image_size": int(image_size), "seed": int(seed), **_versions()}
  digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
  return _cache_dir(cache_dir) / f"glyphs-{digest[:20]}.npz"


def _read_cache(path: pathlib.Path, num_classes: int, images_per_class: int,
                image_size: int) -> tuple[np.ndarray, list[str]] | None:
  """The cached ``(images uint8, class names)``, or None if absent or bad."""
  if not path.exists():
    return None
  try:
    with np.load(path, allow_pickle=False) as stored:
      images = stored["images"]
      names = [str(n) for n in stored["class_names"]]
      version = int(stored["version"])
  except Exception as err:  # pylint: disable=broad-except
    # A damaged file fails in zipfile, zlib or numpy with many error types.
    print(f"nngk_jax.data.glyphs: ignoring unreadable cache {path} ({err})",
          file=sys.stderr)
    return None
  if (version != VERSION or images.dtype != np.uint8
      or images.shape != (num_classes, images_per_class, image_size,
                          image_size) or len(names) != num_classes):
    print(f"nngk_jax.data.glyphs: ignoring mismatched cache {path}",
          file=sys.stderr)
    return None
  return images, names


def _write_cache(path: pathlib.Path, images: np.ndarray,
                 names: Sequence[str]) -> None:
  """Writes atomically (:func:`nngk_jax.workdir.write_atomically`)."""
  path.parent.mkdir(parents=True, exist_ok=True)
  buffer = io.BytesIO()
  np.savez_compressed(buffer, images=images, class_names=np.array(names),
                      version=np.array(VERSION))
  write_atomically(path, buffer.getvalue())


def _render_pool(classes: Sequence[GlyphClass], images_per_class: int,
                 image_size: int, seed: int) -> np.ndarray:
  """``[num_classes, images_per_class, size, size]`` uint8.

  One class at a time: Pillow holds the GIL for most of a glyph's work, so
  threads were slower here. Each class has its own random stream, so
  processes could split the classes without changing the result.
  """
  images = np.empty((len(classes), images_per_class, image_size, image_size),
                    np.uint8)
  for c, glyph_class in enumerate(classes):
    images[c] = render_class(glyph_class, images_per_class,
                             image_size=image_size, seed=seed)
  return images


def _pool(num_classes: int | None, images_per_class: int, image_size: int,
          seed: int, cache_dir) -> tuple[np.ndarray, list[str]]:
  """The rendered pool and class names, from the cache or rendered now."""
  if num_classes is None:
    num_classes = DEFAULT_NUM_CLASSES
  path = cache_path(num_classes=num_classes, images_per_class=images_per_class,
                    image_size=image_size, seed=seed, cache_dir=cache_dir)
  cached = _read_cache(path, num_classes, images_per_class, image_size)
  if cached is not None:
    return cached
  start = time.perf_counter()
  available = glyph_classes()
  if num_classes > len(available):
    raise ValueError(f"num_classes={num_classes} is more than the glyph "
                     f"classes available (maximum {len(available)})")
  print(f"nngk_jax.data.glyphs: rendering {num_classes} classes x "
        f"{images_per_class} images at {image_size}x{image_size} into "
        f"{path} ...", end="", file=sys.stderr, flush=True)
  classes = available[:num_classes]
  images = _render_pool(classes, images_per_class, image_size, seed)
  names = [g.name for g in classes]
  _write_cache(path, images, names)
  print(f" done in {time.perf_counter() - start:.1f} s", file=sys.stderr)
  return images, names


def load_glyphs(*, protocol: str = "metric", num_classes: int | None = None,
                images_per_class: int = 16, image_size: int = 32,
                seed: int = 0, test_fraction: float = 0.5,
                train_per_class: int | None = None,
                cache_dir: str | os.PathLike[str] | None = None
                ) -> splits.Dataset:
  """Rendered characters: one class per character, ``images_per_class`` each.

  The classes are the first ``num_classes`` of :func:`glyph_classes` (a
  fixed shuffle; how they are chosen and drawn is in the module docstring).
  The first call renders them (10-12 s for the default size on two
  cores, a line on stderr says so) and caches the ``uint8`` pool in
  :func:`cache_path`; later calls read it back (a fraction of a second). A
  cache file that cannot be read is rendered again.

  Args:
    protocol: ``"metric"``: the first ``ceil(num_classes / 2)`` classes
      train, the rest test, each split numbering its classes ``0..C-1``.
      ``"classification"``: a stratified split of every class.
    num_classes: how many classes; None: :data:`DEFAULT_NUM_CLASSES`. More
      than ``len(glyph_classes())`` raises ``ValueError``.
    images_per_class: images rendered per class (at least 2 for the metric
      protocol, so that a test image has a same-class neighbour).
    image_size: side in pixels, at least 8.
    seed: seeds the rendering, the stratified split and the few-shot choice.
      The classes and their halves do not depend on it.
    test_fraction: share of each class sent to test (classification only).
    train_per_class: if given, keep only this many training images per class
      (few-shot); the test split is unchanged.
    cache_dir: where the pool is cached; see :func:`cache_path`.

  Returns:
    A :class:`~nngk_jax.data.splits.Dataset` named ``"glyphs"``: images
    ``[N, image_size, image_size, 1]`` float32 in ``[-1, 1]``, class names
    like ``"U+0041 A"``.

  Raises:
    ValueError: a bad argument; the message names it.

  Examples:
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...   ds = load_glyphs(num_classes=6, images_per_class=3, cache_dir=tmp)
    >>> ds.train.images.shape, ds.train.num_classes, ds.test.num_classes
    ((9, 32, 32, 1), 3, 3)
    >>> set(ds.train.class_names) & set(ds.test.class_names)
    set()
  """
  if protocol not in splits.PROTOCOLS:
    raise ValueError(f"protocol must be one of {splits.PROTOCOLS}, got "
                     f"{protocol!r}")
  if num_classes is not None:
    _check_int(num_classes, "num_classes", 2)
  minimum_images = 2 if protocol == "metric" else 1
  images_per_class = _check_int(
      images_per_class, "images_per_class", minimum_images,
      " under the metric protocol" if protocol == "metric" else "")
  image_size = _check_int(image_size, "image_size", _MIN_IMAGE_SIZE)
  seed = _check_int(seed, "seed", 0)
  if protocol == "classification":
    splits.check_fraction(test_fraction)
  if train_per_class is not None:
    checks.positive_int("train_per_class", train_per_class)
    if train_per_class > images_per_class:
      raise ValueError(f"train_per_class={train_per_class} is more than "
                       f"images_per_class={images_per_class}")
  pool, names = _pool(num_classes, images_per_class, image_size, seed,
                      cache_dir)
  num, per_class = pool.shape[:2]
  images = (pool.reshape(num * per_class, image_size, image_size, 1)
            .astype(np.float32) / 127.5 - 1.0)
  labels = np.repeat(np.arange(num), per_class)
  return splits.build_dataset(
      "glyphs", images, labels, names, protocol=protocol,
      test_fraction=test_fraction, seed=seed, train_per_class=train_per_class)


# ----------------------------------------------------------------------------
# A picture of the data.


def save_preview(path: str | os.PathLike[str], *, num_classes: int = 12,
                 samples_per_class: int = 8, image_size: int = 32,
                 seed: int = 0, first_class: int = 0) -> pathlib.Path:
  """Saves a grid of samples as a PNG: a row per class, labelled.

  Args:
    path: the PNG to write (parent folders are created).
    num_classes: rows: classes ``first_class .. first_class + num_classes``
      of :func:`glyph_classes`.
    samples_per_class: columns.
    image_size: side of each image in pixels.
    seed: the rendering seed.
    first_class: position of the first row's class in :func:`glyph_classes`.

  Returns:
    The path written.

  Examples:
    >>> import pathlib, tempfile
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...   out = save_preview(pathlib.Path(tmp) / "g.png", num_classes=2,
    ...                      samples_per_class=3)
    ...   out.stat().st_size > 0
    True
  """
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  classes = glyph_classes()[first_class:first_class + num_classes]
  fig = Figure(figsize=(0.8 * samples_per_class + 1.6, 0.8 * len(classes)))
  axes = fig.subplots(len(classes), samples_per_class, squeeze=False)
  for row, glyph_class in enumerate(classes):
    images = render_class(glyph_class, samples_per_class,
                          image_size=image_size, seed=seed)
    for col in range(samples_per_class):
      ax = axes[row, col]
      ax.imshow(images[col], cmap="gray", vmin=0, vmax=255)
      ax.set_xticks([])
      ax.set_yticks([])
    axes[row, 0].set_ylabel(
        glyph_class.name, rotation=0, ha="right", va="center", fontsize=9,
        family=["DejaVu Sans", "STIXGeneral", "DejaVu Serif"])
  fig.suptitle(f"nngk_jax.data.glyphs: {len(glyph_classes())} classes "
               f"({len(classes)} shown, {samples_per_class} samples each)")
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(path, dpi=100, bbox_inches="tight")
  return path

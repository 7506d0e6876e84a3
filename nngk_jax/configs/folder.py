r"""NNGK on your own images: one sub-folder per class.

Run:      make train DATASET=folder:/path/to/images
          python -m nngk_jax.train --config nngk_jax/configs/folder.py \
              --dataset folder:/path/to/images --workdir runs/mine
Options:  data.class_disjoint=True trains on the first half of the sorted
          classes and tests retrieval on the rest; otherwise a stratified
          per-class split for classification. data.image_size sets the
          square size images are resized to (in memory). Every file's
          header is checked before training: unreadable files are all
          named in one error, or with data.skip_unreadable=True left out
          and listed in unreadable_files.txt in the work directory.
Defaults: those of nngk_jax/configs/glyphs.py (conv4 backbone, NNGK
          settings chosen on the glyph benchmark; docs/results.md).
Time:     depends on the folder; conv4 trains a few hundred images/s on a
          2-core CPU at 32x32.
"""

from nngk_jax.configs import glyphs


def get_config():
  config = glyphs.get_config()  # conv4, the measured small-image defaults
  config.dataset = "folder:"  # the path comes from --dataset folder:PATH
  config.data = {"image_size": 32, "class_disjoint": False,
                 "test_fraction": 0.5, "seed": 0, "skip_unreadable": False}
  return config

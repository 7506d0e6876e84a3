r"""NNGK on scikit-learn's bundled digits, metric-learning protocol.

Train on digit classes 0-4, test retrieval on the unseen classes 5-9.

A quick test set, not a benchmark: its 8x8 images are so easy that raw
pixels already retrieve well (R@1 0.99, MAP@R 0.61 on classes 5-9), and the
learned embedding does not beat them (R@1 ~0.94-0.96, MAP@R ~0.48; see
docs/results.md). The benchmark that shows what a learned embedding adds is
the glyph set (nngk_jax/configs/glyphs.py, the default of `make train`).
Other configs start from this one and override what they need.

Run:      make train DATASET=digits
          python -m nngk_jax.train --config nngk_jax/configs/digits.py \
              --workdir runs/digits
Time:     about a minute on a 2-core CPU. Its 901 centres take the exact
          graph (graph_backend "auto"): no PyNNDescent, no numba compilation.
Expected: R@1 ~0.95, MAP@R ~0.48, below raw pixels (0.99 / 0.61), which the
          run prints beside it.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.dataset = "digits"
  # Passed to nngk_jax.data.load_dataset(dataset, **data).
  config.data = ml_collections.ConfigDict(
      {"protocol": "metric", "seed": 0})
  config.objective = "nngk"  # or "softmax": see nngk_jax.objectives

  config.model = ml_collections.ConfigDict()
  config.model.backbone = "small_cnn"  # see nngk_jax.models.BACKBONES
  config.model.backbone_kwargs = ml_collections.ConfigDict(
      {"channels": (32, 64, 128)})
  config.model.embed_dim = 32
  config.model.normalize = False  # L2-normalise embeddings (not in the paper)

  config.nngk = ml_collections.ConfigDict()
  config.nngk.k = 32              # neighbours per example (K)
  config.nngk.sigma = 0.25        # kernel width (embeddings are not normalised)
  config.nngk.refresh_every = 1   # epochs between centre refresh + rebuild
  config.nngk.graph_backend = "auto"  # exact up to 30k centres, then "pynndescent"
  # Rebuild the graph after a refresh in a worker thread, training on with
  # the previous one until it is swapped in at a step boundary: "auto" does
  # so with PyNNDescent (seconds per build) when the step runs on a GPU or
  # TPU; on a CPU the thread slows the step more than it hides.
  config.nngk.background_graph = "auto"
  config.nngk.num_same_class = 0  # nearest same-class centres appended
  config.nngk.learn_weights = True
  config.nngk.weights_learning_rate = 1e-3
  # Each step moves the batch's own centres toward their new embeddings
  # (m * old + (1 - m) * new); None keeps the paper's weak update.
  config.nngk.batch_centre_momentum = None
  # An example with no same-class neighbour: "authors" (its loss and push
  # away from its neighbours, as the authors' code) or "skip" (no loss).
  config.nngk.no_positive = "authors"

  # objective="impostor" (nngk_jax.impostor): impostor networks' centres,
  # with the kernel width, K and graph of config.nngk above.
  config.impostor = ml_collections.ConfigDict()
  config.impostor.variant = "loose"    # "tied", "fixed" or "loose"
  config.impostor.tie = 1.0            # lambda of the loose L2 tie (inf: tied)
  config.impostor.learning_rate = 1e-3  # of the loose centres
  config.impostor.optimizer = "adam"   # of the loose centres: "adam" or "sgd"
  config.impostor.sparse = True        # update only the rows a step touches

  config.optimizer = ml_collections.ConfigDict()
  config.optimizer.name = "adam"   # any optax optimizer taking learning_rate
  config.optimizer.learning_rate = 1e-3

  # Per-loss settings, read by nngk_jax.objectives (used when selected).
  config.losses = ml_collections.ConfigDict()

  # Data parallel over the local devices (nngk_jax.parallel): mesh.data
  # devices (None: all of them), mesh.fsdp to split the parameters too.
  # On a CPU the command line first splits it into mesh.cpu_devices devices
  # (None: one per core, as the batch allows; parallel.split_cpu). mesh.bank:
  # the bank's arrays split by rows over the devices ("rows"), whole on
  # each ("replicated"), or "auto" (whole on CPU devices, rows elsewhere).
  config.mesh = ml_collections.ConfigDict(
      {"data": None, "fsdp": 1, "cpu_devices": None, "bank": "auto"})

  config.batch_size = 32
  config.sampler = None            # None: the objective's; "random" or "class_balanced"
  config.samples_per_class = 8     # m, for m-per-class batches
  config.num_epochs = 15
  config.seed = 0
  # Also checkpoint every this many steps within an epoch (0: only at the
  # end of each epoch, or on Ctrl-C / SIGTERM); a resumed run continues from
  # that step exactly. For long epochs (ResNet-50 on SOP on one GPU).
  config.checkpoint_every_steps = 0

  config.eval_every = 1            # epochs between evaluations
  # conv4's evaluation pass on one device of the 2-core CPU ran 5,789 img/s
  # at batch 128 against 4,150 at 256 (32x32 grey; docs/benchmarks.md): the
  # first block's activations fit the cache. Split over one device per core
  # (the command line's default) 256 does best: 128 rows per device, 5,732
  # img/s against 5,191 at 128. The GPU recipes set their own.
  config.eval_batch_size = 256
  config.recall_ks = (1, 2, 4, 8)
  config.nmi = True
  config.nmi_method = "auto"       # k-means: scikit-learn up to 200 classes, then JAX
  config.eval_search = "exact"     # or "pynndescent" (reports its search_recall)
  config.classifier_k = 32         # test-time neighbours of the kernel classifier
  config.progress = True           # progress bar on the terminal
  return config

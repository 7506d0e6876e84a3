# nngk-jax: every target creates the virtual environment when it is missing,
# so a fresh machine needs only `make train` and `make test`.
PYTHON_SYSTEM ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DATASET ?= glyphs
WORKDIR ?= runs/$(subst /,_,$(subst :,_,$(DATASET)))$(if $(RECIPE),_$(RECIPE))
ARGS ?=
# Benchmarks (cub, cars196, sop): RECIPE=paper (default) or strong.
RECIPE ?=
# $(call q,VALUE): VALUE single-quoted for the shell, a ' inside kept (as '\'').
q = '$(subst ','\'',$(1))'
# Numba's on-disk cache: PyNNDescent's import-time kernels and search are
# read from here by later processes, but its graph build (nn_descent) is
# compiled again in every process (~30 s; docs/reliability.md).
export NUMBA_CACHE_DIR ?= $(CURDIR)/.numba_cache

.PHONY: venv train test test-fast bench compare notebook clean data search continual

$(VENV)/.installed: requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON_SYSTEM) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $@

venv: $(VENV)/.installed

train: venv
	$(PY) -m nngk_jax.train --dataset $(call q,$(DATASET)) --workdir $(call q,$(WORKDIR)) $(if $(RECIPE),--recipe $(call q,$(RECIPE))) $(ARGS)

test: venv
	$(PY) -m pytest -q -n 2 --durations=15 nngk_jax tests

test-fast: venv
	$(PY) -m pytest -q -n 2 -m "not slow" nngk_jax tests

# `make search QUERY="a.png b.png"`: each query image's nearest training
# images under the run in $(RUN) (default: $(WORKDIR)), its kernel-vote class,
# and a grid of them in $(OUT) (nngk_jax/search.py; ARGS passes its options,
# e.g. ARGS="--folder photos/" to search an image folder instead).
RUN ?= $(WORKDIR)
QUERY ?=
K ?= 8
OUT ?= $(RUN)/search.png

search: venv
	$(PY) -m nngk_jax.search --run $(call q,$(RUN)) $(foreach f,$(QUERY),--query $(call q,$(f))) --k $(K) --out $(call q,$(OUT)) $(ARGS)

# `make continual DATASET=split_glyphs`: continual NNGK (seed 002 Algorithm 1)
# against fine-tuning, EWC, the static NNGK bank and joint training, over
# seeds; the table and plots go into docs/results.md
# (experiments/continual_results.py; ARGS passes its options, e.g.
# ARGS="--seeds 0 --variants"). DATASET must name a task stream
# (split_digits, split_glyphs, split_cifar10, split_cifar100); any other
# value runs split_glyphs.
CONTINUAL_STREAM = $(if $(filter split_%,$(DATASET)),$(DATASET),split_glyphs)

continual: venv
	$(PY) experiments/continual_results.py --stream $(call q,$(CONTINUAL_STREAM)) --results-doc docs/results.md $(ARGS)

bench: venv
	$(PY) experiments/bench.py $(ARGS)

compare: venv
	$(PY) experiments/compare.py --dataset $(call q,$(DATASET)) --results-doc docs/results.md $(ARGS)

# Prepares a TFDS benchmark (cub, cars196, sop; cifar10, cifar100 for the
# task streams split_cifar10 / split_cifar100) for training: installs the
# optional requirements-data.txt (TensorFlow) into $(VENV), then downloads and
# prepares it under $(TFDS_DATA_DIR) (default ~/tensorflow_datasets). Cars196
# needs its files placed by hand first: see docs/data.md.
data: venv
	@case $(call q,$(DATASET)) in \
	  cub|cars196|sop|cifar10|cifar100) ;; \
	  glyphs|digits|folder:*|split_digits|split_glyphs) echo "make data: DATASET=$(DATASET) needs no preparation; prepare one of cub, cars196, sop, cifar10, cifar100, e.g. make data DATASET=cub" >&2; exit 2 ;; \
	  split_cifar10) echo "make data: the task stream split_cifar10 reads cifar10: make data DATASET=cifar10" >&2; exit 2 ;; \
	  split_cifar100) echo "make data: the task stream split_cifar100 reads cifar10 and cifar100: make data DATASET=cifar10 and make data DATASET=cifar100" >&2; exit 2 ;; \
	  *) echo "make data: unknown DATASET=$(DATASET); prepare one of cub, cars196, sop, cifar10, cifar100, e.g. make data DATASET=cub" >&2; exit 2 ;; \
	esac
	$(PY) -m pip install -q -r requirements-data.txt
	$(PY) -m nngk_jax.data.prepare $(call q,$(DATASET)) $(if $(TFDS_DATA_DIR),--data-dir $(call q,$(TFDS_DATA_DIR)))

clean:
	rm -rf runs .pytest_cache .numba_cache

# `make peer`: pytorch-metric-learning beside nngk-jax, same backbone (conv4),
# losses, budget and seeds, in one table: docs/peer.md and docs/peer.json
# (experiments/peer.py; ARGS passes its options, e.g. ARGS="--seeds 0
# --epochs 2"). PML runs in its own virtual environment $(PEER_VENV) (torch,
# no JAX): requirements-peer.txt, installed once. PyPI's Linux torch carries
# the CUDA libraries (~4 GB), so the CPU-only build $(PEER_TORCH_CPU) is tried
# first (found where pip's find-links has it).
PEER_VENV ?= .venv-peer
PEER_PY := $(PEER_VENV)/bin/python
PEER_TORCH_CPU ?= torch==2.13.0+cpu

.PHONY: peer

$(PEER_VENV)/.installed: requirements-peer.txt
	test -x $(PEER_PY) || $(PYTHON_SYSTEM) -m venv $(PEER_VENV)
	$(PEER_PY) -m pip install -q --upgrade pip
	$(PEER_PY) -m pip install -q '$(PEER_TORCH_CPU)' || { echo "make peer: $(PEER_TORCH_CPU) not found; installing PyPI's torch (with its CUDA libraries, ~4 GB)" >&2; }
	$(PEER_PY) -m pip install -q -r requirements-peer.txt
	touch $@

peer: venv $(PEER_VENV)/.installed
	$(PY) experiments/peer.py --dataset $(call q,$(DATASET)) $(ARGS)

# `make biased`: the biased network (nngk_jax/biased.py) against the plain
# network on digits and the glyph classification split, seeds 0 and 1: the
# early exit's accuracy, skipped share, FLOPs and wall time by gate threshold,
# and the design alternatives; tables into docs/results.md ("Biased
# network"), the curve into docs/biased_tradeoff.png
# (experiments/biased_results.py; ARGS passes its options, e.g.
# ARGS="--datasets digits --seeds 0").
.PHONY: biased

biased: venv
	$(PY) experiments/biased_results.py --datasets digits glyphs --seeds 0 1 --alternatives --workdir runs/biased --results-doc docs/results.md --figure docs/biased_tradeoff.png $(ARGS)

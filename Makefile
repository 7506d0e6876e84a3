# nngk-jax: every target creates the virtual environment when it is missing,
# so a fresh machine needs only `make train` and `make test`.
PYTHON_SYSTEM ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DATASET ?= digits
WORKDIR ?= runs/$(subst /,_,$(subst :,_,$(DATASET)))$(if $(RECIPE),_$(RECIPE))
ARGS ?=
# Benchmarks (cub, cars196, sop): RECIPE=paper (default) or strong.
RECIPE ?=
# PyNNDescent's numba kernels are cached here across processes.
export NUMBA_CACHE_DIR ?= $(CURDIR)/.numba_cache

.PHONY: venv train test test-fast bench compare notebook clean data

$(VENV)/.installed: requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON_SYSTEM) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $@

venv: $(VENV)/.installed

train: venv
	$(PY) -m nngk_jax.train --dataset '$(DATASET)' --workdir '$(WORKDIR)' $(if $(RECIPE),--recipe '$(RECIPE)') $(ARGS)

test: venv
	$(PY) -m pytest -q -n 2 --durations=15 nngk_jax tests

test-fast: venv
	$(PY) -m pytest -q -n 2 -m "not slow" nngk_jax tests

bench: venv
	$(PY) experiments/bench.py $(ARGS)

compare: venv
	$(PY) experiments/compare.py --dataset '$(DATASET)' --results-doc docs/results.md $(ARGS)

# Prepares a TFDS benchmark (cub, cars196, sop) for training: installs the
# optional requirements-data.txt (TensorFlow) into $(VENV), then downloads and
# prepares it under $(TFDS_DATA_DIR) (default ~/tensorflow_datasets). Cars196
# needs its files placed by hand first: see docs/data.md.
data: venv
	@case '$(DATASET)' in \
	  cub|cars196|sop) ;; \
	  digits|folder:*) echo "make data: DATASET=$(DATASET) needs no preparation; prepare one of cub, cars196, sop, e.g. make data DATASET=cub" >&2; exit 2 ;; \
	  *) echo "make data: unknown DATASET=$(DATASET); prepare one of cub, cars196, sop, e.g. make data DATASET=cub" >&2; exit 2 ;; \
	esac
	$(PY) -m pip install -q -r requirements-data.txt
	$(PY) -m nngk_jax.prepare '$(DATASET)' $(if $(TFDS_DATA_DIR),--data-dir '$(TFDS_DATA_DIR)')

clean:
	rm -rf runs .pytest_cache .numba_cache

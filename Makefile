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

.PHONY: venv train test test-fast bench compare notebook clean

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

clean:
	rm -rf runs .pytest_cache .numba_cache

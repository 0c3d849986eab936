# cardiofm — every developer and CI entry point.
#   make demo   run the demo on a synthetic federation (sets everything up first)
#   make test   lint, type-check and run every test (sets everything up first)
# Both are idempotent: environments are rebuilt only when the files that define them change.

SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SEED ?= 0
SITES ?= 3
CASES ?= 6
PYTEST_ARGS ?=

export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: help setup demo test lint typecheck unit bench clean

help:
	@echo "make demo   - generate a synthetic federation and print its summary (SEED=, SITES=, CASES=)"
	@echo "make test   - lint, type-check and run all tests"
	@echo "make bench  - run the benchmarks in bench/"
	@echo "make clean  - remove environments and generated output"

# The processing/trainer environment: the package with its pinned dependencies. torch is pinned to
# 2.13.0 in the same command (an unpinned torch would pull a multi-GB CUDA build).
$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "$(PYTHON) not found: install Python 3.11 or run make PYTHON=/path/to/python3.11"; exit 1; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet "torch==2.13.0" -e ".[train,dev]"
	@touch $@

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/cardiofm demo --out demo-output --seed $(SEED) --sites $(SITES) --cases $(CASES)

lint: $(STAMP)
	$(BIN)/ruff check cardiofm tests bench
	$(BIN)/ruff format --check cardiofm tests bench

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test: lint typecheck unit

bench: $(STAMP)
	$(BIN)/python bench/phantoms.py

clean:
	rm -rf $(VENV) .venvs demo-output .mypy_cache .ruff_cache .pytest_cache

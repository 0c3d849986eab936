# cardiofm — every developer and CI entry point.
#   make demo   run the demo on a synthetic federation (sets everything up first)
#   make test   lint, type-check and run every test (sets everything up first)
# Both are idempotent: environments are rebuilt only when the files that define them change.

SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SEG_VENV := .venvs/segmenter
SEG_STAMP := $(SEG_VENV)/.installed
# The Airflow environment (Kaapana 0.6 runs Airflow 2.11 on Python 3.12): the DAGs, the operators, the contracts.
AF_VENV := .venvs/airflow
AF_STAMP := $(AF_VENV)/.installed
AF_PYTHON ?= $(shell for p in python3.12 $$(pyenv root 2>/dev/null)/versions/3.12*/bin/python3.12; do \
  "$$p" -c 'import sys; assert sys.version_info[:2] == (3, 12)' >/dev/null 2>&1 && { echo "$$p"; break; }; done)
# Debian packages the tests rely on: Orthanc (a real PACS, DICOMweb and DIMSE) for integration tests,
# nginx (the coordinator's allowlisting reverse proxy in front of the Flower SuperLink), Chromium (the demo
# report's render test, headless).
APT_PACKAGES := orthanc orthanc-dicomweb nginx chromium
APT_STAMP := .venvs/.apt-installed
SEED ?= 0
SITES ?= 3
CASES ?= 6
PYTEST_ARGS ?=

export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: help setup deps segmenter airflow kaapana-files kaapana-check demo test lint typecheck unit dag-tests bench clean

help:
	@echo "make demo   - synthetic hospitals, the federated chain on loopback, evaluation tables (SEED=, SITES=, CASES=)"
	@echo "make test   - lint, type-check and run all tests"
	@echo "make bench  - run the benchmarks in bench/"
	@echo "make clean  - remove environments and generated output"

# The processing/trainer environment: the package with its pinned dependencies. torch is pinned to
# 2.13.0 in the same command (an unpinned torch would pull a multi-GB CUDA build).
$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "$(PYTHON) not found: install Python 3.11 or run make PYTHON=/path/to/python3.11"; exit 1; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet "torch==2.13.0" -e ".[train,federated,report,dev]"
	@touch $@

setup: $(STAMP)

# The segmenter image profile: TotalSegmentator in its own environment (its dependencies must not
# enter .venv). torch is pinned inside requirements/segmenter.txt.
$(SEG_STAMP): requirements/segmenter.txt pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "$(PYTHON) not found: install Python 3.11 or run make PYTHON=/path/to/python3.11"; exit 1; }
	@test -x $(SEG_VENV)/bin/python || $(PYTHON) -m venv $(SEG_VENV)
	$(SEG_VENV)/bin/python -m pip install --quiet -r requirements/segmenter.txt
	$(SEG_VENV)/bin/python -m pip install --quiet --no-deps -e .
	@touch $@

segmenter: $(SEG_STAMP)

$(AF_STAMP): requirements/airflow.txt
	@test -n "$(AF_PYTHON)" || { echo "Python 3.12 not found (Kaapana's Airflow runs on it): install it or run make AF_PYTHON=/path/to/python3.12"; exit 1; }
	@test -x $(AF_VENV)/bin/python || $(AF_PYTHON) -m venv $(AF_VENV)
	$(AF_VENV)/bin/python -m pip install --quiet -r requirements/airflow.txt
	@touch $@

airflow: $(AF_STAMP)

# A separate check (not part of `make test`: it needs a Kaapana 0.6.0 source tree): the DAGs and the kaapana
# backend under Kaapana's real Airflow plugin. make kaapana-check KAAPANA_SRC=/path/to/kaapana (tests/kaapana/README.md)
KP_VENV := .venvs/kaapana
kaapana-check:
	@test -n "$(KAAPANA_SRC)" -a -d "$(KAAPANA_SRC)/data-processing/kaapana-plugin" || { echo "set KAAPANA_SRC to a Kaapana 0.6.0 source tree"; exit 2; }
	@test -n "$(AF_PYTHON)" || { echo "Python 3.12 not found: run make AF_PYTHON=/path/to/python3.12"; exit 1; }
	@test -x $(KP_VENV)/bin/python || $(AF_PYTHON) -m venv $(KP_VENV)
	$(KP_VENV)/bin/python -m pip install --quiet "apache-airflow[cncf.kubernetes]==2.11.0" apache-airflow-providers-cncf-kubernetes \
	  Flask-Admin==1.6.1 kubernetes==30.1.0 pytest -c "$(KAAPANA_SRC)/services/flow/airflow/docker/files/constraints-3.12.txt"
	$(KP_VENV)/bin/python -m pip install --quiet "$(KAAPANA_SRC)/data-processing/base-images/base-python-cpu/files/kaapana_python" \
	  "$(KAAPANA_SRC)/data-processing/base-images/base-python-cpu/files/kaapana_federated" \
	  minio==7.2.10 pydicom==3.0.1 pint==0.24.4 typer docker==7.1.0 python-dotenv==1.0.1
	$(KP_VENV)/bin/python -m pip install --quiet --no-deps "$(KAAPANA_SRC)/lib/task_api" "$(KAAPANA_SRC)/lib/kaapana_containers"
	KAAPANA_SRC=$(KAAPANA_SRC) $(KP_VENV)/bin/python -m pytest -c tests/kaapana/pytest.ini tests/kaapana

# What the Kaapana extension's DAG-installer image copies (extensions/cardiofm-workflow/docker/files/).
kaapana-files:
	$(PYTHON) extensions/cardiofm-workflow/stage_files.py

# Debian packages, installed only when missing (needs root or sudo, as on CI); checked again when the list changes.
$(APT_STAMP): Makefile
	@missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  echo "installing Debian packages: $$missing"; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi
	@mkdir -p $(dir $@) && touch $@

deps: $(APT_STAMP)

# The demo's coordinator runs the allowlisting proxy (Debian's nginx, from the Debian packages above).
# Airflow runs each site's preparation and pseudo-labelling as its DAG (local backend), as a clinic admin triggers them.
demo: $(STAMP) $(APT_STAMP) $(AF_STAMP)
	$(BIN)/cardiofm demo --out demo-output --seed $(SEED) --sites $(SITES) --cases $(CASES) --airflow-python $(AF_VENV)/bin/python

lint: $(STAMP)
	$(BIN)/ruff check cardiofm operators dags extensions tests bench
	$(BIN)/ruff format --check cardiofm operators dags extensions tests bench

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP) $(SEG_STAMP) $(APT_STAMP) $(AF_STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# DAG integrity and the operator contract, inside the Airflow environment (its own pytest config, so the
# package tests' fixtures, which need cardiofm's full dependencies, are not loaded there).
dag-tests: $(STAMP) $(AF_STAMP)
	$(AF_VENV)/bin/python -m pytest -c tests/airflow/pytest.ini tests/airflow $(PYTEST_ARGS)

test: lint typecheck dag-tests unit

bench: $(STAMP)
	$(BIN)/python bench/phantoms.py
	$(BIN)/python bench/prepare.py small 4
	$(BIN)/python bench/prepare.py full 2
	$(BIN)/python bench/train_throughput.py --model teacher
	$(BIN)/python bench/predict.py --profile demo --size full --cts 3

clean:
	rm -rf $(VENV) .venvs demo-output .mypy_cache .ruff_cache .pytest_cache

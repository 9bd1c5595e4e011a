# driftloop: drift-triggered retraining on one machine (embedded default) or on Kubernetes.
# `make run` starts the embedded stack, `make test` runs every test. See README.md.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
UV_VERSION := 0.13.9

# Pipeline parameters for `make retrain` (empty = the pipeline's default).
DATA_URI ?=
MODEL_NAME ?=
MIN_ACCURACY ?=
DEPLOY_TARGET ?=
LABEL_COLUMN ?=
FEEDBACK_URL ?=
PYTEST_ARGS ?=

.PHONY: help install lock compile retrain run stop status lint format test test-dag-e2e e2e bench k8s clean-stack mlflow

help: ## list the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

install: $(INSTALLED) ## create .venv from the lock file (Python 3.11) and install the project into it

$(INSTALLED): requirements.lock pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found; install Python 3.11 or pass PYTHON=/path/to/python3.11"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)
	@# byte-code compiled once here (~35 s): with PYTHONDONTWRITEBYTECODE set, as on these machines,
	@# every process would otherwise compile every module it imports, every time (import mlflow 7.5 -> 2.6 s)
	$(VENV)/bin/uv pip sync --compile-bytecode --python $(PY) requirements.lock
	$(VENV)/bin/uv pip install --python $(PY) --no-deps -e .
	@# and the project's own modules, which the editable install imports from this checkout
	$(PY) -m compileall -q -j 0 airflow_kfp_provider driftloop kfp_components serving stack dags bench >/dev/null
	@touch $(INSTALLED)

lock: ## re-resolve requirements.txt into requirements.lock (needs network)
	$(VENV)/bin/uv pip compile requirements.txt --python-version 3.11 -o requirements.lock

compile: $(INSTALLED) ## compile the KFP pipeline to kfp_components/retrain_pipeline.yaml
	$(PY) -m kfp_components.compile

retrain: $(INSTALLED) ## run the compiled pipeline once on the embedded KFP runner
	$(PY) -m stack retrain \
	  $(if $(DATA_URI),--param data_uri=$(DATA_URI)) \
	  $(if $(MODEL_NAME),--param model_name=$(MODEL_NAME)) \
	  $(if $(MIN_ACCURACY),--param min_accuracy=$(MIN_ACCURACY)) \
	  $(if $(DEPLOY_TARGET),--param deploy_target=$(DEPLOY_TARGET)) \
	  $(if $(LABEL_COLUMN),--param label_column=$(LABEL_COLUMN)) \
	  $(if $(FEEDBACK_URL),--param feedback_url=$(FEEDBACK_URL))

mlflow: $(INSTALLED) ## start only the MLflow server of the embedded stack
	$(PY) -m stack run --only mlflow

run: $(INSTALLED) ## start the whole embedded stack in the background and wait until it is healthy
	$(PY) -m stack run

stop: ## stop every process of the embedded stack (data is kept)
	@if [ -x $(PY) ]; then $(PY) -m stack stop; else echo "no .venv: nothing was started by make run"; fi

status: ## show the health of each part of the embedded stack
	@if [ -x $(PY) ]; then $(PY) -m stack status; else echo "no .venv: run make install (or make run)"; fi

clean-stack: stop ## stop the stack and delete all its data under .stack/
	rm -rf .stack

lint: $(INSTALLED) ## ruff (lint and format check) and mypy (strict on the provider, serving, driftloop)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

format: $(INSTALLED) ## apply ruff's fixes and formatting
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

test: lint ## lint, then run the whole test suite (starts and stops its own services)
	$(PY) -m pytest $(PYTEST_ARGS)

test-dag-e2e: $(INSTALLED) ## opt-in: dag.test() of drift_retrain against real MLflow, gunicorn and the local runner (~5-10 min)
	DRIFT_RETRAIN_E2E=1 $(PY) -m pytest tests/dags/test_drift_retrain_e2e.py $(PYTEST_ARGS)

e2e: $(INSTALLED) ## prove the drift-to-new-model loop against the running stack (make run first)
	$(PY) -m stack e2e

bench: $(INSTALLED) ## benchmarks; writes bench/results/
	$(PY) -m bench

k8s: $(INSTALLED) ## render the Kubernetes deployment into build/k8s/, validate it and check the wiring
	$(PY) -m k8s

# `make run` runs the product; `make test` runs the checks. Both create .venv on first use.
SHELL := /bin/bash
# The first Python 3.11+ found (pyenv shims may name versions that are not installed).
PYTHON ?= $(shell for p in python3.13 python3.12 python3.11 python3; do \
	$$p -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null && { echo $$p; break; }; done)
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test bench lint format stop-services clean-data

run: $(VENV)/.runtime-installed
	$(BIN)/python manage.py run

test: $(VENV)/.dev-installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest

# Measure the telemetry ingest on this machine (docs/benchmarks.md).
bench: $(VENV)/.runtime-installed
	$(BIN)/python manage.py bench_ingest

lint: $(VENV)/.dev-installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(VENV)/.dev-installed
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

$(BIN)/python:
	@test -n "$(PYTHON)" || { echo "Aegis needs Python 3.11 or newer: install it or set PYTHON=..."; exit 1; }
	$(PYTHON) -m venv $(VENV)

$(VENV)/.runtime-installed: requirements.txt $(BIN)/python
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements.txt
	touch $@

$(VENV)/.dev-installed: requirements-dev.txt requirements.txt $(BIN)/python
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $(VENV)/.runtime-installed $@

# Stop embedded servers left behind by a launcher that was killed with SIGKILL.
stop-services: $(VENV)/.runtime-installed
	$(BIN)/python -m aegis.embedded stop

# Delete the embedded servers' data (./var): the next `make run` starts from scratch.
clean-data: stop-services
	rm -rf var

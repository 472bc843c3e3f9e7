# Two commands do all the set-up on a fresh machine with Python 3.11+: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip
# llama-cpp-python compiles from source once (several minutes); pip caches the wheel afterwards.
export CMAKE_BUILD_PARALLEL_LEVEL ?= $(shell nproc 2>/dev/null || echo 2)
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: run test lint bench constraints clean

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Parley needs Python 3.11 or newer")'
	$(PYTHON) -m venv $(VENV)

# Stamps record what is installed, so a second `make` skips the install entirely.
$(VENV)/.run-installed: pyproject.toml constraints.txt | $(BIN)/python
	$(PIP) install -q -c constraints.txt -e ".[local]"
	@touch $@

$(VENV)/.test-installed: pyproject.toml constraints.txt | $(BIN)/python
	$(PIP) install -q -c constraints.txt -e ".[local,dev]"
	@touch $@ $(VENV)/.run-installed

run: $(VENV)/.run-installed
	$(BIN)/parley run

lint: $(VENV)/.test-installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: lint
	$(BIN)/pytest

bench: $(VENV)/.test-installed
	$(BIN)/python -m benchmarks.memory
	$(BIN)/python -m benchmarks.agent
	$(BIN)/python -m benchmarks.dispatch
	$(BIN)/python -m benchmarks.slack

constraints: $(VENV)/.test-installed
	{ echo "# Pinned versions of every dependency (pip install -c). Regenerate: make constraints"; \
	  $(PIP) freeze --exclude-editable | grep -v '^parley'; } > constraints.txt

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache

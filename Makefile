# Two commands do all the set-up on a fresh machine with Python 3.11+: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip
# llama-cpp-python compiles from source once (several minutes); pip caches the wheel afterwards.
export CMAKE_BUILD_PARALLEL_LEVEL ?= $(shell nproc 2>/dev/null || echo 2)
# Build only what the embedded engine loads: no multimodal library (LLAVA_BUILD, ~50 files and a bundled
# audio decoder), no llama.cpp tests, examples, tools or server, no HTTPS model downloads. GGML_NATIVE keeps
# the CPU backend tuned to the machine that builds it (AVX2/AVX-512 where present).
LLAMA_CMAKE_ARGS := -DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF \
	-DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_CURL=OFF -DGGML_NATIVE=ON
# Except AMX: built with it, llama-cpp-python 0.3.36 died of SIGILL (tileloadd) on the first prompt on the Xeon
# VMs we build on, and a 135M model has little to gain from it. Only passed where the compiler knows the flags.
NO_AMX := -mno-amx-tile -mno-amx-int8 -mno-amx-bf16
ifeq ($(shell cc $(NO_AMX) -E -x c /dev/null -o /dev/null 2>/dev/null && echo yes),yes)
LLAMA_CMAKE_ARGS += -DCMAKE_C_FLAGS='$(NO_AMX)' -DCMAKE_CXX_FLAGS='$(NO_AMX)'
endif
export CMAKE_ARGS ?= $(LLAMA_CMAKE_ARGS)
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

# Two passes: the suite on every core (at most four: each worker starts its own PostgreSQL), then the tests that
# time replicas against each other, alone, so a busy machine cannot lapse their claims.
test: lint
	$(BIN)/pytest -n auto --maxprocesses 4 -m "not serial"
	$(BIN)/pytest -m serial

# Memory and dispatch run on both engines; PostgreSQL is an embedded server unless PARLEY_BENCH_PG_DSN is set.
# Replicas: 1, 2 and 3 `parley run` processes on one PostgreSQL database.
bench: $(VENV)/.test-installed
	$(BIN)/python -m benchmarks.memory --engine sqlite
	$(BIN)/python -m benchmarks.memory --engine postgres
	$(BIN)/python -m benchmarks.agent
	$(BIN)/python -m benchmarks.dispatch --engine sqlite
	$(BIN)/python -m benchmarks.dispatch --engine postgres
	$(BIN)/python -m benchmarks.replicas
	$(BIN)/python -m benchmarks.slack
	$(BIN)/python -m benchmarks.mcp
	$(BIN)/python -m benchmarks.embedded

constraints: $(VENV)/.test-installed
	{ echo "# Pinned versions of every dependency (pip install -c). Regenerate: make constraints"; \
	  $(PIP) freeze --exclude-editable | grep -v '^parley'; } > constraints.txt

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache

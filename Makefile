# rnnlm-service: the README's commands (serve, test) and the rest.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PORT ?= 8000
HOST ?= 127.0.0.1
DATA_DIR ?= ../shared/data/ptb
export RNNLM_DATA_DIR ?= $(DATA_DIR)

.PHONY: serve test lint typecheck pytest train bench fuzz soak clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# Runtime only: what `make serve` needs.
$(VENV)/.installed-run: $(BIN)/python pyproject.toml constraints.txt
	$(BIN)/pip install -q -c constraints.txt -e .
	touch $@

# Runtime + test tools, pinned by the same constraints.
$(VENV)/.installed-test: $(BIN)/python pyproject.toml constraints.txt
	$(BIN)/pip install -q -c constraints.txt -e '.[test]'
	touch $@ $(VENV)/.installed-run

serve: $(VENV)/.installed-run
	$(BIN)/rnnlm-serve --host $(HOST) --port $(PORT)

test: $(VENV)/.installed-test
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/pytest -q

lint: $(VENV)/.installed-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check . || true
	$(BIN)/mypy
	$(BIN)/pip-audit -r constraints.txt --progress-spinner off || true

train: $(VENV)/.installed-test
	$(BIN)/rnnlm train --data-dir $(DATA_DIR) --out weights/ptb-small

# Benchmarks compare against PyTorch, which is never a dependency of the service or its
# tests: it lives in a venv of its own. torch==2.13.0 exactly (a CPU build is on disk here).
BENCH_VENV ?= .venv-bench
$(BENCH_VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/pip install -q torch==2.13.0 threadpoolctl==3.8.0
	$(BENCH_VENV)/bin/pip install -q -c constraints.txt -e .
	touch $@

bench: $(BENCH_VENV)/.installed $(VENV)/.installed-test
	$(BENCH_VENV)/bin/python -m bench.score
	$(BENCH_VENV)/bin/python -m bench.train
	$(BENCH_VENV)/bin/python -m bench.generate
	$(BIN)/python -m bench.load --model 650 --quick

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis

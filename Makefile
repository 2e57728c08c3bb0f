# rnnlm-service: the README's commands (serve, test) and the rest.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PORT ?= 8000
HOST ?= 127.0.0.1
DATA_DIR ?= ../shared/data/ptb
export RNNLM_DATA_DIR ?= $(DATA_DIR)

.PHONY: serve test lint train train-awd bench interop fuzz soak openapi clean

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
	# --strict: a pin it cannot check is a failure; without internet access to the
	# vulnerability service it fails, so lint reports it without stopping.
	$(BIN)/pip-audit -r constraints.txt --no-deps --strict --progress-spinner off \
	  || echo "pip-audit could not check every pin (offline?)"

# The book's recipe (2 x 650, the trainer's defaults) into a new folder beside the shipped
# models, so a fresh run never overwrites weights/ptb-650. Ctrl-C or SIGTERM leaves a
# run state in runs/; `make train` again resumes it.
TRAIN_OUT ?= weights/ptb-650-retrained
train: $(VENV)/.installed-test
	$(BIN)/rnnlm train --data-dir $(DATA_DIR) --out $(TRAIN_OUT) \
	  --run-dir runs/$(notdir $(TRAIN_OUT)) --dtype float16 --resume

# The "awd" recipe (Merity et al. 2017's regularisation and NT-ASGD) at 2 x 650 tied, the
# better-model run behind the default weights/ptb-650-awd: 90 epochs, the weights averaged
# from epoch 31 on (docs/training.md), resumable the same way, `make train-awd` again
# continues it. It writes its best weights beside its state, not over the shipped folder:
# a better epoch is shipped by copying them (docs/training.md).
AWD_RUN ?= runs/ptb-650-awd
AWD_OUT ?= $(AWD_RUN)/weights
AWD_FLAGS ?= --asgd-start 30
train-awd: $(VENV)/.installed-test
	OPENBLAS_NUM_THREADS=$${OPENBLAS_NUM_THREADS:-2} $(BIN)/rnnlm train --data-dir $(DATA_DIR) \
	  --out $(AWD_OUT) --run-dir $(AWD_RUN) --recipe awd --dtype float16 \
	  $(AWD_FLAGS) --resume

# The pilot ablation of the awd recipe at 2 x 256 (docs/training.md): the recipe, the same
# without each of its parts, and the book's recipe at the same size, dropout and budget, on a
# prefix of PTB's training split: about 40 minutes a run, `make -j2 pilot` runs two at a time
# on one BLAS thread each (about two hours), and again resumes them (runs/pilot-NAME).
# `make pilot-table` prints their validation by epoch.
PILOT_EPOCHS ?= 12
PILOT_ASGD_START ?= 8
PILOT_TOKENS ?= 300000
PILOT_COMMON := --data-dir $(DATA_DIR) --wordvec-size 256 --hidden-size 256 --seed 1 \
  --epochs $(PILOT_EPOCHS) --max-train-tokens $(PILOT_TOKENS) --no-final-eval --resume --quiet
PILOT_AWD := --recipe awd --dropout-input 0.3 --dropout-hidden 0.2 --dropout-output 0.3 \
  --weight-drop 0.3 --asgd-start $(PILOT_ASGD_START)
PILOT_RUNS := awd no-weight-drop no-ar-tar no-average no-embedding-dropout book
pilot-awd-flags := $(PILOT_AWD)
pilot-no-weight-drop-flags := $(PILOT_AWD) --weight-drop 0
pilot-no-ar-tar-flags := $(PILOT_AWD) --ar-alpha 0 --tar-beta 0
pilot-no-average-flags := $(PILOT_AWD) --asgd-start 0 --asgd-nonmono 0
pilot-no-embedding-dropout-flags := $(PILOT_AWD) --dropout-embedding 0
pilot-book-flags := --dropout 0.3
.PHONY: pilot pilot-table $(addprefix pilot-,$(PILOT_RUNS))
pilot: $(addprefix pilot-,$(PILOT_RUNS))
$(addprefix pilot-,$(PILOT_RUNS)): $(VENV)/.installed-test
	mkdir -p runs
	OPENBLAS_NUM_THREADS=1 $(BIN)/rnnlm train $(PILOT_COMMON) $($@-flags) \
	  --out runs/$@/weights --run-dir runs/$@ > runs/$@.log 2>&1
pilot-table: $(VENV)/.installed-run
	$(BIN)/rnnlm plot --table $(addprefix runs/pilot-,$(addsuffix /train_log.jsonl,$(PILOT_RUNS)))

# Benchmarks compare against PyTorch, which is never a dependency of the service or its
# tests: it lives in a venv of its own. torch==2.13.0 exactly (a CPU build is on disk here).
BENCH_VENV ?= .venv-bench
$(BENCH_VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/pip install -q torch==2.13.0 threadpoolctl==3.8.0
	$(BENCH_VENV)/bin/pip install -q -c constraints.txt -e '.[ray]'
	touch $@

bench: $(BENCH_VENV)/.installed $(VENV)/.installed-test
	$(BENCH_VENV)/bin/python -m bench.score
	$(BENCH_VENV)/bin/python -m bench.train
	$(BENCH_VENV)/bin/python -m bench.generate
	$(BIN)/python -m bench.load --model 650 --quick

# lm-evaluation-harness against a live server (interop/check_lm_eval.py): outside make test for
# its size, in a venv of its own; torch==2.13.0 pinned (the harness needs torch; unpinned pulls CUDA).
INTEROP_VENV ?= .venv-interop
$(INTEROP_VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(INTEROP_VENV)
	$(INTEROP_VENV)/bin/pip install -q torch==2.13.0 'lm-eval[api]==0.4.13'
	$(INTEROP_VENV)/bin/pip install -q -c constraints.txt -e .
	touch $@

interop: $(INTEROP_VENV)/.installed
	$(INTEROP_VENV)/bin/python -m interop.check_lm_eval

# The committed API document; tests/app/test_openapi.py fails when it drifts from the app.
openapi: $(VENV)/.installed-run
	$(BIN)/python -m app.openapi --out openapi.json

FUZZ_EXAMPLES ?= 500
SOAK_MINUTES ?= 10

# Longer schema-driven fuzzing and property tests than the suite's 50 examples each.
fuzz: $(VENV)/.installed-test
	RNNLM_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(BIN)/pytest -q tests/app/test_fuzz.py tests/app/test_properties.py

# Mixed traffic at the engine's capacity against a loopback server (run on a quiet machine).
soak: $(VENV)/.installed-test
	$(BIN)/python -m bench.soak --minutes $(SOAK_MINUTES)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis

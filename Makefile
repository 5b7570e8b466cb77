VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test bench lint

# Idempotent: reinstalls only when pyproject.toml changed.
install: $(STAMP)
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[worker,train,s3,dev]'
	touch $(STAMP)

demo: install
	$(BIN)/fervid demo

test: install
	$(BIN)/python -m pytest -q -rs --durations=15 tests

# Each benchmark prints ratios against a baseline measured in the same run; see bench/README.md.
bench: install
	$(BIN)/python bench/pipeline.py
	$(BIN)/python bench/store_bench.py
	$(BIN)/python bench/scale_bench.py
	$(BIN)/python bench/load.py

lint: install
	$(BIN)/ruff check .
	$(BIN)/mypy fervid api worker models
	$(BIN)/lint-imports  # the import rules between rooms: [tool.importlinter] in pyproject.toml

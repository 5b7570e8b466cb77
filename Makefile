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
	$(BIN)/python -m pip install --quiet -e '.[train,s3,dev]'
	touch $(STAMP)

demo: install
	$(BIN)/fervid demo

test: install
	$(BIN)/python -m pytest -q -rs tests

bench: install
	$(BIN)/python bench/pipeline.py

lint: install
	$(BIN)/ruff check .
	$(BIN)/mypy fervid api worker models

# One command per job; each creates the virtual environment it needs.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
COMPILED := .venv-mypyc

.PHONY: venv demo test lint typecheck unit bench compiled clean

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/metaprotocol demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest -W error

test: lint typecheck unit

bench: $(STAMP)
	$(BIN)/python benchmarks/core.py
	$(BIN)/python benchmarks/codecs.py

# The optional mypyc build of core/ and codecs/, in a virtual environment of its own:
#   python -m benchmarks.e2e --compiled .venv-mypyc/bin/python   (side by side)
compiled:
	test -d $(COMPILED) || $(PY) -m venv $(COMPILED)
	$(COMPILED)/bin/pip install -q --upgrade pip "setuptools>=77" wheel mypy \
		h11 anyio PyYAML typing-extensions mypy-extensions
	METAPROTOCOL_MYPYC=1 $(COMPILED)/bin/pip install -q --no-build-isolation '.[uvloop]'

clean:
	rm -rf $(VENV) $(COMPILED) build src/*.egg-info .mypy_cache .pytest_cache .ruff_cache

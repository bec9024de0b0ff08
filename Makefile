# One command per job; each creates the virtual environment it needs.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
COMPILED := .venv-mypyc

# xds-protos (the [xds] extra) ships an older copy of the OpenTelemetry .proto modules in the
# same directory as opentelemetry-proto ([otel]); whichever pip installs last wins, and the old
# copy breaks the OTLP exporter. Put opentelemetry-proto's own files back, same version.
define restore_otel_proto
	$(1)/pip install -q --force-reinstall --no-deps \
		"opentelemetry-proto==$$($(1)/python -c 'import importlib.metadata as m; print(m.version("opentelemetry-proto"))')"
endef

.PHONY: venv demo test lint typecheck unit fuzz unit-compiled bench compiled clean

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev,fuzz]'
	$(call restore_otel_proto,$(BIN))
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

# Every fuzz target for FUZZ_SECONDS each (docs/fuzzing.md); fails on a finding and prints
# the input that reproduces it. Once per CI run: not part of the pytest suite.
FUZZ_SECONDS ?= 10
fuzz: $(STAMP)
	$(BIN)/python -m fuzz.run --seconds $(FUZZ_SECONDS)

test: lint typecheck unit fuzz unit-compiled

bench: $(STAMP)
	$(BIN)/python benchmarks/core.py
	$(BIN)/python benchmarks/codecs.py

# The optional mypyc build of core/, codecs/ and the adapters' per-message path (setup.py's
# HOT_ADAPTER_MODULES: the dispatcher, the asyncio/uvloop connections, observer routing),
# in a virtual environment of its own:
#   python -m benchmarks.e2e --compiled .venv-mypyc/bin/python   (side by side)
# Reinstalled on every call (mypyc recompiles what changed; about a minute from scratch)
# so that a stale build never tests old code.
# mypyc type-checks everything the compiled modules import: the adapters reach the config
# loader (PyYAML's stubs), the metrics (prometheus_client) and tracing (OpenTelemetry).
COMPILED_TYPING := types-PyYAML prometheus_client opentelemetry-sdk \
	opentelemetry-exporter-otlp-proto-http
compiled:
	test -d $(COMPILED) || $(PY) -m venv $(COMPILED)
	$(COMPILED)/bin/pip install -q --upgrade pip "setuptools>=77" wheel mypy \
		h11 anyio PyYAML typing-extensions mypy-extensions $(COMPILED_TYPING)
	rm -rf build/lib.* build/bdist.*  # what a previous build put there must not ship again
	METAPROTOCOL_MYPYC=1 $(COMPILED)/bin/pip install -q --no-build-isolation '.[uvloop,dev]'
	$(call restore_otel_proto,$(COMPILED)/bin)

# The whole suite again on the compiled build (the tests import the installed package:
# the repository keeps it under src/, which is not on the path).
unit-compiled: compiled
	$(COMPILED)/bin/python -c "import sys, metaprotocol.core.proxy as m, metaprotocol.adapters.asyncio as a; \
		bad = [x.__file__ for x in (m, a) if not x.__file__.endswith('.so')]; \
		sys.exit('not the compiled build: ' + ', '.join(bad) if bad else 0)"
	$(COMPILED)/bin/python -m pytest -W error -p no:cacheprovider

clean:
	rm -rf $(VENV) $(COMPILED) build src/*.egg-info .mypy_cache .pytest_cache .ruff_cache .fuzz

# Two commands for a newcomer: `make demo` (see README) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-dev

.PHONY: install demo demo-ui test test-quick test-browser

$(STAMP): pyproject.toml setup.cfg
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

## make demo: set up the virtual environment, generate a small corpus, serve it on loopback and
## ingest it through Dagster into .demo/ (safe to re-run)
demo: $(STAMP)
	$(BIN)/python -m demo.run_demo

## make demo-ui: the Dagster UI on the demo's instance, with the demo's clip server up again
demo-ui: $(STAMP)
	$(BIN)/python -m demo.run_demo --serve

## make test: set up the virtual environment and run the whole suite (what .ci/run calls)
test: $(STAMP)
	$(BIN)/python -m pytest -q

## make test-quick: without the long fault-injection tests
test-quick: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow and not browser"

# Two commands for a newcomer: `make demo` (see README) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-dev

.PHONY: install test test-quick test-browser

$(STAMP): pyproject.toml setup.cfg
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

## make test: set up the virtual environment and run the whole suite (what .ci/run calls)
test: $(STAMP)
	$(BIN)/python -m pytest -q

## make test-quick: without the long fault-injection tests
test-quick: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow and not browser"

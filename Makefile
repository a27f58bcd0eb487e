# Two commands for a newcomer: `make demo` (see README) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-dev

.PHONY: install demo demo-ui test test-quick test-postgres test-topology test-browser bench bench-scale bench-scale-big bench-profile lint

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

## make test-postgres: only the tests on a PostgreSQL instance (deploy/dagster-postgres.yaml on a throwaway
## server started from Debian's postgresql binaries; they skip without them, fail with LSVQ_REQUIRE_POSTGRES=1)
test-postgres: $(STAMP)
	$(BIN)/python -m pytest -q -rs -m postgres lsvq_assets_tests

## make lint: ruff (lint + format check) and mypy on the package, as .ci/run does before the tests
lint: $(STAMP)
	$(BIN)/ruff check lsvq_assets
	$(BIN)/ruff format --check lsvq_assets
	$(BIN)/mypy

## make test-topology: the production topology on this machine (lsvq_assets_tests/test_topology.py, ~3 min):
## PostgreSQL, a gRPC code server, dagster-webserver and dagster-daemon as processes; a backfill with a
## killed run worker, then the shards against a single-process CLI run (part of `make test`)
test-topology: $(STAMP)
	$(BIN)/python -m pytest -q -rs -m topology lsvq_assets_tests

## make test-quick: without the long fault-injection tests
test-quick: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow and not browser"

## make bench: the benchmark (see benchmarks/README.md): the seed's sequential loop against the project
## on 500 generated clips served from loopback at 0 and 100 ms per request, peak memory on a 1 GiB
## clip, a 39k-row manifest; prints PASS/FAIL per target, writes benchmarks/results/ (~7 min on
## 2 cores). BENCH_ARGS="--clips 100 --repeat 1 --big-mib 0" for a quick look.
BENCH_STAMP := $(VENV)/.installed-bench
BENCH_ARGS ?=

$(BENCH_STAMP): $(STAMP)
	$(BIN)/python -m pip install -q -e ".[dev,bench]" || echo "make bench: the optional 'bench' extra (matplotlib) did not install; the plot will be skipped"
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	$(BIN)/python -m benchmarks $(BENCH_ARGS)

## make bench-scale: the corpus-scale benchmark (see benchmarks/README.md): a generated replica of the
## mirror (a 28,056-row labels file, 51 <folder>.tar.gz of 12 KB clips) served on loopback, the CLI
## with --source archive against the floor (tar xzf + sha256 + PyAV probe in one process), a no-op
## re-run and peak memory; PASS/FAIL per target, JSON in benchmarks/results/. SCALE_ARGS="--help".
## make bench-scale-big: the same with ~10 MB clips (200 clips, ~2 GB; needs ~8 GB of free disk).
## make bench-profile: one corpus-scale CLI run under py-spy (PY_SPY=path) or cProfile (PROFILER=cprofile).
SCALE_ARGS ?=
PROFILER ?= py-spy

bench-scale: $(BENCH_STAMP)
	$(BIN)/python -m benchmarks.scale $(SCALE_ARGS)

bench-scale-big: $(BENCH_STAMP)
	$(BIN)/python -m benchmarks.scale --preset big $(SCALE_ARGS)

bench-profile: $(BENCH_STAMP)
	$(BIN)/python -m benchmarks.scale --profile $(PROFILER) $(SCALE_ARGS)

## make test-browser: the Dagster UI in a real browser (lsvq_assets_tests/test_browser.py, ~2 min):
## webserver + daemon on a small real run, driven in Debian's Chromium via Playwright. Needs
## `apt-get install chromium chromium-driver` (the tests skip without /usr/bin/chromium; never
## `playwright install`). Full-page screenshots of each step go to $LSVQ_BROWSER_SHOTS when set.
BROWSER_STAMP := $(VENV)/.installed-browser

$(BROWSER_STAMP): $(STAMP)
	$(BIN)/python -m pip install -q -e ".[dev,browser]"
	touch $(BROWSER_STAMP)

test-browser: $(BROWSER_STAMP)
	$(BIN)/python -m pytest -q -rs -m browser lsvq_assets_tests

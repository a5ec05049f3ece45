# Two commands matter on a fresh machine: `make demo` and `make test`.
# Everything installs into .venv from pyproject.toml; nothing by hand.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
BENCH_ROWS ?= 2000000

.PHONY: install demo test test-heavy test-fast test-airflow system-deps lint bench bench-serve sample clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/batchserve score --model sample_data/model --input sample_data/transactions \
		--output out/ --overwrite
	@echo "--- out/ ---"; find out -maxdepth 2 | sort | head -20

# Two test processes: much of the suite waits on subprocesses and Dask clusters, so two halve the
# wall time on CI's 2 cores (171 s -> 117 s measured); each process has its own session fixtures.
TEST_PROCS ?= 2

test: install system-deps
	$(BIN)/python -m pytest -n $(TEST_PROCS) -m "not heavy"

# Fault injection with real signals and kills (SIGTERM, SIGINT, SIGKILL then --resume, a worker killed
# mid-run, Ctrl-C in tmux), object-store storms, and any run of 15 s or more: their own target so
# `make test` stays under 3 minutes on 2 cores; CI runs both.
test-heavy: install system-deps
	$(BIN)/python -m pytest -n $(TEST_PROCS) -m heavy

# The unit tests alone (no Dask cluster, subprocess or server): seconds, for the edit-test loop.
test-fast: install
	$(BIN)/python -m pytest -m "not slow" -n $(TEST_PROCS)

# Real system parts the suite runs: headless Chromium renders the reports, a real Pushgateway
# receives metrics, tmux is the terminal Ctrl-C is tested in, and wrk loads the server in make bench-serve
# (Debian's packages), installed here
# when missing and we are root.
system-deps:
	@missing=""; \
	  { command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; } || missing="chromium"; \
	  command -v prometheus-pushgateway >/dev/null 2>&1 || missing="$$missing prometheus-pushgateway"; \
	  command -v tmux >/dev/null 2>&1 || missing="$$missing tmux"; \
	  command -v wrk >/dev/null 2>&1 || missing="$$missing wrk"; \
	  [ -z "$$missing" ] || { [ "$$(id -u)" = 0 ] && apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; } || \
	  echo "missing and cannot be installed here (not root): $$missing -- the report test fails, the Pushgateway and terminal tests skip"

# The DAG in a real Airflow 3 (airflow dags test, SQLite): apache-airflow in its own virtual
# environment, cached outside the checkout so CI's clean checkouts reuse it (first install ~1 min,
# the tests ~1 min). Bump AIRFLOW_VERSION to test another release.
AIRFLOW_VERSION ?= 3.3.2
AIRFLOW_VENV    ?= $(HOME)/.cache/batchserve/airflow-$(AIRFLOW_VERSION)

$(AIRFLOW_VENV)/.installed:
	rm -rf $(AIRFLOW_VENV)
	$(PYTHON) -m venv $(AIRFLOW_VENV)
	$(AIRFLOW_VENV)/bin/python -m pip install -q --upgrade pip
	$(AIRFLOW_VENV)/bin/python -m pip install -q "apache-airflow==$(AIRFLOW_VERSION)"
	touch $@

test-airflow: install $(AIRFLOW_VENV)/.installed
	AIRFLOW_BIN=$(AIRFLOW_VENV)/bin/airflow $(BIN)/python -m pytest tests/airflow -p no:xdist

lint: install
	$(BIN)/ruff check batchserve tests sample_data jobs
	$(BIN)/mypy
	$(BIN)/lint-imports

$(VENV)/.bench-stamp: pyproject.toml $(STAMP)
	$(BIN)/python -m pip install -q -e '.[dev,bench]'
	touch $@

# The server under a real load generator (wrk, loopback) against a hand-written Starlette endpoint,
# measured in the same run; e.g. make bench-serve BENCH_SERVE_ARGS="--models mlp --seconds 10".
bench-serve: install $(VENV)/.bench-stamp system-deps
	$(BIN)/python tests/bench_serve.py $(BENCH_SERVE_ARGS)

# Extra flags go through BENCH_ARGS, e.g. make bench BENCH_ARGS="--models mlp --repeat 3".
bench: install $(VENV)/.bench-stamp
	$(BIN)/python tests/bench.py --rows $(BENCH_ROWS) $(BENCH_ARGS)

sample: install
	$(BIN)/python sample_data/make_sample.py
	$(BIN)/batchserve profile --input sample_data/transactions --model sample_data/model \
		--output sample_data/reference.json --workers 1 -q

clean:
	rm -rf out bench_out .pytest_cache .hypothesis

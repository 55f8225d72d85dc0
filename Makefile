# Quick start: `make demo` runs the demo DAG against the built-in emulator; `make test` runs every check.
PYTHON ?= python3
VENV ?= .venv
AIRFLOW_VERSION ?= 3.3.2
# The oldest Airflow this provider supports; `make test` runs the suite on it too.
OLDEST_AIRFLOW_VERSION ?= 3.0.6
OLDEST_VENV ?= .venv-oldest
# Airflow 3.0.6's own constraints of its day: its execution API breaks with later fastapi/pydantic.
OLDEST_PINS ?= "fastapi==0.116.1" "pydantic<2.12"
# Added to every pytest run; a `-m` here replaces the tier's own selection (pytest keeps the last -m).
PYTEST_ARGS ?=

# The tiers are pytest markers (pyproject.toml, set in tests/conftest.py): `e2e` tests start real Airflow
# processes (api-server, scheduler, dag-processor, triggerer), `slow` ones take over 30 s.
# `make test-fast`: the unit and emulator tiers without them, a few minutes at most on 2 cores.
FAST_TESTS ?= tests/unit tests/emulator -m "not e2e and not slow"
# On the oldest Airflow, `make test` runs every test except the e2e ones whose behaviour does not differ
# by version: only those marked `oldest` run there (tests/e2e/conftest.py says why each one does, and
# why the others need not). Unit, emulator and integration tests all run on both versions.
OLDEST_TESTS ?= -m "not e2e or oldest"

COMMA := ,

.PHONY: test test-fast test-newest test-oldest lint-then-oldest lint venv demo bench clean

# The full gate (.ci/run): two streams at once on the 2 cores, the whole suite on the newest Airflow,
# and lint then the oldest's suite (the two streams measured about as long). The suites mostly wait on
# emulated jobs, deferrals and deployments, so each leaves CPU to the other: side by side they take
# about the time of the longer, where one after the other took over 50 minutes. Each stream's output
# is printed whole when it ends; `make test-newest` or `make lint test-oldest` runs one of them.
test:
	@echo "== the suite on Airflow $(AIRFLOW_VERSION), beside lint and the suite on Airflow $(OLDEST_AIRFLOW_VERSION)"
	@$(MAKE) --no-print-directory -j2 --output-sync=target test-newest lint-then-oldest

lint-then-oldest: lint $(OLDEST_VENV)/.installed
	@$(MAKE) --no-print-directory test-oldest

test-fast: $(VENV)/.installed
	$(VENV)/bin/python -m pytest $(FAST_TESTS) $(PYTEST_ARGS)

venv: $(VENV)/.installed

# A venv per Airflow version; uv is used when it can be had (it is much faster), pip otherwise.
%/.installed: pyproject.toml devtools/pyproject.toml
	@AIRFLOW=$(if $(filter $(OLDEST_VENV),$*),$(OLDEST_AIRFLOW_VERSION),$(AIRFLOW_VERSION)); \
	PINS='$(if $(filter $(OLDEST_VENV),$*),$(OLDEST_PINS),)'; \
	echo "== installing apache-airflow==$$AIRFLOW and .[test] into $*"; \
	test -x $*/bin/python || $(PYTHON) -m venv $*; \
	$*/bin/python -m pip install -q uv >/dev/null 2>&1 || true; \
	if test -x $*/bin/uv; then \
		eval $*/bin/uv pip install -q -p $*/bin/python "apache-airflow==$$AIRFLOW" $$PINS -e '".[test]"' -e ./devtools; \
	else \
		eval $*/bin/python -m pip install -q "apache-airflow==$$AIRFLOW" $$PINS -e '".[test]"' -e ./devtools; \
	fi
	@touch $@

# The demo: the catalogue example DAG against the emulator (the real gateway when FIRERED_API_KEY is set).
demo: $(VENV)/.installed
	$(VENV)/bin/python scripts/demo.py

# The benchmarks (docs/benchmarks.md): emulator throughput (C) and trigger cost (A: 100 and 1,000 waits
# at 1 s polls against the grid floor), under 5 minutes; `make bench WORKER_COST=1` adds the worker cost
# in a real Airflow (B, about 10 minutes more). BENCH_ARGS go to the trigger cost, e.g. the larger runs
# its docstring lists: make bench BENCH_ARGS="--sizes 100,1000,10000 --poll 10 --polls-per-job 2"
# `make bench CATALOGUE_COST=1` adds the catalogue on PostgreSQL (D, over an hour).
bench: $(VENV)/.installed
	$(VENV)/bin/python benchmarks/emulator_throughput.py
	$(VENV)/bin/python benchmarks/trigger_cost.py $(BENCH_ARGS)
	$(if $(WORKER_COST),$(VENV)/bin/python benchmarks/worker_cost.py)
	$(if $(CATALOGUE_COST),$(VENV)/bin/python benchmarks/catalogue_cost.py --skus 1000 --variants batch$(COMMA)per-sku --nights 3)

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

test-newest: $(VENV)/.installed
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

test-oldest: $(OLDEST_VENV)/.installed
	$(OLDEST_VENV)/bin/python -m pytest $(OLDEST_TESTS) $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) $(OLDEST_VENV) .mypy_cache .ruff_cache .pytest_cache *.egg-info

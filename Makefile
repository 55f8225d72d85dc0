# Quick start: `make demo` runs the demo DAG against the built-in emulator; `make test` runs every check.
PYTHON ?= python3
VENV ?= .venv
AIRFLOW_VERSION ?= 3.3.2
# The oldest Airflow this provider supports; `make test` runs the suite on it too.
OLDEST_AIRFLOW_VERSION ?= 3.0.6
OLDEST_VENV ?= .venv-oldest
# Airflow 3.0.6's own constraints of its day: its execution API breaks with later fastapi/pydantic.
OLDEST_PINS ?= "fastapi==0.116.1" "pydantic<2.12"
# Added to every pytest run; a `-m` here replaces a stream's own selection (pytest keeps the last -m):
# use it with one stream, e.g. `make test-newest PYTEST_ARGS='-m "not slow"'`.
PYTEST_ARGS ?=
# Each stream ends with its slowest tests: where the gate's time goes, run after run.
DURATIONS ?= --durations=25

# The tiers are pytest markers (pyproject.toml, set in tests/conftest.py): `e2e` tests start real Airflow
# processes (api-server, scheduler, dag-processor, triggerer), `slow` ones take over 30 s.
# `make test-fast`: the unit and emulator tiers without them, a few minutes at most on 2 cores.
FAST_TESTS ?= tests/unit tests/emulator -m "not e2e and not slow"
# On the oldest Airflow, `make test` runs the unit, emulator and integration tests, and of the e2e tests
# only those marked `oldest`, whose behaviour differs there (tests/e2e/conftest.py says why for each
# and why the others need not); tests marked `newest` check what only .venv runs or has (`make demo`,
# `make bench`, the Celery and S3 deployment) and are left out there.
OLDEST_TESTS ?= -m "(not e2e and not newest) or oldest"
# E2E=0 leaves the real deployments out of `make test` (both Airflow versions).
E2E ?= 1

COMMA := ,

.PHONY: test test-fast test-newest test-newest-e2e test-newest-rest lint-then-newest-rest test-oldest lint venv demo bench clean

# The full gate (.ci/run): three streams at once on the 2 cores. The e2e tests on the newest Airflow,
# one deployment at a time (two side by side starve each other on 2 cores); lint then the rest of the
# newest's suite; the oldest's suite. Most tests wait on emulated jobs, deferrals and deployments, so
# the streams share the CPU well: side by side they take about the time of the longest. Each stream's
# output is printed whole when it ends; `make test-newest` runs the newest's whole suite in one go.
test:
	@echo "== Airflow $(AIRFLOW_VERSION): e2e tests, beside lint and the other tests; Airflow $(OLDEST_AIRFLOW_VERSION) beside both"
	@$(MAKE) --no-print-directory -j3 --output-sync=target \
		$(if $(filter 1,$(E2E)),test-newest-e2e,) lint-then-newest-rest test-oldest \
		$(if $(filter 1,$(E2E)),,OLDEST_TESTS='-m "not e2e and not newest"')

lint-then-newest-rest: lint
	@$(MAKE) --no-print-directory test-newest-rest

test-newest-e2e: $(VENV)/.installed
	$(VENV)/bin/python -m pytest -m e2e $(DURATIONS) $(PYTEST_ARGS)

test-newest-rest: $(VENV)/.installed
	$(VENV)/bin/python -m pytest -m "not e2e" $(DURATIONS) $(PYTEST_ARGS)

test-fast: $(VENV)/.installed
	$(VENV)/bin/python -m pytest $(FAST_TESTS) $(PYTEST_ARGS)

venv: $(VENV)/.installed

# A venv per Airflow version; uv is used when it can be had (it is much faster), pip otherwise.
%/.installed: pyproject.toml devtools/pyproject.toml
	@AIRFLOW=$(if $(filter $(OLDEST_VENV),$*),$(OLDEST_AIRFLOW_VERSION),$(AIRFLOW_VERSION)); \
	PINS='$(if $(filter $(OLDEST_VENV),$*),$(OLDEST_PINS),)'; \
	DEVTOOLS='$(if $(filter $(OLDEST_VENV),$*),./devtools,./devtools[deployments])'; \
	echo "== installing apache-airflow==$$AIRFLOW and .[test] into $*"; \
	test -x $*/bin/python || $(PYTHON) -m venv $*; \
	$*/bin/python -m pip install -q uv >/dev/null 2>&1 || true; \
	if test -x $*/bin/uv; then \
		eval $*/bin/uv pip install -q -p $*/bin/python "apache-airflow==$$AIRFLOW" $$PINS -e '".[test]"' -e "$$DEVTOOLS"; \
	else \
		eval $*/bin/python -m pip install -q "apache-airflow==$$AIRFLOW" $$PINS -e '".[test]"' -e "$$DEVTOOLS"; \
	fi
	@touch $@

# The demo: the catalogue example DAG against the emulator (the real gateway when FIRERED_API_KEY is set).
demo: $(VENV)/.installed
	$(VENV)/bin/python scripts/demo.py

# The benchmarks (docs/benchmarks.md): emulator throughput (C) and trigger cost (A: 100 and 1,000 waits
# at 1 s polls against the grid floor), under 5 minutes; `make bench WORKER_COST=1` adds the worker cost
# in a real Airflow (B, about 10 minutes more). BENCH_ARGS go to the trigger cost, e.g. the larger runs
# its docstring lists: make bench BENCH_ARGS="--sizes 100,1000,10000 --poll 10 --polls-per-job 2"
# `make bench CATALOGUE_COST=1` adds the catalogue on PostgreSQL (D, over an hour); `CATALOGUE_CELERY=1`
# adds it at 10,000 SKUs on Celery workers with outputs on S3, one batch of 2,500 per pool slot (D, Celery +
# S3; about 15 minutes on a quiet machine).
bench: $(VENV)/.installed
	$(VENV)/bin/python benchmarks/emulator_throughput.py
	$(VENV)/bin/python benchmarks/trigger_cost.py $(BENCH_ARGS)
	$(if $(WORKER_COST),$(VENV)/bin/python benchmarks/worker_cost.py)
	$(if $(CATALOGUE_COST),$(VENV)/bin/python benchmarks/catalogue_cost.py --skus 1000 --variants batch$(COMMA)per-sku --nights 3)
	$(if $(CATALOGUE_CELERY),$(VENV)/bin/python benchmarks/catalogue_cost.py --skus 10000 --variants batch --nights 3 --deployment celery-s3 --limit 2100 --batch-size 2500)

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

test-newest: $(VENV)/.installed
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

test-oldest: $(OLDEST_VENV)/.installed
	$(OLDEST_VENV)/bin/python -m pytest $(OLDEST_TESTS) $(DURATIONS) $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) $(OLDEST_VENV) .mypy_cache .ruff_cache .pytest_cache *.egg-info

# pgregistry: every target sets up what it needs (venv, dependencies) by itself.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.installed
CORE    = $(VENV)/.core

.PHONY: help venv test test-quick lint demo bench clean

help:
	@echo "make demo        run the example service (starts a throwaway PostgreSQL when none answers)"
	@echo "make test        the whole test suite (unit, shared server, fault tests on a throwaway cluster)"
	@echo "make test-quick  everything but the slow fault and soak tests"
	@echo "make test-pygresql  PyGreSQL's own pg.DB tests: plain, and through a pool (default, discard reset)"
	@echo "make lint        ruff and mypy --strict"
	@echo "make bench       benchmarks against DBUtils, psycopg_pool and SQLAlchemy"

venv: $(STAMP)

# The library and its dependencies only: all that `make demo` needs.
$(CORE): pyproject.toml
	@command -v pg_config >/dev/null || { echo "pg_config not found: PyGreSQL builds against libpq; install libpq-dev and gcc (apt-get install libpq-dev gcc)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -e .
	@touch $(CORE)

# Plus the test and lint tools and the optional integrations (OpenTelemetry, Prometheus).
$(STAMP): $(CORE)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[test]'
	@touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest

test-quick: $(STAMP)
	$(PY) -m pytest -m 'not slow'

.PHONY: test-pygresql
test-pygresql: $(STAMP)
	$(PY) tools/pygresql_compat/run.py

lint: $(STAMP)
	$(VENV)/bin/ruff check pgregistry tests examples benchmarks tools
	$(VENV)/bin/mypy pgregistry
	$(VENV)/bin/mypy --strict tests/unit tools
	$(VENV)/bin/mypy --strict tests/server
	$(VENV)/bin/mypy --strict tests/fault
	$(VENV)/bin/mypy --strict tests/conftest.py

demo: $(CORE)
	$(PY) examples/demo.py

bench:
	@command -v valgrind >/dev/null || echo "bench: valgrind not found, instruction counts will be skipped (apt-get install valgrind)"
	$(PYTHON) benchmarks/run.py

clean:
	rm -rf $(VENV) .bench-venv build *.egg-info .pytest_cache .mypy_cache .ruff_cache

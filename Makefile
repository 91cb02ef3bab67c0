# packline: `make demo` and `make test` work from a fresh clone; each target installs what it needs.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PY_STAMP   := $(VENV)/.installed
JARS_DIR   := .cache/kafka-libs
JARS_STAMP := $(JARS_DIR)/.installed
PACKLINE := $(BIN)/packline

.PHONY: setup kafka-jars kafka kafka-stop up demo test test-fast lint schemas bench-sse bench-api bench-pipeline chaos clean

setup: $(PY_STAMP) $(JARS_STAMP)

$(PY_STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

kafka-jars: $(JARS_STAMP)
$(JARS_STAMP): deploy/kafka/pom.xml
	mvn -q -B -f deploy/kafka/pom.xml dependency:copy-dependencies \
	    -DincludeScope=runtime -DoutputDirectory=$(CURDIR)/$(JARS_DIR)
	touch $@

kafka: setup
	$(BIN)/python -m shared.devbroker start

kafka-stop:
	@test -x $(BIN)/python && $(BIN)/python -m shared.devbroker stop || true

up: setup
	$(PACKLINE) up

demo: setup
	$(PACKLINE) demo

test: setup
	$(BIN)/ruff check shared services tests
	$(BIN)/pytest -q -ra

test-fast: setup
	$(BIN)/pytest -q -ra -m "not e2e"

lint: setup
	$(BIN)/ruff check shared services tests
	$(BIN)/mypy shared services

schemas: setup
	$(PACKLINE) schemas export

bench-sse: setup
	$(BIN)/python -m tests.bench.sse_bench

bench-api: setup
	$(BIN)/python -m tests.bench.api_bench

# Images that take 300 ± 150 ms like a real model, then all six finishing at once (the worst case) and a burst.
bench-pipeline: setup
	$(BIN)/python -m tests.bench.pipeline_bench --jitter-ms 150 --burst-packs 0
	$(BIN)/python -m tests.bench.pipeline_bench

# 200 six-image packs, 3 instances of each worker, a SIGKILL every 5 s, one broker restart.
chaos: setup
	$(BIN)/python -m tests.chaos --packs 200 --instances 3 --kill-every 5

clean: kafka-stop
	rm -rf var .pytest_cache .mypy_cache .ruff_cache

# packline: `make demo` and `make test` work from a fresh clone; each target installs what it needs.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PY_STAMP   := $(VENV)/.installed
JARS_DIR   := .cache/kafka-libs
JARS_STAMP := $(JARS_DIR)/.installed
S3_JARS_DIR   := .cache/s3proxy-libs
S3_JARS_STAMP := $(S3_JARS_DIR)/.installed
# The AsyncAPI parser (Node.js) that validates schemas/asyncapi.json in the tests: exact versions from deploy/asyncapi's lock.
ASYNCAPI_DIR   := .cache/asyncapi-node
ASYNCAPI_STAMP := $(ASYNCAPI_DIR)/.installed
PACKLINE := $(BIN)/packline
# Every package (transitive ones, pip and the build backend included) pinned with hashes; `make lock` writes both.
LOCK         := requirements.lock
RUNTIME_LOCK := requirements-runtime.lock
UV_VERSION   := 0.13.8
UV_DIR       := .cache/uv-$(UV_VERSION)
UV           := $(UV_DIR)/bin/uv
UV_COMPILE   := pip compile --quiet --python-version 3.11 --generate-hashes --custom-compile-command "make lock"

.PHONY: setup system-deps bench-deps lock kafka-jars s3proxy-jars asyncapi-parser kafka kafka-stop up demo test test-fast lint schemas bench-sse bench-api bench-pipeline bench-intake bench-notifier-start bench-revocations bench-load chaos chaos-cluster clean

setup: $(PY_STAMP) $(JARS_STAMP) $(S3_JARS_STAMP)

# Installs exactly the lock, then the project itself with its dependencies taken only from what is
# installed (--no-index): a lock that no longer satisfies pyproject.toml fails here instead of
# quietly downloading something unpinned.
$(PY_STAMP): pyproject.toml $(LOCK)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --require-hashes -r $(LOCK)
	$(BIN)/python -m pip install -q --no-index --no-build-isolation -e ".[dev]" \
	    || { echo "$(LOCK) does not satisfy pyproject.toml: run 'make lock'" >&2; exit 1; }
	$(BIN)/python -m pip check
	touch $@

# After changing dependencies in pyproject.toml: keeps the locked versions that still fit and adds
# what is new. `make lock LOCK_FLAGS=--upgrade` takes the newest versions of everything instead.
# The runtime lock (the Dockerfile's) is the same versions without the dev extra.
lock: $(UV)
	$(UV) $(UV_COMPILE) $(LOCK_FLAGS) --extra dev -o $(LOCK) pyproject.toml requirements-build.in
	$(UV) $(UV_COMPILE) -c $(LOCK) -o $(RUNTIME_LOCK) pyproject.toml requirements-build.in

$(UV):
	$(PYTHON) -m venv $(UV_DIR)
	$(UV_DIR)/bin/python -m pip install -q uv==$(UV_VERSION)

asyncapi-parser: $(ASYNCAPI_STAMP)
$(ASYNCAPI_STAMP): deploy/asyncapi/package.json deploy/asyncapi/package-lock.json
	mkdir -p $(ASYNCAPI_DIR)
	cp deploy/asyncapi/package.json deploy/asyncapi/package-lock.json $(ASYNCAPI_DIR)/
	npm ci --prefix $(ASYNCAPI_DIR) --ignore-scripts --no-audit --no-fund --loglevel=error
	touch $@

kafka-jars: $(JARS_STAMP)
$(JARS_STAMP): deploy/kafka/pom.xml
	mvn -q -B -f deploy/kafka/pom.xml dependency:copy-dependencies \
	    -DincludeScope=runtime -DoutputDirectory=$(CURDIR)/$(JARS_DIR)
	touch $@

# One node by default; `make kafka BROKERS=3` starts a three-node cluster (ports 9092/9094/9096).
BROKERS ?= 1
# s3proxy (a real S3-compatible server, for IMAGE_STORE=s3://... in the tests) from Maven Central, like Kafka.
s3proxy-jars: $(S3_JARS_STAMP)
$(S3_JARS_STAMP): deploy/s3proxy/pom.xml
	mvn -q -B -f deploy/s3proxy/pom.xml dependency:copy-dependencies \
	    -DincludeScope=runtime -DoutputDirectory=$(CURDIR)/$(S3_JARS_DIR)
	touch $@

kafka: setup
	$(BIN)/python -m shared.devbroker start --brokers $(BROKERS)

kafka-stop:
	@test -x $(BIN)/python && $(BIN)/python -m shared.devbroker stop || true

up: setup
	$(PACKLINE) up $(if $(filter-out 1,$(BROKERS)),--brokers $(BROKERS)) $(if $(INSTANCES),--instances $(INSTANCES))

demo: setup
	$(PACKLINE) demo

# As root, the Debian packages the suite drives (PostgreSQL, Chromium, nginx) are installed if missing.
system-deps:
	@if [ "$$(id -u)" = 0 ]; then deploy/system-deps.sh; else echo "not root: PostgreSQL, Chromium and nginx must be installed already"; fi

# As root, wrk (the HTTP load generator of `make bench-api`; the suite does not use it) is installed if missing.
bench-deps:
	@if [ "$$(id -u)" = 0 ]; then deploy/system-deps.sh --bench; else echo "not root: wrk must be installed already"; fi

# Two workers (pytest-xdist), a test file per worker at a time: most e2e time is spent waiting on
# services and the broker, so two files in flight finish in about half the time.
test: lint system-deps $(ASYNCAPI_STAMP)
	$(BIN)/pytest -q -ra -n 2 --dist loadfile

test-fast: setup $(ASYNCAPI_STAMP)
	$(BIN)/pytest -q -ra -m "not e2e"

lint: setup
	$(BIN)/ruff check shared services tests clients
	$(BIN)/mypy shared services clients/python/packline_client

schemas: setup
	$(PACKLINE) schemas export

bench-sse: setup
	$(BIN)/python -m tests.bench.sse_bench

# wrk drives the api as fast as it answers; then an open-loop client of our own holds 500 requests/s.
bench-api: setup bench-deps
	$(BIN)/python -m tests.bench.api_bench

# Images that take 300 ± 150 ms like a real model, then all six finishing at once (the worst case) and a burst.
bench-pipeline: setup
	$(BIN)/python -m tests.bench.pipeline_bench --jitter-ms 150 --burst-packs 0
	$(BIN)/python -m tests.bench.pipeline_bench

# 20,000 pack requests of 50 users published straight to Kafka, then one seller's POST: how soon it is seen and started.
bench-intake: setup
	$(BIN)/python -m tests.bench.intake_bench

# A notifier's start (time to ready, RSS) on a read model of 10,000, 100,000 and 1,000,000 finished packs.
bench-notifier-start: setup
	$(BIN)/python -m tests.bench.notifier_start_bench

# The public contract under load (POST in, SSE out): 10 packs/s, then bursts of 300 (4 users) and 1,500 (8 users),
# then 50 packs of images that take 1 s each.
bench-load: setup
	$(BIN)/python -m tests.bench.load_bench --users 4 --rate 10 --seconds 30 --burst 300
	$(BIN)/python -m tests.bench.load_bench --users 8 --rate 0 --burst 1500
	$(BIN)/python -m tests.bench.load_bench --users 4 --rate 0 --burst 50 --image-ms 1000

# 1,000,000 records on auth.revocations: how long the api's revocation reader takes to be ready.
bench-revocations: setup
	$(BIN)/python -m tests.bench.revocations_bench

# 200 six-image packs, 3 instances of each worker, a SIGKILL every 5 s, one broker restart.
chaos: setup
	$(BIN)/python -m tests.chaos --packs 200 --instances 3 --kill-every 5

# The same on a three-broker cluster (RF 3, min ISR 2): a broker SIGKILLed every 10 s (back 5 s later),
# first the leader of most packs.requested partitions, then the active controller.
chaos-cluster: setup
	$(BIN)/python -m tests.chaos --packs 200 --instances 3 --kill-every 5 --brokers 3 --broker-kill-every 10 \
	    --broker-down 5 --min-broker-kills 4 --no-broker-restart

clean: kafka-stop
	rm -rf var .pytest_cache .mypy_cache .ruff_cache

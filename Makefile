# missmod — the two commands a new machine needs are `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install --quiet --disable-pip-version-check
# One stamp per set of extras: `make run` installs the runtime dependencies only; `make test`
# (and `make bench`, which drives Chromium) add the test extra (pytest, playwright, schemathesis).
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test

.PHONY: run serve worker migrate test coverage bench bench-gpu soak setup setup-test clean

setup: $(STAMP)
setup-test: $(TEST_STAMP)

# Re-install when the dependencies change. torch/torchvision are pinned in pyproject.toml; the
# `worker` extra brings them (`make run` trains locally).
$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) -e '.[worker]'
	@touch $(STAMP)

$(TEST_STAMP): $(STAMP)
	$(PIP) -e '.[test]'
	@touch $(TEST_STAMP)

migrate: setup
	$(PY) -m backend.migrate

## The dashboard with one local worker (SQLite + filesystem broker unless configured otherwise).
run: setup
	$(PY) -m backend.run_local $(RUN_ARGS)

## The API alone (production: point DATABASE_URL/BROKER_URL at PostgreSQL/Redis). HOST, PORT and
## TRUSTED_PROXIES (whose X-Forwarded-For is believed; default none) come from the settings:
## `HOST=0.0.0.0 TRUSTED_HOSTS=missmod.example.org make serve`.
serve: migrate
	$(PY) -m backend.serve $(SERVE_ARGS)

## One worker alone: start one per GPU; each claims a GPU no other worker of the host holds.
worker: setup
	$(PY) -m worker.gpu_worker

## The whole suite. First what it needs outside Python (tests/prerequisites.py): as root on Debian,
## Chromium and docker-compose are installed and Redis and PostgreSQL started when down; elsewhere
## it stops at once, saying what to install. Two pytest processes, one test file each at a time
## (a file's tests share their servers and fixtures): on 2 cores the suite takes about 16 minutes
## instead of 26. `PYTEST_WORKERS=` runs it in one process.
PYTEST_WORKERS ?= -n 2 --dist loadfile
test: setup-test
	$(PY) -m tests.prerequisites
	$(PY) -m pytest $(PYTEST_WORKERS) $(PYTEST_ARGS)

## The test suite with branch coverage of training/, backend/, worker/ and missmod/, the processes
## it starts included; a table per module in the terminal, and var/coverage/html/index.html.
coverage: setup-test
	$(PY) -m tests.prerequisites
	rm -rf var/coverage && mkdir -p var/coverage
	$(PY) -m pytest --cov --cov-report=term --cov-report=html:var/coverage/html $(PYTEST_ARGS)

bench: setup-test
	$(PY) -m bench

## Ten minutes of steady load on loopback (API, workers, 50 live streams, a poller): errors,
## exact points, memory slope of every process. SOAK_ARGS="--seconds 60" for a short one.
soak: setup
	$(PY) -m bench.soak $(SOAK_ARGS)
## On a GPU host (under 5 minutes, one table): ResNet-50 fp32 vs mixed precision, the input pipeline,
## GPU utilisation and memory, small runs sharing the GPU with 1, 2, 4 slots. `--device cpu --tiny`: dry mode.
bench-gpu: setup
	$(PY) bench/gpu.py $(BENCH_GPU_ARGS)

clean:
	rm -rf var .pytest_cache

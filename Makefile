# missmod — the two commands a new machine needs are `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run serve worker migrate test bench soak setup clean

setup: $(STAMP)

# Re-install when the dependencies change. torch/torchvision are pinned in pyproject.toml.
$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test]'
	@touch $(STAMP)

migrate: setup
	$(PY) -m backend.migrate

## The dashboard with one local worker (SQLite + filesystem broker unless configured otherwise).
run: setup
	$(PY) -m backend.run_local

## The API alone (production: point DATABASE_URL/BROKER_URL at PostgreSQL/Redis).
serve: migrate
	$(PY) -m uvicorn --factory backend.main:create_app --host $${HOST:-127.0.0.1} --port $${PORT:-8000}

## One worker alone: start one per GPU; each claims a GPU no other worker of the host holds.
worker: setup
	$(PY) -m worker.gpu_worker

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

bench: setup
	$(PY) -m bench

## Ten minutes of steady load on loopback (API, workers, 50 live streams, a poller): errors,
## exact points, memory slope of every process. SOAK_ARGS="--seconds 60" for a short one.
soak: setup
	$(PY) -m bench.soak $(SOAK_ARGS)

clean:
	rm -rf var .pytest_cache

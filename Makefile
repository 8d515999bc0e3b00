# Everything a fresh machine needs is installed here, pinned: torch from pip first (the CPU wheel these machines
# carry; uv does not see it), then the locked set, then this project (editable, for the `myopia` script).
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export MYOPIA_DATA_DIR ?= $(HOME)/.myopia
export OMP_NUM_THREADS ?= 2
export HF_HUB_OFFLINE := 1
export RAY_USAGE_STATS_ENABLED := 0

SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: install postgres demo test test-fast lint format bench up down clean

install: $(STAMP)

$(STAMP): pyproject.toml requirements.lock
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) (set PYTHON=...)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip==26.3
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -r requirements.lock
	$(BIN)/pip install -q --no-deps -e .
	touch $@

demo: install
	$(BIN)/myopia demo --json-out $(MYOPIA_DATA_DIR)/demo-results.json

# The store's tests start their own PostgreSQL server: Debian's package, installed here if missing.
postgres:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { $(SUDO) apt-get update -qq && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql; }

test: install postgres
	$(BIN)/python -m pytest -q -ra

test-fast: install postgres
	$(BIN)/python -m pytest -q -m "not slow"

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: install
	$(BIN)/python bench/myopic_attention.py

# The compose stack (needs a Docker engine; none runs on the development machines: see the README).
up:
	docker compose up -d --build
	@echo "API http://127.0.0.1:8000/docs, MLflow http://127.0.0.1:5000, Ray dashboard http://127.0.0.1:8265"

down:
	docker compose down

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache

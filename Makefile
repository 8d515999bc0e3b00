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

.PHONY: install demo test test-fast lint format bench clean

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

test: install
	$(BIN)/python -m pytest -q -ra

test-fast: install
	$(BIN)/python -m pytest -q -m "not slow"

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: install
	$(BIN)/python bench/myopic_attention.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache

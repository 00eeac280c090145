# sslseg developer commands. `make help` lists them.
PYTHON ?= python
export HYDRA_FULL_ERROR = 1
export NO_ALBUMENTATIONS_UPDATE = 1

.PHONY: help install test test-fast lint format train eval bench clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*##/\t/'

install:  ## install sslseg (editable) with its dev tools into the current Python
	$(PYTHON) -m pip install -e ".[dev]"

test:  ## the whole test suite (what CI runs)
	$(PYTHON) -m pytest

test-fast:  ## unit tests only, no end-to-end training runs
	$(PYTHON) -m pytest -m "not slow"

lint:  ## ruff
	$(PYTHON) -m ruff check sslseg tests train.py eval.py

format:  ## ruff autofix + format
	$(PYTHON) -m ruff check --fix sslseg tests train.py eval.py
	$(PYTHON) -m ruff format sslseg tests train.py eval.py

train:  ## the default job: DeepLabV3+ on the procedural toy set, CPU-sized
	$(PYTHON) train.py

bench:  ## training-step / data / inference benchmark (see README)
	$(PYTHON) -m sslseg.bench

clean:  ## caches (keeps data/ and outputs/)
	rm -rf .pytest_cache .ruff_cache **/__pycache__

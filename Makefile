# The README's two commands are `make study` and `make test`. Each creates ./.venv with
# python3 on first use and reinstalls only when the requirements change, so both can be run
# again and again. Set VENV to put the virtualenv elsewhere.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# `make study` runs the five notebooks headless with the cpu profile, downloading from
# Kaggle; `make study DATA_DIR=path` uses a folder you have; PROFILE=full on a GPU machine.
PROFILE ?= cpu
DATA_DIR ?=

.PHONY: venv test test-colab-versions lint study notebooks clean

$(STAMP): requirements.txt requirements/study.txt requirements/dev.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	touch $(STAMP)

venv: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check .

# Two workers: most tests keep one core busy. The notebooks and the tests of their run folder
# stay together on one worker, in order (the "study" group, tests/conftest.py).
PYTEST_WORKERS ?= -n 2 --dist loadgroup

test: lint
	$(BIN)/python -m pytest $(PYTEST_WORKERS)

# The whole suite with the package versions of Google Colab's runtime
# (.ci/colab-constraints.txt), in its own virtualenv.
COLAB_VENV ?= .venv-colab
$(COLAB_VENV)/.installed: requirements.txt requirements/study.txt requirements/dev.txt .ci/colab-constraints.txt
	$(PYTHON) -m venv $(COLAB_VENV)
	$(COLAB_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(COLAB_VENV)/bin/python -m pip install --quiet -r requirements.txt -c .ci/colab-constraints.txt
	touch $@

test-colab-versions: $(COLAB_VENV)/.installed
	$(COLAB_VENV)/bin/python -m pytest $(PYTEST_WORKERS)

study: $(STAMP)
	$(BIN)/python -m helpers.study --profile $(PROFILE) $(if $(DATA_DIR),--data-dir "$(DATA_DIR)")

# After changing a notebook: strip its outputs (tags stay), then re-execute the nbval copies.
notebooks: $(STAMP)
	$(BIN)/nbstripout notebooks/*.ipynb
	$(BIN)/python -m helpers.tools.notebooks sync
	$(BIN)/python -m helpers.tools.notebooks refresh

clean:
	rm -rf $(VENV) $(COLAB_VENV) .pytest_cache .ruff_cache

# The README's two commands are `make study` and `make test`. Each creates ./.venv with
# python3 on first use and reinstalls only when requirements.txt changes, so both can be run
# again and again. Set VENV to put the virtualenv elsewhere.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# `make study` downloads from Kaggle; `make study DATA_DIR=path` uses a folder you have.
DATA_DIR ?=
SOURCE ?= $(if $(DATA_DIR),local,kaggle)
RUN_DIR ?= runs/latest

.PHONY: venv test lint study clean

$(STAMP): requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	touch $(STAMP)

venv: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check .

test: lint
	$(BIN)/python -m pytest

study: $(STAMP)
	$(BIN)/python -m helpers.data prepare --source $(SOURCE) \
		$(if $(DATA_DIR),--data-dir "$(DATA_DIR)") --run-dir "$(RUN_DIR)"

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache

# The README's two main commands are `make study` and `make test`. Each creates ./.venv with
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

.PHONY: venv test test-colab-versions test-lowest-versions lint study notebooks clean

$(STAMP): requirements.txt requirements/study.txt requirements/cluster.txt requirements/dev.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	touch $(STAMP)

venv: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check .

# The suite runs as two pytest processes at once, one per core (most tests keep one core
# busy): the notebooks under nbval with the tests of the run folder they leave (in order,
# tests/conftest.py) and a few slow files in the first, the rest in the second. The first's
# report follows the second's; either failing fails the target.
FIRST_HALF := tests/notebooks tests/test_smoke_study.py tests/test_colab.py \
	tests/test_replicas.py

test: lint
	@$(BIN)/python -m pytest -p no:cacheprovider $(FIRST_HALF) > $(VENV)/first-half.log 2>&1 & \
	first=$$!; \
	$(BIN)/python -m pytest $(addprefix --ignore=,$(FIRST_HALF)); second=$$?; \
	wait $$first; first=$$?; \
	echo "== The first half of the suite ($(FIRST_HALF)), run beside the above:"; \
	cat $(VENV)/first-half.log; \
	exit $$(( first || second ))

# The whole suite at pinned package versions, each set in its own virtualenv .venv-NAME:
# colab, those of Google Colab's runtime (.ci/colab-constraints.txt); lowest, the lowest the
# requirements admit (.ci/lowest-constraints.txt; PYTHON must be 3.11 or 3.12 for them).
PINNED_SETS := colab lowest
$(PINNED_SETS:%=.venv-%/.installed): .venv-%/.installed: requirements.txt \
		requirements/study.txt requirements/cluster.txt requirements/dev.txt .ci/%-constraints.txt
	$(PYTHON) -m venv .venv-$*
	.venv-$*/bin/python -m pip install --quiet --upgrade pip
	.venv-$*/bin/python -m pip install --quiet -r requirements.txt -c .ci/$*-constraints.txt
	touch $@

$(PINNED_SETS:%=test-%-versions): test-%-versions: .venv-%/.installed
	.venv-$*/bin/python -m pytest

study: $(STAMP)
	$(BIN)/python -m helpers.study --profile $(PROFILE) $(if $(DATA_DIR),--data-dir "$(DATA_DIR)")

# After changing a notebook: strip its outputs (tags stay), then re-execute the nbval copies.
notebooks: $(STAMP)
	$(BIN)/nbstripout notebooks/*.ipynb
	$(BIN)/python -m helpers.tools.notebooks sync
	$(BIN)/python -m helpers.tools.notebooks refresh

clean:
	rm -rf $(VENV) $(PINNED_SETS:%=.venv-%) .pytest_cache .ruff_cache

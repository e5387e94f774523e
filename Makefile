# make run       : the main job (see README)
# make test      : the whole test suite (what CI runs)
# make test-fast : the unit tests only (tests not marked slow)
# make docs      : the documentation site, built strictly into site/
# Each target sets up .venv first; the set-up is skipped when nothing changed.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check -q
STAMP  := $(VENV)/.installed
SETUP_INPUTS := setup.py Makefile $(wildcard requirements/*.txt)

.PHONY: run test test-fast bench docs install clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip wheel

$(STAMP): $(PY) $(SETUP_INPUTS)
	$(PIP) install -r requirements/core.txt -r requirements/prompts.txt \
	  -r requirements/eval.txt -r requirements/test.txt -r requirements/docs.txt
	$(PIP) install --no-deps -r requirements/nodeps.txt
	$(PIP) install --no-deps --ignore-requires-python promptsource==0.2.3
	$(PIP) install --no-deps -e .
	touch $(STAMP)

install: $(STAMP)

STUDY_OUT ?= out/study

run: $(STAMP)
	$(VENV)/bin/arch-objective study --preset quick --out $(STUDY_OUT)

test: $(STAMP)
	$(PY) -m pytest -n 2 -q tests

test-fast: $(STAMP)
	$(PY) -m pytest -n 2 -q -m "not slow" tests

docs: $(STAMP)
	$(PY) docs/gen_reference.py
	$(PY) -m mkdocs build --strict --site-dir site

bench: $(STAMP)
	$(PY) -m bench

clean:
	rm -rf $(VENV) build *.egg-info site

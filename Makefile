# pf-keras tasks. Each target sets up the virtualenv it needs (.venv, editable install).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup demo test lint clean

$(STAMP): setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP)

# Main job on the embedded default data, offline: train briefly, export, print a latency table.
demo: $(STAMP)
	bash scripts/demo.sh

# Lint, then the whole test suite (full-size "large" checks included) on PYTEST_WORKERS pytest-xdist workers
# (an idle worker takes tests queued for the other; tests/conftest.py: threads per worker, slowest first).
PYTEST_WORKERS ?= 2
test: $(STAMP)
	$(VENV)/bin/ruff check pf_keras training export tests setup.py
	TF_CPP_MIN_LOG_LEVEL=2 $(PY) -m pytest -q -n $(PYTEST_WORKERS) --dist worksteal --durations=15

lint: $(STAMP)
	$(VENV)/bin/ruff check pf_keras training export tests setup.py

clean:
	rm -rf $(VENV) runs build *.egg-info

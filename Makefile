# cmrdx: the README's two commands (make demo, make test) work on a fresh machine with nothing installed by hand.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
CMRDX := $(VENV)/bin/cmrdx
EXAMPLE ?= examples/phantom-study

.PHONY: demo test test-fast lint fuzz bench install install-dev clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --no-cache-dir --upgrade pip

# Runtime install (no torch). Re-run when pyproject.toml changes.
$(VENV)/.installed: pyproject.toml | $(PY)
	$(PY) -m pip install -q --no-cache-dir -e .
	touch $@

# Dev install: runtime + train extra + test tools + the packages that ship real DICOM test files.
# heudiconv is installed without its dependencies (nipype and friends): only its test data is used.
$(VENV)/.installed-dev: pyproject.toml | $(PY)
	$(PY) -m pip install -q --no-cache-dir -e ".[dev]"
	$(PY) -m pip install -q --no-cache-dir --no-deps "heudiconv==1.5.1"
	touch $@ $(VENV)/.installed

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

demo: $(VENV)/.installed
	$(CMRDX) inspect $(EXAMPLE)
	$(CMRDX) classify $(EXAMPLE) --report demo-report.html

test: $(VENV)/.installed-dev
	$(PY) -m pytest -q

# The edit loop: every test that needs no torch (no training, no export; about a third of the suite's time).
test-fast: $(VENV)/.installed-dev
	$(PY) -m pytest -q -m "not torch"

# The long fuzz runs (hostile headers and the whole CLI over bad inputs); CI runs their short versions in `make test`.
fuzz: $(VENV)/.installed-dev
	$(PY) -m pytest -q -m fuzz tests/test_fuzz_cli.py tests/test_fuzz_headers.py

# The gate CI runs before the tests: ruff (rules in pyproject.toml) and mypy (config in pyproject.toml).
lint: $(VENV)/.installed-dev
	$(VENV)/bin/ruff check cmrdx tests bench
	$(VENV)/bin/mypy

bench: $(VENV)/.installed-dev
	$(PY) bench/run_all.py

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache

# The two set-up commands of a fresh machine: `make run` (the demo) and `make test` (the suite).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP_RUN := $(VENV)/.installed-run
STAMP_DEV := $(VENV)/.installed-dev

.PHONY: run test lint bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(STAMP_RUN): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e '.[demo]'
	touch $@

# torch is an optional, independent reference for the tests (torch.load reads what we write); the project
# never needs it, so a machine where it cannot be installed still runs the suite, with that one check skipped.
$(STAMP_DEV): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e '.[dev]'
	$(PY) -m pip install --quiet torch==2.13.0 || echo "torch 2.13.0 unavailable: the torch cross-check will skip"
	touch $@ $(STAMP_RUN)

run: $(STAMP_RUN)
	$(VENV)/bin/synatra-local demo

test: $(STAMP_DEV)
	$(PY) -m ruff check .
	$(PY) -m pytest -q

lint: $(STAMP_DEV)
	$(PY) -m ruff check .

bench: $(STAMP_DEV)
	$(PY) benchmarks/bench_convert.py
	$(PY) benchmarks/bench_runtime.py

clean:
	rm -rf $(VENV) build *.egg-info

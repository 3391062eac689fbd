# One environment (.venv), made on first use; every target runs inside it.
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU build lies on disk here; on a GPU machine set TORCH_SPEC to the CUDA build you want.
TORCH_SPEC ?= torch==2.13.0
export TORCH_EXTENSIONS_DIR ?= $(CURDIR)/.cache/torch_extensions

.PHONY: env demo test test-all lint format bench compile-check clean

$(VENV)/.installed: setup.py
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

env: $(VENV)/.installed

demo: env
	$(PY) -m reflectioncoder.demo --out runs/demo

# Every Triton kernel really runs (on the CPU, through the interpreter), then the kernels are
# compiled ahead of time for sm_80 and sm_90 to check registers, spills and shared memory.
# `test` (CI) leaves out the tests marked slow; `test-all` runs them too.
PYTEST_MARK ?= not slow
test: env
	TRITON_INTERPRET=1 $(PY) -m pytest -q -m "$(PYTEST_MARK)"
	$(PY) -m bench.compile_check --out bench/results/compile_check.json

test-all:
	$(MAKE) test PYTEST_MARK=

lint: env
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: env
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

compile-check: env
	$(PY) -m bench.compile_check --out bench/results/compile_check.json

bench: env
	$(PY) -m bench.run_all

clean:
	rm -rf $(VENV) runs .cache

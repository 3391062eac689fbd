# One environment (.venv), made on first use; every target runs inside it. It installs the versions
# last tested together: requirements/lock.txt, given to pip as constraints (setup.py keeps the
# ranges for people who install the package into their own environment). `make env LATEST=1`
# makes .venv-latest with the newest versions those ranges allow instead; `make check-latest`
# runs the quick check there (.ci/drift.py) and `make lock` refreshes the lock from it.
LATEST ?=
LOCK ?= requirements/lock.txt
EXTRAS ?= dev
LOCK_EXTRAS ?= dev,bench
ifeq ($(LATEST),1)
VENV ?= .venv-latest
PIP_PINS := --upgrade --upgrade-strategy eager
PINNED_BY :=
else
VENV ?= .venv
PIP_PINS := -c $(LOCK)
PINNED_BY := $(LOCK)
endif
PY := $(VENV)/bin/python
# The Python the environment is made with (setup.py's python_requires; the lock's is in its header)
PYTHON ?= python3
# The CPU build lies on disk here; on a GPU machine set TORCH_SPEC to the CUDA build you want.
TORCH_SPEC ?= torch==2.13.0
export TORCH_EXTENSIONS_DIR ?= $(CURDIR)/.cache/torch_extensions

.PHONY: env check-latest lock demo test test-all lint format bench bench-compare bench-reports gpu-suite compile-check clean

# pip needs the package index: when it fails, .ci/env_state.py says whether the index answers
# and what state the environment is in (an older stamp stays, so the next make tries again).
ENV_STATE = $(PYTHON) .ci/env_state.py --venv $(VENV) --lock "$(PINNED_BY)"
PIP_FAILED = { $(ENV_STATE) failed; exit 1; }

$(VENV)/.installed: setup.py $(PINNED_BY)
	@$(ENV_STATE) before
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip || $(PIP_FAILED)
	$(PY) -m pip install -q $(PIP_PINS) "$(TORCH_SPEC)" || $(PIP_FAILED)
	# torch named again: --upgrade-strategy eager would otherwise take the newest torch from PyPI
	$(PY) -m pip install -q $(PIP_PINS) -e ".[$(EXTRAS)]" "$(TORCH_SPEC)" || $(PIP_FAILED)
	# The stamp names the lock the versions came from (empty: the newest allowed); tests/test_drift.py reads it
	echo "$(PINNED_BY)" > $@

# An environment whose Python was removed or replaced since (a pyenv version uninstalled, the
# system's Python upgraded) has an up-to-date stamp but no interpreter: say so rather than "No such file".
env: $(VENV)/.installed
	@$(PY) -c "" 2>/dev/null || { echo "make env: $(VENV)/bin/python does not run (the Python \
	it was made with moved or was removed); make it again: rm -rf $(VENV) && make env" >&2; exit 1; }

# The newest versions setup.py allows (torch stays at TORCH_SPEC: an unpinned torch is a CUDA
# build of several GB), made afresh each time: imports, the fast tests of the loss, model,
# trainer and CLI, and the smallest demo; a failure names the packages newer than the lock.
check-latest:
	rm -rf .venv-latest
	$(MAKE) env LATEST=1
	.venv-latest/bin/python .ci/drift.py check --lock $(LOCK)

# Refresh the lock: a fresh environment at the newest allowed versions (with the `bench` extra,
# so evalplus is pinned too), frozen. Run `make test` and `make check-latest` on the result.
lock:
	rm -rf .venv-latest
	$(MAKE) env LATEST=1 EXTRAS=$(LOCK_EXTRAS)
	.venv-latest/bin/python .ci/drift.py freeze --out $(LOCK)

demo: env
	$(PY) -m reflectioncoder.demo --out runs/demo

# Every Triton kernel really runs (on the CPU, through the interpreter), then the kernels are
# compiled ahead of time for sm_80 and sm_90 with the runtime's specialisation to check
# registers, spills, shared memory, fences and atomics, the loss's roofline model and the step
# model's calibration are printed, and the GPU suite takes its whole path at toy sizes on the CPU (bench/README.md).
# `test` (CI) leaves out the tests marked slow; `test-all` runs them too.
# The 25 slowest tests are listed at the end, so a test that makes CI slow is named in its log.
PYTEST_MARK ?= not slow
test: env
	TRITON_INTERPRET=1 $(PY) -m pytest -q -m "$(PYTEST_MARK)" --durations 25
	$(PY) -m bench.compile_check --out bench/results/compile_check.json
	$(PY) -m bench.roofline
	$(PY) -m bench.step_model --calibrate
	$(PY) -m bench.gpu_suite --dry-run --out .cache/gpu_suite_dry_run
	$(PY) -m bench.gpu_step_call --dry-run --steps 1 --out .cache/gpu_step_call_dry_run.json

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

# Kernel benchmarks (pytest-benchmark, bench/test_*.py): `make bench` times every provider and
# saves the run under $(BENCH_STORAGE); `make bench-compare` reruns the rows that are stable on
# a shared machine (not marked `noisy`) and fails when a median is more than $(BENCH_FAIL)%
# slower than in the last saved run. On the CPU they time process CPU time (steady when other
# jobs share the cores), on CUDA wall time. BENCH_ARGS adds pytest arguments (e.g. -k loss).
BENCH_STORAGE ?= .benchmarks
BENCH_FAIL ?= 50
BENCH_ARGS ?=
BENCH_PATHS ?= bench
BENCH_TIMER = $(shell $(PY) -c "import torch; print('time.perf_counter' if torch.cuda.is_available() else 'time.process_time')")
BENCH_OPTS = --benchmark-only --benchmark-storage=$(BENCH_STORAGE) --benchmark-timer=$(BENCH_TIMER) \
	--benchmark-group-by=group --benchmark-columns=min,median,iqr,max,rounds --benchmark-sort=name

bench: env
	$(PY) -m pytest $(BENCH_PATHS) $(BENCH_OPTS) --benchmark-autosave $(BENCH_ARGS)

bench-compare: env
	@ls $(BENCH_STORAGE)/*/*.json >/dev/null 2>&1 || { echo "bench-compare: no saved run in $(BENCH_STORAGE); run make bench first" >&2; exit 2; }
	$(PY) -m pytest $(BENCH_PATHS) $(BENCH_OPTS) -m "not noisy" --benchmark-compare \
		--benchmark-compare-fail=median:$(BENCH_FAIL)% $(BENCH_ARGS)

# The standalone reports, each provider in its own process (peak RSS): bench/RESULTS.md.
bench-reports: env
	$(PY) -m bench.run_all

# On a lent GPU: tests on CUDA, the headline benchmarks, a 1B train step (bench/README.md).
gpu-suite: env
	$(PY) -m bench.gpu_suite

clean:
	rm -rf .venv .venv-latest runs .cache

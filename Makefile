# Each target sets up its own virtual environment: a fresh clone needs nothing else.
PYTHON ?= python3
VENV ?= .venv
TORCH_VERSION ?= 2.13.0
# The person detector (model/person/detect.py); --no-deps: pyproject.toml lists what it needs.
MEDIAPIPE := mediapipe==0.10.14
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: serve test test-all test-avx2 infer bench gpu-check clean

$(STAMP): pyproject.toml client/pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q "torch==$(TORCH_VERSION)"
	$(PY) -m pip install -q -e ".[test]"
	$(PY) -m pip install -q -e ./client    # tryon-client, its own distribution (tests/test_client.py)
	$(PY) -m pip install -q --no-deps "$(MEDIAPIPE)"
	touch $(STAMP)

serve: $(STAMP)
	$(VENV)/bin/tryon-serve

# The whole suite, then the tests marked isa (numbers from oneDNN or ATen kernels) again with
# both held to AVX2, so a tolerance that holds only on one instruction set fails on every
# machine, not on some. TEST_WORKERS pytest-xdist workers (a core each on CI's 2-core machine),
# each given whole test files (--dist loadfile: a module's server and its tests stay in one
# process); each pass ends with its slowest tests (TEST_DURATIONS of them).
TEST_WORKERS ?= 2
TEST_DURATIONS ?= 25
PYTEST := $(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --durations=$(TEST_DURATIONS)

test: test-all test-avx2

test-all: $(STAMP)
	$(PYTEST) $(PYTEST_ARGS)

test-avx2: $(STAMP)
	ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 $(PYTEST) -m isa $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) -m bench.cpu_model

# On a GPU box: the CUDA tests, bench.gpu_bench and bench.accuracy --device cuda, one JSON
# in bench/results/gpu-check-*.json (docs/gpu.md). Exits 2, saying so, where there is no CUDA.
gpu-check: $(STAMP)
	$(PY) -m bench.gpu_check $(GPU_CHECK_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache

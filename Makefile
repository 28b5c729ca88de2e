# Each target sets up its own virtual environment: a fresh clone needs nothing else.
PYTHON ?= python3
VENV ?= .venv
TORCH_VERSION ?= 2.13.0
# The person detector (model/person/detect.py); --no-deps: pyproject.toml lists what it needs.
MEDIAPIPE := mediapipe==0.10.14
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: serve test test-all test-avx2 test-image infer bench gpu-check gpu-check-wheels gpu-check-rehearsal test-lowest-torch clean

$(STAMP): pyproject.toml client/pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q "torch==$(TORCH_VERSION)"
	$(PY) -m pip install -q -e ".[test]"
	$(PY) -m pip install -q -e ./client    # tryon-client, its own distribution (tests/client/)
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

# The container image built and run for real, as root (CI: .ci/run): a Debian 12 base made
# with debootstrap, the Dockerfile built on it by buildah (chroot isolation), its root
# filesystem run under chroot as its user, read-only with tmpfs mounts, and compared byte for
# byte with this environment's `make serve` (tests/deploy/test_image.py, docs/deploy.md).
# Prints the image's size and each step's time (/var/tmp/daflow-tryon-image/report.json, with
# the logs); DEBIAN_MIRROR overrides the mirror apt uses here. Not in `make test`: about 6 minutes on a 2-core machine.
test-image: $(STAMP)
	$(PY) -m pytest -q -s -p no:cacheprovider -m image tests/deploy/test_image.py $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) -m bench.cpu_model

# On a GPU box, offline, with the Python that has its CUDA torch (GPU_PYTHON; no venv is built
# and nothing comes from the network): the steps of bench.gpu_check within --budget (420 s),
# one JSON in bench/results/gpu-check-*.json rewritten after every step (docs/gpu.md). What that
# Python lacks comes from $(GPU_CHECK_WHEELS). Exits 2, saying so, where there is no CUDA.
GPU_PYTHON ?= python3
GPU_CHECK_WHEELS ?= wheels/gpu-check
gpu-check:
	$(GPU_PYTHON) -m bench.gpu_check --wheels $(GPU_CHECK_WHEELS) $(GPU_CHECK_ARGS)

# On a machine with the registries: the wheels bench/gpu_check_wheels.txt names, for the GPU
# box's Python 3.12 on manylinux x86-64 (about 12 MiB; copy the folder to the box).
gpu-check-wheels:
	$(PYTHON) -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
		--implementation cp --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
		--platform manylinux_2_28_x86_64 --platform any -d $(GPU_CHECK_WHEELS) \
		-r bench/gpu_check_wheels.txt
	du -sh $(GPU_CHECK_WHEELS)

# CI (.ci/run): every step of `make gpu-check` on this CPU (bench.gpu_check --rehearse), in a copy
# of the GPU box's environment: torch 2.11 and Triton 3.6 with only the box's packages that the
# check uses (bench/gpu_box_packages.txt), and what the box lacks installed by the check itself
# from a wheels folder with pip --no-index, no pip configuration and a dead proxy for all but 127.0.0.1. The
# venv (torch's CUDA build, about 4.6 GB) comes from pip's cache after the first run.
REHEARSAL_VENV ?= .venv-gpu-rehearsal
REHEARSAL_WHEELS ?= wheels/gpu-check-rehearsal
# Not the tracked bench/results/gpu-check-rehearsal.json (the plan's estimates): REHEARSAL_OUT=that to update it.
REHEARSAL_OUT ?= .gpu-check/rehearsal.json
gpu-check-rehearsal:
	test -x $(REHEARSAL_VENV)/bin/python || $(PYTHON) -m venv $(REHEARSAL_VENV)
	$(REHEARSAL_VENV)/bin/python -m pip install -q -r bench/gpu_box_packages.txt
	$(REHEARSAL_VENV)/bin/python -m pip download -q --no-deps --only-binary=:all: -d $(REHEARSAL_WHEELS) \
		-r bench/gpu_check_wheels.txt
	rm -rf .gpu-check
	PIP_CONFIG_FILE=/dev/null PIP_NO_INDEX=1 http_proxy=http://127.0.0.1:9 https_proxy=http://127.0.0.1:9 no_proxy=127.0.0.1,localhost \
		$(REHEARSAL_VENV)/bin/python -m bench.gpu_check --rehearse --wheels $(REHEARSAL_WHEELS) \
		--out $(REHEARSAL_OUT) $(GPU_CHECK_ARGS)

# Not CI: the model, kernel and engine tests and the ahead-of-time compile check (sm_80/89/90)
# under the lowest torch pyproject.toml supports, with the Triton it pins (2.11: Triton 3.6).
# The registry's torch is the CUDA build (about 3 GB with NVIDIA's libraries); it runs here
# without a GPU.
LOWEST_TORCH ?= 2.11.0
LOWEST_VENV ?= .venv-lowest-torch
LOWEST_TESTS := tests/model/test_network.py tests/model/kernels tests/model/test_engine.py \
	tests/model/test_precision.py tests/model/images/test_levels.py \
	tests/model/images/test_letterbox.py tests/model/images/test_decode.py tests/model/images/test_encode.py \
	tests/model/images/test_inputs.py
test-lowest-torch:
	test -x $(LOWEST_VENV)/bin/python || $(PYTHON) -m venv $(LOWEST_VENV)
	$(LOWEST_VENV)/bin/python -m pip install -q "torch==$(LOWEST_TORCH)"
	$(LOWEST_VENV)/bin/python -m pip install -q -e ".[test]" "torch==$(LOWEST_TORCH)"
	$(LOWEST_VENV)/bin/python -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
	$(LOWEST_VENV)/bin/python -m pytest -q -p no:cacheprovider $(LOWEST_TESTS) $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) $(LOWEST_VENV) $(REHEARSAL_VENV) .gpu-check .pytest_cache

# syntax=docker/dockerfile:1
# The try-on service: one replica per container, GPU when the host lends one.
# Build:  docker build -t daflow-tryon .          (or: podman build / buildah bud --format docker)
# CPU:    docker build -t daflow-tryon:cpu --build-arg BASE_IMAGE=ubuntu:24.04 \
#             --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu .
# Run:    docker run --gpus all -p 8000:8000 -v "$PWD/weights:/app/weights:ro" \
#             --read-only --tmpfs /tmp -v triton-cache:/var/cache/triton \
#             --cap-drop ALL --security-opt no-new-privileges --stop-timeout 45 daflow-tryon
# The root filesystem may be read-only (docker/k8s and docker-compose.yml run it so): the
# service writes only to /tmp and Triton's cache. SIGTERM starts the drain (readiness turns 503, queued and
# in-flight requests finish within TRYON_DRAIN_TIMEOUT_S, 30 s by default); give the
# container longer than that before SIGKILL: --stop-timeout 45 / stop_grace_period: 45s.
# Built and run for real by `make test-image` (tests/deploy/test_image.py); docs/deploy.md.

# A CUDA runtime base pins the user-space CUDA the torch wheel was built for;
# change it together with TORCH_INDEX_URL (e.g. 13.0.x with .../whl/cu130). Any Debian or
# Ubuntu base whose python3 is 3.11 or 3.12 works (mediapipe 0.10.14 has no 3.13 wheel).
ARG BASE_IMAGE=nvidia/cuda:12.8.1-runtime-ubuntu24.04
FROM ${BASE_IMAGE}

ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
# Where pip finds everything else (a mirror, or a local wheelhouse), and optionally a
# constraints file (path or URL) pinning what it installs: `make test-image` passes the
# versions of the virtual environment it compares the image against. pip reads both
# from the environment, as build arguments are during RUN.
ARG PIP_INDEX_URL=https://pypi.org/simple
ARG PIP_CONSTRAINT

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# Ubuntu's python3 follows the base image tag; its security updates are wanted, so unpinned.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv "$VIRTUAL_ENV"

# torch alone first: the largest layer, rebuilt only when the build arguments change.
RUN pip install --no-cache-dir "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX_URL}"

WORKDIR /app

# The dependencies listed in pyproject.toml, in a layer of their own: editing
# code reuses it; only a change to pyproject.toml reinstalls them.
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip install --no-cache-dir -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

# The person detector's models ship in this wheel; --no-deps keeps out jax, jaxlib, sounddevice
# and the GUI OpenCV it declares (pyproject.toml lists what it really imports).
ARG MEDIAPIPE_VERSION=0.10.14
RUN pip install --no-cache-dir --no-deps "mediapipe==${MEDIAPIPE_VERSION}"

# Code is owned by root and read-only to the service's user. Compiled kernels go to folders
# the user owns: Triton's (GPU: compiles and autotuning at warm-up; mount a volume there,
# docker-compose.yml and docker/k8s do, so restarts start warm) and Numba's (the CPU
# sampler, filled below; on a read-only root filesystem the service reads it from a copy in
# /tmp, where another CPU's compile goes: model/kernels/numba_cache.py). matplotlib, which
# the person detector imports, keeps its font cache under /tmp: the home folder is read-only.
ENV TRITON_CACHE_DIR=/var/cache/triton \
    NUMBA_CACHE_DIR=/var/cache/numba \
    MPLCONFIGDIR=/tmp/matplotlib
RUN useradd --no-log-init --create-home --uid 10001 --user-group tryon \
    && mkdir -p /app/weights "$TRITON_CACHE_DIR" "$NUMBA_CACHE_DIR" \
    && chown 10001:10001 "$TRITON_CACHE_DIR" "$NUMBA_CACHE_DIR"
COPY model/ model/
COPY service/ service/
COPY docker/healthcheck.py docker/healthcheck.py

# The caches a replica reads at start-up, filled now so that every container starts warm
# (docs/deploy.md, "A replica's start-up"; bench/startup.py measures both): bytecode
# (PYTHONDONTWRITEBYTECODE keeps a replica from writing any; pip compiled the packages' and
# this checks them, all but torch's test-suite helpers, which hold files in 3.12-only syntax
# and are never imported when serving), then, as the service's user, Numba's sampler for
# this build machine's CPU (another CPU compiles its own at start-up, about a second) and,
# were a GPU present, Triton's kernels (a build has none: the first replica on a node fills
# the volume).
RUN python -m compileall -q -j 0 -x '/torch/testing/_internal/' model service docker "$VIRTUAL_ENV"

# Numeric, so Kubernetes runAsNonRoot can verify it without reading /etc/passwd.
USER 10001:10001
RUN python -m model.warm_caches

# Weights: mount a folder at /app/weights (the service looks there when
# TRYON_WEIGHTS is unset), or set TRYON_WEIGHTS to a file inside the mount.
ENV TRYON_HOST=0.0.0.0 \
    TRYON_PORT=8000
EXPOSE 8000

# Liveness only: a replica that is draining or warming up is alive, not broken. Nothing
# answers until it is ready; 120 s of start, over 5x the slowest cold start measured (22.4 s,
# fresh caches; bench/startup.py). No --start-interval: buildah before 1.33 (podman 4.x, as
# Debian 12 and Ubuntu 22.04 ship) refuses it and Docker before 25 ignores it; compose sets
# start_interval: 2s (docker-compose.yml) and Kubernetes probes every 2 s while it starts.
HEALTHCHECK --interval=10s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "docker/healthcheck.py", "/healthz"]

STOPSIGNAL SIGTERM
CMD ["python", "-m", "service"]

"""The Dockerfile built and its image run for real, without a container engine (tests/utils/image.py):

- a Debian 12 base made with debootstrap, the Dockerfile built on it unchanged by buildah with
  chroot isolation (the build arguments point pip at the wheels of the virtual environment the
  image is compared with, served on 127.0.0.1);
- the image's root filesystem run under chroot as its user (uid 10001, no capabilities, no new
  privileges), read-only, with tmpfs at /tmp and Triton's cache and the weights mounted
  read-only, as docker/k8s and docker-compose.yml run it;
- checked: readiness with every component ready; a photo and a masked-model try-on byte-equal
  to the same requests to a process started as ``make serve`` starts one; the image's own
  HEALTHCHECK command; a SIGTERM drain that answers what it holds and exits 0; nothing written
  outside the mounts (the overlay's upper folder stays empty, no write refused in the log).

``make test-image`` runs it (CI too: ``.ci/run``), as root, and prints the image's size and the
time each step took (also in /var/tmp/daflow-tryon-image/report.json, beside the logs); ``make test``
leaves it out (marker ``image``).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.fixtures.service.harness import free_port, stop_process
from tests.fixtures.service.probe import wait_until_ok
from tests.utils import REPO
from tests.utils.image import (Buildah, Chrooted, ImageRoot, Wheelhouse, build_image, debootstrap_base,
                               dockerfile_arg, missing_tools, project_requirements)
from tests.utils.installed import skip_missing

pytestmark = [pytest.mark.image, pytest.mark.timeout(1800)]

# Outside the repository, which is the build's context: buildah's storage, the logs, the report.
WORK = Path(os.environ.get("TRYON_IMAGE_WORK", "/var/tmp/daflow-tryon-image"))
# TRYON_IMAGE_KEEP=1: keep the storage, and on the next run reuse the base and the layers that did
# not change (a developer's loop; CI builds from nothing and reports that time).
KEEP = os.environ.get("TRYON_IMAGE_KEEP") == "1"
KEPT_INDEX_PORT = 18765  # the build arguments name the index: a kept run keeps its address
BASE_TAG, TAG = "localhost/daflow-base:bookworm", "localhost/daflow-tryon:test"
EXAMPLES = REPO / "service" / "examples"
# As `docker run -e` would set them; the rest is the image's own environment.
SETTINGS = {"TRYON_HOST": "127.0.0.1", "TRYON_DEVICE": "cpu"}
READY_S = 300
MASKED_MODEL = {name: (f"{name}.png", (EXAMPLES / f"{name}.png").read_bytes(), "image/png")
                for name in ("masked_model", "pose", "cloth")}
PHOTO = {"person": ("person.jpg", (EXAMPLES / "person.jpg").read_bytes(), "image/jpeg"),
         "cloth": MASKED_MODEL["cloth"]}


@pytest.fixture(scope="module")
def report(request):
    """What the run measured: written to report.json in WORK and printed at the end."""
    measured: dict = {}
    started = time.perf_counter()
    yield measured
    measured["total_s"] = round(time.perf_counter() - started, 1)
    WORK.mkdir(parents=True, exist_ok=True)
    (WORK / "report.json").write_text(json.dumps(measured, indent=2) + "\n")
    terminal = request.config.pluginmanager.getplugin("terminalreporter")
    if terminal is not None:
        terminal.write_line(f"\nimage test: {json.dumps(measured)}")


@pytest.fixture(scope="module")
def image(report):
    if os.geteuid() != 0:
        skip_missing("root", "debootstrap, buildah's storage and chroot need root; .ci/run runs as root")
    if missing := missing_tools():
        skip_missing(", ".join(missing), "apt-get install debootstrap buildah; .ci/run does this")
    buildah = Buildah(WORK)
    report["kept_from_last_run"] = KEEP and buildah.has_image(BASE_TAG)
    if not report["kept_from_last_run"] and WORK.exists():
        buildah.remove_all()
        shutil.rmtree(WORK)
    WORK.mkdir(parents=True, exist_ok=True)
    step = time.perf_counter()
    if not report["kept_from_last_run"]:
        report["debian_mirror"] = debootstrap_base(buildah, WORK, BASE_TAG)
    report["base_s"], step = round(time.perf_counter() - step, 1), time.perf_counter()
    wheelhouse = Wheelhouse(Path(sys.executable), WORK / "wheelhouse",
                            # async-timeout: redis needs it below Python 3.11.3, Debian 12's is 3.11.2
                            ["torch", *project_requirements(), "async-timeout"],
                            [f"mediapipe=={dockerfile_arg('MEDIAPIPE_VERSION')}"], port=KEPT_INDEX_PORT if KEEP else 0)
    report["wheelhouse_s"], step = round(time.perf_counter() - step, 1), time.perf_counter()
    try:
        build_image(buildah, TAG, {"BASE_IMAGE": BASE_TAG, "TORCH_VERSION": wheelhouse.version_of("torch"),
                                   "TORCH_INDEX_URL": wheelhouse.index_url, "PIP_INDEX_URL": wheelhouse.index_url,
                                   "PIP_CONSTRAINT": wheelhouse.constraints_url}, WORK / "build.log", layers=KEEP)
    finally:
        wheelhouse.close()
    report["build_s"] = round(time.perf_counter() - step, 1)
    root = ImageRoot(buildah, TAG)
    report["image_bytes"] = root.size_bytes()
    yield root
    root.close()
    if not KEEP:  # the logs and the report stay
        buildah.remove_all()
        for folder in ("storage", "run", "wheelhouse"):
            shutil.rmtree(WORK / folder, ignore_errors=True)


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory, standin_weights_file) -> Path:
    """A folder holding the stand-in weights under the first name the service looks for."""
    folder = tmp_path_factory.mktemp("weights")
    shutil.copy(standin_weights_file, folder / "daflow.safetensors")
    folder.chmod(0o755)  # readable by the image's user, as a volume of weights must be
    (folder / "daflow.safetensors").chmod(0o644)
    return folder


def start_container(image: ImageRoot, weights_dir: Path, name: str,
                    settings: dict[str, str] | None = None) -> tuple[Chrooted, str]:
    """The image's CMD as `docker run --read-only --tmpfs /tmp -v weights:/app/weights:ro` runs it."""
    port = free_port()
    env = SETTINGS | (settings or {}) | {"TRYON_PORT": str(port)}
    container = Chrooted(image, image.config["Cmd"], env, WORK, name,
                         tmpfs=("/tmp", image.env["TRITON_CACHE_DIR"]), read_only_mount=(weights_dir, "/app/weights"))
    try:
        wait_until_ok(f"http://127.0.0.1:{port}/readyz", container.process, READY_S)
    except Exception:
        container.stop()
        raise AssertionError(f"the image did not become ready:\n{container.stderr[-4000:]}") from None
    return container, f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def container(image, weights_dir, report):
    started = time.perf_counter()
    running, url = start_container(image, weights_dir, "service")
    report["ready_s"] = round(time.perf_counter() - started, 1)
    running.url = url
    yield running
    running.stop()


@pytest.fixture(scope="module")
def reference(weights_dir, tmp_path_factory):
    """A process started as `make serve` starts one (this environment's tryon-serve), same settings."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRYON_")} | SETTINGS
    env |= {"TRYON_PORT": str(port), "TRYON_WEIGHTS": str(weights_dir / "daflow.safetensors")}
    logs = tmp_path_factory.mktemp("reference")
    with open(logs / "out", "wb") as out, open(logs / "err", "wb") as err:
        process = subprocess.Popen([str(Path(sys.executable).parent / "tryon-serve")], cwd=REPO, env=env,
                                   stdout=out, stderr=err)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_ok(f"{url}/readyz", process, READY_S)
        yield url
    finally:
        stop_process(process)


def components_loaded(url: str, timeout: float = 120) -> dict:
    """/readyz once the person detector (it loads after readiness) is no longer loading."""
    end = time.monotonic() + timeout
    while True:
        info = httpx.get(f"{url}/readyz", timeout=10).json()
        if info["components"]["person_detector"]["status"] != "loading" or time.monotonic() > end:
            return info
        time.sleep(0.2)


def status_of(pid: int) -> dict[str, str]:
    return dict(line.split(":\t", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":\t" in line)


def test_the_image_is_the_dockerfiles(image, report):
    config = image.config
    assert config["User"] == "10001:10001" and image.uid == 10001
    assert config["Healthcheck"]["Test"][:2] == ["CMD", "python"] and "/healthz" in config["Healthcheck"]["Test"]
    assert config["StopSignal"] == "SIGTERM" and "8000/tcp" in config["ExposedPorts"]
    assert config["Cmd"] == ["python", "-m", "service"]
    numba_cache = image.path / image.env["NUMBA_CACHE_DIR"].lstrip("/")
    assert list(numba_cache.rglob("*.nbi")), "the build filled Numba's cache"
    report["image_gb"] = round(image.size_bytes() / 1e9, 2)


def test_ready_read_only_as_its_user_without_capabilities(container):
    pid = container.pid()
    status = status_of(pid)
    assert status["Uid"].split() == ["10001"] * 4 and status["Gid"].split() == ["10001"] * 4
    for capabilities in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        assert int(status[capabilities], 16) == 0, capabilities
    assert status["NoNewPrivs"].strip() == "1"
    mounts = {line.split()[4]: line.split()[5] for line in Path(f"/proc/{pid}/mountinfo").read_text().splitlines()}
    assert mounts["/"].split(",")[0] == "ro" and mounts["/app/weights"].split(",")[0] == "ro"
    assert mounts["/tmp"].split(",")[0] == "rw"
    info = components_loaded(container.url)
    assert info["ready"] and info["sampler"] == "numba" and info["weights"] == "daflow.safetensors"
    assert {name: c["status"] for name, c in info["components"].items()} == {
        "weights": "ready", "sampler": "ready", "jobs_store": "ready", "cache": "ready", "person_detector": "ready"}


def test_photo_and_masked_model_try_ons_are_byte_equal_to_make_serve(container, reference, report):
    assert components_loaded(reference)["weights_sha256"] == components_loaded(container.url)["weights_sha256"]
    for name, files in (("masked_model", MASKED_MODEL), ("photo", PHOTO)):
        started = time.perf_counter()
        theirs = httpx.post(f"{container.url}/v1/tryon", files=files, timeout=120)
        report[f"{name}_tryon_s"] = round(time.perf_counter() - started, 2)
        ours = httpx.post(f"{reference}/v1/tryon", files=files, timeout=120)
        assert theirs.status_code == ours.status_code == 200, (name, theirs.text, ours.text)
        assert theirs.headers["content-type"] == "image/jpeg"
        assert theirs.content == ours.content, f"{name}: the image's answer differs from make serve's"


def test_the_images_health_check_command(container, image):
    command = image.config["Healthcheck"]["Test"][1:]
    port = container.url.rsplit(":", 1)[1]
    healthy = Chrooted(image, command, SETTINGS | {"TRYON_PORT": port}, WORK, "healthcheck")
    assert healthy.wait(60) == 0, healthy.stderr
    nobody = Chrooted(image, command, SETTINGS | {"TRYON_PORT": str(free_port())}, WORK, "healthcheck-refused")
    assert nobody.wait(60) == 1 and "Connection refused" in nobody.stderr


def test_nothing_is_written_outside_the_mounts(container, image, report):
    answer = httpx.post(f"{container.url}/v1/tryon", files=PHOTO, timeout=120)  # detector, sampler, encoder
    assert answer.status_code == 200
    assert image.written() == []  # the overlay's upper folder: the image's own files untouched
    assert "Read-only file system" not in container.stderr
    assert "COMPONENT FAILED" not in container.stderr and '"level": "error"' not in container.stderr
    root = Path(f"/proc/{container.pid()}/root")  # the process's own view, its tmpfs mounts included
    tmp = sorted(str(p.relative_to(root / "tmp")) for p in (root / "tmp").rglob("*") if p.is_file())
    report["written_to_tmp"] = tmp
    # Numba's cache read from its copy in /tmp: the same files the build wrote, nothing compiled again.
    built = sorted(str(p.relative_to(image.path / "var/cache/numba"))
                   for p in (image.path / "var/cache/numba").rglob("*") if p.is_file())
    assert sorted(p.split("/", 1)[1] for p in tmp if p.startswith("numba-cache-")) == built
    assert not list((root / image.env["TRITON_CACHE_DIR"].lstrip("/")).iterdir())  # no GPU: nothing compiled


def test_sigterm_drains_what_it_holds_and_exits_0(image, weights_dir, report):
    # One request per batch: of three sent at once one runs while two wait in the queue.
    running, url = start_container(image, weights_dir, "drain", {"TRYON_MAX_BATCH_SIZE": "1"})
    try:
        with ThreadPoolExecutor(3) as pool:
            answers = [pool.submit(httpx.post, f"{url}/v1/tryon", files=MASKED_MODEL, timeout=120) for _ in range(3)]
            end = time.monotonic() + 60
            while httpx.get(f"{url}/readyz", timeout=10).json()["queue_depth"] < 1:
                assert time.monotonic() < end, "no request was ever queued"
                time.sleep(0.02)
            started = time.perf_counter()
            running.signal(signal.SIGTERM)
            statuses = [answer.result().status_code for answer in answers]
        assert statuses == [200, 200, 200]
        assert running.wait(60) == 0, running.stderr[-3000:]
        report["drain_s"] = round(time.perf_counter() - started, 2)
    finally:
        running.stop()
    assert "draining: readiness is now 503" in running.stderr

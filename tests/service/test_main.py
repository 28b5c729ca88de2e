"""service/__main__.py (tryon-serve): what starting the service needs when gRPC and tracing are off."""
from __future__ import annotations

import subprocess
import sys

from bench.gpu_check_packages import TURNED_ON_ONLY

# The import name of each package the service loads only when turned on (TRYON_GRPC_PORT,
# OTEL_TRACES_EXPORTER); bench/gpu_check_packages.TURNED_ON_ONLY names their distributions.
TURNED_ON_ONLY_MODULES = {"grpc": "grpcio", "tritonclient": "tritonclient", "opentelemetry.sdk": "opentelemetry-sdk",
                          "opentelemetry.exporter.otlp.proto.http": "opentelemetry-exporter-otlp-proto-http"}

# Runs in a Python where those packages cannot be imported, as on the GPU box, which lacks them.
WITHOUT_THEM = """
import sys
from importlib.abc import MetaPathFinder

class Absent(MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if any(name == m or name.startswith(m + ".") for m in {modules!r}):
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None

sys.meta_path.insert(0, Absent())
import service.__main__, service.api.front_end, service.processes.supervisor
from service.api.app import create_app
from service.settings import Settings
create_app(Settings())
print("built")
"""


def test_starting_with_grpc_and_tracing_off_needs_neither():
    """Off costs nothing, and the GPU check (which turns neither on) need not carry them."""
    assert set(TURNED_ON_ONLY_MODULES.values()) == TURNED_ON_ONLY
    script = WITHOUT_THEM.format(modules=sorted(TURNED_ON_ONLY_MODULES))
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          env={"PATH": "/usr/bin:/bin", "HOME": "/tmp"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "built"

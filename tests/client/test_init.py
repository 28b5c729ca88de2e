"""The client's package (client/tryon_client/__init__.py, client/pyproject.toml): it installs with
httpx alone, and importing it loads nothing of torch, numpy or PIL."""
from __future__ import annotations

import subprocess
import sys
import tomllib

from tests.fixtures.service.harness import REPO


def test_the_client_installs_with_httpx_alone():
    project = tomllib.loads((REPO / "client" / "pyproject.toml").read_text())["project"]
    assert (project["name"], project["dependencies"]) == ("tryon-client", ["httpx>=0.27"])
    loaded = subprocess.run([sys.executable, "-c", "import sys, tryon_client; "
                             "print(sorted({'torch', 'numpy', 'PIL'} & set(sys.modules)))"],
                            capture_output=True, text=True, check=True, cwd="/")
    assert loaded.stdout.strip() == "[]"

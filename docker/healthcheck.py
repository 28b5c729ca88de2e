"""Container health probe: exit 0 when the replica answers 200 on a path.

Standard library only (the image has no curl). Used by the Dockerfile's
HEALTHCHECK on /healthz (liveness); `python docker/healthcheck.py /readyz`
asks for readiness instead.
"""
from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request


def main(argv: list[str]) -> int:
    path = argv[1] if len(argv) > 1 else "/healthz"
    url = f"http://127.0.0.1:{os.environ.get('TRYON_PORT', '8000')}{path}"
    try:
        with urllib.request.urlopen(url, timeout=3) as response:
            return 0 if response.status == 200 else 1
    except (urllib.error.URLError, OSError) as exc:
        print(f"{url}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))

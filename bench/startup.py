"""How long a new replica takes from process start to ``/readyz`` 200, cold and warm.

Cold: every cache a container fills when its image is built is empty (Python bytecode under
PYTHONPYCACHEPREFIX, Numba's NUMBA_CACHE_DIR, Triton's TRITON_CACHE_DIR), as on a fresh
install; warm: the same directories again, as filled by the cold run (what an image whose
build ran ``tryon-serve --warm-caches``-style start-up once would hold). Each run starts
``python -m service`` with random weights (timing only), polls ``/readyz`` every 50 ms, and
records the ready line's own breakdown (warm-up per batch size, detector, timing).

    PYTHONPATH=$PWD .venv/bin/python -m bench.startup --runs 2 --out bench/results/startup-cpu-256x192.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
CACHES = {"PYTHONPYCACHEPREFIX": "pycache", "NUMBA_CACHE_DIR": "numba", "TRITON_CACHE_DIR": "triton"}


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_once(cache_root: Path, env: dict[str, str], timeout_s: float) -> dict:
    port = free_port()
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("TRYON_")} | env
    full_env |= {name: str(cache_root / folder) for name, folder in CACHES.items()}
    full_env |= {"PYTHONPATH": str(REPO), "TRYON_LOG_LEVEL": "info"}  # no checkpoint in weights/: random
    full_env.pop("PYTHONDONTWRITEBYTECODE", None)
    started = time.perf_counter()
    with tempfile.TemporaryFile() as err:
        process = subprocess.Popen([sys.executable, "-m", "service", "--host", "127.0.0.1", "--port", str(port)],
                                   cwd=REPO, env=full_env, stdout=subprocess.DEVNULL, stderr=err)
        ready_s = None
        try:
            while time.perf_counter() - started < timeout_s and process.poll() is None:
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                        ready_s = time.perf_counter() - started
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.05)
        finally:
            process.terminate()
            process.wait(60)
        err.seek(0)
        lines = [json.loads(line) for line in err.read().decode().splitlines() if line.startswith("{")]
    ready = next((line for line in lines if line.get("message") == "ready"), {})
    return {"ready_s": None if ready_s is None else round(ready_s, 2),
            **{k: ready.get(k) for k in ("warmup_s", "detector_warmup_s", "startup_s")}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2, help="cold+warm pairs")
    parser.add_argument("--image-size", default="256x192")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--timeout", type=float, default=300)
    parser.add_argument("--label", default="")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    env = {"TRYON_IMAGE_SIZE": args.image_size, "TRYON_DEVICE": args.device}
    result = {"benchmark": "bench.startup", "label": args.label,
              "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                          "loadavg_at_start": [round(x, 2) for x in os.getloadavg()]},
              "settings": env, "cold": [], "warm": []}
    for _ in range(args.runs):
        with tempfile.TemporaryDirectory() as root:
            result["cold"].append(start_once(Path(root), env, args.timeout))
            result["warm"].append(start_once(Path(root), env, args.timeout))
        print(json.dumps({"cold": result["cold"][-1], "warm": result["warm"][-1]}), flush=True)
    result["machine"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    text = json.dumps(result, indent=2)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()

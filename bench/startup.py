"""How long a new replica takes from process start to ``/readyz`` 200, cold and warm.

Cold: every cache a container's image fills is empty (Python's bytecode under a fresh
PYTHONPYCACHEPREFIX, so no ``__pycache__`` is read, stdlib's included; Numba's
NUMBA_CACHE_DIR; Triton's TRITON_CACHE_DIR), as on a fresh install. Warm: those folders
filled once the way the Dockerfile fills them (``python -m compileall`` over the standard
library, the packages and the code, then ``python -m model.warm_caches``), as in a container
of the image. Both run with PYTHONDONTWRITEBYTECODE=1, as the image does: a run never fills
a cache for the next. Each run starts ``python -m service`` with random weights (timing
only), polls ``/readyz`` every 50 ms, records the machine's load average as it starts, the
ready line's breakdown (build, sampler check and warm-up, admission's timing; before_s is
what came before the engine: interpreter, imports, app) and the person detector's warm-up,
which comes after readiness.

    PYTHONPATH=$PWD .venv/bin/python -m bench.startup --runs 3 --out bench/results/startup-cpu-256x192.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import sysconfig
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
CACHES = {"PYTHONPYCACHEPREFIX": "pycache", "NUMBA_CACHE_DIR": "numba", "TRITON_CACHE_DIR": "triton"}
POLL_S = 0.05
DETECTOR_WAIT_S = 60  # after ready, for the "person detector warm" line


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cache_env(cache_root: Path, env: dict[str, str]) -> dict[str, str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("TRYON_", "NUMBA_", "TRITON_"))} | env
    full_env |= {name: str(cache_root / folder) for name, folder in CACHES.items()}
    return full_env | {"PYTHONPATH": str(REPO), "PYTHONDONTWRITEBYTECODE": "1"}


def fill_like_the_image(cache_root: Path, env: dict[str, str]) -> dict:
    """The Dockerfile's two steps into ``cache_root``'s folders; returns what each took."""
    fill_env = cache_env(cache_root, env)
    fill_env.pop("PYTHONDONTWRITEBYTECODE")  # compileall writes whatever; the warm-up's imports may too
    paths = sorted({sysconfig.get_paths()[k] for k in ("stdlib", "purelib", "platlib")}) + [
        str(REPO / "model"), str(REPO / "service")]
    seconds = {}
    for name, command in (("compileall_s", ["-m", "compileall", "-q", "-j", "0", *paths]),
                          ("warm_caches_s", ["-m", "model.warm_caches", "--device", env["TRYON_DEVICE"],
                                             "--image-size", env["TRYON_IMAGE_SIZE"]])):
        started = time.perf_counter()
        # compileall exits 1 over a stray file that does not compile (e.g. a package's py2 test
        # data); what compiles is written all the same, as the image's build would have it.
        subprocess.run([sys.executable, *command], cwd=REPO, env=fill_env, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, check=name != "compileall_s")
        seconds[name] = round(time.perf_counter() - started, 1)
    return seconds


def start_once(cache_root: Path, env: dict[str, str], timeout_s: float) -> dict:
    port = free_port()
    full_env = cache_env(cache_root, env) | {"TRYON_LOG_LEVEL": "info"}  # no checkpoint in weights/: random
    load = [round(x, 2) for x in os.getloadavg()]
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
                time.sleep(POLL_S)
            waited = time.perf_counter()
            while ready_s is not None and time.perf_counter() - waited < DETECTOR_WAIT_S:
                err.seek(0)
                if b'"person detector warm"' in err.read():
                    break
                time.sleep(0.2)
        finally:
            process.terminate()
            process.wait(60)
        err.seek(0)
        lines = [json.loads(line) for line in err.read().decode().splitlines() if line.startswith("{")]
    ready = next((line for line in lines if line.get("message") == "ready"), {})
    detector = next((line for line in lines if line.get("message") == "person detector warm"), {})
    # detector_warmup_s in the ready line: a build that warmed the detector before readiness.
    breakdown = {k: ready.get(k) for k in ("build_s", "warm_s", "warmup_s", "timing_s", "startup_s", "detector_warmup_s")
                 if k in ready}
    before = None if ready_s is None or ready.get("startup_s") is None else round(ready_s - ready["startup_s"], 2)
    return {"loadavg": load, "ready_s": None if ready_s is None else round(ready_s, 2), "before_s": before,
            **breakdown, "detector_warmup_s_after_ready": detector.get("detector_warmup_s")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="cold+warm pairs")
    parser.add_argument("--image-size", default="256x192")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--timeout", type=float, default=300)
    parser.add_argument("--label", default="")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    env = {"TRYON_IMAGE_SIZE": args.image_size, "TRYON_DEVICE": args.device}
    result = {"benchmark": "bench.startup", "label": args.label,
              "command": "python -m bench.startup " + " ".join(sys.argv[1:]),
              "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                          "loadavg_at_start": [round(x, 2) for x in os.getloadavg()]},
              "settings": env, "cold": [], "warm": []}
    with tempfile.TemporaryDirectory() as filled:
        result["image_fill"] = fill_like_the_image(Path(filled), env)
        print(json.dumps({"image_fill": result["image_fill"]}), flush=True)
        for _ in range(args.runs):
            with tempfile.TemporaryDirectory() as fresh:
                result["cold"].append(start_once(Path(fresh), env, args.timeout))
            result["warm"].append(start_once(Path(filled), env, args.timeout))
            print(json.dumps({"cold": result["cold"][-1], "warm": result["warm"][-1]}), flush=True)
    for kind in ("cold", "warm"):
        ready = sorted(r["ready_s"] for r in result[kind] if r["ready_s"] is not None)
        result[f"{kind}_ready_s"] = {"min": ready[0], "median": ready[len(ready) // 2], "max": ready[-1]} if ready else None
    result["machine"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    text = json.dumps(result, indent=2)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()

"""Everything a GPU box should be checked for, in one command, one JSON and a time budget.

    make gpu-check                          # python -m bench.gpu_check [--budget 420]
    python -m bench.gpu_check --dry-run     # the plan and each step's budget; no GPU needed

Runs with the Python that already has a CUDA torch (no virtual environment is built, nothing
comes from the network). What that Python lacks of bench/gpu_check_wheels.txt (FastAPI,
pydantic, uvicorn, simplejpeg, blake3, ...) is installed offline from a folder of wheels
(``--wheels``, default wheels/gpu-check, made by ``make gpu-check-wheels`` on a machine with
the registries) into .gpu-check/site; without them it says which, in one line, and exits 3.

The steps, most valuable first, each in its own process with its own time limit (STEPS): the
environment; the CUDA tests; the kernels against their references and the copy bandwidth; the
engine in fp32/tf32/bf16/fp16 at batch 1, 8, 32; each precision's PSNR against fp32; the service
on the GPU under load with TRYON_WORKERS 1, 4 and 8; the ahead-of-time compile check. A step
that would not fit in what is left of ``--budget`` is skipped, and the JSON
(bench/results/gpu-check-<device>-<time>.json) is rewritten after every step, so a run cut short
keeps what it measured. Exits 2 at once where torch sees no CUDA device (before any pip), 3 when
packages are missing, 1 when a step failed, 0 otherwise.
"""
from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

from bench.common import RESULTS, ROOT, write_report

CUDA_TESTS = ("tests/model/kernels/test_triton_sampling.py", "tests/model/test_engine.py",
              "tests/model/test_engine_fallbacks.py")
DEFAULT_BUDGET_S = 420.0
WHEELS_LIST = ROOT / "bench" / "gpu_check_wheels.txt"
DEFAULT_WHEELS = ROOT / "wheels" / "gpu-check"
SITE = ROOT / ".gpu-check" / "site"
SERVICE_WORKERS = (1, 4, 8)


@dataclass(frozen=True)
class Step:
    name: str
    budget_s: float
    what: str
    args: tuple[str, ...]  # python arguments; "{tmp}" is the run's scratch folder
    report: str | None = None  # the JSON the step writes in {tmp}


def steps(weights: str | None) -> tuple[Step, ...]:
    w = ("--weights", weights) if weights else ()
    service = tuple(Step(f"service_workers_{n}", 45, f"tryon-serve on cuda, TRYON_WORKERS={n}, 32 clients for 10 s",
                         ("-m", "bench.load", "--configs", "batched=32", "--clients", "32", "--duration", "10",
                          "--device", "cuda", "--workers", str(n), "--out", f"{{tmp}}/service_{n}.json", *w),
                         f"service_{n}.json") for n in SERVICE_WORKERS)
    return (
        Step("cuda_tests", 90, "the CUDA tests: " + " ".join(CUDA_TESTS),
             ("-m", "pytest", "-q", "-p", "no:cacheprovider", *CUDA_TESTS, "--junitxml={tmp}/tests.xml")),
        Step("kernels", 30, "each kernel against its reference and the device's copy bandwidth",
             ("-m", "bench.gpu_bench", "--parts", "kernels", "--quick", "--out", "{tmp}/kernels.json", *w),
             "kernels.json"),
        Step("engine", 110, "the engine in fp32, tf32, bf16, fp16 at batch 1, 8, 32: img/s, p50/p99, peak memory",
             ("-m", "bench.gpu_bench", "--parts", "engine", "--batches", "1,8,32", "--seconds", "0.5",
              "--out", "{tmp}/engine.json", *w), "engine.json"),
        Step("accuracy", 35, "PSNR of each precision against fp32",
             ("-m", "bench.accuracy", "--device", "cuda", "--out", "{tmp}/accuracy.json", *w), "accuracy.json"),
        *service,
        Step("compile_check", 60, "every Triton variant compiled for sm_80/89/90, no spill",
             ("-m", "model.kernels.compile_check", "--json", "{tmp}/compile.json"), "compile.json"),
    )


def plan(all_steps: tuple[Step, ...], budget_s: float) -> list[tuple[Step, bool]]:
    """Each step and whether its budget fits in what is left, in order (a step that does not
    fit is skipped; a later, smaller one may still run)."""
    left, out = budget_s, []
    for step in all_steps:
        fits = step.budget_s <= left
        left -= step.budget_s if fits else 0
        out.append((step, fits))
    return out


def wheel_requirements() -> dict[str, str]:
    """import name -> requirement, from bench/gpu_check_wheels.txt."""
    out = {}
    for line in WHEELS_LIST.read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9_.\-]+==[^\s#]+)\s*#\s*(\S+)\s*$", line)
        if match:
            out[match.group(2)] = match.group(1)
    return out


def missing_modules() -> dict[str, str]:
    return {name: req for name, req in wheel_requirements().items() if importlib.util.find_spec(name) is None}


def provide_packages(wheels: Path) -> str | None:
    """What this Python lacks, installed offline from ``wheels`` into SITE (put on sys.path and on
    the steps' PYTHONPATH); None when all is there, else the one line that says what is missing."""
    if SITE.is_dir():
        sys.path.insert(0, str(SITE))
    missing = missing_modules()
    if not missing:
        return None
    names = " ".join(sorted(req.split("==")[0] for req in missing.values()))
    how = (f"run `make gpu-check-wheels` on a machine with the registries and copy {DEFAULT_WHEELS.relative_to(ROOT)}/ "
           "here (docs/gpu.md)")
    if not wheels.is_dir() or not any(wheels.glob("*.whl")):
        return f"bench.gpu_check: missing packages: {names}; no wheels in {wheels}: {how}"
    result = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps",
                             "--find-links", str(wheels), "--target", str(SITE), *sorted(missing.values())],
                            capture_output=True, text=True)
    importlib.invalidate_caches()
    if str(SITE) not in sys.path:
        sys.path.insert(0, str(SITE))
    still = missing_modules()
    if result.returncode != 0 or still:
        lacking = " ".join(sorted(req.split("==")[0] for req in (still or missing).values()))
        return f"bench.gpu_check: missing packages: {lacking}; not installable from {wheels}: {how}"
    return None


def run_step(step: Step, tmp: Path, timeout_s: float, env: dict) -> dict:
    """One step as a subprocess (its own session: on timeout the whole tree goes, servers too)."""
    args = [a.replace("{tmp}", str(tmp)) for a in step.args]
    print(f"== {step.name} ({timeout_s:.0f} s): {' '.join(args)}", flush=True)
    start = time.perf_counter()
    process = subprocess.Popen([sys.executable, *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        output, _ = process.communicate(timeout=timeout_s)
        code = process.returncode
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        code, output = None, (output or "") + f"\ntimed out after {timeout_s:.0f} s"
    print(output[-2000:], flush=True)
    return {"command": " ".join(args), "exit_code": code, "ok": code == 0, "budget_s": step.budget_s,
            "seconds": round(time.perf_counter() - start, 1), "output_tail": output[-4000:]}


def junit_counts(path: Path) -> dict | None:
    if not path.exists():
        return None
    suite = ET.parse(path).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    return {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}


def load(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def digest(kernels: dict | None, engine: dict | None, accuracy: dict | None, service: dict) -> dict:
    """The numbers a reader wants first, out of the steps' raw reports (kept under "raw")."""
    out: dict = {}
    if kernels:
        out["copy_bandwidth_gbs"] = kernels.get("copy_bandwidth_gbs")
        peaks = kernels.get("device_peaks") or {}
        out["nominal_bandwidth_gbs"] = peaks.get("bandwidth_tbs", 0) * 1e3 or None
        out["kernels"] = [{key: row.get(key) for key in (
            "op", "shape_bkchw", "shape_bkhw", "dtype", "flow_spread_px", "triton_ms", "speedup_vs_reference",
            "achieved_gbs", "fraction_of_copy_bandwidth", "fraction_of_nominal_bandwidth") if key in row}
            for row in kernels.get("kernels", [])]
    if engine:
        runs = {mode: {str(run["batch"]): run for run in result["runs"]} for mode, result in engine.get("ours", {}).items()}
        out["images_per_s"] = {mode: {b: r["images_per_s"] for b, r in rs.items()} for mode, rs in runs.items()}
        out["latency_ms"] = {mode: {b: {k: r.get(k) for k in r if k.startswith("latency_ms")} for b, r in rs.items()}
                             for mode, rs in runs.items()}
        out["peak_reserved_gib"] = {mode: {b: r.get("peak_reserved_gib") for b, r in rs.items()}
                                    for mode, rs in runs.items()}
        out["baseline_images_per_s"] = engine.get("baseline", {}).get("runs", [{}])[0].get("images_per_s")
        out["summary"] = engine.get("summary")
    if accuracy:
        out["psnr_db"] = {size: {mode: r.get("psnr_db", r.get("error")) for mode, r in modes.items()}
                          for size, modes in accuracy.get("results", {}).items()}
    if service:
        out["service"] = {workers: [{k: r.get(k) for k in r if k.startswith(("requests", "latency", "errors"))}
                                    for r in report.get("results", [])] for workers, report in service.items()}
    return out


def environment() -> dict:
    import torch
    import triton

    from bench.gpu_bench import driver_version
    return {"device": torch.cuda.get_device_name(0), "driver": driver_version(), "cuda": torch.version.cuda,
            "torch": torch.__version__, "triton": triton.__version__, "python": sys.version.split()[0],
            "capability": ".".join(map(str, torch.cuda.get_device_capability(0))),
            "device_count": torch.cuda.device_count(), "cpus": os.cpu_count()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=DEFAULT_BUDGET_S, help="seconds for all the steps")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and each step's budget; no GPU")
    parser.add_argument("--quick", action="store_true", help="a quarter of the budget")
    parser.add_argument("--weights", default=None, help="a checkpoint for the benchmarks; default the stand-in")
    parser.add_argument("--wheels", type=Path, default=DEFAULT_WHEELS, help="folder of wheels for what is missing")
    parser.add_argument("--out", default=None, help="JSON path; default bench/results/gpu-check-<device>-<time>.json")
    args = parser.parse_args(argv)
    budget = args.budget / 4 if args.quick else args.budget
    planned = plan(steps(args.weights), budget)
    if args.dry_run:
        print(f"bench.gpu_check plan, budget {budget:.0f} s:")
        print(f"  {'environment':<20} {0:>5.0f} s  run   GPU, driver, CUDA, torch, Triton (in this process)")
        for step, fits in planned:
            print(f"  {step.name:<20} {step.budget_s:>5.0f} s  {'run ' if fits else 'skip'}  {step.what}")
        return 0
    from bench.gpu_bench import require_cuda
    require_cuda("bench.gpu_check (make gpu-check)")  # exits 2, before any pip
    lacking = provide_packages(args.wheels)
    if lacking:
        print(lacking, file=sys.stderr)
        return 3
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), str(SITE) if SITE.is_dir() else "",
                                                                    os.environ.get("PYTHONPATH", "")) if p)}
    started = time.monotonic()
    now = datetime.datetime.now(datetime.timezone.utc)
    report = {"what": "make gpu-check", "date": now.isoformat(timespec="seconds"), "budget_s": budget,
              **environment(), "ok": True, "steps": {}}
    name = report["device"]
    out = Path(args.out) if args.out else RESULTS / (
        f"gpu-check-{name.replace(' ', '_').replace('/', '_')}-{now.strftime('%Y%m%dT%H%M%SZ')}.json")
    report["steps"]["environment"] = {"ok": True, "seconds": round(time.monotonic() - started, 1)}
    write_report(report, out)
    raw: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for step, _ in planned:
            left = budget - (time.monotonic() - started)
            if step.budget_s > left:
                report["steps"][step.name] = {"ok": None, "skipped": f"needs {step.budget_s:.0f} s, {left:.0f} s left"}
            else:
                result = run_step(step, tmp, step.budget_s, env)
                if step.name == "cuda_tests":
                    result["counts"] = junit_counts(tmp / "tests.xml")
                report["steps"][step.name] = result
                if step.report:
                    raw[step.name] = load(tmp / step.report)
                report["ok"] = report["ok"] and result["ok"]
            service = {name.removeprefix("service_"): r for name, r in raw.items() if name.startswith("service_") and r}
            report["digest"] = digest(raw.get("kernels"), raw.get("engine"), raw.get("accuracy"), service)
            report["raw"] = raw
            write_report(report, out)  # after every step: a run cut short keeps what it measured
    print(f"wrote {out}: " + ", ".join(f"{k} {'ok' if v['ok'] else 'skipped' if v['ok'] is None else 'FAILED'}"
                                       for k, v in report["steps"].items()))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())

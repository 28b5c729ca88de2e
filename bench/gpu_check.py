"""Everything a GPU box should be checked for, in one command and one JSON.

    make gpu-check                         # or: python -m bench.gpu_check [--quick]

Runs, each in its own process so one failure does not hide the others:
1. the tests that run on CUDA (kernels against their references, the engine's
   graphs against eager in every mode, the start-up fallbacks, the compile check);
2. bench.gpu_bench (engine img/s per mode and batch size, kernels' GB/s);
3. bench.accuracy --device cuda (PSNR of each mode against fp32);
and writes bench/results/gpu-check-<device>-<time>.json: device, driver, CUDA,
torch and triton versions, the tests' outcome, kernel GB/s against the measured
and the data-sheet bandwidth, img/s per mode and batch, PSNR per mode, and the
raw reports of both benchmarks. Exits 2 with a clear message where torch sees
no CUDA device, 1 when a step failed, 0 otherwise.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import torch

from bench.common import RESULTS, ROOT, write_report
from bench.gpu_bench import driver_version, require_cuda

CUDA_TESTS = ("tests/model/kernels/test_triton_sampling.py", "tests/model/test_engine.py", "tests/model/test_engine_fallbacks.py",
              "tests/model/kernels/test_compile_check.py")


def run_step(name: str, args: list[str], timeout_s: float) -> dict:
    """One step as a subprocess of this Python; its outcome and the tail of its output."""
    print(f"== {name}: {' '.join(args)}", flush=True)
    start = time.perf_counter()
    try:
        result = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout_s,
                                env={**os.environ, "PYTHONPATH": str(ROOT)})
        code, output = result.returncode, result.stdout + result.stderr
    except subprocess.TimeoutExpired as exc:
        code, output = None, f"timed out after {timeout_s} s: {exc}"
    print(output[-2000:], flush=True)
    return {"command": " ".join(args), "exit_code": code, "ok": code == 0,
            "seconds": round(time.perf_counter() - start, 1), "output_tail": output[-4000:]}


def junit_counts(path: Path) -> dict | None:
    if not path.exists():
        return None
    suite = ET.parse(path).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    return {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}


def load(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def digest(bench: dict | None, accuracy: dict | None) -> dict:
    """The numbers a reader wants first, out of the two raw reports."""
    out: dict = {}
    if bench:
        out["copy_bandwidth_gbs"] = bench.get("copy_bandwidth_gbs")
        peaks = bench.get("device_peaks") or {}
        out["nominal_bandwidth_gbs"] = peaks.get("bandwidth_tbs", 0) * 1e3 or None
        out["kernels"] = [{key: row.get(key) for key in (
            "op", "shape_bkchw", "shape_bkhw", "dtype", "flow_spread_px", "triton_ms", "speedup_vs_reference",
            "achieved_gbs", "fraction_of_copy_bandwidth", "fraction_of_nominal_bandwidth") if key in row}
            for row in bench.get("kernels", [])]
        out["images_per_s"] = {mode: {str(run["batch"]): run["images_per_s"] for run in result["runs"]}
                               for mode, result in bench.get("ours", {}).items()}
        out["peak_reserved_gib"] = {mode: {str(run["batch"]): run.get("peak_reserved_gib") for run in result["runs"]}
                                    for mode, result in bench.get("ours", {}).items()}
        baseline = bench.get("baseline", {}).get("runs", [{}])[0]
        out["baseline_images_per_s"] = baseline.get("images_per_s")
        out["summary"] = bench.get("summary")
    if accuracy:
        out["psnr_db"] = {size: {mode: r.get("psnr_db", r.get("error")) for mode, r in modes.items()}
                          for size, modes in accuracy.get("results", {}).items()}
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="bench.gpu_bench --quick (batches 1 and 8)")
    parser.add_argument("--weights", default=None, help="a checkpoint for both benchmarks; default the stand-in")
    parser.add_argument("--out", default=None, help="JSON path; default bench/results/gpu-check-<device>-<time>.json")
    args = parser.parse_args(argv)
    require_cuda("bench.gpu_check (make gpu-check)")
    import triton

    name = torch.cuda.get_device_name(0)
    now = datetime.datetime.now(datetime.timezone.utc)
    weights = ["--weights", args.weights] if args.weights else []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        steps = {
            "tests": run_step("CUDA tests", ["-m", "pytest", "-q", "-p", "no:cacheprovider", *CUDA_TESTS,
                                             f"--junitxml={tmp / 'tests.xml'}"], 3600),
            "gpu_bench": run_step("bench.gpu_bench", ["-m", "bench.gpu_bench", f"--out={tmp / 'bench.json'}",
                                                      *(["--quick"] if args.quick else []), *weights], 3600),
            "accuracy": run_step("bench.accuracy", ["-m", "bench.accuracy", "--device", "cuda",
                                                    f"--out={tmp / 'accuracy.json'}", *weights], 1800),
        }
        steps["tests"]["counts"] = junit_counts(tmp / "tests.xml")
        bench, accuracy = load(tmp / "bench.json"), load(tmp / "accuracy.json")
    report = {"what": "make gpu-check: CUDA tests, bench.gpu_bench, bench.accuracy --device cuda",
              "date": now.isoformat(timespec="seconds"), "device": name, "driver": driver_version(),
              "cuda": torch.version.cuda, "torch": torch.__version__, "triton": triton.__version__,
              "capability": ".".join(map(str, torch.cuda.get_device_capability(0))),
              "ok": all(step["ok"] for step in steps.values()), "steps": steps,
              **digest(bench, accuracy), "gpu_bench": bench, "accuracy": accuracy}
    out = Path(args.out) if args.out else RESULTS / (
        f"gpu-check-{name.replace(' ', '_').replace('/', '_')}-{now.strftime('%Y%m%dT%H%M%SZ')}.json")
    write_report(report, out)
    print(f"wrote {out}: " + ", ".join(f"{k} {'ok' if v['ok'] else 'FAILED'}" for k, v in steps.items()))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())

"""Everything a GPU box should be checked for, in one command, one JSON and a time budget.

    make gpu-check                          # python -m bench.gpu_check [--budget 480]
    python -m bench.gpu_check --dry-run     # the plan, each step's budget and estimate; no GPU needed
    make gpu-check-rehearsal                # every step on the CPU, in a copy of the box's environment

Runs with the Python that already has a CUDA torch (no virtual environment is built, nothing
comes from the network). What that Python lacks, or holds at a version that does not fit, of
bench/gpu_check_wheels.txt is installed offline from a folder of wheels (bench.gpu_check_packages).

The steps, most valuable first, each in its own process with its own time limit (``steps``):
the environment and one trivial Triton kernel (the check stops there if it cannot launch); the
kernels against their references and the copy bandwidth; the engine in fp16, bf16, fp32, tf32
at batch 1, 8, 32; the CUDA tests; each precision's PSNR against fp32; the service under load
with TRYON_WORKERS=4; the ahead-of-time compile check. A step that would not fit in what is
left of ``--budget`` is skipped, and the JSON is rewritten after every step, so a run cut short
keeps what it measured. Every step and server shares one Triton cache with autotuning results
kept (``TRITON_CACHE_AUTOTUNING``): a kernel compiled or tuned once on a cold box is not tuned
again by the next process.

An engine that fell back (sampler, CUDA graphs, precision) marks its step ``fallback``, not
``ok``, and the digest says which: reference-path numbers are never reported as ours.

``--rehearse`` runs the same steps on the CPU with tiny sizes and loads (Triton interpreted),
within the same budget logic; its seconds per step, written to REHEARSAL_RESULT, are what the
plan's GPU estimates start from (``estimate_s``). Exits 2 at once where torch sees no CUDA device
(unless rehearsing; before any pip), 3 when packages are missing, 1 when a step failed or Triton
cannot launch, 0 otherwise.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench.common import RESULTS, ROOT, write_report
from bench.gpu_check_packages import DEFAULT_WHEELS, SITE, box_packages_lacking, mismatch_line, provide_packages

CUDA_TESTS = ("tests/model/kernels/test_triton_sampling.py", "tests/model/test_engine.py")
DEFAULT_BUDGET_S = 480.0
SERVICE_WORKERS = 4
TRITON_CACHE = ROOT / ".gpu-check" / "triton-cache"
REHEARSAL_RESULT = RESULTS / "gpu-check-rehearsal.json"
# A step's GPU estimate is its rehearsed seconds times this. The rehearsal does the same process
# start-ups, imports, weight loads and HTTP work on a 2-core CPU; the box adds what the CPU never
# does (cold Triton compiles and autotuning, CUDA graph captures, cuDNN's benchmarking) and has
# 16 cores for what both do. First lease's measured seconds against the rehearsal's: docs/gpu.md.
GPU_FACTOR = 1.5
FALLBACK_KEYS = ("sampler_fallback", "cuda_graphs_fallback", "precision_fallback")


@dataclass(frozen=True)
class Step:
    name: str
    budget_s: float
    what: str
    args: tuple[str, ...]  # python arguments; "{tmp}" is the run's scratch folder
    report: str | None = None  # the JSON the step writes in {tmp}


def steps(weights: str | None, rehearse: bool = False) -> tuple[Step, ...]:
    """The steps in the order they run; ``rehearse``: the same code on the CPU, tiny."""
    w = ("--weights", weights) if weights else ()
    bench = ("-m", "bench.gpu_bench", *w) + (("--rehearse",) if rehearse else ())
    if rehearse:
        engine = ("--batches", "1,2", "--seconds", "0.1", "--quick", "--modes", "fp16,fp32", "--no-variants")
        tests = ("-n", "2")
        accuracy = ("--device", "cpu", "--sizes", "64x64", "--modes", "bf16")
        service = ("--configs", "batched=2", "--clients", "2", "--duration", "2", "--device", "cpu",
                   "--workers", "2", "--image-size", "64x64")
        compile_targets = ("--targets", "90")
    else:
        engine = ("--batches", "1,8,32", "--seconds", "0.5", "--modes", "fp16,bf16,fp32,tf32")
        tests = ("-n", "4")
        accuracy = ("--device", "cuda")
        service = ("--configs", "batched=32", "--clients", "32", "--duration", "10", "--device", "cuda",
                   "--workers", str(SERVICE_WORKERS))
        compile_targets = ()
    return (
        Step("kernels", 45, "each kernel against its reference and the device's copy bandwidth",
             (*bench, "--parts", "kernels", "--quick", "--out", "{tmp}/kernels.json"), "kernels.json"),
        Step("engine", 150, "the engine in fp16, bf16, fp32, tf32 at batch 1, 8, 32 (JSON after each mode), "
             "then fp16 without graphs and without channels-last",
             (*bench, "--parts", "engine", *engine, "--out", "{tmp}/engine.json"), "engine.json"),
        Step("cuda_tests", 100, "the CUDA tests: " + " ".join(CUDA_TESTS),
             ("-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "bench.pytest_progress", *tests,
              "--continue-on-collection-errors", *CUDA_TESTS, "--progress-jsonl={tmp}/tests.jsonl"), "tests.jsonl"),
        Step("accuracy", 40, "PSNR of each precision against fp32",
             ("-m", "bench.accuracy", *accuracy, "--out", "{tmp}/accuracy.json", *w), "accuracy.json"),
        Step("service", 90, f"tryon-serve under load, TRYON_WORKERS={SERVICE_WORKERS}, 32 clients for 10 s",
             ("-m", "bench.load", *service, "--out", "{tmp}/service.json", *w), "service.json"),
        Step("compile_check", 55, "every Triton variant compiled for sm_80/89/90, no spill",
             ("-m", "model.kernels.compile_check", *compile_targets, "--json", "{tmp}/compile.json"), "compile.json"),
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


def estimates() -> dict[str, float]:
    """Step name -> the GPU estimate in seconds: the rehearsal's measured seconds times GPU_FACTOR."""
    if not REHEARSAL_RESULT.exists():
        return {}
    rehearsed = json.loads(REHEARSAL_RESULT.read_text()).get("steps", {})
    return {name: round(r["seconds"] * GPU_FACTOR, 1) for name, r in rehearsed.items() if r.get("seconds")}


def step_env(rehearse: bool) -> dict[str, str]:
    """Every step's and every server's environment: the packages' SITE first, one Triton cache
    with autotuning kept, and on the rehearsal no GPU."""
    path = [str(ROOT), str(SITE) if SITE.is_dir() else "", os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in path if p),
           "TRITON_CACHE_DIR": str(TRITON_CACHE), "TRITON_CACHE_AUTOTUNING": "1", "PYTHONUNBUFFERED": "1"}
    if rehearse:
        env["CUDA_VISIBLE_DEVICES"] = ""  # gpu_bench --rehearse interprets Triton itself; compile_check compiles
    return env


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


def test_outcomes(path: Path) -> dict | None:
    """Counts by outcome from bench.pytest_progress's lines (written as each test ends, so a
    step cut short still has them), and the ids of those that did not pass."""
    if not path.exists():
        return None
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["outcome"]] = counts.get(row["outcome"], 0) + 1
    return {"counts": counts, "not_passed": [f"{r['nodeid']}: {r['outcome']}" for r in rows
                                             if r["outcome"] not in ("passed", "skipped")][:40]}


def load(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() and path.suffix == ".json" else None


def fallbacks(name: str, report: dict | None) -> dict[str, dict]:
    """Where an engine the step started fell back: {where: {key: reason}}, from the engines'
    ``info`` (bench.gpu_bench) or the servers' /readyz (bench.load)."""
    if not report:
        return {}
    infos: dict[str, dict] = {}
    if name == "engine":
        infos |= {f"engine.{mode}": r.get("info", {}) for mode, r in report.get("ours", {}).items()}
        infos |= {f"engine.{label}": r.get("info", {}) for label, r in report.get("variants", {}).items()}
    elif name == "service":
        infos |= {f"service.{r['config']}": r.get("server", {}) for r in report.get("results", [])}
    out = {}
    for where, info in infos.items():
        fell = {key: info[key] for key in FALLBACK_KEYS if info.get(key)}
        if fell:
            out[where] = fell
    return out


def digest(raw: dict, found_fallbacks: dict) -> dict:
    """The numbers a reader wants first, out of the steps' raw reports (kept under "raw")."""
    kernels, engine, accuracy, service = (raw.get(k) for k in ("kernels", "engine", "accuracy", "service"))
    out: dict = {"fallbacks": found_fallbacks}
    if kernels:
        out["copy_bandwidth_gbs"] = kernels.get("copy_bandwidth_gbs")
        peaks = kernels.get("device_peaks") or {}
        out["nominal_bandwidth_gbs"] = peaks.get("bandwidth_tbs", 0) * 1e3 or None
        out["kernels"] = [{key: row.get(key) for key in (
            "op", "shape_bkchw", "shape_bkhw", "dtype", "layout", "flow_spread_px", "triton_ms", "speedup_vs_reference",
            "achieved_gbs", "fraction_of_copy_bandwidth", "fraction_of_nominal_bandwidth") if key in row}
            for row in kernels.get("kernels", [])]
    if engine:
        runs = {mode: {str(run["batch"]): run for run in result["runs"]} for mode, result in engine.get("ours", {}).items()}
        out["images_per_s"] = {mode: {b: r["images_per_s"] for b, r in rs.items()} for mode, rs in runs.items()}
        out["latency_ms"] = {mode: {b: {k: r.get(k) for k in r if k.startswith("latency_ms")} for b, r in rs.items()}
                             for mode, rs in runs.items()}
        out["peak_reserved_gib"] = {mode: {b: r.get("peak_reserved_gib") for b, r in rs.items()}
                                    for mode, rs in runs.items()}
        out["warmup_s"] = {mode: r.get("warmup_s") for mode, r in engine.get("ours", {}).items()}
        out["baseline_images_per_s"] = (engine.get("baseline", {}).get("runs") or [{}])[0].get("images_per_s")
        out["summary"] = engine.get("summary")
    if accuracy:
        out["psnr_db"] = {size: {mode: r.get("psnr_db", r.get("error")) for mode, r in modes.items()}
                          for size, modes in accuracy.get("results", {}).items()}
    if service:
        out["service"] = [{k: r.get(k) for k in r if k.startswith(("config", "requests", "latency", "errors",
                                                                    "mean_batch"))} for r in service.get("results", [])]
    return out


def environment(rehearse: bool) -> dict:
    import torch
    import triton

    from bench.gpu_bench import driver_version
    env = {"torch": torch.__version__, "triton": triton.__version__, "cuda": torch.version.cuda,
           "python": platform.python_version(), "cpus": os.cpu_count(), "rehearsal": rehearse}
    if rehearse:
        return env | {"device": f"CPU rehearsal ({platform.machine()})", "driver": None, "capability": None,
                      "device_count": 0}
    return env | {"device": torch.cuda.get_device_name(0), "driver": driver_version(),
                  "capability": ".".join(map(str, torch.cuda.get_device_capability(0))),
                  "device_count": torch.cuda.device_count()}


def print_plan(planned: list[tuple[Step, bool]], budget: float) -> None:
    guesses = estimates()
    print(f"bench.gpu_check plan, budget {budget:.0f} s:")
    print(f"  {'environment':<14} {0:>5.0f} s  run   GPU, driver, CUDA, torch, Triton; one trivial Triton kernel")
    for step, fits in planned:
        guess = f"~{guesses[step.name]:.0f} s" if step.name in guesses else "-"
        print(f"  {step.name:<14} {step.budget_s:>5.0f} s  {'run ' if fits else 'skip'}  {guess:>7}  {step.what}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=DEFAULT_BUDGET_S, help="seconds for all the steps")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and each step's budget; no GPU")
    parser.add_argument("--quick", action="store_true", help="a quarter of the budget")
    parser.add_argument("--rehearse", action="store_true", help="every step on the CPU, tiny (no GPU needed)")
    parser.add_argument("--weights", default=None, help="a checkpoint for the benchmarks; default the stand-in")
    parser.add_argument("--wheels", type=Path, default=DEFAULT_WHEELS, help="folder of wheels for what is missing")
    parser.add_argument("--out", default=None, help="JSON path; default bench/results/gpu-check-<device>-<time>.json "
                        f"({REHEARSAL_RESULT.relative_to(ROOT)} with --rehearse)")
    args = parser.parse_args(argv)
    budget = args.budget / 4 if args.quick else args.budget
    planned = plan(steps(args.weights, args.rehearse), budget)
    if args.dry_run:
        print_plan(planned, budget)
        return 0
    unlike_the_box = box_packages_lacking() if args.rehearse else []  # read only: before anything is done
    if unlike_the_box:  # not a copy of the box: `make gpu-check-rehearsal` builds one
        print(f"bench.gpu_check: this Python lacks what the box has (bench/gpu_box_packages.txt): "
              f"{'; '.join(unlike_the_box)}", file=sys.stderr)
        return 3
    mismatched = mismatch_line(args.wheels)
    if mismatched:
        print(mismatched, file=sys.stderr, flush=True)
    if not args.rehearse:
        from bench.gpu_bench import require_cuda
        require_cuda("bench.gpu_check (make gpu-check)")  # exits 2, before any pip
    lacking = provide_packages(args.wheels)
    if lacking:
        print(lacking, file=sys.stderr)
        return 3
    env = step_env(args.rehearse)
    os.environ.update({k: env[k] for k in ("TRITON_CACHE_DIR", "TRITON_CACHE_AUTOTUNING")}
                      | ({"TRITON_INTERPRET": "1"} if args.rehearse else {}))
    started = time.monotonic()
    now = datetime.datetime.now(datetime.timezone.utc)
    report = {"what": "make gpu-check" + (" --rehearse" if args.rehearse else ""),
              "date": now.isoformat(timespec="seconds"), "budget_s": budget, **environment(args.rehearse),
              "gpu_factor": GPU_FACTOR, "estimates_s": estimates(), "ok": True, "steps": {}}
    out = Path(args.out) if args.out else REHEARSAL_RESULT if args.rehearse else RESULTS / (
        f"gpu-check-{report['device'].replace(' ', '_').replace('/', '_')}-{now.strftime('%Y%m%dT%H%M%SZ')}.json")
    import torch

    from bench.triton_smoke import launch
    triton_failure = launch(torch.device("cpu" if args.rehearse else "cuda"))
    report["steps"]["environment"] = {"ok": triton_failure is None, "status": "ok" if triton_failure is None
                                      else "failed", "seconds": round(time.monotonic() - started, 1),
                                      "triton": triton_failure or "a trivial kernel compiled, launched and checked"}
    if triton_failure:
        report["ok"] = False
        write_report(report, out)
        print(f"bench.gpu_check: STOPPED: {triton_failure}. Every engine would serve the reference "
              f"sampler instead; fix Triton on this box first. Wrote {out}", file=sys.stderr)
        return 1
    write_report(report, out)
    raw: dict = {}
    found_fallbacks: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for step, _ in planned:
            left = budget - (time.monotonic() - started)
            if step.budget_s > left:
                report["steps"][step.name] = {"ok": None, "status": "skipped",
                                              "skipped": f"needs {step.budget_s:.0f} s, {left:.0f} s left"}
            else:
                result = run_step(step, tmp, step.budget_s, env)
                if step.name == "cuda_tests":
                    result["tests"] = test_outcomes(tmp / "tests.jsonl")
                raw[step.name] = load(tmp / step.report) if step.report else None
                fell = fallbacks(step.name, raw[step.name])
                found_fallbacks |= fell
                result["status"] = "failed" if not result["ok"] else "fallback" if fell else "ok"
                report["steps"][step.name] = result
                report["ok"] = report["ok"] and result["status"] == "ok"
            report["digest"] = digest(raw, found_fallbacks)
            report["raw"] = {k: v for k, v in raw.items() if v is not None}
            write_report(report, out)  # after every step: a run cut short keeps what it measured
    print(f"wrote {out}: " + ", ".join(f"{k} {v['status']}" for k, v in report["steps"].items()))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())

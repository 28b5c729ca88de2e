"""Registers, spills and shared memory of every Triton kernel variant, per GPU target.

    python -m bench.kernel_resources            # sm_80, sm_89, sm_90; a few minutes on 2 cores
    python -m bench.kernel_resources --targets 90

Compiles what model.kernels.compile_check compiles (every autotune config,
feature dtype and layout the dispatch can launch) through Triton and the
ptxas in the triton wheel, no GPU needed, and writes the raw rows to
bench/results/kernel_resources.json with the versions of the tools and the
date. A row "spills" when its kernel has a stack frame (these kernels have no
local arrays or calls, so the frame is register spill space).
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import subprocess
import sys
from pathlib import Path

from bench.common import RESULTS, write_report


def tool_version(path: str) -> str:
    lines = subprocess.run([path, "--version"], capture_output=True, text=True).stdout.strip().splitlines()
    return lines[-1] if lines else "unknown"


def summary(rows: list[dict]) -> dict:
    """Per kernel and target: the most registers any variant uses, and the variants that spill."""
    out: dict = {}
    for row in rows:
        entry = out.setdefault(row["kernel"], {}).setdefault(
            row["target"], {"variants": 0, "max_registers": 0, "spilling": [], "failed": []})
        entry["variants"] += 1
        if row["error"]:
            entry["failed"].append(row["label"])
            continue
        entry["max_registers"] = max(entry["max_registers"], row["registers"])
        if row["spills"]:
            entry["spilling"].append(f"{row['label']}: {row['stack_bytes']} B stack")
    return out


def main(argv=None) -> int:
    os.environ.pop("TRITON_INTERPRET", None)
    from model.kernels.compile_check import TARGETS, compile_all, failures, spills

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", default=",".join(map(str, TARGETS)), help="compute capabilities")
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--out", default=str(RESULTS / "kernel_resources.json"))
    args = parser.parse_args(argv)

    import torch
    import triton
    from triton import knobs

    start = datetime.datetime.now(datetime.timezone.utc)
    rows = compile_all(tuple(int(t) for t in args.targets.split(",")), args.workers)
    report = {
        "benchmark": "bench.kernel_resources",
        "date_utc": start.isoformat(timespec="seconds"),
        "seconds": round((datetime.datetime.now(datetime.timezone.utc) - start).total_seconds(), 1),
        "host_cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "triton": triton.__version__,
        "torch": torch.__version__,
        "ptxas": tool_version(knobs.nvidia.ptxas.path),
        "ptxas_sm90_and_newer": tool_version(knobs.nvidia.ptxas_blackwell.path),
        "method": "triton.compile(ASTSource) per variant and target; cuobjdump -res-usage on the cubin",
        "summary": summary(rows),
        "rows": rows,
    }
    out = write_report(report, Path(args.out))
    for line in failures(rows) + spills(rows):
        print(line, file=sys.stderr)
    print(f"{len(rows)} compiles, {len(failures(rows))} failed, {len(spills(rows))} spill; wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

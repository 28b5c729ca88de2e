"""CPU benchmark: the whole network with our Numba sampler against the
published formulation of the sampling, 256x192 fp32, batch 1 and 4.

    python -m bench.cpu_model [--runs 5] [--warmup 2] [--batches 1 4] [--threads 2] [--tag NAME]

Both run the same network (same stand-in weights, seed 0) on the same
inputs (the golden 256x192 images, cropped or repeated to the batch size).
Timed runs alternate between the two in ABBA order so that load from other
processes falls on both alike; the load average is recorded with every run.
Peak memory is measured per configuration in a fresh subprocess (see
``MEMORY_METHOD``). Writes bench/results/cpu_model-<UTC date>.json and prints
a summary. Not a test: it takes minutes.
"""
from __future__ import annotations

import argparse
import ctypes
import datetime as dt
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numba
import numpy as np
import torch

from bench.common import FIXTURES, RESULTS, ROOT, STANDIN_LABEL, standin_state, write_report
from model import create_model, load_weights

THREADS = 2
SIZE = (256, 192)
OURS, BASELINE = "numba", "published"
# The published code as published; ours as model.engine runs it on a CPU, where
# oneDNN's convolutions take channels-last directly and the sampler reads it as is.
MEMORY_FORMATS = {BASELINE: torch.contiguous_format, OURS: torch.channels_last}
THREAD_ENV = ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "GOMP_SPINCOUNT", "MKL_NUM_THREADS")
# Caps on the instruction set oneDNN (convolutions), ATen (grid_sample, elementwise) and
# Numba (the sampler) compile for: `ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2
# NUMBA_CPU_NAME=haswell` runs an AVX-512 CPU as an AVX2 one.
ISA_ENV = ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY", "NUMBA_CPU_NAME")
# The CPU flags that decide which kernels oneDNN, ATen and Numba's LLVM pick.
VECTOR_FLAGS = ("avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
                "avx512_bf16", "amx_tile", "amx_bf16")
MEMORY_METHOD = (
    "each (sampler, batch) in its own subprocess: load model and inputs, one warm-up forward, "
    "gc + malloc_trim, reset the kernel's RSS high-water mark (write 5 to /proc/self/clear_refs), "
    "one forward, read VmHWM from /proc/self/status. peak_rss_mb is that high-water mark of the "
    "whole process; forward_peak_mb is it minus the RSS at the reset (what one forward adds).")


def standin_model(sampler: str) -> torch.nn.Module:
    """The network filled with the tests' deterministic stand-in weights, in the
    configuration's memory format."""
    net = load_weights(create_model(sampler=sampler), standin_state())
    return net.to(memory_format=MEMORY_FORMATS[sampler])


def golden_inputs(batch: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(ref_input, cloth, masked_model) from the golden images, cycled to ``batch``."""
    golden = torch.load(FIXTURES / "golden_256x192.pt", weights_only=True)
    n = golden["cloth"].shape[0]
    index = torch.arange(batch) % n
    pose, masked, cloth = (golden[k][index].contiguous() for k in ("pose", "masked_model", "cloth"))
    assert tuple(cloth.shape[-2:]) == SIZE
    return torch.cat((pose, masked), dim=1), cloth, masked


def forward(net, inputs, sampler: str) -> torch.Tensor:
    memory_format = MEMORY_FORMATS[sampler]
    with torch.inference_mode():
        return net(*(t.contiguous(memory_format=memory_format) for t in inputs))


def time_batch(nets: dict, batch: int, runs: int, warmup: int) -> dict:
    """Alternating timed forwards of both samplers at one batch size."""
    inputs = golden_inputs(batch)
    outputs = {}
    for sampler in (BASELINE, OURS):
        for _ in range(warmup):
            outputs[sampler] = forward(nets[sampler], inputs, sampler)
    seconds = {BASELINE: [], OURS: []}
    cpu_seconds = {BASELINE: [], OURS: []}
    load = []
    for i in range(runs):
        order = (BASELINE, OURS) if i % 2 == 0 else (OURS, BASELINE)
        for sampler in order:
            start, cpu_start = time.perf_counter(), time.process_time()
            forward(nets[sampler], inputs, sampler)
            seconds[sampler].append(time.perf_counter() - start)
            cpu_seconds[sampler].append(time.process_time() - cpu_start)
            load.append(os.getloadavg()[0])
    result = {"batch": batch, "runs": runs, "warmup": warmup, "load_average_1min": load,
              "max_abs_diff": (outputs[OURS] - outputs[BASELINE]).abs().max().item()}
    for sampler, times in seconds.items():
        median = statistics.median(times)
        # CPU time of the process (all threads): less sensitive than wall time
        # to other processes on a shared CPU, though spinning threads count too.
        result[sampler] = {"latency_s_median": median, "latency_s_all": times,
                           "img_per_s": batch / median, "img_per_s_best_run": batch / min(times),
                           "cpu_s_all": cpu_seconds[sampler],
                           "cpu_s_per_img_median": statistics.median(cpu_seconds[sampler]) / batch}
    result["speedup"] = result[OURS]["img_per_s"] / result[BASELINE]["img_per_s"]
    # The fastest run is the one least disturbed by other processes.
    result["speedup_best_run"] = result[OURS]["img_per_s_best_run"] / result[BASELINE]["img_per_s_best_run"]
    return result


def _vm_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def memory_worker(sampler: str, batch: int, threads: int) -> dict:
    """Run in a fresh process: peak RSS of one steady-state forward."""
    torch.set_num_threads(threads)
    net = standin_model(sampler)
    inputs = golden_inputs(batch)
    forward(net, inputs, sampler)  # warm-up: JIT cache load, allocator state
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    Path("/proc/self/clear_refs").write_text("5")
    rss_before = _vm_kb("VmRSS")
    forward(net, inputs, sampler)
    peak = _vm_kb("VmHWM")
    return {"sampler": sampler, "batch": batch, "peak_rss_mb": peak / 1024,
            "rss_before_forward_mb": rss_before / 1024, "forward_peak_mb": (peak - rss_before) / 1024}


def measure_memory(sampler: str, batch: int, threads: int) -> dict:
    cmd = [sys.executable, "-m", "bench.cpu_model", "--threads", str(threads),
           "--memory-worker", sampler, str(batch)]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def cpuinfo_field(name: str) -> str | None:
    """The first CPU's ``name`` line of /proc/cpuinfo (None where there is none)."""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.split(":", 1)[0].strip() == name:
            return line.split(":", 1)[1].strip()
    return None


def cpu_model_name() -> str:
    return cpuinfo_field("model name") or platform.processor()


def environment() -> dict:
    from llvmlite import binding as llvm

    flags = set((cpuinfo_field("flags") or "").split())
    return {"torch": torch.__version__, "numba": numba.__version__, "numpy": np.__version__,
            "python": platform.python_version(), "cpu": cpu_model_name(), "cpu_count": os.cpu_count(),
            "cpu_vector_flags": [f for f in VECTOR_FLAGS if f in flags],
            "cpu_flags": sorted(flags),
            # What ATen dispatches to (after ATEN_CPU_CAPABILITY) and what Numba compiles
            # for (the host CPU unless NUMBA_CPU_NAME says otherwise).
            "aten_cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "numba_cpu": numba.config.CPU_NAME or llvm.get_host_cpu_name(),
            "onednn": torch.backends.mkldnn.is_available(),
            # The Numba sampler shares its rows among torch's thread count.
            "torch_threads": torch.get_num_threads(),
            # Thread-pool and ISA settings change results: record what was set.
            "env": {k: os.environ.get(k) for k in THREAD_ENV + ISA_ENV}}


def summary(report: dict) -> str:
    env = report["environment"]
    isa = ", ".join(f"{k}={v}" for k, v in env["env"].items() if k in ISA_ENV and v) or "no ISA cap"
    lines = [f"DAFlow {SIZE[0]}x{SIZE[1]} fp32 on {env['cpu']} ({' '.join(env['cpu_vector_flags'])}; "
             f"ATen {env['aten_cpu_capability']}, {isa}), {env['torch_threads']} threads"]
    for r in report["timing"]:
        mem = {(m["sampler"], m["batch"]): m for m in report["memory"]}
        for sampler in (BASELINE, OURS):
            m = mem[(sampler, r["batch"])]
            lines.append(f"  batch {r['batch']} {sampler:>9}: {r[sampler]['img_per_s']:.3f} img/s, "
                         f"{r[sampler]['latency_s_median'] * 1000:.0f} ms median, "
                         f"{r[sampler]['cpu_s_per_img_median']:.2f} CPU-s/img, "
                         f"peak RSS {m['peak_rss_mb']:.0f} MB (forward +{m['forward_peak_mb']:.0f} MB)")
        load = r["load_average_1min"]
        lines.append(f"  batch {r['batch']} speed-up {r['speedup']:.2f}x (best runs {r['speedup_best_run']:.2f}x), "
                     f"max |ours - baseline| "
                     f"{r['max_abs_diff']:.2e}, load average {min(load):.2f}..{max(load):.2f}")
    return "\n".join(lines)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    # One thread has no OpenMP barrier to wait at for a thread the OS has descheduled,
    # so on a CPU shared with many busy processes it measures the work, not the queue.
    parser.add_argument("--threads", type=int, default=THREADS)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--tag", default="", help="suffix for the result file name")
    parser.add_argument("--memory-worker", nargs=2, metavar=("SAMPLER", "BATCH"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_worker:
        print(json.dumps(memory_worker(args.memory_worker[0], int(args.memory_worker[1]), args.threads)))
        return {}

    torch.set_num_threads(args.threads)
    started = dt.datetime.now(dt.timezone.utc)
    nets = {sampler: standin_model(sampler) for sampler in (BASELINE, OURS)}
    timing = [time_batch(nets, b, args.runs, args.warmup) for b in args.batches]
    del nets
    memory = [measure_memory(s, b, args.threads) for b in args.batches for s in (BASELINE, OURS)]
    report = {
        "benchmark": "bench.cpu_model", "date_utc": started.isoformat(timespec="seconds"),
        "image_size_hw": list(SIZE), "dtype": "float32", "weights": STANDIN_LABEL,
        "inputs": "tests/fixtures/golden_256x192.pt, cycled to the batch size",
        "ours": f"{OURS} sampler, channels-last (as model.engine runs on a CPU)",
        "baseline": f"{BASELINE} formulation, contiguous (NCHW), as published",
        "img_per_s": "batch / median latency; img_per_s_best_run: batch / fastest run",
        "memory_method": MEMORY_METHOD, "environment": environment(),
        "load_average_at_end": list(os.getloadavg()), "timing": timing, "memory": memory,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    tag = f"-{args.tag}" if args.tag else ""
    path = args.out / f"cpu_model-{started.date().isoformat()}{tag}.json"
    write_report(report, path)
    print(summary(report))
    print(f"written {path}")
    return report


if __name__ == "__main__":
    main()

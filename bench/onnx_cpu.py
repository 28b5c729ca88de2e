"""onnxruntime on the exported file against our engine, on this CPU, batch 1, 256x192 fp32.

    python -m bench.onnx_cpu [--runs 5] [--warmup 2]

Both hold the same stand-in weights (seed 0) and see the golden 256x192 inputs: the engine as
the service runs it on a CPU (channels-last, Numba sampler), onnxruntime with the file that
``tryon-weights export-onnx`` writes, on the same number of threads. Timed runs alternate in
ABBA order so that load from other processes falls on both alike; the load average is recorded
with every run. Writes bench/results/onnx_cpu-<UTC date>.json. Not a test: it takes minutes.
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import tempfile
import time
from pathlib import Path

import onnxruntime as ort
import torch

from bench.common import RESULTS, STANDIN_LABEL, standin_weights_file, write_report
from bench.cpu_model import SIZE, THREADS, environment, golden_inputs
from model.engine import Engine, EngineConfig
from model.onnx_export import DEFAULT_OPSET, INPUT_NAMES, OUTPUT_NAME, export_onnx

ENGINE, ONNXRUNTIME = "engine", "onnxruntime"


def onnx_session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = THREADS
    options.inter_op_num_threads = 1
    # Idle onnxruntime threads spin by default, taking the cores from the engine's turns on a
    # small machine (torch's OpenMP threads spin only briefly before they sleep).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    torch.set_num_threads(THREADS)
    started = dt.datetime.now(dt.timezone.utc)
    ref_input, cloth, masked = golden_inputs(1)
    pose = ref_input[:, :3]
    with tempfile.TemporaryDirectory() as folder:
        weights = standin_weights_file(Path(folder))
        onnx_path = Path(folder) / "daflow.onnx"
        start = time.perf_counter()
        export_onnx(onnx_path, weights, SIZE, DEFAULT_OPSET)
        export_s = time.perf_counter() - start
        session = onnx_session(onnx_path)
        engine = Engine(EngineConfig(device="cpu", precision="fp32", batch_sizes=(1,), image_size_hw=SIZE,
                                     weights=str(weights)))
    feeds = dict(zip(INPUT_NAMES, (t.numpy() for t in (pose, masked, cloth))))
    runners = {ENGINE: lambda: engine.infer(pose, masked, cloth),
               ONNXRUNTIME: lambda: torch.from_numpy(session.run([OUTPUT_NAME], feeds)[0])}
    outputs = {name: [run() for _ in range(args.warmup)][-1] for name, run in runners.items()}
    seconds = {name: [] for name in runners}
    load = []
    for i in range(args.runs):
        for name in (ENGINE, ONNXRUNTIME) if i % 2 == 0 else (ONNXRUNTIME, ENGINE):
            start = time.perf_counter()
            runners[name]()
            seconds[name].append(time.perf_counter() - start)
            load.append(os.getloadavg()[0])
    timing = {name: {"latency_s_median": statistics.median(times), "latency_s_all": times,
                     "latency_s_best": min(times)} for name, times in seconds.items()}
    median, best = ({name: t[key] for name, t in timing.items()} for key in ("latency_s_median", "latency_s_best"))
    report = {
        "benchmark": "bench.onnx_cpu", "date_utc": started.isoformat(timespec="seconds"),
        "image_size_hw": list(SIZE), "batch": 1, "dtype": "float32", "weights": STANDIN_LABEL,
        "inputs": "tests/fixtures/golden_256x192.pt",
        ENGINE: f"model.engine on the CPU as the service runs it ({engine.info})",
        ONNXRUNTIME: f"onnxruntime {ort.__version__}, CPUExecutionProvider, {THREADS} intra-op threads, "
                     f"no spinning, default graph optimisations, the file of model.onnx_export "
                     f"(opset {DEFAULT_OPSET})",
        "export_s": export_s, "runs": args.runs, "warmup": args.warmup,
        "environment": {**environment(), "onnxruntime": ort.__version__},
        "load_average_1min": load, "load_average_at_end": list(os.getloadavg()), "timing": timing,
        "onnxruntime_over_engine_median": median[ONNXRUNTIME] / median[ENGINE],
        "onnxruntime_over_engine_best": best[ONNXRUNTIME] / best[ENGINE],
        "max_abs_diff": (outputs[ONNXRUNTIME] - outputs[ENGINE]).abs().max().item(),
    }
    path = write_report(report, args.out / f"onnx_cpu-{started:%Y-%m-%d}.json")
    print(f"{SIZE[0]}x{SIZE[1]} batch 1 on {report['environment']['cpu']}, {THREADS} threads: engine "
          f"{median[ENGINE] * 1000:.0f} ms, onnxruntime {median[ONNXRUNTIME] * 1000:.0f} ms median "
          f"({report['onnxruntime_over_engine_median']:.2f}x the engine's time; best runs "
          f"{report['onnxruntime_over_engine_best']:.2f}x), max |diff| {report['max_abs_diff']:.1e}, "
          f"load average {min(load):.1f}..{max(load):.1f}; wrote {path}")
    return report


if __name__ == "__main__":
    main()

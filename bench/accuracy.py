"""Accuracy of each precision mode against fp32, as PSNR of the 8-bit images.

For every golden input (tests/fixtures/golden_*.pt) the network runs once in
fp32 and once in each mode, prepared exactly as model.engine prepares it
(half-precision convolutions, fp32 BatchNorm, fp32 flows/softmax/sampling);
the outputs are turned into 8-bit images the way the service does
(model.images.tensor_to_image) and compared. Modes the engine would not run
on the CPU (tf32, fp16) are still measured when the device can: the JSON says
which device measured what.

    python -m bench.accuracy                      # CPU: fp32 vs bf16, fp16
    python -m bench.accuracy --device cuda        # GPU: tf32, bf16, fp16
    python -m bench.accuracy --weights weights/ckpt_viton.pt

Writes bench/results/accuracy-<device>.json unless --out says otherwise.
"""
from __future__ import annotations

import argparse
import datetime
import math
import platform
import time
from pathlib import Path

import torch

from bench.common import FIXTURES, RESULTS, STANDIN_LABEL, standin_state, write_report
from model.engine import pick_device
from model.images import psnr_8bit
from model.precision import run_in_precision
from model.weights import create_model, load_weights

GOLDEN_FILES = {"64x64": "golden_64x64.pt", "256x192": "golden_256x192.pt"}
CPU_MODES = ("bf16", "fp16")
GPU_MODES = ("tf32", "bf16", "fp16")


def run_mode(state, golden: dict, precision: str, device: torch.device, sampler: str) -> torch.Tensor:
    """The network's output on the golden inputs in one precision mode, as float32 CPU."""
    net = load_weights(create_model(sampler=sampler), state)
    return run_in_precision(net, tuple(golden[k] for k in ("pose", "masked_model", "cloth")), precision, device)


def measure(state, device: torch.device, sizes, modes, sampler: str) -> dict:
    results = {}
    for size in sizes:
        golden = torch.load(FIXTURES / GOLDEN_FILES[size], weights_only=True)
        reference = run_mode(state, golden, "fp32", device, sampler)
        per_mode = {"fp32": {"psnr_db": math.inf, "max_abs_diff": 0.0,
                             "psnr_db_vs_golden": psnr_8bit(reference, golden["tryon"])}}
        for mode in modes:
            start = time.perf_counter()
            try:
                out = run_mode(state, golden, mode, device, sampler)
            except RuntimeError as exc:  # e.g. a dtype this CPU's kernels lack
                per_mode[mode] = {"error": str(exc).splitlines()[0]}
                continue
            per_mode[mode] = {"psnr_db": psnr_8bit(out, reference),
                              "max_abs_diff": (out - reference).abs().max().item(),
                              "seconds": round(time.perf_counter() - start, 2)}
            print(f"{size} {mode}: {per_mode[mode]}", flush=True)
        results[size] = per_mode
    return results


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()})"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    parser.add_argument("--sizes", default="64x64,256x192", help=f"comma list of {sorted(GOLDEN_FILES)}")
    parser.add_argument("--modes", default=None, help="comma list; default: bf16,fp16 on CPU, tf32,bf16,fp16 on GPU")
    parser.add_argument("--sampler", default="auto")
    parser.add_argument("--weights", default=None, help="a checkpoint; default: the golden files' stand-in weights")
    parser.add_argument("--out", default=None, help="JSON path; default bench/results/accuracy-<device>.json")
    args = parser.parse_args(argv)

    device = pick_device(args.device)
    modes = args.modes.split(",") if args.modes else (GPU_MODES if device.type == "cuda" else CPU_MODES)
    sizes = args.sizes.split(",")
    state = standin_state() if args.weights is None else args.weights
    torch.manual_seed(0)
    report = {
        "what": "PSNR (dB) of the 8-bit output of each precision mode against fp32, golden inputs",
        "weights": STANDIN_LABEL if args.weights is None else args.weights,
        "device": device_name(device),
        "device_type": device.type,
        "torch": torch.__version__,
        "sampler": args.sampler,
        "threads": torch.get_num_threads(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "results": measure(state, device, sizes, modes, args.sampler),
    }
    out = Path(args.out) if args.out else RESULTS / f"accuracy-{device.type}.json"
    write_report(report, out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

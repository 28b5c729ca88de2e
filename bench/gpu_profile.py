"""Where the GPU's time goes in one forward, and what each sampling tile costs (not a timed test).

    python -m bench.gpu_profile --out bench/results/gpu-profile-<device>.json

1. The engine's forward, eager (graphs hide their kernels from the profiler), in the serving
   precision and layout, at one batch size: CUDA time per kernel from torch.profiler, the top
   kernels and the share of each family (convolutions, deformable sampling, flow composition,
   the rest), per image.
2. The deformable-sampling kernel at the network's two serving shapes, each autotune candidate
   launched on its own (no autotuner), NCHW and channels-last, against the torch reference: what
   the autotuner can pick from, and whether any tile is near the memory bandwidth.
Exits 2 without CUDA.
"""
from __future__ import annotations

import argparse
import datetime
import json
from collections import defaultdict
from pathlib import Path

import torch

from bench.common import write_report
from bench.gpu_bench import cuda_time_ms, require_cuda, sampling_case, sampling_traffic_bytes

FAMILIES = (("deformable_sample", ("_deformable_sample_kernel",)),
            ("compose_head_flows", ("_compose_head_flows", "compose")),
            ("grid_sample", ("grid_sampler",)),
            ("convolution", ("conv", "cudnn", "sm90_xmma", "implicit_gemm", "gemm", "cutlass", "nhwc", "winograd",
                             "fft")),
            ("normalisation", ("batch_norm", "bn_")),
            ("softmax", ("softmax",)),
            ("interpolate", ("upsample", "interpolate")),
            ("copy_cast", ("copy", "cast", "to_copy")))


def family(name: str) -> str:
    lowered = name.lower()
    for label, needles in FAMILIES:
        if any(n in lowered for n in needles):
            return label
    return "other"


def profile_forward(weights: str, precision: str, batch: int, runs: int) -> dict:
    from torch.profiler import ProfilerActivity, profile

    from model.engine import Engine, EngineConfig
    engine = Engine(EngineConfig(device="cuda", precision=precision, batch_sizes=(batch,), image_size_hw=(256, 192),
                                 weights=weights, check_precision=False, cuda_graphs=False))
    engine.warmup()
    gen = torch.Generator().manual_seed(0)
    inputs = [torch.randint(0, 256, (batch, 3, 256, 192), generator=gen, dtype=torch.uint8) for _ in range(3)]
    engine.infer(*inputs)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(runs):
            engine.infer(*inputs)
        torch.cuda.synchronize()
    kernels: dict[str, float] = defaultdict(float)
    counts: dict[str, int] = defaultdict(int)
    for event in prof.events():
        if event.device_type == torch.autograd.DeviceType.CUDA:
            kernels[event.name] += event.device_time_total / 1e3  # ms
            counts[event.name] += 1
    total = sum(kernels.values())
    families: dict[str, float] = defaultdict(float)
    for name, ms in kernels.items():
        families[family(name)] += ms
    per_image = 1.0 / (runs * batch)
    top = sorted(kernels.items(), key=lambda kv: -kv[1])[:25]
    return {"precision": precision, "batch": batch, "runs": runs, "info": engine.info,
            "cuda_ms_per_image": total * per_image,
            "families_ms_per_image": {k: v * per_image for k, v in sorted(families.items(), key=lambda kv: -kv[1])},
            "families_share": {k: v / total for k, v in sorted(families.items(), key=lambda kv: -kv[1])},
            "top_kernels": [{"name": n[:160], "ms_per_image": ms * per_image, "calls_per_run": counts[n] / runs,
                             "family": family(n)} for n, ms in top]}


def sample_tiles(iters: int) -> list[dict]:
    import triton

    from model.kernels.triton_sampling import (SAMPLE_CONFIGS, _deformable_sample_kernel, feature_layout,
                                               sample_configs, sample_kernel_args)
    from model.sampling import deformable_sample_reference
    rows = []
    for (b, k, c, h, w) in ((32, 6, 64, 256, 192), (32, 6, 256, 128, 96)):
        for dtype, channels_last in ((torch.float16, True), (torch.float16, False), (torch.float32, False)):
            features, flows, weights = sampling_case(b, k, c, h, w, dtype, 4.0, torch.device("cuda"), channels_last)
            out = torch.empty_like(features)
            args = sample_kernel_args(features, flows, weights, out)
            allowed = sample_configs(feature_layout(features.stride(1)))
            ref = cuda_time_ms(lambda: deformable_sample_reference(features, flows, weights), iters)
            traffic = sampling_traffic_bytes(b, k, c, h, w, features.element_size())
            for config in SAMPLE_CONFIGS:
                if config not in allowed:
                    continue
                bp, bc = config.kwargs["BLOCK_P"], config.kwargs["BLOCK_C"]
                grid = (triton.cdiv(h * w, bp), triton.cdiv(c, bc), b)

                def launch():
                    _deformable_sample_kernel[grid](*args, K=k, BLOCK_P=bp, BLOCK_C=bc, num_warps=config.num_warps)
                ms = cuda_time_ms(launch, iters)
                rows.append({"shape_bkchw": [b, k, c, h, w], "dtype": str(dtype),
                             "layout": "channels_last" if channels_last else "nchw",
                             "block_p": bp, "block_c": bc, "num_warps": config.num_warps, "ms": ms,
                             "reference_ms": ref, "speedup_vs_reference": ref / ms,
                             "minimal_traffic_gbs": traffic / (ms / 1e3) / 1e9})
                print(json.dumps(rows[-1]), flush=True)
            del features, flows, weights, out
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--precision", default="fp16")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--weights", default=None)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    require_cuda("bench.gpu_profile")
    import tempfile

    import triton

    from bench.common import STANDIN_LABEL, standin_weights_file
    report = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "device": torch.cuda.get_device_name(0), "torch": torch.__version__, "triton": triton.__version__,
              "weights": args.weights or STANDIN_LABEL}
    with tempfile.TemporaryDirectory() as tmp:
        weights = args.weights or str(standin_weights_file(Path(tmp)))
        report["forward"] = profile_forward(weights, args.precision, args.batch, args.runs)
        print(json.dumps({k: report["forward"][k] for k in ("cuda_ms_per_image", "families_share")}, indent=1),
              flush=True)
        write_report(report, Path(args.out))
        report["tiles"] = sample_tiles(20)
    write_report(report, Path(args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

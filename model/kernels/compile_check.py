"""Every Triton kernel compiled for real GPUs, on a machine without one.

``triton.compile(ASTSource(fn, signature, constexprs, attrs), target=GPUTarget("cuda", cc, 32))``
runs Triton's whole pipeline down to a cubin through the ptxas bundled in the
triton wheel; nothing needs a driver. Each variant is specialised the way a
launch specialises it (the kernel's own argument builder on CPU tensors of the
network's shapes: dtypes, strides equal to 1 as constants, 16-byte divisibility),
for every autotune config and feature dtype the dispatch accepts, in both
layouts (NCHW for the fp32/tf32 modes, channels-last for the half modes), for
sm_80 (A100), sm_89 (L4/L40S) and sm_90 (H100/H200).

Registers, stack frame, local and shared memory are read from the cubin with
the wheel's cuobjdump. These kernels have no local arrays and no calls, so a
stack frame is register spill space: a variant "spills" when it has one.

    python -m model.kernels.compile_check [--json OUT] [--workers N]

exits 1 when a variant fails to compile or spills. Run it without
TRITON_INTERPRET (under the interpreter the kernels are not JIT functions).
"""
from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass

import torch

TARGETS = (80, 89, 90)
# The shapes launched at the finest flow level of a 256x192 image, K heads.
BATCH, HEADS, CHANNELS, HEIGHT, WIDTH = 1, 6, 256, 128, 96
WARP_SIZE = 32


@dataclass(frozen=True)
class Variant:
    kernel: str  # "deformable_sample" | "compose_head_flows"
    dtype: str  # features' (sampling) or offsets' (composition) dtype
    layout: str
    constexprs: tuple[tuple[str, int], ...]  # the config's block sizes
    num_warps: int

    @property
    def label(self) -> str:
        blocks = ",".join(f"{k}={v}" for k, v in self.constexprs)
        return f"{self.kernel}[{self.dtype},{self.layout},{blocks},warps={self.num_warps}]"


def variants() -> list[Variant]:
    """What the dispatch can launch on a GPU under this Triton: every layout x the configs its
    autotuner keeps there (``sample_configs``) x dtype."""
    from .triton_flows import COMPOSE_BLOCK
    from .triton_sampling import FEATURE_DTYPES, LAYOUTS, sample_configs
    dtypes = [str(d).removeprefix("torch.") for d in FEATURE_DTYPES]
    out = [Variant("deformable_sample", dtype, layout, tuple(sorted(config.kwargs.items())), config.num_warps)
           for layout in LAYOUTS for config in sample_configs(layout) for dtype in dtypes]
    # The composition's offsets come from a flow block's output: the convolutions' dtype.
    out += [Variant("compose_head_flows", dtype, layout, (("BLOCK", COMPOSE_BLOCK),), 4)
            for dtype in dtypes for layout in LAYOUTS]
    return out


def _layout(t: torch.Tensor, layout: str) -> torch.Tensor:
    return t.contiguous(memory_format=torch.channels_last if layout == "channels_last" else torch.contiguous_format)


def _launch(variant: Variant):
    """(jit function, runtime arguments in order, launch constexprs) as the dispatch
    would launch the variant on the network's shapes (CPU tensors stand in)."""
    dtype = getattr(torch, variant.dtype)
    b, k, c, h, w = BATCH, HEADS, CHANNELS, HEIGHT, WIDTH
    flows = torch.empty(b * k, 2, h, w)
    if variant.kernel == "deformable_sample":
        from .triton_sampling import _deformable_sample_kernel, sample_kernel_args
        features = _layout(torch.empty(b, c, h, w, dtype=dtype), variant.layout)
        weights = _layout(torch.empty(b, k, h, w), variant.layout)
        args = sample_kernel_args(features, flows, weights, torch.empty_like(features))
        return _deformable_sample_kernel, args, {"K": k, **dict(variant.constexprs)}
    from .triton_flows import _compose_kernel, compose_kernel_args
    block_output = _layout(torch.empty(b, 3 * k, h, w, dtype=dtype), variant.layout)
    args = compose_kernel_args(flows, block_output[:, :2 * k], torch.empty_like(flows))
    return _compose_kernel, args, {"K": k, **dict(variant.constexprs)}


def source(variant: Variant):
    """The ASTSource a launch of the variant compiles: the JIT's own type mangling
    (ints equal to 1 become constants) and divisibility-by-16 attributes."""
    from triton.backends.compiler import BaseBackend
    from triton.compiler import ASTSource
    from triton.runtime.jit import mangle_type

    fn, args, launch_constexprs = _launch(variant)
    signature, constexprs, attrs = {}, {}, {}
    for i, name in enumerate(fn.arg_names):
        if name in launch_constexprs:
            signature[name], constexprs[name] = "constexpr", launch_constexprs[name]
            continue
        arg = args[i]
        signature[name] = mangle_type(arg, specialize=True)
        if signature[name] == "constexpr":
            constexprs[name] = arg
        elif isinstance(arg, torch.Tensor):
            attrs[(i,)] = BaseBackend.parse_attr(BaseBackend.get_tensor_specialization(arg, align=True))
        else:
            attrs[(i,)] = BaseBackend.parse_attr(BaseBackend.get_int_specialization(arg, align=True))
    return ASTSource(fn, signature, constexprs, {k: v for k, v in attrs.items() if v})


_RESOURCES = re.compile(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)")


def cubin_resources(cubin: bytes) -> dict:
    """Registers per thread and stack, shared and local bytes of the cubin's one kernel."""
    from triton import knobs
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        listing = subprocess.run([knobs.nvidia.cuobjdump.path, "-res-usage", f.name],
                                 capture_output=True, text=True, check=True).stdout
    regs, stack, shared, local = (int(v) for v in _RESOURCES.search(listing).groups())
    return {"registers": regs, "stack_bytes": stack, "shared_bytes": shared, "local_bytes": local}


def compile_variant(variant: Variant, capability: int) -> dict:
    """One compile; the row that the test and the report use (an error is a row too)."""
    import triton
    from triton.backends.compiler import GPUTarget

    row = {**asdict(variant), "constexprs": dict(variant.constexprs), "target": f"sm_{capability}",
           "label": variant.label}
    start = time.perf_counter()
    try:
        compiled = triton.compile(source(variant), target=GPUTarget("cuda", capability, WARP_SIZE),
                                  options={"num_warps": variant.num_warps})
        row |= cubin_resources(compiled.asm["cubin"])
        row["shared_bytes"] = max(row["shared_bytes"], compiled.metadata.shared)
        row["spills"] = row["stack_bytes"] > 0 or row["local_bytes"] > 0
        row["error"] = None
    except Exception as exc:  # noqa: BLE001 - every failure is a finding to report
        row["error"] = f"{type(exc).__name__}: {str(exc).strip()[:2000]}"
    row["seconds"] = round(time.perf_counter() - start, 2)
    return row


def _compile_job(job: tuple[Variant, int]) -> dict:
    return compile_variant(*job)


def compile_all(targets=TARGETS, workers: int | None = None) -> list[dict]:
    """Every variant for every target, in parallel processes (compiles are CPU-bound)."""
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        raise RuntimeError("compile_check needs real JIT kernels: unset TRITON_INTERPRET")
    jobs = [(v, cc) for cc in targets for v in variants()]
    workers = workers or os.cpu_count() or 1
    with concurrent.futures.ProcessPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(_compile_job, jobs, chunksize=4))


def failures(rows: list[dict]) -> list[str]:
    return [f"{r['target']} {r['label']}: {r['error']}" for r in rows if r["error"]]


def spills(rows: list[dict]) -> list[str]:
    return [f"{r['target']} {r['label']}: {r['registers']} registers, {r['stack_bytes']} bytes stack, "
            f"{r['local_bytes']} bytes local" for r in rows if not r["error"] and r["spills"]]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default=None, help="write the rows here as JSON")
    parser.add_argument("--targets", default=",".join(map(str, TARGETS)), help="compute capabilities")
    parser.add_argument("--workers", type=int, default=None, help="parallel compiles (default: CPU count)")
    args = parser.parse_args(argv)
    import triton
    start = time.perf_counter()
    rows = compile_all(tuple(int(t) for t in args.targets.split(",")), args.workers)
    from .triton_sampling import FEATURE_DTYPES, LAYOUTS, sample_configs
    report = {"triton": triton.__version__, "torch": torch.__version__, "seconds": round(time.perf_counter() - start, 1),
              "shapes": {"batch": BATCH, "heads": HEADS, "channels": CHANNELS, "height": HEIGHT, "width": WIDTH},
              "sample_configs": {layout: [{**c.kwargs, "num_warps": c.num_warps} for c in sample_configs(layout)]
                                 for layout in LAYOUTS},
              "feature_dtypes": [str(d).removeprefix("torch.") for d in FEATURE_DTYPES],
              "rows": rows}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    bad = failures(rows) + spills(rows)
    for line in bad:
        print(line, file=sys.stderr)
    print(f"{len(rows)} compiles in {report['seconds']} s: {len(failures(rows))} failed, {len(spills(rows))} spill")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())

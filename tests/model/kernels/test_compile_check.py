"""Every Triton kernel compiles for sm_80, sm_89 and sm_90 with no register spill,
through Triton's compiler and the ptxas in the triton wheel: no GPU needed.

One subprocess compiles every variant (model.kernels.compile_check, in parallel):
the kernels must be real JIT functions, and other test modules set TRITON_INTERPRET
in this process. Triton's cache (~/.triton/cache, or TRITON_CACHE_DIR) makes the
next run on the same machine take seconds instead of minutes.
"""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest
from tests.utils import REPO, REPO_PYTHONPATH

# Not importorskip: importing Triton here, during collection, would fix it in compiled mode before
# tests/model/kernels/test_triton_sampling.py sets TRITON_INTERPRET for this process.
if importlib.util.find_spec("triton") is None:
    pytest.skip("triton is not installed", allow_module_level=True)

TARGETS = {"sm_80", "sm_89", "sm_90"}
LAYOUTS = {"nchw", "channels_last"}
# Uncached, the compiles take about 4 minutes on 2 busy cores (the first test waits for them).
pytestmark = pytest.mark.timeout(1800)


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("compile") / "kernels.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = REPO_PYTHONPATH
    result = subprocess.run([sys.executable, "-m", "model.kernels.compile_check", "--json", str(out)],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=1500)
    assert out.exists(), result.stderr[-3000:]
    return json.loads(out.read_text())


def test_every_variant_compiles(report):
    failed = [f"{r['target']} {r['label']}: {r['error']}" for r in report["rows"] if r["error"]]
    assert not failed, "\n".join(failed)


def test_no_variant_the_dispatch_can_choose_spills(report):
    spilling = [f"{r['target']} {r['label']}: {r['registers']} registers, {r['stack_bytes']} B stack, "
                f"{r['local_bytes']} B local" for r in report["rows"] if not r["error"] and r["spills"]]
    assert not spilling, "\n".join(spilling)
    assert all(0 < r["registers"] <= 255 for r in report["rows"])


def test_every_config_dtype_layout_and_target_is_compiled(report):
    """The dispatch's own autotune configs (per layout, as this Triton's autotuner keeps them)
    and feature dtypes, not a copy of them."""
    compiled = {(r["kernel"], r["target"], r["dtype"], r["layout"],
                 tuple(sorted({**r["constexprs"], "num_warps": r["num_warps"]}.items())))
                for r in report["rows"]}
    configs = {lay: [tuple(sorted(c.items())) for c in report["sample_configs"][lay]] for lay in LAYOUTS}
    expected = {("deformable_sample", t, d, lay, c) for t in TARGETS for d in report["feature_dtypes"]
                for lay in LAYOUTS for c in configs[lay]}
    assert all(len(configs[lay]) >= 2 for lay in LAYOUTS)
    assert set(report["feature_dtypes"]) == {"float32", "float16", "bfloat16"}
    assert expected == {row for row in compiled if row[0] == "deformable_sample"}
    assert {(t, d, lay) for k, t, d, lay, _ in compiled if k == "compose_head_flows"} == {
        (t, d, lay) for t in TARGETS for d in report["feature_dtypes"] for lay in LAYOUTS}


CONFIGS_PER_VERSION = """
import json
from model.kernels.triton_sampling import _prune_configs, sample_configs, SAMPLE_CONFIGS
tiles = lambda configs: sorted((c.kwargs["BLOCK_P"], c.kwargs["BLOCK_C"]) for c in configs)
print(json.dumps({"3.6 nchw": tiles(sample_configs("nchw", (3, 6))),
                  "3.6 channels_last": tiles(sample_configs("channels_last", (3, 6))),
                  "3.9 nchw": tiles(sample_configs("nchw", (3, 9))),
                  "all": tiles(SAMPLE_CONFIGS),
                  "pruned nchw": tiles(_prune_configs(list(SAMPLE_CONFIGS), {"sf_c": 96 * 128, "sf_w": 1})),
                  "pruned channels_last": tiles(_prune_configs(list(SAMPLE_CONFIGS), {"sf_c": 1, "sf_w": 256})),
                  "here nchw": tiles(sample_configs("nchw"))}))
"""


def test_configs_are_chosen_per_triton_version_and_layout():
    """Triton 3.6 (torch 2.11's) spills the NCHW 64x32 and 32x64 tiles: below 3.9 the autotuner
    never tries them on NCHW features; channels-last and Triton 3.9 keep all six. The autotuner's
    prune and the compile check read the same ``sample_configs``. (A subprocess: importing Triton
    here would fix this process in compiled mode before test_kernels_triton sets the interpreter.)"""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = REPO_PYTHONPATH
    result = subprocess.run([sys.executable, "-c", CONFIGS_PER_VERSION], cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    tiles = {k: [tuple(t) for t in v] for k, v in json.loads(result.stdout.strip().splitlines()[-1]).items()}
    every = [(16, 64), (32, 64), (64, 32), (128, 16), (128, 32), (256, 8)]
    assert tiles["all"] == tiles["3.9 nchw"] == tiles["3.6 channels_last"] == every
    assert tiles["3.6 nchw"] == [(16, 64), (128, 16), (128, 32), (256, 8)]
    assert tiles["pruned nchw"] == tiles["here nchw"] and tiles["pruned channels_last"] == every

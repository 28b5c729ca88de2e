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
from tests.utils import REPO

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
    env["PYTHONPATH"] = str(REPO)
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
    """The dispatch's own autotune configs and feature dtypes, not a copy of them."""
    compiled = {(r["kernel"], r["target"], r["dtype"], r["layout"],
                 tuple(sorted({**r["constexprs"], "num_warps": r["num_warps"]}.items())))
                for r in report["rows"]}
    configs = [tuple(sorted(c.items())) for c in report["sample_configs"]]
    expected = {("deformable_sample", t, d, lay, c) for t in TARGETS for d in report["feature_dtypes"]
                for lay in LAYOUTS for c in configs}
    assert len(configs) >= 2 and set(report["feature_dtypes"]) == {"float32", "float16", "bfloat16"}
    assert expected <= compiled
    assert {(t, d, lay) for k, t, d, lay, _ in compiled if k == "compose_head_flows"} == {
        (t, d, lay) for t in TARGETS for d in report["feature_dtypes"] for lay in LAYOUTS}

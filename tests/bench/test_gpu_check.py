"""`make gpu-check` on a machine without a GPU: the plan and its budgets (--dry-run), the exit
2 that comes before any package is looked for or pip is run, and the one line for missing
packages. The GPU steps themselves run only on a GPU box (docs/gpu.md)."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from bench import gpu_check
from tests.utils import REPO

def run_check(*args: str, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "bench.gpu_check", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=120)


def test_dry_run_prints_the_plan_within_the_default_budget():
    result = run_check("--dry-run")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "bench.gpu_check plan, budget 420 s:"
    names = [line.split()[0] for line in lines[1:]]
    assert names == ["environment", "cuda_tests", "kernels", "engine", "accuracy", "service_workers_1",
                     "service_workers_4", "service_workers_8", "compile_check"]
    runs = {line.split()[0]: (float(line.split()[1]), line.split()[3]) for line in lines[1:]}
    assert sum(b for b, verdict in runs.values() if verdict == "run") == 400  # 20 s to spare within 420
    assert runs["compile_check"] == (60, "skip")
    short = run_check("--dry-run", "--budget", "150")
    verdicts = {line.split()[0]: line.split()[3] for line in short.stdout.splitlines()[1:]}
    # Most valuable first; a step that does not fit is skipped and a smaller later one still runs.
    assert [n for n, v in verdicts.items() if v == "run"] == ["environment", "cuda_tests", "kernels"]


def test_plan_skips_what_does_not_fit_and_keeps_order():
    steps = gpu_check.steps(None)
    assert [s.name for s, fits in gpu_check.plan(steps, 125) if fits] == ["cuda_tests", "kernels"]
    assert all(fits for _, fits in gpu_check.plan(steps, sum(s.budget_s for s in steps)))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the exit on a machine without CUDA")
def test_without_cuda_it_exits_2_at_once_and_never_runs_pip(tmp_path):
    """The package check (and with it pip) comes after the CUDA check: a `pip` on PATH that
    records being run is never run, and the site folder is never made."""
    marker = tmp_path / "pip-ran"
    fake = tmp_path / "bin"
    fake.mkdir()
    for name in ("pip", "pip3"):
        (fake / name).write_text(f"#!/bin/sh\ntouch {marker}\n")
        (fake / name).chmod(0o755)
    result = run_check("--wheels", str(tmp_path / "none"), env_extra={"PATH": f"{fake}:{os.environ['PATH']}",
                                                                      "PIP_CONFIG_FILE": str(marker)})
    assert result.returncode == 2
    assert "needs a CUDA GPU" in result.stderr and "missing packages" not in result.stderr
    assert not marker.exists() and not gpu_check.SITE.exists()


def test_the_wheel_list_names_each_package_and_its_import():
    required = gpu_check.wheel_requirements()
    assert {"fastapi", "pydantic", "pydantic_core", "uvicorn", "simplejpeg", "blake3", "multipart"} <= set(required)
    assert all("==" in req for req in required.values())
    assert not {"torch", "triton", "numpy", "nvidia_cudnn"} & {r.split("==")[0].replace("-", "_") for r in required.values()}


def test_missing_packages_are_one_line_that_says_how_to_get_them(tmp_path, monkeypatch):
    """A package the wheel list names and this Python lacks, and no wheels: one line naming it
    and the command that fetches it (no traceback, no pip)."""
    listing = tmp_path / "wheels.txt"
    listing.write_text("fastapi==0.165.0  # fastapi\nno-such-package==1.0  # no_such_package_here\n")
    monkeypatch.setattr(gpu_check, "WHEELS_LIST", listing)
    monkeypatch.setattr(gpu_check, "SITE", tmp_path / "site")
    line = gpu_check.provide_packages(tmp_path / "empty")
    assert line is not None and "\n" not in line
    assert line.startswith("bench.gpu_check: missing packages: no-such-package; no wheels in ")
    assert "make gpu-check-wheels" in line and "fastapi" not in line.split(";")[0]

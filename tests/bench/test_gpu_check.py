"""`make gpu-check` on a machine without a GPU: the plan and its budgets (--dry-run), the exit
2 that comes before any package is looked for or pip is run, and the one line for missing
packages. The GPU steps themselves run only on a GPU box (docs/gpu.md)."""
from __future__ import annotations

import os
import subprocess
import sys

import tomllib

import pytest
import torch
from packaging.requirements import Requirement

from bench import gpu_check, gpu_check_packages
from tests.utils import REPO, REPO_PYTHONPATH

def run_check(*args: str, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": REPO_PYTHONPATH, **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "bench.gpu_check", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=120)


def test_dry_run_prints_the_plan_within_the_default_budget():
    result = run_check("--dry-run")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "bench.gpu_check plan, budget 480 s:"
    names = [line.split()[0] for line in lines[1:]]
    assert names == ["environment", "kernels", "engine", "cuda_tests", "accuracy", "service", "compile_check"]
    runs = {line.split()[0]: (float(line.split()[1]), line.split()[3]) for line in lines[1:]}
    assert sum(b for b, verdict in runs.values() if verdict == "run") == 480
    short = run_check("--dry-run", "--budget", "250")
    verdicts = {line.split()[0]: line.split()[3] for line in short.stdout.splitlines()[1:]}
    # Most valuable first; a step that does not fit is skipped and a smaller later one still runs.
    assert [n for n, v in verdicts.items() if v == "run"] == ["environment", "kernels", "engine", "accuracy"]


def test_the_plan_estimates_each_step_from_the_rehearsal(tmp_path, monkeypatch):
    """A step's GPU estimate is its rehearsed seconds times the stated factor, shown in the plan."""
    rehearsal = tmp_path / "rehearsal.json"
    rehearsal.write_text('{"steps": {"engine": {"seconds": 40.0}, "environment": {"seconds": 1.0}}}')
    monkeypatch.setattr(gpu_check, "REHEARSAL_RESULT", rehearsal)
    assert gpu_check.estimates() == {"engine": 40.0 * gpu_check.GPU_FACTOR, "environment": gpu_check.GPU_FACTOR}


def test_plan_skips_what_does_not_fit_and_keeps_order():
    steps = gpu_check.steps(None)
    assert [s.name for s, fits in gpu_check.plan(steps, 200) if fits] == ["kernels", "engine"]
    assert all(fits for _, fits in gpu_check.plan(steps, sum(s.budget_s for s in steps)))


def test_the_rehearsal_runs_the_same_steps_on_the_cpu():
    gpu, rehearsal = gpu_check.steps(None), gpu_check.steps(None, rehearse=True)
    assert [(s.name, s.budget_s, s.report) for s in gpu] == [(s.name, s.budget_s, s.report) for s in rehearsal]
    assert all("cuda" not in s.args for s in rehearsal) and "--rehearse" in rehearsal[0].args


def test_a_step_whose_engine_fell_back_is_named_in_the_digest():
    engine = {"ours": {"fp16": {"info": {"sampler_fallback": "triton sampler failed: ...", "cuda_graphs_fallback": None,
                                         "precision_fallback": []}, "runs": []},
                       "fp32": {"info": {"sampler_fallback": None}, "runs": []}}}
    service = {"results": [{"config": "batched", "server": {"cuda_graphs_fallback": "batch 32: ..."}}]}
    assert gpu_check.fallbacks("engine", engine) == {"engine.fp16": {"sampler_fallback": "triton sampler failed: ..."}}
    assert gpu_check.fallbacks("service", service) == {"service.batched": {"cuda_graphs_fallback": "batch 32: ..."}}
    assert gpu_check.fallbacks("kernels", {"kernels": []}) == {}


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
    site_before = gpu_check_packages.SITE.exists()  # a rehearsal in this checkout leaves one
    result = run_check("--wheels", str(tmp_path / "none"), env_extra={"PATH": f"{fake}:{os.environ['PATH']}",
                                                                      "PIP_CONFIG_FILE": str(marker)})
    assert result.returncode == 2
    assert "needs a CUDA GPU" in result.stderr and "missing packages" not in result.stderr
    assert not marker.exists() and gpu_check_packages.SITE.exists() == site_before


def test_the_wheel_list_names_each_package_and_its_import():
    required = gpu_check_packages.wheel_requirements()
    assert {"fastapi", "pydantic", "pydantic_core", "uvicorn", "simplejpeg", "blake3", "multipart"} <= set(required)
    assert all("==" in req for req in required.values())
    assert not {"torch", "triton", "numpy", "nvidia_cudnn"} & {r.split("==")[0].replace("-", "_") for r in required.values()}


def test_every_dependency_is_on_the_box_or_in_the_wheel_list():
    """What pyproject.toml needs at run time comes from the box (bench/gpu_box_packages.txt) or from
    the wheels the check carries: a dependency added to one and not the other fails here, not on
    the first command of a lease (fastapi-offline did, in the rehearsal)."""
    from packaging.utils import canonicalize_name
    carried = {canonicalize_name(req.split("==")[0]) for req in gpu_check_packages.wheel_requirements().values()}
    box = {canonicalize_name(Requirement(line.split("#")[0].strip()).name)
           for line in gpu_check_packages.BOX_PACKAGES.read_text().splitlines() if line.split("#")[0].strip()}
    needed = {canonicalize_name(Requirement(r).name) for r in
              tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]}
    assert needed - carried - box - gpu_check_packages.TURNED_ON_ONLY == set()


def test_missing_packages_are_one_line_that_says_how_to_get_them(tmp_path, monkeypatch):
    """A package the wheel list names and this Python lacks, and no wheels: one line naming it
    and the command that fetches it (no traceback, no pip)."""
    listing = tmp_path / "wheels.txt"
    listing.write_text("fastapi==0.165.0  # fastapi\nno-such-package==1.0  # no_such_package_here\n")
    monkeypatch.setattr(gpu_check_packages, "WHEELS_LIST", listing)
    monkeypatch.setattr(gpu_check_packages, "SITE", tmp_path / "site")
    line = gpu_check_packages.provide_packages(tmp_path / "empty")
    assert line is not None and "\n" not in line
    assert line.startswith("bench.gpu_check: missing packages: no-such-package; no wheels in ")
    assert "make gpu-check-wheels" in line and "fastapi" not in line.split(";")[0]


def wheel(folder, name: str, version: str, requires: list[str]):
    """A wheel with nothing in it but its metadata (what the version check reads)."""
    import zipfile
    path = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(f"{name}-{version}.dist-info/METADATA", "Metadata-Version: 2.1\nName: {}\nVersion: {}\n{}".format(
            name, version, "".join(f"Requires-Dist: {r}\n" for r in requires)))
    return path


def test_a_package_present_at_a_version_that_does_not_fit_is_named_and_replaced(tmp_path, monkeypatch):
    """pydantic 2.14 needs typing_extensions >= 4.16: a box whose copy is older has it named in one
    line and installed from the wheels instead; a need no listed wheel can meet is named too."""
    import importlib.metadata
    pytest_version = importlib.metadata.version("pytest")
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    wheel(wheels, "needs_newer", "1.0", ["pytest>=999", "no-such-dependency>=1", "ignored; extra == 'x'"])
    listing = tmp_path / "wheels.txt"
    listing.write_text("pytest==999.0  # pytest\nneeds-newer==1.0  # needs_newer\n")
    monkeypatch.setattr(gpu_check_packages, "WHEELS_LIST", listing)
    assert gpu_check_packages.mismatches(wheels) == {"pytest==999.0": f"pytest {pytest_version} (needs_newer 1.0 needs >=999)"}
    line = gpu_check_packages.mismatch_line(wheels)
    assert "\n" not in line and f"installed from the wheels instead: pytest {pytest_version}" in line
    assert "no-such-dependency missing (needs_newer 1.0 needs >=1)" in line and "ignored" not in line


def test_the_progress_plugin_writes_each_test_as_it_ends_and_survives_a_broken_file(tmp_path):
    (tmp_path / "test_some.py").write_text("def test_ok():\n    pass\n\ndef test_bad():\n    assert False\n")
    (tmp_path / "test_broken.py").write_text("import no_such_module_here\n")
    lines = tmp_path / "out.jsonl"
    subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "bench.pytest_progress",
                    "--continue-on-collection-errors", f"--progress-jsonl={lines}", str(tmp_path)],
                   cwd=REPO, env={**os.environ, "PYTHONPATH": REPO_PYTHONPATH}, capture_output=True, timeout=120)
    outcomes = gpu_check.test_outcomes(lines)
    assert outcomes["counts"] == {"collection_error": 1, "passed": 1, "failed": 1}
    assert any("test_broken.py: collection_error" in n for n in outcomes["not_passed"])  # its node id is relative to the rootdir


def test_a_rehearsal_in_an_environment_unlike_the_box_names_what_differs_and_stops(tmp_path, monkeypatch):
    """bench/gpu_box_packages.txt is the box: a rehearsal's Python that lacks one of its packages,
    or holds another version, is no copy of it; the check says which, in one line, and exits 3."""
    listing = tmp_path / "box.txt"
    listing.write_text("# the box\npytest\nno-such-box-package-here==1.0\npackaging==0.0.1  # pinned\n")
    monkeypatch.setattr(gpu_check_packages, "BOX_PACKAGES", listing)
    lacking = gpu_check_packages.box_packages_lacking()
    assert lacking[0] == "no-such-box-package-here missing" and lacking[1].startswith("packaging ")
    assert lacking[1].endswith("(the box has ==0.0.1)") and len(lacking) == 2
    result = run_check("--rehearse", "--out", str(tmp_path / "out.json"))  # this venv is no copy of the box
    assert result.returncode == 3 and not (tmp_path / "out.json").exists()
    line, = result.stderr.strip().splitlines()
    assert line.startswith("bench.gpu_check: this Python lacks what the box has") and "torch" in line

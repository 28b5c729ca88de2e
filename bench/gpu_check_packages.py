"""What `make gpu-check` needs beyond the GPU box's own Python, checked by version and installed
offline.

The box (docs/gpu.md) has a CUDA torch, Triton and many packages, but not FastAPI, pydantic,
uvicorn, simplejpeg or blake3; bench/gpu_check_wheels.txt names what the check needs, each
pinned to the wheel that ``make gpu-check-wheels`` fetches. A package the box already holds is
used only when its version satisfies every requirement placed on it: this project's
(pyproject.toml) and those of the other wheels in the folder (their ``Requires-Dist``), read
with ``importlib.metadata`` and ``packaging``. pydantic 2.14 needs typing_extensions >= 4.16,
for instance, and an older copy on the box breaks its import. A package missing or at a version
that does not fit is installed from the wheels folder (``pip --no-index``: never the network)
into SITE, which comes first on the steps' PYTHONPATH.
"""
from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import re
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

from bench.common import ROOT

WHEELS_LIST = ROOT / "bench" / "gpu_check_wheels.txt"
BOX_PACKAGES = ROOT / "bench" / "gpu_box_packages.txt"
DEFAULT_WHEELS = ROOT / "wheels" / "gpu-check"
SITE = ROOT / ".gpu-check" / "site"
PROJECT = "daflow-tryon"
# Dependencies the service imports only when turned on (TRYON_GRPC_PORT, OTEL_TRACES_EXPORTER),
# which no step of the check does: neither carried nor checked (tests/service/test_main.py holds
# that starting the service imports none of them).
TURNED_ON_ONLY = frozenset({"grpcio", "tritonclient", "opentelemetry-sdk", "opentelemetry-exporter-otlp-proto-http"})
HOW = "run `make gpu-check-wheels` on a machine with the registries and copy wheels/gpu-check/ here (docs/gpu.md)"


def wheel_requirements() -> dict[str, str]:
    """import name -> pinned requirement, from bench/gpu_check_wheels.txt."""
    out = {}
    for line in WHEELS_LIST.read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9_.\-]+==[^\s#]+)\s*#\s*(\S+)\s*$", line)
        if match:
            out[match.group(2)] = match.group(1)
    return out


def _applies(requirement: Requirement) -> bool:
    """A requirement of this interpreter, not of an extra or of another platform."""
    try:
        return requirement.marker is None or requirement.marker.evaluate({"extra": ""})
    except Exception:  # a marker packaging cannot evaluate here counts as not applying
        return False


def _wheel_requires(wheels: Path) -> list[tuple[str, Requirement]]:
    """(who, requirement) for every Requires-Dist of every wheel in the folder."""
    out = []
    for wheel in sorted(wheels.glob("*.whl")) if wheels.is_dir() else ():
        with zipfile.ZipFile(wheel) as archive:
            name = next((n for n in archive.namelist() if n.endswith(".dist-info/METADATA")), None)
            text = archive.read(name).decode() if name else ""
        who = wheel.name.split("-")[0] + " " + wheel.name.split("-")[1]
        out += [(who, Requirement(line.split(":", 1)[1].strip())) for line in text.splitlines()
                if line.startswith("Requires-Dist:")]
    return out


def requirements(wheels: Path) -> dict[str, list[tuple[str, Requirement]]]:
    """Canonical name -> (who, requirement) placed on it, by this project and by the wheels."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    found: dict[str, list[tuple[str, Requirement]]] = {}
    for who, requirement in [(PROJECT, Requirement(r)) for r in project] + _wheel_requires(wheels):
        if _applies(requirement) and canonicalize_name(requirement.name) not in TURNED_ON_ONLY:
            found.setdefault(canonicalize_name(requirement.name), []).append((who, requirement))
    return found


def installed_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _unmet(version: str, needs: list[tuple[str, Requirement]]) -> list[str]:
    try:
        parsed = Version(version)
    except InvalidVersion:
        return [f"{who} needs {req.specifier}" for who, req in needs]
    return [f"{who} needs {req.specifier}" for who, req in needs if not req.specifier.contains(parsed, prereleases=True)]


def mismatches(wheels: Path) -> dict[str, str]:
    """pinned requirement -> why the copy this Python holds cannot be used (its version fails a
    requirement placed on it). Packages it lacks are not listed here (``missing``)."""
    needs = requirements(wheels)
    out = {}
    for pinned in wheel_requirements().values():
        name = pinned.split("==")[0]
        version = installed_version(name)
        if version is not None:
            unmet = _unmet(version, needs.get(canonicalize_name(name), []))
            if unmet:
                out[pinned] = f"{name} {version} ({', '.join(unmet)})"
    return out


def importable(module: str) -> bool:
    """Whether this Python can import ``module``; a dotted name whose parent package is absent
    counts as absent (``find_spec`` raises for it instead of answering None)."""
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def missing() -> dict[str, str]:
    """import name -> pinned requirement, for each listed package this Python cannot import."""
    return {module: req for module, req in wheel_requirements().items() if not importable(module)}


def unlisted_mismatches(wheels: Path) -> list[str]:
    """What the wheel list does not name, so nothing here can replace: packages this Python holds
    at a version that fails a requirement, and packages this project or a listed wheel needs that
    it lacks ("name version (who needs what)", "name missing (...)")."""
    listed = {canonicalize_name(req.split("==")[0]) for req in wheel_requirements().values()}
    out = []
    for name, needs in sorted(requirements(wheels).items()):
        if name in listed:
            continue
        version = installed_version(name)
        if version is None:
            out.append(f"{name} missing ({', '.join(f'{who} needs {req.specifier or str(req)}' for who, req in needs)})")
        elif unmet := _unmet(version, needs):
            out.append(f"{name} {version} ({', '.join(unmet)})")
    return out


def mismatch_line(wheels: Path) -> str | None:
    """One line naming every package whose version does not fit, or None."""
    replaced, kept = list(mismatches(wheels).values()), unlisted_mismatches(wheels)
    parts = ([f"installed from the wheels instead: {'; '.join(replaced)}"] if replaced else []) + (
        [f"not in bench/gpu_check_wheels.txt, left as they are: {'; '.join(kept)}"] if kept else [])
    return f"bench.gpu_check: versions that do not fit: {' | '.join(parts)}" if parts else None


def box_packages_lacking() -> list[str]:
    """What bench/gpu_box_packages.txt says the box holds and this Python does not, or not at that
    version: the rehearsal stops on it, since its copy of the box would not be one."""
    out = []
    for line in BOX_PACKAGES.read_text().splitlines():
        line = line.split("#")[0].strip()
        if not line:
            continue
        requirement = Requirement(line)
        version = installed_version(requirement.name)
        if version is None:
            out.append(f"{requirement.name} missing")
        elif _unmet(version, [("the box", requirement)]):
            out.append(f"{requirement.name} {version} (the box has {requirement.specifier})")
    return out


def provide_packages(wheels: Path) -> str | None:
    """What this Python lacks, or holds at a version that does not fit, installed offline from
    ``wheels`` into SITE (put first on sys.path here and on the steps' PYTHONPATH); None when all
    is there, else the one line that says what is missing."""
    if SITE.is_dir() and str(SITE) not in sys.path:
        sys.path.insert(0, str(SITE))
    wanted = sorted(set(missing().values()) | set(mismatches(wheels)))
    if not wanted:
        return None
    names = " ".join(sorted(req.split("==")[0] for req in wanted))
    if not wheels.is_dir() or not any(wheels.glob("*.whl")):
        return f"bench.gpu_check: missing packages: {names}; no wheels in {wheels}: {HOW}"
    result = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps",
                             "--disable-pip-version-check", "--find-links", str(wheels), "--target", str(SITE),
                             "--upgrade", *wanted], capture_output=True, text=True)
    importlib.invalidate_caches()
    if str(SITE) not in sys.path:
        sys.path.insert(0, str(SITE))
    still = sorted(set(missing().values()) | set(mismatches(wheels)))
    if result.returncode != 0 or still:
        lacking = " ".join(sorted(req.split("==")[0] for req in (still or wanted)))
        detail = (result.stderr.strip().splitlines() or [""])[-1][:200]
        return f"bench.gpu_check: missing packages: {lacking}; not installable from {wheels} ({detail}): {HOW}"
    return None

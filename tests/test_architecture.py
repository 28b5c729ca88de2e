"""The rooms of service/ (docs/architecture.md) import one way: api -> jobs, processes -> codec ->
queue -> the foundation (settings, limits, metrics, logs, examples, tracing) -> model; model knows nothing of the service.
Read from the source with ast, so a new import that breaks the rule fails here, not in review."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FOUNDATION = {"settings", "limits", "metrics", "logs", "examples", "tracing"}
# What each room may import of the service (besides itself and model/).
ALLOWED = {
    "model": set(),
    "foundation": {"foundation"},
    "queue": {"foundation"},
    # codec/: decoding (framing), encoding (compositing), URL rules: below both entry points, api/ and jobs/.
    "codec": {"queue", "foundation"},
    "processes": {"queue", "foundation"},
    # jobs/: the job store, runner and webhook delivery; they enter through the queue's interface.
    "jobs": {"codec", "queue", "foundation"},
    "api": {"jobs", "processes", "codec", "queue", "foundation"},
    "main": {"api", "processes", "queue", "foundation"},
}


def room_of(module: str) -> str | None:
    """'service.api.routes.tryon' -> 'api'; None outside model/ and service/."""
    parts = module.split(".")
    if parts[0] == "model":
        return "model"
    if parts[0] != "service":
        return None
    if len(parts) == 1 or parts[1] == "__main__":
        return "main"
    return "foundation" if parts[1] in FOUNDATION else parts[1]


def imports_of(path: Path) -> list[str]:
    """The modules ``path`` imports, relative imports resolved."""
    module = ".".join(path.relative_to(REPO).with_suffix("").parts)
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            found += [target] if node.module else [f"{target}.{alias.name}" for alias in node.names]
    return found


SOURCES = sorted(p for folder in ("model", "service") for p in (REPO / folder).rglob("*.py"))


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(REPO)))
def test_imports_run_one_way_between_rooms(path):
    room = room_of(".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__"))
    wrong = [name for name in imports_of(path)
             if room_of(name) not in (None, room, "model") and room_of(name) not in ALLOWED[room]]
    if room == "model":
        wrong = [name for name in imports_of(path) if room_of(name) not in (None, "model")]
    assert not wrong, f"{path.relative_to(REPO)} ({room}) may not import {wrong}"


def test_no_model_or_service_module_is_over_about_400_lines():
    long = {str(p.relative_to(REPO)): n for p in SOURCES if (n := len(p.read_text().splitlines())) > 430}
    assert not long


def test_the_rule_itself_sees_a_wrong_import():
    assert room_of("service.api.deps") == "api" and room_of("service.settings") == "foundation"
    assert "api" not in ALLOWED["queue"] and room_of("service.__main__") == "main"
    assert "api" not in ALLOWED["codec"] and "jobs" not in ALLOWED["codec"]
    assert "service.api.app" in imports_of(REPO / "service" / "__main__.py")


PACKAGES = sorted(p.parent.name for p in (REPO / "service").glob("*/__init__.py"))


def _room_table() -> str:
    """service/README.md's table of rooms: its header row and the rows under it."""
    lines = (REPO / "service" / "README.md").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| room |"))
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("|")), len(lines))
    return "\n".join(lines[start:end])


def _drawing() -> str:
    """docs/architecture.md's drawing of the rooms: the first code block under "The service's rooms"."""
    text = (REPO / "docs" / "architecture.md").read_text()
    section = text[text.index("## The service's rooms"):]
    return section.split("```")[1]


@pytest.mark.parametrize("package", PACKAGES)
def test_every_room_is_in_the_room_lists(package):
    """A package added under service/ is named in each list of the rooms, so none goes stale."""
    import service
    places = {"service/README.md's room table": _room_table(), "service/__init__.py": service.__doc__,
              "docs/architecture.md's drawing": _drawing()}
    missing = [where for where, text in places.items() if f"{package}/" not in text]
    assert not missing, f"service/{package}/ is not in {missing}"


@pytest.mark.parametrize("path", sorted(p for folder in ("model", "service") for p in (REPO / folder).rglob("__init__.py")),
                         ids=lambda p: str(p.relative_to(REPO)))
def test_every_package_says_what_it_is(path):
    assert ast.get_docstring(ast.parse(path.read_text())), f"{path.relative_to(REPO)} has no module docstring"

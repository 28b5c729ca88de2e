"""The real parts some tests drive (nginx, Redis, Chromium, the container tools): a test that
cannot find one skips naming it (``skip_missing``), and under ``CI=true`` that skip fails
instead (tests/conftest.py), so CI is never green without them; ``.ci/run`` installs them."""
from __future__ import annotations

from typing import NoReturn

import pytest

MISSING = "missing real part"  # in the reason of every such skip


def missing_reason(part: str, how: str) -> str:
    """``how``: how to get it (``apt-get install ...; .ci/run does this``)."""
    return f"{MISSING}: {part} ({how})"


def skip_missing(part: str, how: str) -> NoReturn:
    pytest.skip(missing_reason(part, how))


def fail_missing_under_ci(report: pytest.TestReport, ci: bool) -> None:
    """Turns the skip of a missing real part into a failure that names it, under CI."""
    if not (ci and report.skipped):
        return
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    if MISSING in reason:
        report.outcome = "failed"
        report.longrepr = (f"CI=true and {reason.removeprefix('Skipped: ')}: CI must not pass without a real part "
                           "the tests drive")

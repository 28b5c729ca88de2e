"""tests/utils/installed.py with the hook in tests/conftest.py: a test that skips because a real
part is missing fails under CI=true, naming the part; other skips stay skips."""
from __future__ import annotations

import os
import subprocess
import sys

from tests.utils import REPO_PYTHONPATH

INNER_TESTS = '''
import pytest
from tests.utils.installed import skip_missing

def test_needs_a_part():
    skip_missing("redis-server", "apt-get install redis-server")

def test_skips_for_another_reason():
    pytest.skip("not on this platform")
'''


def test_a_missing_part_fails_under_ci_naming_it_and_other_skips_stay(tmp_path):
    (tmp_path / "test_inner.py").write_text(INNER_TESTS)
    # Not as an xdist worker of the outer run (PYTEST_XDIST_WORKER would reach tests/conftest.py).
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    env |= {"PYTHONPATH": REPO_PYTHONPATH, "CI": "true"}
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rA", "-p", "tests.conftest", "-p", "no:xdist",
                           "-p", "no:cacheprovider", str(tmp_path / "test_inner.py")], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert "1 failed, 1 skipped" in done.stdout, done.stdout
    assert "FAILED test_inner.py::test_needs_a_part - CI=true and missing real part: redis-server" in done.stdout

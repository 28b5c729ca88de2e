"""model/kernels/numba_cache.py: a NUMBA_CACHE_DIR that is read-only (the image's, filled at
build, on a read-only root filesystem) is read from a writable copy in the temp dir, so the
fused CPU sampler imports and loads what was compiled there instead of compiling again. The
folder is made read-only for real: a read-only bind mount in a mount namespace of its own,
which holds for root too (tests/deploy/test_image.py runs the image itself so)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from tests.utils import REPO, REPO_PYTHONPATH

# Runs the sampler once; says where Numba cached and whether it compiled (a miss) or loaded (a hit).
SAMPLE_ONCE = """
import json, os, torch
from numba.core import config
from model.kernels.cpu_sampling import _sample_rows, deformable_sample_cpu
torch.manual_seed(0)
deformable_sample_cpu(torch.rand(1, 8, 16, 16), torch.rand(4, 2, 16, 16) * 2 - 1, torch.rand(1, 4, 16, 16))
stats = _sample_rows.stats
print(json.dumps({"cache_dir": config.CACHE_DIR, "env": os.environ["NUMBA_CACHE_DIR"], "uid": os.getuid(),
                  "hits": sum(stats.cache_hits.values()), "misses": sum(stats.cache_misses.values())}))
"""
# Bind-mounts $0 on itself read-only, then runs the rest.
READ_ONLY = 'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" && exec "$@"'


def sample_once(cache_dir, temp_dir, prefix: tuple[str, ...] = ()) -> dict:
    env = os.environ | {"PYTHONPATH": REPO_PYTHONPATH, "NUMBA_CACHE_DIR": str(cache_dir), "TMPDIR": str(temp_dir)}
    done = subprocess.run([*prefix, sys.executable, "-c", SAMPLE_ONCE], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def read_only_prefix(folder) -> tuple[str, ...]:
    """A command prefix that runs its command with ``folder`` read-only (root: a mount namespace;
    anyone else: a user namespace too, where they are root)."""
    unshare = shutil.which("unshare")
    if unshare is None:
        pytest.skip("unshare (util-linux) is not installed: no read-only mount to test with")
    namespaces = ("--mount",) if os.geteuid() == 0 else ("--user", "--map-root-user", "--mount")
    prefix = (unshare, *namespaces, "sh", "-c", READ_ONLY, str(folder))
    probe = subprocess.run([*prefix, "sh", "-c", f'! touch "{folder}/probe" 2>/dev/null'], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"unshare cannot make a read-only mount here: {probe.stderr.decode().strip()}")
    return prefix


def test_a_read_only_cache_is_read_from_a_writable_copy(tmp_path):
    cache, temp = tmp_path / "numba", tmp_path / "tmp"
    temp.mkdir()
    built = sample_once(cache, temp)  # the image's build: compiles into the folder, writable: used as it is
    assert (built["cache_dir"], built["misses"], built["hits"]) == (str(cache), 1, 0)
    assert not list(temp.iterdir())
    filled = sorted(p.relative_to(cache) for p in cache.rglob("*"))
    assert any(p.suffix == ".nbi" for p in filled) and any(p.suffix == ".nbc" for p in filled)

    served = sample_once(cache, temp, read_only_prefix(cache))  # a replica: the folder read-only
    copy = temp / f"numba-cache-{served['uid']}"
    assert served["cache_dir"] == served["env"] == str(copy)
    assert (served["hits"], served["misses"]) == (1, 0), "loaded from the copy, not compiled again"
    assert sorted(p.relative_to(copy) for p in copy.rglob("*")) == filled
    assert sorted(p.relative_to(cache) for p in cache.rglob("*")) == filled


"""model/warm_caches.py, what the image's build runs: it fills NUMBA_CACHE_DIR with the CPU
sampler a replica compiles at start-up, and a later process loads it from there instead of
compiling (docs/deploy.md, "A replica's start-up")."""
from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.utils import REPO, REPO_PYTHONPATH

LOADS = """
import json, torch
from model.kernels.selfcheck import check_fused
from model.kernels.cpu_sampling import _sample_rows
assert check_fused("numba", torch.device("cpu"), channels_last=True) is None
print(json.dumps({"hits": sum(_sample_rows.stats.cache_hits.values()),
                  "misses": sum(_sample_rows.stats.cache_misses.values())}))
"""


def run(args: list[str], cache) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TRYON_", "NUMBA_"))}
    env |= {"NUMBA_CACHE_DIR": str(cache), "PYTHONPATH": REPO_PYTHONPATH}
    done = subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_the_image_fill_is_what_a_replica_loads(tmp_path):
    cache = tmp_path / "numba"
    run(["-m", "model.warm_caches", "--device", "cpu", "--image-size", "64x64"], cache)
    assert list(cache.rglob("cpu_sampling._sample_rows-*.nbi")) and list(cache.rglob("*.nbc"))
    assert json.loads(run(["-c", LOADS], cache).splitlines()[-1]) == {"hits": 1, "misses": 0}

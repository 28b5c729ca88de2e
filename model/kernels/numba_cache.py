"""Numba's on-disk cache where the folder the build filled is read-only.

Numba reads its cache from the folder it writes to (``NUMBA_CACHE_DIR``) and refuses one
it cannot write: the ``cache=True`` decorator raises ("no locator available") and the
fused CPU sampler does not import, so the engine falls back to the reference sampler. The
image fills ``NUMBA_CACHE_DIR`` when it is built (``model/warm_caches.py``) and runs on a
read-only root filesystem (docs/deploy.md), so ``use_writable_cache`` hands Numba a copy
of that folder in the temp dir (a tmpfs mounted at /tmp) before the kernels are defined:
what the build compiled loads from the copy (no compile on the build machine's CPU model),
and another CPU's compile is written beside it. Where the folder is writable, or
``NUMBA_CACHE_DIR`` unset, nothing changes.
"""
from __future__ import annotations

import os
import shutil
import tempfile

from numba.core import config


def writable(folder: str) -> bool:
    """Whether Numba can cache in ``folder``, tested as Numba tests it (makes it, writes a file)."""
    try:
        os.makedirs(folder, exist_ok=True)
        tempfile.TemporaryFile(dir=folder).close()
    except OSError:
        return False
    return True


def _copy_unless_there(source: str, target: str) -> None:
    if not os.path.exists(target):
        shutil.copy2(source, target)


def use_writable_cache() -> str | None:
    """The folder Numba caches in from now on: ``NUMBA_CACHE_DIR`` where writable, else a copy of
    it in the temp dir (kept across restarts of a process that keeps its /tmp, entries already
    there left as they are); None when it is unset. Where no copy can be made either, the folder
    stays as it is and Numba says why it cannot cache."""
    source = config.CACHE_DIR
    if not source or writable(source):
        return source or None
    target = os.path.join(tempfile.gettempdir(), f"numba-cache-{os.getuid()}")
    try:
        if os.path.isdir(source):
            shutil.copytree(source, target, dirs_exist_ok=True, copy_function=_copy_unless_there)
        if not writable(target):
            return source
    except OSError:
        return source
    # Both: Numba re-reads its configuration from the environment whenever a NUMBA_* variable
    # changes, and child processes (the engine process of TRYON_WORKERS > 1) start from it.
    config.CACHE_DIR = os.environ["NUMBA_CACHE_DIR"] = target
    return target

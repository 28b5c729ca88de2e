"""Resumable checkpoint download: stream to ``NAME.part``, verify, then move into place."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from urllib.parse import urlparse

import httpx
from tqdm import tqdm

CHUNK = 1 << 20


class DownloadError(Exception):
    pass


def _hash_file(path: Path, digest) -> None:
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            digest.update(block)


def download(url: str, dest: str | os.PathLike, *, sha256: str | None = None, verify=None,
             timeout: float = 30.0, progress: bool = True) -> Path:
    """Downloads ``url`` to ``dest``.

    A previous partial download (``NAME.part.EXT``, same suffix so it can be
    verified as what it is) is resumed with an HTTP Range
    request when the server allows it, else restarted. ``sha256`` (hex) and
    ``verify(path)`` (raises on a bad file) both run on the temporary file;
    only a file that passes them replaces ``dest``.
    """
    if urlparse(url).scheme not in ("http", "https"):
        raise DownloadError(f"only http(s) URLs can be downloaded, not {url!r}")
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(f"{dest.stem}.part{dest.suffix}")
    have = part.stat().st_size if part.exists() else 0
    headers = {"Range": f"bytes={have}-"} if have else {}
    try:
        with httpx.stream("GET", url, headers=headers, timeout=timeout, follow_redirects=True) as resp:
            if resp.status_code == 416:  # the part file already holds everything
                pass
            elif resp.status_code == 206 and have:
                _write(resp, part, "ab", have, progress)
            elif resp.status_code == 200:
                _write(resp, part, "wb", 0, progress)
            else:
                raise DownloadError(f"{url}: HTTP {resp.status_code}")
    except httpx.HTTPError as exc:
        raise DownloadError(f"{url}: download interrupted ({exc}); run again to resume") from None
    digest = hashlib.sha256()
    _hash_file(part, digest)
    if sha256 and digest.hexdigest() != sha256.lower():
        part.unlink()
        raise DownloadError(f"{url}: sha256 mismatch: expected {sha256.lower()}, got {digest.hexdigest()}"
                            " (the partial file was removed)")
    if verify is not None:
        verify(part)
    os.replace(part, dest)
    return dest


def _write(resp: httpx.Response, part: Path, mode: str, start: int, progress: bool) -> None:
    length = resp.headers.get("content-length")
    total = start + int(length) if length and length.isdigit() else None
    with open(part, mode) as f, tqdm(total=total, initial=start, unit="B", unit_scale=True,
                                     desc=part.name, disable=not progress) as bar:
        for block in resp.iter_bytes(CHUNK):
            f.write(block)
            bar.update(len(block))
    if total is not None and part.stat().st_size != total:
        raise httpx.ReadError(f"got {part.stat().st_size} of {total} bytes")

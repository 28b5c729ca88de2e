"""When to try again: a 503 (queue full, overloaded, starting, draining; not a job store this deployment
lacks) or a connection that failed, after the server's Retry-After or a doubling back-off, a bounded
number of times."""
from __future__ import annotations

import email.utils
import time
from dataclasses import dataclass
from typing import Optional

import httpx

# Failures before the service answered: safe to send again (a try-on changes nothing on the server).
RETRYABLE_ERRORS = (httpx.ConnectError, httpx.ConnectTimeout, httpx.RemoteProtocolError, httpx.ReadError,
                    httpx.WriteError, httpx.PoolTimeout)
RETRYABLE_STATUS = 503
# 503s that say "not on this deployment" (no Retry-After): waiting will not help.
FINAL_CODES = ("jobs_unavailable",)


def retry_after_seconds(header: Optional[str]) -> Optional[float]:
    """Retry-After as seconds: a number, or an HTTP date; None when absent or unreadable."""
    if not header:
        return None
    try:
        return max(0.0, float(header))
    except ValueError:
        pass
    try:
        return max(0.0, email.utils.parsedate_to_datetime(header).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def worth_retrying(response: httpx.Response) -> bool:
    """A 503 is, unless it is one of FINAL_CODES without Retry-After (the service cannot do it here at all)."""
    if response.status_code != RETRYABLE_STATUS:
        return False
    if response.headers.get("retry-after"):
        return True
    try:
        code = response.json()["error"]["code"]
    except (ValueError, KeyError, TypeError):
        return True
    return code not in FINAL_CODES


@dataclass(frozen=True)
class RetryPolicy:
    """``retries`` more attempts at most; between them the server's Retry-After, or ``backoff_s`` doubling
    each time up to ``max_wait_s``. A server asking for a longer wait than ``max_wait_s`` gets no retry."""
    retries: int = 3
    backoff_s: float = 0.5
    max_wait_s: float = 30.0

    def wait_before_retry(self, attempt: int, retry_after: Optional[float] = None) -> Optional[float]:
        """Seconds to wait before attempt ``attempt + 1`` (``attempt`` counts from 0), or None: give up."""
        if attempt >= self.retries:
            return None
        if retry_after is None:
            return min(self.backoff_s * 2 ** attempt, self.max_wait_s)
        return retry_after if retry_after <= self.max_wait_s else None

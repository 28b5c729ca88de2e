"""The calls as plain descriptions, the retry bookkeeping and a job's polling schedule: everything the
synchronous and the asynchronous client share, so each of them only sends, waits and reads."""
from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Optional, Union
from urllib.parse import quote

import httpx

from .errors import TryOnError
from .inputs import Part, form, options
from .results import GarmentResult, Job, JobGarment
from .retry import RETRYABLE_ERRORS, RetryPolicy, retry_after_seconds, worth_retrying

NDJSON = "application/x-ndjson"
USER_AGENT = "tryon-client/0.1.0"


@dataclass(frozen=True)
class ClientConfig:
    """What both clients are built from."""
    base_url: str
    headers: Dict[str, str]
    retry: RetryPolicy

    @classmethod
    def of(cls, base_url: str, api_key: Optional[str], retries: int, max_retry_wait: float) -> "ClientConfig":
        headers = {"User-Agent": USER_AGENT}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        return cls(base_url.rstrip("/"), headers, RetryPolicy(retries=retries, max_wait_s=max_retry_wait))


@dataclass(frozen=True)
class Call:
    path: str
    parts: List[Part] = field(default_factory=list)
    params: Dict[str, Any] = field(default_factory=dict)
    accept: Optional[str] = None
    garments: int = 1
    method: str = "POST"
    headers: Dict[str, str] = field(default_factory=dict)

    def request(self, http: httpx.Client | httpx.AsyncClient) -> httpx.Request:
        """A fresh request for each attempt (a multipart body is read once as it is sent)."""
        headers = {**self.headers, **({"Accept": self.accept} if self.accept else {})}
        return http.build_request(self.method, self.path, params=self.params, files=self.parts or None,
                                  headers=headers)


def tryon_call(cloth: Any, person: Dict[str, Any], format, quality, size) -> Call:
    return Call("/v1/tryon", form(person, [cloth]), options(format, quality, size))


def batch_call(cloths: Iterable[Any], person: Dict[str, Any], format, quality, size) -> Call:
    cloths = list(cloths)
    if not cloths:
        raise ValueError("cloths: give at least one garment")
    return Call("/v1/tryon/batch", form(person, cloths), options(format, quality, size), NDJSON, len(cloths))


def prepare_call(person: Dict[str, Any], cloth: Any = None) -> Call:
    return Call("/v1/prepare", form(person, [cloth] if cloth is not None else []), accept="application/json",
                garments=0)


JobRef = Union[Job, str]


def job_id(job: JobRef) -> str:
    return job.id if isinstance(job, Job) else job


def submit_job_call(cloths: Iterable[Any], person: Dict[str, Any], format, quality, size, webhook_url: Optional[str],
                    timeout: Optional[float], idempotency_key: Optional[str]) -> Call:
    """``POST /v1/jobs``. Without an ``idempotency_key`` one is made for this call, so that a retry after a
    connection that broke once the request was sent returns the same job instead of a second one."""
    call = batch_call(cloths, person, format, quality, size)
    fields = [(name, (None, str(value), None)) for name, value in (("webhook_url", webhook_url), ("timeout", timeout))
              if value is not None]
    return Call("/v1/jobs", call.parts + fields, call.params, "application/json", call.garments,
                headers={"Idempotency-Key": idempotency_key or f"tryon-client-{uuid.uuid4()}"})


def job_call(job: JobRef) -> Call:
    return Call(f"/v1/jobs/{quote(job_id(job), safe='')}", accept="application/json", garments=0, method="GET")


def cancel_call(job: JobRef) -> Call:
    return Call(f"/v1/jobs/{quote(job_id(job), safe='')}/cancel", accept="application/json", garments=0)


def result_call(garment: JobGarment) -> Call:
    return Call(garment.url, garments=1, method="GET")


class Polling:
    """When to ask again about a job that has not ended: ``interval`` seconds first, growing by half each
    time up to ``max_interval``, and never sooner than the server's Retry-After; TryOnError ("wait_timeout")
    once ``timeout`` seconds have passed (None: no limit)."""

    def __init__(self, job: JobRef, timeout: Optional[float], interval: float, max_interval: float):
        self.id = job_id(job)
        self.job: Optional[Job] = job if isinstance(job, Job) else None
        self.timeout = timeout
        self.end = None if timeout is None else time.monotonic() + timeout
        self.interval = interval
        self.max_interval = max_interval

    def pause(self) -> Optional[float]:
        """Seconds to wait before the next look (0: look now), or None: the job has ended."""
        if self.job is None:
            return 0.0
        if self.job.ended:
            return None
        wait = max(self.interval, self.job.retry_after or 0.0)
        self.interval = min(self.interval * 1.5, self.max_interval)
        if self.end is not None:
            left = self.end - time.monotonic()
            if left <= 0:
                raise TryOnError(None, "wait_timeout", f"job {self.id} is still {self.job.status} "
                                 f"({self.job.done}/{self.job.total} done) after {self.timeout:g} s")
            wait = min(wait, left)
        return wait

    def seen(self, job: Job) -> None:
        self.job = job


class Attempts:
    """One call's attempts: each failure either gives the seconds to wait before the next, or raises."""

    def __init__(self, policy: RetryPolicy, url: str):
        self.policy = policy
        self.url = url
        self.attempt = 0

    def after_error(self, error: httpx.TransportError) -> float:
        """A connection that failed before an answer came: retried; a timeout is not (it would only
        wait as long again)."""
        wait = self.policy.wait_before_retry(self.attempt) if isinstance(error, RETRYABLE_ERRORS) else None
        if wait is None:
            raise TryOnError.unreachable(self.url, error) from error
        self.attempt += 1
        return wait

    def after_refusal(self, response: httpx.Response) -> float:
        """For an answer read in full whose status is not a success."""
        retry_after = retry_after_seconds(response.headers.get("retry-after"))
        wait = self.policy.wait_before_retry(self.attempt, retry_after) if worth_retrying(response) else None
        if wait is None:
            raise TryOnError.from_response(response, retry_after)
        self.attempt += 1
        return wait


class BatchAnswer:
    """The NDJSON lines of a /v1/tryon/batch answer, read as they come; one cut short raises."""

    def __init__(self, response: httpx.Response, expected: int):
        self.response = response
        self.expected = expected
        self.seen = 0

    def result(self, line: str) -> Optional[GarmentResult]:
        if not line.strip():
            return None
        self.seen += 1
        return GarmentResult.from_line(json.loads(line), self.response)

    def finish(self) -> None:
        if self.seen < self.expected:
            raise TryOnError(None, "incomplete", f"the answer ended after {self.seen} of {self.expected} garments")


def interrupted(error: httpx.TransportError) -> TryOnError:
    return TryOnError(None, "interrupted", f"the answer broke off: {type(error).__name__}: {error}")

"""The three calls as plain descriptions, and the retry bookkeeping: everything the synchronous and
the asynchronous client share, so each of them only sends, waits and reads."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Optional

import httpx

from .errors import TryOnError
from .inputs import Part, form, options
from .results import GarmentResult
from .retry import RETRYABLE_ERRORS, RetryPolicy, retry_after_seconds

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
    parts: List[Part]
    params: Dict[str, Any] = field(default_factory=dict)
    accept: Optional[str] = None
    garments: int = 1

    def request(self, http: httpx.Client | httpx.AsyncClient) -> httpx.Request:
        """A fresh request for each attempt (a multipart body is read once as it is sent)."""
        headers = {"Accept": self.accept} if self.accept else {}
        return http.build_request("POST", self.path, params=self.params, files=self.parts, headers=headers)


def tryon_call(cloth: Any, person: Dict[str, Any], format, quality, size) -> Call:
    return Call("/v1/tryon", form(person, [cloth]), options(format, quality, size))


def batch_call(cloths: Iterable[Any], person: Dict[str, Any], format, quality, size) -> Call:
    cloths = list(cloths)
    if not cloths:
        raise ValueError("cloths: give at least one garment")
    return Call("/v1/tryon/batch", form(person, cloths), options(format, quality, size), NDJSON, len(cloths))


def prepare_call(person: Dict[str, Any]) -> Call:
    return Call("/v1/prepare", form(person), accept="application/json", garments=0)


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
        wait = self.policy.wait_before_retry(self.attempt, retry_after) if response.status_code == 503 else None
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

"""TryOnError: every refusal, and a service that could not be reached, as one exception."""
from __future__ import annotations

import json
from typing import Optional

import httpx


class TryOnError(Exception):
    """The service said no (``status`` and its error body's ``code``, ``message``, ``field``), or could not
    be reached after the retries (``status`` None, ``code`` "unreachable").

    ``field`` names the input at fault when one is (several comma-separated, e.g. "masked_model,keypoints");
    ``retry_after`` is the server's Retry-After in seconds, when it sent one.
    """

    def __init__(self, status: Optional[int], code: str, message: str, field: Optional[str] = None,
                 retry_after: Optional[float] = None, request_id: Optional[str] = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.retry_after = retry_after
        self.request_id = request_id

    def __str__(self) -> str:
        where = f" (field: {self.field})" if self.field else ""
        return f"{self.status or 'no answer'} {self.code}: {self.message}{where}"

    @classmethod
    def from_body(cls, status: int, body: dict, **extra) -> "TryOnError":
        """From the service's ``{"error": {"code", "message", "field"}}``."""
        error = body.get("error") if isinstance(body, dict) else None
        if not isinstance(error, dict):
            return cls(status, f"http_{status}", json.dumps(body)[:300], **extra)
        return cls(status, str(error.get("code") or f"http_{status}"), str(error.get("message") or ""),
                   error.get("field"), **extra)

    @classmethod
    def from_response(cls, response: httpx.Response, retry_after: Optional[float]) -> "TryOnError":
        """A refusal read in full; a body that is not the service's JSON (a proxy's page) still gives one."""
        extra = {"retry_after": retry_after, "request_id": response.headers.get("x-request-id")}
        try:
            return cls.from_body(response.status_code, response.json(), **extra)
        except ValueError:
            text = response.text.strip()[:300] or response.reason_phrase
            return cls(response.status_code, f"http_{response.status_code}", text, **extra)

    @classmethod
    def unreachable(cls, url: str, cause: Exception) -> "TryOnError":
        return cls(None, "unreachable", f"could not reach {url}: {type(cause).__name__}: {cause}")

"""Answers of several images: multipart/mixed, or JSON / NDJSON with base64.

The client picks with ``Accept``; multipart/mixed is the default. Each part
names what it is (``Content-Disposition`` name, and ``X-Index`` for the
garments of a batch); a failed item is a part holding the usual error JSON,
with its status in ``X-Status`` (multipart) or ``status`` (JSON).
"""
from __future__ import annotations

import base64
import json
import secrets
from dataclasses import dataclass, field

from fastapi import Request

from .errors import ApiError

NDJSON = "application/x-ndjson"


@dataclass(frozen=True)
class AnswerItem:
    """One item of a many-image answer: an encoded image, or the error for that item."""
    name: str
    media_type: str = "application/json"
    body: bytes = b""
    index: int | None = None
    error: ApiError | None = None
    # Per-item stage timings, e.g. {"inference": 812.5}: part headers X-Inference-Ms, JSON inference_ms.
    timings_ms: dict[str, float] = field(default_factory=dict)

    @classmethod
    def failed(cls, name: str, error: ApiError, index: int | None = None) -> "AnswerItem":
        return cls(name, index=index, error=error)

    @property
    def status(self) -> int:
        return self.error.status if self.error else 200

    def error_body(self) -> dict:
        return {"code": self.error.code, "message": self.error.message, "field": self.error.field}


def accepts(request: Request, media_type: str) -> bool:
    """Whether ``Accept`` names ``media_type`` itself (a wildcard picks the default instead)."""
    return any(item.split(";")[0].strip().lower() == media_type
               for item in request.headers.get("accept", "").split(","))


class MultipartMixed:
    """multipart/mixed framing with a fresh boundary."""

    def __init__(self):
        self.boundary = f"tryon-{secrets.token_hex(12)}"
        self.media_type = f"multipart/mixed; boundary={self.boundary}"

    def item(self, item: AnswerItem) -> bytes:
        headers = {"Content-Type": item.media_type, "Content-Disposition": f'inline; name="{item.name}"'}
        if item.index is not None:
            headers["X-Index"] = str(item.index)
        headers |= {f"X-{stage.capitalize()}-Ms": f"{ms:.2f}" for stage, ms in item.timings_ms.items()}
        body = item.body
        if item.error is not None:
            headers["X-Status"] = str(item.status)
            body = json.dumps({"error": item.error_body()}).encode()
        headers["Content-Length"] = str(len(body))
        head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        return f"--{self.boundary}\r\n{head}\r\n".encode() + body + b"\r\n"

    def end(self) -> bytes:
        return f"--{self.boundary}--\r\n".encode()


def json_item(item: AnswerItem) -> dict:
    """An item as a JSON object: the image as base64, or the error."""
    document = {"name": item.name, "status": item.status}
    if item.index is not None:
        document["index"] = item.index
    document |= {f"{stage}_ms": round(ms, 2) for stage, ms in item.timings_ms.items()}
    if item.error is not None:
        document["error"] = item.error_body()
    else:
        document["media_type"] = item.media_type
        document["image"] = base64.b64encode(item.body).decode("ascii")
    return document

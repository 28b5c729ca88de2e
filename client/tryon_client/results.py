"""What the calls return, read from the service's answers."""
from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Tuple

import httpx

from .errors import TryOnError
from .retry import retry_after_seconds


Box = Tuple[int, int, int, int]  # left, top, right, bottom, as Pillow's


def person_box(header: Optional[str]) -> Optional[Box]:
    """``X-Person-Box: 120,40,900,1080``: where the model looked in the person's photo (its pixels, upright)."""
    try:
        left, top, right, bottom = (int(v) for v in (header or "").split(","))
    except ValueError:
        return None
    return left, top, right, bottom


def server_timing(header: Optional[str]) -> Dict[str, float]:
    """``Server-Timing: decode;dur=3.1, queue;dur=0.2`` as {"decode": 3.1, "queue": 0.2} (ms)."""
    timings = {}
    for item in (header or "").split(","):
        name, _, params = item.strip().partition(";")
        for param in params.split(";"):
            key, _, value = param.strip().partition("=")
            if name and key == "dur":
                try:
                    timings[name] = float(value)
                except ValueError:
                    pass
    return timings


@dataclass(frozen=True)
class TryOnResult:
    """One try-on image: its encoded bytes and the service's account of it."""
    image: bytes
    media_type: str
    timings: Dict[str, float] = field(default_factory=dict)  # ms per stage: fetch, decode, queue, inference, encode
    weights: Optional[str] = None  # the checkpoint's file name, or "random"
    request_id: Optional[str] = None
    person_box: Optional[Box] = None  # a person photo's crop box: what the model saw of it

    def save(self, path: str) -> None:
        with open(path, "wb") as f:
            f.write(self.image)

    @classmethod
    def from_response(cls, response: httpx.Response) -> "TryOnResult":
        return cls(response.content, response.headers.get("content-type", ""),
                   server_timing(response.headers.get("server-timing")),
                   response.headers.get("x-weights"), response.headers.get("x-request-id"),
                   person_box(response.headers.get("x-person-box")))


@dataclass(frozen=True)
class GarmentResult:
    """One garment of ``tryon_batch``: the image, or ``error`` when that garment was refused (the others
    are still dressed). ``timings``: the request's stages before the first part (fetch, decode, queue)
    and this part's own (inference of its chunk, encode)."""
    index: int
    image: Optional[bytes]
    media_type: Optional[str]
    timings: Dict[str, float]
    error: Optional[TryOnError] = None
    weights: Optional[str] = None
    request_id: Optional[str] = None
    person_box: Optional[Box] = None  # the batch's person photo's crop box (the same for every garment)

    @property
    def ok(self) -> bool:
        return self.error is None

    def save(self, path: str) -> None:
        if self.error is not None:
            raise self.error
        with open(path, "wb") as f:
            f.write(self.image)

    @classmethod
    def from_line(cls, item: dict, response: httpx.Response) -> "GarmentResult":
        """One NDJSON line of /v1/tryon/batch."""
        timings = server_timing(response.headers.get("server-timing"))
        timings |= {key[:-3]: float(value) for key, value in item.items() if key.endswith("_ms")}
        context = {"weights": response.headers.get("x-weights"), "request_id": response.headers.get("x-request-id"),
                   "person_box": person_box(response.headers.get("x-person-box"))}
        if item.get("status", 200) != 200:
            error = TryOnError.from_body(item["status"], item, request_id=context["request_id"])
            return cls(item["index"], None, None, timings, error, **context)
        return cls(item["index"], base64.b64decode(item["image"]), item["media_type"], timings, **context)

    @classmethod
    def from_result(cls, index: int, response: httpx.Response) -> "GarmentResult":
        """A job's result image (``GET /v1/jobs/{id}/results/{index}``)."""
        return cls(index, response.content, response.headers.get("content-type", ""),
                   server_timing(response.headers.get("server-timing")),
                   weights=response.headers.get("x-weights"), request_id=response.headers.get("x-request-id"))


@dataclass(frozen=True)
class PreparedPerson:
    """What the model will see for a person: the masked model and the pose map, PNG, at ``size`` (H, W);
    for a photo, ``box`` (where in it the model looks) and ``mask`` (grey PNG, the model's frame: where a
    ``size=original`` answer takes the model's pixels); ``cloth``, the garment as placed, when one was sent."""
    masked_model: bytes
    pose: bytes
    size: Tuple[int, int]
    timings: Dict[str, float] = field(default_factory=dict)
    box: Optional[Box] = None
    mask: Optional[bytes] = None
    cloth: Optional[bytes] = None

    @classmethod
    def from_response(cls, response: httpx.Response) -> "PreparedPerson":
        body = response.json()
        optional = {name: base64.b64decode(body[name]) for name in ("mask", "cloth") if body.get(name)}
        return cls(base64.b64decode(body["masked_model"]), base64.b64decode(body["pose"]), tuple(body["size"]),
                   server_timing(response.headers.get("server-timing")),
                   tuple(body["box"]) if body.get("box") else None, **optional)


JOB_ENDED = ("succeeded", "failed", "canceled", "expired")


@dataclass(frozen=True)
class JobGarment:
    """One garment of a job: ``status`` (queued, succeeded, failed, or the job's canceled or expired when it
    was never dressed), its result's ``url`` once dressed, or its ``error`` (the codes /v1/tryon answers)."""
    index: int
    status: str
    url: Optional[str] = None
    error: Optional[TryOnError] = None

    def without_image(self) -> Optional[GarmentResult]:
        """The ``GarmentResult`` of a garment that has no image to fetch (its error, or why there is none);
        None when ``url`` has it."""
        if self.url is not None:
            return None
        error = self.error or TryOnError(None, f"garment_{self.status}", f"garment {self.index} is {self.status}: "
                                         "it has no result")
        return GarmentResult(self.index, None, None, {}, error)


@dataclass(frozen=True)
class Job:
    """A catalog job as the service described it (``POST /v1/jobs``, ``GET /v1/jobs/{id}``, the cancel's
    answer, or a webhook's ``data``: ``Job.from_document(event["data"])``)."""
    id: str
    status: str  # queued, running, succeeded, failed, canceled, expired
    done: int
    total: int
    garments: Tuple[JobGarment, ...]
    created_at: Optional[str] = None  # ISO 8601, UTC
    started_at: Optional[str] = None
    finished_at: Optional[str] = None
    deadline_at: Optional[str] = None
    retry_after: Optional[float] = None  # the server's Retry-After: poll again no sooner
    replayed: bool = False  # the same Idempotency-Key returned a job submitted before
    document: Dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def ended(self) -> bool:
        return self.status in JOB_ENDED

    @classmethod
    def from_document(cls, doc: Dict[str, Any], retry_after: Optional[float] = None,
                      replayed: bool = False) -> "Job":
        garments = tuple(JobGarment(g["index"], g["status"], g.get("url"),
                                    TryOnError.from_body(g["error"].get("status"), g) if g.get("error") else None)
                         for g in doc["garments"])
        return cls(doc["id"], doc["status"], doc["progress"]["done"], doc["progress"]["total"], garments,
                   doc.get("created_at"), doc.get("started_at"), doc.get("finished_at"), doc.get("deadline_at"),
                   retry_after, replayed, doc)

    @classmethod
    def from_response(cls, response: httpx.Response) -> "Job":
        return cls.from_document(response.json(), retry_after_seconds(response.headers.get("retry-after")),
                                 response.headers.get("idempotent-replayed") == "true")

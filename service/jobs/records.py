"""What a job is: its status, its garments' states, and the status document that GET
/v1/jobs/{id} answers and the webhook carries (the same bytes' shape for both)."""
from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from enum import Enum

from ..codec.errors import ApiError


class JobStatus(str, Enum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"  # every garment settled, at least one dressed
    FAILED = "failed"  # every garment settled, none dressed
    CANCELED = "canceled"
    EXPIRED = "expired"  # its deadline passed before every garment was settled

    @property
    def ended(self) -> bool:
        return self not in (JobStatus.QUEUED, JobStatus.RUNNING)


ACTIVE = (JobStatus.QUEUED.value, JobStatus.RUNNING.value)
# An ended job's record outlives its results this many times TRYON_JOBS_RETENTION_S, so that a
# result asked for after its deletion is a 410, not an unknown job's 404.
RECORD_KEPT_RETENTIONS = 2


# What new_job_id makes, and so all a job id may be: checked before any store sees one (a Redis key
# is built from it: "job_x:in" would name a job's inputs).
JOB_ID_PATTERN = r"^job_[A-Za-z0-9_-]{32}$"


def new_job_id() -> str:
    """192 random bits, URL-safe: unguessable."""
    return "job_" + secrets.token_urlsafe(24)


@dataclass(frozen=True)
class JobError:
    """A garment's (or a whole job's) failure, with the codes /v1/tryon answers with."""
    status: int
    code: str
    message: str
    field: str | None = None

    @classmethod
    def of(cls, exc: ApiError) -> "JobError":
        return cls(exc.status, exc.code, exc.message, exc.field)

    def to_dict(self) -> dict:
        return {"status": self.status, "code": self.code, "message": self.message, "field": self.field}

    @classmethod
    def from_dict(cls, data: dict) -> "JobError":
        return cls(data["status"], data["code"], data["message"], data.get("field"))


@dataclass(frozen=True)
class GarmentState:
    """A settled garment: dressed (its result stored) or failed."""
    error: JobError | None = None

    def to_dict(self) -> dict:
        return {"error": self.error.to_dict()} if self.error else {}

    @classmethod
    def from_dict(cls, data: dict) -> "GarmentState":
        return cls(JobError.from_dict(data["error"]) if data.get("error") else None)


@dataclass(frozen=True)
class JobInputs:
    """What a job runs on, as submitted (URLs already fetched): the person side's image bytes by
    field, the keypoints' JSON (or None), and per garment its bytes or the error it already had."""
    person: dict[str, bytes]
    keypoints: object
    cloths: list[bytes | JobError]

    @property
    def size(self) -> int:
        return sum(map(len, self.person.values())) + sum(len(c) for c in self.cloths if isinstance(c, bytes))


@dataclass(frozen=True)
class NewJob:
    """A job as submitted, before the store holds it."""
    id: str
    owner: str  # a hash of the API key that created it ("" with keys off)
    options: dict  # the output options (format, quality, size), as OutputOptions dumps them
    inputs: JobInputs
    deadline_at: float  # wall clock
    webhook_url: str | None = None
    idempotency_key: str | None = None
    created_at: float = field(default_factory=time.time)
    fingerprint: str = ""  # of the request as submitted: an Idempotency-Key reused with another one is refused

    @property
    def garments(self) -> int:
        return len(self.inputs.cloths)


@dataclass
class JobRecord:
    """A job as the store holds it."""
    id: str
    owner: str
    status: JobStatus
    garments: int
    options: dict
    created_at: float
    deadline_at: float
    webhook_url: str | None = None
    started_at: float | None = None
    finished_at: float | None = None
    settled: dict[int, GarmentState] = field(default_factory=dict)

    @property
    def done(self) -> int:
        return len(self.settled)

    def garment_status(self, index: int) -> str:
        state = self.settled.get(index)
        if state is not None:
            return "failed" if state.error else "succeeded"
        return self.status.value if self.status.ended else "queued"

    def document(self) -> dict:
        """The status document (URLs relative to the service's root)."""
        base = f"/v1/jobs/{self.id}"
        garments = []
        for index in range(self.garments):
            item = {"index": index, "status": self.garment_status(index)}
            state = self.settled.get(index)
            if state is not None and state.error is not None:
                item["error"] = state.error.to_dict()
            elif state is not None:
                item["url"] = f"{base}/results/{index}"
            garments.append(item)
        return {"id": self.id, "status": self.status.value, "created_at": _iso(self.created_at),
                "started_at": _iso(self.started_at), "finished_at": _iso(self.finished_at),
                "deadline_at": _iso(self.deadline_at),
                "progress": {"done": self.done, "total": self.garments},
                "output": self.options, "garments": garments,
                # Each garment's result URL is in its item once it is done (a "{index}" template here was
                # followed literally by clients that read every URL as a link, schemathesis among them).
                "urls": {"self": base, "cancel": f"{base}/cancel"}}


def _iso(at: float | None) -> str | None:
    return None if at is None else datetime.fromtimestamp(at, timezone.utc).isoformat(timespec="milliseconds")


def final_status(settled: dict[int, GarmentState]) -> JobStatus:
    return JobStatus.SUCCEEDED if any(s.error is None for s in settled.values()) else JobStatus.FAILED


@dataclass(frozen=True)
class Task:
    """Garments ``start`` .. ``start + count - 1`` of a job: the unit replicas share."""
    job_id: str
    start: int
    count: int
    ref: str = ""  # the store's handle (a stream entry id)


@dataclass(frozen=True)
class Delivery:
    """A job's end to announce to its webhook."""
    job_id: str
    ref: str = ""

"""/v1/jobs: catalog try-ons that outlive the connection (service/jobs/).

POST takes what /v1/tryon/batch takes (up to TRYON_JOBS_MAX_GARMENTS garments), plus
``webhook_url``, and answers 202 with the job's status document at once; URLs are fetched
and limits checked before that, so no job is accepted that would fail for them later.
A job is visible only with the API key that created it (another key: 404).
"""
from __future__ import annotations

import hashlib
import json
import time
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Path, Request, Response
from fastapi.responses import JSONResponse

from model.images import MEDIA_TYPES
from model.stopwatch import Stopwatch

from ...codec.output import OutputOptions
from ...codec.sources import RequestParts
from ...jobs.records import JOB_ID_PATTERN, JobError, JobInputs, JobRecord, JobStatus, NewJob, new_job_id
from ...jobs.store import IdempotencyKeyReused, JobTooLarge, StoreFull, StoreUnavailable
from ...jobs.wiring import Jobs, webhook_secrets
from ...queue.priority import Priority
from ..deps import OwnerDep, QueryDep, ServiceDep, require_api_key, require_ready
from ..errors import ApiError
from ..inputs import GarmentLimit, read_request
from ..openapi import JOBS_REQUEST_BODY, PERSON_MIX, error_responses
from ..steps import complete_parts, scheduling_of

jobs = APIRouter(tags=["jobs"], dependencies=[Depends(require_api_key)])
JOBS_ROUTE = "/v1/jobs"
WEBHOOK_FIELD = "webhook_url"
POLL_AFTER_S = "2"  # Retry-After on a job still queued or running
# A job's timeout is capped here: a deadline further away means none in practice (a job is long done),
# and a date past what the platform's clocks hold would fail the status document (a 500 before).
MAX_JOB_DEADLINE_S = 30 * 86_400
# Checked before any store sees the id (the schema states the pattern; anything else is a 422).
JobId = Annotated[str, Path(pattern=JOB_ID_PATTERN, description="a job's id, as POST /v1/jobs answered it")]


def _jobs(service) -> Jobs:
    if service.settings.jobs_unavailable:  # this deployment cannot serve jobs: no Retry-After, waiting won't help
        raise ApiError(503, "jobs_unavailable", service.settings.jobs_unavailable)
    if service.jobs is None:
        require_ready(service)  # weights_unavailable where the checkpoint failed to load
        raise ApiError(503, "not_ready", "jobs are not being served yet", headers={"Retry-After": "5"})
    return service.jobs


def _unavailable(exc: Exception) -> ApiError:
    if isinstance(exc, StoreFull):
        return ApiError(503, "jobs_full", str(exc), headers={"Retry-After": "60"})
    return ApiError(503, "jobs_unavailable", f"{exc}; no job was accepted", headers={"Retry-After": "5"})


async def _record(jobs_: Jobs, job_id: str, owner: str) -> JobRecord:
    try:
        record = await jobs_.store.record(job_id)
    except StoreUnavailable as exc:
        raise _unavailable(exc) from None
    if record is None or record.owner != owner:  # another key's job is as unknown as no job
        raise ApiError(404, "job_not_found", f"no job {job_id[:64]!r}")
    return record


def _document(record: JobRecord, status_code: int = 200, headers: dict | None = None) -> JSONResponse:
    headers = dict(headers or {})
    if not record.status.ended:
        headers["Retry-After"] = POLL_AFTER_S
    return JSONResponse(record.document(), status_code=status_code, headers=headers)


def _fingerprint(parts: RequestParts, options: OutputOptions) -> str:
    """The request as submitted (before URLs are fetched): what an Idempotency-Key stands for."""
    digest = hashlib.sha256()
    for name, value in sorted(parts.person.items()):
        digest.update(f"{name}:{len(value)}:".encode() + (value if isinstance(value, bytes) else value.encode()))
    for cloth in parts.cloths:
        digest.update(b"cloth:" + (cloth if isinstance(cloth, bytes) else repr(cloth).encode()))
    extra = {"keypoints": parts.keypoints, "options": options.model_dump(), "fields": parts.options}
    digest.update(json.dumps(extra, sort_keys=True, default=str).encode())
    return digest.hexdigest()


async def _webhook_url(service, value, owner: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise ApiError(422, "invalid_url", "must be an http(s) URL", WEBHOOK_FIELD)
    if not webhook_secrets(service.settings)(owner):
        raise ApiError(422, "webhooks_not_configured", "this server signs no webhooks for this API key (neither a "
                       "secret of its own in TRYON_API_KEYS nor TRYON_WEBHOOK_SECRET); submit without webhook_url "
                       "and poll the job", WEBHOOK_FIELD)
    try:
        await service.fetcher.pin(value.strip(), WEBHOOK_FIELD)
    except ApiError as exc:
        raise ApiError(422, exc.code, exc.message, WEBHOOK_FIELD) from None
    return value.strip()


@jobs.post(JOBS_ROUTE, status_code=202, summary="Submit a job: one person in many garments, run in the background",
           description=PERSON_MIX + " Garments as for /v1/tryon/batch (at most TRYON_JOBS_MAX_GARMENTS), plus "
           "`webhook_url` (signed per Standard Webhooks when the job ends) and `timeout` (the job's deadline in "
           "seconds, TRYON_JOBS_DEADLINE_S by default). `Idempotency-Key` returns the same job on a retry of the "
           "same request; with another request it is a 422 `idempotency_key_reused`.",
           openapi_extra={"requestBody": JOBS_REQUEST_BODY},
           responses=error_responses(400, 413, 415, 422, 503))
async def submit_job(request: Request, service: ServiceDep, query: QueryDep, owner: OwnerDep,
                     idempotency_key: str | None = Header(None, max_length=255)) -> JSONResponse:
    jobs_ = _jobs(service)
    settings = service.settings
    limit = GarmentLimit(settings.jobs_max_garments, "TRYON_JOBS_MAX_GARMENTS", settings.jobs_body_limit,
                         (WEBHOOK_FIELD,))
    clock = Stopwatch()
    parts, options = await read_request(request, settings, query.given(), "many", limit)
    scheduling = scheduling_of(request, query, parts)
    if scheduling.priority not in (None, Priority.BULK):
        raise ApiError(422, "bulk_only", "jobs run as bulk work, so that shoppers' requests overtake them; "
                       "send priority=bulk or none", "priority")
    webhook_url = await _webhook_url(service, parts.options.get(WEBHOOK_FIELD), owner)
    fingerprint = _fingerprint(parts, options)
    # The job decodes later, in the runner (which takes its bytes then): here only measured, and refused if too large.
    parts = await complete_parts(request, service, parts, options, "many", {}, clock, decodes_here=False)
    cloths = [JobError.of(c) if isinstance(c, ApiError) else c for c in parts.cloths]
    now = time.time()
    job = NewJob(new_job_id(), owner, options.model_dump(),
                 JobInputs(parts.person, parts.keypoints, cloths),
                 now + min(scheduling.timeout or settings.jobs_deadline_s, MAX_JOB_DEADLINE_S), webhook_url,
                 idempotency_key, now, fingerprint)
    try:
        job_id, created = await jobs_.store.create(job)
        record = await jobs_.store.record(job_id)
    except IdempotencyKeyReused as exc:
        raise ApiError(422, "idempotency_key_reused", f"this Idempotency-Key was used for another request (job "
                       f"{exc}); send a new key for a new request", "Idempotency-Key") from None
    except JobTooLarge as exc:  # never fits: not a 503 to retry
        raise ApiError(413, "job_too_large", str(exc)) from None
    except (StoreUnavailable, StoreFull) as exc:
        raise _unavailable(exc) from None
    if created:
        service.metrics.jobs.labels(JobStatus.QUEUED.value).inc()
    return _document(record, 202, {"Location": f"{JOBS_ROUTE}/{job_id}",
                                   **({} if created else {"Idempotent-Replayed": "true"})})


@jobs.get(JOBS_ROUTE + "/{job_id}", summary="A job's status, progress and per-garment results",
          responses=error_responses(404, 503))
async def get_job(job_id: JobId, service: ServiceDep, owner: OwnerDep) -> JSONResponse:
    return _document(await _record(_jobs(service), job_id, owner))


@jobs.get(JOBS_ROUTE + "/{job_id}/results/{index}", summary="One garment's result image", response_class=Response,
          responses=error_responses(404, 410, 503))
async def get_result(job_id: JobId, index: int, service: ServiceDep, owner: OwnerDep) -> Response:
    jobs_ = _jobs(service)
    record = await _record(jobs_, job_id, owner)
    if not 0 <= index < record.garments:
        raise ApiError(404, "result_not_found", f"the job has garments 0 to {record.garments - 1}", "index")
    try:
        body = await jobs_.store.result(job_id, index)
    except StoreUnavailable as exc:
        raise _unavailable(exc) from None
    if body is not None:
        return Response(body, media_type=MEDIA_TYPES[record.options["format"]])
    if record.status is JobStatus.EXPIRED:
        raise ApiError(410, "job_expired", "the job expired before this garment was dressed")
    if index in record.settled and record.settled[index].error is None:
        raise ApiError(410, "result_deleted", "this result was deleted after TRYON_JOBS_RETENTION_S")
    state = record.settled.get(index)
    if state is not None:
        raise ApiError(404, "result_failed", f"this garment failed: {state.error.code}: {state.error.message}")
    raise ApiError(404, "result_not_ready", f"garment {index} is {record.garment_status(index)}")


@jobs.post(JOBS_ROUTE + "/{job_id}/cancel", summary="Cancel a job: garments not yet run are not run",
           responses=error_responses(404, 503))
async def cancel_job(job_id: JobId, service: ServiceDep, owner: OwnerDep) -> JSONResponse:
    jobs_ = _jobs(service)
    await _record(jobs_, job_id, owner)
    try:
        if await jobs_.store.end(job_id, JobStatus.CANCELED):
            service.metrics.jobs.labels(JobStatus.CANCELED.value).inc()
        record = await _record(jobs_, job_id, owner)
    except StoreUnavailable as exc:
        raise _unavailable(exc) from None
    return _document(record)

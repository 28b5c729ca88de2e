"""TryOnClient: the service from synchronous code (scripts, catalog jobs, notebooks)."""
from __future__ import annotations

import time
from typing import Any, Iterable, Iterator, Optional

import httpx

from .calls import (Attempts, BatchAnswer, Call, ClientConfig, JobRef, Polling, batch_call, cancel_call,
                    interrupted, job_call, prepare_call, result_call, submit_job_call, tryon_call)
from .inputs import ImageInput
from .results import GarmentResult, Job, PreparedPerson, TryOnResult


class TryOnClient:
    """``TryOnClient("http://127.0.0.1:8000", api_key=...)``; use it as a context manager or ``close()`` it.

    Each image argument is a path, bytes, a binary file object or an http(s) URL (the service fetches
    it). A 503 or a failed connection is retried up to ``retries`` times, after the server's Retry-After
    (or 0.5 s, doubling), waiting at most ``max_retry_wait`` seconds at a time; then, and for any other
    refusal, ``TryOnError`` is raised. ``timeout``: seconds to connect, and between bytes of the answer.
    """

    def __init__(self, base_url: str, api_key: Optional[str] = None, timeout: float = 60.0, retries: int = 3,
                 max_retry_wait: float = 30.0, transport: Optional[httpx.BaseTransport] = None):
        self.config = ClientConfig.of(base_url, api_key, retries, max_retry_wait)
        self._http = httpx.Client(base_url=self.config.base_url, headers=self.config.headers, timeout=timeout,
                                  transport=transport)

    def tryon(self, *, cloth: ImageInput, person: Optional[ImageInput] = None, keypoints: Any = None,
              parse: Optional[ImageInput] = None, masked_model: Optional[ImageInput] = None,
              pose: Optional[ImageInput] = None, format: Optional[str] = None, quality: Optional[int] = None,
              size: Optional[str] = None) -> TryOnResult:
        """``POST /v1/tryon``: the person (``masked_model`` + ``pose``, or ``person`` + ``keypoints``, ...)
        in ``cloth``. ``format`` jpeg/png/webp, ``quality`` 1-100, ``size`` model/original."""
        person_side = dict(person=person, keypoints=keypoints, parse=parse, masked_model=masked_model, pose=pose)
        return TryOnResult.from_response(self._answer(tryon_call(cloth, person_side, format, quality, size)))

    def tryon_batch(self, *, cloths: Iterable[ImageInput], person: Optional[ImageInput] = None,
                    keypoints: Any = None, parse: Optional[ImageInput] = None,
                    masked_model: Optional[ImageInput] = None, pose: Optional[ImageInput] = None,
                    format: Optional[str] = None, quality: Optional[int] = None,
                    size: Optional[str] = None) -> Iterator[GarmentResult]:
        """``POST /v1/tryon/batch``: one person, many garments. Yields a ``GarmentResult`` per garment in
        input order, each as soon as its part arrives; a garment the service refused has ``error`` set
        and the others still come. The request is sent when the iteration starts; leaving the loop
        early closes the connection, and the service stops after its current chunk."""
        person_side = dict(person=person, keypoints=keypoints, parse=parse, masked_model=masked_model, pose=pose)
        call = batch_call(cloths, person_side, format, quality, size)
        return self._garments(call)

    def prepare(self, *, person: Optional[ImageInput] = None, keypoints: Any = None,
                parse: Optional[ImageInput] = None, masked_model: Optional[ImageInput] = None,
                pose: Optional[ImageInput] = None, cloth: Optional[ImageInput] = None) -> PreparedPerson:
        """``POST /v1/prepare``: what the model would see, as PNG: the masked model and pose map; for a
        photo its crop box and the composite mask; ``cloth`` as placed, when given."""
        person_side = dict(person=person, keypoints=keypoints, parse=parse, masked_model=masked_model, pose=pose)
        return PreparedPerson.from_response(self._answer(prepare_call(person_side, cloth)))

    def submit_job(self, *, cloths: Iterable[ImageInput], person: Optional[ImageInput] = None,
                   keypoints: Any = None, parse: Optional[ImageInput] = None,
                   masked_model: Optional[ImageInput] = None, pose: Optional[ImageInput] = None,
                   format: Optional[str] = None, quality: Optional[int] = None, size: Optional[str] = None,
                   webhook_url: Optional[str] = None, timeout: Optional[float] = None,
                   idempotency_key: Optional[str] = None) -> Job:
        """``POST /v1/jobs``: one person in many garments, run by the service in the background (it outlives
        this connection); returns the ``Job`` at once (queued). ``webhook_url``: the service POSTs the job's
        end there, signed per Standard Webhooks; ``timeout``: the job's deadline in seconds (the service's
        default is a day). ``idempotency_key``: the same key returns the same job (``job.replayed``); one is
        made for each call when none is given, so the call's own retries never submit twice."""
        person_side = dict(person=person, keypoints=keypoints, parse=parse, masked_model=masked_model, pose=pose)
        call = submit_job_call(cloths, person_side, format, quality, size, webhook_url, timeout, idempotency_key)
        return Job.from_response(self._answer(call))

    def job(self, job: JobRef) -> Job:
        """``GET /v1/jobs/{id}``: the job's status, progress and each garment's status."""
        return Job.from_response(self._answer(job_call(job)))

    def wait(self, job: JobRef, *, timeout: Optional[float] = None, interval: float = 0.5,
             max_interval: float = 10.0) -> Job:
        """The job once it has ended (succeeded, failed, canceled or expired), asking ``GET /v1/jobs/{id}``
        after ``interval`` seconds, then half as long again each time up to ``max_interval``, never sooner
        than the service's Retry-After. ``timeout`` (seconds, None: no limit): then TryOnError
        ("wait_timeout"); the job carries on."""
        polling = Polling(job, timeout, interval, max_interval)
        while (pause := polling.pause()) is not None:
            time.sleep(pause)
            polling.seen(self.job(polling.id))
        return polling.job

    def results(self, job: JobRef) -> Iterator[GarmentResult]:
        """A ``GarmentResult`` per garment in order: its image (``GET /v1/jobs/{id}/results/{index}``, fetched
        as the iteration reaches it), or ``error``: the garment's own failure, or ``garment_<status>`` when it
        has no result (queued, canceled, expired). A result deleted after the service's retention raises
        TryOnError 410 ``result_deleted``."""
        job = job if isinstance(job, Job) else self.job(job)
        for garment in job.garments:
            yield garment.without_image() or GarmentResult.from_result(garment.index,
                                                                        self._answer(result_call(garment)))

    def cancel(self, job: JobRef) -> Job:
        """``POST /v1/jobs/{id}/cancel``: garments not yet run are not run; what is done is kept. A job that
        had ended is returned as it is."""
        return Job.from_response(self._answer(cancel_call(job)))

    def _answer(self, call: Call) -> httpx.Response:
        response = self._send(call)
        try:
            response.read()
        except httpx.TransportError as exc:
            raise interrupted(exc) from exc
        finally:
            response.close()
        return response

    def _garments(self, call: Call) -> Iterator[GarmentResult]:
        response = self._send(call)
        answer = BatchAnswer(response, call.garments)
        try:
            for line in response.iter_lines():
                result = answer.result(line)
                if result is not None:
                    yield result
        except httpx.TransportError as exc:
            raise interrupted(exc) from exc
        finally:
            response.close()
        answer.finish()

    def _send(self, call: Call) -> httpx.Response:
        """The answer to ``call`` once it is a success, its body not yet read; retried as the policy says."""
        attempts = Attempts(self.config.retry, self.config.base_url)
        while True:
            try:
                response = self._http.send(call.request(self._http), stream=True)
            except httpx.TransportError as exc:
                wait = attempts.after_error(exc)
            else:
                if response.is_success:
                    return response
                try:
                    response.read()
                finally:
                    response.close()
                wait = attempts.after_refusal(response)
            time.sleep(wait)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "TryOnClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

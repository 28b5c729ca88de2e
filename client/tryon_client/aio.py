"""AsyncTryOnClient: the service from asyncio code (web backends, concurrent catalog jobs)."""
from __future__ import annotations

import asyncio
from typing import Any, AsyncIterator, Iterable, Optional

import httpx

from .calls import (Attempts, BatchAnswer, Call, ClientConfig, JobRef, Polling, batch_call, cancel_call,
                    interrupted, job_call, prepare_call, result_call, submit_job_call, tryon_call)
from .inputs import ImageInput
from .results import GarmentResult, Job, PreparedPerson, TryOnResult


class AsyncTryOnClient:
    """``AsyncTryOnClient("http://127.0.0.1:8000", api_key=...)``; ``async with`` it or ``await aclose()``.

    The same calls, arguments, retries and errors as ``TryOnClient``, awaited; ``tryon_batch`` is an
    async iterator. File objects are read synchronously.
    """

    def __init__(self, base_url: str, api_key: Optional[str] = None, timeout: float = 60.0, retries: int = 3,
                 max_retry_wait: float = 30.0, transport: Optional[httpx.AsyncBaseTransport] = None):
        self.config = ClientConfig.of(base_url, api_key, retries, max_retry_wait)
        self._http = httpx.AsyncClient(base_url=self.config.base_url, headers=self.config.headers, timeout=timeout,
                                       transport=transport)

    async def tryon(self, *, cloth: ImageInput, person: Optional[ImageInput] = None, keypoints: Any = None,
                    parse: Optional[ImageInput] = None, masked_model: Optional[ImageInput] = None,
                    pose: Optional[ImageInput] = None, format: Optional[str] = None,
                    quality: Optional[int] = None, size: Optional[str] = None) -> TryOnResult:
        """``POST /v1/tryon``, as ``TryOnClient.tryon``."""
        person_side = dict(person=person, keypoints=keypoints, parse=parse, masked_model=masked_model, pose=pose)
        return TryOnResult.from_response(await self._answer(tryon_call(cloth, person_side, format, quality, size)))

    def tryon_batch(self, *, cloths: Iterable[ImageInput], person: Optional[ImageInput] = None,
                    keypoints: Any = None, parse: Optional[ImageInput] = None,
                    masked_model: Optional[ImageInput] = None, pose: Optional[ImageInput] = None,
                    format: Optional[str] = None, quality: Optional[int] = None,
                    size: Optional[str] = None) -> AsyncIterator[GarmentResult]:
        """``async for result in client.tryon_batch(...)``: ``POST /v1/tryon/batch``, as
        ``TryOnClient.tryon_batch``."""
        person_side = dict(person=person, keypoints=keypoints, parse=parse, masked_model=masked_model, pose=pose)
        call = batch_call(cloths, person_side, format, quality, size)
        return self._garments(call)

    async def prepare(self, *, person: Optional[ImageInput] = None, keypoints: Any = None,
                      parse: Optional[ImageInput] = None, masked_model: Optional[ImageInput] = None,
                      pose: Optional[ImageInput] = None, cloth: Optional[ImageInput] = None) -> PreparedPerson:
        """``POST /v1/prepare``, as ``TryOnClient.prepare``."""
        person_side = dict(person=person, keypoints=keypoints, parse=parse, masked_model=masked_model, pose=pose)
        return PreparedPerson.from_response(await self._answer(prepare_call(person_side, cloth)))

    async def submit_job(self, *, cloths: Iterable[ImageInput], person: Optional[ImageInput] = None,
                   keypoints: Any = None, parse: Optional[ImageInput] = None,
                   masked_model: Optional[ImageInput] = None, pose: Optional[ImageInput] = None,
                   format: Optional[str] = None, quality: Optional[int] = None, size: Optional[str] = None,
                   webhook_url: Optional[str] = None, timeout: Optional[float] = None,
                   idempotency_key: Optional[str] = None) -> Job:
        """``POST /v1/jobs``, as ``TryOnClient.submit_job``."""
        person_side = dict(person=person, keypoints=keypoints, parse=parse, masked_model=masked_model, pose=pose)
        call = submit_job_call(cloths, person_side, format, quality, size, webhook_url, timeout, idempotency_key)
        return Job.from_response(await self._answer(call))

    async def job(self, job: JobRef) -> Job:
        """``GET /v1/jobs/{id}``, as ``TryOnClient.job``."""
        return Job.from_response(await self._answer(job_call(job)))

    async def wait(self, job: JobRef, *, timeout: Optional[float] = None, interval: float = 0.5,
             max_interval: float = 10.0) -> Job:
        """As ``TryOnClient.wait``."""
        polling = Polling(job, timeout, interval, max_interval)
        while (pause := polling.pause()) is not None:
            await asyncio.sleep(pause)
            polling.seen(await self.job(polling.id))
        return polling.job

    async def results(self, job: JobRef) -> AsyncIterator[GarmentResult]:
        """``async for result in client.results(job)``, as ``TryOnClient.results``."""
        job = job if isinstance(job, Job) else await self.job(job)
        for garment in job.garments:
            yield garment.without_image() or GarmentResult.from_result(garment.index,
                                                                        await self._answer(result_call(garment)))

    async def cancel(self, job: JobRef) -> Job:
        """``POST /v1/jobs/{id}/cancel``, as ``TryOnClient.cancel``."""
        return Job.from_response(await self._answer(cancel_call(job)))

    async def _answer(self, call: Call) -> httpx.Response:
        response = await self._send(call)
        try:
            await response.aread()
        except httpx.TransportError as exc:
            raise interrupted(exc) from exc
        finally:
            await response.aclose()
        return response

    async def _garments(self, call: Call) -> AsyncIterator[GarmentResult]:
        response = await self._send(call)
        answer = BatchAnswer(response, call.garments)
        try:
            async for line in response.aiter_lines():
                result = answer.result(line)
                if result is not None:
                    yield result
        except httpx.TransportError as exc:
            raise interrupted(exc) from exc
        finally:
            await response.aclose()
        answer.finish()

    async def _send(self, call: Call) -> httpx.Response:
        """The answer to ``call`` once it is a success, its body not yet read; retried as the policy says."""
        attempts = Attempts(self.config.retry, self.config.base_url)
        while True:
            try:
                response = await self._http.send(call.request(self._http), stream=True)
            except httpx.TransportError as exc:
                wait = attempts.after_error(exc)
            else:
                if response.is_success:
                    return response
                try:
                    await response.aread()
                finally:
                    await response.aclose()
                wait = attempts.after_refusal(response)
            await asyncio.sleep(wait)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> "AsyncTryOnClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()

"""One bounded queue in front of one model worker per device.

Requests wait in the queue while a batch forms: the worker starts when
something is waiting, then waits at most ``max_wait_s`` for the queue to
hold ``max_batch_size`` requests, and takes up to that many. Requests whose
client has gone or whose deadline passed are dropped before the engine sees
them. The engine runs in its own thread, never on the event loop. A device
out-of-memory error splits the batch in two and retries each half, so no
accepted request is lost to a batch that was merely too large.

A many-garments request (one person, N garments) is one job in the same
queue: it takes one place against the queue limit, has the request's
deadline, and runs on the same worker, after the single requests taken with
it, through ``Engine.iter_garments``: the person's features computed once,
then the garments chunk by chunk. Each chunk is handed to the event loop as
soon as it is done: the job's future resolves with a ``GarmentsStream`` once
the first chunk is ready (or fails as a single request would), and the later
chunks follow through that stream. The worker runs the job to its end before
it takes the next batch, and stops early when the request is abandoned.
"""
from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import AsyncIterator, Callable, Iterator, Protocol

import torch

from model.images import TryOnInputs

from .errors import ApiError
from .metrics import Metrics

log = logging.getLogger("service.batcher")


class InferenceEngine(Protocol):
    def infer(self, pose: torch.Tensor, masked_model: torch.Tensor, cloth: torch.Tensor) -> torch.Tensor: ...

    def iter_garments(self, pose: torch.Tensor, masked_model: torch.Tensor, cloths: torch.Tensor,
                      chunk_size: int | None = None) -> Iterator[tuple[int, torch.Tensor]]: ...


@dataclass(frozen=True)
class GarmentsInputs:
    """One person, many garments: (3, H, W) pose and masked model, (N, 3, H, W) garments,
    run ``chunk_size`` garments per engine call (None: the engine's largest batch)."""
    pose: torch.Tensor
    masked_model: torch.Tensor
    cloths: torch.Tensor
    chunk_size: int | None = None


@dataclass(frozen=True)
class GarmentsChunk:
    """The results of consecutive garments of a job, from one engine call."""
    start: int  # position of its first garment in GarmentsInputs.cloths
    outputs: torch.Tensor  # (n, 3, H, W) in [-1, 1]
    inference_s: float  # the engine call (the first chunk's includes encoding the person)


@dataclass(frozen=True)
class JobResult:
    output: torch.Tensor  # (3, H, W) in [-1, 1]
    queue_s: float
    inference_s: float
    batch_size: int


@dataclass(eq=False)
class Job:
    inputs: TryOnInputs | GarmentsInputs
    deadline: float  # on the event loop's clock
    future: asyncio.Future
    enqueued_at: float = field(default_factory=time.perf_counter)
    drop_reason: str | None = None

    def abandon(self, reason: str) -> None:
        """The client will not read the answer (gone, or deadline passed): never run it."""
        self.drop_reason = reason
        self.future.cancel()


class GarmentsStream:
    """A running garments job, as its future's result: the chunks in garment order, each
    as soon as the worker has it. It ends after the last garment, or with one ApiError
    that stands for every garment not yet delivered (the engine failed, the request's
    deadline passed, or the server is shutting down)."""

    def __init__(self, job: "Job", garments: int, queue_s: float):
        self.garments = garments
        self.queue_s = queue_s
        self._job = job
        self._items: asyncio.Queue[GarmentsChunk | ApiError] = asyncio.Queue()

    def put(self, item: GarmentsChunk | ApiError) -> None:
        self._items.put_nowait(item)

    async def chunks(self) -> AsyncIterator[GarmentsChunk | ApiError]:
        loop = asyncio.get_running_loop()
        delivered = 0
        while delivered < self.garments:
            try:
                item = await asyncio.wait_for(self._items.get(), max(0.0, self._job.deadline - loop.time()))
            except TimeoutError:
                self._job.abandon("deadline")
                item = ApiError(504, "deadline_exceeded", "this garment was not dressed within the request's "
                                "deadline")
            yield item
            if isinstance(item, ApiError):
                return
            delivered += item.outputs.shape[0]

    def close(self) -> None:
        """The answer is over (or its client gone): the worker stops after its current chunk."""
        if self._job.drop_reason is None:
            self._job.abandon("finished")


def infer_splitting_on_oom(infer: Callable, pose: torch.Tensor, masked_model: torch.Tensor, cloth: torch.Tensor,
                           on_split: Callable[[int], None] | None = None) -> list[torch.Tensor | BaseException]:
    """Per-item outputs of ``infer``; on an out-of-memory error the batch is halved
    and each half retried, down to single items (whose own OOM is returned, not raised)."""
    try:
        return list(infer(pose, masked_model, cloth))
    except torch.cuda.OutOfMemoryError as exc:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        n = pose.shape[0]
        if n == 1:
            return [exc]
        if on_split is not None:
            on_split(n)
        half = (n + 1) // 2
        return (infer_splitting_on_oom(infer, pose[:half], masked_model[:half], cloth[:half], on_split)
                + infer_splitting_on_oom(infer, pose[half:], masked_model[half:], cloth[half:], on_split))


class Batcher:
    def __init__(self, engine: InferenceEngine, *, max_batch_size: int, max_wait_s: float, queue_limit: int,
                 metrics: Metrics, retry_after_s: int = 1):
        self.engine = engine
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self.retry_after_s = retry_after_s
        self.metrics = metrics
        self.queue: asyncio.Queue[Job] = asyncio.Queue(maxsize=queue_limit)
        self._arrived = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tryon-engine")
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="tryon-batcher")

    async def stop(self) -> None:
        """Stops the worker; anything still queued is answered 503 (drain normally leaves nothing)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        while not self.queue.empty():
            job = self.queue.get_nowait()
            if not job.future.done():
                job.future.set_exception(ApiError(503, "shutting_down", "the server is shutting down",
                                                  headers={"Retry-After": str(self.retry_after_s)}))
        self._executor.shutdown(wait=False, cancel_futures=True)

    @property
    def depth(self) -> int:
        return self.queue.qsize()

    def submit(self, inputs: TryOnInputs | GarmentsInputs, deadline: float) -> Job:
        """Queues one request, or answers 503 at once when the queue is full."""
        job = Job(inputs=inputs, deadline=deadline, future=asyncio.get_running_loop().create_future())
        try:
            self.queue.put_nowait(job)
        except asyncio.QueueFull:
            raise ApiError(503, "queue_full", f"the queue is full ({self.queue.maxsize} waiting); retry shortly",
                           headers={"Retry-After": str(self.retry_after_s)}) from None
        self.metrics.queue_depth.set(self.queue.qsize())
        self._arrived.set()
        return job

    async def _next_batch(self) -> list[Job]:
        while self.queue.empty():
            self._arrived.clear()
            await self._arrived.wait()
        loop = asyncio.get_running_loop()
        window_end = loop.time() + self.max_wait_s
        while self.queue.qsize() < self.max_batch_size:
            remaining = window_end - loop.time()
            if remaining <= 0:
                break
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except TimeoutError:
                break
        jobs = [self.queue.get_nowait() for _ in range(min(self.queue.qsize(), self.max_batch_size))]
        self.metrics.queue_depth.set(self.queue.qsize())
        return jobs

    def _live(self, jobs: list[Job]) -> list[Job]:
        now = asyncio.get_running_loop().time()
        live = []
        for job in jobs:
            if job.future.done() or now >= job.deadline:
                reason = job.drop_reason or "deadline"
                self.metrics.dropped.labels(reason).inc()
                job.abandon(reason)
            else:
                live.append(job)
        return live

    async def _run(self) -> None:
        while True:
            jobs = self._live(await self._next_batch())
            singles = [job for job in jobs if not isinstance(job.inputs, GarmentsInputs)]
            if singles:
                await self._guarded(self._run_batch, singles)
            for job in jobs:
                if isinstance(job.inputs, GarmentsInputs) and self._live([job]):
                    await self._guarded(self._run_garments, [job])

    async def _guarded(self, run: Callable, jobs: list[Job]) -> None:
        try:
            await run(jobs)
        except Exception as exc:  # the worker must outlive any one batch
            log.exception("batch of %d failed", len(jobs))
            for job in jobs:
                if not job.future.done():
                    job.future.set_exception(ApiError(500, "inference_failed", f"inference failed: {exc}"))

    async def _run_garments(self, jobs: list[Job]) -> None:
        job = jobs[0]
        loop = asyncio.get_running_loop()
        n = job.inputs.cloths.shape[0]
        stream = GarmentsStream(job, n, time.perf_counter() - job.enqueued_at)
        self.metrics.batch_size.observe(n)
        self.metrics.queue_duration.observe(stream.queue_s)

        def deliver(item: GarmentsChunk | BaseException) -> None:  # on the event loop
            if job.future.cancelled():  # abandoned before its first chunk: nobody reads on
                return
            if isinstance(item, BaseException) and not isinstance(item, ApiError):
                item = self._failure(item)
            if job.future.done():
                stream.put(item)
            elif isinstance(item, ApiError):
                job.future.set_exception(item)
            else:
                stream.put(item)
                job.future.set_result(stream)

        def deliver_threadsafe(item: GarmentsChunk | BaseException) -> None:
            try:
                loop.call_soon_threadsafe(deliver, item)
            except RuntimeError:  # the loop has closed: the server is gone, nobody to tell
                pass

        try:
            await loop.run_in_executor(self._executor, self._dress, job, deliver_threadsafe)
        except asyncio.CancelledError:  # the worker is stopping: the request must not wait forever
            job.drop_reason = job.drop_reason or "shutting_down"
            deliver(ApiError(503, "shutting_down", "the server is shutting down",
                             headers={"Retry-After": str(self.retry_after_s)}))
            raise

    def _dress(self, job: Job, deliver: Callable[[GarmentsChunk | BaseException], None]) -> None:
        """On the engine thread: runs the job's chunks, handing each over as it is done,
        until the last one, a failure, or the request is abandoned."""
        person = job.inputs
        chunks = self.engine.iter_garments(person.pose[None], person.masked_model[None], person.cloths,
                                           person.chunk_size)
        try:
            while job.drop_reason is None:
                started = time.perf_counter()
                try:
                    start, outputs = next(chunks)
                except StopIteration:
                    return
                elapsed = time.perf_counter() - started
                # Observed here, before the hand-over: the metric counts chunks computed.
                self.metrics.inference.observe(elapsed)
                self.metrics.observe_execution(outputs.shape[0], elapsed, [])
                deliver(GarmentsChunk(start, outputs, elapsed))
        except Exception as exc:  # the engine failed: the request learns it, the worker carries on
            log.exception("inference failed for %d garments", person.cloths.shape[0])
            if isinstance(exc, torch.cuda.OutOfMemoryError) and torch.cuda.is_available():
                torch.cuda.empty_cache()
            deliver(exc)
        finally:
            chunks.close()

    def _failure(self, exc: BaseException) -> ApiError:
        if isinstance(exc, torch.cuda.OutOfMemoryError):
            return ApiError(503, "out_of_memory", "the device ran out of memory for this request even alone; "
                            "retry later", headers={"Retry-After": str(self.retry_after_s)})
        return ApiError(500, "inference_failed", f"inference failed: {exc}")

    async def _run_batch(self, jobs: list[Job]) -> None:
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        pose, masked, cloth = (torch.stack([getattr(j.inputs, name) for j in jobs])
                               for name in ("pose", "masked_model", "cloth"))
        try:
            outputs = await loop.run_in_executor(self._executor, infer_splitting_on_oom, self.engine.infer,
                                                 pose, masked, cloth, self._count_split)
        except Exception as exc:  # the engine itself failed: every request of the batch learns it
            log.exception("inference failed for a batch of %d", len(jobs))
            outputs = [exc] * len(jobs)
        elapsed = time.perf_counter() - started
        self.metrics.batch_size.observe(len(jobs))
        self.metrics.inference.observe(elapsed)
        self.metrics.observe_execution(len(jobs), elapsed, [started - job.enqueued_at for job in jobs])
        for job, out in zip(jobs, outputs):
            if job.future.done():
                continue
            if isinstance(out, BaseException):
                job.future.set_exception(self._failure(out))
            else:
                job.future.set_result(JobResult(out, started - job.enqueued_at, elapsed, len(jobs)))

    def _count_split(self, n: int) -> None:
        log.warning("device out of memory on a batch of %d: splitting it and retrying", n)
        self.metrics.oom_splits.inc()
